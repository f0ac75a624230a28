"""Algorithm 1 (progressive stacking) end to end, with an optional width step (`batray grow`).

Phase 0 trains the preset at depth L / 2^k from scratch (the pretraining job); every following phase
stacks the previous phase's final checkpoint to twice the depth (`StackLayers`, with `grow.stack:
zero` the function is preserved) and trains again, until depth L. With `grow.width` one more phase
widens the model (Eqs. 5-7) and trains it. Layout under `<run_dir>/grow/`:

    stage_0/               pretraining output of the shallow model (final/, metrics.jsonl, ...)
    stage_i/init/          the expanded checkpoint the phase starts from (expansion.json: its deviation)
    stage_i/               that phase's pretraining output
    scratch/               with `compare_from_scratch`: the final size trained from scratch, same corpus,
                           same tokenizer, for the same compute (parameters x tokens) as all phases together
    final/                 the last phase's final checkpoint (files hard-linked), batray.json stage "grow"
    summary.json, loss.png the loss curve across phases next to the from-scratch run

Every phase is resumable: a finished phase (its `final/` complete) is skipped, an interrupted one
resumes from its last checkpoint (the pretraining job does that), an expansion already made is kept.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from batray.checkpoint import is_complete, read_marker, write_marker
from batray.config import RecipeConfig
from batray.errors import BatrayError
from batray.expansion import REPORT, Request, expand, target_sizes
from batray.expansion.run import same_request, shard_runner
from batray.train.pretrain import run_pretrain

log = logging.getLogger("batray.grow")


@dataclass
class Phase:
    name: str  # stage_i
    layers: int
    request: Request | None  # how this phase's start is made from the previous phase (None: from scratch)
    sizes: dict  # hidden_size, intermediate_size, num_heads, num_kv_heads, num_layers after the expansion


def plan_phases(cfg: RecipeConfig) -> list[Phase]:
    """Algorithm 1's schedule, every expansion validated before any training starts."""
    from batray.models.presets import preset_config

    if cfg.model.preset is None or cfg.model.path is not None or cfg.pretrain.init_from is not None:
        raise BatrayError("grow trains from scratch: set model.preset and leave model.path and pretrain.init_from null")
    base = preset_config(cfg.model.preset).to_dict()
    depth, k = base["num_hidden_layers"], cfg.grow.stack_steps
    if depth % 2**k:
        raise BatrayError(f"grow.stack_steps={k}: the first phase needs num_layers / 2^{k} layers, but the "
                          f"preset's {depth} layers are not divisible by {2**k}")
    layers = depth // 2**k
    sizes = target_sizes(dict(base, num_hidden_layers=layers), Request())["source"]
    phases = [Phase("stage_0", layers, None, sizes)]
    for i in range(1, k + 1):
        request = Request(num_layers=2 * layers, stack=cfg.grow.stack, seed=cfg.seed)
        sizes = target_sizes(dict(base, num_hidden_layers=layers), request)["target"]
        layers *= 2
        phases.append(Phase(f"stage_{i}", layers, request, sizes))
    if cfg.grow.width is not None:
        request = Request.from_config(cfg.grow.width)
        current = dict(base, num_hidden_layers=layers)
        try:
            sizes = target_sizes(current, request, where="grow.width")["target"]
        except BatrayError as e:
            raise BatrayError(f"grow.width: {e}") from None
        phases.append(Phase(f"stage_{k + 1}", sizes["num_layers"], request, sizes))
    return phases


