"""CMMLU / C-Eval in the paper's tables (§4, Tables 1-3), scored on Ray actors (`batray eval`).

A local checkpoint is scored by `eval.num_actors` scorer actors fed batches of requests sorted by
length (little padding) as each finishes (`ActorGroup.map_unordered`); an http(s) URL is an
OpenAI-compatible endpoint, queried by the same actors through the `openai` client. Each run writes
results.json, predictions.jsonl and table.md into its folder.
"""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path
from urllib.parse import urlparse

from batray.config import EvalConfig, RecipeConfig
from batray.errors import BatrayError
from batray.eval.modes import get_mode
from batray.eval.results import RESULTS_FILE, aggregate, find_results, write_run
from batray.eval.scoring import is_endpoint
from batray.eval.subjects import subject_table
from batray.eval.tables import render
from batray.eval.tasks import PromptFitter, build_requests, load_benchmark, prediction_rows
from batray.feedback.client import Secret
from batray.progress import Progress
from batray.ray_session import init_ray

log = logging.getLogger("batray.eval")


def model_label(model: str) -> str:
    """A model's name in tables and its results folder: `runs/x/sft/final` -> `sft`; `/ckpts/my-model` ->
    `my-model`; `http://host:8000/v1` -> `host_8000`. Always one safe path component."""
    if is_endpoint(model):
        name = urlparse(model).netloc or model
    else:
        p = Path(model.rstrip("/"))
        name = p.parent.name if p.name == "final" and p.parent.name else p.name
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "model"


def model_labels(models: list[str]) -> dict[str, str]:
    """{label: model} for a list of checkpoints/URLs, labels made unique (`sft`, `sft-2`, ...)."""
    out: dict[str, str] = {}
    for model in models:
        base = label = model_label(model)
        k = 2
        while label in out:
            label, k = f"{base}-{k}", k + 1
        out[label] = model
    return out


def start_scorers(model: str, ecfg: EvalConfig, scorer_cls: type, *, served_model: str | None = None,
                  api_key: Secret | None = None):
    """`ecfg.num_actors` scorer actors (`scorer_cls`) holding `model` (GPU each when the cluster has GPUs)."""
    import ray

    from batray.groups import ActorGroup

    endpoint = is_endpoint(model)
    gpus = 0.0 if endpoint or not ray.cluster_resources().get("GPU") else 1.0
    group = ActorGroup(
        scorer_cls, ecfg.num_actors, num_cpus=0.25 if endpoint else 1.0, num_gpus=gpus, name="eval-scorer",
        init_kwargs=dict(model=model, batch_size=ecfg.batch_size, chat=ecfg.chat, served_model=served_model,
                         api_key=api_key or Secret(None)),
    )
    group.call("describe", timeout_s=600)  # surfaces load errors now, before any scoring
    return group


def score_on_actors(group, mode: str, benchmark: str, requests: list, batch_size: int, options: dict,
                    what: str = "") -> list[dict]:
    """Predictions for `requests` (same order), batches of similar length dispatched to whichever actor is free."""
    order = sorted(range(len(requests)), key=lambda i: -len(requests[i].prompt))
    # A few batches per call amortizes the call overhead; small enough to keep every actor busy.
    per_call = batch_size * 4
    chunks = [order[i:i + per_call] for i in range(0, len(order), per_call)]
    results: list[dict | None] = [None] * len(requests)

    def call_args(idx: list[int]) -> tuple[tuple, dict]:
        return (mode, benchmark, [requests[i] for i in idx], options), {}

    with Progress(len(requests), what) as progress:
        for idx, preds in zip(chunks, group.map_unordered("predict", chunks, call_args=call_args, progress=progress,
                                                          weight=len)):
            for i, pred in zip(idx, preds):
                results[i] = pred
    return results  # type: ignore[return-value]


def mode_options(ecfg: EvalConfig, mode: str) -> dict:
    """What a mode's `predict` gets: the generation budget, plus `eval.<mode>` when the config has such
    a section (`eval.rerank` for the rerank mode)."""
    options: dict = {"max_new_tokens": ecfg.max_new_tokens}
    section = getattr(ecfg, mode, None)
    if hasattr(section, "model_dump"):
        options[mode] = section.model_dump()
    return options


def evaluate(model: str, benchmark: str, data_dir: str, out_dir: str | Path, *, shots: int, mode: str,
             ecfg: EvalConfig, scorer_cls: type | None = None, group=None, label: str | None = None,
             split: str | None = None, served_model: str | None = None, api_key: Secret | None = None,
             bench=None) -> dict:
    """One benchmark x shots x mode run of one model; writes results.json, predictions.jsonl, table.md."""
    mode_impl = get_mode(mode)
    bench = bench or load_benchmark(benchmark, data_dir, subjects_of(benchmark, ecfg.subjects), ecfg.limit, split)
    style = mode_impl.prompt_style
    fitter = PromptFitter(None if is_endpoint(model) else model, chat=ecfg.chat)
    reserve = {"da": 1, "ppl": 16}.get(style, ecfg.max_new_tokens)  # room after the prompt: a letter, an option
    requests = build_requests(bench, shots, style, fitter, reserve)
    own_group = group is None
    if own_group:
        group = start_scorers(model, ecfg, scorer_cls, served_model=served_model, api_key=api_key)
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


def run_eval(cfg: RecipeConfig, out_dir: str | Path, *, models: dict[str, str], data_dir: str,
             scorer_cls: type) -> dict:
    """The configured benchmarks x shots x modes for each model (`{label: checkpoint or URL}`).

    Runs go to `out_dir/<bench>/<label>/<mode>_<k>shot/` and every table to `out_dir/tables.md`.
    Finished runs (results.json present) are skipped. Returns {"tables": path, "runs": {key: summary}}.
    """
    ecfg = cfg.eval
    root = Path(out_dir)
    for label in models:
        if label != model_label(label):
            raise BatrayError(f"eval: model label {label!r} is not a plain folder name")
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
                            group = group or start_scorers(model, ecfg, scorer_cls)
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
