"""Ray actors: thin shells that hold a model, engine or client and call into `batray/`. No math here.

`kit()` hands the library the actor classes it places (`batray.stages.ActorKit`); the jobs pass it in.
"""

from __future__ import annotations


def kit():
    from actors.critic import CriticActor
    from actors.eval_scorer import EvalScorer
    from actors.labeler import LabelerActor
    from actors.policy import PolicyActor
    from actors.reference import ReferenceActor
    from actors.reward import RewardActor
    from actors.rollout import RolloutActor
    from actors.shard_writer import ShardWriter
    from batray.stages.kit import ActorKit

    return ActorKit(policy=PolicyActor, critic=CriticActor, reference=ReferenceActor, reward=RewardActor,
                    rollout=RolloutActor, labeler=LabelerActor, eval_scorer=EvalScorer, shard_writer=ShardWriter)
