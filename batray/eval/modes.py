"""Scoring modes, chosen by name from a registry (the hook for `rerank`, issue 11).

A mode says which prompt style it needs (`da`: the prompt ends where the letter goes; `cot`: it
invites a worked answer; `ppl`: the question alone, each option's text scored as its continuation) and turns a batch of `Request`s into prediction rows on a backend
(`batray.eval.scoring.LocalBackend` / `EndpointBackend`). It runs inside a scorer actor.

To add a mode: provide `name`, `prompt_style` and `predict(backend, requests, benchmark, **options)
-> list[dict]` and call `register_mode(mode)` in `batray/eval/<name>.py`, which `get_mode` imports
on first use (in the driver and in every scorer actor). The rows need `pred` (a letter, or None =
unparsable) and may carry `text` and `scores`. `rerank` (issue 11: several sampled answers ranked
by a reward model) can take its reward model path from `options` and load it lazily.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Protocol

from batray.errors import BatrayError
from batray.eval.extract import LETTERS, extract_answer


@dataclass(frozen=True)
class Request:
    subject: str
    index: int  # the item's position in its subject's file
    prompt: str  # the finished text sent to the model (chat-wrapped when asked)
    gold: str
    options: tuple[str, str, str, str]
    shots: int  # shots included after dropping


class Mode(Protocol):
    name: str
    prompt_style: str  # "da" or "cot"

    def predict(self, backend, requests: list[Request], benchmark: str, **options) -> list[dict]: ...


class DirectAnswer:
    """`da`: the argmax of the A/B/C/D next-token scores; from the text when no scores exist."""

    name = "da"
    prompt_style = "da"

    def predict(self, backend, requests: list[Request], benchmark: str, **options) -> list[dict]:
        scores = backend.letter_scores([r.prompt for r in requests])
        rows: list[dict] = [{} for _ in requests]
        fallback = [i for i, s in enumerate(scores) if s is None or all(v == float("-inf") for v in s)]
        for i, s in enumerate(scores):
            if i not in fallback:
                rows[i] = {"pred": LETTERS[max(range(4), key=lambda k: s[k])], "scores": s}
        if fallback:  # an endpoint without log-probabilities: read the letter it wrote
            texts = backend.generate([requests[i].prompt for i in fallback], options.get("da_max_new_tokens", 8))
            for i, text in zip(fallback, texts):
                rows[i] = {"pred": extract_answer(benchmark, text, requests[i].options), "text": text}
        return rows


class ChainOfThought:
    """`cot`: greedy generation, then the benchmark's ordered extraction patterns."""

    name = "cot"
    prompt_style = "cot"

    def predict(self, backend, requests: list[Request], benchmark: str, **options) -> list[dict]:
        texts = backend.generate([r.prompt for r in requests], int(options.get("max_new_tokens", 128)))
        return [{"pred": extract_answer(benchmark, t, r.options), "text": t} for r, t in zip(requests, texts)]


class OptionLikelihood:
    """`ppl`: each option's text scored as the continuation of the question (mean log-probability per
    character, lm-evaluation-harness's `acc_norm` normalization); the prediction is the likeliest. The
    option-likelihood evaluation small models are judged by (OpenCompass's PPL inferencer); local models only."""

    name = "ppl"
    prompt_style = "ppl"

    def predict(self, backend, requests: list[Request], benchmark: str, **options) -> list[dict]:
        if not hasattr(backend, "continuation_logprobs"):
            raise BatrayError("eval mode ppl scores option texts with a local model; an endpoint cannot")
        pairs = [(r.prompt, o) for r in requests for o in r.options]
        logps = backend.continuation_logprobs(pairs)
        rows = []
        for i, _ in enumerate(requests):
            s = [logps[4 * i + k] / max(1, len(o)) for k, o in enumerate(requests[i].options)]
            rows.append({"pred": LETTERS[max(range(4), key=lambda k: s[k])], "scores": s})
        return rows


MODES: dict[str, Mode] = {}


def register_mode(mode: Mode) -> Mode:
    MODES[mode.name] = mode
    return mode


def get_mode(name: str) -> Mode:
    """The registered mode; a mode living in `batray/eval/<name>.py` registers itself on import."""
    if name not in MODES:
        try:
            importlib.import_module(f"batray.eval.{name}")
        except ModuleNotFoundError:
            pass
    if name not in MODES:
        hint = " (added by the rerank feature, issue 11)" if name == "rerank" else ""
        raise BatrayError(f"unknown eval mode {name!r}{hint}; available: {', '.join(sorted(MODES))}")
    return MODES[name]


register_mode(DirectAnswer())
register_mode(ChainOfThought())
register_mode(OptionLikelihood())
