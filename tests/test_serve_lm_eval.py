"""lm-evaluation-harness against `batray serve`: `--model local-completions` on a real server agrees
with `--model hf` on the same checkpoint, item by item, on a multiple-choice task made from CSV files.

local-completions scores each choice by sending batches of token-id lists with `echo: true`,
`logprobs: 1` and `max_tokens: 1`, and reads the prompt tokens' logprobs back; both sides use the
checkpoint's own tokenizer (so both feed `<|l2r|>` first, `add_bos_token=True`). lm-eval runs as its
CLI in a subprocess, offline (HF_HUB_OFFLINE, HF_DATASETS_OFFLINE), with a private cache folder.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("lm_eval", reason="lm-eval[api] is in the dev extra")

from batray.serve import load_served_model, start_server  # noqa: E402

TASK = "batray_tiny_mc"
ITEMS = [
    ("What is the capital of Veloria?", ["Marnet", "Veloria", "Ada", "Quill"], 0),
    ("Who works as a cartographer in Marnet?", ["The capital", "Ada Quill", "Nobody", "Veloria"], 1),
    ("维洛里亚的首都是哪里？", ["维洛里亚", "世界", "马尔内", "你好"], 2),
    ("Marnet is the capital of which country?", ["Quill", "Marnet", "Ada", "Veloria"], 3),
    ("马尔内是哪个国家的首都？", ["维洛里亚", "马尔内", "首都", "世界"], 0),
    ("What does Ada Quill work as?", ["a capital", "a cartographer", "a country", "hello world"], 1),
    ("Say hello in Chinese.", ["world", "Marnet", "你好", "Answer"], 2),
    ("Which city is a capital?", ["Ada", "Quill", "hello", "Marnet"], 3),
]
TASK_YAML = """task: {task}
dataset_path: csv
dataset_kwargs:
  data_files:
    test: {csv}
test_split: test
output_type: multiple_choice
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_choice: "{{{{[A, B, C, D]}}}}"
doc_to_target: answer
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""


def _write_task(folder: Path) -> None:
    with open(folder / "test.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["question", "A", "B", "C", "D", "answer"])
        for q, choices, answer in ITEMS:
            w.writerow([q, *choices, answer])
    (folder / f"{TASK}.yaml").write_text(TASK_YAML.format(task=TASK, csv=folder / "test.csv"), encoding="utf-8")


def _lm_eval(model: str, model_args: str, tasks_dir: Path, out: Path) -> dict[int, list[float]]:
    """Run lm-eval's CLI; returns {doc_id: [loglikelihood of each choice]} from its logged samples."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "HF_HOME": str(out / "hf-home"), "HF_DATASETS_CACHE": str(out / "hf-datasets"), "OPENAI_API_KEY": "unused"}
    cmd = [sys.executable, "-m", "lm_eval", "run", "--model", model, "--model_args", model_args, "--tasks", TASK,
           "--include_path", str(tasks_dir), "--batch_size", "4", "--device", "cpu", "--output_path", str(out),
           "--log_samples"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    (samples,) = out.rglob(f"samples_{TASK}_*.jsonl")
    scores = {}
    for line in samples.read_text(encoding="utf-8").splitlines():
        s = json.loads(line)
        scores[s["doc_id"]] = [float(r[0][0]) for r in s["resps"]]  # resps: per choice [[loglikelihood, is_greedy]]
    return scores


def test_lm_eval_local_completions_agrees_with_hf(tiny_checkpoint, tmp_path):
    tasks_dir = tmp_path / "tasks"
    tasks_dir.mkdir()
    _write_task(tasks_dir)
    served = load_served_model(tiny_checkpoint, device="cpu")
    common = f"tokenizer={tiny_checkpoint},add_bos_token=True,max_length={served.context_len}"
    with start_server(served, max_batch_size=8, batch_wait_ms=5) as h:
        served_scores = _lm_eval(
            "local-completions",
            f"model={h.model},base_url={h.url}/completions,tokenizer_backend=huggingface,tokenized_requests=True,"
            f"num_concurrent=2,max_retries=1,{common}",
            tasks_dir, tmp_path / "served")
        rows_served = h.app.state.engine.rows_run
    hf_scores = _lm_eval("hf", f"pretrained={tiny_checkpoint},dtype=float32,{common}", tasks_dir, tmp_path / "hf")
    assert sorted(served_scores) == sorted(hf_scores) == list(range(len(ITEMS)))
    assert rows_served >= 4 * len(ITEMS)  # every choice of every item went through the server
    deltas = [abs(a - b) for d in hf_scores for a, b in zip(served_scores[d], hf_scores[d], strict=True)]
    assert len(deltas) == 4 * len(ITEMS)
    print(f"lm-eval local-completions vs hf: {len(deltas)} loglikelihoods, max |delta| = {max(deltas):.3g}")
    assert max(deltas) < 1e-3, max(deltas)
