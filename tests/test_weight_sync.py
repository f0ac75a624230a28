"""The weight-sync transports' pieces without Ray: layout, a real gloo broadcast group across two
processes, and the clear error when a peer never arrives."""

from __future__ import annotations

import multiprocessing

import pytest
import torch

from batray.distributed import free_port
from batray.errors import DistributedError
from batray.ppo.weight_sync import broadcast, bucket_layout, choose_transport, flatten, open_broadcast_group, unflatten


def _receiver(port: int, layout, queue) -> None:
    group = open_broadcast_group("127.0.0.1", port, 1, 2, "gloo", timeout_s=30)
    received = {}
    for spec in layout:
        flat = torch.zeros(spec.numel, dtype=spec.dtype)
        broadcast(group, flat, timeout_s=30)
        received.update({n: t.clone() for n, t in unflatten(flat, spec).items()})
    queue.put(received)


def test_broadcast_group_delivers_every_bucket():
    torch.manual_seed(0)
    named = [("a", torch.randn(3, 4)), ("b", torch.randn(5)), ("c", torch.randn(2, 2).bfloat16())]
    layout = bucket_layout(named, bucket_bytes=64)  # forces several buckets, and a dtype split
    assert len(layout) >= 2
    port = free_port()
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    child = ctx.Process(target=_receiver, args=(port, layout, queue))
    child.start()
    try:
        group = open_broadcast_group("127.0.0.1", port, 0, 2, "gloo", timeout_s=30)
        params = dict(named)
        for spec in layout:
            broadcast(group, flatten([params[n] for n in spec.names]), timeout_s=30)
        received = queue.get(timeout=60)
    finally:
        child.join(timeout=60)
    assert received.keys() == params.keys()
    assert all(torch.equal(received[n], params[n]) and received[n].dtype == params[n].dtype for n in params)


def test_a_peer_that_never_joins_is_a_clear_error():
    with pytest.raises(DistributedError, match=r"weight-sync group \(gloo\) rank 0/2 .* did not form within 2s"):
        open_broadcast_group("127.0.0.1", free_port(), 0, 2, "gloo", timeout_s=2)


def test_auto_transport_by_placement_and_device():
    assert choose_transport("auto", colocate=True, cuda=False) == "object_store"
    assert choose_transport("auto", colocate=False, cuda=False) == "object_store"
    assert choose_transport("auto", colocate=True, cuda=True) == "cuda_ipc"
    assert choose_transport("auto", colocate=False, cuda=True) == "collective"
    assert choose_transport("collective", colocate=True, cuda=False) == "collective"
