"""`bench_startup.py --trace`: on PYTHONPATH, this runs first in every Python process of a stage (the
command, Ray's workers, Ray Train's controller and workers) and appends to $BATRAY_STARTUP_TRACE
`<unix time> <pid> <event>`: the process start (with its command line) and the start and end of
importing the heavy packages, so the timeline shows which process waited on what. For torch, ray.train and
deepspeed it also logs who imported them (the innermost frames outside the import machinery)."""

import importlib.abc
import os
import sys
import time
import traceback

_PATH = os.environ.get("BATRAY_STARTUP_TRACE")
_WATCH = {"torch", "transformers", "deepspeed", "ray", "ray.train", "ray.train.torch", "ray.data", "datasets",
          "batray", "batray.train.loop", "peft", "accelerate"}
_WHO = {"torch", "ray.train", "deepspeed"}


def _importer() -> str:
    frames = [f for f in traceback.extract_stack()[:-3]
              if not f.filename.startswith("<frozen") and not f.filename.endswith("sitecustomize.py")]
    return " < ".join(f"{'/'.join(f.filename.split('/')[-3:])}:{f.lineno}" for f in frames[-6:][::-1])


def _log(event: str) -> None:
    with open(_PATH, "a") as f:
        f.write(f"{time.time():.3f} {os.getpid()} {event}\n")


class _Timed(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name not in _WATCH or name in sys.modules:
            return None
        sys.meta_path.remove(self)
        try:
            import importlib.util

            spec = importlib.util.find_spec(name)
        finally:
            sys.meta_path.insert(0, self)
        if spec is None or spec.loader is None:
            return spec
        loader = spec.loader
        exec_module = loader.exec_module

        def timed(module, _exec=exec_module, _name=name):
            if _name in _WHO:
                _log(f"importing {_name} from {_importer()}")
            t0 = time.time()
            try:
                _exec(module)
            finally:
                _log(f"import {_name} {time.time() - t0:.2f}s (from {t0:.3f})")

        loader.exec_module = timed
        return spec


if _PATH:
    _log("start " + " ".join(sys.argv)[:160])
    sys.meta_path.insert(0, _Timed())
