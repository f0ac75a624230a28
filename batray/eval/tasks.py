"""From a benchmark folder to scoring requests, and from predictions back to rows (no Ray here).

`load_benchmark` reads the dev shots and the scored split per subject; `PromptFitter` knows the
model's context and tokenizer (loaded without the weights); `build_requests` makes one `Request`
per item, its prompt as the official code builds it with shots dropped to fit; `prediction_rows`
joins the predictions with the gold answers (the predictions.jsonl rows).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache

from batray.data.io import RejectReport
from batray.errors import DataError
from batray.eval.data import SCORED_SPLIT, Item, available_subjects, benchmark_root, read_split
from batray.eval.modes import Request
from batray.eval.prompts import build_prompt, wrap_chat
from batray.eval.subjects import subject_table

log = logging.getLogger(__name__)


@dataclass
class Benchmark:
    name: str
    root: str
    split: str
    dev: dict[str, list[Item]]
    items: dict[str, list[Item]]
    report: RejectReport = field(default_factory=RejectReport)

    @property
    def n_items(self) -> int:
        return sum(len(v) for v in self.items.values())


def load_benchmark(name: str, data_dir: str, subjects: list[str] | None = None, limit: int | None = None,
                   split: str | None = None) -> Benchmark:
    """The dev shots and scored items of `subjects` (default: every subject present)."""
    table = subject_table(name)
    root = benchmark_root(data_dir, name)
    split = split or SCORED_SPLIT[name]
    present = available_subjects(root, name, split)
    if subjects:
        for s in subjects:
            table[s]  # unknown names fail with the list of known ones
        missing = [s for s in subjects if s not in present]
        if missing:
            raise DataError(f"{name}: no {split} file for {', '.join(missing)} under {root}")
        chosen = list(subjects)
    else:
        chosen = [s for s in present if s in table.subjects]
        strangers = sorted(set(present) - set(table.subjects))
        if strangers:
            log.warning("%s: ignoring %d files of unknown subjects (%s)", name, len(strangers), ", ".join(strangers[:5]))
    if not chosen:
        raise DataError(f"{name}: no subjects found under {root}/{split}")
    report = RejectReport()
    dev, items = {}, {}
    for s in chosen:
        dev[s] = read_split(root, name, s, "dev", report)
        scored = read_split(root, name, s, split, report)
        items[s] = scored[:limit] if limit else scored
    if report.rejected:
        log.warning(report.summary(f"{name} rows"))
    return Benchmark(name, root, split, dev, items, report)


class PromptFitter:
    """What prompt building needs from a local model: its tokenizer and context (no weights).

    For an endpoint (no tokenizer) nothing is counted and no shot is dropped.
    """

    def __init__(self, model: str | None = None, *, tokenizer=None, context: int | None = None,
                 prefix_tokens: int | None = None, chat: bool = False, chat_template: str | None = None):
        if model is not None and tokenizer is None:
            from batray.models.presets import resolve_config
            from batray.models.tokenizer import load_tokenizer

            tokenizer = load_tokenizer(model, chat_template=chat_template)
            context = int(getattr(resolve_config(model), "max_position_embeddings", 0) or 4096)
        if prefix_tokens is None:  # the BOS the tokenizer adds to plain prompts (see scoring.LocalBackend)
            prefix_tokens = 0 if tokenizer is None or chat else len(tokenizer("")["input_ids"])
        self.tokenizer = tokenizer
        self.context = context
        self.prefix_tokens = prefix_tokens
        self.chat = chat
        self.count: Callable[[str], int] | None = None
        self.chat_overhead = 0
        if tokenizer is not None:
            self.count = lru_cache(maxsize=4096)(lambda text: len(tokenizer.encode(text, add_special_tokens=False)))
            if chat:
                self.chat_overhead = self.count(wrap_chat(tokenizer, ""))

    def budget(self, reserve: int) -> int | None:
        """Prompt tokens allowed: the context less the direction token, chat template and `reserve`."""
        if self.context is None:
            return None
        return self.context - self.prefix_tokens - self.chat_overhead - reserve

    def finish(self, prompt: str) -> str:
        return wrap_chat(self.tokenizer, prompt) if self.chat and self.tokenizer is not None else prompt


def build_requests(bench: Benchmark, shots: int, style: str, fitter: PromptFitter, reserve: int = 1) -> list[Request]:
    """One request per scored item; `reserve` tokens stay free for the answer."""
    table = subject_table(bench.name)
    budget = fitter.budget(reserve)
    requests = []
    for subject, items in bench.items.items():
        dev = bench.dev[subject][:shots]
        if len(dev) < shots:
            log.warning("%s/%s: %d dev items for %d shots", bench.name, subject, len(dev), shots)
        for item in items:
            p = build_prompt(bench.name, table[subject].zh, dev, item, style, fitter.count, budget)
            requests.append(Request(subject, item.index, fitter.finish(p.text), item.answer, item.options, p.shots))
    return requests


def prediction_rows(requests: list[Request], predictions: list[dict], shots: int) -> list[dict]:
    """predictions.jsonl rows: subject, item index, gold, prediction, correct (+ text, scores)."""
    rows = []
    for r, p in zip(requests, predictions, strict=True):
        row = {"subject": r.subject, "index": r.index, "gold": r.gold, "pred": p.get("pred"),
               "correct": p.get("pred") == r.gold, "shots": r.shots}
        if p.get("pred") is None:
            row["unparsable"] = True
        if "text" in p:
            row["text"] = p["text"]
        if "scores" in p:
            row["scores"] = [round(float(x), 4) if math.isfinite(x) else None for x in p["scores"]]
        rows.append(row)
    rows.sort(key=lambda r: (r["subject"], r["index"]))
    return rows
