"""Policy -> rollout engine weight sync: the bucket layout, the transports, and the driver's `WeightSync`.

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
Every collective has a timeout: a missing peer is a `DistributedError`, not a hang. The driver's side
(`WeightSync`) calls the policy and engine actors' sync methods; the functions above are what those
methods run in the actors.
"""

from __future__ import annotations

import datetime
import math
from dataclasses import dataclass

import ray
import torch

from batray.errors import BatrayError, DistributedError

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


# ---- the driver's side: one call per sync, whatever the transport ----------------------------


class WeightSync:
    """`push(version)` after every update sends the policy's weights to every engine and records `version`
    on them; `reconnect()` re-forms the broadcast group after an engine was restarted (the other transports
    need no setup). `policy` and `engines` are `batray.groups.ActorGroup`s. Every wait has the sync timeout."""

    def __init__(self, policy, engines, transport: str, *, backend: str, timeout_s: float):
        if transport not in TRANSPORTS:
            raise ValueError(f"unknown weight-sync transport {transport!r} (one of {', '.join(TRANSPORTS)})")
        self.policy, self.engines, self.transport = policy, engines, transport
        self.backend, self.timeout_s = backend, timeout_s
        self.connected = False

    @property
    def rides_with_calls(self) -> bool:
        """The object store's sync needs no round of its own: the policy's train call returns its bucket
        references (`PolicyActor.train_then_buckets`) and the next generate call carries them to the engines
        (`RolloutActor.generate_versioned`), so a step makes two Ray calls fewer. `push` is still the sync
        at the start, and after an engine restart when no weights are waiting to ride. The other transports
        move the weights in calls of their own."""
        return self.transport == "object_store"

    def reconnect(self) -> None:
        """Before the first push and after an engine restart: check CUDA IPC's placement, or form the
        broadcast group of policy rank 0 and every engine (the object store needs nothing)."""
        self.connected = False
        if self.transport == "cuda_ipc":
            self._check_same_gpu()
        elif self.transport == "collective":
            self._form_group()
        self.connected = True

    def _form_group(self) -> None:
        rank0 = self.policy.actors[0]
        layout = ray.get(rank0.sync_layout.remote(), timeout=self.timeout_s)
        addr, port = ray.get(rank0.master_address.remote(), timeout=self.timeout_s)
        world = 1 + len(self.engines)
        refs = self.policy.call_async("open_sync_group", addr, port, world, self.backend)
        refs += [e.open_sync_group.remote(addr, port, 1 + i, world, self.backend, layout, self.timeout_s)
                 for i, e in enumerate(self.engines.actors)]
        self._wait(refs, "forming the weight-sync group")

    def push(self, version: int) -> None:
        if not self.connected:
            self.reconnect()
        if self.transport == "object_store":  # rank 0's bucket references go to the engines without the driver
            refs = self.policy.call_async("weight_buckets")
            refs += [e.load_buckets.remote(refs[0], version) for e in self.engines.actors]
        elif self.transport == "collective":
            refs = self.policy.call_async("broadcast_weights")
            refs += [e.receive_broadcast.remote(version) for e in self.engines.actors]
        else:  # cuda_ipc
            handles = self.policy.call("share_weights", timeout_s=self.timeout_s)[0]
            refs = [e.load_shared.remote(handles, version) for e in self.engines.actors]
        self._wait(refs, f"weight sync policy -> {len(self.engines)} rollout engine(s) ({self.transport})")

    def _check_same_gpu(self) -> None:
        """CUDA IPC shares device memory within one GPU: every engine must sit on policy rank 0's GPU."""
        def where(_self):
            ctx = ray.get_runtime_context()
            return ctx.get_node_id(), tuple(ctx.get_accelerator_ids().get("GPU", []))

        actors = [self.policy.actors[0], *self.engines.actors]
        places = ray.get([a.__ray_call__.remote(where) for a in actors], timeout=self.timeout_s)
        if not places[0][1] or any(p != places[0] for p in places[1:]):
            raise BatrayError("ppo.sync_transport cuda_ipc needs every rollout engine on policy rank 0's GPU "
                              f"(placements: {places}); use colocate: true with one bundle, or collective")

    def _wait(self, refs: list, what: str) -> None:
        try:
            ray.get(refs, timeout=self.timeout_s)
        except ray.exceptions.GetTimeoutError:
            self.connected = False
            raise BatrayError(f"{what} did not finish within {self.timeout_s:g}s (ppo.sync_timeout_s)") from None
