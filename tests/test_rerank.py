"""Backward scoring and bidirectional reranking (issue 11) on a tiny checkpoint: scores equal a
direct computation on the (reversed) tokens, weight 0 is exactly forward-only best-of-N, and the
`rerank` field of `batray serve`, `batray chat --rerank` and the eval `rerank` mode use them."""

from __future__ import annotations

import io

import openai
import pytest
import torch

from batray.bidirectional import BidirectionalScorer, Reranker, best_index, rank, rerank_score
from batray.config import RerankConfig
from batray.models.presets import load_causal_lm
from batray.models.tokenizer import load_tokenizer
from batray.rollout.engine import SamplingParams

QUESTIONS = ["What is the capital of Veloria?", "维洛里亚的首都是哪里？", "Who is Ada Quill?"]


@pytest.fixture(scope="module")
def model_tok(tiny_checkpoint):
    torch.manual_seed(0)
    return load_causal_lm(tiny_checkpoint).eval(), load_tokenizer(tiny_checkpoint)


def chat_ids(tok, question: str) -> list[int]:
    text = tok.apply_chat_template([{"role": "user", "content": question}], tokenize=False)
    return tok(text, add_special_tokens=False)["input_ids"]


@torch.no_grad()
def direct_logprob(model, seq: list[int], start: int = 1) -> float:
    """sum_{i >= start} log p(seq_i | seq_<i), one unpadded sequence at a time."""
    logp = model(input_ids=torch.tensor([seq])).logits[0].float().log_softmax(-1)
    return sum(float(logp[i - 1, seq[i]]) for i in range(start, len(seq)))


def test_backward_and_forward_equal_a_direct_computation(model_tok):
    model, tok = model_tok
    l2r, r2l, eos = (tok.convert_tokens_to_ids(t) for t in ("<|l2r|>", "<|r2l|>", "<|endoftext|>"))
    answers = ["The capital of Veloria is Marnet.", "马尔内。", "I do not know"]
    pairs = [(chat_ids(tok, q), tok.encode(a, add_special_tokens=False)) for q, a in zip(QUESTIONS, answers)]
    pairs.append((pairs[0][0], tok.encode("Marnet", add_special_tokens=False)))  # a prompt seen twice
    scores = BidirectionalScorer(model, tok, batch_size=3).score(pairs)  # padded batches of mixed lengths
    for (x, y), s in zip(pairs, scores):
        assert x[0] == l2r
        body = x[1:] + y  # the text's tokens, left to right, without the direction marker
        reversed_joint = [r2l, *body[::-1], eos]
        reversed_prompt = [r2l, *x[1:][::-1], eos]
        assert s.backward_joint == pytest.approx(direct_logprob(model, reversed_joint), abs=1e-3)
        assert s.backward_prompt == pytest.approx(direct_logprob(model, reversed_prompt), abs=1e-3)
        assert s.backward == pytest.approx(s.backward_joint - s.backward_prompt, abs=1e-6)
        assert s.forward == pytest.approx(direct_logprob(model, x + y, start=len(x)), abs=1e-3)
        assert s.n_answer == len(y) and s.backward_per_token == pytest.approx(s.backward / len(y))
    # the backward score is not the forward one in disguise
    assert any(abs(s.forward - s.backward) > 1e-2 for s in scores)


def test_weight_zero_is_forward_only_best_of_n(model_tok):
    model, tok = model_tok
    reranker = Reranker(model, tok, batch_size=16)
    prompts = [chat_ids(tok, q) for q in QUESTIONS[:2]]
    params = SamplingParams(temperature=1.0, max_new_tokens=8, seed=7)
    samples = reranker.sample(prompts, 6, params)  # one batched generate call
    scores = reranker.score(prompts, samples)
    for comps, ss in zip(samples, scores):
        assert len({tuple(c.token_ids) for c in comps}) > 1  # distinct candidates to choose from
        # forward-only best-of-N from the sampler's own log-probabilities, length-normalized
        sampler_best = best_index([sum(c.logprobs) / len(c.logprobs) for c in comps])
        for c, s in zip(comps, ss):
            assert s.forward == pytest.approx(sum(c.logprobs), abs=1e-3)
        plain = rank(comps, ss, weight=0.0)
        assert plain.best_index == sampler_best
        assert [c.score for c in plain.candidates] == [s.forward_per_token for s in ss]  # exactly
        assert plain.order == sorted(range(len(ss)), key=lambda i: (-ss[i].forward_per_token, i))
        backward_only = rank(comps, ss, weight=1.0)
        assert backward_only.best_index == best_index([s.backward_per_token for s in ss])


