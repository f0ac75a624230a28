"""What one actor call costs on this machine: a plain Ray call against a Ray Compiled Graph call.

The PPO step's orchestration (`bench_ppo.py`) is mostly Ray's call-and-return path: ~9 calls per step,
each carrying a small batch. This measures that path alone, with a batch-shaped argument (eight int64
arrays of 64 values) echoed back by idle fractional-CPU actors, one actor and three in parallel (the
experience phase's fan-out), each way:

- `.remote()` + `ray.get`, as `batray.ppo.driver` calls its roles today;
- the same calls through a compiled graph (`ray.dag ... experimental_compile()`), which keeps a
  shared-memory channel open to each actor instead of submitting a task per call.

    python benchmarks/bench_ray_calls.py [--calls 300]
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=300)
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
    finally:
        ray.shutdown()


if __name__ == "__main__":
    main()
