"""The data contracts of docs/DESIGN.md §3 as pyarrow schemas and row validators.

A validator returns None for a good row or a short reason for a bad one; `validate_rows` uses them
to split a table into accepted rows and rejected rows (with reasons), so nothing is silently dropped.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import numpy as np
import pyarrow as pa

MESSAGE = pa.struct([("role", pa.string()), ("content", pa.string())])

CORPUS = pa.schema([("text", pa.string())])
SFT_MESSAGES = pa.schema([("messages", pa.list_(MESSAGE))])
SFT_PAIRS = pa.schema([("prompt", pa.string()), ("response", pa.string())])
PROMPTS = pa.schema([("prompt", pa.string())])
SAMPLE_MARK = "#"  # pair id `<id>#<k>`: the k-th further pair of one prompt (pairs.samples_per_prompt)


def prompt_group(pair_id: str) -> str:
    """The pair id of a prompt's first pair, which all pairs of that prompt share (see `SAMPLE_MARK`)."""
    return re.sub(rf"{SAMPLE_MARK}\d+$", "", pair_id)


PAIRS = pa.schema(
    [
        ("pair_id", pa.string()),
        ("prompt", pa.string()),
        ("response_a", pa.string()),
        ("response_b", pa.string()),
        ("model_a", pa.string()),
        ("model_b", pa.string()),
    ]
)
HELPFULNESS = ("a_better", "b_better", "both_good", "both_bad")
PREFERENCES = pa.schema(
    [
        ("pair_id", pa.string()),
        ("prompt", pa.string()),
        ("response_a", pa.string()),
        ("response_b", pa.string()),
        ("d", pa.int8()),
        ("acceptable_a", pa.bool_()),
        ("acceptable_b", pa.bool_()),
        ("helpfulness", pa.string()),
        ("source", pa.string()),
        ("rater", pa.string()),
        ("confidence", pa.float32()),
        ("created_at", pa.timestamp("us", tz="UTC")),
    ]
)


def _need_str(row: dict, *keys: str) -> str | None:
    for k in keys:
        v = row.get(k)
        if not isinstance(v, str):
            return f"{k} missing or not a string"
    return None


def check_corpus(row: dict) -> str | None:
    if (err := _need_str(row, "text")) is not None:
        return err
    return "text is empty" if not row["text"].strip() else None


def check_sft(row: dict) -> str | None:
    """Any SFT layout `batray.data.formats` recognises (every example of the row valid)."""
    from batray.data.formats import FormatError, normalize

    try:
        result = normalize("sft", row)
    except FormatError as e:
        return f"bad sft row: {e}"
    return f"bad sft row: {'; '.join(result.errors)}" if result.errors else None


def check_prompts(row: dict) -> str | None:
    return _need_str(row, "prompt")


def check_pairs(row: dict) -> str | None:
    return _need_str(row, "pair_id", "prompt", "response_a", "response_b")


def check_preferences(row: dict) -> str | None:
    if (err := _need_str(row, "pair_id", "prompt", "response_a", "response_b")) is not None:
        return err
    d = row.get("d")
    # an integer, not a bool or a float that equals one (True == 1 and 1.0 == 1 in Python)
    if isinstance(d, bool) or not isinstance(d, (int, np.integer)) or d not in (-1, 0, 1):
        return f"d must be -1, 0 or 1, an integer (got {d!r})"
    h = row.get("helpfulness")
    if h is not None and h not in HELPFULNESS:
        return f"helpfulness {h!r} not in {HELPFULNESS}"
    if row.get("source") not in (None, "human", "ai"):
        return f"source {row.get('source')!r} not human|ai"
    return None


def check_chosen_rejected(row: dict) -> str | None:
    """The common `chosen`/`rejected` preference layout (e.g. Anthropic HH-RLHF dialogues)."""
    return _need_str(row, "chosen", "rejected")


VALIDATORS: dict[str, Callable[[dict], str | None]] = {
    "corpus": check_corpus,
    "sft": check_sft,
    "prompts": check_prompts,
    "pairs": check_pairs,
    "preferences": check_preferences,
    "chosen_rejected": check_chosen_rejected,
}
