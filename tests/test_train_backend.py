"""`batray.train.backend.TorchProcessGroup`: what Ray Train's controller unpickles to set up the workers'
process group imports no torch (Ray's own `TorchConfig` does), and it describes itself as a torch run.
That the process group works (gloo, two workers, exact resume) is `tests/test_pretrain.py`'s."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from ray import cloudpickle
from ray.train.torch import TorchConfig
from ray.train.v2._internal.callbacks.backend_setup import BackendSetupCallback
from ray.train.v2._internal.util import TrainingFramework

from batray.train.backend import TorchProcessGroup

ROOT = Path(__file__).resolve().parent.parent
LOAD = "import pickle, sys; pickle.loads(sys.stdin.buffer.read()); print('torch' in sys.modules)"


def imports_torch_to_unpickle(obj) -> bool:
    """Unpickle `obj` in a fresh interpreter; did that import torch?"""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    out = subprocess.run([sys.executable, "-c", LOAD], input=cloudpickle.dumps(obj), env=env, capture_output=True,
                         check=True, timeout=120)
    return out.stdout.decode().strip().splitlines()[-1] == "True"


def test_the_controllers_process_group_callback_imports_no_torch():
    assert not imports_torch_to_unpickle(BackendSetupCallback(TorchProcessGroup(backend="gloo", timeout_s=60)))
    assert imports_torch_to_unpickle(BackendSetupCallback(TorchConfig(backend="gloo", timeout_s=60)))  # Ray's


def test_it_is_a_torch_run_with_env_rendezvous():
    cfg = TorchProcessGroup(backend="nccl", timeout_s=600)
    assert cfg.framework is TrainingFramework.TORCH
    assert cfg.to_dict() == {"backend": "nccl", "init_method": "env", "timeout_s": 600}
    assert cfg.train_func_context is TorchConfig().train_func_context
    assert cfg.backend_cls.share_cuda_visible_devices  # as Ray's: NCCL sees the node's GPUs


ENGINE = """
import os, sys, torch
from batray.config.base import TrainConfig
from batray.distributed import free_port, init_process_group
from batray.train.engine import build_engine
os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
init_process_group(0, 1, "127.0.0.1", int(os.environ["MASTER_PORT"]), backend="gloo")
engine, _, _ = build_engine(torch.nn.Linear(4, 4), TrainConfig(max_steps=2), use_gpu=False)
engine.backward(engine(torch.ones(2, 4)).sum()); engine.step()
from deepspeed import comm
print("shm op", comm.comm.cdb.shm_comm_op)
"""


def test_a_cpu_engine_builds_no_shared_memory_comm_op(tmp_path):
    """DeepSpeed's CPU comm backend would JIT-compile `deepspeed_shm_comm` (~50 s, once per venv) on the first
    engine; batray's `build_engine` switches it off (training never uses it), and a step still runs."""
    env = {**os.environ, "TORCH_EXTENSIONS_DIR": str(tmp_path / "ext"),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    out = subprocess.run([sys.executable, "-c", ENGINE], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "shm op None" in out.stdout
    assert not (tmp_path / "ext").exists() or not any((tmp_path / "ext").rglob("*shm*"))
