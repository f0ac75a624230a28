"""Test hooks, in one place: named points in long-running code where a test may act.

Production code calls `fire(POINT, **info)` at a few points; nothing registers callbacks outside
tests, so a fire is one dict lookup. A test registers one for the length of a block:

    with hooks.on(hooks.PPO_STEP_DONE, kill_the_engine_at_step_2):
        run_ppo(...)

Points inside Ray Train workers (other processes) receive the callbacks the driver had registered
when the job started: `carried()` lists them (they must be picklable: module-level functions or
objects of importable classes), the job pickles them along, and the worker calls `install` first.
Fault injection (a crash at step N, an actor killed, a node removed) goes through this alone; no
public function carries a test-only parameter.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

TRAIN_BEFORE_STEP = "train.before_step"  # Ray Train worker, before optimizer step `step` (stage=, step=, resumed=)
TRAIN_FINAL = "train.final"  # Ray Train worker, every rank, after the final folder is written (stage=, rank=, model=:
# the trained module with full parameters, gathered under ZeRO-3; a collective point, like the save itself)
PPO_STEP_DONE = "ppo.step_done"  # PPO driver, after step `step` is logged and checkpointed (step=, roles=)

POINTS = (TRAIN_BEFORE_STEP, TRAIN_FINAL, PPO_STEP_DONE)
CARRIED = (TRAIN_BEFORE_STEP, TRAIN_FINAL)  # points that run in other processes

_callbacks: dict[str, list[Callable[..., None]]] = {}


def fire(point: str, **info) -> None:
    for callback in _callbacks.get(point, ()):
        callback(**info)


@contextlib.contextmanager
def on(point: str, callback: Callable[..., None]) -> Iterator[None]:
    if point not in POINTS:
        raise ValueError(f"unknown hook point {point!r}; one of {POINTS}")
    _callbacks.setdefault(point, []).append(callback)
    try:
        yield
    finally:
        _callbacks[point].remove(callback)


def carried() -> list[tuple[str, Callable[..., None]]]:
    """The callbacks of points that run in other processes, to pickle into a job."""
    return [(point, cb) for point in CARRIED for cb in _callbacks.get(point, ())]


def install(callbacks: list[tuple[str, Callable[..., None]]]) -> None:
    """In a worker process: register what `carried()` returned on the driver."""
    for point, cb in callbacks:
        _callbacks.setdefault(point, []).append(cb)
