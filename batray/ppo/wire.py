"""Tensors as they cross PPO's Ray calls: numpy arrays, which Ray pickles out of band.

Ray serializes a `torch.Tensor` through torch's own pickling, which writes every tensor with
`torch.save` and reads it back with `torch.load` (~0.1-0.2 ms per tensor each way on CPU, whatever
its size); a numpy array goes into the object store as one buffer copy and is read back without
parsing. A rollout batch is ~10 tensors and the ptx blocks of an update ~16 more, so on the tiny
model the torch path cost ~5-9 ms per phase (`benchmarks/RESULTS.md`, PPO orchestration share).

`to_wire` turns every tensor inside a dict / list / tuple into its wire form (a numpy array; dtypes
numpy lacks, such as bfloat16, as raw bytes with their dtype and shape) and `from_wire` turns them back
into writable CPU tensors with the same dtype, shape and values (bit for bit). Anything else passes
through unchanged, so both accept plain values and already-converted structures.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

_NUMPY_DTYPES = {torch.float64, torch.float32, torch.float16, torch.int64, torch.int32, torch.int16, torch.int8,
                 torch.uint8, torch.bool}


@dataclass(frozen=True)
class RawTensor:
    """A tensor of a dtype numpy has no type for: its bytes, dtype and shape."""

    data: np.ndarray  # uint8, the tensor's bytes in row-major order
    dtype: torch.dtype
    shape: tuple[int, ...]


def to_wire(obj):
    """`obj` with every tensor (on any device) replaced by its numpy wire form."""
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        if t.dtype in _NUMPY_DTYPES:
            return t.numpy()
        return RawTensor(t.reshape(-1).view(torch.uint8).numpy(), t.dtype, tuple(t.shape))
    if isinstance(obj, dict):
        return {k: to_wire(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_wire(v) for v in obj)
    return obj


def from_wire(obj):
    """The inverse of `to_wire`: CPU tensors that own their memory (copied out of the read-only buffers Ray
    hands back, and never sharing the sender's memory when no process boundary was crossed)."""
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(obj.copy())
    if isinstance(obj, RawTensor):
        return torch.from_numpy(obj.data.copy()).view(obj.dtype).reshape(obj.shape)
    if isinstance(obj, dict):
        return {k: from_wire(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(from_wire(v) for v in obj)
    return obj


def wire_nbytes(obj) -> int:
    """The bytes of the arrays inside a wire-form structure (what Ray copies out of band)."""
    if isinstance(obj, np.ndarray):
        return obj.nbytes
    if isinstance(obj, RawTensor):
        return obj.data.nbytes
    if isinstance(obj, dict):
        return sum(wire_nbytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(wire_nbytes(v) for v in obj)
    return 0
