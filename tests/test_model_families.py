"""Stock model families through batray's model layer: loading, added tokens, chat format, stop tokens.

Tiny random checkpoints of Llama (Llama-3 template, `<|eot_id|>`), Qwen2 (ChatML, tied embeddings),
Mistral (`[INST]`, `</s>`), GPT-2 (no pad token, no template: BatGPT's format) and GLM (`batgpt-tiny`
with batray's own tokenizer), each with its own tokenizer (`tests/model_zoo.py`). Everything a
stage does with a model is checked against what plain transformers does with the saved folder.
"""

from __future__ import annotations

import json

import pytest
import torch
from model_zoo import END_OF_TURN, FAMILIES, TIED, build_checkpoint
from transformers import AutoModelForCausalLM, AutoTokenizer

from batray.data.direction import IGNORE_INDEX
from batray.errors import BatrayError
from batray.models.chat import (
    ChatTemplateError,
    SampleError,
    chat_prompt_ids,
    chat_sample,
    end_of_turn_ids,
    stop_token_ids,
    turn_content,
    turn_suffix,
)
from batray.models.loading import load_model_and_tokenizer, prepare_checkpoint
from batray.models.tokenizer import CHAT_TEMPLATE, L2R_TOKEN, R2L_TOKEN, direction_ids

# What closes an assistant turn in each family's rendering, as text after the content.
TURN_END = {"llama": "<|eot_id|>", "qwen2": "<|im_end|>", "mistral": "</s>", "gpt2": "\n\n<eop>", "glm": "\n\n<eop>"}
# The generation prompt each family's template ends a prompt with.
GEN_PROMPT = {"llama": "<|start_header_id|>assistant<|end_header_id|>\n\n", "qwen2": "<|im_start|>assistant\n",
              "mistral": " [/INST]", "gpt2": "\n\n[Assistant] ", "glm": "\n\n[Assistant] "}
OWN_TEMPLATE = {"llama", "qwen2", "mistral", "glm"}

ONE_TURN = [{"role": "user", "content": "What is the capital of Veloria?"}, {"role": "assistant", "content": "Marnet."}]
TWO_TURNS = ONE_TURN + [{"role": "user", "content": "Who is Ada Quill?"},
                        {"role": "assistant", "content": "A cartographer."}]


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    root = tmp_path_factory.mktemp("zoo")
    return {f: build_checkpoint(f, root / f) for f in FAMILIES}


def trained_segments(ids: list[int], labels: list[int]) -> list[list[int]]:
    segments, current = [], []
    for t, lab in zip(ids, labels):
        if lab != IGNORE_INDEX:
            assert lab == t
            current.append(t)
        elif current:
            segments.append(current)
            current = []
    return segments + ([current] if current else [])


def eot_id(family: str, tokenizer) -> int:
    return tokenizer.convert_tokens_to_ids(END_OF_TURN[family] or "<eop>")


@pytest.mark.parametrize("family", FAMILIES)
def test_loads_keeping_its_tokenizer_and_template(zoo, family):
    plain = AutoTokenizer.from_pretrained(zoo[family])
    model, tok = load_model_and_tokenizer(zoo[family])
    assert type(model).__name__.lower().startswith(family if family != "gpt2" else "gpt2lmhead")
    rows = model.get_input_embeddings().num_embeddings
    if family in OWN_TEMPLATE:  # fine-tuning a stock model leaves its tokenizer as it is
        assert tok.chat_template == plain.chat_template and len(tok) == len(plain) == rows
        assert tok.bos_token == plain.bos_token
    else:  # no template of its own: BatGPT's format, whose two tokens are added and the embeddings grown
        assert tok.chat_template == CHAT_TEMPLATE and len(tok) == len(plain) + 2 == rows
    assert tok.pad_token is not None  # EOS when the model has none (GPT-2, Llama, Mistral): no new token
    assert (model.get_output_embeddings().weight is model.get_input_embeddings().weight) == TIED[family]
    assert end_of_turn_ids(tok) == [eot_id(family, tok)]
    ids = chat_prompt_ids(tok, TWO_TURNS[:3])
    with torch.no_grad():
        assert model(torch.tensor([ids])).logits.shape[-1] >= len(tok)


