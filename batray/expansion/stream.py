"""Write an expanded checkpoint a block of rows at a time: peak memory is a few blocks, whatever the model.

Each output shard is written by `write_shard`: its safetensors header is known from the plan
(names, dtypes, shapes), so it is written first and then every tensor is made a block of rows at a
time: the source rows it needs read (`safe_open`, opened per read so no mapped pages pile up),
expanded, appended and dropped. Nothing ever holds a whole tensor, let alone a shard or the model. Shards are independent, so `expand_checkpoint` runs them through whatever `run_shards`
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

from batray.expansion.mapping import expand_weight, gather
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
    """The output tensor of `spec` from its whole source tensor (None when the spec is a zeroed copy)."""
    if spec.zero:
        return torch.zeros(spec.shape, dtype=_TORCH_DTYPES[spec.dtype])
    maps = tuple(plan.maps.get(s) for s in spec.spaces)
    gen = noise_generator(plan.seed, spec.name) if plan.noise_std > 0 else None
    out = expand_weight(source, maps, spec.in_axis, noise_std=plan.noise_std, generator=gen)
    assert tuple(out.shape) == spec.shape, (spec.name, tuple(out.shape), spec.shape)
    return out


# Output rows are made this many float32 bytes at a time: expand_weight's float32 temporaries (the
# gather, the division, the noise) are a few blocks, whatever the tensor's or the model's size.
BLOCK_BYTES = 32 << 20


class SourceReader:
    """Row ranges of source tensors, each read through a safetensors handle opened for that read.

    `safe_open` memory-maps the file; a handle kept open for a whole shard leaves every page it
    touched mapped into this process, and mapped pages count in its proportional set size (they
    add up to the whole source over a run). Closing the handle after each read unmaps them, so the
    process holds only the rows it is working on.
    """

    def __init__(self, plan: ExpansionPlan):
        self.plan = plan

    def _open(self, name: str):
        from safetensors import safe_open

        return safe_open(str(Path(self.plan.src_dir) / self.plan.source_files[name]), "pt")

    def rows(self, name: str, start: int, stop: int) -> torch.Tensor:
        with self._open(name) as f:
            return f.get_slice(name)[start:stop]

    def whole(self, name: str) -> torch.Tensor:
        with self._open(name) as f:
            return f.get_tensor(name)


def expand_blocks(plan: ExpansionPlan, spec: TensorSpec, reader: SourceReader):
    """The output tensor of `spec` as consecutive blocks of rows (axis 0), each read, expanded (Eqs. 6-7)
    and returned on its own: row block [r0, r1) needs only source rows s_0(r0..r1-1) (Eq. 5's mapping
    of axis 0), so no block needs the whole source tensor. Eq. 7 divides along the in-axis (axis 1),
    which every block carries whole, and the cancelling noise sums to zero within a row."""
    dtype = _TORCH_DTYPES[spec.dtype]
    shape = spec.shape
    row_elems = 1
    for d in shape[1:]:
        row_elems *= d
    rows = shape[0] if shape else 1
    step = max(1, BLOCK_BYTES // (4 * max(row_elems, 1)))
    if spec.zero:
        for r0 in range(0, rows, step):
            yield torch.zeros((min(rows, r0 + step) - r0, *shape[1:]) if shape else (), dtype=dtype)
        return
    maps = tuple(plan.maps.get(s) for s in spec.spaces)
    if not shape or spec.in_axis == 0:  # no row-wise split of the division: the whole tensor at once
        yield expand_tensor(plan, spec, reader.whole(spec.source))
        return
    row_map = maps[0] if maps[0] is not None and not maps[0].is_identity() else None
    gen = noise_generator(plan.seed, spec.name) if plan.noise_std > 0 else None
    for r0 in range(0, rows, step):
        r1 = min(rows, r0 + step)
        if row_map is None:
            block = reader.rows(spec.source, r0, r1)
        else:
            index = row_map.index[r0:r1]
            lo, hi = int(index.min()), int(index.max()) + 1  # exact maps: one contiguous source range
            block = reader.rows(spec.source, lo, hi)
            if not (hi - lo == r1 - r0 and torch.equal(index, torch.arange(lo, hi))):
                block = gather(block, 0, index - lo)
        out = expand_weight(block, (None, *maps[1:]), spec.in_axis, noise_std=plan.noise_std, generator=gen)
        assert tuple(out.shape[1:]) == shape[1:] and out.shape[0] == r1 - r0, (spec.name, tuple(out.shape), shape)
        yield out
        del block, out


def write_shard(plan: ExpansionPlan, shard: int, out_dir: str) -> dict:
    """Write output shard `shard` of `plan` into `out_dir`, block of rows by block; returns its name,
    bytes and seconds. Memory: a few blocks (`BLOCK_BYTES`), never a whole tensor or shard."""
    t0 = time.perf_counter()
    tensors = plan.shards[shard]
    path = Path(out_dir) / plan.shard_names[shard]
    reader = SourceReader(plan)
    with open(path, "wb") as out:
        out.write(_header_bytes(tensors))
        for spec in tensors:
            written = 0
            for block in expand_blocks(plan, spec, reader):
                block = block.contiguous()
                if block.numel():
                    out.write(block.view(torch.uint8).numpy().data)
                written += block.numel() * block.element_size()
            assert written == spec.nbytes, (spec.name, written, spec.nbytes)
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
