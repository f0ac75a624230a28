"""Write an expanded checkpoint tensor by tensor: peak memory is a few of the largest tensors.

Each output shard is written by `write_shard`: its safetensors header is known from the plan
(names, dtypes, shapes), so it is written first and then every tensor is read from the source
(`safe_open`, memory-mapped), expanded, appended and dropped. Nothing ever holds a whole shard, let
alone the model. Shards are independent, so `expand_checkpoint` runs them through whatever `run_shards`
it is given: a plain loop here, Ray tasks in `jobs/expand.py`.

The output folder is built in `DST.tmp` and renamed to `DST` once complete, so a crash never leaves
something that looks like a finished checkpoint.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import zlib
from collections.abc import Callable
from pathlib import Path

import torch

from batray.expansion.mapping import expand_weight
from batray.expansion.plan import ExpansionPlan, TensorSpec

# Files of the source folder that are not copied verbatim (weights, config and markers are rewritten).
_NOT_COPIED = {"config.json", "model.safetensors.index.json", "batray.json", "expansion.json"}

_TORCH_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
                 "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
                 "BOOL": torch.bool}


def _header_bytes(tensors: list[TensorSpec]) -> bytes:
    """The safetensors header: 8-byte little-endian length, then JSON padded with spaces to 8 bytes."""
    header: dict = {"__metadata__": {"format": "pt"}}
    offset = 0
    for t in tensors:
        header[t.name] = {"dtype": t.dtype, "shape": list(t.shape), "data_offsets": [offset, offset + t.nbytes]}
        offset += t.nbytes
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    return len(blob).to_bytes(8, "little") + blob


def noise_generator(seed: int, tensor_name: str) -> torch.Generator:
    """A per-tensor generator: the same noise whichever worker writes the tensor, in whatever order."""
    return torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(tensor_name.encode()))


def expand_tensor(plan: ExpansionPlan, spec: TensorSpec, source: torch.Tensor | None) -> torch.Tensor:
    """The output tensor of `spec` from its source tensor (None when the spec is a zeroed copy)."""
    if spec.zero:
        return torch.zeros(spec.shape, dtype=_TORCH_DTYPES[spec.dtype])
    maps = tuple(plan.maps.get(s) for s in spec.spaces)
    gen = noise_generator(plan.seed, spec.name) if plan.noise_std > 0 else None
    out = expand_weight(source, maps, spec.in_axis, noise_std=plan.noise_std, generator=gen)
    assert tuple(out.shape) == spec.shape, (spec.name, tuple(out.shape), spec.shape)
    return out


def write_shard(plan: ExpansionPlan, shard: int, out_dir: str) -> dict:
    """Write output shard `shard` of `plan` into `out_dir`; returns its name, bytes and seconds."""
    from safetensors import safe_open

    t0 = time.perf_counter()
    tensors = plan.shards[shard]
    path = Path(out_dir) / plan.shard_names[shard]
    handles: dict[str, object] = {}
    try:
        with open(path, "wb") as out:
            out.write(_header_bytes(tensors))
            for spec in tensors:
                source = None
                if not spec.zero:
                    fname = plan.source_files[spec.source]
                    if fname not in handles:
                        handles[fname] = safe_open(str(Path(plan.src_dir) / fname), "pt")
                    source = handles[fname].get_tensor(spec.source)
                tensor = expand_tensor(plan, spec, source).contiguous()
                out.write(tensor.view(torch.uint8).numpy().data if tensor.numel() else b"")
                del source, tensor
    finally:
        handles.clear()
    return {"name": path.name, "bytes": path.stat().st_size, "seconds": time.perf_counter() - t0}


def run_serially(plan: ExpansionPlan, out_dir: str) -> list[dict]:
    return [write_shard(plan, i, out_dir) for i in range(len(plan.shards))]


def expand_checkpoint(plan: ExpansionPlan, dst: str | Path,
                      run_shards: Callable[[ExpansionPlan, str], list[dict]] = run_serially) -> list[dict]:
    """Write the expanded HF folder for `plan` at `dst` (config, sharded weights + index, tokenizer files).

    The caller writes `batray.json` and `expansion.json` into `dst + '.tmp'` before `finalize`; here
    the weights and the copied files land in that temporary folder.
    """
    tmp = staging_dir(dst)
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    src = Path(plan.src_dir)
    for item in src.iterdir():  # tokenizer files, chat template, generation config, ...
        if item.is_file() and item.name not in _NOT_COPIED and not item.name.endswith(".safetensors"):
            shutil.copy2(item, tmp / item.name)
    (tmp / "config.json").write_text(json.dumps(plan.new_config, indent=2, sort_keys=True))
    results = run_shards(plan, str(tmp))
    if len(plan.shards) > 1:
        weight_map = {t.name: plan.shard_names[i] for i, shard in enumerate(plan.shards) for t in shard}
        index = {"metadata": {"total_size": plan.total_bytes}, "weight_map": weight_map}
        (tmp / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    return results


def staging_dir(dst: str | Path) -> Path:
    dst = Path(dst)
    return dst.with_name(dst.name + ".tmp")


def finalize(dst: str | Path) -> Path:
    """Move the completed staging folder into place (replacing an older `dst`)."""
    dst = Path(dst)
    if dst.exists():
        shutil.rmtree(dst)
    os.replace(staging_dir(dst), dst)
    return dst
