"""SFT sample building (Eq. 2): chat rendering, label masking, truncation from the oldest turns.

Samples render with the tokenizer's own chat template (`batray.models.chat.chat_sample`): the text is
cut at every assistant turn's start and end and tokenized piece by piece, so the response token
boundaries are exact and the prompt tokens are those a generation request sees. `chat_pieces` is
BatGPT's format written out by hand (what its template renders), for reading and for texts that need
no tokenizer (training a BPE on the data).
"""

from __future__ import annotations

from dataclasses import dataclass

from batray.data.formats import FormatError, Keys, normalize
from batray.models.chat import SampleError, chat_sample
from batray.models.tokenizer import EOP_TOKEN, EOT_TOKEN, L2R_TOKEN

__all__ = ["SampleError", "SftSample", "build_sft_sample", "chat_pieces", "normalize_messages"]


def normalize_messages(row: dict, keys: Keys | None = None) -> list[dict]:
    """One SFT row in any layout `batray.data.formats` recognises as validated messages ending with the
    assistant's response (rows that make several examples, such as Self-Instruct's, go through
    `batray.data.load.load_sft`)."""
    try:
        result = normalize("sft", row, keys)
    except FormatError as e:
        raise SampleError(str(e)) from None
    if result.errors or len(result.rows) != 1:
        problems = "; ".join(result.errors)
        raise SampleError(f"{result.layout}: the row makes {len(result.rows)} examples"
                          + (f" ({problems})" if problems else "") + "; read it with batray.data.load.load_sft")
    return result.rows[0]["messages"]


def chat_pieces(messages: list[dict]) -> list[tuple[str, bool]]:
    """BatGPT's format as (text, is_assistant_content) pieces; their concatenation is what its template
    renders for a tokenizer whose BOS is `<|l2r|>`."""
    pieces: list[tuple[str, bool]] = []
    prefix = L2R_TOKEN
    turn = 0
    for m in messages:
        if m["role"] == "system":
            prefix += f"[System]\n\n{m['content']}\n\n{EOT_TOKEN}"
        elif m["role"] == "user":
            turn += 1
            prefix += f"[Turn {turn}]\n\n[User] {m['content']}\n\n[Assistant] "
        else:
            pieces.append((prefix, False))
            pieces.append((f"{m['content']}\n\n{EOP_TOKEN}", True))
            prefix = ""
    if prefix:  # a conversation ending with the user (a generation prompt) ends with "[Assistant] "
        pieces.append((prefix, False))
    return pieces


@dataclass
class SftSample:
    input_ids: list[int]
    labels: list[int]
    dropped_turns: int


def build_sft_sample(tokenizer, messages: list[dict], max_len: int, loss_on: str = "last") -> SftSample:
    """Tokenize a conversation with loss on the last assistant turn (or all), fitting `max_len`.

    Truncation drops the oldest user/assistant turns (keeping the system message); it never cuts the
    response. A response that cannot fit raises `SampleError`.
    """
    if loss_on not in ("last", "all"):
        raise ValueError(f"loss_on must be 'last' or 'all', not {loss_on!r}")
    system = messages[:1] if messages[0]["role"] == "system" else []
    turns = messages[len(system):]
    dropped = 0
    while True:
        ids, labels = chat_sample(tokenizer, system + turns, loss_on)
        if len(ids) <= max_len:
            return SftSample(ids, labels, dropped)
        if len(turns) <= 2:
            raise SampleError(f"the last turn alone needs {len(ids)} tokens, more than max_len {max_len}")
        turns = turns[2:]
        dropped += 1
