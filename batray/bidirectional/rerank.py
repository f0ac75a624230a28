"""Bidirectional reranking: N answers sampled left to right, ranked by both directions.

    score(y) = (1 - w) * forward(y) / |y|  +  w * backward(y) / |y|

with forward/backward from `batray.bidirectional.scoring` and w = `rerank.weight` in the config.
w = 0 is forward-only best-of-N (the usual length-normalized likelihood ranking); w = 1 ranks by the
right-to-left direction alone. Ties keep the sampling order, so the choice is deterministic.
"""

from __future__ import annotations

from dataclasses import dataclass

from batray.bidirectional.scoring import BidirectionalScorer, PairScores
from batray.rollout.engine import Completion, HFRolloutEngine, SamplingParams


def rerank_score(forward_per_token: float, backward_per_token: float, weight: float) -> float:
    """The weighted sum of length-normalized forward and backward log-likelihoods (w = weight)."""
    if weight == 0:
        return forward_per_token  # exactly forward-only, whatever the backward value
    return (1.0 - weight) * forward_per_token + weight * backward_per_token


def best_index(scores: list[float]) -> int:
    """argmax, the first on ties."""
    return max(range(len(scores)), key=lambda i: (scores[i], -i))


@dataclass
class Candidate:
    text: str
    token_ids: list[int]
    finish_reason: str
    scores: PairScores
    score: float  # rerank_score at the weight used

    def to_dict(self) -> dict:
        return {"text": self.text, "finish_reason": self.finish_reason, "score": self.score,
                "forward": self.scores.forward_per_token, "backward": self.scores.backward_per_token,
                "tokens": self.scores.n_answer}


@dataclass
class Reranked:
    """One prompt's candidates in sampling order; `order` ranks them best first."""

    candidates: list[Candidate]
    order: list[int]
    weight: float

    @property
    def best(self) -> Candidate:
        return self.candidates[self.order[0]]

    @property
    def best_index(self) -> int:
        return self.order[0]

    def ranked(self) -> list[Candidate]:
        return [self.candidates[i] for i in self.order]


def rank(completions: list[Completion], scores: list[PairScores], weight: float) -> Reranked:
    """Order one prompt's sampled completions by `rerank_score` (stable: ties keep sampling order)."""
    values = [rerank_score(s.forward_per_token, s.backward_per_token, weight) for s in scores]
    cands = [Candidate(c.text, list(c.token_ids), c.finish_reason, s, v) for c, s, v in zip(completions, scores, values)]
    order = sorted(range(len(cands)), key=lambda i: (-values[i], i))
    return Reranked(cands, order, weight)


class Reranker:
    """Samples N answers per prompt with `HFRolloutEngine` and ranks them with both directions."""

    def __init__(self, model, tokenizer, *, device: str = "cpu", batch_size: int = 16, backward_model=None):
        self.engine = HFRolloutEngine(model, tokenizer, device=device, batch_size=batch_size)
        backward = backward_model.to(device) if backward_model is not None else None
        self.scorer = BidirectionalScorer(self.engine.model, tokenizer, batch_size=batch_size, backward_model=backward)
        self.tokenizer = tokenizer

    def sample(self, prompts: list[list[int]], n: int, params: SamplingParams) -> list[list[Completion]]:
        """n completions per prompt (one batched `generate` over all prompts x n)."""
        flat = self.engine.generate([list(p) for p in prompts for _ in range(n)], params)
        return [flat[i * n:(i + 1) * n] for i in range(len(prompts))]

    def score(self, prompts: list[list[int]], samples: list[list[Completion]]) -> list[list[PairScores]]:
        pairs = [(p, c.token_ids) for p, cs in zip(prompts, samples) for c in cs]
        flat = self.scorer.score(pairs)
        out, k = [], 0
        for cs in samples:
            out.append(flat[k:k + len(cs)])
            k += len(cs)
        return out

    def rerank(self, prompts: list[list[int]], n: int, weight: float, params: SamplingParams) -> list[Reranked]:
        samples = self.sample(prompts, n, params)
        scores = self.score(prompts, samples)
        return [rank(cs, ss, weight) for cs, ss in zip(samples, scores)]
