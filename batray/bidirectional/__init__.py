"""Both directions at inference (issue 11): backward scoring, bidirectional reranking, and the
hallucination experiment's measurement.

- `scoring`: forward log p(y | x) and backward log p_r2l(x, y) - log p_r2l(x) of an answer, from one
  model trained with Eq. 1 (`BidirectionalScorer`).
- `rerank`: N left-to-right samples ranked by (1 - w) forward + w backward, per answer token
  (`Reranker`, `rerank_score`); w = 0 is forward-only best-of-N.
- `serve_hook`: the `rerank` request field of `batray serve`.
- `hallucination`: answer accuracy and confidently wrong answers on the demo world's held-out and
  unseen fact questions, plain decoding vs reranking (`batray experiment hallucination`).
"""

from batray.bidirectional.rerank import Candidate, Reranked, Reranker, best_index, rank, rerank_score
from batray.bidirectional.scoring import BidirectionalScorer, PairScores, sequence_logprobs, strip_marker

__all__ = [
    "BidirectionalScorer", "Candidate", "PairScores", "Reranked", "Reranker", "best_index", "rank", "rerank_score",
    "sequence_logprobs", "strip_marker",
]
