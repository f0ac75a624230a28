"""One small actor-group abstraction reused by every role (the shape of OpenRLHF's launcher).

An `ActorGroup` is N actors of one class placed on bundles of a placement group; `call` runs a
method on all of them and gathers the results; `map_unordered` hands items to whichever actor is
idle and returns the results in item order (eval's scorers, label's judges, expand's shard writers).
Roles that share a placement group (colocation) pass the same `pg` with fractional resources.
`setup_process_group` joins the N actors into one torch.distributed group (gloo on CPU, NCCL on
GPU) through `batray.distributed`.

The library places actors but never imports them: the actor classes (in `actors/`) are handed in
by the caller, the way verl's trainer takes its role -> worker mapping (`batray.stages.ActorKit`).
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import ray
from ray.util.placement_group import PlacementGroup, placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from batray.errors import BatrayError
from batray.progress import Progress


def make_placement_group(bundles: list[dict[str, float]], strategy: str = "PACK", timeout_s: float = 120.0,
                         name: str = "") -> PlacementGroup:
    """Reserve `bundles`; fail with one line if the cluster cannot provide them in time."""
    pg = placement_group(bundles, strategy=strategy, name=name)
    ready, _ = ray.wait([pg.ready()], timeout=timeout_s)
    if not ready:
        remove_placement_group(pg)
        total = ray.cluster_resources()
        raise BatrayError(
            f"placement group {name or ''} ({len(bundles)} bundles of {bundles[0]}, {strategy}) could not be "
            f"scheduled within {timeout_s:g}s; the cluster has {dict((k, v) for k, v in total.items() if k in ('CPU', 'GPU'))}"
        )
    return pg


class ActorGroup:
    """N actors of `actor_cls` (a plain class; it is wrapped with `ray.remote` here)."""

    def __init__(
        self,
        actor_cls: type,
        num_actors: int,
        *,
        num_cpus: float = 1.0,
        num_gpus: float = 0.0,
        pg: PlacementGroup | None = None,
        bundle_indices: Sequence[int] | None = None,
        init_args: tuple = (),
        init_kwargs: dict | None = None,
        max_restarts: int = 0,
        max_task_retries: int = 0,
        name: str | None = None,
        runtime_env: dict | None = None,
    ):
        self.name = name or actor_cls.__name__
        self.pg = pg
        remote_cls = ray.remote(actor_cls) if not hasattr(actor_cls, "remote") else actor_cls
        self.actors = []
        for i in range(num_actors):
            options: dict[str, Any] = dict(
                num_cpus=num_cpus, num_gpus=num_gpus, max_restarts=max_restarts, max_task_retries=max_task_retries
            )
            if runtime_env:
                options["runtime_env"] = runtime_env
            if pg is not None:
                index = bundle_indices[i] if bundle_indices is not None else i
                options["scheduling_strategy"] = PlacementGroupSchedulingStrategy(
                    placement_group=pg, placement_group_bundle_index=index
                )
            self.actors.append(
                remote_cls.options(**options).remote(*init_args, **(init_kwargs or {}), **self._rank_kwargs(actor_cls, i, num_actors))
            )

    @staticmethod
    def _rank_kwargs(actor_cls: type, rank: int, world_size: int) -> dict:
        """Pass rank/world_size to constructors that accept them."""
        import inspect

        target = getattr(actor_cls, "__ray_actor_class__", actor_cls)
        params = inspect.signature(target.__init__).parameters
        return {k: v for k, v in (("rank", rank), ("world_size", world_size)) if k in params}

    def __len__(self) -> int:
        return len(self.actors)

    def call_async(self, method: str, *args, **kwargs) -> list[ray.ObjectRef]:
        return [getattr(a, method).remote(*args, **kwargs) for a in self.actors]

    def call(self, method: str, *args, timeout_s: float | None = None, **kwargs) -> list:
        """Run `method(*args, **kwargs)` on every actor; gather the results in rank order."""
        return ray.get(self.call_async(method, *args, **kwargs), timeout=timeout_s)

    def call_each(self, method: str, per_actor_args: Sequence[tuple], timeout_s: float | None = None) -> list:
        """Run `method(*per_actor_args[i])` on actor i (e.g. a shard of a batch each)."""
        if len(per_actor_args) != len(self.actors):
            raise ValueError(f"{self.name}: {len(per_actor_args)} argument tuples for {len(self.actors)} actors")
        refs = [getattr(a, method).remote(*args) for a, args in zip(self.actors, per_actor_args)]
        return ray.get(refs, timeout=timeout_s)

    def setup_process_group(self, backend: str | None = None, timeout_s: float = 60.0) -> None:
        """Join all actors into one torch.distributed group; each actor needs `join_process_group`."""
        addr, port = ray.get(self.actors[0].master_address.remote())
        ray.get([a.join_process_group.remote(addr, port, backend, timeout_s) for a in self.actors])

    def map_unordered(self, method: str, items: Sequence, *, call_args: Callable[[Any], tuple[tuple, dict]] | None = None,
                      on_result: Callable[[int, Any, Any], None] | None = None, progress: Progress | None = None,
                      weight: Callable[[Any], int] = lambda item: 1) -> list:
        """`method` over `items`, each item handed to whichever actor is idle; results in item order.

        call_args(item) -> (args, kwargs) of the call (default: the item alone), made when the item is
        dispatched; on_result(index, item, result) runs as each result arrives (to save partial output);
        progress advances by weight(item) per finished item. An actor's failure stops the map with one
        line naming the group and the remote cause (a `BatrayError` raised remotely is re-raised as is).
        """
        call_args = call_args or (lambda item: ((item,), {}))
        results: list = [None] * len(items)
        pending: dict = {}  # ref -> (actor, index)
        idle = list(self.actors)
        next_item, done = 0, 0
        try:
            while next_item < len(items) or pending:
                while idle and next_item < len(items):
                    actor = idle.pop()
                    args, kwargs = call_args(items[next_item])
                    pending[getattr(actor, method).remote(*args, **kwargs)] = (actor, next_item)
                    next_item += 1
                ready, _ = ray.wait(list(pending), num_returns=1)
                actor, index = pending.pop(ready[0])
                results[index] = self._get(ready[0], method)
                idle.append(actor)
                if on_result is not None:
                    on_result(index, items[index], results[index])
                done += weight(items[index])
                if progress is not None:
                    progress.update(done)
        finally:
            if pending:
                for ref in pending:
                    ray.cancel(ref, force=False)
        return results

    def _get(self, ref, method: str):
        try:
            return ray.get(ref)
        except ray.exceptions.RayTaskError as e:
            if isinstance(e.cause, BatrayError):
                raise e.cause from None
            raise BatrayError(f"{self.name}.{method} failed: {remote_error_line(e)}") from None
        except ray.exceptions.RayActorError as e:
            raise BatrayError(f"{self.name}: an actor died during {method}: {remote_error_line(e)}") from None

    def kill(self) -> None:
        for a in self.actors:
            ray.kill(a)
        self.actors = []


def remote_error_line(err: Exception) -> str:
    """The last line of a remote traceback (the original exception), else the first line."""
    lines = [line for line in str(err).strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else type(err).__name__


def busy(method: Callable) -> Callable:
    """Count the time an actor spends inside `method` (its own compute, on its own clock).

    A driver that reads it back with `take_busy()` after a phase can split the phase's wall time into
    compute (the slowest actor's busy time) and orchestration (Ray calls, serialization, transfers).
    """

    @functools.wraps(method)
    def timed(self, *args, **kwargs):
        if getattr(self, "_busy_inside", False):  # called by another @busy method: its clock already runs
            return method(self, *args, **kwargs)
        self._busy_inside, start = True, time.perf_counter()
        try:
            return method(self, *args, **kwargs)
        finally:
            self._busy_inside = False
            self._busy_s = getattr(self, "_busy_s", 0.0) + time.perf_counter() - start

    return timed


class BusyClock:
    """Mixin: `take_busy()` returns the seconds spent in `@busy` methods since the last call."""

    def take_busy(self) -> float:
        spent, self._busy_s = getattr(self, "_busy_s", 0.0), 0.0
        return spent


class DistributedWorker(BusyClock):
    """Mixin for actor classes that join a torch.distributed group with their group peers."""

    def __init__(self, rank: int = 0, world_size: int = 1):
        self.rank = rank
        self.world_size = world_size

    def master_address(self) -> tuple[str, int]:
        from batray.distributed import free_port, node_ip

        return node_ip(), free_port()

    def join_process_group(self, addr: str, port: int, backend: str | None, timeout_s: float) -> None:
        from batray.distributed import init_process_group

        # What torchrun would set; DeepSpeed reads them. Ray gives each actor its own CUDA_VISIBLE_DEVICES,
        # so this process's device is always 0 (LOCAL_RANK), whatever its rank.
        os.environ.update(RANK=str(self.rank), WORLD_SIZE=str(self.world_size), LOCAL_RANK="0",
                          MASTER_ADDR=addr, MASTER_PORT=str(port))
        init_process_group(self.rank, self.world_size, addr, port, backend=backend, timeout_s=timeout_s)

    def node_id(self) -> str:
        return ray.get_runtime_context().get_node_id()