@pytest.mark.parametrize("family", FAMILIES)
def test_direction_tokens_grow_embeddings_and_head(zoo, family, caplog):
    before = AutoModelForCausalLM.from_pretrained(zoo[family]).get_input_embeddings().num_embeddings
    with caplog.at_level("INFO", logger="batray"):
        model, tok = load_model_and_tokenizer(zoo[family], directions=True)
    l2r, r2l = direction_ids(tok)
    emb, head = model.get_input_embeddings(), model.get_output_embeddings()
    assert emb.num_embeddings == head.weight.shape[0] == len(tok) and max(l2r, r2l) < len(tok)
    assert (head.weight is emb.weight) == TIED[family]  # a tied head stays tied, an untied one grew too
    if family != "glm":  # batray's own tokenizer has them already
        assert len(tok) > before and "embeddings resized" in caplog.text
    assert tok.bos_token == L2R_TOKEN and tok("Marnet")["input_ids"][0] == l2r
    with torch.no_grad():
        logits = model(torch.tensor([[l2r, *tok("Marnet", add_special_tokens=False)["input_ids"], r2l]])).logits
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("conversation", [ONE_TURN, TWO_TURNS], ids=["one_turn", "two_turns"])
@pytest.mark.parametrize("loss_on", ["last", "all"])
def test_sft_masks_are_exactly_the_assistant_turns(zoo, family, conversation, loss_on):
    _, tok = load_model_and_tokenizer(zoo[family])
    ids, labels = chat_sample(tok, conversation, loss_on)
    answers = [m["content"] for m in conversation if m["role"] == "assistant"]
    expected = answers if loss_on == "all" else answers[-1:]
    segments = trained_segments(ids, labels)
    assert [tok.decode(s) for s in segments] == [a + TURN_END[family] for a in expected]
    for segment, answer in zip(segments, expected):  # the content's own tokens, then the end of turn
        assert segment == tok(answer + TURN_END[family], add_special_tokens=False)["input_ids"]
        assert segment[-1] == eot_id(family, tok)
    # The last turn's prompt is exactly what a generation request (ours or plain transformers') sends.
    first = max(i for i, lab in enumerate(labels) if lab != IGNORE_INDEX) + 1 - len(segments[-1])
    prompt = conversation[:-1]
    assert ids[:first] == chat_prompt_ids(tok, prompt) or loss_on == "all"  # "all" splits the history at turns
    plain = AutoTokenizer.from_pretrained(zoo[family]) if family in OWN_TEMPLATE else tok
    if loss_on == "last":
        assert ids[:first] == plain.apply_chat_template(prompt, add_generation_prompt=True)["input_ids"]


@pytest.mark.parametrize("family", FAMILIES)
def test_prompts_end_with_the_generation_prompt(zoo, family):
    from batray.ppo.data import render_prompt

    _, tok = load_model_and_tokenizer(zoo[family])
    question = "What is the capital of Veloria?"
    ids = render_prompt(tok, question, "chat")
    assert tok.decode(ids).endswith(GEN_PROMPT[family])
    assert ids == chat_prompt_ids(tok, [{"role": "user", "content": question}])
    assert render_prompt(tok, question, "raw") == tok(question)["input_ids"]  # BOS as the tokenizer adds it


@pytest.mark.parametrize("family", FAMILIES)
def test_reward_reads_the_end_of_turn_token(zoo, family):
    from batray.reward.data import collate_triples, encode_response
    from batray.reward.model import build_reward_model

    model, tok = build_reward_model(zoo[family], seed=0)
    assert tok.pad_token_id not in stop_token_ids(tok)  # the head reads the last non-pad token
    assert model.config.pad_token_id == tok.pad_token_id and model.get_input_embeddings().num_embeddings == len(tok)
    context = ONE_TURN[:1]
    ids, dropped, cut = encode_response(tok, context, "Marnet.", max_len=512)
    assert ids[-1] == eot_id(family, tok) and not dropped and not cut
    # PPO scores the prompt's ids followed by the sampled response up to its stop token: the same ids.
    response = tok("Marnet." + TURN_END[family], add_special_tokens=False)["input_ids"]
    assert ids == chat_prompt_ids(tok, context) + response
    other, _, _ = encode_response(tok, context, "A cartographer in Marnet, I think.", max_len=512)
    from batray.reward.data import EncodedTriple

    batch = collate_triples([EncodedTriple("p", ids, other, -1)], tok.pad_token_id)
    with torch.no_grad():
        rewards = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, 0]
        alone = model(input_ids=torch.tensor([ids])).logits[0, 0]
    assert torch.allclose(rewards[0], alone, atol=1e-5)  # padding does not move where the head reads


