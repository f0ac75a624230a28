"""Stage start-up: time to the first optimizer step of `batray pretrain`, `batray sft` and `batray reward`
(each a fresh process, the tiny recipe) against the floor: a fresh Python process that imports torch and
transformers and builds the same model.

Each stage runs for one step (`max_steps=1`, `log_every=1`); its time to first step is the `time` of
the first row of its `metrics.jsonl` (written right after step 1) minus the moment the process was
spawned. The chain is pretrain -> sft (from pretrain's final) -> reward (from sft's final, on the demo
world's preference rows), so each stage starts from a real checkpoint, as in `batray run`.

    python benchmarks/bench_startup.py [--repeats 1] [--stages pretrain sft reward] [--launch in_process]

Prints a table and the ratio of each stage to the floor; the target is <= 2x. `--launch in_process` runs
every stage with `scaling.launch: in_process` (the loop in the command's own process, no Ray Train job);
the default is the config's (Ray Train).

`--recipe`: instead, one `batray run` of the Ray Train stages of the tiny recipe with one or two steps
each (grow: stage_0, stage_1 and the from-scratch comparison; sft; reward: five Ray Train launches on
one local cluster, as `make run` does them), its whole time and each stage's seconds from
`run_state.json`: what the per-launch start-up costs the main job.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent
ROOT = HERE  # the checkout whose stages run (--root: another one, e.g. main for a before/after)
sys.path.insert(0, str(HERE))

FLOOR = """
import json, sys, time
import torch, transformers
from transformers import GlmConfig, GlmForCausalLM
torch.manual_seed(0)
model = GlmForCausalLM(GlmConfig(**json.loads(sys.argv[1])))
print(time.time())
"""

STAGE_ARGS = {
    "pretrain": ["pretrain.max_steps=1", "pretrain.log_every=1", "pretrain.ckpt_every=1000",
                 "pretrain.optim.warmup_steps=0"],
    "sft": ["sft.max_steps=1", "sft.log_every=1", "sft.ckpt_every=1000", "sft.optim.warmup_steps=0",
            "sft.init_from={run}/pretrain/final"],
    "reward": ["reward.max_steps=1", "reward.log_every=1", "reward.ckpt_every=1000", "reward.eval_every=1000",
               "reward.optim.warmup_steps=0", "reward.init_from={run}/sft/final",
               "reward.data={run}/data/preferences.jsonl"],
}


RECIPE_ARGS = ["--no-report", "stages=[data,grow,sft,reward]", "grow.steps_per_phase=1", "pretrain.log_every=1",
               "pretrain.ckpt_every=1000", "pretrain.optim.warmup_steps=0", *STAGE_ARGS["sft"][:4],
               *STAGE_ARGS["reward"][:5], "reward.data={run}/data/preferences.jsonl"]

TRACE: Path | None = None  # --trace: every process of a stage logs its start and heavy imports here


def env() -> dict:
    path = str(ROOT) if TRACE is None else f"{HERE / 'benchmarks' / 'startup_trace'}{os.pathsep}{ROOT}"
    extra = {} if TRACE is None else {"BATRAY_STARTUP_TRACE": str(TRACE)}
    return {**os.environ, "PYTHONPATH": path, "TOKENIZERS_PARALLELISM": "false", **extra}


def print_trace(path: Path, spawned: float, first_step: float) -> None:
    """The trace of one stage run, times relative to the command's spawn."""
    print(f"trace ({path}), seconds after spawn; first step at {first_step - spawned:.1f}")
    for line in path.read_text().splitlines():
        t, pid, event = line.split(" ", 2)
        print(f"  {float(t) - spawned:6.1f}  pid {pid:>7}  {event}")


def floor() -> float:
    from batray.models.presets import PRESETS

    spawned = time.time()
    out = subprocess.run([sys.executable, "-c", FLOOR, json.dumps(PRESETS["batgpt-tiny"])], env=env(),
                         capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1]) - spawned


def run_cli(command: str, run: Path, args: list[str], log: Path) -> tuple[float, float]:
    """(spawn time, seconds of the whole process) of `batray COMMAND` on tiny.yaml (its local cluster, ray.num_cpus)."""
    cmd = [sys.executable, "-m", "batray.cli", command, "--config", str(ROOT / "configs" / "tiny.yaml"),
           "--run-dir", str(run), *args]
    spawned = time.time()
    with log.open("w") as f:
        subprocess.run(cmd, env=env(), stdout=f, stderr=subprocess.STDOUT, check=True, cwd=ROOT)
    return spawned, time.time() - spawned


