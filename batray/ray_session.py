"""Connecting to Ray: `ray.address` from the config, else RAY_ADDRESS, else a new local cluster.

Ray Data's own output (progress bars, per-dataset execution lines) is off unless
`logging.ray_data_progress` (`ray_data_output`): batray's progress display replaces it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading

from batray.config import RecipeConfig


def init_ray(cfg: RecipeConfig | None = None, **kwargs):
    """Connect to Ray the usual ways: `ray.address` from config, else RAY_ADDRESS, else a local cluster.

    A local cluster gets explicit CPU/GPU counts from `ray.num_cpus` / `ray.num_gpus` when set, and the
    web dashboard only with `ray.dashboard: true`. Its workers import batray/actors/jobs from this
    checkout: the raylet starts with `local_worker_env` in its environment and every worker inherits it,
    so no runtime env is needed (one with `env_vars` starts each worker through Ray's `setup_worker.py`:
    one more interpreter and `import ray` per process). On a cluster batray did not start (ray job
    submit, KubeRay), the job's runtime env (`--working-dir`, `runtimeEnvYAML`) brings the code.
    """
    import ray

    ray_data_output(cfg.logging if cfg is not None else None)
    finish_early_start()
    if ray.is_initialized():
        return ray
    address = cluster_address(cfg)
    if address:
        start_ray(**{**_init_kwargs(cfg), "address": address, **kwargs})
        return ray
    with environ(local_worker_env(cfg)):
        start_ray(**{**_init_kwargs(cfg), **local_cluster_kwargs(cfg), **kwargs})
    return ray


def _init_kwargs(cfg: RecipeConfig | None) -> dict:
    """The `ray.init` arguments of every start, local or joining."""
    return {"namespace": cfg.ray.namespace if cfg is not None else "batray", "log_to_driver": True}


def cluster_address(cfg: RecipeConfig | None) -> str | None:
    """The cluster to join (`ray.address`, else RAY_ADDRESS); None: start a local one."""
    return (cfg.ray.address if cfg is not None else None) or os.environ.get("RAY_ADDRESS")


_early: dict = {}  # the local cluster being started in the background: thread, error, env to restore


def start_ray_early(cfg: RecipeConfig | None, *, train: bool = True) -> bool:
    """Start the local cluster `init_ray(cfg)` would start, in a background thread, so that its processes
    (GCS, raylet, dashboard head, agents: each a Python process importing ray) start while the command
    imports torch and reads and tokenizes its data; `init_ray` then waits for it (`finish_early_start`).
    `batray.stages.run_stage` calls it for a stage on Ray, before the stage imports torch; with `train`
    (a Ray Train stage), Ray Train's autoscaling coordinator starts with the cluster. True when this call
    started one (its caller then calls `finish_early_start` when done, in case nothing used Ray).

    Nothing happens when Ray is up or the config joins a running cluster (connecting is quick). The
    environment the workers inherit (`local_worker_env`) is set here, in the calling thread (setting
    the environment while another thread reads it is unsafe in C), and restored when the start is
    finished; and SIGTERM exits the process, as `ray.init` arranges when called from the main thread.
    """
    import ray

    if _early or ray.is_initialized() or cluster_address(cfg):
        return False
    kwargs = {**_init_kwargs(cfg), **local_cluster_kwargs(cfg)}
    env = contextlib.ExitStack()
    env.enter_context(environ(local_worker_env(cfg)))
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(signum))
    logging.getLogger("ray._private.worker").addFilter(_not_main_thread_notice)

    started = threading.Event()

    def start() -> None:
        try:
            start_ray(**kwargs)
            if train:
                prestart_train_coordinator()
        except BaseException as e:  # noqa: BLE001 - handed to the thread that waits for the start
            _early["error"] = e
        finally:
            started.set()
        # Ray's processes die with the *thread* that started them (PR_SET_PDEATHSIG), so this one stays,
        # parked, for the life of the process (a daemon: it does not hold the exit up).
        threading.Event().wait()

    _early.update(started=started, env=env, error=None)
    threading.Thread(target=start, name="batray-ray-start", daemon=True).start()
    return True


def prestart_train_coordinator() -> None:
    """Create the cluster's autoscaling coordinator, which Ray Train's controller otherwise creates and
    waits for at its first launch on a cluster (a detached named actor: one more process and `import
    ray.data`, ~2.5 s on 2 busy cores, before the training workers are placed). Made now, its process
    starts while the command does its own work, and the controller finds it (`get_if_exists`)."""
    try:
        from ray.data._internal.cluster_autoscaler.default_autoscaling_coordinator import (
            get_or_create_autoscaling_coordinator,
        )
    except ImportError:  # another Ray version: the controller creates it, as without this
        return
    get_or_create_autoscaling_coordinator()


def finish_early_start() -> None:
    """Wait for `start_ray_early`'s cluster (if one is starting), restore the environment, and raise
    the start's error if it failed."""
    if not _early:
        return
    _early["started"].wait()
    _early["env"].close()
    logging.getLogger("ray._private.worker").removeFilter(_not_main_thread_notice)
    error = _early["error"]
    _early.clear()
    if error is not None:
        raise error


