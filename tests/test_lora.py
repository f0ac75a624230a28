"""LoRA (peft) for SFT, reward and PPO on stock tiny checkpoints (`model_zoo`), under the real Ray stages.

- `batray run` sft -> reward -> ppo with `<stage>.lora` on a tiny GLM and a tiny Llama: the adapters
  change the outputs, `final/` is the merged model and equals base + adapter applied by peft at run
  time, the policy's frozen base stays bit-identical through PPO, the reference (the base with its
  adapters disabled) gives the SFT model's log-probs, and the rollout engines receive merged weights.
- A LoRA SFT run killed mid-way under ZeRO-2 with 2 workers resumes with the losses of an
  uninterrupted run, from checkpoints that hold the adapter only.
- LoRA SFT and reward with 2 workers under ZeRO-1 and ZeRO-3 (parameters partitioned), and PPO's policy and
  critic as 2 ranks each under ZeRO-3: the frozen base stays bit-identical, the adapters train, the reference
  is the base, the engines get the merged weights, and `final/` is base + adapter merged, loadable without peft.
- `batray expand` refuses an adapter folder in one line.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from model_zoo import build_checkpoint

from batray import hooks
from batray.cli import main as cli

QUESTIONS = ["What is the capital of Veloria?", "Who is Ada Quill?", "Say hello.", "Tell me more, please."]
ANSWERS = ["Marnet.", "A cartographer in Marnet.", "Hello!", "I am fine, thank you."]
WRONG = ["Paris.", "A baker.", "Go away.", "No."]
LORA = ["rank=4", "alpha=8", "dropout=0.0"]


def _write(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits.float()


class PolicyProbe:
    """At PPO's last step (a `PPO_STEP_DONE` hook, in the driver): the policy's frozen base weights and its
    reference / policy log-probs of a fixed batch, asked of every rank at once (collectives under ZeRO-3)."""

    def __init__(self, at_step: int, batch: dict):
        self.at_step, self.batch, self.seen = at_step, batch, {}

    def __call__(self, *, step, roles):
        import ray

        if step != self.at_step:
            return
        actors = roles["policy"].actors

        def frozen(actor):
            base = actor.trainer.module.get_base_model()
            params = [p for p in base.parameters() if not p.requires_grad]
            with actor.trainer.gathered(params):  # ZeRO-3 partitions them: the full values on every rank
                return {n.replace(".base_layer", ""): p.detach().clone() for n, p in base.named_parameters()
                        if not p.requires_grad and "lora_" not in n}

        def first(method, *args):  # every rank runs it; rank 0's answer, back from its wire form (numpy)
            from batray.ppo.wire import from_wire, to_wire

            return from_wire(ray.get([method(a).remote(*to_wire(args)) for a in actors])[0])

        self.seen = {
            "frozen": first(lambda a: a.__ray_call__, frozen),
            "reference": first(lambda a: a.reference_logprobs, self.batch),
            "policy": first(lambda a: a.logprobs, self.batch),
            "roles": sorted(roles.groups),
        }


def _resized(model, like):
    """`model` with `like`'s vocabulary size (a stage that added a pad token saved the new rows in its
    adapter; peft loads them onto a base resized to the tokenizer, as its docs say)."""
    model.resize_token_embeddings(like.get_input_embeddings().num_embeddings)
    return model


def _probe_batch(tokenizer) -> dict:
    from batray.ppo.batch import Sample, collate

    samples = [Sample(tokenizer.encode(q, add_special_tokens=False), tokenizer.encode(" " + a, add_special_tokens=False),
                      [0.0] * len(tokenizer.encode(" " + a, add_special_tokens=False)))
               for q, a in zip(QUESTIONS, ANSWERS)]
    return collate(samples, tokenizer.pad_token_id)


# Llama is opt-in (-m slow) to keep `make test` inside its time budget; GLM runs by default.
@pytest.mark.parametrize("family", ["glm", pytest.param("llama", marks=pytest.mark.slow)])
def test_lora_sft_reward_ppo(family, tmp_path, ray_session):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    from batray.models.tokenizer import load_tokenizer
    from batray.ppo.train import response_logprobs

    stock = build_checkpoint(family, tmp_path / "stock")
    sft = _write(tmp_path / "sft.jsonl", [{"prompt": q, "response": a} for q, a in zip(QUESTIONS, ANSWERS)] * 4)
    prefs = _write(tmp_path / "prefs.jsonl", [{"prompt": q, "chosen": a, "rejected": w}
                                              for q, a, w in zip(QUESTIONS, ANSWERS, WRONG)] * 4)
    prompts = _write(tmp_path / "prompts.jsonl", [{"prompt": q} for q in QUESTIONS])
    run = tmp_path / "run"
    tokenizer = load_tokenizer(stock)
    probe = PolicyProbe(2, _probe_batch(tokenizer))
    argv = [
        "run", "--run-dir", str(run), f"model.path={stock}", f"sft.data={sft}", f"reward.data={prefs}",
        f"ppo.prompts={prompts}", "stages=[sft,reward,ppo]", "ray.num_cpus=4",
        "sft.max_steps=3", "sft.micro_batch_size=4", "sft.seq_len=64", "sft.log_every=1", "sft.eval_every=100",
        "sft.ckpt_every=100", "sft.optim.lr=0.01", *[f"sft.lora.{x}" for x in LORA],
        "reward.max_steps=2", "reward.micro_batch_size=4", "reward.seq_len=64", "reward.eval_every=100",
        "reward.ckpt_every=100", "reward.held_out_fraction=0.2", *[f"reward.lora.{x}" for x in LORA],
        "ppo.steps=2", "ppo.rollout_batch_size=4", "ppo.micro_batch_size=4", "ppo.sampling.max_new_tokens=4",
        "ppo.ptx_coef=0", "ppo.ckpt_every=10", "ppo.actor_lr=0.01", *[f"ppo.lora.{x}" for x in LORA],
    ]
    with hooks.on(hooks.PPO_STEP_DONE, probe):
        assert cli(argv) == 0

    ids = torch.tensor([tokenizer.encode(q + " " + a, add_special_tokens=False) for q, a in zip(QUESTIONS[:1], ANSWERS)])
    base = AutoModelForCausalLM.from_pretrained(stock).eval()
    for stage in ("sft", "ppo"):
        final = run / stage / "final"
        assert (final / "config.json").is_file() and not (final / "adapter_config.json").exists()  # plain HF
        assert (final / "adapter" / "adapter_config.json").is_file()
        assert json.loads((final / "batray.json").read_text())["lora"]["merged"] is True
    sft_final = run / "sft" / "final"
    merged = AutoModelForCausalLM.from_pretrained(sft_final).eval()
    at_run_time = PeftModel.from_pretrained(_resized(AutoModelForCausalLM.from_pretrained(stock), merged),
                                            str(sft_final / "adapter"))
    assert (_logits(merged, ids) - _logits(at_run_time.eval(), ids)).abs().max() < 1e-5  # merged = base + adapter
    vocab = base.config.vocab_size  # the base's own tokens (a stage may have added a pad token)
    assert (_logits(merged, ids)[..., :vocab] - _logits(base, ids)).abs().max() > 1e-3  # the adapters changed outputs

    reward_final = run / "reward" / "final"
    reward = AutoModelForSequenceClassification.from_pretrained(reward_final).eval()
    reward_base = _resized(AutoModelForSequenceClassification.from_pretrained(sft_final, num_labels=1), reward)
    reward_rt = PeftModel.from_pretrained(reward_base, str(reward_final / "adapter")).eval()
    assert (_logits(reward, ids) - _logits(reward_rt, ids)).abs().max() < 1e-5  # score head saved in full too

    # PPO: no reference actors; the policy's frozen base is the SFT model, bit for bit, after 2 updates
    assert "reference" not in probe.seen["roles"]
    sft_weights = dict(merged.named_parameters())
    frozen = probe.seen["frozen"]
    assert frozen and all(torch.equal(t, sft_weights[n].detach()) for n, t in frozen.items())
    want = response_logprobs(merged, probe.batch, micro_batch_size=4)
    assert (probe.seen["reference"] - want).abs().max() < 1e-5  # reference = SFT model's log-probs
    assert (probe.seen["policy"] - want).abs().max() > 1e-4  # the policy's adapters moved
    rows = [json.loads(line) for line in (run / "ppo" / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["rollout_logprob_diff_max"] < 1e-4  # the engines generated with the merged weights


def test_lora_resume_is_exact_under_zero2(tmp_path, ray_session):
    from faults import FailBeforeStep

    from batray.config import load_config
    from batray.metrics import read_metrics
    from batray.train.launcher import TrainingFailed
    from batray.train.sft import run_sft

    stock = build_checkpoint("glm", tmp_path / "stock")
    sft = _write(tmp_path / "sft.jsonl", [{"prompt": q, "response": a} for q, a in zip(QUESTIONS, ANSWERS)] * 8)
    overrides = ["sft.max_steps=6", "sft.micro_batch_size=2", "sft.seq_len=48", "sft.log_every=1",
                 "sft.eval_every=100", "sft.ckpt_every=3", "sft.optim.lr=0.01", "sft.scaling.num_workers=2",
                 "sft.deepspeed.zero_stage=2", "sft.lora.rank=4", "sft.lora.dropout=0.1", "data.held_out_fraction=0"]

    def run(out, fail=None):
        cfg = load_config(None, [f"run_dir={tmp_path}", *overrides])
        if fail is None:
            return run_sft(cfg, str(out), init_from=stock, data=sft)
        with hooks.on(hooks.TRAIN_BEFORE_STEP, fail):
            return run_sft(cfg, str(out), init_from=stock, data=sft)

    run(tmp_path / "whole")
    with pytest.raises(TrainingFailed):
        run(tmp_path / "cut", FailBeforeStep(5))
    ckpt = sorted((tmp_path / "cut" / "ray").glob("step_*/**/*model_states.pt"))
    assert ckpt, "no DeepSpeed checkpoint was written"
    full = (tmp_path / "whole" / "final" / "model.safetensors").stat().st_size
    assert all(p.stat().st_size < full / 4 for p in ckpt)  # the checkpoint holds the adapter, not the base
    run(tmp_path / "cut")
    whole = [r["loss"] for r in read_metrics(tmp_path / "whole")]
    cut = [r["loss"] for r in read_metrics(tmp_path / "cut")]
    assert len(whole) == 6 and cut == whole


class FinalWeights:
    """At the end of a Ray Train stage (a `TRAIN_FINAL` hook, in the workers, parameters gathered under ZeRO-3):
    rank 0 saves the LoRA model's frozen base (under the base model's names) and its trained tensors."""

    def __init__(self, folder: Path):
        self.folder = folder

    def __call__(self, *, stage, rank, model):
        from batray.models.lora import is_lora

        if rank != 0:
            return
        peft_model = next(m for m in model.modules() if is_lora(m))  # a reward model's is inside its module
        base = peft_model.get_base_model()
        frozen = {n.replace(".base_layer", ""): p.detach().clone() for n, p in base.named_parameters()
                  if not p.requires_grad and "original_module" not in n}
        trained = {n: p.detach().clone() for n, p in peft_model.named_parameters() if p.requires_grad}
        torch.save({"frozen": frozen, "trained": trained}, self.folder / f"{stage}.pt")


def _loads_without_peft(auto_class, folder: Path, monkeypatch):
    import sys

    with monkeypatch.context() as m:
        m.setitem(sys.modules, "peft", None)  # `import peft` fails inside
        return auto_class.from_pretrained(folder).eval()


# One Ray Train job per case (~30 s); ZeRO-2 runs in the resume test above. Reward under ZeRO-1 is opt-in (-m slow).
@pytest.mark.parametrize(("stage", "zero_stage"), [pytest.param("sft", 1, marks=pytest.mark.slow), ("sft", 3),
                                                   pytest.param("reward", 3, marks=pytest.mark.slow),
                                                   pytest.param("reward", 1, marks=pytest.mark.slow)])
def test_lora_under_zero(stage, zero_stage, tmp_path, ray_session, monkeypatch):
    """2 workers: the frozen base stays bit-identical (read in the workers, gathered under ZeRO-3), every
    adapter trains, and final/ is base + adapter merged (gathered from the shards), loadable without peft."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    from batray.config import load_config
    from batray.models.tokenizer import load_tokenizer
    from batray.reward.stage import run_reward
    from batray.train.sft import run_sft

    stock = build_checkpoint("glm", tmp_path / "stock")
    settings = ["max_steps=2", "micro_batch_size=2", "seq_len=48", "log_every=1", "eval_every=100", "ckpt_every=100",
                "optim.lr=0.01", "scaling.num_workers=2", f"deepspeed.zero_stage={zero_stage}",
                *[f"lora.{x}" for x in LORA]]
    cfg = load_config(None, [f"run_dir={tmp_path}", "data.held_out_fraction=0", "reward.held_out_fraction=0.2",
                             *[f"{stage}.{x}" for x in settings]])
    with hooks.on(hooks.TRAIN_FINAL, FinalWeights(tmp_path)):
        if stage == "sft":
            data = _write(tmp_path / "d.jsonl", [{"prompt": q, "response": a} for q, a in zip(QUESTIONS, ANSWERS)] * 4)
            final = Path(run_sft(cfg, str(tmp_path / stage), init_from=stock, data=data))
        else:  # from the causal LM with a fresh score head (modules_to_save)
            data = _write(tmp_path / "d.jsonl", [{"prompt": q, "chosen": a, "rejected": w}
                                                 for q, a, w in zip(QUESTIONS, ANSWERS, WRONG)] * 4)
            final = Path(run_reward(cfg, str(tmp_path / stage), init_from=stock, data=data))

    weights = torch.load(tmp_path / f"{stage}.pt")
    base = dict(AutoModelForCausalLM.from_pretrained(stock).named_parameters())
    frozen = {n: t for n, t in weights["frozen"].items() if n in base}
    assert len(frozen) > len(weights["frozen"]) - 2, sorted(set(weights["frozen"]) - set(base))  # but a score head
    assert all(torch.equal(t[:len(base[n])], base[n].detach()) for n, t in frozen.items())  # bit-identical
    lora_b = [t for n, t in weights["trained"].items() if "lora_B" in n]
    assert lora_b and all(t.abs().max() > 0 for t in lora_b)  # B starts at 0: every adapter trained
    assert not (final / "adapter_config.json").exists() and (final / "adapter" / "adapter_config.json").is_file()
    auto = AutoModelForCausalLM if stage == "sft" else AutoModelForSequenceClassification
    merged = _loads_without_peft(auto, final, monkeypatch)
    start = _resized(auto.from_pretrained(stock, **({"num_labels": 1} if stage == "reward" else {})), merged)
    at_run_time = PeftModel.from_pretrained(start, str(final / "adapter")).eval()
    tokenizer = load_tokenizer(stock)
    ids = torch.tensor([tokenizer.encode(QUESTIONS[0] + " " + ANSWERS[0], add_special_tokens=False)])
    assert (_logits(merged, ids) - _logits(at_run_time, ids)).abs().max() < 1e-5  # merged = base + adapter


