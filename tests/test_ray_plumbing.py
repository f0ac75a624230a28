"""The actor-group helper, process groups across actors with timeouts, and a two-node placement."""

from __future__ import annotations

import pytest
import torch

from batray.groups import ActorGroup, DistributedWorker, make_placement_group
from batray.errors import BatrayError, DistributedError


class SumWorker(DistributedWorker):
    def __init__(self, offset: float, rank: int = 0, world_size: int = 1):
        super().__init__(rank, world_size)
        self.offset = offset

    def all_reduce(self, value: float) -> float:
        import torch.distributed as dist

        from batray.distributed import wait_collective

        t = torch.tensor([value + self.offset + self.rank])
        wait_collective("all_reduce", dist.all_reduce, t, timeout_s=30)
        return float(t.item())

    def lonely_broadcast(self) -> str:
        """Only this rank joins a broadcast: the timeout must fire with a clear error."""
        import torch.distributed as dist

        from batray.distributed import wait_collective

        try:
            wait_collective("broadcast", dist.broadcast, torch.zeros(1), src=1, timeout_s=2)
        except DistributedError as e:
            return str(e)
        return "no error"


def test_actor_group_call_and_process_group(ray_session):
    group = ActorGroup(SumWorker, 3, num_cpus=0.25, init_args=(10.0,))
    assert group.call("node_id")  # every actor answers
    group.setup_process_group(backend="gloo", timeout_s=30)
    # sum over ranks of (1 + 10 + rank) = 3 * 11 + (0 + 1 + 2)
    assert group.call("all_reduce", 1.0) == [36.0, 36.0, 36.0]
    assert group.call_each("all_reduce", [(0.0,), (0.0,), (3.0,)]) == [36.0, 36.0, 36.0]
    group.kill()


def test_collective_timeout_is_a_clear_error(ray_session):
    group = ActorGroup(SumWorker, 2, num_cpus=0.25, init_args=(0.0,))
    group.setup_process_group(backend="gloo", timeout_s=30)
    message = ray_session.get(group.actors[0].lonely_broadcast.remote())
    assert "broadcast" in message and "timed out" in message
    group.kill()


def test_process_group_setup_timeout(ray_session):
    group = ActorGroup(SumWorker, 2, num_cpus=0.25, init_args=(0.0,))
    addr, port = ray_session.get(group.actors[0].master_address.remote())
    # Only rank 0 joins a group of two: setup must fail within the timeout, not hang.
    with pytest.raises(Exception, match="process group setup"):
        ray_session.get(group.actors[0].join_process_group.remote(addr, port, "gloo", 3.0))
    group.kill()


def test_unschedulable_placement_group_fails_clearly(ray_session):
    with pytest.raises(BatrayError, match="could not be scheduled"):
        make_placement_group([{"CPU": 64}], timeout_s=2, name="too-big")


def test_group_spreads_across_two_nodes(ray_cluster):
    import ray

    pg = make_placement_group([{"CPU": 1}, {"CPU": 1}], strategy="STRICT_SPREAD", timeout_s=60)
    group = ActorGroup(SumWorker, 2, num_cpus=1, pg=pg, init_args=(0.0,))
    nodes = group.call("node_id")
    assert len(set(nodes)) == 2
    group.setup_process_group(backend="gloo", timeout_s=30)
    assert group.call("all_reduce", 0.0) == [1.0, 1.0]
    group.kill()
    ray.util.remove_placement_group(pg)


def test_memory_dataset_equal_contiguous_shards_in_order(ray_session):
    """In-memory training rows (SFT, reward): each worker gets the same number of rows, in order,
    and micro batches drop a partial last one as Ray Data's `drop_last` does."""
    import numpy as np

    from batray.train.memory_data import MemoryDataset

    ds = MemoryDataset.from_rows([{"x": np.full(3, i, dtype=np.int32), "n": i} for i in range(11)])
    shards = [ds.shard(rank, 2) for rank in range(2)]
    batches = [[b["n"].tolist() for b in s.iter_batches(batch_size=2, drop_last=True)] for s in shards]
    assert batches == [[[0, 1], [2, 3]], [[5, 6], [7, 8]]]  # 5 rows each, the 11th left out
    first = next(shards[0].iter_batches(batch_size=4))
    assert first["x"].shape == (4, 3) and first["x"][3].tolist() == [3, 3, 3]
    assert [len(b["n"]) for b in ds.shard(0, 1).iter_batches(batch_size=4)] == [4, 4, 3]
