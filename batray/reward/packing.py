"""Packed reward batches (`reward.packing`): the 2B sequences of a micro batch (every pair's y and y'
together in the same batch) placed whole into rows of the batch's longest length by best-fit decreasing.

A padded batch of pairs spends a row of the longest length on every sequence; HH-RLHF's dialogues cut
to their newest turns are ~125 of 192 tokens on average, so about a third of such a batch is pads.
Packed, each row holds several sequences, positions restart at 0 per sequence and the segment mask
(`batray.objectives.lm.segment_causal_mask`) keeps them apart, so every sequence's hidden states, and
the reward read at its last token, are the padded forward's. The rows are no wider than the padded
batch (attention per row costs the same on CPU SDPA, which computes a full masked T x T either way),
there are just fewer of them.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence

import torch

from batray.objectives.lm import packed_mask_for


def best_fit_rows(lengths: Sequence[int], width: int) -> list[list[int]]:
    """Indices of `lengths` grouped into rows of at most `width` tokens by best-fit decreasing: longest
    first, each into the open row with the least room that still holds it (a new row when none does)."""
    rows: list[list[int]] = []
    rooms: list[tuple[int, int]] = []  # (room left, row index), sorted: the best fit is the first room >= n
    for i in sorted(range(len(lengths)), key=lambda j: (-lengths[j], j)):
        n = int(lengths[i])
        if n > width or n <= 0:
            raise ValueError(f"a sequence of {n} tokens does not fit a packed row of {width}")
        at = bisect.bisect_left(rooms, (n, -1))
        if at == len(rooms):
            rows.append([i])
            room, row = width - n, len(rows) - 1
        else:
            room, row = rooms.pop(at)
            rows[row].append(i)
            room -= n
        bisect.insort(rooms, (room, row))
    return rows


def pack_sequences(ids: torch.Tensor, lengths: torch.Tensor, pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded sequences (N, W) with their lengths (N,) as packed rows (R, W), R <= N.

    Returns `input_ids` and `position_ids` (R, W), restarting at 0 per sequence (the tail of a row is
    pad, one-token segments of position 0), and `ends` (N,): the flat index row * W + column of each
    sequence's last token, in the input order.
    """
    n, width = ids.shape
    rows = best_fit_rows(lengths.tolist(), width)
    input_ids = torch.full((len(rows), width), pad_id, dtype=ids.dtype)
    position_ids = torch.zeros((len(rows), width), dtype=torch.long)
    ends = torch.empty(n, dtype=torch.long)
    for r, members in enumerate(rows):
        at = 0
        for i in members:
            m = int(lengths[i])
            input_ids[r, at:at + m] = ids[i, :m]
            position_ids[r, at:at + m] = torch.arange(m)
            ends[i] = r * width + at + m - 1
            at += m
    return {"input_ids": input_ids, "position_ids": position_ids, "ends": ends}


def _classifier(model: torch.nn.Module) -> torch.nn.Module:
    """The `<Family>ForSequenceClassification` inside a DeepSpeed engine and/or a peft wrapper."""
    model = getattr(model, "module", model)
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def packed_rewards(model: torch.nn.Module, input_ids: torch.Tensor, position_ids: torch.Tensor,
                   ends: torch.Tensor) -> torch.Tensor:
    """r at each packed sequence's last token (N,): the backbone over the packed rows under the segment
    mask, then the score head on those tokens' hidden states (as the padded forward reads them)."""
    clf = _classifier(model)
    hidden = clf.base_model(input_ids=input_ids, position_ids=position_ids,
                            attention_mask=packed_mask_for(clf, position_ids), use_cache=False).last_hidden_state
    last = hidden.reshape(-1, hidden.shape[-1]).index_select(0, ends)
    return clf.score(last)[:, 0].float()
