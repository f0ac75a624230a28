"""Labeling pairs against one endpoint: four questions per pair, answers combined into one label.

Per pair: acceptability of A, acceptability of B, helpfulness with A shown first, and (with
`both_orders`) helpfulness with B shown first. Every input pair comes back exactly once, either as a
preferences row (docs/DESIGN.md §3, `source: ai`) or as a failure with its reason.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import UTC, datetime

from batray.feedback.client import Budget, EndpointSettings, JudgeClient, JudgeError, Secret
from batray.feedback.judge import combine
from batray.feedback.templates import (
    ACCEPTABILITY_OPTIONS,
    HELPFULNESS_OPTIONS,
    Templates,
    acceptability_messages,
    detect_language,
    helpfulness_messages,
)


@dataclass
class LabelResult:
    rows: list[dict] = field(default_factory=list)  # labeled pairs, preferences contract
    failures: list[dict] = field(default_factory=list)  # pair_id, rater, error, prompt, response_a/b
    stats: dict = field(default_factory=dict)  # requests, retries, failure kinds, budget used


def rater_name(settings: EndpointSettings) -> str:
    """How an endpoint is named in `rater`: the model and where it was served."""
    return f"{settings.model}@{settings.url.rstrip('/')}"


def questions_per_pair(both_orders: bool) -> int:
    return 4 if both_orders else 3


async def label_pairs(pairs: list[dict], settings: EndpointSettings, api_key: Secret, templates: dict[str, Templates],
                      *, both_orders: bool = True, on_disagreement: str = "tie",
                      max_requests: int | None = None) -> LabelResult:
    budget = Budget(max_requests)
    client = JudgeClient(settings, api_key, budget)
    rater = rater_name(settings)
    out = LabelResult()
    try:
        results = await asyncio.gather(*(_label_one(client, p, templates, both_orders, on_disagreement) for p in pairs))
    finally:
        await client.close()
    now = datetime.now(UTC)
    for pair, (label, error) in zip(pairs, results):
        base = {k: pair[k] for k in ("pair_id", "prompt", "response_a", "response_b")}
        if error is None:
            out.rows.append({**base, "d": label["d"], "acceptable_a": label["acceptable_a"],
                             "acceptable_b": label["acceptable_b"], "helpfulness": label["helpfulness"],
                             "source": "ai", "rater": rater, "confidence": label["confidence"], "created_at": now})
        else:
            out.failures.append({**base, "rater": rater, "error": error})
    out.stats = {**client.stats, "budget_used": budget.used, "labeled": len(out.rows), "failed": len(out.failures)}
    return out


async def _label_one(client: JudgeClient, pair: dict, templates: dict[str, Templates], both_orders: bool,
                     on_disagreement: str) -> tuple[dict | None, str | None]:
    prompt, a, b = pair["prompt"], pair["response_a"], pair["response_b"]
    t = templates[detect_language(prompt)]
    asks = [
        (acceptability_messages(t, prompt, a), ACCEPTABILITY_OPTIONS, t.acceptability_words, "acceptability of A"),
        (acceptability_messages(t, prompt, b), ACCEPTABILITY_OPTIONS, t.acceptability_words, "acceptability of B"),
        (helpfulness_messages(t, prompt, a, b), HELPFULNESS_OPTIONS, t.helpfulness_words, "helpfulness (A first)"),
    ]
    if both_orders:
        asks.append((helpfulness_messages(t, prompt, b, a), HELPFULNESS_OPTIONS, t.helpfulness_words,
                     "helpfulness (B first)"))
    if not client.budget.take(len(asks)):
        return None, f"budget exhausted ({client.budget.used} requests used)"
    answers = await asyncio.gather(*(client.ask(*ask) for ask in asks), return_exceptions=True)
    for ans in answers:
        if isinstance(ans, JudgeError):
            return None, str(ans)
        if isinstance(ans, BaseException):
            return None, f"unexpected error: {type(ans).__name__}: {ans}"
    return combine(answers[0], answers[1], answers[2], answers[3] if both_orders else None, on_disagreement), None
