"""`batray.train.ray_trainer`: on a local cluster batray started, a Ray Train launch whose controller, helpers
and workers have no runtime env (so they can take processes the raylet prestarted, not new ones through
`setup_worker.py`), that still gives the workers the Ray Train settings of the driver's environment (they
inherit them from the raylet), and that makes no dataset manager when there is no dataset. A fresh process:
the test session has its own Ray."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

DRIVER = r"""
import json, os, sys
sys.path.insert(0, sys.argv[1])
# A Ray Train setting in the driver's environment before the cluster starts: Ray Train would carry it
# to the workers in a runtime env; here they inherit it from the raylet.
os.environ["RAY_TRAIN_COLLECTIVE_WARN_INTERVAL_S"] = "77"
import ray
from batray.config import load_config
from batray.ray_session import init_ray

init_ray(load_config(None, ["ray.num_cpus=2"]))
import ray.train
from ray.train import RunConfig, ScalingConfig
from batray.train.backend import TorchProcessGroup
from batray.train.ray_trainer import trainer_class


def loop(config):
    import ray

    with open(config["out"], "w") as f:
        json.dump({"runtime_env": dict(ray.get_runtime_context().runtime_env),
                   "warn_interval": os.environ.get("RAY_TRAIN_COLLECTIVE_WARN_INTERVAL_S")}, f)


out = {"trainer": trainer_class().__name__}
kwargs = dict(scaling_config=ScalingConfig(num_workers=1, resources_per_worker={"CPU": 1}),
              torch_config=TorchProcessGroup(backend="gloo"),
              run_config=RunConfig(storage_path=os.path.abspath("storage"), name="probe"))
trainer = trainer_class()(loop, train_loop_config={"out": os.path.abspath("worker.json")}, **kwargs)
out["callbacks"] = [type(c).__name__ for c in trainer._create_default_callbacks()]
with_data = trainer_class()(loop, train_loop_config={}, datasets={"train": ray.data.range(4)}, **kwargs)
out["callbacks_with_data"] = [type(c).__name__ for c in with_data._create_default_callbacks()]
trainer.fit()
out["worker"] = json.load(open("worker.json"))
# A Ray Train setting that appeared after the start: the workers did not inherit it, so Ray Train's own
# trainer (and its runtime envs) carries it.
os.environ["RAY_TRAIN_COLLECTIVE_WARN_INTERVAL_S"] = "78"
out["trainer_after_a_new_setting"] = trainer_class().__name__
print("RESULT " + json.dumps(out))
"""


def test_a_launch_on_batrays_local_cluster_has_no_runtime_envs_and_no_idle_helpers(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH" and not k.startswith("RAY_")}
    proc = subprocess.run([sys.executable, "-c", DRIVER, str(ROOT)], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("RESULT "))[len("RESULT "):])
    assert out["trainer"] == "LocalTorchTrainerWithoutStateApi"
    # Ray Train's own trainer gives this worker {"env_vars": {...the setting...}} (it would inherit the
    # controller's, too): a new process through setup_worker.py
    assert out["worker"]["runtime_env"] == {}, out["worker"]
    assert out["worker"]["warn_interval"] == "77"  # inherited from the raylet, as the driver had it
    assert "DatasetsCallback" not in out["callbacks"] and "DatasetsCallback" in out["callbacks_with_data"]
    assert "PlacementGroupCleanerCallback" not in out["callbacks"]
    assert out["trainer_after_a_new_setting"] == "TorchTrainer"
