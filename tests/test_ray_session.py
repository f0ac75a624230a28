"""`batray.ray_session.init_ray` on a local cluster it starts itself (in a subprocess: the test session
has its own Ray): workers get the checkout and the environment from the raylet, not from a runtime env,
the driver's own environment is left as it was, and `ray.dashboard` switches the web dashboard; the same when the cluster
was started in the background (`start_ray_early`, as `run_stage` does) while the driver went on."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from batray.config import load_config
from batray.ray_session import RAY_DATA_LOGGING_ENV, RAY_DATA_QUIET_CONFIG, environ, local_cluster_kwargs

ROOT = Path(__file__).resolve().parent.parent

# The driver finds batray through sys.path only (no PYTHONPATH, another working directory), so a
# worker can only import this checkout's batray if init_ray hands it the path.
DRIVER = r"""
import json, os, sys
sys.path.insert(0, sys.argv[1])
import ray
from batray.config import load_config
from batray.ray_session import init_ray, start_ray_early, without_state_api

before = dict(os.environ)
cfg = load_config(None, sys.argv[3:])
if sys.argv[2] == "early":  # as `run_stage` does: the cluster starts while this thread goes on
    start_ray_early(cfg)
    import torch  # noqa: F401 - work of the command's own (the tiny model's imports) meanwhile
init_ray(cfg)


@ray.remote(num_cpus=0)
def worker_view():
    import batray

    return {"batray": batray.__file__, "pythonpath": os.environ.get("PYTHONPATH", ""),
            "tokenizers": os.environ.get("TOKENIZERS_PARALLELISM"),
            "ray_data": os.environ.get("RAY_DATA_LOGGING_CONFIG"),
            "preemption_watcher": os.environ.get("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER")}


out = ray.get(worker_view.remote())
out["job_runtime_env"] = dict(ray.get_runtime_context().runtime_env)
ours = ("PYTHONPATH", "TOKENIZERS_PARALLELISM", "RAY_DATA_LOGGING_CONFIG", "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER")
out["driver_env_kept"] = {k: os.environ.get(k) for k in ours} == {k: before.get(k) for k in ours}
out["without_state_api"] = without_state_api()
if cfg.ray.dashboard:
    import urllib.request

    with urllib.request.urlopen(f"http://{ray._private.worker.get_dashboard_url()}/", timeout=30) as page:
        out["dashboard_page"] = page.status == 200 and b"<html" in page.read(2000).lower()
# What Ray Train's placement-group cleaner asks once a second (`batray.train.ray_trainer`). A dashboard
# serves it once its modules are up, seconds after `ray.init` on a busy machine: asked until then.
import time
from ray.util.state import list_actors

deadline = time.monotonic() + (120 if cfg.ray.dashboard else 0)
while True:
    try:
        list_actors(address=ray.get_runtime_context().gcs_address, timeout=10)  # this cluster's, not a guess
        out["state_api"] = True
        break
    except Exception as e:
        out["state_api"], out["state_error"] = False, repr(e)[:500]
        if time.monotonic() > deadline:
            break
        time.sleep(0.5)  # polling the dashboard's readiness
try:  # Ray Train's autoscaling coordinator, made ahead of the first launch by the early start
    ray.get_actor("AutoscalingCoordinator", namespace="AutoscalingCoordinator")
    out["coordinator"] = True
except ValueError:
    out["coordinator"] = False
print("RESULT " + json.dumps(out))
"""


def run_driver(tmp_path: Path, mode: str, *overrides: str) -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", RAY_DATA_LOGGING_ENV, "TOKENIZERS_PARALLELISM") and not k.startswith("RAY_")}
    proc = subprocess.run([sys.executable, "-c", DRIVER, str(ROOT), mode, "ray.num_cpus=2", *overrides], check=False,
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(line for line in proc.stdout.splitlines() if line.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


@pytest.mark.parametrize("mode", ["early", "init"])
def test_local_workers_get_the_checkout_from_the_raylet_without_a_runtime_env_and_the_dashboard_on_request(
        tmp_path, mode):
    out = run_driver(tmp_path, mode, "ray.dashboard=true")
    assert Path(out["batray"]).resolve().is_relative_to(ROOT), out
    assert out["pythonpath"].split(os.pathsep)[0] == str(ROOT)
    assert out["tokenizers"] == "false"
    assert out["ray_data"] == RAY_DATA_QUIET_CONFIG
    assert out["preemption_watcher"] == "0"  # Ray Train's: no drained nodes on a local cluster
    # No runtime env: Ray starts workers directly, not through setup_worker.py.
    assert not out["job_runtime_env"], out["job_runtime_env"]
    assert out["driver_env_kept"]
    assert out["coordinator"] == (mode == "early")
    assert out["dashboard_page"]  # the web UI, while the cluster is up
    assert out["state_api"], out.get("state_error")  # Ray Train's defaults stand: its cleaner can ask
    assert not out["without_state_api"]


def test_without_the_dashboard_the_state_api_is_missing_and_batray_knows(tmp_path):
    """The premise of `LocalTorchTrainerWithoutStateApi`: a local cluster started without the dashboard has no
    State API, so Ray Train's placement-group cleaner could only log that it failed to ask."""
    out = run_driver(tmp_path, "init")
    assert not out["state_api"]
    assert out["without_state_api"]


def test_the_local_cluster_arguments_follow_the_ray_section():
    assert local_cluster_kwargs(load_config(None, [])) == {"include_dashboard": False}
    assert local_cluster_kwargs(None) == {"include_dashboard": False}
    cfg = load_config(None, ["ray.num_cpus=3", "ray.num_gpus=0", "ray.dashboard=true"])
    assert local_cluster_kwargs(cfg) == {"include_dashboard": True, "num_cpus": 3, "num_gpus": 0}


def test_environ_sets_inside_and_restores_after(monkeypatch):
    monkeypatch.setenv("BATRAY_TEST_KEPT", "old")
    monkeypatch.delenv("BATRAY_TEST_NEW", raising=False)
    try:
        with environ({"BATRAY_TEST_KEPT": "new", "BATRAY_TEST_NEW": "1"}):
            assert os.environ["BATRAY_TEST_KEPT"] == "new" and os.environ["BATRAY_TEST_NEW"] == "1"
            raise RuntimeError("the block fails")
    except RuntimeError:
        pass
    assert os.environ["BATRAY_TEST_KEPT"] == "old" and "BATRAY_TEST_NEW" not in os.environ
