"""Token-level direction handling for bidirectional pretraining (Eq. 1) and packing into blocks.

Eq. 1 learns every sequence x twice: sum_t log p(x_t | x_<t) (left to right, after `<|l2r|>`) and
sum_t log p(x_t | x_>t) (right to left). The second term is an ordinary causal LM over the reversed
token sequence after `<|r2l|>`, so one causal model learns both.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

IGNORE_INDEX = -100


def l2r_sample(token_ids: list[int], l2r_id: int, eos_id: int) -> list[int]:
    """`<|l2r|> x_1 ... x_n <eos>`: what a batray tokenizer's `tokenizer(text)` gives (its post-processor
    adds `<|l2r|>` as BOS), plus EOS; `token_ids` are encoded without special tokens."""
    return [l2r_id, *token_ids, eos_id]


def r2l_sample(token_ids: list[int], r2l_id: int, eos_id: int) -> list[int]:
    """`<|r2l|> x_n ... x_1 <eos>`: the token sequence reversed after tokenization (Eq. 1's 2nd sum)."""
    return [r2l_id, *reversed(token_ids), eos_id]


def unreverse(sample: list[int]) -> list[int]:
    """Inverse of `r2l_sample` without its marker and eos: the left-to-right tokens."""
    return list(reversed(sample[1:-1]))


@dataclass
class Block:
    """One packed training block.

    input_ids:    the tokens
    labels:       next-token targets aligned with input_ids (HF convention: the model shifts), with
                  IGNORE_INDEX on markers so no segment learns to predict the next segment's marker
    position_ids: restart at 0 on every segment, so positions never run across samples
    directions:   per token, 0 for left-to-right segments and 1 for right-to-left ones
    """

    input_ids: list[int]
    labels: list[int]
    position_ids: list[int]
    directions: list[int]


def pack_samples(
    samples: Iterable[tuple[list[int], int]],
    block_len: int,
    pad_id: int,
) -> Iterator[Block]:
    """Pack (tokens, direction) samples whose first token is their direction marker into blocks.

    A sample longer than the room left is split; its continuation starts the next block with the
    same direction marker again, so every segment in every block is read in the direction its marker
    says and no label predicts a marker. The last partial block is padded (labels IGNORE_INDEX).
    """
    if block_len < 4:
        raise ValueError("block_len must be at least 4")
    ids: list[int] = []
    labels: list[int] = []
    pos: list[int] = []
    dirs: list[int] = []

    def flush() -> Block:
        nonlocal ids, labels, pos, dirs
        pad = block_len - len(ids)
        block = Block(ids + [pad_id] * pad, labels + [IGNORE_INDEX] * pad, pos + [0] * pad, dirs + [dirs[-1] if dirs else 0] * pad)
        ids, labels, pos, dirs = [], [], [], []
        return block

    for tokens, direction in samples:
        marker, body = tokens[0], tokens[1:]
        while body:
            room = block_len - len(ids)
            if room < 2:  # a marker and at least one token
                yield flush()
                room = block_len
            take = body[: room - 1]
            body = body[room - 1 :]
            ids += [marker, *take]
            labels += [IGNORE_INDEX, *take]
            pos += list(range(len(take) + 1))
            dirs += [direction] * (len(take) + 1)
            if len(ids) == block_len:
                yield flush()
    if ids:
        yield flush()
