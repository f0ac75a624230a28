"""PPO checkpoints.

A checkpoint is one folder per saved step, written under a temporary name and renamed when complete;
`latest` (a one-line file, replaced atomically) names the newest complete one, so a crash at any
moment leaves the previous checkpoint intact:

    <ppo>/ckpt/step_000010/policy/    HF folder (+ tokenizer), deepspeed/ (DeepSpeed's checkpoint: model and
                                      each rank's optimizer partition), rng_rank<r>.pt
    <ppo>/ckpt/step_000010/critic/    the same for the value model (sequence classification)
    <ppo>/ckpt/step_000010/state.json step, KL controller, prompt and ptx positions, config hash
    <ppo>/ckpt/latest                 "step_000010"
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

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
