"""SFT sample building (Eq. 2): chat rendering, label masking, truncation from the oldest turns.

The sample is tokenized piece by piece (prefix, response, prefix, response ...), so response token
boundaries are exact; pieces are BatGPT's chat format (docs/DESIGN.md §4).
"""

from __future__ import annotations

from dataclasses import dataclass

from batray.data.direction import IGNORE_INDEX
from batray.data.formats import FormatError, Keys, normalize
from batray.models.tokenizer import EOP_TOKEN, EOT_TOKEN, L2R_TOKEN


class SampleError(ValueError):
    """A sample that cannot be used (bad roles, response too long); counted and written aside."""


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
    """Render to (text, is_assistant_content) pieces; their concatenation is the chat template's output."""
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
        pieces = chat_pieces(system + turns)
        ids: list[int] = []
        labels: list[int] = []
        n_assistant = sum(1 for _, a in pieces if a)
        seen = 0
        for text, is_assistant in pieces:
            tok = tokenizer(text, add_special_tokens=False)["input_ids"]
            ids += tok
            if is_assistant:
                seen += 1
                train = loss_on == "all" or seen == n_assistant
            else:
                train = False
            labels += tok if train else [IGNORE_INDEX] * len(tok)
        if len(ids) <= max_len:
            return SftSample(ids, labels, dropped)
        if len(turns) <= 2:
            raise SampleError(f"the last turn alone needs {len(ids)} tokens, more than max_len {max_len}")
        turns = turns[2:]
        dropped += 1
