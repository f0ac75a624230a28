"""`batray eval`: CMMLU / C-Eval in the paper's tables (§4, Tables 1-3), scored on Ray actors.

    batray eval --benchmark cmmlu|ceval --data DIR --model PATH_OR_URL --shots K --mode da|cot
                [--subjects a,b] [--limit N] --out DIR
    batray eval compare RUN_DIR...            # runs side by side (Table 1/3 rows per model, Table 2)
    batray eval [--config FILE] [key=value]   # the configured benchmarks x shots x modes x models

A local checkpoint is scored by `eval.num_actors` scorer actors (`actors.eval_scorer.EvalScorer`)
fed batches of requests sorted by length (little padding) as each finishes; an http(s) URL is an
OpenAI-compatible endpoint, queried by the same actors through the `openai` client. Each run writes
results.json, predictions.jsonl and table.md into its folder.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

from batray.config import EvalConfig, RecipeConfig
from batray.errors import BatrayError
from batray.eval.modes import get_mode
from batray.eval.results import RESULTS_FILE, aggregate, find_results, write_run
from batray.eval.scoring import is_endpoint
from batray.eval.subjects import subject_table
from batray.eval.tables import render
from batray.eval.tasks import PromptFitter, build_requests, load_benchmark, prediction_rows
from jobs.common import init_ray, resolve, setup_logging, stage_parser

log = logging.getLogger("batray.eval")


def model_label(model: str) -> str:
    """`runs/x/sft/final` -> `sft`; `/ckpts/my-model` -> `my-model`; a URL stays as given."""
    if is_endpoint(model):
        return model
    p = Path(model.rstrip("/"))
    return p.parent.name if p.name == "final" and p.parent.name else p.name


def start_scorers(model: str, ecfg: EvalConfig, *, served_model: str | None = None, api_key_env: str | None = None):
    """`ecfg.num_actors` scorer actors holding `model` (GPU each when the cluster has GPUs)."""
    import ray

    from actors.eval_scorer import EvalScorer
    from actors.group import ActorGroup

    endpoint = is_endpoint(model)
    gpus = 0.0 if endpoint or not ray.cluster_resources().get("GPU") else 1.0
    group = ActorGroup(
        EvalScorer, ecfg.num_actors, num_cpus=0.25 if endpoint else 1.0, num_gpus=gpus, name="eval-scorer",
        init_kwargs=dict(model=model, batch_size=ecfg.batch_size, chat=ecfg.chat, served_model=served_model,
                         api_key_env=api_key_env),
    )
    group.call("describe", timeout_s=600)  # surfaces load errors now, before any scoring
    return group


def score_on_actors(group, mode: str, benchmark: str, requests: list, batch_size: int, options: dict,
                    what: str = "") -> list[dict]:
    """Predictions for `requests` (same order), batches dispatched to whichever actor is free."""
    import ray

    order = sorted(range(len(requests)), key=lambda i: -len(requests[i].prompt))
    # A few batches per call amortizes the call overhead; small enough to keep every actor busy.
    per_call = batch_size * 4
    chunks = [order[i:i + per_call] for i in range(0, len(order), per_call)]
    results: list[dict | None] = [None] * len(requests)
    pending: dict = {}
    free = list(group.actors)
    done = 0
    progress = Progress(len(requests), what)
    next_chunk = 0
    while next_chunk < len(chunks) or pending:
        while free and next_chunk < len(chunks):
            actor = free.pop()
            idx = chunks[next_chunk]
            next_chunk += 1
            ref = actor.predict.remote(mode, benchmark, [requests[i] for i in idx], options)
            pending[ref] = (actor, idx)
        ready, _ = ray.wait(list(pending), num_returns=1)
        for ref in ready:
            actor, idx = pending.pop(ref)
            for i, pred in zip(idx, _get(ref)):
                results[i] = pred
            free.append(actor)
            done += len(idx)
            progress.update(done)
    progress.close()
    return results  # type: ignore[return-value]


def _get(ref):
    """ray.get, with a user's error (bad endpoint, bad model) surfaced as one line."""
    import ray

    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as e:
        cause = e.cause
        if isinstance(cause, BatrayError):
            raise cause from None
        if type(cause).__module__.startswith("openai"):
            raise BatrayError(f"the endpoint refused a request: {type(cause).__name__}: {cause}") from None
        raise


