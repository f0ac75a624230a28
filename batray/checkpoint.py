"""Checkpoint folders (docs/DESIGN.md §2): a Hugging Face `save_pretrained` folder plus `batray.json`.

`batray.json` records the stage, step, tokens seen, parent checkpoint and config hash. A stage whose
final folder has `batray.json` with `"complete": true` is finished and is skipped on a rerun. A causal
LM's `generation_config.json` names the tokenizer's stop tokens (the chat template's end of turn and
EOS), so plain `generate`, vLLM and TGI stop where batray does.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

MARKER = "batray.json"


def save_hf_checkpoint(model, tokenizer, out_dir: str | Path, *, stage: str, step: int = 0, tokens_seen: int = 0,
                       parent: str | None = None, config_hash: str | None = None, extra: dict | None = None,
                       state_dict: dict | None = None) -> Path:
    """Write model + tokenizer (+ chat template, + generation config naming the stop tokens) + batray.json,
    atomically: into a temp folder, then rename.

    `state_dict`: the weights to write when the module does not hold them in full (ZeRO-3 consolidated)."""
    out = Path(out_dir)
    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    if tokenizer is not None:
        from batray.models.loading import configure_generation

        configure_generation(model, tokenizer)
    model.save_pretrained(tmp, state_dict=state_dict, safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(tmp)
    write_marker(tmp, stage=stage, step=step, tokens_seen=tokens_seen, parent=parent, config_hash=config_hash,
                 extra=extra)
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    return out


def write_marker(folder: str | Path, *, stage: str, step: int = 0, tokens_seen: int = 0, parent: str | None = None,
                 config_hash: str | None = None, extra: dict | None = None) -> None:
    meta = {
        "stage": stage,
        "step": step,
        "tokens_seen": tokens_seen,
        "parent": parent,
        "config_hash": config_hash,
        "complete": True,
        "saved_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    meta.update(extra or {})
    Path(folder, MARKER).write_text(json.dumps(meta, indent=2))


def read_marker(folder: str | Path) -> dict | None:
    p = Path(folder, MARKER)
    if not p.is_file():
        return None
    try:
        return json.loads(p.read_text())
    except json.JSONDecodeError:
        return None


def is_complete(folder: str | Path) -> bool:
    meta = read_marker(folder)
    return bool(meta and meta.get("complete"))