def link_tree(src: Path, dst: Path) -> None:
    """`dst` as a copy of checkpoint folder `src` made of hard links (no bytes copied), except batray.json."""
    tmp = dst.with_name(dst.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    for item in src.iterdir():
        if item.is_file() and item.name != "batray.json":
            try:
                os.link(item, tmp / item.name)
            except OSError:  # another filesystem: copy
                shutil.copy2(item, tmp / item.name)
    marker = read_marker(src) or {}
    write_marker(tmp, stage="grow", step=marker.get("step", 0), tokens_seen=marker.get("tokens_seen", 0),
                 parent=str(src))
    if dst.exists():
        shutil.rmtree(dst)
    os.replace(tmp, dst)


def run_phases(cfg: RecipeConfig, out: Path, phases: list[Phase], corpus: str, writer_cls: type | None) -> str:
    previous = None
    for i, phase in enumerate(phases):
        pdir = out / phase.name
        init_from = None
        if phase.request is not None and not is_complete(pdir / "final"):
            init = pdir / "init"
            if not (is_complete(init) and same_request(init / REPORT, previous, phase.request)):
                runner = {"run_shards": shard_runner(cfg, writer_cls)} if writer_cls is not None else {}
                report = expand(previous, init, phase.request, probe_tokens=cfg.expand.probe_tokens,
                                config_hash=cfg.digest(), **runner)
                log.info("grow: %s starts from %s (%s), logit deviation %s", phase.name, init,
                         phase.request, report["deviation"])
            init_from = str(init)
        elif phase.request is not None:
            init_from = str(pdir / "init")
        log.info("grow: phase %d/%d (%s): %d layers, %d steps", i + 1, len(phases), phase.name, phase.layers,
                 cfg.grow.steps_per_phase)
        overrides = {"num_hidden_layers": phase.layers} if phase.request is None else None
        previous = run_pretrain(cfg, str(pdir), corpus=corpus, init_from=init_from, model_overrides=overrides,
                                max_steps=cfg.grow.steps_per_phase)
    return previous


def scratch_steps(out: Path, phases: list[Phase], steps_per_phase: int) -> int:
    """Steps of the final size that cost what all phases cost together, in parameters x tokens (every
    phase sees the same tokens per step): sum_i params_i * steps / params_final."""
    from transformers import AutoConfig

    from batray.models.presets import count_parameters

    params = [count_parameters(AutoConfig.from_pretrained(str(out / p.name / "final"))) for p in phases]
    return max(1, round(sum(params) * steps_per_phase / params[-1]))


def run_scratch(cfg: RecipeConfig, out: Path, phases: list[Phase], corpus: str) -> str:
    """The final size from scratch, same corpus and tokenizer, for the compute all phases took together."""
    sdir = out / "scratch"
    tok = out / phases[0].name / "tokenizer"
    if tok.is_dir() and not (sdir / "tokenizer").exists():
        shutil.copytree(tok, sdir / "tokenizer")  # the pretraining job reuses a saved tokenizer copy
    s = phases[-1].sizes
    overrides = {"num_hidden_layers": s["num_layers"], "hidden_size": s["hidden_size"],
                 "intermediate_size": s["intermediate_size"], "num_attention_heads": s["num_heads"],
                 "num_key_value_heads": s["num_kv_heads"]}
    return run_pretrain(cfg, str(sdir), corpus=corpus, model_overrides=overrides,
                        max_steps=scratch_steps(out, phases, cfg.grow.steps_per_phase))


def read_metrics(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _last(rows: list[dict], key: str):
    values = [r[key] for r in rows if isinstance(r.get(key), (int, float))]
    return values[-1] if values else None


def summarize(cfg: RecipeConfig, out: Path, phases: list[Phase], scratch: str | None) -> dict:
    """Per phase and whole-run numbers; compute in parameter-tokens (params x tokens, the usual FLOPs proxy)."""
    from transformers import AutoConfig

    from batray.models.presets import count_parameters

    grown_curve, rows_out, offset, param_tokens, tokens_total = [], [], 0, 0.0, 0
    for phase in phases:
        pdir = out / phase.name
        rows = read_metrics(pdir)
        marker = read_marker(pdir / "final") or {}
        params = count_parameters(AutoConfig.from_pretrained(str(pdir / "final")))
        steps, tokens = marker.get("step", cfg.grow.steps_per_phase), marker.get("tokens_seen", 0)
        tokens_per_step = tokens / steps if steps else 0
        for r in rows:
            if isinstance(r.get("loss"), (int, float)):
                grown_curve.append({"step": offset + r["step"], "loss": r["loss"], "phase": phase.name,
                                    "param_tokens": param_tokens + params * tokens_per_step * r["step"]})
        expansion = None
        if (pdir / "init" / REPORT).is_file():
            expansion = json.loads((pdir / "init" / REPORT).read_text())["deviation"]
        rows_out.append({"phase": phase.name, **phase.sizes, "parameters": params, "steps": steps, "tokens": tokens,
                         "first_loss": next((r["loss"] for r in rows if isinstance(r.get("loss"), (int, float))), None),
                         "final_loss": _last(rows, "loss"), "final_eval_loss": _last(rows, "eval_loss"),
                         "expansion_deviation": expansion})
        offset += steps
        param_tokens += params * tokens
        tokens_total += tokens
    summary = {
        "phases": rows_out,
        "grown": {"steps": offset, "tokens": tokens_total, "param_tokens": param_tokens,
                  "final_loss": rows_out[-1]["final_loss"], "final_eval_loss": rows_out[-1]["final_eval_loss"]},
        "scratch": None,
        "curves": {"grown": grown_curve},
    }
    if scratch is not None:
        sdir = out / "scratch"
        rows = read_metrics(sdir)
        marker = read_marker(sdir / "final") or {}
        params = count_parameters(AutoConfig.from_pretrained(str(sdir / "final")))
        steps, tokens = marker.get("step", 0), marker.get("tokens_seen", 0)
        per_step = tokens / steps if steps else 0
        summary["scratch"] = {"steps": steps, "tokens": tokens, "parameters": params, "param_tokens": params * tokens,
                              "final_loss": _last(rows, "loss"), "final_eval_loss": _last(rows, "eval_loss")}
        summary["curves"]["scratch"] = [{"step": r["step"], "loss": r["loss"], "param_tokens": params * per_step * r["step"]}
                                        for r in rows if isinstance(r.get("loss"), (int, float))]
        if params * tokens:
            summary["compute_ratio"] = param_tokens / (params * tokens)  # grown / scratch, < 1 is the saving
    return summary


def plot(summary: dict, path: Path) -> None:
    """Loss against steps and against compute (parameter-tokens), phase boundaries dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, x in zip(axes, ("step", "param_tokens")):
        grown = summary["curves"]["grown"]
        ax.plot([p[x] for p in grown], [p["loss"] for p in grown], label="grown (Algorithm 1)")
        if summary["curves"].get("scratch"):
            scratch = summary["curves"]["scratch"]
            ax.plot([p[x] for p in scratch], [p["loss"] for p in scratch], label="final size from scratch")
        boundary, compute = 0, 0.0
        for phase in summary["phases"][:-1]:
            boundary += phase["steps"]
            compute += phase["parameters"] * phase["tokens"]
            ax.axvline(boundary if x == "step" else compute, color="grey", linestyle="--", linewidth=0.8)
        ax.set_xlabel("training step" if x == "step" else "compute (parameters x tokens)")
        ax.set_ylabel("training loss")
        ax.legend()
    fig.suptitle("batray grow: " + " -> ".join(f"{p['num_layers']}L/{p['hidden_size']}H" for p in summary["phases"]))
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def run_grow(cfg: RecipeConfig, out_dir: str, *, corpus: str, writer_cls: type | None = None) -> dict:
    """Run (or resume, or skip) Algorithm 1 under `out_dir` on `corpus`; returns the summary.
    `writer_cls`: the expansion's shard-writer actor class (None: shards written in this process)."""
    out = Path(out_dir)
    if is_complete(out / "final") and (out / "summary.json").is_file():
        log.info("grow: %s is complete, skipping", out / "final")
        return json.loads((out / "summary.json").read_text())
    phases = plan_phases(cfg)
    last = run_phases(cfg, out, phases, corpus, writer_cls)
    scratch = run_scratch(cfg, out, phases, corpus) if cfg.grow.compare_from_scratch else None
    summary = summarize(cfg, out, phases, scratch)
    plot(summary, out / "loss.png")
    summary["plot"] = str(out / "loss.png")
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    link_tree(Path(last), out / "final")  # last: `final` being complete marks the whole stage done
    return summary


def format_summary(summary: dict) -> str:
    lines = []
    for p in summary["phases"]:
        dev = (p["expansion_deviation"] or {}).get("max_abs")
        lines.append(f"  {p['phase']}: {p['num_layers']} layers, hidden {p['hidden_size']}, {p['parameters']:,} params, "
                     f"{p['steps']} steps, loss {p['first_loss']} -> {p['final_loss']}"
                     + (f" (expansion max logit deviation {dev:.3g})" if dev is not None else ""))
    g, s = summary["grown"], summary["scratch"]
    lines.append(f"grown: final loss {g['final_loss']}, eval {g['final_eval_loss']}, {g['param_tokens']:.3g} param-tokens")
    if s:
        lines.append(f"from scratch: final loss {s['final_loss']}, eval {s['final_eval_loss']}, "
                     f"{s['param_tokens']:.3g} param-tokens (grown/scratch compute {summary.get('compute_ratio', 0):.2f})")
    return "\n".join(lines)
