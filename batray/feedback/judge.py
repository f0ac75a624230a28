"""Reading a judge's answers and turning the answers about one pair into one preference label.

Pure functions, no I/O. An `Answer` is a distribution over a question's options: from the first
answer token's log-probabilities when the endpoint returned them (a calibrated confidence), else a
one-hot from parsing the text. Helpfulness is asked in both orders (A/B and B/A); the two answers are
mapped back to a/b and averaged, which cancels the judge's position bias, and a disagreement between
the orders becomes a tie (`on_order_disagreement: tie`) or just a lower confidence
(`lower_confidence`: the averaged distribution decides, and its top probability is the confidence).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from batray.feedback.templates import ACCEPTABILITY_OPTIONS, HELPFULNESS_OPTIONS

# d of docs/DESIGN.md §3 from the a/b helpfulness label (the same mapping as the annotation export).
HELPFULNESS_D = {"a_better": -1, "b_better": 1, "both_good": 0, "both_bad": 0}


@dataclass
class Answer:
    dist: dict[str, float]  # option -> probability (sums to 1)
    from_logprobs: bool
    text: str = ""

    @property
    def choice(self) -> str:
        return max(self.dist, key=self.dist.get)


def _labels(n: int) -> list[str]:
    return [str(i + 1) for i in range(n)]


def option_distribution(tokens: list[tuple[str, float, list[tuple[str, float]]]], options: tuple[str, ...],
                        max_positions: int = 4) -> dict[str, float] | None:
    """Probabilities of the option numbers at the first answer position that has any of them.

    `tokens`: per generated token, (token, logprob, [(alternative, logprob), ...]). Tokens are
    compared stripped (" 1" and "1" both count for option 1); each distinct token string counts once.
    """
    labels = _labels(len(options))
    for tok, lp, top in tokens[:max_positions]:
        seen: dict[str, float] = {}
        for t, l in [(tok, lp), *top]:
            seen.setdefault(t, l)
        mass = [0.0] * len(options)
        for t, l in seen.items():
            s = t.strip().rstrip(".:)")
            if s in labels:
                mass[labels.index(s)] += math.exp(l)
        total = sum(mass)
        if total > 0:
            return {o: m / total for o, m in zip(options, mass)}
    return None


def parse_text(text: str, options: tuple[str, ...], words: tuple[tuple[str, ...], ...]) -> str | None:
    """An option from a free-text answer: a leading number, else the longest option phrase, else any
    standalone option number; None when nothing matches."""
    labels = _labels(len(options))
    body = text.strip()
    lead = re.match(r"^\W*(\d+)(?!\d)", body)
    if lead and lead.group(1) in labels:
        return options[labels.index(lead.group(1))]
    low = body.lower()
    phrases = sorted(((p.lower(), o) for o, ps in zip(options, words) for p in ps), key=lambda x: -len(x[0]))
    hits = [(low.find(p), -len(p), o) for p, o in phrases if p in low]
    if hits:
        return min(hits)[2]
    anywhere = re.search(rf"(?<!\d)([1-{len(options)}])(?!\d)", body)
    return options[labels.index(anywhere.group(1))] if anywhere else None


def read_answer(text: str, tokens: list | None, options: tuple[str, ...], words) -> Answer | None:
    """An `Answer` from log-probabilities when there are any with an option in them, else from text."""
    if tokens:
        dist = option_distribution(tokens, options)
        if dist is not None:
            return Answer(dist, True, text)
    choice = parse_text(text or "", options, words)
    if choice is None:
        return None
    return Answer({o: float(o == choice) for o in options}, False, text)


def to_ab(answer: Answer, a_first: bool) -> dict[str, float]:
    """A helpfulness answer about (first, second) as a distribution over a_better/b_better/both_*."""
    first, second = ("a_better", "b_better") if a_first else ("b_better", "a_better")
    d = answer.dist
    return {first: d["first_better"], second: d["second_better"], "both_good": d["both_good"], "both_bad": d["both_bad"]}


def combine(acc_a: Answer, acc_b: Answer, help_ab: Answer, help_ba: Answer | None,
            on_disagreement: str = "tie") -> dict:
    """The label of one pair: acceptable_a/b, helpfulness (a/b), d, confidence, orders_agree."""
    views = [to_ab(help_ab, True)] + ([to_ab(help_ba, False)] if help_ba is not None else [])
    mean = {k: sum(v[k] for v in views) / len(views) for k in views[0]}
    ranked = sorted(mean.items(), key=lambda kv: -kv[1])
    picks = {max(v, key=v.get) for v in views}
    agree = len(picks) == 1
    helpfulness: str | None = ranked[0][0]
    if math.isclose(ranked[0][1], ranked[1][1], abs_tol=1e-9) or (not agree and on_disagreement == "tie"):
        helpfulness = None  # no winner: an exact tie, or orders disagree under the tie policy
    return {
        "acceptable_a": acc_a.dist["acceptable"] >= 0.5,
        "acceptable_b": acc_b.dist["acceptable"] >= 0.5,
        "helpfulness": helpfulness,
        "d": HELPFULNESS_D.get(helpfulness, 0),
        "confidence": ranked[0][1],
        "orders_agree": agree,
    }


ACCEPTABILITY = ACCEPTABILITY_OPTIONS
HELPFULNESS = HELPFULNESS_OPTIONS
