"""Ray actors: thin shells that hold a model, engine or client and call into `batray/`. No math here.

`kit()` hands the library the actor classes it places (`batray.stages.ActorKit`); the jobs pass it in.
The classes are named by import path: each is imported when a stage first places it.
"""

from __future__ import annotations


def kit():
    from batray.stages.kit import ActorKit

    return ActorKit(policy="actors.policy:PolicyActor", critic="actors.critic:CriticActor",
                    reference="actors.reference:ReferenceActor", reward="actors.reward:RewardActor",
                    rollout="actors.rollout:RolloutActor", labeler="actors.labeler:LabelerActor",
                    eval_scorer="actors.eval_scorer:EvalScorer", shard_writer="actors.shard_writer:ShardWriter")