class Progress:
    """A rich bar on a terminal; otherwise a log line every ~10%."""

    def __init__(self, total: int, what: str):
        self.total, self.what, self.start = total, what, time.perf_counter()
        self.next_log = 0.1
        self.bar = None
        if sys.stderr.isatty():
            from rich.progress import BarColumn, MofNCompleteColumn, Progress as RichProgress, TimeRemainingColumn

            self.bar = RichProgress("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
                                    TimeRemainingColumn(), transient=True)
            self.bar.start()
            self.task = self.bar.add_task(what, total=total)

    def update(self, done: int) -> None:
        if self.bar is not None:
            self.bar.update(self.task, completed=done)
        elif done >= self.next_log * self.total or done == self.total:
            rate = done / max(time.perf_counter() - self.start, 1e-9)
            log.info("%s: %d/%d items (%.1f items/s)", self.what, done, self.total, rate)
            while self.next_log * self.total <= done:
                self.next_log += 0.1

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def mode_options(ecfg: EvalConfig, mode: str) -> dict:
    """What a mode's `predict` gets: the generation budget, plus `eval.<mode>` when the config has such
    a section (`eval.rerank` for the rerank mode)."""
    options: dict = {"max_new_tokens": ecfg.max_new_tokens}
    section = getattr(ecfg, mode, None)
    if hasattr(section, "model_dump"):
        options[mode] = section.model_dump()
    return options


def evaluate(model: str, benchmark: str, data_dir: str, out_dir: str | Path, *, shots: int, mode: str,
             ecfg: EvalConfig, group=None, label: str | None = None, split: str | None = None,
             served_model: str | None = None, api_key_env: str | None = None, bench=None) -> dict:
    """One benchmark x shots x mode run of one model; writes results.json, predictions.jsonl, table.md."""
    mode_impl = get_mode(mode)
    bench = bench or load_benchmark(benchmark, data_dir, subjects_of(benchmark, ecfg.subjects), ecfg.limit, split)
    style = mode_impl.prompt_style
    fitter = PromptFitter(None if is_endpoint(model) else model, chat=ecfg.chat)
    reserve = 1 if style == "da" else ecfg.max_new_tokens
    requests = build_requests(bench, shots, style, fitter, reserve)
    own_group = group is None
    if own_group:
        group = start_scorers(model, ecfg, served_model=served_model, api_key_env=api_key_env)
    try:
        t0 = time.perf_counter()
        what = f"{benchmark} {shots}-shot {mode} ({label or model_label(model)})"
        preds = score_on_actors(group, mode, benchmark, requests, ecfg.batch_size, mode_options(ecfg, mode), what)
        elapsed = time.perf_counter() - t0
        truncated = sum(group.call("truncated"))
    finally:
        if own_group:
            group.kill()
    rows = prediction_rows(requests, preds, shots)
    meta = {
        "model": model, "model_label": label or model_label(model), "mode": mode, "shots": shots,
        "split": bench.split, "chat": ecfg.chat, "data": bench.root,
        "shots_dropped_items": sum(r.shots < min(shots, len(bench.dev[r.subject])) for r in requests),
        "truncated_prompts": truncated, "rejected_rows": len(bench.report.rejected),
        "elapsed_s": round(elapsed, 3), "items_per_s": round(len(requests) / max(elapsed, 1e-9), 2),
        "num_actors": len(group.actors) if not own_group else ecfg.num_actors,
    }
    results = aggregate(benchmark, rows, meta)
    table = render([results])
    write_run(out_dir, results, rows, table)
    log.info("%s: average %.2f%% over %d subjects (item-weighted %.2f%%), %d unparsable -> %s", what,
             100 * results["average"], len(results["subjects"]), 100 * results["weighted_average"],
             results["unparsable"], out_dir)
    return results