def _not_main_thread_notice(record: logging.LogRecord) -> bool:
    """Drop `ray.init`'s notice that it set no SIGTERM handler off the main thread (`start_ray_early` did)."""
    return not str(record.msg).startswith("SIGTERM handler is not set")


def local_cluster_kwargs(cfg: RecipeConfig | None) -> dict:
    """`ray.init` arguments of a local cluster from the `ray` section: CPUs, GPUs, the dashboard."""
    ray_cfg = cfg.ray if cfg is not None else None
    out = {"include_dashboard": bool(ray_cfg and ray_cfg.dashboard)}
    if ray_cfg and ray_cfg.num_cpus is not None:
        out["num_cpus"] = ray_cfg.num_cpus
    if ray_cfg and ray_cfg.num_gpus is not None:
        out["num_gpus"] = ray_cfg.num_gpus
    return out


def local_worker_env(cfg: RecipeConfig | None) -> dict:
    """What the workers of a local cluster need in their environment: this checkout on PYTHONPATH
    (before the caller's), no tokenizers thread pool, Ray Data's console lines off (unless
    `logging.ray_data_progress`), and no Ray Train preemption watcher unless the caller's environment
    asks for one: it watches for nodes an autoscaler drains, which a local cluster does not have, and
    it is one more actor process per training launch, starting beside the training worker."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    pythonpath = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)
    env = {"PYTHONPATH": pythonpath, "TOKENIZERS_PARALLELISM": "false",
           PREEMPTION_WATCHER_ENV: os.environ.get(PREEMPTION_WATCHER_ENV, "0")}
    if not (cfg is not None and cfg.logging.ray_data_progress):
        env[RAY_DATA_LOGGING_ENV] = RAY_DATA_QUIET_CONFIG
    return env


@contextlib.contextmanager
def environ(env: dict):
    """`env` in os.environ inside the block (processes started there inherit it), the old values after."""
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


PREEMPTION_WATCHER_ENV = "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"  # ray.train.v2._internal.constants
RAY_DATA_LOGGING_ENV = "RAY_DATA_LOGGING_CONFIG"
RAY_DATA_QUIET_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "ray_data_logging.yaml")


def ray_data_output(logging_cfg=None) -> None:
    """Ray Data's progress bars and chatter off (default), or on with `logging.ray_data_progress: true`.

    Call before the datasets are made: a dataset carries a copy of the creating process's
    `DataContext`, and that copy is what runs it, also in Ray Train's split coordinator and the
    workers. The driver's `ray.data` console handler goes to WARNING too; workers of a local cluster
    batray starts read the same setting from RAY_DATA_LOGGING_CONFIG (`ray_data_logging.yaml`).
    """
    from ray.data import DataContext

    show = bool(logging_cfg is not None and logging_cfg.ray_data_progress)
    ctx = DataContext.get_current()
    ctx.enable_progress_bars = show
    ctx.enable_operator_progress_bars = show
    ctx.print_on_execution_start = show
    for handler in logging.getLogger("ray.data").handlers:
        if not isinstance(handler, logging.FileHandler) and type(handler).__name__ != "SessionFileHandler":
            handler.setLevel(logging.INFO if show else logging.WARNING)
    logging.getLogger("ray.data._internal.progress").setLevel(logging.NOTSET if show else logging.ERROR)


_started: dict = {}  # how this process's own start went (`start_ray`)


def started_local_cluster() -> bool:
    """True when this process started the local cluster it is on: its workers inherit this process's
    environment (as it was at the start) from the raylet. False when it joined a cluster or Ray was
    started by others."""
    import ray

    return ray.is_initialized() and _started.get("gcs") == ray.get_runtime_context().gcs_address


def inherited_env() -> dict:
    """The environment every worker of the local cluster this process started inherits from its raylet
    (this process's, `local_worker_env` included, as it was at the start); {} when it started none."""
    return _started.get("env", {}) if started_local_cluster() else {}


def without_state_api() -> bool:
    """True when this process started the local cluster it is on, without the dashboard, which serves
    Ray's State API (`ray.util.state`); False when it joined a cluster or Ray was started by others."""
    return started_local_cluster() and _started.get("without_state_api", False)


def start_ray(attempts: int = 3, **init_kwargs) -> None:
    """`ray.init`, retried when a local node times out at startup.

    On a small, busy machine (2 cores running other Ray clusters) the raylet can miss its fixed
    startup deadline; a second try usually succeeds, and the error stays visible if none does.
    """
    import ray

    # No address means a new local cluster: "local", because None attaches to the latest cluster
    # recorded in /tmp/ray (another process's, on a shared machine) once one exists.
    init_kwargs.setdefault("address", "local")
    for attempt in range(1, attempts + 1):
        try:
            ray.init(**init_kwargs)
            if init_kwargs["address"] == "local":
                # Ray's State API is served by the dashboard: a local cluster started without one has none
                _started.update(gcs=ray.get_runtime_context().gcs_address, env=dict(os.environ),
                                without_state_api=not init_kwargs.get("include_dashboard", True))
            return
        except Exception as e:  # noqa: BLE001 - ray raises a bare Exception for this
            if "timed out during startup" not in str(e) or attempt == attempts or init_kwargs["address"] != "local":
                raise
            logging.getLogger("batray").warning("local Ray timed out at startup (busy machine); retry %d", attempt)
            ray.shutdown()