def overfit(model, tokenizer, conversation, steps: int = 80):
    """Teach a random model one answer (and where it stops), so generation has something to stop at."""
    ids, labels = chat_sample(tokenizer, conversation)
    x, y = torch.tensor([ids]), torch.tensor([labels])
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    model.eval()  # no dropout (GPT-2 has some): the same steps every run
    for _ in range(steps):
        loss = model(input_ids=x, labels=y).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model


@pytest.mark.parametrize("family", FAMILIES)
def test_generation_stops_at_its_end_of_turn_inside_and_outside_batray(zoo, family, tmp_path):
    from batray.checkpoint import save_hf_checkpoint
    from batray.rollout.engine import HFRolloutEngine, SamplingParams

    torch.manual_seed(0)
    model, tok = load_model_and_tokenizer(zoo[family])
    overfit(model, tok, ONE_TURN)
    prompt = chat_prompt_ids(tok, ONE_TURN[:1])
    done = HFRolloutEngine(model, tok).generate([prompt], SamplingParams(temperature=0, max_new_tokens=24))[0]
    assert done.finish_reason == "stop" and done.token_ids[-1] == eot_id(family, tok)
    assert "<" not in done.text  # special tokens are not part of the text

    out = tmp_path / "sft"
    save_hf_checkpoint(model, tok, out, stage="sft")
    plain_tok, plain = AutoTokenizer.from_pretrained(out), AutoModelForCausalLM.from_pretrained(out)
    original = AutoTokenizer.from_pretrained(zoo[family]).chat_template
    assert plain_tok.chat_template == (original if family in OWN_TEMPLATE else CHAT_TEMPLATE)
    eos = json.loads((out / "generation_config.json").read_text())["eos_token_id"]
    assert eot_id(family, tok) in (eos if isinstance(eos, list) else [eos])
    enc = plain_tok.apply_chat_template(ONE_TURN[:1], add_generation_prompt=True, return_tensors="pt")
    assert enc["input_ids"][0].tolist() == prompt
    new = plain.generate(**enc, max_new_tokens=24, do_sample=False)[0, len(prompt):].tolist()
    assert new == done.token_ids  # plain generate stops at the same token, from generation_config.json


@pytest.mark.parametrize("family", FAMILIES)
def test_a_generated_turn_as_content_renders_back_to_its_tokens(zoo, family):
    """What a chat model generated, decoded, is the message content: rendered again in a conversation it
    gives the same tokens. BatGPT's template writes "\n\n" before `<eop>`; kept in the content, a pair's
    sampled response would carry it twice and differ from a reference answer in whitespace alone."""
    _, tok = load_model_and_tokenizer(zoo[family])
    assert turn_suffix(tok) == TURN_END[family].replace(tok.convert_ids_to_tokens(eot_id(family, tok)), "")
    prompt = chat_prompt_ids(tok, ONE_TURN[:1])
    ids, _ = chat_sample(tok, ONE_TURN)
    end = ids.index(eot_id(family, tok), len(prompt))
    text = tok.decode(ids[len(prompt):end + 1], skip_special_tokens=True)  # what a rollout engine decodes
    content = turn_content(tok, text, "stop")
    assert content.strip() == "Marnet." and not content.endswith("\n")
    assert chat_sample(tok, [ONE_TURN[0], {"role": "assistant", "content": content}])[0][:end + 1] == ids[:end + 1]
    assert turn_content(tok, text, "length") == text  # cut off by the token limit: nothing to take away


