"""`scaling.launch: in_process`: one training worker in the stage's own process. The same losses and weights
as a Ray Train job, checkpoints that resume exactly, a Ray Data stream read in place, no cluster for rows
held in memory, and clear errors for a config or a folder that does not fit."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from faults import FailBeforeStep
from test_pretrain import config as pretrain_config
from test_pretrain import write_corpus

from batray import hooks
from batray.config import load_config
from batray.errors import BatrayError
from batray.metrics import read_metrics

ROOT = Path(__file__).resolve().parents[1]


def sft_data(tmp_path: Path) -> str:
    rows = [{"prompt": f"What is {i} plus one?", "response": f"It is {i + 1}."} for i in range(40)]
    rows += [{"messages": [{"role": "user", "content": f"Say {i}."}, {"role": "assistant", "content": f"{i}"}]}
             for i in range(20)]
    path = tmp_path / "sft.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def sft_config(run_dir: Path, data: str, launch: str):
    return load_config(None, [f"run_dir={run_dir}", f"data.sft={data}", "sft.seq_len=64", "sft.micro_batch_size=4",
                              "sft.max_steps=8", "sft.log_every=1", "sft.eval_every=4", "sft.ckpt_every=2",
                              "sft.keep_checkpoints=2", "sft.optim.lr=3e-3", "sft.optim.warmup_steps=1",
                              "data.held_out_fraction=0.1", f"sft.scaling.launch={launch}"])


def tensors(final: str) -> dict:
    from safetensors.torch import load_file

    return load_file(str(Path(final, "model.safetensors")))


def test_in_process_sft_matches_ray_train_and_resumes_exactly(ray_session, tiny_checkpoint, tmp_path):
    import torch

    from batray.train import TrainingFailed
    from batray.train.sft import run_sft

    data = sft_data(tmp_path)
    ref_final = run_sft(sft_config(tmp_path / "rt", data, "ray_train"), str(tmp_path / "rt" / "sft"),
                        init_from=tiny_checkpoint, data=data)
    cfg = sft_config(tmp_path / "ip", data, "in_process")
    out = tmp_path / "ip" / "sft"
    with pytest.raises(TrainingFailed, match="rerun the same command"), hooks.on(hooks.TRAIN_BEFORE_STEP, FailBeforeStep(7)):
        run_sft(cfg, str(out), init_from=tiny_checkpoint, data=data)
    assert [r["step"] for r in read_metrics(out)] == list(range(1, 7))
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_00000004", "step_00000006"]  # keep 2
    assert not (out / "ray").exists()
    final = run_sft(cfg, str(out), init_from=tiny_checkpoint, data=data)  # the same command: resumes at step 6

    ref = read_metrics(tmp_path / "rt" / "sft")
    got = read_metrics(out)
    assert [r["step"] for r in got] == list(range(1, 9))
    for a, b in zip(ref, got):
        for key in ("loss_response", "lr", "tokens_seen", "eval_loss_response"):
            assert a.get(key) == b.get(key), (a["step"], key)
    ref_w, got_w = tensors(ref_final), tensors(final)
    assert ref_w.keys() == got_w.keys()
    assert all(torch.equal(ref_w[k], got_w[k]) for k in ref_w)


def test_in_process_pretrain_makes_the_streams_blocks_and_resumes_exactly(ray_session, tmp_path):
    """In-process pretraining tokenizes the corpus into the blocks Ray Data's stream makes, in its order: a cut
    and resumed in-process run has a one-worker Ray Train job's losses at every step."""
    from batray.train import TrainingFailed
    from batray.train.pretrain import run_pretrain

    corpus = write_corpus(tmp_path / "corpus.jsonl")
    args = (f"data.corpus={corpus}", "pretrain.max_steps=8")
    whole = str(tmp_path / "whole" / "pretrain")
    run_pretrain(pretrain_config(tmp_path / "whole", *args), whole, corpus=corpus)  # Ray Train, Ray Data
    cut_cfg = pretrain_config(tmp_path / "cut", *args, "pretrain.scaling.launch=in_process")
    cut = str(tmp_path / "cut" / "pretrain")
    with pytest.raises(TrainingFailed), hooks.on(hooks.TRAIN_BEFORE_STEP, FailBeforeStep(6)):
        run_pretrain(cut_cfg, cut, corpus=corpus)  # stops after the step-4 checkpoint
    run_pretrain(cut_cfg, cut, corpus=corpus)
    ref = {r["step"]: r for r in read_metrics(whole)}
    got = {r["step"]: r for r in read_metrics(cut)}
    assert sorted(got) == sorted(ref) == list(range(1, 9))
    for step in range(1, 9):
        for key in ("loss_l2r", "loss_r2l", "lr", "tokens_seen"):
            assert got[step][key] == ref[step][key], (step, key)
    assert ref[6]["eval_loss_l2r"] == got[6]["eval_loss_l2r"]
    assert ref[8]["loss_l2r"] < ref[1]["loss_l2r"]


