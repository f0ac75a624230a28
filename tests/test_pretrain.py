"""`batray pretrain` as a Ray Train job on CPU with batgpt-tiny: the loss falls in each direction,
the final folder loads with transformers, 2-worker ZeRO-2 and ZeRO-3 runs complete, and a 2-worker
ZeRO-2 run killed mid-way resumes from its checkpoint with exactly the losses of an uninterrupted run.

(The reference run is itself the 2-worker ZeRO-2 run: every Ray Train launch costs ~35 s of process
start-up on 2 cores, so one run serves three tests.)
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from faults import FailBeforeStep

from batray import hooks
from batray.checkpoint import read_marker
from batray.config import load_config
from batray.metrics import read_metrics

COUNTRIES = ["Veloria", "Dastan", "Korvia", "Pellam", "Ostrin", "Marova", "Teskar", "Ulmara"]
CITIES = ["Marnet", "Quillo", "Sarden", "Botha", "Ivrel", "Nesk", "Cardo", "Lumet"]


def write_corpus(path: Path, n: int = 160) -> str:
    rng = random.Random(0)
    rows = []
    for i in range(n):
        c = rng.randrange(len(COUNTRIES))
        template = rng.choice(["The capital of {c} is {x}.", "{x} is the capital of {c}.", "{c}的首都是{x}。"])
        rows.append({"text": template.format(c=COUNTRIES[c], x=CITIES[c]) + f" Note {i}."})
    rows.append({"text": ""})  # rejected and reported, not silently dropped
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return str(path)


ZERO2_TWO_WORKERS = ("pretrain.scaling.num_workers=2", "pretrain.deepspeed.zero_stage=2")


def config(run_dir: Path, *extra: str):
    return load_config(None, [
        f"run_dir={run_dir}", "model.vocab_size=400", "data.held_out_fraction=0.1",
        "pretrain.seq_len=64", "pretrain.micro_batch_size=4", "pretrain.max_steps=12",
        "pretrain.log_every=1", "pretrain.eval_every=6", "pretrain.eval_batches=2", "pretrain.ckpt_every=4",
        "pretrain.optim.lr=3e-3", "pretrain.optim.warmup_steps=2", *extra,
    ])


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_corpus(tmp_path_factory.mktemp("corpus") / "corpus.jsonl")


_REFERENCE: dict = {}


@pytest.fixture
def reference_run(ray_session, corpus, tmp_path_factory):
    """An uninterrupted 12-step run (2 workers, ZeRO-2), trained once per test session."""
    from batray.train.pretrain import run_pretrain

    if "run" not in _REFERENCE:
        run_dir = tmp_path_factory.mktemp("ref")
        cfg = config(run_dir, f"data.corpus={corpus}", *ZERO2_TWO_WORKERS)
        _REFERENCE["run"] = (cfg, run_dir, run_pretrain(cfg, str(run_dir / "pretrain"), corpus=str(corpus)))
    return _REFERENCE["run"]


def test_loss_falls_in_each_direction_and_final_loads(reference_run):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cfg, run_dir, final = reference_run
    rows = read_metrics(run_dir / "pretrain")
    assert [r["step"] for r in rows] == list(range(1, 13))
    for d in ("l2r", "r2l"):
        first, last = rows[0][f"loss_{d}"], rows[-1][f"loss_{d}"]
        assert last < first - 0.5, (d, first, last)
        assert rows[-1][f"ppl_{d}"] < rows[0][f"ppl_{d}"]
    evals = [r for r in rows if "eval_loss_l2r" in r]
    assert [r["step"] for r in evals] == [6, 12] and evals[1]["eval_loss_r2l"] < evals[0]["eval_loss_r2l"]
    assert list((run_dir / "pretrain" / "tb").iterdir())
    assert (run_dir / "pretrain" / "rejected_corpus.jsonl").read_text().count("\n") == 1

    model = AutoModelForCausalLM.from_pretrained(final)
    tokenizer = AutoTokenizer.from_pretrained(final)
    assert model.config.vocab_size == len(tokenizer)
    meta = read_marker(final)
    assert meta["stage"] == "pretrain" and meta["step"] == 12 and meta["direction"] == "both"
    assert meta["tokens_seen"] == 12 * 2 * 4 * 64  # steps x workers x batch x seq


def test_rerun_skips_when_complete(reference_run):
    from batray.train.pretrain import run_pretrain

    cfg, run_dir, final = reference_run
    before = Path(final, "model.safetensors").stat().st_mtime_ns
    assert run_pretrain(cfg, str(run_dir / "pretrain"), corpus=cfg.data.corpus) == final
    assert Path(final, "model.safetensors").stat().st_mtime_ns == before


def test_kill_and_resume_continues_exactly(reference_run, corpus, tmp_path):
    from batray.train import TrainingFailed
    from batray.train.pretrain import run_pretrain

    _, ref_dir, _ = reference_run
    cfg = config(tmp_path, f"data.corpus={corpus}", *ZERO2_TWO_WORKERS)
    out = str(tmp_path / "pretrain")
    with pytest.raises(TrainingFailed, match="rerun the same command"), hooks.on(hooks.TRAIN_BEFORE_STEP, FailBeforeStep(7)):
        run_pretrain(cfg, out, corpus=str(corpus))  # crashes after the step-4 checkpoint
    assert [r["step"] for r in read_metrics(out)] == list(range(1, 7))
    run_pretrain(cfg, out, corpus=str(corpus))  # the same command again: resumes at step 4
    ref = {r["step"]: r for r in read_metrics(ref_dir / "pretrain")}
    got = {r["step"]: r for r in read_metrics(out)}
    assert sorted(got) == list(range(1, 13))
    for step in range(5, 13):
        for key in ("loss_l2r", "loss_r2l", "lr"):
            assert got[step][key] == ref[step][key], (step, key)


def test_two_workers_with_zero3_and_accumulation(ray_session, corpus, tmp_path):
    from transformers import AutoModelForCausalLM

    from batray.train.pretrain import run_pretrain

    cfg = config(tmp_path, f"data.corpus={corpus}", "pretrain.max_steps=3", "pretrain.ckpt_every=2",
                 "pretrain.scaling.num_workers=2", "pretrain.deepspeed.zero_stage=3",
                 "pretrain.grad_accum_steps=2", "pretrain.optim.warmup_steps=1")
    final = run_pretrain(cfg, str(tmp_path / "pretrain"), corpus=str(corpus))
    rows = read_metrics(tmp_path / "pretrain")
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert rows[-1]["tokens_seen"] == 3 * 2 * 2 * 4 * 64  # steps x workers x accumulation x batch x seq
    model = AutoModelForCausalLM.from_pretrained(final)
    assert sum(p.numel() for p in model.parameters()) > 0
    assert list(Path(tmp_path, "pretrain", "ray").glob("checkpoint*")) or list(Path(tmp_path, "pretrain", "ray").glob("step_*"))