def stage(name: str, run: Path, extra: list[str], log: Path) -> tuple[float, float]:
    """(seconds to the first step, seconds of the whole process) of `batray NAME` in a fresh process."""
    if TRACE is not None:
        TRACE.write_text("")
    spawned, total = run_cli(name, run, [a.format(run=run) for a in STAGE_ARGS[name]] + extra, log)
    first = json.loads((run / name / "metrics.jsonl").read_text().splitlines()[0])
    if TRACE is not None:
        print(f"== {name}")
        print_trace(TRACE, spawned, first["time"])
        TRACE.rename(TRACE.with_name(f"trace_{name}_{int(spawned)}.log"))
    return first["time"] - spawned, total


def recipe(run: Path, extra: list[str], log: Path) -> tuple[float, dict]:
    """(seconds of the whole `batray run` process, {stage: seconds}) of the Ray Train stages, one step each."""
    _, total = run_cli("run", run, [a.format(run=run) for a in RECIPE_ARGS] + extra, log)
    state = json.loads((run / "run_state.json").read_text())
    return total, {name: entry["seconds"] for name, entry in state["stages"].items()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--stages", nargs="+", default=list(STAGE_ARGS), choices=list(STAGE_ARGS))
    ap.add_argument("--keep", default=None, help="keep run folders and logs here")
    ap.add_argument("--root", default=None, help="run the stages of this checkout (default: this one)")
    ap.add_argument("--trace", action="store_true", help="log every process's start and heavy imports, print them")
    ap.add_argument("--recipe", action="store_true", help="one `batray run` of the Ray Train stages, 1 step each")
    ap.add_argument("--launch", choices=["ray_train", "in_process"], default=None,
                    help="every training stage's scaling.launch (default: the config's)")
    ap.add_argument("overrides", nargs="*", help="extra key=value overrides for every stage")
    args = ap.parse_args()
    if args.launch:
        args.overrides += [f"{s}.scaling.launch={args.launch}" for s in STAGE_ARGS]
    if not args.recipe:  # pretrain from scratch, not continuing grow's model (tiny.yaml's order since stop 31)
        args.overrides.append("stages=[data,pretrain,sft,reward]")
    global TRACE, ROOT
    if args.root:
        ROOT = Path(args.root).resolve()
    load_before = os.getloadavg()[0]
    floors, results = [], {s: [] for s in args.stages}
    base = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bench_startup_"))
    base.mkdir(parents=True, exist_ok=True)
    if args.trace:
        TRACE = base / "trace.log"
    if args.recipe:
        for r in range(args.repeats):
            total, stages = recipe(base / f"recipe{r}", args.overrides, base / f"recipe{r}.log")
            print(f"batray run (Ray Train stages, 1 step each): {total:.1f} s; "
                  + ", ".join(f"{k} {v:.1f} s" for k, v in stages.items()), flush=True)
        print(f"load average {load_before:.2f} before, {os.getloadavg()[0]:.2f} after; stages from {ROOT}")
        return 0
    for r in range(args.repeats):
        floors.append(floor())
        print(f"floor: {floors[-1]:.1f} s", flush=True)
        run = base / f"run{r}"
        for name in args.stages:
            results[name].append(stage(name, run, args.overrides, base / f"{name}{r}.log"))
            print(f"{name}: first step after {results[name][-1][0]:.1f} s, process {results[name][-1][1]:.1f} s "
                  f"(floor so far {statistics.median(floors):.1f} s)", flush=True)
        floors.append(floor())
    load_after = os.getloadavg()[0]
    f = statistics.median(floors)
    print(f"machine: {platform.platform()}, {os.cpu_count()} cores, load average {load_before:.2f} before, "
          f"{load_after:.2f} after; python {platform.python_version()}; logs in {base}; stages from {ROOT}; "
          f"launch {args.launch or 'as configured'}")
    print(f"floor (fresh python: import torch + transformers, build batgpt-tiny): {f:.1f} s "
          f"(runs: {', '.join(f'{x:.1f}' for x in floors)})")
    print("| stage | time to first step s | ratio to floor | whole process s |")
    print("|---|---:|---:|---:|")
    for name, rows in results.items():
        first = statistics.median(t for t, _ in rows)
        total = statistics.median(w for _, w in rows)
        print(f"| {name} | {first:.1f} | {first / f:.2f} | {total:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
