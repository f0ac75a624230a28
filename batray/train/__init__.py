"""Shared Ray Train machinery: every training stage (pretrain, sft, reward) runs through it.

Public API
----------
The stages built on this package (their inputs are resolved by `batray.stages`, never here):

- `batray.train.pretrain.run_pretrain(cfg, out_dir, *, corpus, init_from=None, model_overrides=None,
  max_steps=None) -> str`: Eq. 1 pretraining into `out_dir`; returns `out_dir/final` (an HF folder).
  Skips when `out_dir/final` is complete, resumes from `out_dir/ray/` checkpoints otherwise.
  `model_overrides` are GlmConfig fields applied to the preset when starting from scratch (ignored
  with `init_from`); `max_steps` overrides `cfg.pretrain.max_steps`.
- `batray.train.sft.run_sft(cfg, out_dir, *, init_from, data, max_steps=None) -> str`: Eq. 2
  instruction tuning from a checkpoint; same skip/resume behaviour.
- `batray.reward.stage.run_reward(...)`: Eq. 3's reward model (a `TrainTask` of its own).

Library pieces:

- `fit(task, train_cfg, out_dir, *, datasets, seed=0, recipe=None) -> str` (`launcher.py`): runs a `TrainTask` as
  a Ray Train V2 `TorchTrainer` with `train_cfg.scaling` workers and DeepSpeed ZeRO
  `train_cfg.deepspeed.zero_stage`. `datasets` are Ray Data datasets or, for rows the driver already
  holds (SFT, reward), `MemoryDataset.from_rows(rows)` (`memory_data.py`: object store, no Ray Data):
  "train" (split across workers with a deterministic order) and optional "eval" (every worker reads it
  whole; keep it small, e.g. `.limit(eval_batches * micro_batch_size).materialize()`). Writes `out_dir/metrics.jsonl`,
  `out_dir/tb/`, checkpoints in `out_dir/ray/`, and `out_dir/final/` via `task.save_final`. With
  `recipe` (the whole `RecipeConfig`), its `logging` section chooses the trackers and the progress
  display, both driven from the driver (`monitor.py`).
- `TrainTask` (`task.py`): what a stage plugs in. `CausalLMTask` + `ModelSource` cover pretrain/SFT.
- `lr_factor`, `deepspeed_config`, `build_engine` (`engine.py`); `corpus_blocks`,
  `pad_sft_sample`, `pack_sft_samples` (`lm_data.py`: Ray Data transforms for Eq. 1 blocks, SFT
  samples padded one per row or packed whole several per row).

Plugging in another task (e.g. the reward model, Eq. 3)
------------------------------------------------------
Subclass `TrainTask` as a picklable dataclass holding only paths/plain data, and override:

    build_model(self) -> nn.Module          # e.g. AutoModelForSequenceClassification, seeded
    loss(self, model, batch) -> (loss, stats)
        # batch: dict of tensors made from one micro batch of numpy columns of your Ray Dataset
        #   (override `to_device` to change the conversion); `model` is the DeepSpeed engine,
        #   call it like the module. stats: additive 0-d tensors (sums, counts) -- the loop sums
        #   them over micro batches and workers.
    metrics(self, stats, prefix="") -> dict  # summed stats -> logged values (e.g. accuracy = n_ok / n)
    num_tokens(self, batch) -> int           # for tokens/s (default: input_ids.numel())
    save_final(self, model, out_dir, *, step, tokens_seen)   # rank 0, full parameters

then `fit(MyTask(...), cfg.reward, out_dir, datasets={"train": ds, "eval": small_ds}, seed=cfg.seed, recipe=cfg)`.
Rows of the "train" dataset must have fixed-shape columns (pad them) so they batch into arrays.

Resume and exactness
--------------------
A checkpoint every `ckpt_every` steps holds DeepSpeed's model/optimizer/scheduler state (per-rank
ZeRO partitions merged by Ray), the data position (epoch, micro batches consumed) and per-rank RNG.
Restarting the same command resumes: the shard's epoch is re-read and already-trained batches are
skipped, so on CPU with a fixed seed the losses after a resume equal those of an uninterrupted run.

Backends: CPU runs gloo with `torch.optim.AdamW` handed to `deepspeed.initialize`; GPU runs NCCL,
with bf16 when `deepspeed.bf16` is true.
"""

import importlib

# Imported on first use (PEP 562): a process that needs one light module of this package (a Ray Data
# task running `lm_data.corpus_blocks`, the `monitor.ProgressChannel` actor) does not import torch,
# DeepSpeed and Ray Train for the rest.
_EXPORTS = {
    "build_engine": "engine", "deepspeed_config": "engine", "lr_factor": "engine",
    "TrainingFailed": "launcher", "fit": "launcher",
    "corpus_blocks": "lm_data", "pad_sft_sample": "lm_data",
    "CausalLMTask": "task", "ModelSource": "task", "Objective": "task", "TrainTask": "task",
}

__all__ = [
    "CausalLMTask", "ModelSource", "Objective", "TrainTask", "TrainingFailed", "build_engine", "corpus_blocks",
    "deepspeed_config", "fit", "lr_factor", "pad_sft_sample",
]


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
