"""torch.distributed across Ray actors, with timeouts that fail clearly instead of hanging.

Backends: gloo on CPU, NCCL on GPU. Every setup and collective takes a timeout; when it passes, a
`DistributedError` names the operation, the rank and what to check, instead of a silent hang.
"""

from __future__ import annotations

import datetime
import socket
from collections.abc import Callable

import torch
import torch.distributed as dist

from batray.errors import DistributedError


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def node_ip() -> str:
    """This host's address as other nodes reach it (the IP Ray itself uses when available)."""
    try:
        import ray

        if ray.is_initialized():
            return ray.util.get_node_ip_address()
    except ImportError:
        pass
    return socket.gethostbyname(socket.gethostname())


def default_backend() -> str:
    return "nccl" if torch.cuda.is_available() else "gloo"


def init_process_group(rank: int, world_size: int, master_addr: str, master_port: int,
                       backend: str | None = None, timeout_s: float = 60.0) -> None:
    """Join the default process group; raises `DistributedError` if peers don't arrive in time."""
    backend = backend or default_backend()
    if dist.is_initialized():
        raise DistributedError(f"rank {rank}: a process group is already initialized in this process")
    try:
        dist.init_process_group(
            backend=backend,
            init_method=f"tcp://{master_addr}:{master_port}",
            rank=rank,
            world_size=world_size,
            timeout=datetime.timedelta(seconds=timeout_s),
        )
    except (RuntimeError, dist.DistStoreError) as e:  # DistStoreError: the rendezvous timed out
        raise DistributedError(
            f"rank {rank}/{world_size}: process group setup ({backend}) at {master_addr}:{master_port} failed "
            f"within {timeout_s:g}s: {str(e).splitlines()[0]}; check that every rank started and the port is reachable"
        ) from None


def wait_collective(name: str, op: Callable[..., dist.Work | None], *args, timeout_s: float = 60.0, **kwargs) -> None:
    """Run a torch.distributed collective asynchronously and wait with a timeout.

    `op` is e.g. `dist.broadcast`; it is called with `async_op=True`.
    """
    try:
        work = op(*args, async_op=True, **kwargs)
        if work is not None and not work.wait(timeout=datetime.timedelta(seconds=timeout_s)):
            raise DistributedError(f"{name}: did not complete within {timeout_s:g}s")
    except RuntimeError as e:
        rank = dist.get_rank() if dist.is_initialized() else "?"
        raise DistributedError(
            f"{name} on rank {rank} failed or timed out after {timeout_s:g}s: {str(e).splitlines()[0]}; "
            "a peer may have died or not joined the collective"
        ) from None


def destroy_process_group() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
