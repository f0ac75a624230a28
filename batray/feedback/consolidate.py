"""The consolidation policy of `batray prefs`: human and AI labels -> one d in {-1, 0, 1} per pair.

Policy (each rule a `prefs.*` config field):

1. d of one label: if `unacceptable_loses` and exactly one response is unacceptable, the acceptable
   one wins (d = -1 when only A is acceptable, +1 when only B is) whatever the helpfulness answer;
   else d follows helpfulness: a_better -1, b_better +1, both_good / both_bad 0 (equivalent);
   a label without helpfulness keeps its own d.
2. AI labels with confidence below `min_confidence` are dropped (counted).
3. Several labels of one source on one pair are merged by a vote on d: humans one vote each, AI
   raters weighted by confidence; a balanced vote is a tie (d = 0). The merged confidence is the
   share of the vote behind the result (times the mean confidence of AI raters behind it).
4. `human_overrides_ai`: a pair with human labels takes the human result only; otherwise both the
   human and the AI result are kept as separate rows (the reward model sees both).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime

from batray.feedback.judge import HELPFULNESS_D


@dataclass
class Policy:
    unacceptable_loses: bool = True
    human_overrides_ai: bool = True
    min_confidence: float = 0.0


@dataclass
class Summary:
    rows_in: Counter = field(default_factory=Counter)  # by source
    dropped_low_confidence: int = 0
    rows_out: Counter = field(default_factory=Counter)  # by (source, d)
    both_labeled: int = 0
    agree: int = 0
    overridden: int = 0
    acceptability_decided: int = 0  # labels whose d came from rule 1 against the helpfulness answer

    def lines(self) -> list[str]:
        out = [f"input labels: {dict(self.rows_in)}; dropped below min_confidence: {self.dropped_low_confidence}"]
        for source in sorted({s for s, _ in self.rows_out}):
            c = {d: self.rows_out[(source, d)] for d in (-1, 0, 1)}
            out.append(f"{source}: {sum(c.values())} pairs (a preferred {c[-1]}, b preferred {c[1]}, ties {c[0]})")
        total = sum(self.rows_out.values())
        ties = sum(n for (_, d), n in self.rows_out.items() if d == 0)
        out.append(f"preferences: {total} rows, ties {ties} ({ties / total:.0%})" if total else "preferences: 0 rows")
        if self.both_labeled:
            out.append(f"human/AI agreement on {self.both_labeled} pairs labeled by both: {self.agree / self.both_labeled:.0%}"
                       f" ({self.agree} agree); {self.overridden} AI labels overridden by humans")
        else:
            out.append("human/AI agreement: no pair labeled by both")
        out.append(f"unacceptable-loses rule changed d of {self.acceptability_decided} labels")
        return out


def label_d(row: dict, policy: Policy) -> int:
    """Rule 1: d of one label."""
    a, b = row.get("acceptable_a"), row.get("acceptable_b")
    if policy.unacceptable_loses and a is not None and b is not None and a != b:
        return -1 if a else 1
    h = row.get("helpfulness")
    return HELPFULNESS_D[h] if h in HELPFULNESS_D else int(row["d"])


def merge(rows: list[dict], policy: Policy) -> dict:
    """Rule 3: one row from several labels of one source on one pair."""
    weights = [(r["confidence"] if r["source"] == "ai" and r.get("confidence") is not None else 1.0) for r in rows]
    ds = [label_d(r, policy) for r in rows]
    score = sum(w * d for w, d in zip(weights, ds))
    d = 0 if abs(score) < 1e-12 else (1 if score > 0 else -1)
    behind = [(w, r) for w, r, di in zip(weights, rows, ds) if di == d]
    total = sum(weights) or 1.0
    share = sum(w for w, _ in behind) / total
    if rows[0]["source"] == "ai":
        confs = [r["confidence"] for _, r in behind if r.get("confidence") is not None]
        confidence = share * (sum(confs) / len(confs)) if confs else share
    else:
        confidence = share if len(rows) > 1 else rows[0].get("confidence")
    helpfulness = Counter(r.get("helpfulness") for _, r in behind if r.get("helpfulness")).most_common(1)

    def majority(key: str):
        vals = [r.get(key) for r in rows if r.get(key) is not None]
        return None if not vals else sum(vals) * 2 >= len(vals)

    first = rows[0]
    return {
        "pair_id": first["pair_id"], "prompt": first["prompt"], "response_a": first["response_a"],
        "response_b": first["response_b"], "d": d, "acceptable_a": majority("acceptable_a"),
        "acceptable_b": majority("acceptable_b"), "helpfulness": helpfulness[0][0] if helpfulness else None,
        "source": first["source"], "rater": "+".join(sorted({str(r.get("rater")) for r in rows})),
        "confidence": confidence, "created_at": max((_utc(r["created_at"]) for r in rows if r.get("created_at")),
                                                    default=None),
    }


def _utc(value) -> datetime:
    """A timestamp from parquet (datetime) or JSONL (ISO string), as an aware UTC datetime."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def consolidate(ai_rows: list[dict], human_rows: list[dict], policy: Policy) -> tuple[list[dict], Summary]:
    """Rules 1-4 over all labels; returns preference rows (one per pair and kept source) and a summary."""
    s = Summary()
    by_pair: dict[str, dict[str, list[dict]]] = defaultdict(lambda: {"human": [], "ai": []})
    order: list[str] = []
    for source, rows in (("human", human_rows), ("ai", ai_rows)):
        for r in rows:
            r = {**r, "source": source}
            s.rows_in[source] += 1
            if source == "ai" and r.get("confidence") is not None and r["confidence"] < policy.min_confidence:
                s.dropped_low_confidence += 1
                continue
            if r.get("helpfulness") in HELPFULNESS_D and label_d(r, policy) != HELPFULNESS_D[r["helpfulness"]]:
                s.acceptability_decided += 1
            if r["pair_id"] not in by_pair:
                order.append(r["pair_id"])
            by_pair[r["pair_id"]][source].append(r)
    out = []
    for pid in order:
        groups = by_pair[pid]
        human = merge(groups["human"], policy) if groups["human"] else None
        ai = merge(groups["ai"], policy) if groups["ai"] else None
        if human and ai:
            s.both_labeled += 1
            s.agree += human["d"] == ai["d"]
        keep = [x for x in (human, ai) if x is not None]
        if human and ai and policy.human_overrides_ai:
            keep = [human]
            s.overridden += 1
        for row in keep:
            s.rows_out[(row["source"], row["d"])] += 1
        out += keep
    return out, s
