"""PPO checkpoints and weight-sync buckets.

A checkpoint is one folder per saved step, written under a temporary name and renamed when complete;
`latest` (a one-line file, replaced atomically) names the newest complete one, so a crash at any
moment leaves the previous checkpoint intact:

    <ppo>/ckpt/step_000010/policy/    HF folder (+ tokenizer) + optimizer.pt + rng_rank<r>.pt
    <ppo>/ckpt/step_000010/critic/    HF folder (sequence classification) + optimizer.pt + rng_rank<r>.pt
    <ppo>/ckpt/step_000010/state.json step, KL controller, prompt and ptx positions, config hash
    <ppo>/ckpt/latest                 "step_000010"
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch

LATEST = "latest"
STATE = "state.json"


def step_name(step: int) -> str:
    return f"step_{step:06d}"


def begin_checkpoint(root: str | Path, step: int) -> Path:
    """A fresh temporary folder for the checkpoint of `step` (removed first if a crash left one)."""
    tmp = Path(root, step_name(step) + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    return tmp


def commit_checkpoint(root: str | Path, step: int, tmp: Path, state: dict, keep: int) -> Path:
    """Write state.json, rename the folder into place, point `latest` at it, prune older ones."""
    root = Path(root)
    Path(tmp, STATE).write_text(json.dumps(state, indent=2))
    final = root / step_name(step)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    pointer = root / (LATEST + ".tmp")
    pointer.write_text(final.name + "\n")
    os.replace(pointer, root / LATEST)
    done = sorted(p for p in root.glob("step_*") if p.is_dir() and not p.name.endswith(".tmp"))
    for old in done[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(root: str | Path) -> Path | None:
    """The newest complete checkpoint folder, or None."""
    pointer = Path(root, LATEST)
    if not pointer.is_file():
        return None
    folder = Path(root, pointer.read_text().strip())
    return folder if Path(folder, STATE).is_file() else None


def read_state(folder: str | Path) -> dict:
    return json.loads(Path(folder, STATE).read_text())


# ---- trainer state (one role's model, optimizer, RNG) -----------------------------------------


def save_trainer_state(model, optimizer, folder: str | Path, rank: int, tokenizer=None) -> None:
    """Rank 0 writes the (replicated) model and optimizer; every rank writes its RNG state."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if rank == 0:
        model.save_pretrained(folder, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(folder)
        torch.save(optimizer.state_dict(), folder / "optimizer.pt")
    torch.save({"torch": torch.get_rng_state()}, folder / f"rng_rank{rank}.pt")


def load_trainer_state(optimizer, folder: str | Path, rank: int) -> None:
    """Restore the optimizer and this rank's RNG (the model was built from the folder itself)."""
    folder = Path(folder)
    optimizer.load_state_dict(torch.load(folder / "optimizer.pt", weights_only=True))
    rng = folder / f"rng_rank{rank}.pt"
    if rng.is_file():
        torch.set_rng_state(torch.load(rng, weights_only=True)["torch"])


# ---- weight sync ------------------------------------------------------------------------------


def weight_buckets(model, bucket_bytes: int) -> list[dict[str, torch.Tensor]]:
    """The model's parameters as named tensors in buckets of about `bucket_bytes` (at least one tensor each).

    Each bucket travels as one object (object store) or one broadcast, so no single transfer holds a
    whole large model and the receiver loads bucket by bucket.
    """
    buckets: list[dict[str, torch.Tensor]] = []
    current: dict[str, torch.Tensor] = {}
    size = 0
    for name, p in model.named_parameters():
        t = p.detach()
        if current and size + t.numel() * t.element_size() > bucket_bytes:
            buckets.append(current)
            current, size = {}, 0
        current[name] = t.to("cpu", copy=True)  # the object store carries host memory
        size += t.numel() * t.element_size()
    if current:
        buckets.append(current)
    return buckets
