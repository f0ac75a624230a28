"""Rollout engines: one interface, transformers `generate` on CPU/GPU and vLLM (lazily) on GPU."""

from batray.rollout.engine import Completion, HFRolloutEngine, RolloutEngine, SamplingParams, make_engine

__all__ = ["Completion", "HFRolloutEngine", "RolloutEngine", "SamplingParams", "make_engine"]