def test_lora_ppo_policy_and_critic_under_zero3(tmp_path, ray_session):
    """Policy and critic as two ranks each, parameters partitioned by ZeRO-3: the reference (adapters disabled)
    is the base, the rollout engines receive the merged weights gathered from the shards, and final/ is merged."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from actors import kit
    from batray.config import load_config
    from batray.models.tokenizer import load_tokenizer
    from batray.ppo.driver import run_ppo
    from batray.ppo.train import response_logprobs

    stock = build_checkpoint("glm", tmp_path / "stock")
    prompts = _write(tmp_path / "prompts.jsonl", [{"prompt": q} for q in QUESTIONS])
    cfg = load_config(None, [
        f"run_dir={tmp_path}", "ppo.steps=2", "ppo.rollout_batch_size=4", "ppo.micro_batch_size=2",
        "ppo.sampling.max_new_tokens=4", "ppo.ptx_coef=0", "ppo.actor_lr=0.01", "ppo.critic_lr=0.01",
        "ppo.reward.kind=rule", f"ppo.reward.target_text={json.dumps(' '.join(ANSWERS))}", "ppo.ckpt_every=10",
        "ppo.deepspeed.zero_stage=3", "ppo.policy.num_actors=2", "ppo.critic.num_actors=2",
        "ppo.policy.num_cpus=0.5", "ppo.critic.num_cpus=0.5", *[f"ppo.lora.{x}" for x in LORA],
    ])
    tokenizer = load_tokenizer(stock)
    probe = PolicyProbe(2, _probe_batch(tokenizer))
    with hooks.on(hooks.PPO_STEP_DONE, probe):
        final = Path(run_ppo(cfg, str(tmp_path / "ppo"), policy_init=stock, reward_model=None, prompts=prompts,
                             kit=kit()))

    base = AutoModelForCausalLM.from_pretrained(stock).eval()
    stock_weights = dict(base.named_parameters())
    frozen = probe.seen["frozen"]
    assert frozen and all(torch.equal(t[:len(stock_weights[n])], stock_weights[n].detach()) for n, t in frozen.items())
    want = response_logprobs(base, probe.batch, micro_batch_size=4)
    assert (probe.seen["reference"] - want).abs().max() < 1e-5  # reference = the base, gathered from the shards
    assert (probe.seen["policy"] - want).abs().max() > 1e-4  # the adapters moved
    rows = [json.loads(line) for line in (tmp_path / "ppo" / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(r["rollout_logprob_diff_max"] < 1e-4 for r in rows)  # engines: merged weights
    assert all(0 < r["critic_grad_norm"] < float("inf") and r["value_loss"] == r["value_loss"] for r in rows)  # trained

    merged = AutoModelForCausalLM.from_pretrained(final).eval()
    at_run_time = PeftModel.from_pretrained(_resized(AutoModelForCausalLM.from_pretrained(stock), merged),
                                            str(final / "adapter")).eval()
    ids = torch.tensor([tokenizer.encode(QUESTIONS[0] + " " + ANSWERS[0], add_special_tokens=False)])
    assert (_logits(merged, ids) - _logits(at_run_time, ids)).abs().max() < 1e-5


def test_expand_refuses_an_adapter_folder(tmp_path, capsys):
    from transformers import AutoModelForCausalLM

    from batray.config.base import LoraConfig
    from batray.models.lora import apply_lora

    stock = build_checkpoint("llama", tmp_path / "stock")
    adapter = tmp_path / "adapter"
    apply_lora(AutoModelForCausalLM.from_pretrained(stock), LoraConfig(rank=2), base=stock).save_pretrained(adapter)
    assert cli(["expand", str(adapter), str(tmp_path / "wide"), "--hidden-size", "128", f"--run-dir={tmp_path}"]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert "LoRA adapter" in err[-1] and "merge" in err[-1]
    assert not (tmp_path / "wide").exists()


def test_lora_config_keys():
    from batray.config import load_config
    from batray.errors import ConfigError

    cfg = load_config(None, ["sft.lora.rank=8", "ppo.lora.target_modules=[q_proj,v_proj]"])
    assert cfg.sft.lora.rank == 8 and cfg.sft.lora.merge and cfg.reward.lora is None
    assert cfg.ppo.lora.target_modules == ["q_proj", "v_proj"]
    with pytest.raises(ConfigError, match="sft.lora.rnk: unknown key"):
        load_config(None, ["sft.lora.rnk=8"])