def run_eval(cfg: RecipeConfig, out_dir: str | Path, *, models: dict[str, str], data_dir: str) -> dict:
    """The configured benchmarks x shots x modes for each model (the pipeline's eval stage).

    `out_dir` is the run directory or its `eval/` folder; runs go to
    `eval/<bench>/<model>/<mode>_<k>shot/` and every table to `eval/tables.md`. Finished runs
    (results.json present) are skipped. Returns {"tables": path, "runs": {key: summary}}.
    """
    ecfg = cfg.eval
    root = Path(out_dir)
    if root.name != "eval":
        root = root / "eval"
    init_ray(cfg)
    summaries: dict[str, dict] = {}
    all_results: list[dict] = []
    for name, model in models.items():
        group = None
        try:
            for benchmark in ecfg.benchmarks:
                bench = None
                for shots in ecfg.shots:
                    for mode in ecfg.modes:
                        run_dir = root / benchmark / name / f"{mode}_{shots}shot"
                        if (run_dir / RESULTS_FILE).is_file():
                            log.info("eval: %s is complete, skipping", run_dir)
                            results = find_results([run_dir])[0]
                        else:
                            bench = bench or load_benchmark(benchmark, data_dir, subjects_of(benchmark, ecfg.subjects),
                                                            ecfg.limit)
                            group = group or start_scorers(model, ecfg)
                            results = evaluate(model, benchmark, data_dir, run_dir, shots=shots, mode=mode,
                                               ecfg=ecfg, group=group, label=name, bench=bench)
                        all_results.append(results)
                        summaries[f"{benchmark}/{name}/{mode}_{shots}shot"] = {
                            "average": results["average"], "weighted_average": results["weighted_average"],
                            "path": str(run_dir)}
        finally:
            if group is not None:
                group.kill()
    tables = root / "tables.md"
    if all_results:
        tables.parent.mkdir(parents=True, exist_ok=True)
        tables.write_text(render(all_results), encoding="utf-8")
    return {"tables": str(tables), "runs": summaries}


def subjects_of(benchmark: str, subjects: list[str] | None) -> list[str] | None:
    """The names in `eval.subjects` that belong to `benchmark` (one list may name both's subjects)."""
    if not subjects:
        return None
    known = {name for b in ("cmmlu", "ceval") for name in subject_table(b).subjects}
    unknown = [s for s in subjects if s not in known]
    if unknown:
        subject_table(benchmark)[unknown[0]]  # the one-line "unknown subject" error
    table = subject_table(benchmark)
    mine = [s for s in subjects if s in table.subjects]
    if not mine:
        raise BatrayError(f"eval.subjects names no {benchmark} subject ({', '.join(subjects[:5])})")
    return mine


def compare(paths: list[str]) -> str:
    results = find_results(paths)
    if not results:
        raise BatrayError(f"no {RESULTS_FILE} found under {', '.join(paths)}")
    return render(results)


def default_models(cfg: RecipeConfig) -> dict[str, str]:
    """The configured models, else the run's finished sft and ppo checkpoints."""
    from batray.checkpoint import is_complete

    if cfg.eval.models:
        return {model_label(m): m for m in cfg.eval.models}
    found = {s: f"{cfg.stage_dir(s)}/final" for s in ("sft", "ppo") if is_complete(f"{cfg.stage_dir(s)}/final")}
    if not found:
        raise BatrayError("eval: no models given (eval.models) and the run has no finished sft/ppo checkpoint")
    return found


