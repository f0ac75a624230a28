"""Fault injection for tests, through `batray.hooks` (picklable: Ray Train workers receive them)."""

from __future__ import annotations


class FailBeforeStep:
    """Crash a training worker before optimizer step `step`, on the first attempt only (a resumed run passes)."""

    def __init__(self, step: int):
        self.step = step

    def __call__(self, *, stage: str, step: int, resumed: bool) -> None:
        if not resumed and step >= self.step:
            raise RuntimeError(f"injected failure before {stage} step {self.step}")


def node_ids(roles) -> dict[str, list[str]]:
    """The node of every actor of a PPO run, per role (placement checks)."""
    import ray

    def node(_self):
        return ray.get_runtime_context().get_node_id()

    return {r: ray.get([a.__ray_call__.remote(node) for a in g.actors]) for r, g in roles.groups.items()}
