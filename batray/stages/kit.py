"""The actor classes a stage places, handed to the library by its caller.

`batray/` never imports `actors/` (the library stays importable and testable without Ray actors);
the stages that place actors (pairs, label, ppo, eval, expand, grow) take an `ActorKit` instead, the
way verl's trainer takes its role -> worker-class mapping. `actors.kit()` returns the real one; the
jobs pass it in.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ActorKit:
    policy: type | None = None  # PPO trainer rank (pi_phi)
    critic: type | None = None  # PPO value model rank
    reference: type | None = None  # the frozen pi_inst of Eq. 4
    reward: type | None = None  # r_theta(x, y): a reward model or a rule
    rollout: type | None = None  # a generation engine (HF generate on CPU, vLLM on GPU)
    labeler: type | None = None  # AI-feedback judge client
    eval_scorer: type | None = None  # CMMLU / C-Eval scoring
    shard_writer: type | None = None  # parameter expansion: writes output shards

    def need(self, role: str) -> type:
        cls = getattr(self, role)
        if cls is None:
            raise RuntimeError(f"this ActorKit has no {role} actor class (pass actors.kit())")
        return cls