@pytest.mark.parametrize("family", FAMILIES)
def test_batray_checkpoint_reads_the_same_with_plain_autotokenizer(zoo, family, tmp_path):
    """After an Eq. 1 stage the checkpoint's own tokenizer puts <|l2r|> first: plain transformers feeds
    the model what batray feeds it, for plain text, Eq. 1's left-to-right samples and chat prompts."""
    import numpy as np

    from batray.checkpoint import save_hf_checkpoint
    from batray.eval.scoring import LocalBackend
    from batray.ppo.data import render_prompt
    from batray.train.lm_data import corpus_blocks

    model, tok = load_model_and_tokenizer(zoo[family], directions=True)
    out = tmp_path / "pretrained"
    save_hf_checkpoint(model, tok, out, stage="pretrain")
    plain = AutoTokenizer.from_pretrained(out)
    assert AutoModelForCausalLM.from_pretrained(out).get_input_embeddings().num_embeddings == len(plain)
    text = "Marnet is the capital of Veloria."
    expected = plain(text)["input_ids"]
    l2r = plain.convert_tokens_to_ids(L2R_TOKEN)
    assert expected[0] == l2r and expected.count(l2r) == 1

    _, ours = load_model_and_tokenizer(str(out))
    block = corpus_blocks({"text": np.asarray([text], dtype=object)}, tokenizer=ours, seq_len=64, direction="l2r",
                          r2l_share=0.0, held_out_fraction=0.0, split="train", seed=0)
    segment = block["input_ids"][0][: len(expected) + 1].tolist()
    assert segment == expected + [ours.eos_token_id]  # Eq. 1's l2r sample: the plain reading, then EOS
    assert render_prompt(ours, text, "raw") == expected  # PPO / pairs raw prompts
    backend = LocalBackend(str(out), model=model, tokenizer=ours)
    assert backend.encode(text) == expected  # eval
    assert ours(text)["input_ids"] == expected  # serve's /v1/completions encodes prompts this way
    messages = ONE_TURN[:1]
    assert chat_prompt_ids(ours, messages) == plain.apply_chat_template(messages, add_generation_prompt=True)["input_ids"]
    assert ours.convert_tokens_to_ids(R2L_TOKEN) == plain.convert_tokens_to_ids(R2L_TOKEN)  # r2l via batray's API


def test_prepare_checkpoint_writes_once_and_only_when_needed(zoo, tmp_path):
    assert prepare_checkpoint(zoo["qwen2"], str(tmp_path / "same")) == zoo["qwen2"]  # nothing to change
    dst = prepare_checkpoint(zoo["qwen2"], str(tmp_path / "bidir"), directions=True)
    assert dst == str(tmp_path / "bidir")
    plain = AutoTokenizer.from_pretrained(dst)
    assert plain("x")["input_ids"][0] == plain.convert_tokens_to_ids(L2R_TOKEN)
    assert AutoModelForCausalLM.from_pretrained(dst).get_input_embeddings().num_embeddings == len(plain)
    assert prepare_checkpoint(zoo["qwen2"], dst, directions=True) == dst  # complete: reused


def test_chat_template_choice(zoo, tmp_path):
    from batray.config.base import ModelConfig

    _, tok = load_model_and_tokenizer(zoo["llama"], chat_template="batgpt")
    text = tok.apply_chat_template(ONE_TURN, tokenize=False)
    assert text == "<|begin_of_text|>[Turn 1]\n\n[User] What is the capital of Veloria?\n\n[Assistant] Marnet.\n\n<eop>"
    assert end_of_turn_ids(tok) == [tok.convert_tokens_to_ids("<eop>")]
    with pytest.raises(ChatTemplateError, match="has no chat template"):
        load_model_and_tokenizer(zoo["gpt2"], chat_template="model")
    jinja = tmp_path / "chatml.jinja"
    jinja.write_text("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}<|endoftext|>{% endfor %}"
                     "{% if add_generation_prompt %}assistant: {% endif %}")
    _, tok = load_model_and_tokenizer(zoo["gpt2"], chat_template=str(jinja))
    assert chat_sample(tok, ONE_TURN)[0][-1] == tok.eos_token_id
    with pytest.raises(ChatTemplateError, match="no such file"):
        load_model_and_tokenizer(zoo["gpt2"], chat_template=str(tmp_path / "missing.jinja"))
    with pytest.raises(ValueError, match="chat_template must be batgpt, model or a path"):
        ModelConfig(chat_template="chatml")


