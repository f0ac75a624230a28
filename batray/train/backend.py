"""The torch.distributed set-up of Ray Train's workers, without importing torch where it is not needed.

Ray Train's `TorchConfig` lives in `ray.train.torch.config`, which imports torch at the top. Its
`_TorchBackend` is pickled into the controller actor (the callbacks that start the process group), so the
controller, which never touches a tensor, imports torch for it (2.3 s of CPU per launch on a 2-core
machine, on the path to the first step). `TorchProcessGroup` is the same set-up for the two backends
batray uses (gloo on CPU, nccl on GPU, `env://` rendezvous), from a module that imports no torch: the
controller runs `on_start`, and the functions it sends to the workers (which import torch anyway) call
Ray's own worker-side helpers there (`_set_torch_distributed_env_vars`, `_setup_torch_process_group`,
`_shutdown_torch`). The training function keeps Ray's `TorchConfigContextManager` (it runs in the workers).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import ray
from ray.train.backend import Backend, BackendConfig

log = logging.getLogger(__name__)


@dataclass
class TorchProcessGroup(BackendConfig):
    """`ray.train.torch.TorchConfig(backend=..., timeout_s=...)` with `init_method="env"`, torch-free."""

    backend: str = "gloo"  # "gloo" (CPU) or "nccl" (GPU)
    timeout_s: int = 1800

    @property
    def backend_cls(self):
        return _ProcessGroupBackend

    @property
    def train_func_context(self):
        from ray.train.torch.config import TorchConfigContextManager  # the driver and workers import torch anyway

        return TorchConfigContextManager

    @property
    def framework(self):
        from ray.train.v2._internal.util import TrainingFramework

        return TrainingFramework.TORCH

    def to_dict(self) -> dict:
        return {"backend": self.backend, "init_method": "env", "timeout_s": self.timeout_s}


class _ProcessGroupBackend(Backend):
    """What `ray.train.torch.config._TorchBackend` does for gloo / nccl with `env://` (Ray 2.5x-2.6x)."""

    share_cuda_visible_devices: bool = True  # as Ray's: NCCL sees every GPU of the node's workers

    def on_start(self, worker_group, backend_config: TorchProcessGroup):
        from ray.train._internal.utils import get_address_and_port

        addr, port = worker_group.execute_single(0, get_address_and_port)
        worker_group.execute(_set_master, addr=addr, port=port)
        worker_group.execute(_set_distributed_env_vars)
        ray.get([worker_group.execute_single_async(i, _setup_process_group, backend=backend_config.backend,
                                                   world_rank=i, world_size=len(worker_group),
                                                   timeout_s=backend_config.timeout_s)
                 for i in range(len(worker_group))])

    def on_shutdown(self, worker_group, backend_config: TorchProcessGroup):
        from ray.exceptions import GetTimeoutError
        from ray.train import constants

        futures = worker_group.execute_async(_shutdown, destroy_process_group=len(worker_group) > 1)
        timeout_s = int(os.environ.get(constants.TORCH_PROCESS_GROUP_SHUTDOWN_TIMEOUT_S,
                                       constants.DEFAULT_TORCH_PROCESS_GROUP_SHUTDOWN_TIMEOUT_S))
        try:
            ray.get(futures, timeout=timeout_s)
        except GetTimeoutError:
            log.warning("torch process group shutdown timed out after %d s", timeout_s)


# Run in the workers (pickled by reference: this module, then Ray's torch helpers there).

def _set_master(addr: str, port: int) -> None:
    os.environ["MASTER_ADDR"] = addr
    os.environ["MASTER_PORT"] = str(port)


def _set_distributed_env_vars() -> None:
    from ray.train.torch.config import _set_torch_distributed_env_vars

    _set_torch_distributed_env_vars()


def _setup_process_group(backend: str, world_rank: int, world_size: int, timeout_s: int) -> None:
    from ray.train.torch.config import _setup_torch_process_group

    _setup_torch_process_group(backend=backend, world_rank=world_rank, world_size=world_size, init_method="env://",
                               timeout_s=timeout_s)


def _shutdown(destroy_process_group: bool) -> None:
    from ray.train.torch.config import _shutdown_torch

    _shutdown_torch(destroy_process_group=destroy_process_group)
