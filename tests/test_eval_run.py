"""`batray eval` end to end on Ray: a model that knows the demo world scores far above chance through
the real path (official prompts -> tokenizer -> scorer actors -> next-token letter logits), `cot`
generation with unparsable answers reported, an OpenAI-compatible endpoint, the pipeline function
and `eval compare`; and, when the shared CMMLU is present, the full CMMLU test on a tiny model."""

from __future__ import annotations

import dataclasses
import json
import random
import time
from pathlib import Path

import pytest
import torch

from batray.cli import main as cli
from batray.config import load_config
from batray.data.demo import generate_demo
from batray.eval.tasks import PromptFitter, build_requests, load_benchmark
from batray.models.tokenizer import L2R_TOKEN, train_bpe

from actors.eval_scorer import EvalScorer as SCORER
from conftest import SHARED_DATASETS

CMMLU_SUBJECTS = ["economics", "ethnology"]
CEVAL_SUBJECTS = ["high_school_geography"]


@pytest.fixture(scope="module")
def demo_benchmarks(tmp_path_factory) -> str:
    return generate_demo(str(tmp_path_factory.mktemp("demo")))["benchmarks"]


@pytest.fixture(scope="module")
def knowing_checkpoint(tmp_path_factory, demo_benchmarks) -> str:
    """batgpt-tiny fitted (~120 steps) on the zero-shot prompts of a few demo subjects (dev + scored
    items) to put the right letter after them: a real model that knows these answers."""
    from batray.checkpoint import save_hf_checkpoint
    from batray.models.presets import build_model, preset_config

    benches = [load_benchmark("cmmlu", demo_benchmarks, CMMLU_SUBJECTS),
               load_benchmark("ceval", demo_benchmarks, CEVAL_SUBJECTS)]
    texts = [i.question + " ".join(i.options) for b in benches for s in b.items for i in b.dev[s] + b.items[s]]
    texts += ["以下是关于经济学民族学的单项选择题，请直接给出正确答案的选项。题目：答案是：",
              "以下是中国关于高中地理考试的单项选择题，请选出其中的正确答案。答案："] * 5
    tokenizer = train_bpe(texts, vocab_size=600)
    fitter = PromptFitter(tokenizer=tokenizer, context=1024, prefix_tokens=1)
    requests = []
    for b in benches:
        everything = dataclasses.replace(b, items={s: b.dev[s] + b.items[s] for s in b.items})
        requests += build_requests(everything, 0, "da", fitter)
    l2r = tokenizer.convert_tokens_to_ids(L2R_TOKEN)
    seqs = [[l2r, *tokenizer.encode(r.prompt, add_special_tokens=False)] for r in requests]
    golds = torch.tensor([tokenizer.convert_tokens_to_ids(r.gold) for r in requests])
    width = max(map(len, seqs))
    ids = torch.zeros(len(seqs), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, s in enumerate(seqs):
        ids[i, width - len(s):] = torch.tensor(s)
        mask[i, width - len(s):] = 1
    pos = (mask.cumsum(-1) - 1).clamp(min=0)

    model = build_model(preset_config("batgpt-tiny", vocab_size=len(tokenizer)), seed=0)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    rng = random.Random(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a shared 2-core machine: one thread is many times faster than two fighting
    try:
        for _ in range(120):
            idx = torch.tensor(rng.sample(range(len(seqs)), 16))
            logits = model(input_ids=ids[idx], attention_mask=mask[idx], position_ids=pos[idx], logits_to_keep=1).logits
            loss = torch.nn.functional.cross_entropy(logits[:, -1], golds[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    finally:
        torch.set_num_threads(threads)
    out = tmp_path_factory.mktemp("ckpt") / "knowing" / "final"
    save_hf_checkpoint(model, tokenizer, out, stage="sft")
    return str(out)


def _read(out: Path) -> tuple[dict, list[dict]]:
    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text(encoding="utf-8").splitlines()]
    return results, rows


def test_cli_knowing_model_scores_far_above_chance(ray_session, knowing_checkpoint, demo_benchmarks, tmp_path, capsys):
    out = tmp_path / "cmmlu"
    rc = cli(["eval", "--benchmark", "cmmlu", "--data", demo_benchmarks, "--model", knowing_checkpoint,
              "--shots", "0", "--mode", "da", "--subjects", ",".join(CMMLU_SUBJECTS), "--num-actors", "2",
              "--batch-size", "4", "--out", str(out)])
    assert rc == 0
    results, rows = _read(out)
    n = sum(len(load_benchmark("cmmlu", demo_benchmarks, CMMLU_SUBJECTS).items[s]) for s in CMMLU_SUBJECTS)
    assert results["n"] == len(rows) == n and results["num_actors"] == 2
    assert results["average"] > 0.6, results["average"]  # chance is 0.25
    assert results["model_label"] == "knowing" and results["shots"] == 0 and results["unparsable"] == 0
    assert set(results["subjects"]) == set(CMMLU_SUBJECTS)
    assert {"subject", "index", "gold", "pred", "correct", "scores"} <= set(rows[0])
    assert sum(r["correct"] for r in rows) == results["correct"]
    table = (out / "table.md").read_text(encoding="utf-8")
    assert "**Table 1: CMMLU**" in table and "| knowing | 0-shot DA |" in table
    assert "| knowing | 0-shot DA |" in capsys.readouterr().out


def test_cot_generates_and_reports_unparsable(ray_session, knowing_checkpoint, demo_benchmarks, tmp_path):
    from batray.config import EvalConfig
    from batray.eval.run import evaluate

    ecfg = EvalConfig(subjects=CEVAL_SUBJECTS, limit=3, max_new_tokens=6, batch_size=3)
    results = evaluate(knowing_checkpoint, "ceval", demo_benchmarks, tmp_path / "cot", shots=1, mode="cot", ecfg=ecfg,
                       scorer_cls=SCORER)
    _, rows = _read(tmp_path / "cot")
    assert len(rows) == 3 and all("text" in r for r in rows)
    assert results["unparsable"] == sum(r["pred"] is None for r in rows)
    assert all(r["correct"] is False for r in rows if r["pred"] is None)  # never a random guess
    assert results["split"] == "val" and results["hard"]["subjects"] == 0


def test_endpoint_scoring_agrees_with_local(ray_session, knowing_checkpoint, demo_benchmarks, tmp_path):
    serve = pytest.importorskip("batray.serve")
    from batray.config import EvalConfig
    from batray.eval.run import evaluate

    ecfg = EvalConfig(subjects=CEVAL_SUBJECTS, batch_size=4)
    local = evaluate(knowing_checkpoint, "ceval", demo_benchmarks, tmp_path / "local", shots=0, mode="da", ecfg=ecfg,
                       scorer_cls=SCORER)
    with serve.start_server(knowing_checkpoint) as server:
        remote = evaluate(server.url, "ceval", demo_benchmarks, tmp_path / "remote", shots=0, mode="da", ecfg=ecfg,
                          scorer_cls=SCORER,
                          label="served")
    _, local_rows = _read(tmp_path / "local")
    _, remote_rows = _read(tmp_path / "remote")
    assert len(local_rows) == len(remote_rows) == local["n"]
    agree = sum(a["pred"] == b["pred"] for a, b in zip(local_rows, remote_rows)) / len(local_rows)
    assert agree >= 0.9 and remote["average"] > 0.6
    assert all("scores" in r for r in remote_rows)  # answered from the endpoint's log-probabilities


def test_pipeline_runs_the_configured_grid_writes_tables_and_skips_finished(ray_session, knowing_checkpoint,
                                                                          demo_benchmarks, tmp_path, capsys):
    from batray.eval.run import run_eval

    cfg = load_config(None, [f"run_dir={tmp_path}", "eval.shots=[0]", "eval.modes=[da]", "eval.limit=4",
                             f"eval.subjects=[{','.join(CMMLU_SUBJECTS + CEVAL_SUBJECTS)}]"])
    out = run_eval(cfg, tmp_path / "eval", models={"knowing": knowing_checkpoint}, data_dir=demo_benchmarks,
                   scorer_cls=SCORER)
    assert set(out["runs"]) == {"cmmlu/knowing/da_0shot", "ceval/knowing/da_0shot"}
    first = (tmp_path / "eval" / "cmmlu" / "knowing" / "da_0shot" / "results.json").stat().st_mtime_ns
    tables = Path(out["tables"]).read_text(encoding="utf-8")
    assert "**Table 1: CMMLU**" in tables and "**Table 3: C-Eval**" in tables and "Avg(Hard)" in tables
    again = run_eval(cfg, tmp_path / "eval", models={"knowing": knowing_checkpoint}, data_dir=demo_benchmarks,
                     scorer_cls=SCORER)
    assert again["runs"] == out["runs"]
    assert (tmp_path / "eval" / "cmmlu" / "knowing" / "da_0shot" / "results.json").stat().st_mtime_ns == first
    assert cli(["eval", "compare", str(tmp_path / "eval")]) == 0
    printed = capsys.readouterr().out
    assert "| knowing | 0-shot DA |" in printed and "Table 3" in printed


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert cli(["eval", "--benchmark", "cmmlu", "--model", "x"]) == 2
    assert "--data, --out required" in capsys.readouterr().err
    assert cli(["eval", "compare", str(tmp_path)]) == 2
    assert "no results.json" in capsys.readouterr().err
    (tmp_path / "test").mkdir()
    assert cli(["eval", "--benchmark", "cmmlu", "--data", str(tmp_path), "--model", "x", "--out", str(tmp_path / "o"),
                "--subjects", "astrology"]) == 2
    assert "unknown subject 'astrology'" in capsys.readouterr().err


CMMLU_SHARED = SHARED_DATASETS / "cmmlu"


@pytest.mark.slow
@pytest.mark.skipif(not (CMMLU_SHARED / "test").is_dir(), reason="no shared CMMLU data set")
def test_full_cmmlu_test_on_a_tiny_model(ray_session, tiny_checkpoint, tmp_path, caplog):
    """All 67 subjects, 11,582 items, zero-shot, 2 actors (5-shot prompts are what bench_eval measures).

    Measured: 1,053 s (13.3 items/s scoring) on the shared 2-core machine at load ~40; hence `slow`.
    """
    import logging

    caplog.set_level(logging.INFO, logger="batray.eval")
    t = time.perf_counter()
    rc = cli(["eval", "--benchmark", "cmmlu", "--data", str(CMMLU_SHARED), "--model", tiny_checkpoint, "--shots", "0",
              "--mode", "da", "--num-actors", "2", "--batch-size", "16", "--out", str(tmp_path / "full")])
    elapsed = time.perf_counter() - t
    assert rc == 0
    results, rows = _read(tmp_path / "full")
    assert len(results["subjects"]) == 67 and results["missing_subjects"] == []
    assert results["n"] == len(rows) == 11582 and results["rejected_rows"] == 0
    assert all(results["categories"][c]["accuracy"] is not None for c in results["categories"])
    assert 0.15 < results["average"] < 0.35  # a random model is at chance
    progress = [r for r in caplog.records if "items (" in r.getMessage()]
    assert len(progress) >= 5  # a log line per ~10% when not on a terminal
    print(f"full CMMLU test: {results['n']} items in {elapsed:.0f}s ({results['items_per_s']} items/s scoring)")


def test_report_scores_real_cmmlu_with_the_stage_kit(ray_session, knowing_checkpoint, demo_benchmarks, tmp_path,
                                                    monkeypatch):
    """The report's real-CMMLU row gets its scorer class from the actor kit (named by import path) and
    measures, rather than failing the row (the demo's CMMLU layout stands in for ../shared/datasets)."""
    from actors import kit
    from batray.measure import measure_run

    monkeypatch.setenv("BATRAY_SHARED_DATASETS", demo_benchmarks)
    cfg = load_config(None, [f"run_dir={tmp_path}", "stages=[eval]", f"eval.models=[{knowing_checkpoint}]"])
    (tmp_path / "eval").mkdir()
    doc = measure_run(cfg, kit())
    rows = [r for r in doc["headline"] if r["claim"].startswith("a toy model is at chance on real CMMLU")]
    assert len(rows) == 1 and rows[0]["held"] is not None, doc["headline"]
    assert "/" in rows[0]["figure"]  # "label: 33.3% (k/n; ...)"
