"""Ray Train's controller for a local cluster batray started: its processes come from the raylet's pool.

Ray Train V2 gives its controller, and through it the controller's helper actors and the training workers,
a runtime env of `env_vars`: Ray Train's own settings found in the driver's environment, and
`RAY_WARN_BLOCKING_GET_INSIDE_ASYNC=0` for the controller. An actor with a non-empty runtime env never
runs in one of the worker processes the raylet prestarted (they have `import ray` done): Ray starts a new
process for it through `setup_worker.py`, one more interpreter and two `import ray`s, ~1.5 s each on 2
busy cores, for the controller, the synchronization actor, the dataset manager and every training worker.

On a local cluster batray started (`batray.ray_session.started_local_cluster`), every worker inherits the
raylet's environment, which is the driver's as it was when the cluster started (`local_worker_env`
included), so propagating it again adds nothing. There the controller is created without a runtime env,
its helpers inherit that, and the training workers get only `RunConfig.worker_runtime_env`; all of
them can then take prestarted workers. The controller silences the blocking-get warning itself.

Torch-free: the controller's process unpickles this module (`batray.train.ray_trainer` imports
`ray.train.torch`, hence torch).
"""

from __future__ import annotations

import os

from ray.train.v2._internal.execution.controller.controller import TrainController
from ray.train.v2._internal.execution.worker_group.worker_group import WorkerGroup

# ray._common.constants.RAY_WARN_BLOCKING_GET_INSIDE_ASYNC_ENV_VAR; Ray Train sets "0" for its controller
BLOCKING_GET_WARNING_ENV = "RAY_WARN_BLOCKING_GET_INSIDE_ASYNC"


class InheritedEnvWorkerGroup(WorkerGroup):
    """A worker group whose workers get only the user's `worker_runtime_env`: Ray Train's propagated
    settings are in their environment already, inherited from the raylet."""

    @staticmethod
    def _get_worker_runtime_env(custom_runtime_env):
        return dict(custom_runtime_env or {})


class LocalTrainController(TrainController):
    """`TrainController` for a runtime env-less actor on a local cluster batray started."""

    worker_group_cls = InheritedEnvWorkerGroup

    def __init__(self, **kwargs):
        # What Ray Train's runtime env would have set: the controller awaits calls in an async actor and
        # also gets results with blocking `ray.get`, on purpose. Only this process reads it.
        os.environ.setdefault(BLOCKING_GET_WARNING_ENV, "0")
        super().__init__(**kwargs)
