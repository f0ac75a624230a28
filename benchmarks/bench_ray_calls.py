"""What one actor call costs on this machine: a plain Ray call against a Ray Compiled Graph call.

The PPO step's orchestration (`bench_ppo.py`) is mostly Ray's call-and-return path: ~9 calls per step,
each carrying a small batch. This measures that path alone, with a batch-shaped argument (eight int64
arrays of 64 values) echoed back by idle fractional-CPU actors, one actor and three in parallel (the
experience phase's fan-out), each way:

- `.remote()` + `ray.get`, as `batray.ppo.driver` calls its roles today;
- the same calls through a compiled graph (`ray.dag ... experimental_compile()`), which keeps a
  shared-memory channel open to each actor instead of submitting a task per call.

A compiled graph's actors wait for their next input on those channels, and a waiting actor uses CPU.
So the second table times real work in the layout a PPO step would have: five actors (policy,
reference, critic, reward, rollout engine), two of them doing the same fixed matrix products (a train
phase's two updates) while the other three wait. This is done through plain calls and again
through one compiled graph over all five. The table gives the work's own time, as the two working actors
measure it, and the CPU seconds per second that each waiting actor uses.

    python benchmarks/bench_ray_calls.py [--calls 300] [--work-rounds 5]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import numpy as np
import ray


@ray.remote(num_cpus=0.4)
class Echo:
    def echo(self, batch):
        return batch

    def dispatch(self, products: int | None) -> float | None:
        """The compiled graph's entry: `products` matrix products, or nothing (an actor outside the phase)."""
        return None if products is None else self.work(products)

    def work(self, products: int) -> float:
        """Seconds for `products` 200 x 200 float64 matrix products on one thread (a stand-in for an update)."""
        a = np.random.default_rng(0).random((200, 200))
        start = time.perf_counter()
        for _ in range(products):
            a = a @ a
            a /= a.max()
        return time.perf_counter() - start

    def cpu_seconds(self) -> float:
        t = os.times()
        return t.user + t.system


def median_ms(call, calls: int, warmup: int = 20) -> float:
    for _ in range(warmup):
        call()
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def compiled(actors, batch, calls: int) -> float:
    from ray.dag import InputNode, MultiOutputNode

    with InputNode() as inp:
        outs = [a.echo.bind(inp) for a in actors]
        dag = outs[0] if len(outs) == 1 else MultiOutputNode(outs)
    graph = dag.experimental_compile()
    try:
        return median_ms(lambda: ray.get(graph.execute(batch)), calls)
    finally:
        graph.teardown()


def work_beside_waiting_actors(rounds: int, products: int = 300) -> None:
    """Two actors work, three wait: through plain calls, then through one compiled graph over all five."""
    from ray.dag import InputNode, MultiOutputNode

    actors = [Echo.remote() for _ in range(5)]
    ray.get([a.work.remote(1) for a in actors])
    working, waiting = actors[:2], actors[2:]

    def waiting_cpu(run) -> tuple[float, float]:  # (median work s, CPU s per s of each waiting actor)
        before, start = ray.get([a.cpu_seconds.remote() for a in waiting]), time.perf_counter()
        times = [run() for _ in range(rounds)]
        after, wall = ray.get([a.cpu_seconds.remote() for a in waiting]), time.perf_counter() - start
        return statistics.median(times), statistics.mean(y - x for x, y in zip(before, after)) / wall

    plain = waiting_cpu(lambda: max(ray.get([a.work.remote(products) for a in working])))
    with InputNode() as inp:
        graph = MultiOutputNode([a.dispatch.bind(inp[i]) for i, a in enumerate(actors)]).experimental_compile()
    try:
        messages = [products] * len(working) + [None] * len(waiting)
        in_graph = waiting_cpu(lambda: max(x for x in ray.get(graph.execute(*messages)) if x is not None))
    finally:
        graph.teardown()
    print(f"\n2 actors each doing {products} matrix products, 3 actors waiting ({rounds} rounds, medians)")
    print(f"{'calls':<16}{'work s':>8}{'waiting actor CPU s/s':>24}")
    for name, (seconds, cpu) in (("plain", plain), ("compiled graph", in_graph)):
        print(f"{name:<16}{seconds:>8.3f}{cpu:>24.2f}")
    print(f"work through the compiled graph / plain: {in_graph[0] / plain[0]:.2f}x")
    for a in actors:
        ray.kill(a)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=300)
    ap.add_argument("--work-rounds", type=int, default=5)
    args = ap.parse_args()
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, ray {ray.__version__}, "
          f"load at start {os.getloadavg()[0]:.2f}")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        actors = [Echo.remote() for _ in range(3)]
        ray.get([a.echo.remote(0) for a in actors])
        batch = {k: np.zeros(64, dtype=np.int64) for k in range(8)}
        print(f"{'actors':<8}{'remote ms':>11}{'compiled ms':>13}{'ratio':>8}")
        for n in (1, 3):
            group = actors[:n]
            plain = median_ms(lambda: ray.get([a.echo.remote(batch) for a in group]), args.calls)
            graph = compiled(group, batch, args.calls)
            print(f"{n:<8}{plain:>11.3f}{graph:>13.3f}{graph / plain:>8.2f}")
        for a in actors:
            ray.kill(a)
        work_beside_waiting_actors(args.work_rounds)
    finally:
        ray.shutdown()


if __name__ == "__main__":
    main()
