"""What a stage command does before its local Ray cluster starts, and what a training worker imports.

`run_stage` starts the cluster in the background (`start_ray_early`) once the stage's plan and inputs are
checked; everything up to there (the config, the registry, the actor kit) must not import torch or
transformers, or their ~3-4 s of imports come before the cluster's start instead of beside it. And
DeepSpeed, which every training worker and PPO trainer imports, is imported without mlflow (its autotuner's
optional import, 2 of DeepSpeed's 2.6 s where mlflow is installed)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from batray.stages.kit import ActorKit

ROOT = Path(__file__).resolve().parent.parent

BEFORE_THE_CLUSTER = r"""
import json, sys
sys.path.insert(0, sys.argv[1])
from actors import kit
from batray.config import load_config
from batray.stages import check_inputs, resolve

cfg = load_config(sys.argv[2], [f"run_dir={sys.argv[3]}"])
kit()
plans = {}
for stage in cfg.stages:
    plan = resolve(cfg, stage)
    plans[stage] = plan.stage.ray_for(cfg)
    try:
        check_inputs(plan)
    except Exception:  # noqa: BLE001 - an empty run_dir: inputs of later stages are missing; checked anyway
        pass
print("RESULT " + json.dumps({"heavy": sorted(m for m in ("torch", "transformers", "deepspeed") if m in sys.modules),
                              "ray": plans}))
"""


def test_a_stage_reaches_its_cluster_start_without_importing_torch(tmp_path):
    proc = subprocess.run([sys.executable, "-c", BEFORE_THE_CLUSTER, str(ROOT), str(ROOT / "configs" / "tiny.yaml"),
                           str(tmp_path / "run")], capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("RESULT "))[len("RESULT "):])
    assert out["heavy"] == []
    # the stages that start a cluster early, and which of them bring Ray Train's coordinator with it
    assert {s: r for s, r in out["ray"].items() if r} == {
        "grow": "train", "pretrain": "train", "sft": "train", "reward": "train", "pairs": "actors", "label": "actors", "ppo": "actors",
        "eval": "actors"}


IMPORT_DEEPSPEED = r"""
import json, sys
sys.path.insert(0, sys.argv[1])
from batray.train.engine import import_deepspeed

import_deepspeed()
out = {"mlflow_after_deepspeed": "mlflow" in sys.modules}
from deepspeed.autotuning import autotuner

out["autotuner_has_mlflow"] = autotuner.has_mlflow
import mlflow  # noqa: F401 - still importable: nothing of the hiding is left in sys.modules

out["mlflow_importable"] = sys.modules["mlflow"] is not None
print("RESULT " + json.dumps(out))
"""


def test_deepspeed_is_imported_without_mlflow_and_mlflow_stays_importable():
    pytest.importorskip("mlflow")
    proc = subprocess.run([sys.executable, "-c", IMPORT_DEEPSPEED, str(ROOT)], capture_output=True, text=True,
                          timeout=180, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("RESULT "))[len("RESULT "):])
    assert out == {"mlflow_after_deepspeed": False, "autotuner_has_mlflow": False, "mlflow_importable": True}


def test_an_actor_kit_imports_a_role_named_by_path_when_it_is_asked_for():
    from actors import kit
    from actors.shard_writer import ShardWriter

    real = kit()
    assert isinstance(real.shard_writer, str)  # nothing imported by making the kit
    assert real.get("shard_writer") is ShardWriter and real.need("shard_writer") is ShardWriter

    class Writer:
        pass

    given = ActorKit(shard_writer=Writer)
    assert given.get("shard_writer") is Writer
    assert given.get("policy") is None
    with pytest.raises(RuntimeError, match="no policy actor class"):
        given.need("policy")