IN_PROCESS_STAGES = """
import json, sys
from batray.config import load_config
from batray.train.pretrain import run_pretrain
from batray.train.sft import run_sft
run, corpus, data = sys.argv[1:4]
cfg = load_config(None, [f"run_dir={run}", "model.vocab_size=400", "pretrain.seq_len=64", "pretrain.max_steps=2",
                         "pretrain.micro_batch_size=4", "pretrain.scaling.launch=in_process", "sft.seq_len=64",
                         "sft.max_steps=2", "sft.micro_batch_size=4", "sft.scaling.launch=in_process"])
pretrained = run_pretrain(cfg, run + "/pretrain", corpus=corpus)
run_sft(cfg, run + "/sft", init_from=pretrained, data=data)
import ray
print("RESULT " + json.dumps({"ray": ray.is_initialized()}))
"""


def test_in_process_pretrain_and_sft_start_no_cluster(tmp_path):
    """Rows in memory and the loop here: the command never starts (or joins) a Ray cluster."""
    corpus, data = write_corpus(tmp_path / "corpus.jsonl"), sft_data(tmp_path)
    proc = subprocess.run([sys.executable, "-c", IN_PROCESS_STAGES, str(tmp_path), corpus, data], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("RESULT "))[7:])
    assert result == {"ray": False}
    assert (tmp_path / "pretrain" / "final").is_dir() and (tmp_path / "sft" / "final").is_dir()


def test_a_launch_resumes_only_its_own_checkpoints_and_in_process_is_one_worker(ray_session, tiny_checkpoint,
                                                                                  tmp_path):
    from batray.errors import ConfigError
    from batray.train.sft import run_sft

    with pytest.raises(ConfigError, match="sft.scaling: .*launch in_process trains one worker.*num_workers 2"):
        load_config(None, ["sft.scaling.launch=in_process", "sft.scaling.num_workers=2"])
    # how a stage is launched is not what it computes: the config hash in every checkpoint stays the same
    assert load_config(None, ["sft.scaling.launch=in_process"]).digest() == load_config(None, []).digest()
    assert load_config(None, ["sft.max_steps=3"]).digest() != load_config(None, []).digest()
    data = sft_data(tmp_path)
    (tmp_path / "a" / "sft" / "ray").mkdir(parents=True)  # a Ray Train run began here
    with pytest.raises(BatrayError, match="holds a Ray Train run's checkpoints; resume it with scaling.launch ray_train"):
        run_sft(sft_config(tmp_path / "a", data, "in_process"), str(tmp_path / "a" / "sft"),
                init_from=tiny_checkpoint, data=data)
    (tmp_path / "b" / "sft" / "checkpoints" / "step_00000002").mkdir(parents=True)  # an in-process run began here
    with pytest.raises(BatrayError, match="holds an in-process run's checkpoints; resume it with scaling.launch in_process"):
        run_sft(sft_config(tmp_path / "b", data, "ray_train"), str(tmp_path / "b" / "sft"),
                init_from=tiny_checkpoint, data=data)


