"""Preference data -> tokenized (y, y', d) triples for the reward model (§3.3, Eq. 3).

`load_triples` reads any preference layout `batray.data.formats` recognises (batray's preferences
schema; TRL's prompt/chosen/rejected as strings or message lists, with the prompt implicit when
absent; Anthropic HH-RLHF's `\\n\\nHuman: ...\\n\\nAssistant: ...` dialogues; UltraFeedback
binarized with its scores) as triples: the dialogue before the responses (ending with a user turn),
y = response_a, y' = response_b, and d = -1 when a is preferred, +1 when b is, 0 for a tie. The
chosen/rejected layouts map to y = chosen, y' = rejected, d = -1 (d = 0 for UltraFeedback's equal
scores).

Every response is rendered with its context in the model's chat template, exactly as SFT renders a
dialogue (`batray.models.chat.chat_sample`), and ends with the template's end-of-turn token
(`<eop>` in BatGPT's format, `<|im_end|>` in ChatML ...), which is where the reward head reads: the
same tokens PPO's reward scores (the prompt's ids, then the sampled response up to its stop token).
Sequences too long for `max_len` lose their oldest turns first, then their oldest tokens (the end,
where the reward is read, always stays); both are counted.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass, field

import torch

from batray.data.formats import Keys, parse_hh_dialogue  # noqa: F401 (parse_hh_dialogue: re-exported)
from batray.data.io import RejectReport
from batray.data.load import load_preferences
from batray.data.schemas import prompt_group
from batray.data.sft import chat_pieces
from batray.errors import DataError
from batray.models.chat import SampleError, render_chat, response_ids


@dataclass
class Triple:
    """One preference: the dialogue so far (ending with the user's turn), two responses and d."""

    pair_id: str
    context: list[dict]
    response_a: str
    response_b: str
    d: int


@dataclass
class EncodedTriple:
    pair_id: str
    ids_a: list[int]
    ids_b: list[int]
    d: int


@dataclass
class EncodeReport:
    """How many triples were encoded and what truncation did to them."""

    total: int = 0
    dropped_turns: int = 0  # sequences that lost old turns
    cut_tokens: int = 0  # sequences that lost their oldest tokens after that
    counts: Counter = field(default_factory=Counter)  # d -> count
    refused: list = field(default_factory=list)  # (pair_id, reason): the chat template refused the dialogue

    def summary(self) -> str:
        d = self.counts
        out = (f"{self.total} triples (a preferred {d[-1]}, b preferred {d[1]}, ties {d[0]}); "
               f"{self.dropped_turns} sequences lost old turns, {self.cut_tokens} lost their oldest tokens")
        if self.refused:
            out += f"; {len(self.refused)} refused by the chat template (e.g. {self.refused[0][1]})"
        return out


def load_triples(source, keys: Keys | None = None) -> tuple[list[Triple], RejectReport, str]:
    """Preference triples from a source in any preference layout: (triples, rejects, layouts read).

    keys: `reward.prompt_key` / `chosen_key` / `rejected_key` naming a user's own columns.
    """
    rows, report = load_preferences(source, keys)
    if not rows:
        raise DataError(f"{source!r}: no usable preference rows ({report.summary('preferences')})")
    layout = "+".join(name for name, _ in report.layouts.most_common())
    return [Triple(**r) for r in rows], report, layout


# ---- rendering and tokenization ---------------------------------------------------------------------


def render(context: list[dict], response: str, tokenizer=None) -> str:
    """The chat text of `context` followed by the assistant's `response`: the tokenizer's template, or
    without a tokenizer BatGPT's format (ends with `<eop>`; e.g. to train a BPE on the data)."""
    messages = context + [{"role": "assistant", "content": response}]
    if tokenizer is not None:
        return render_chat(tokenizer, messages)
    return "".join(text for text, _ in chat_pieces(messages))


def encode_response(tokenizer, context: list[dict], response: str, max_len: int) -> tuple[list[int], bool, bool]:
    """Token ids of context + response, fitted to `max_len`: (ids, dropped_turns, cut_tokens).

    Old user/assistant turn pairs go first (a system message stays); if the last exchange alone is
    still too long, the oldest tokens go, keeping the first token (the BOS, `<|l2r|>` for a batray
    tokenizer) and the end. A conversation the chat template refuses raises `SampleError`.
    """
    system = context[:1] if context and context[0]["role"] == "system" else []
    turns = context[len(system):]
    dropped = False
    while True:
        ids = response_ids(tokenizer, system + turns, response)
        if len(ids) <= max_len or len(turns) <= 1:
            break
        turns = turns[2:]
        dropped = True
    if len(ids) <= max_len:
        return ids, dropped, False
    return ids[:1] + ids[len(ids) - (max_len - 1):], dropped, True


def encode_triples(tokenizer, triples: list[Triple], max_len: int) -> tuple[list[EncodedTriple], EncodeReport]:
    out: list[EncodedTriple] = []
    report = EncodeReport()
    for t in triples:
        try:
            ids_a, drop_a, cut_a = encode_response(tokenizer, t.context, t.response_a, max_len)
            ids_b, drop_b, cut_b = encode_response(tokenizer, t.context, t.response_b, max_len)
        except SampleError as e:
            report.refused.append((t.pair_id, str(e)))
            continue
        out.append(EncodedTriple(t.pair_id, ids_a, ids_b, t.d))
        report.total += 1
        report.dropped_turns += drop_a + drop_b
        report.cut_tokens += cut_a + cut_b
        report.counts[t.d] += 1
    return out, report


def split_held_out(items: list, fraction: float, key=lambda t: prompt_group(t.pair_id)) -> tuple[list, list]:
    """(train, held_out) by a hash of the pair id of each item's prompt (`prompt_group`): stable across runs,
    orders and machines, and the pairs of one prompt (`pairs.samples_per_prompt`) land together."""
    if fraction <= 0:
        return list(items), []
    train, held = [], []
    for item in items:
        h = int.from_bytes(hashlib.sha256(str(key(item)).encode()).digest()[:8], "big") / 2**64
        (held if h < fraction else train).append(item)
    return train, held


def collate_triples(batch: list[EncodedTriple], pad_id: int) -> dict[str, torch.Tensor]:
    """A micro batch of B triples as one forward of 2B sequences: rows [0, B) are y, rows [B, 2B) y'.

    Right padding with `pad_id`: the reward is read at each sequence's last non-pad token, which is
    what `AutoModelForSequenceClassification` does when the config's pad_token_id is set.
    """
    seqs = [t.ids_a for t in batch] + [t.ids_b for t in batch]
    width = max(len(s) for s in seqs)
    input_ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        input_ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
        attention_mask[i, : len(s)] = 1
    d = torch.tensor([t.d for t in batch], dtype=torch.long)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "d": d}
