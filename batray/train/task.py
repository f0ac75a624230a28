"""What a training stage plugs into the shared Ray Train loop: a `TrainTask`.

A task says how to build the model on a worker, how one batch (a dict of numpy columns from a Ray
Data shard) turns into a loss, how additive stats become logged metrics, and how the final model is
saved. Everything else (DeepSpeed, schedule, accumulation, clipping, data position, checkpoints,
resume, metrics files) is the loop's job (`batray.train.loop`).

Tasks are pickled into the job every worker receives (`batray.train.loop.JobSpec`), so they hold plain data
(paths, dicts), never models.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

import numpy as np
import torch

from batray.data.direction import IGNORE_INDEX
from batray.objectives.lm import bidirectional_lm_loss, lm_metrics, packed_lm_logits, sft_loss


class TrainTask:
    """Base class of a pluggable training task. Override `build_model`, `loss` and `save_final`."""

    stage = "train"  # a plain class attribute (subclasses may make it a dataclass field)

    def build_model(self) -> torch.nn.Module:
        """A fresh model on CPU, identical on every worker (seed it, or load it from a folder)."""
        raise NotImplementedError

    def to_device(self, batch: dict[str, np.ndarray], device: torch.device) -> dict[str, torch.Tensor]:
        """Numpy columns -> tensors on the worker's device (ints become int64)."""
        out = {}
        for k, v in batch.items():
            v = np.asarray(v)
            if v.dtype == object:  # a column of per-row arrays (e.g. lists without a tensor type)
                v = np.stack([np.asarray(x) for x in v])
            t = torch.tensor(v)  # a copy: Ray Data hands out read-only arrays
            if not t.is_floating_point():
                t = t.long()
            out[k] = t.to(device)
        return out

    def loss(self, model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(loss to minimize, additive stats: 0-d tensors summed over micro batches and workers)."""
        raise NotImplementedError

    def metrics(self, stats: dict[str, float], prefix: str = "") -> dict[str, float]:
        """Summed stats of a logging window (or an eval pass) -> named metric values."""
        return {f"{prefix}{k}": float(v) for k, v in stats.items()}

    def num_tokens(self, batch: dict[str, torch.Tensor]) -> int:
        """Tokens this batch pushes through the model (for tokens/s)."""
        return int(batch["input_ids"].numel())

    def save_final(self, model: torch.nn.Module, out_dir: str, *, step: int, tokens_seen: int) -> None:
        """Write the final Hugging Face folder (called on rank 0 with full, gathered parameters)."""
        raise NotImplementedError


@dataclass
class ModelSource:
    """Where a worker gets its model: a checkpoint folder or hub id, or a preset plus GlmConfig overrides."""

    path: str | None = None
    preset: str | None = None
    overrides: dict = field(default_factory=dict)
    seed: int = 0
    dtype: str = "float32"
    vocab_size: int | None = None  # resize embeddings up to this (a tokenizer that gained tokens)

    def build(self) -> torch.nn.Module:
        from batray.models.loading import load_causal_lm
        from batray.models.presets import build_model, preset_config

        dtype = getattr(torch, self.dtype)
        if self.path is not None:  # any causal LM folder or hub id; resized rows are seeded: same on every worker
            torch.manual_seed(self.seed)
            return load_causal_lm(self.path, dtype=dtype, vocab_size=self.vocab_size, seed=self.seed)
        return build_model(preset_config(self.preset, **self.overrides), seed=self.seed, dtype=dtype)


class Objective(str, Enum):
    """What a causal LM task optimizes (the value is what checkpoints record)."""

    BIDIRECTIONAL_LM = "eq1"  # Eq. 1 on packed l2r/r2l blocks (pretraining)
    INSTRUCTION = "eq2"  # Eq. 2 on masked, right-padded SFT samples


def trim_to_labels(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Right-padded SFT rows cut after the batch's last labelled position (most rows are far shorter than
    `seq_len`). Exact: attention is causal and the pads come last, so no kept position ever saw a cut one,
    and every label survives; the loss and its gradient are those of the full width."""
    labelled = (batch["labels"] != IGNORE_INDEX).any(dim=0).nonzero()
    width = int(labelled.max()) + 1 if labelled.numel() else 1
    return {k: v[:, :width] if v.dim() == 2 else v for k, v in batch.items()}


@dataclass
class CausalLMTask(TrainTask):
    """Causal LM training: Eq. 1 on packed direction blocks, or Eq. 2 on masked SFT samples.

    Batches have `input_ids`, `labels`, `position_ids` (restarting at 0 per packed segment, which
    makes transformers build a block-diagonal causal mask so segments never see each other) and,
    for Eq. 1, `directions`.
    """

    model_source: ModelSource
    tokenizer_dir: str
    stage: str = "pretrain"
    objective: Objective = Objective.BIDIRECTIONAL_LM
    parent: str | None = None
    config_hash: str | None = None
    extra_meta: dict = field(default_factory=dict)
    lora: object = None  # a `batray.config.base.LoraConfig`: adapters on the model (`batray.models.lora`)
    packed: bool = False  # Eq. 2 rows hold several samples (`sft.packing`): the segment mask keeps them apart

    def build_model(self) -> torch.nn.Module:
        model = self.model_source.build()
        if self.lora is not None:
            from batray.models.lora import apply_lora

            model = apply_lora(model, self.lora, base=self.model_source.path)
        return model

    def to_device(self, batch, device):
        out = super().to_device(batch, device)
        if self.objective is Objective.INSTRUCTION:
            out = trim_to_labels(out)
        return out

    def loss(self, model, batch):
        if self.objective is Objective.BIDIRECTIONAL_LM:  # packed blocks: segments must not attend to each other
            logits = packed_lm_logits(model, batch["input_ids"], batch["position_ids"])
            return bidirectional_lm_loss(logits, batch["labels"], batch["directions"])
        if self.packed:  # several SFT samples per row, positions restarting per sample
            return sft_loss(packed_lm_logits(model, batch["input_ids"], batch["position_ids"]), batch["labels"])
        # one right-padded sample per row: plain causal attention is exact (pads come last)
        logits = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits
        return sft_loss(logits, batch["labels"])

    def metrics(self, stats, prefix=""):
        return lm_metrics(stats, prefix)

    def save_final(self, model, out_dir, *, step, tokens_seen):
        from batray.checkpoint import save_hf_checkpoint
        from batray.models.tokenizer import load_tokenizer

        tokenizer = load_tokenizer(self.tokenizer_dir)
        extra = {"objective": self.objective.value, **self.extra_meta}

        def save(m, more=None):
            return save_hf_checkpoint(m, tokenizer, out_dir, stage=self.stage, step=step, tokens_seen=tokens_seen,
                                      parent=self.parent, config_hash=self.config_hash, extra={**extra, **(more or {})})

        if self.lora is None:
            save(model)
        else:
            from batray.models.lora import save_lora_final

            save_lora_final(model, out_dir, self.lora, save)