def test_in_process_lora_under_zero3_resumes_and_merges(tmp_path):
    """The in-process launch with what its one worker can still combine: LoRA adapters, ZeRO-3 on a group of
    one, a crash and a resume from the adapter's checkpoint, the merged final/ loading without peft."""
    from faults import FailBeforeStep
    from model_zoo import build_checkpoint
    from test_lora import ANSWERS, LORA, QUESTIONS, _write
    from transformers import AutoModelForCausalLM

    from batray.train import TrainingFailed
    from batray.train.sft import run_sft

    stock = build_checkpoint("glm", tmp_path / "stock")
    settings = ["max_steps=4", "micro_batch_size=2", "seq_len=48", "log_every=1", "eval_every=100", "ckpt_every=2",
                "optim.lr=0.01", "deepspeed.zero_stage=3", "scaling.launch=in_process", *[f"lora.{x}" for x in LORA]]
    cfg = load_config(None, [f"run_dir={tmp_path}", "data.held_out_fraction=0", *[f"sft.{x}" for x in settings]])
    data = _write(tmp_path / "d.jsonl", [{"prompt": q, "response": a} for q, a in zip(QUESTIONS, ANSWERS)] * 4)
    out = tmp_path / "sft"
    with pytest.raises(TrainingFailed), hooks.on(hooks.TRAIN_BEFORE_STEP, FailBeforeStep(3)):
        run_sft(cfg, str(out), init_from=stock, data=data)
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step_00000002"]
    (out / "checkpoints" / ".step_00000004.partial").mkdir()  # as a save cut by a kill leaves it
    final = run_sft(cfg, str(out), init_from=stock, data=data)
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_00000002"]  # no step-4 save (last)
    assert [r["step"] for r in read_metrics(out)] == [1, 2, 3, 4]
    assert (Path(final) / "adapter").is_dir()
    AutoModelForCausalLM.from_pretrained(final)


def test_a_stock_llama_checkpoint_goes_through_in_process_sft_and_reward(tmp_path):
    """What a user brings (a Hugging Face Llama folder with its own tokenizer and chat template, not one batray
    wrote): SFT, then the reward model from it, both in-process; plain transformers loads what they wrote."""
    from model_zoo import build_checkpoint
    from test_lora import ANSWERS, QUESTIONS, WRONG, _write
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    from batray.reward.stage import run_reward
    from batray.train.sft import run_sft

    stock = build_checkpoint("llama", tmp_path / "stock")
    common = ["max_steps=3", "micro_batch_size=2", "seq_len=48", "log_every=1", "eval_every=100", "ckpt_every=2",
              "scaling.launch=in_process"]
    cfg = load_config(None, [f"run_dir={tmp_path}", "data.held_out_fraction=0", "reward.held_out_fraction=0.2",
                             *[f"sft.{x}" for x in common], *[f"reward.{x}" for x in common]])
    sft_data = _write(tmp_path / "s.jsonl", [{"prompt": q, "response": a} for q, a in zip(QUESTIONS, ANSWERS)] * 4)
    sft = run_sft(cfg, str(tmp_path / "sft"), init_from=stock, data=sft_data)
    prefs = _write(tmp_path / "p.jsonl", [{"prompt": q, "chosen": a, "rejected": w}
                                          for q, a, w in zip(QUESTIONS, ANSWERS, WRONG)] * 4)
    reward = run_reward(cfg, str(tmp_path / "reward"), init_from=sft, data=prefs)
    assert type(AutoModelForCausalLM.from_pretrained(sft)).__name__ == "LlamaForCausalLM"
    assert type(AutoModelForSequenceClassification.from_pretrained(reward)).__name__ == "LlamaForSequenceClassification"
    sft_rows, reward_rows = read_metrics(tmp_path / "sft"), read_metrics(tmp_path / "reward")
    assert [r["step"] for r in sft_rows] == [r["step"] for r in reward_rows] == [1, 2, 3]
    assert sft_rows[-1]["loss_response"] < sft_rows[0]["loss_response"]
    assert (tmp_path / "sft" / "checkpoints" / "step_00000002").is_dir()
