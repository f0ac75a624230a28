"""The two data streams of a PPO run, with positions that checkpoints save and resumes restore.

- `PromptStream`: RL prompts (any prompt layout `batray.data.formats` recognises), rendered with the model's chat template, served in a
  shuffled order per epoch that depends only on (seed, epoch); its state is (epoch, offset).
- `PtxStream`: blocks of the pretraining corpus for Eq. 4's lambda_ptx term, built exactly like Eq. 1's
  bidirectional samples (`<|l2r|>` x and `<|r2l|>` reversed x, packed), in the same kind of order.

Both are plain Python, deterministic, and small enough for the driver of a PPO run: the prompt set
and the ptx corpus are tokenized once at start (a PPO prompt set is thousands of rows, not billions).
"""

from __future__ import annotations

import logging

import torch

from batray.data.direction import IGNORE_INDEX, l2r_sample, pack_samples, r2l_sample
from batray.data.formats import Keys
from batray.data.io import read_rows, write_rejected
from batray.data.load import load_prompts
from batray.errors import DataError
from batray.models.chat import chat_prompt_ids
from batray.models.tokenizer import direction_ids

log = logging.getLogger(__name__)


class _ShuffledCursor:
    """Index order of `n` items: a fresh permutation per epoch from (seed, epoch); state (epoch, offset)."""

    def __init__(self, n: int, seed: int):
        if n == 0:
            raise DataError("no rows to draw from")
        self.n, self.seed = n, seed
        self.epoch, self.offset = 0, 0
        self._order = self._perm(0)

    def _perm(self, epoch: int) -> list[int]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.n, generator=g).tolist()

    def take(self, k: int) -> list[int]:
        out = []
        while len(out) < k:
            if self.offset == self.n:
                self.epoch, self.offset = self.epoch + 1, 0
                self._order = self._perm(self.epoch)
            step = min(k - len(out), self.n - self.offset)
            out += self._order[self.offset : self.offset + step]
            self.offset += step
        return out

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "offset": self.offset}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.offset = int(state["epoch"]), int(state["offset"])
        self._order = self._perm(self.epoch)


def render_prompt(tokenizer, prompt: str | list[dict], fmt: str) -> list[int]:
    """Token ids of a prompt. `chat`: one user turn (or a conversation ending with the user's) in the
    model's chat template with its generation prompt. `raw`: the text (messages: their texts, a blank line
    apart) as the tokenizer encodes it, BOS included (`<|l2r|>` for a tokenizer with the direction
    tokens: its post-processor adds it)."""
    if fmt == "chat":
        return chat_prompt_ids(tokenizer, prompt)
    text = prompt if isinstance(prompt, str) else "\n\n".join(m["content"] for m in prompt)
    return tokenizer(text)["input_ids"]


class PromptStream:
    def __init__(self, prompt_ids: list[list[int]], seed: int):
        self.prompt_ids = prompt_ids
        self.cursor = _ShuffledCursor(len(prompt_ids), seed)

    @classmethod
    def from_file(cls, uri, tokenizer, *, seed: int, max_prompt_tokens: int, fmt: str = "chat",
                  keys: Keys | None = None, rejected_out: str | None = None) -> "PromptStream":
        """Prompts from a source in any prompt layout (`batray.data.load.load_prompts`; `keys`: the
        `ppo.prompt_key` / `ppo.messages_key` naming a user's own columns); rejected rows are written to
        `rejected_out` when given."""
        rows, report = load_prompts(uri, keys)
        if rejected_out is not None:
            write_rejected(report, rejected_out)
        ids, too_long = [], 0
        for row in rows:
            tokens = render_prompt(tokenizer, row["prompt"] if len(row["messages"]) == 1 else row["messages"], fmt)
            if len(tokens) > max_prompt_tokens:
                too_long += 1
                continue
            ids.append(tokens)
        log.info("%s", report.summary(f"prompts {uri}"))
        if too_long:
            log.warning("prompts %s: %d prompts longer than max_prompt_tokens=%d skipped", uri, too_long, max_prompt_tokens)
        if not ids:
            raise DataError(
                f"prompts {uri!r}: no usable prompts ({report.accepted} valid rows, {too_long} over max_prompt_tokens)"
            )
        return cls(ids, seed)

    def __len__(self) -> int:
        return len(self.prompt_ids)

    def next_batch(self, k: int) -> list[tuple[int, list[int]]]:
        """The next `k` prompts as (index in the prompt set, token ids)."""
        return [(i, self.prompt_ids[i]) for i in self.cursor.take(k)]

    def state_dict(self) -> dict:
        return self.cursor.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.cursor.load_state_dict(state)


class PtxStream:
    """Packed Eq. 1 blocks of the pretraining corpus: input_ids, labels (IGNORE_INDEX on markers), positions,
    directions (0: l2r, 1: r2l per token)."""

    def __init__(self, blocks: list, seed: int):
        if not blocks:
            raise DataError("ptx corpus produced no blocks")
        self.input_ids = torch.tensor([b.input_ids for b in blocks], dtype=torch.long)
        self.labels = torch.tensor([b.labels for b in blocks], dtype=torch.long)
        self.position_ids = torch.tensor([b.position_ids for b in blocks], dtype=torch.long)
        self.directions = torch.tensor([b.directions for b in blocks], dtype=torch.long)
        self.cursor = _ShuffledCursor(len(blocks), seed + 1)

    @classmethod
    def from_file(cls, uri: str, tokenizer, *, seed: int, block_len: int, bidirectional: bool = True) -> "PtxStream":
        rows, report = read_rows(uri, "corpus")
        log.info("%s", report.summary(f"ptx corpus {uri}"))
        l2r, r2l = direction_ids(tokenizer)
        eos = tokenizer.eos_token_id
        samples = []
        for row in rows:
            ids = tokenizer.encode(row["text"], add_special_tokens=False)
            samples.append((l2r_sample(ids, l2r, eos), 0))
            if bidirectional:  # Eq. 1's second sum: the same tokens right to left
                samples.append((r2l_sample(ids, r2l, eos), 1))
        return cls(list(pack_samples(samples, block_len, tokenizer.pad_token_id)), seed)

    def __len__(self) -> int:
        return len(self.input_ids)

    def next_blocks(self, k: int) -> dict[str, torch.Tensor]:
        """`k` blocks. No attention mask: `position_ids` delimit the segments, and the model's forward builds
        the per-segment causal mask from them (`batray.objectives.lm.packed_lm_logits`), as in pretraining."""
        idx = torch.tensor(self.cursor.take(k), dtype=torch.long)
        return {
            "input_ids": self.input_ids[idx],
            "labels": self.labels[idx],
            "position_ids": self.position_ids[idx],
            "directions": self.directions[idx],
        }

    def state_dict(self) -> dict:
        return self.cursor.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.cursor.load_state_dict(state)


__all__ = ["IGNORE_INDEX", "PromptStream", "PtxStream", "render_prompt"]
