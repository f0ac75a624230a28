"""Parameter expansion (§3.4): width by Eqs. 5-7 (fpi, or exact integer-factor copies), depth by stacking.

`expand(src, dst, request)` is the whole thing: plan (validates, writes nothing on a bad request),
stream the weights shard by shard, copy tokenizer files, write `batray.json`, measure the logit
deviation on a probe batch, save it in `DST/expansion.json`, move the folder into place.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from batray.expansion.mapping import (UnitMap, cancelling_noise, exact_map, expand_weight, fpi_map,
                                      grouped_head_maps, identity_map)
from batray.expansion.plan import ExpansionPlan, Request, plan_expansion, target_sizes
from batray.expansion.stream import expand_checkpoint, finalize, run_serially, staging_dir, write_shard

__all__ = [
    "REPORT", "ExpansionPlan", "Request", "UnitMap", "cancelling_noise", "exact_map", "expand", "expand_checkpoint",
    "expand_weight", "fpi_map", "grouped_head_maps", "identity_map", "plan_expansion", "target_sizes", "write_shard",
]

REPORT = "expansion.json"


def expand(src: str | Path, dst: str | Path, request: Request, *, max_shard_bytes: int = 2 << 30,
           run_shards: Callable[[ExpansionPlan, str], list[dict]] = run_serially, probe: bool = True,
           probe_tokens: int = 64, config_hash: str | None = None, plan: ExpansionPlan | None = None) -> dict:
    """Expand the checkpoint at `src` into a new HF folder `dst`; returns the report saved as expansion.json.

    `plan`: one already made by `plan_expansion(src, request)` (callers validate before starting Ray).
    """
    import time

    from batray.checkpoint import write_marker
    from batray.expansion.probe import measure

    if plan is None:
        plan = plan_expansion(src, request, max_shard_bytes=max_shard_bytes)
    t0 = time.perf_counter()
    shards = expand_checkpoint(plan, dst, run_shards)
    seconds = time.perf_counter() - t0
    tmp = staging_dir(dst)
    report = {
        **plan.summary,
        "src": str(src),
        "shards": len(shards),
        "bytes_written": sum(s["bytes"] for s in shards),
        "write_seconds": round(seconds, 3),
        "deviation": measure(src, tmp, tokens=probe_tokens, seed=request.seed) if probe else {"skipped": "disabled"},
    }
    write_marker(tmp, stage="expand", parent=str(src), config_hash=config_hash,
                 extra={"expansion": {k: report[k] for k in ("method", "stack", "source", "target")}})
    (tmp / REPORT).write_text(json.dumps(report, indent=2))
    finalize(dst)
    return report
