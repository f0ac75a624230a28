"""`batray grow` (Algorithm 1): the schedule is validated before training, and a tiny run goes
2 layers -> stacked to 4 -> widened, next to a from-scratch run, resumable and skipped when done."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from batray.config import load_config
from batray.errors import BatrayError
from tests.conftest import SAMPLE_TEXTS


def grow_config(run_dir: Path, corpus: Path | None = None, **extra: str):
    overrides = {
        "run_dir": str(run_dir), "model.vocab_size": "320", "ray.num_cpus": "2",
        "pretrain.micro_batch_size": "4", "pretrain.seq_len": "32", "pretrain.log_every": "1",
        "pretrain.eval_every": "100", "pretrain.ckpt_every": "100", "pretrain.optim.lr": "3e-3",
        "grow.stack_steps": "1", "grow.steps_per_phase": "3",
        **({"data.corpus": str(corpus)} if corpus else {}), **extra,
    }
    return load_config(None, [f"{k}={v}" for k, v in overrides.items()])


def run_grow(cfg):
    """Algorithm 1 with the expansion's shard writers as actors (as the grow stage runs it)."""
    from actors.shard_writer import ShardWriter
    from batray.expansion.grow import run_grow as grow

    return grow(cfg, cfg.stage_dir("grow"), corpus=cfg.data.corpus, writer_cls=ShardWriter)


def test_schedule_is_validated_before_training(tmp_path):
    from batray.expansion.grow import plan_phases

    phases = plan_phases(grow_config(tmp_path, **{"grow.stack_steps": "2"}))
    assert [(p.name, p.layers) for p in phases] == [("stage_0", 1), ("stage_1", 2), ("stage_2", 4)]
    with pytest.raises(BatrayError, match="not divisible by 8"):
        plan_phases(grow_config(tmp_path, **{"grow.stack_steps": "3"}))
    with pytest.raises(BatrayError, match="grow.width: .*cannot shrink"):
        plan_phases(grow_config(tmp_path, **{"grow.width.hidden_size": "32"}))
    with pytest.raises(BatrayError, match="from scratch"):
        plan_phases(grow_config(tmp_path, **{"model.path": str(tmp_path)}))
    assert not (tmp_path / "grow").exists()


def _corpus(tmp_path: Path) -> Path:
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in SAMPLE_TEXTS))
    return corpus


def test_grow_stacks_and_resumes(ray_session, tmp_path):
    """2 layers trained, stacked (zeroed copies: same function) to 4, trained; a rerun trains nothing."""
    import shutil

    from transformers import AutoModelForCausalLM

    cfg = grow_config(tmp_path / "run", _corpus(tmp_path), **{"grow.steps_per_phase": "2"})
    summary = run_grow(cfg)
    out = tmp_path / "run" / "grow"
    phases = summary["phases"]
    assert [(p["phase"], p["num_layers"]) for p in phases] == [("stage_0", 2), ("stage_1", 4)]
    assert phases[1]["expansion_deviation"]["max_abs"] == 0.0
    assert all(p["steps"] == 2 and p["final_loss"] is not None for p in phases)
    assert [c["step"] for c in summary["curves"]["grown"]] == [1, 2, 3, 4]
    assert summary["scratch"] is None and (out / "loss.png").stat().st_size > 1000
    marker = json.loads((out / "final" / "batray.json").read_text())
    assert marker["stage"] == "grow" and marker["parent"].endswith("stage_1/final")
    assert AutoModelForCausalLM.from_pretrained(out / "final").config.num_hidden_layers == 4

    # resumable: without the summary and final folder, a rerun re-summarizes and trains nothing again
    trained = (out / "stage_1" / "metrics.jsonl").stat().st_mtime_ns
    (out / "summary.json").unlink()
    shutil.rmtree(out / "final")
    again = run_grow(cfg)
    assert (out / "stage_1" / "metrics.jsonl").stat().st_mtime_ns == trained
    assert again["grown"] == summary["grown"]
    assert run_grow(cfg)["grown"] == summary["grown"]  # complete: skipped outright


@pytest.mark.slow
def test_grow_with_width_step_against_scratch(ray_session, tmp_path):
    """Four Ray Train runs (2 layers, 4 layers, 4 layers x2 wide, and the wide model from scratch)."""
    cfg = grow_config(tmp_path / "run", _corpus(tmp_path), **{"grow.width.hidden_size": "128",
                                                               "grow.width.method": "exact",
                                                               "grow.compare_from_scratch": "true"})
    summary = run_grow(cfg)
    phases = summary["phases"]
    assert [(p["phase"], p["num_layers"], p["hidden_size"]) for p in phases] == [
        ("stage_0", 2, 64), ("stage_1", 4, 64), ("stage_2", 4, 128)]
    # stacking with zeroed copies and exact widening start each phase from the previous function
    assert phases[1]["expansion_deviation"]["max_abs"] == 0.0
    assert phases[2]["expansion_deviation"]["max_abs"] < 1e-4
    assert len(summary["curves"]["grown"]) == 9 and summary["curves"]["grown"][-1]["step"] == 9
    scratch = summary["scratch"]
    # the same compute (parameters x tokens): fewer steps of the final size than all phases together
    expected = round(sum(p["parameters"] for p in phases) * 3 / phases[-1]["parameters"])
    assert scratch["steps"] == expected < 9 and scratch["parameters"] == phases[-1]["parameters"]
    assert 0.8 < summary["compute_ratio"] < 1.25
