"""Ray Train's `TorchTrainer` for a local cluster batray started (`batray.ray_session.started_local_cluster`).

Three of Ray Train V2's defaults cost a local cluster time and do nothing for it:

- **Runtime envs for the controller, its helpers and the workers** (`batray.train.local_controller`): each
  makes Ray start a new process through `setup_worker.py` instead of taking one the raylet prestarted. On a
  local cluster batray started every worker inherits the driver's environment from the raylet, so the
  controller is created without one and the workers get only the user's `worker_runtime_env`.
- **The placement-group cleaner**, when the cluster has no dashboard (batray's default, `ray.dashboard:
  false`): Ray Train starts a `PlacementGroupCleaner` actor beside every controller, which asks Ray's State
  API (`ray.util.state`, served by the dashboard) once a second whether the controller is still alive, to
  remove the worker group's placement group if it died. Without the dashboard that API does not answer: the
  cleaner could never see the controller die, and it logged "Failed to query Ray Train Controller actor
  state" once a second of every launch (174 lines in one `make run`), one more process importing
  `ray.train` each time. The local cluster and its placement groups end with the command anyway.
- **The dataset manager when the launch has no Ray dataset** (SFT and reward rows ride in the job,
  `batray.train.memory_data`): Ray Train's datasets callback creates a `DatasetManager` actor for every
  launch, one more process importing `ray.train` beside the training worker, with nothing to shard.

On any other cluster (joined through `ray.address` / RAY_ADDRESS: `ray job submit`, KubeRay) Ray Train's
defaults stand: `trainer_class()` returns `TorchTrainer` itself. The overrides reach into Ray Train's
private layout (`_create_default_callbacks`, `_initialize_and_run_controller`, the controller's
`worker_group_cls`); `tests/test_ray_trainer.py` runs a launch on this Ray and checks what they rely on.

Imported only by a Ray Train launch (it imports `ray.train.torch`).
"""

from __future__ import annotations

import threading

import ray
from ray.train.torch import TorchTrainer

from batray.ray_session import inherited_env, started_local_cluster, without_state_api


def trainer_class() -> type[TorchTrainer]:
    """The `TorchTrainer` class for the cluster this process is on: batray's on a local cluster it started,
    unless the driver has Ray Train settings in its environment that the cluster's workers did not inherit
    (set after the start), which only Ray Train's runtime envs would carry to them."""
    from ray.train.v2._internal.constants import get_env_vars_to_propagate

    if not started_local_cluster():
        return TorchTrainer
    inherited = inherited_env()
    if any(inherited.get(k) != v for k, v in get_env_vars_to_propagate().items()):
        return TorchTrainer
    return LocalTorchTrainerWithoutStateApi if without_state_api() else LocalTorchTrainer


class LocalTorchTrainer(TorchTrainer):
    """`TorchTrainer` whose controller runs without a runtime env (`batray.train.local_controller`), and
    without a dataset manager when there is no dataset."""

    # Ray Train's default callbacks left out, by class name: their modules are Ray Train's private
    # layout, which moves between releases
    callbacks_left_out: tuple[str, ...] = ()

    def _create_default_callbacks(self):
        left_out = set(self.callbacks_left_out) | (set() if self.datasets else {"DatasetsCallback"})
        return [c for c in super()._create_default_callbacks() if type(c).__name__ not in left_out]

    def _initialize_and_run_controller(self, **controller_init_kwargs):
        # Ray Train's own method (2.60) with batray's controller class and no runtime env: on the driver's
        # node, as Ray Train places it, with its SIGINT handler for a graceful abort.
        from batray.train.local_controller import LocalTrainController

        controller_cls = ray.remote(
            num_cpus=0,
            label_selector={ray._raylet.RAY_NODE_ID_KEY: ray.get_runtime_context().get_node_id()},
        )(LocalTrainController)
        controller = controller_cls.remote(**controller_init_kwargs)
        if threading.current_thread() is threading.main_thread():
            self._register_sigint_handler(controller)
        ray.get(controller.run.remote())
        return ray.get(controller.get_result.remote())


class LocalTorchTrainerWithoutStateApi(LocalTorchTrainer):
    """`LocalTorchTrainer` without the placement-group cleaner (its State API queries cannot answer)."""

    callbacks_left_out = ("PlacementGroupCleanerCallback",)
