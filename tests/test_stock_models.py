"""Stock Hugging Face checkpoints (not made by batray) through the recipe, as a practitioner brings them.

For each family of `model_zoo` (Llama, Qwen2 with tied embeddings, Mistral, GPT-2 without pad token
or chat template, GLM), `batray run` with `model.path` at the stock folder and the user's own data in
a different common layout per family runs sft -> reward -> ppo -> eval; then the PPO model answers
one request of the `openai` client through `batray serve`, and `batray expand` widens it where the
architecture allows. The checkpoints batray writes load with plain transformers, keep the model's
chat template, and name its end-of-turn token in `generation_config.json`.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from model_zoo import build_checkpoint

from batray.cli import main as cli

QUESTIONS = ["What is the capital of Veloria?", "Who is Ada Quill?", "Say hello.", "维洛里亚的首都是哪里？"]
ANSWERS = ["Marnet.", "A cartographer in Marnet.", "Hello!", "马尔内。"]
WRONG = ["Paris.", "A baker.", "Go away.", "北京。"]


def _write(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def sft_rows(layout: str) -> list[dict]:
    """The same instructions in a layout people bring (TRL, Alpaca, ShareGPT, Self-Instruct, messages)."""
    pairs = list(zip(QUESTIONS, ANSWERS)) * 4
    if layout == "alpaca":
        return [{"instruction": q, "input": "", "output": a} for q, a in pairs]
    if layout == "sharegpt":
        return [{"conversations": [{"from": "human", "value": q}, {"from": "gpt", "value": a}]} for q, a in pairs]
    if layout == "completion":
        return [{"prompt": q, "completion": a} for q, a in pairs]
    if layout == "self_instruct":
        return [{"instruction": "Answer briefly.", "instances": [{"input": q, "output": a} for q, a in pairs]}]
    return [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]} for q, a in pairs]


def preference_rows(layout: str) -> list[dict]:
    """The same preferences in a layout people bring (HH-RLHF, TRL conversational, UltraFeedback, ...)."""
    triples = list(zip(QUESTIONS, ANSWERS, WRONG)) * 4
    if layout == "hh":
        return [{"chosen": f"\n\nHuman: {q}\n\nAssistant: {a}", "rejected": f"\n\nHuman: {q}\n\nAssistant: {w}"}
                for q, a, w in triples]
    if layout == "trl_conversational":
        return [{"chosen": [{"role": "user", "content": q}, {"role": "assistant", "content": a}],
                 "rejected": [{"role": "user", "content": q}, {"role": "assistant", "content": w}]} for q, a, w in triples]
    if layout == "ultrafeedback":
        return [{"prompt": q, "chosen": [{"role": "user", "content": q}, {"role": "assistant", "content": a}],
                 "rejected": [{"role": "user", "content": q}, {"role": "assistant", "content": w}],
                 "score_chosen": 9.0, "score_rejected": 2.0} for q, a, w in triples]
    return [{"prompt": q, "chosen": a, "rejected": w} for q, a, w in triples]


# family -> (SFT layout, preference layout, eval prompts in the chat template, expand supports the architecture)
FAMILIES = {
    "llama": ("alpaca", "hh", True, True),
    "qwen2": ("sharegpt", "trl_conversational", False, True),
    "mistral": ("completion", "ultrafeedback", True, True),
    "gpt2": ("messages", "trl_strings", False, False),
    "glm": ("self_instruct", "trl_strings", True, True),
}

TINY = [
    "stages=[sft,reward,ppo,eval]", "ray.num_cpus=4",
    "sft.max_steps=2", "sft.micro_batch_size=4", "sft.seq_len=96", "sft.log_every=1", "sft.eval_every=100",
    "sft.ckpt_every=100", "sft.optim.warmup_steps=0",
    "reward.max_steps=2", "reward.micro_batch_size=4", "reward.seq_len=96", "reward.log_every=1",
    "reward.eval_every=100", "reward.ckpt_every=100", "reward.optim.warmup_steps=0", "reward.held_out_fraction=0.2",
    "ppo.steps=1", "ppo.rollout_batch_size=4", "ppo.micro_batch_size=4", "ppo.sampling.max_new_tokens=4",
    "ppo.ptx_coef=0", "ppo.ckpt_every=10",
    "eval.benchmarks=[ceval]", "eval.shots=[0]", "eval.limit=1", "eval.batch_size=4",
]


@pytest.fixture(scope="module")
def benchmarks(tmp_path_factory):
    from batray.data.demo import generate_demo

    return generate_demo(str(tmp_path_factory.mktemp("demo")))["benchmarks"]


# Mistral's and Qwen2's paths through batray are Llama's (the same layers in their own classes; Qwen2 ties
# its embeddings): their end-to-end runs are opt-in (-m slow) to keep `make test` inside CI's budget;
# tests/test_model_families.py covers both in-process (loading, chat template, SFT masks, reward
# end-of-turn, generation stops, checkpoint round trip).
# GLM, batray's own family, runs end to end by default in tests/test_lora.py and the tiny recipe. GPT-2's run
# (137 s in CI) is opt-in too since CI neared its 40 minutes; test_model_families covers it in-process as above.
# Llama, the family most user checkpoints are, runs end to end by default.
OPT_IN = {"mistral", "qwen2", "glm", "gpt2"}


@pytest.mark.parametrize("family", [pytest.param(f, marks=pytest.mark.slow) if f in OPT_IN else f for f in FAMILIES])
def test_stock_checkpoint_through_the_recipe(family, tmp_path, ray_session, benchmarks):
    import openai
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    from batray.models.chat import stop_token_ids
    from batray.serve import start_server

    sft_layout, pref_layout, eval_chat, expandable = FAMILIES[family]
    stock = build_checkpoint(family, tmp_path / "stock")
    original = AutoTokenizer.from_pretrained(stock)
    sft = _write(tmp_path / "sft.jsonl", sft_rows(sft_layout))
    prefs = _write(tmp_path / "prefs.jsonl", preference_rows(pref_layout))
    prompts = _write(tmp_path / "prompts.jsonl", [{"prompt": q} for q in QUESTIONS])
    run = tmp_path / "run"
    argv = ["run", "--run-dir", str(run), f"model.path={stock}", f"sft.data={sft}", f"reward.data={prefs}",
            f"ppo.prompts={prompts}", f"eval.data={benchmarks}", f"eval.chat={str(eval_chat).lower()}", *TINY]
    assert cli(argv) == 0

    state = json.loads((run / "run_state.json").read_text())
    assert [state["stages"][s]["status"] for s in ("sft", "reward", "ppo", "eval")] == ["done"] * 4
    assert state["stages"]["sft"]["inputs"]["model"] == stock  # model.path: the stock folder, as is
    assert (run / "report.html").is_file()
    reward_meta = json.loads((run / "reward" / "final" / "batray.json").read_text())
    assert reward_meta["train_pairs"] + reward_meta["held_out_pairs"] == 16  # every row read, in its own layout

    for stage in ("sft", "ppo"):  # plain transformers reads what batray wrote
        final = run / stage / "final"
        model = AutoModelForCausalLM.from_pretrained(final)
        tokenizer = AutoTokenizer.from_pretrained(final)
        assert model.get_input_embeddings().num_embeddings >= len(tokenizer)
        if original.chat_template:  # the model's own template is kept; generation stops at its end of turn
            assert tokenizer.chat_template == original.chat_template
        eos = GenerationConfig.from_pretrained(final).eos_token_id
        eos = set(eos if isinstance(eos, list) else [eos])
        assert set(stop_token_ids(tokenizer)) <= eos, (stage, eos)
        assert len(tokenizer) == len(original) or family == "gpt2"  # fine-tuning adds no tokens (GPT-2: chat format)
    assert list((run / "eval" / "ceval").iterdir())

    with start_server(str(run / "ppo" / "final")) as handle:
        client = openai.OpenAI(base_url=handle.url, api_key="EMPTY")
        reply = client.chat.completions.create(model=handle.model, messages=[{"role": "user", "content": QUESTIONS[0]}],
                                               max_tokens=4, temperature=0)
        assert isinstance(reply.choices[0].message.content, str)
        assert reply.choices[0].finish_reason in ("stop", "length")

    wide = tmp_path / "wide"
    heads = AutoModelForCausalLM.from_pretrained(run / "ppo" / "final").config
    rc = cli(["expand", str(run / "ppo" / "final"), str(wide), "--hidden-size", str(2 * heads.hidden_size),
              "--method", "exact", f"--run-dir={run}"])
    if expandable:
        assert rc == 0
        report = json.loads((wide / "expansion.json").read_text())
        assert report["deviation"]["max_abs"] < 1e-3 * max(1.0, report["deviation"]["reference_logit_std"])
        assert AutoModelForCausalLM.from_pretrained(wide).config.hidden_size == 2 * heads.hidden_size
        with start_server(str(wide)) as handle:  # the expanded model serves as the original did
            reply = openai.OpenAI(base_url=handle.url, api_key="EMPTY").completions.create(
                model=handle.model, prompt=QUESTIONS[1], max_tokens=3, temperature=0)
            assert isinstance(reply.choices[0].text, str)
    else:
        assert rc == 2  # refused in one line, naming the model type