def test_rerank_score_is_the_weighted_sum():
    assert rerank_score(-1.0, -3.0, 0.0) == -1.0
    assert rerank_score(-1.0, float("-inf"), 0.0) == -1.0  # weight 0 never looks at the backward score
    assert rerank_score(-1.0, -3.0, 0.25) == pytest.approx(0.75 * -1.0 + 0.25 * -3.0)
    assert rerank_score(-1.0, -3.0, 1.0) == -3.0
    assert best_index([-2.0, -1.0, -1.0]) == 1  # first on ties


def test_serve_rerank_field_over_http(tiny_checkpoint, model_tok):
    from batray.bidirectional.serve_hook import make_rerank_hook
    from batray.serve import load_served_model, start_server

    served = load_served_model(tiny_checkpoint, device="cpu", default_max_tokens=8)
    hook = make_rerank_hook(RerankConfig(n=3, weight=0.5, max_new_tokens=6))
    messages = [{"role": "user", "content": QUESTIONS[0]}]
    with start_server(served, rerank=hook) as h:
        client = openai.OpenAI(base_url=h.url, api_key="unused", max_retries=0)
        r = client.chat.completions.create(model=h.model, messages=messages, max_tokens=8, seed=11,
                                           extra_body={"rerank": {"n": 4, "weight": 0.0}})
        info = r.model_extra["rerank"]
        assert info["n"] == 4 and info["weight"] == 0.0 and len(info["candidates"]) == 4
        forward = [c["forward"] for c in info["candidates"]]
        assert info["chosen"] == best_index(forward)
        assert r.choices[0].message.content == info["candidates"][info["chosen"]]["text"]
        # the same request reranked in-process: same candidates, same choice
        model, tok = model_tok
        local = Reranker(model, tok).rerank([chat_ids(tok, QUESTIONS[0])], 4, 0.0,
                                            SamplingParams(1.0, 1.0, 8, 11))[0]
        assert [c.text for c in local.candidates] == [c["text"] for c in info["candidates"]]
        assert local.best_index == info["chosen"]

        both = client.chat.completions.create(model=h.model, messages=messages, n=2, extra_body={"rerank": True})
        info = both.model_extra["rerank"]
        assert info["n"] == 3 and info["weight"] == 0.5 and len(both.choices) == 2
        ranked = sorted(info["candidates"], key=lambda c: -c["score"])
        assert [c.message.content for c in both.choices] == [c["text"] for c in ranked[:2]]
        for c in info["candidates"]:
            assert c["score"] == pytest.approx(0.5 * c["forward"] + 0.5 * c["backward"])

        done = client.completions.create(model=h.model, prompt="The capital of Veloria is", max_tokens=5,
                                         extra_body={"rerank": 2})
        assert done.object == "text_completion" and len(done.model_extra["rerank"]["candidates"]) == 2

        plain = client.chat.completions.create(model=h.model, messages=messages, max_tokens=4)
        assert "rerank" not in (plain.model_extra or {})  # off unless asked
        for bad in ({"n": 0}, {"weight": 2}, {"k": 3}, "many"):
            with pytest.raises(openai.BadRequestError, match="rerank"):
                client.chat.completions.create(model=h.model, messages=messages, extra_body={"rerank": bad})


def test_chat_rerank_option(tiny_checkpoint):
    from batray.chat import ChatSession

    session = ChatSession(tiny_checkpoint, max_new_tokens=6, temperature=1.0, seed=3, rerank_n=3, rerank_weight=0.0)
    out = io.StringIO()
    answer = session.reply(QUESTIONS[0], out=out)
    result = session.last_rerank
    assert len(result.candidates) == 3 and answer == result.best.text.strip()
    assert result.best_index == best_index([c.scores.forward_per_token for c in result.candidates])
    assert out.getvalue() == answer + "\n" and session.messages[-1] == {"role": "assistant", "content": answer}


def test_eval_rerank_mode(tiny_checkpoint):
    from batray.eval.modes import Request, get_mode
    from batray.eval.scoring import LocalBackend

    backend = LocalBackend(tiny_checkpoint, batch_size=4)
    requests = [Request("s", i, f"题目 {i}：维洛里亚的首都是？\nA. 马尔内\nB. 奎洛\nC. 萨登\nD. 博塔\n答案：", "A",
                        ("马尔内", "奎洛", "萨登", "博塔"), 0) for i in range(2)]
    mode = get_mode("rerank")
    assert mode.prompt_style == "cot"
    options = {"max_new_tokens": 6, "rerank": RerankConfig(n=3, weight=0.0, seed=5).model_dump()}
    rows = mode.predict(backend, requests, "cmmlu", **options)
    assert len(rows) == 2 and all(len(r["scores"]) == 3 and "pred" in r for r in rows)
    # weight 0: the text is the forward-only best of the same three samples (same batching, same seed)
    reranker = Reranker(backend.model, backend.tokenizer, batch_size=4)
    local = reranker.rerank([backend.encode(r.prompt) for r in requests], 3, 0.0, SamplingParams(1.0, 1.0, 6, 5))
    assert [r["text"] for r in rows] == [x.best.text for x in local]
