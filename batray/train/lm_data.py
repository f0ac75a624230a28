"""Ray Data transforms that turn corpus rows into Eq. 1 training blocks and SFT rows into padded samples.

Pretraining: `corpus_blocks` runs inside `Dataset.map_batches` (streamed: no process holds the whole
corpus). Each text becomes `<|l2r|> x <eos>` and, for the share of texts picked by `r2l_share`, also
`<|r2l|> reversed(x) <eos>` (docs/DESIGN.md §4), packed into `seq_len` blocks by
`batray.data.direction.pack_samples`. Which texts are held out and which get a right-to-left copy is
decided by a stable hash of the text, so the choice is the same on every run and every worker.
"""

from __future__ import annotations

import bisect
import hashlib

import numpy as np

from batray.data.direction import IGNORE_INDEX, Block, l2r_sample, pack_samples, r2l_sample

BLOCK_COLUMNS = ("input_ids", "labels", "position_ids", "directions")


def stable_fraction(text: str, salt: str) -> float:
    """A number in [0, 1) fixed by (salt, text): the same on every machine and Python process."""
    digest = hashlib.blake2b(f"{salt}\x00{text}".encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def is_held_out(text: str, fraction: float, seed: int) -> bool:
    return fraction > 0 and stable_fraction(text, f"held-out:{seed}") < fraction


def direction_samples(token_ids: list[int], *, l2r_id: int, r2l_id: int, eos_id: int, want_r2l: bool
                      ) -> list[tuple[list[int], int]]:
    """The (tokens, direction) samples Eq. 1 learns from one sequence: l2r, plus r2l when wanted."""
    samples = [(l2r_sample(token_ids, l2r_id, eos_id), 0)]
    if want_r2l:
        samples.append((r2l_sample(token_ids, r2l_id, eos_id), 1))
    return samples


def blocks_to_columns(blocks: list[Block], seq_len: int) -> dict[str, np.ndarray]:
    if not blocks:
        return {c: np.zeros((0, seq_len), dtype=np.int32) for c in BLOCK_COLUMNS}
    return {c: np.asarray([getattr(b, c) for b in blocks], dtype=np.int32) for c in BLOCK_COLUMNS}


def corpus_blocks(batch: dict[str, np.ndarray], *, tokenizer, seq_len: int, direction: str, r2l_share: float,
                  held_out_fraction: float, split: str, seed: int) -> dict[str, np.ndarray]:
    """`map_batches` UDF: rows with `text` -> packed blocks of `seq_len` (columns BLOCK_COLUMNS).

    split "train" keeps the texts that are not held out, "eval" the held-out ones. Rows whose text is
    not a non-empty string are skipped here; the stage counts and reports them before training.
    """
    from batray.models.tokenizer import direction_ids

    l2r_id, r2l_id = direction_ids(tokenizer)
    eos_id, pad_id = tokenizer.eos_token_id, tokenizer.pad_token_id
    texts = [t for t in batch["text"] if isinstance(t, str) and t.strip()]
    texts = [t for t in texts if is_held_out(t, held_out_fraction, seed) == (split == "eval")]
    if not texts:
        return blocks_to_columns([], seq_len)
    encoded = tokenizer(texts, add_special_tokens=False)["input_ids"]
    samples: list[tuple[list[int], int]] = []
    for text, ids in zip(texts, encoded):
        want_r2l = direction == "both" and stable_fraction(text, f"r2l:{seed}") < r2l_share
        samples += direction_samples(ids, l2r_id=l2r_id, r2l_id=r2l_id, eos_id=eos_id, want_r2l=want_r2l)
    return blocks_to_columns(list(pack_samples(samples, seq_len, pad_id)), seq_len)


def pad_sft_sample(input_ids: list[int], labels: list[int], seq_len: int, pad_id: int) -> dict[str, list[int]]:
    """One SFT sample right-padded to `seq_len` (pads carry no loss; causal attention never looks
    right, so real tokens do not see the pads). Direction 0: SFT is left to right."""
    pad = seq_len - len(input_ids)
    return {
        "input_ids": input_ids + [pad_id] * pad,
        "labels": labels + [IGNORE_INDEX] * pad,
        "position_ids": list(range(len(input_ids))) + [0] * pad,
        "directions": [0] * seq_len,
    }


def pack_sft_samples(samples: list[tuple[list[int], list[int]]], seq_len: int, pad_id: int) -> list[dict[str, list[int]]]:
    """SFT samples packed whole into rows of `seq_len` tokens by best-fit decreasing (`sft.packing`).

    Longest first, each sample goes into the open row with the least room that still holds it (a new
    row when none does); no sample is split. Positions restart at 0 per sample, which is what
    `batray.objectives.lm.segment_causal_mask` reads as a segment start, so samples never attend to
    each other; a sample's first label is IGNORE_INDEX (it would be predicted from the previous
    sample's last token). The tail of a row is padding (IGNORE_INDEX labels, one-token segments).
    """
    order = sorted(range(len(samples)), key=lambda i: -len(samples[i][0]))
    rows: list[list[int]] = []  # sample indices per row
    rooms: list[tuple[int, int]] = []  # (room left, row index), sorted: the best fit is the first room >= n
    for i in order:
        n = len(samples[i][0])
        if n > seq_len:
            raise ValueError(f"an SFT sample of {n} tokens does not fit seq_len {seq_len}")
        at = bisect.bisect_left(rooms, (n, -1))
        if at == len(rooms):
            rows.append([i])
            room, row = seq_len - n, len(rows) - 1
        else:
            room, row = rooms.pop(at)
            rows[row].append(i)
            room -= n
        bisect.insort(rooms, (room, row))
    out = []
    for members in rows:
        ids: list[int] = []
        labels: list[int] = []
        pos: list[int] = []
        for i in members:
            s_ids, s_labels = samples[i]
            ids += s_ids
            labels += [IGNORE_INDEX, *s_labels[1:]]
            pos += range(len(s_ids))
        pad = seq_len - len(ids)
        out.append({"input_ids": ids + [pad_id] * pad, "labels": labels + [IGNORE_INDEX] * pad,
                    "position_ids": pos + [0] * pad, "directions": [0] * seq_len})
    return out