def test_prefix_unstable_template_is_refused(zoo):
    """A template that renders earlier turns differently (like reasoning templates that drop old
    thinking) cannot be masked: one clear error, not wrong labels."""
    _, tok = load_model_and_tokenizer(zoo["qwen2"])
    tok.chat_template = ("{% for m in messages %}{% if m['role'] == 'assistant' and not loop.last %}[old]"
                         "{% else %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endif %}{% endfor %}"
                         "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    with pytest.raises(ChatTemplateError, match="not prefix-stable"):
        chat_sample(tok, TWO_TURNS)


def test_template_that_ends_no_turn_learns_the_next_turn_token(zoo):
    """GLM-4's layout: a turn ends where the next role token starts, so the model learns to emit it."""
    _, tok = load_model_and_tokenizer(zoo["gpt2"])
    tok.add_tokens(["<|user|>", "<|assistant|>"], special_tokens=True)
    tok.chat_template = ("{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}{% endfor %}"
                         "{% if add_generation_prompt %}<|assistant|>\n{% endif %}")
    user = tok.convert_tokens_to_ids("<|user|>")
    assert end_of_turn_ids(tok) == [user]
    for loss_on in ("last", "all"):
        ids, labels = chat_sample(tok, TWO_TURNS, loss_on)
        segments = trained_segments(ids, labels)
        assert all(s[-1] == user for s in segments) and ids[-1] == user  # appended after the final turn
        assert [tok.decode(s[:-1]) for s in segments] == (["Marnet.", "A cartographer."] if loss_on == "all"
                                                          else ["A cartographer."])


def test_template_refusing_a_conversation_is_a_row_error(zoo):
    _, tok = load_model_and_tokenizer(zoo["mistral"])  # Mistral's template refuses system messages
    with pytest.raises(SampleError, match="the chat template refuses this conversation: Conversation roles"):
        chat_sample(tok, [{"role": "system", "content": "Be brief."}, *ONE_TURN])


def test_a_model_batray_cannot_handle_is_one_line(tmp_path):
    from transformers import CohereConfig, CohereForCausalLM, T5Config, T5ForConditionalGeneration

    from batray.reward.model import build_reward_model

    T5ForConditionalGeneration(T5Config(vocab_size=64, d_model=16, d_ff=32, num_layers=1, num_heads=2,
                                        d_kv=8)).save_pretrained(tmp_path / "t5")
    CohereForCausalLM(CohereConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                   num_attention_heads=2, num_key_value_heads=2)).save_pretrained(tmp_path / "cohere")
    (tmp_path / "odd").mkdir()
    (tmp_path / "odd" / "config.json").write_text(json.dumps({"model_type": "no-such-model"}))
    for load, folder, names in ((load_model_and_tokenizer, "t5", "model type 't5'.*AutoModelForCausalLM"),
                                (build_reward_model, "cohere", "model type 'cohere'.*AutoModelForSequenceClassification"),
                                (load_model_and_tokenizer, "odd", "no-such-model")):
        with pytest.raises(BatrayError, match=names) as e:
            load(str(tmp_path / folder))
        assert "\n" not in str(e.value)


def test_stage_tokenizer_and_workers_models_agree_for_a_stock_model(zoo, tmp_path):
    """What a training stage does with a stock model: the driver prepares and saves the tokenizer
    (Eq. 1 stage: direction tokens), each Ray Train worker loads the model resized to it, identically."""
    from batray.config import RecipeConfig
    from batray.train.stage import prepare_tokenizer
    from batray.train.task import ModelSource

    cfg = RecipeConfig.model_validate({"run_dir": str(tmp_path), "model": {"path": zoo["mistral"]}})
    tok, tok_dir = prepare_tokenizer(cfg, str(tmp_path / "pretrain"), None, zoo["mistral"], directions=True)
    assert tok("x")["input_ids"][0] == tok.convert_tokens_to_ids(L2R_TOKEN)
    source = ModelSource(path=zoo["mistral"], seed=3, vocab_size=len(tok))
    a, b = source.build(), source.build()
    assert a.get_input_embeddings().num_embeddings == a.get_output_embeddings().weight.shape[0] == len(tok)
    assert torch.equal(a.get_input_embeddings().weight, b.get_input_embeddings().weight)  # same rows on every worker
    again, _ = prepare_tokenizer(cfg, str(tmp_path / "pretrain"), None, zoo["mistral"])  # a resumed run
    assert len(again) == len(tok) and again.bos_token == L2R_TOKEN
    reward_tok, _ = prepare_tokenizer(cfg, str(tmp_path / "reward"), None, zoo["mistral"], reward=True)
    assert reward_tok.pad_token_id not in stop_token_ids(reward_tok)  # Mistral pads with </s>, its end of turn
