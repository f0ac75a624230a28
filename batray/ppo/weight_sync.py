"""Policy -> rollout engine weight sync: the bucket layout and the transports, without Ray.

After every PPO update the policy's weights go to every rollout engine, in buckets of about
`ppo.sync_bucket_mb` (each one flat tensor of one dtype), so no single transfer holds a whole large
model. Transports (`ppo.sync_transport`; `auto` picks by placement and device):

- `object_store`: rank 0 puts host copies of the buckets in Ray's object store; each engine reads
  them (any placement, CPU or GPU; the only one that needs no group).
- `collective`: rank 0 and the engines form their own process group (gloo on CPU, NCCL on GPU) and
  rank 0 broadcasts each flat bucket; `auto` on GPU with separate placement groups.
- `cuda_ipc`: colocated on one GPU, rank 0 shares each flat bucket's device memory by IPC handle and
  the engines copy from it, never through the host; `auto` on GPU with `colocate: true`.

Under ZeRO-3 every policy rank takes part in building each bucket (it is gathered from all of them).
Every collective has a timeout: a missing peer is a `DistributedError`, not a hang.
"""

from __future__ import annotations

import datetime
import math
from dataclasses import dataclass

import torch

from batray.errors import DistributedError

TRANSPORTS = ("object_store", "collective", "cuda_ipc")


def choose_transport(requested: str, *, colocate: bool, cuda: bool) -> str:
    """`auto`: the object store on CPU; on GPU CUDA IPC when colocated, else a broadcast group (NCCL)."""
    if requested != "auto":
        return requested
    if not cuda:
        return "object_store"
    return "cuda_ipc" if colocate else "collective"


@dataclass(frozen=True)
class BucketSpec:
    """One bucket: parameter names and full shapes, all of one dtype, laid out back to back."""

    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    dtype: torch.dtype

    @property
    def numel(self) -> int:
        return sum(math.prod(s) for s in self.shapes)


def bucket_layout(named: list[tuple[str, torch.Tensor]], bucket_bytes: int) -> list[BucketSpec]:
    """Consecutive parameters in buckets of about `bucket_bytes`; a dtype change starts a new bucket.
    Shapes are the full ones (`ds_shape` under ZeRO-3, where the local tensor is a shard)."""
    buckets: list[BucketSpec] = []
    names: list[str] = []
    shapes: list[tuple[int, ...]] = []
    dtype, size = None, 0
    for name, p in named:
        shape = tuple(getattr(p, "ds_shape", p.shape))
        nbytes = math.prod(shape) * p.element_size()
        if names and (p.dtype != dtype or size + nbytes > bucket_bytes):
            buckets.append(BucketSpec(tuple(names), tuple(shapes), dtype))
            names, shapes, size = [], [], 0
        names.append(name)
        shapes.append(shape)
        dtype = p.dtype
        size += nbytes
    if names:
        buckets.append(BucketSpec(tuple(names), tuple(shapes), dtype))
    return buckets


def flatten(tensors: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


def unflatten(flat: torch.Tensor, spec: BucketSpec) -> dict[str, torch.Tensor]:
    """Views of `flat` named and shaped as `spec` says."""
    out, start = {}, 0
    for name, shape in zip(spec.names, spec.shapes):
        n = math.prod(shape)
        out[name] = flat[start : start + n].view(shape)
        start += n
    return out


# ---- the broadcast group (collective transport) ----------------------------------------------


def open_broadcast_group(addr: str, port: int, rank: int, world_size: int, backend: str, timeout_s: float):
    """A process group of its own (own TCP store), beside any default group the process is in: rank 0
    is policy rank 0, ranks 1.. are the rollout engines."""
    import torch.distributed as dist

    timeout = datetime.timedelta(seconds=timeout_s)
    try:
        store = dist.TCPStore(addr, port, world_size, is_master=rank == 0, timeout=timeout,
                              wait_for_workers=False)
        if backend == "nccl":
            options = dist.ProcessGroupNCCL.Options()
            options._timeout = timeout
            return dist.ProcessGroupNCCL(store, rank, world_size, options)
        return dist.ProcessGroupGloo(store, rank, world_size, timeout)
    except (RuntimeError, dist.DistStoreError) as e:
        raise DistributedError(
            f"weight-sync group ({backend}) rank {rank}/{world_size} at {addr}:{port} did not form within "
            f"{timeout_s:g}s: {str(e).splitlines()[0]}"
        ) from None


def broadcast(group, flat: torch.Tensor, timeout_s: float) -> None:
    """Broadcast `flat` from rank 0 of `group` in place, waiting at most `timeout_s`."""
    try:
        work = group.broadcast([flat], _broadcast_options(root=0, timeout_s=timeout_s))
        work.wait(datetime.timedelta(seconds=timeout_s))
    except RuntimeError as e:
        raise DistributedError(
            f"weight broadcast failed or timed out after {timeout_s:g}s: {str(e).splitlines()[0]}; "
            "a rollout engine or the policy may have died"
        ) from None


def _broadcast_options(root: int, timeout_s: float):
    import torch.distributed as dist

    opts = dist.BroadcastOptions()
    opts.rootRank = root
    opts.rootTensor = 0
    opts.timeout = datetime.timedelta(seconds=timeout_s)
    return opts


# ---- CUDA IPC (cuda_ipc transport) -----------------------------------------------------------


def share_cuda(flat: torch.Tensor):
    """A picklable handle to `flat`'s device memory (the sender must keep `flat` alive until it is read)."""
    from torch.multiprocessing.reductions import reduce_tensor

    return reduce_tensor(flat)


def open_cuda(handle) -> torch.Tensor:
    rebuild, args = handle
    return rebuild(*args)
