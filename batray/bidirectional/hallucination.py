"""The hallucination measure (`batray experiment hallucination`, library part).

The demo world's `hallucination/questions.jsonl` asks about facts of two kinds: `held_out` (stated in
the pretraining corpus, never asked in instruction data: the model must recall them) and `unseen`
(stated nowhere: any specific answer is made up). Each answer is graded by `World.grade`: `right`
(states the gold object and no other), `wrong` (states another candidate: a confidently wrong
answer, the hallucination measure) or `unanswered` (states none).

For one model, the decodings compared are (all from the same sampled candidates where N > 1):

- `greedy`: plain left-to-right decoding, one answer;
- `best-of-N l2r`: N samples, the best by forward log-likelihood per token (rerank weight 0);
- `rerank w=W`: the same N samples ranked by (1 - W) forward + W backward per token;
- optionally `rerank w=W (pretrain r2l)`: the backward direction read by the pretrained checkpoint
  the instruction-tuned model came from (SFT trains only left to right);
- `oracle@N`: share of questions where ANY candidate is right (the ceiling reranking can reach).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from batray.bidirectional.rerank import Reranker, rank
from batray.data.io import read_rows
from batray.data.world import World
from batray.errors import DataError
from batray.rollout.engine import SamplingParams

KINDS = ("held_out", "unseen")
GRADES = ("right", "wrong", "unanswered")


def load_questions(path: str) -> list[dict]:
    """The questions (prompt, fact_id, kind, ...); rows missing a field are counted and refused."""
    rows, report = read_rows(path, "prompts")
    good = []
    for row in rows:
        if not isinstance(row.get("fact_id"), str) or row.get("kind") not in KINDS:
            report.rejected.append({"reason": "needs fact_id and kind (held_out|unseen)", "row": row})
        else:
            good.append(row)
    if report.rejected:
        raise DataError(report.summary(f"hallucination questions {path}"))
    if not good:
        raise DataError(f"hallucination questions {path}: no rows")
    return good


@dataclass
class Tally:
    """Grades per question kind for one decoding."""

    counts: dict[str, dict[str, int]] = field(default_factory=lambda: {k: dict.fromkeys(GRADES, 0) for k in KINDS})

    def add(self, kind: str, grade: str) -> None:
        self.counts[kind][grade] += 1

    def share(self, kind: str, grade: str) -> float:
        n = sum(self.counts[kind].values())
        return self.counts[kind][grade] / n if n else float("nan")

    def to_dict(self) -> dict:
        return {kind: {**c, "n": sum(c.values()), "accuracy": self.share(kind, "right"),
                       "confidently_wrong": self.share(kind, "wrong")} for kind, c in self.counts.items()}


def chat_prompt_ids(tokenizer, question: str) -> list[int]:
    from batray.models.chat import chat_prompt_ids as prompt_ids

    return prompt_ids(tokenizer, question)


def measure(model, tokenizer, world: World, questions: list[dict], *, n: int, weight: float,
            params: SamplingParams, backward_model=None, batch_size: int = 32) -> dict:
    """Grades of every decoding (see the module doc) for one model; returns {decoding: Tally.to_dict()}
    plus `examples` (a few questions with each decoding's answer)."""
    reranker = Reranker(model, tokenizer, batch_size=batch_size)
    prompts = [chat_prompt_ids(tokenizer, q["prompt"]) for q in questions]
    greedy = reranker.engine.generate(prompts, SamplingParams(0.0, 1.0, params.max_new_tokens))
    samples = reranker.sample(prompts, n, params)
    scores = reranker.score(prompts, samples)
    decodings: dict[str, list[str]] = {
        "greedy": [c.text for c in greedy],
        f"best-of-{n} l2r": [rank(cs, ss, 0.0).best.text for cs, ss in zip(samples, scores)],
        f"rerank w={weight:g}": [rank(cs, ss, weight).best.text for cs, ss in zip(samples, scores)],
    }
    if backward_model is not None:
        outside = Reranker(model, tokenizer, batch_size=batch_size, backward_model=backward_model)
        outside_scores = outside.score(prompts, samples)
        decodings[f"rerank w={weight:g} (pretrain r2l)"] = [
            rank(cs, ss, weight).best.text for cs, ss in zip(samples, outside_scores)]
    out: dict = {}
    for name, texts in decodings.items():
        tally = Tally()
        for q, text in zip(questions, texts):
            tally.add(q["kind"], world.grade(q["fact_id"], text))
        out[name] = tally.to_dict()
    oracle = Tally()
    for q, cs in zip(questions, samples):
        grades = [world.grade(q["fact_id"], c.text) for c in cs]
        oracle.add(q["kind"], "right" if "right" in grades else "wrong" if "wrong" in grades else "unanswered")
    out[f"oracle@{n}"] = oracle.to_dict()
    out["examples"] = [{"prompt": q["prompt"], "kind": q["kind"], "gold": q.get("answer"),
                        **{name: texts[i] for name, texts in decodings.items()}} for i, q in enumerate(questions[:6])]
    return out


def format_table(results: dict[str, dict]) -> str:
    """A Markdown table: one row per (model, decoding); accuracy and confidently wrong share per kind."""
    lines = ["| model | decoding | held-out accuracy | held-out confidently wrong | unseen confidently wrong | unseen unanswered |",
             "|---|---|---:|---:|---:|---:|"]
    for model, decodings in results.items():
        for name, t in decodings.items():
            if not isinstance(t, dict) or "held_out" not in t:  # examples, timings
                continue
            h, u = t["held_out"], t["unseen"]
            lines.append(f"| {model} | {name} | {_pct(h['accuracy'])} ({h['right']}/{h['n']}) | "
                         f"{_pct(h['confidently_wrong'])} | {_pct(u['confidently_wrong'])} | "
                         f"{_pct(u['unanswered'] / u['n'] if u['n'] else float('nan'))} |")
    return "\n".join(lines)


def _pct(x: float) -> str:
    return "n/a" if x != x else f"{100 * x:.1f}%"