def default_data(cfg: RecipeConfig) -> str:
    data = cfg.eval.data or cfg.data.benchmarks or f"{cfg.stage_dir('data')}/benchmarks"
    if not is_endpoint(data) and "://" not in data and not os.path.isdir(data):
        raise BatrayError(f"eval: benchmark folder {data!r} does not exist (set eval.data or run `batray data demo`)")
    return data


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    setup_logging()
    if argv and argv[0] == "compare":
        p = argparse.ArgumentParser(prog="batray eval compare", description="runs side by side, in the paper's tables")
        p.add_argument("runs", nargs="+", help="run folders (or folders above them) holding results.json")
        p.add_argument("--out", default=None, help="also write the Markdown here")
        args = p.parse_args(argv[1:])
        text = compare(args.runs)
        print(text)
        if args.out:
            Path(args.out).write_text(text, encoding="utf-8")
        return 0
    p = stage_parser("eval", "CMMLU / C-Eval evaluation in the paper's table layout (§4); `eval compare RUN...`")
    p.add_argument("--benchmark", choices=["cmmlu", "ceval"], help="one benchmark (default: eval.benchmarks)")
    p.add_argument("--data", help="folder with the official CSV layout (or holding cmmlu/ and ceval/)")
    p.add_argument("--model", help="checkpoint folder or OpenAI-compatible base URL (http://host:port/v1)")
    p.add_argument("--shots", type=int, help="k dev items as shots (default: eval.shots)")
    p.add_argument("--mode", help="da (direct answer), cot (chain of thought) or rerank (cot, N samples ranked both ways)")
    p.add_argument("--subjects", help="comma-separated subject names (default: all present)")
    p.add_argument("--limit", type=int, help="at most N items per subject")
    p.add_argument("--out", help="output folder for results.json, predictions.jsonl, table.md")
    p.add_argument("--split", help="scored split (default: cmmlu test, ceval val)")
    p.add_argument("--label", help="the model's name in tables")
    p.add_argument("--served-model", help="endpoint: the model name to request (default: the first listed)")
    p.add_argument("--api-key-env", help="endpoint: environment variable holding the API key")
    p.add_argument("--num-actors", type=int, help="scorer actors (default: eval.num_actors)")
    p.add_argument("--batch-size", type=int, help="items per forward pass (default: eval.batch_size)")
    p.add_argument("--chat", action="store_true", help="wrap prompts in the model's chat template")
    args = p.parse_args(argv)
    overrides = {"subjects": args.subjects.split(",") if args.subjects else None, "limit": args.limit,
                 "num_actors": args.num_actors, "batch_size": args.batch_size, "chat": True if args.chat else None}
    for key, value in overrides.items():
        if value is not None:
            args.overrides.append(f"eval.{key}={value if not isinstance(value, list) else '[' + ','.join(value) + ']'}")
    cfg = resolve(args)
    if args.model is None:
        if any(v is not None for v in (args.benchmark, args.shots, args.mode, args.out)):
            raise BatrayError("eval: --model is required with --benchmark/--shots/--mode/--out")
        out = run_eval(cfg, cfg.stage_dir("eval"), models=default_models(cfg), data_dir=default_data(cfg))
        print(Path(out["tables"]).read_text(encoding="utf-8") if Path(out["tables"]).is_file() else "")
        return 0
    missing = [f"--{k}" for k in ("benchmark", "data", "out") if getattr(args, k) is None]
    if missing:
        raise BatrayError(f"eval: {', '.join(missing)} required with --model")
    mode = args.mode or cfg.eval.modes[0]
    shots = args.shots if args.shots is not None else cfg.eval.shots[0]
    if shots < 0:
        raise BatrayError(f"eval: --shots must be >= 0 (got {shots})")
    init_ray(cfg)
    results = evaluate(args.model, args.benchmark, args.data, args.out, shots=shots, mode=mode, ecfg=cfg.eval,
                       label=args.label, split=args.split, served_model=args.served_model,
                       api_key_env=args.api_key_env)
    print(render([results]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
