"""A parameter-expansion shard writer: holds the plan, writes the output shards it is handed."""

from __future__ import annotations


class ShardWriter:
    def __init__(self, plan):
        self.plan = plan  # batray.expansion.ExpansionPlan, sent once per writer (not once per shard)

    def write(self, shard: int, out_dir: str) -> dict:
        from batray.expansion import write_shard

        return write_shard(self.plan, shard, out_dir)
