"""The actor classes a stage places, handed to the library by its caller.

`batray/` never imports `actors/` (the library stays importable and testable without Ray actors);
the stages that place actors (pairs, label, ppo, eval, expand, grow) take an `ActorKit` instead, the
way verl's trainer takes its role -> worker-class mapping. `actors.kit()` returns the real one; the
jobs pass it in.

A role is a class or its import path (`"actors.policy:PolicyActor"`), imported when a stage first asks
for it (`need`, `get`): `actors.kit()` names its classes by path, so a command that places no actors (or
places them after its data work) does not import them, and torch with them, before it starts.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

Role = type | str | None  # a class, "module:Class", or none


@dataclass(frozen=True)
class ActorKit:
    policy: Role = None  # PPO trainer rank (pi_phi)
    critic: Role = None  # PPO value model rank
    reference: Role = None  # the frozen pi_inst of Eq. 4
    reward: Role = None  # r_theta(x, y): a reward model or a rule
    rollout: Role = None  # a generation engine (HF generate on CPU, vLLM on GPU)
    labeler: Role = None  # AI-feedback judge client
    eval_scorer: Role = None  # CMMLU / C-Eval scoring
    shard_writer: Role = None  # parameter expansion: writes output shards

    def get(self, role: str) -> type | None:
        """The role's class (imported now if given by path), or None when the kit has none."""
        cls = getattr(self, role)
        if isinstance(cls, str):
            module, _, name = cls.partition(":")
            cls = getattr(importlib.import_module(module), name)
        return cls

    def need(self, role: str) -> type:
        cls = self.get(role)
        if cls is None:
            raise RuntimeError(f"this ActorKit has no {role} actor class (pass actors.kit())")
        return cls
