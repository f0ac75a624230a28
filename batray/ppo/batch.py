"""Rollout batches: sampled (prompt, response) pairs laid out as padded tensors, and their splits.

Layout of one batch of B sequences (P = longest prompt, T = longest response):

    input_ids      [B, P + T]  prompt left-padded to P, then the response right-padded to T
    attention_mask [B, P + T]  1 on real tokens
    position_ids   [B, P + T]  0 at the first real token, counting up (padding gets 0)
    response_ids   [B, T]      the sampled tokens (pad after the end)
    response_mask  [B, T]      1.0 on sampled tokens, 0.0 on padding (float: it weights token means)

The logits predicting response token t sit at input position P - 1 + t; `response_slice` names that.
Every per-token PPO tensor ([B, T]) lines up with `response_ids`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

Batch = dict[str, torch.Tensor]


@dataclass
class Sample:
    """One rollout: the prompt's token ids, the sampled response and the engine's log-probabilities."""

    prompt_ids: list[int]
    response_ids: list[int]
    rollout_logprobs: list[float]
    finish_reason: str = "length"
    prompt_index: int = -1  # position of the prompt in the prompt set (data bookkeeping)


def collate(samples: list[Sample], pad_id: int) -> Batch:
    """Pad `samples` into the layout above; adds `rollout_logprobs` [B, T] and `prompt_index` [B]."""
    if not samples:
        raise ValueError("collate: no samples")
    P = max(len(s.prompt_ids) for s in samples)
    T = max(max(len(s.response_ids) for s in samples), 1)
    B = len(samples)
    # filled as numpy arrays: a slice assigned from a list is one C loop (a torch.tensor per row made collate
    # ~9x slower, 2.2 ms for 16 rows, driver time between phases); torch.from_numpy wraps them without a copy
    input_ids = np.full((B, P + T), pad_id, dtype=np.int64)
    attention_mask = np.zeros((B, P + T), dtype=np.int64)
    response_ids = np.full((B, T), pad_id, dtype=np.int64)
    response_mask = np.zeros((B, T), dtype=np.float32)
    rollout_logprobs = np.zeros((B, T), dtype=np.float32)
    for i, s in enumerate(samples):
        p, r = len(s.prompt_ids), len(s.response_ids)
        input_ids[i, P - p : P] = s.prompt_ids
        attention_mask[i, P - p : P + r] = 1
        if r:
            input_ids[i, P : P + r] = s.response_ids
            response_ids[i, :r] = s.response_ids
            response_mask[i, :r] = 1.0
            rollout_logprobs[i, :r] = s.rollout_logprobs
    attention_mask = torch.from_numpy(attention_mask)
    position_ids = (attention_mask.cumsum(-1) - 1).clamp_min(0)
    return {
        "input_ids": torch.from_numpy(input_ids),
        "attention_mask": attention_mask,
        "position_ids": position_ids,
        "response_ids": torch.from_numpy(response_ids),
        "response_mask": torch.from_numpy(response_mask),
        "rollout_logprobs": torch.from_numpy(rollout_logprobs),
        "prompt_index": torch.tensor([s.prompt_index for s in samples], dtype=torch.long),
    }


def response_slice(batch: Batch) -> slice:
    """Positions of `input_ids` whose logits predict the response tokens."""
    T = batch["response_ids"].shape[1]
    P = batch["input_ids"].shape[1] - T
    return slice(P - 1, P - 1 + T)


def batch_size(batch: Batch) -> int:
    return int(batch["input_ids"].shape[0])


def select(batch: Batch, index: torch.Tensor | slice) -> Batch:
    """Rows `index` of every tensor in the batch (0-d tensors are shared)."""
    return {k: (v[index] if v.dim() > 0 else v) for k, v in batch.items()}


def shard(batch: Batch, num_shards: int) -> list[Batch]:
    """Split rows into `num_shards` equal contiguous shards (one per trainer rank)."""
    n = batch_size(batch)
    if n % num_shards:
        raise ValueError(f"a batch of {n} rows does not split into {num_shards} equal shards")
    k = n // num_shards
    return [select(batch, slice(i * k, (i + 1) * k)) for i in range(num_shards)]


def minibatches(batch: Batch, num_minibatches: int, generator: torch.Generator | None = None) -> Iterator[Batch]:
    """A shuffled split of the rows into `num_minibatches` (one pass; PPO runs several epochs of these)."""
    n = batch_size(batch)
    order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    size = -(-n // num_minibatches)
    for start in range(0, n, size):
        yield select(batch, order[start : start + size])


def micro_batches(batch: Batch, micro_batch_size: int) -> Iterator[Batch]:
    n = batch_size(batch)
    for start in range(0, n, micro_batch_size):
        yield select(batch, slice(start, start + micro_batch_size))


def trim_padding(batch: Batch) -> Batch:
    """Drop columns that are padding in every row (a micro batch's prompts/responses may be shorter)."""
    T = batch["response_ids"].shape[1]
    P = batch["input_ids"].shape[1] - T
    mask = batch["attention_mask"]
    left = int((mask[:, :P].sum(0) == 0).long().cumprod(0).sum())  # leading all-pad prompt columns
    keep_t = int(batch["response_mask"].sum(0).nonzero().max()) + 1 if batch["response_mask"].any() else 1
    out = {}
    for k, v in batch.items():
        if v.dim() == 2 and v.shape[1] == P + T:
            out[k] = v[:, left : P + keep_t]
        elif v.dim() == 2 and v.shape[1] == T:
            out[k] = v[:, :keep_t]
        else:
            out[k] = v
    return out


def split_rows(n: int, parts: int) -> list[slice]:
    """`parts` contiguous row ranges covering n rows, sizes differing by at most one (some may be empty)."""
    base, extra = divmod(n, parts)
    out, start = [], 0
    for i in range(parts):
        size = base + (i < extra)
        out.append(slice(start, start + size))
        start += size
    return out


def to_device(batch: Batch, device: torch.device | str) -> Batch:
    """Every tensor of the batch on `device` (a no-op on CPU)."""
    return {k: v.to(device) for k, v in batch.items()}


def default_device() -> torch.device:
    """The device an actor computes on: its GPU when Ray gave it one, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def answer_samples(answers: list, prompt_indices: list[int] | None = None) -> list[Sample]:
    """The samples of the rollout engines' answers (`RolloutActor.generate_versioned`'s `(version,
    completions)`, in engine order), one per prompt; `prompt_indices` fills `Sample.prompt_index`."""
    completions = [c for _, part in answers for c in part]
    indices = prompt_indices if prompt_indices is not None else [-1] * len(completions)
    return [Sample(c.prompt_ids, c.token_ids, c.logprobs, c.finish_reason, i) for c, i in zip(completions, indices)]


@dataclass(frozen=True)
class RolloutRows:
    """Rows [start, stop) of the batch that the rollout engines' answers make, padded with `pad_id`.

    An experience call (old and reference log-probs, values, a reward model's scores) is given this in
    place of its batch split, and the engines' answers (their object refs) as its further arguments. Ray
    hands the answers over as soon as the engines return, so the phase's actors start without a round
    through the driver's Python, and the driver serializes no split between generation and the forwards
    (`benchmarks/RESULTS.md`, PPO orchestration share). Every call pads the whole batch, so its rows equal
    the driver's own `collate` of the same samples, bit for bit.
    """

    start: int
    stop: int
    pad_id: int

    def samples(self, answers: list) -> list[Sample]:
        return answer_samples(answers)[self.start : self.stop]

    def batch(self, answers: list) -> Batch:
        return select(collate(answer_samples(answers), self.pad_id), slice(self.start, self.stop))


def rollout_rows(n: int, parts: int, pad_id: int) -> list[RolloutRows | None]:
    """`split_rows` as `RolloutRows` (None for an empty range: that actor is not called)."""
    return [RolloutRows(r.start, r.stop, pad_id) if r.stop > r.start else None for r in split_rows(n, parts)]


def forward_batch(batch, answers: tuple) -> Batch:
    """An experience call's batch: its split in wire form, or the `RolloutRows` of the engines' `answers`."""
    from batray.ppo.wire import from_wire

    return batch.batch(list(answers)) if isinstance(batch, RolloutRows) else from_wire(batch)
