"""`batray serve`: the official `openai` client against a real server on 127.0.0.1 (tiny checkpoint)."""

from __future__ import annotations

import asyncio
import math

import openai
import pytest

from batray.errors import BatrayError
from batray.serve import load_served_model, start_server
from batray.serve.generation import safe_prefix_len, stop_cut

CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is the capital of Veloria?"}]


@pytest.fixture(scope="module")
def served(tiny_checkpoint):
    return load_served_model(tiny_checkpoint, device="cpu", default_max_tokens=8)


@pytest.fixture(scope="module")
def server(served):
    with start_server(served, batch_wait_ms=200, max_batch_size=8) as h:
        yield h


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=server.url, api_key="unused", max_retries=0)


def test_models_and_chat_with_logprobs(server, client):
    assert [m.id for m in client.models.list().data] == [server.model]
    r = client.chat.completions.create(model=server.model, messages=CHAT, max_tokens=6, temperature=0, logprobs=True,
                                       top_logprobs=3, n=2)
    assert len(r.choices) == 2 and r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content == r.choices[1].message.content  # greedy: n copies agree
    assert r.usage.completion_tokens <= 12 and r.usage.prompt_tokens > 5
    for tok in r.choices[0].logprobs.content:
        assert len(tok.top_logprobs) == 3 and tok.logprob <= 0
        # greedy picks the argmax, so the chosen token is the best alternative
        assert tok.top_logprobs[0].logprob == pytest.approx(tok.logprob, abs=1e-5)
    assert r.choices[0].finish_reason in ("stop", "length")


def test_seed_reproducible_and_batching_consistent(server, client):
    args = dict(model=server.model, messages=CHAT, max_tokens=8, temperature=1.0, top_p=0.9)
    a = client.chat.completions.create(seed=123, **args).choices[0].message.content
    b = client.chat.completions.create(seed=123, **args).choices[0].message.content
    c = [client.chat.completions.create(seed=s, **args).choices[0].message.content for s in (1, 2, 3)]
    assert a == b and len({a, *c}) > 1


def test_concurrent_requests_share_a_batch(server, served):
    engine = server.app.state.engine
    prompts = ["a", "a somewhat longer prompt", "维洛里亚", "b c d e f g"]

    async def ask(client, p):
        r = await client.completions.create(model=server.model, prompt=p, max_tokens=5, temperature=0)
        return r.choices[0].text

    async def run():
        client = openai.AsyncOpenAI(base_url=server.url, api_key="unused", max_retries=0)
        try:
            together = await asyncio.gather(*(ask(client, p) for p in prompts))
            before = engine.batches_run
            alone = [await ask(client, p) for p in prompts]
            return together, before, alone
        finally:
            await client.close()

    start = engine.batches_run
    together, before, alone = asyncio.run(run())
    assert before - start < len(prompts)  # the concurrent requests were batched (200 ms window)
    assert together == alone  # left padding inside a batch does not change greedy output


def test_streaming_matches_non_streaming(server, client):
    args = dict(model=server.model, messages=CHAT, max_tokens=8, temperature=0)
    full = client.chat.completions.create(**args).choices[0].message.content
    chunks = list(client.chat.completions.create(stream=True, stream_options={"include_usage": True}, **args))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == full
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens >= 1
    stream = client.completions.create(model=server.model, prompt="The capital", max_tokens=4, temperature=0, stream=True)
    streamed = "".join(c.choices[0].text for c in stream)
    assert streamed == client.completions.create(model=server.model, prompt="The capital", max_tokens=4,
                                                 temperature=0).choices[0].text


def test_completions_logprobs_echo_and_stop(server, client):
    r = client.completions.create(model=server.model, prompt=["Marnet is", "维洛里亚"], max_tokens=12, temperature=0,
                                  logprobs=2, echo=True)
    assert len(r.choices) == 2 and r.choices[0].text.startswith("Marnet is")
    lp = r.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset)
    # echo covers the prompt's tokens first (the first has nothing to predict it), then the completion's
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    assert all(len(t) <= 2 for t in lp.top_logprobs[1:]) and all(v <= 0 for v in lp.token_logprobs[1:])
    # stop strings: cut the greedy text at a substring of itself
    full = client.completions.create(model=server.model, prompt="Marnet is", max_tokens=12, temperature=0).choices[0].text
    clean = [i for i in range(1, len(full) - 1) if full[i:i + 2].strip() and "\ufffd" not in full[i:i + 2]]
    if clean:
        stop = full[clean[0]:clean[0] + 2]
        cut = client.completions.create(model=server.model, prompt="Marnet is", max_tokens=12, temperature=0,
                                        stop=[stop])
        assert cut.choices[0].text == full[: full.find(stop)] and cut.choices[0].finish_reason == "stop"


def test_guided_choice_scores_the_choices(server, client, served):
    r = client.chat.completions.create(model=server.model, messages=CHAT, logprobs=True, top_logprobs=4,
                                       extra_body={"guided_choice": ["1", "2", "3", "4"]})
    content = r.choices[0].message.content
    top = r.choices[0].logprobs.content[0].top_logprobs
    assert sorted(t.token for t in top) == ["1", "2", "3", "4"] and top[0].token == content
    assert top[0].logprob >= top[-1].logprob and sum(math.exp(t.logprob) for t in top) <= 1 + 1e-6
    # the score is the model's own next-token log-probability of each choice after the chat prompt
    import torch

    tok = served.tokenizer
    ids = tok(tok.apply_chat_template(CHAT, tokenize=False), add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logp = served.generator.model(input_ids=torch.tensor([ids])).logits[0, -1].log_softmax(-1)
    for t in top:
        (choice_id,) = tok(t.token, add_special_tokens=False)["input_ids"]
        assert t.logprob == pytest.approx(float(logp[choice_id]), abs=1e-4)


def test_openai_style_errors(server, client):
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        client.chat.completions.create(model="gpt-9", messages=CHAT)
    with pytest.raises(openai.BadRequestError, match="temperature"):
        client.chat.completions.create(model=server.model, messages=CHAT, temperature=7)
    with pytest.raises(openai.BadRequestError, match="messages"):
        client.chat.completions.create(model=server.model, messages=[])
    with pytest.raises(openai.BadRequestError, match="top_logprobs"):
        client.chat.completions.create(model=server.model, messages=CHAT, logprobs=True, top_logprobs=50)
    with pytest.raises(openai.BadRequestError, match="context"):
        client.completions.create(model=server.model, prompt="x " * 3000, max_tokens=4)
    with pytest.raises(openai.BadRequestError, match="rerank"):
        client.chat.completions.create(model=server.model, messages=CHAT, extra_body={"rerank": {"k": 4}})
    import httpx

    bad = httpx.post(server.url + "/chat/completions", content=b"{not json", headers={"content-type": "application/json"})
    assert bad.status_code == 400 and bad.json()["error"]["type"] == "invalid_request_error"


def test_api_key(served):
    with start_server(served, api_key="k-123") as h:
        with pytest.raises(openai.AuthenticationError) as e:
            openai.OpenAI(base_url=h.url, api_key="wrong", max_retries=0).models.list()
        assert "wrong" not in str(e.value)
        ok = openai.OpenAI(base_url=h.url, api_key="k-123", max_retries=0)
        assert ok.chat.completions.create(model=h.model, messages=CHAT, max_tokens=2).choices


def test_rerank_hook_receives_requests(served):
    async def rerank(req, served_model, engine):
        return {"object": "chat.completion", "id": "r", "created": 0, "model": served_model.name,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": f"reranked {req.rerank['k']}"},
                             "finish_reason": "stop"}]}

    with start_server(served, rerank=rerank) as h:
        c = openai.OpenAI(base_url=h.url, api_key="x", max_retries=0)
        r = c.chat.completions.create(model=h.model, messages=CHAT, extra_body={"rerank": {"k": 4}})
        assert r.choices[0].message.content == "reranked 4"


def test_stop_helpers():
    assert stop_cut("hello world", ["wor", "lo"]) == 3
    assert stop_cut("hello", ["x"]) is None
    assert safe_prefix_len("hello wo", ["world"]) == 6  # "wo" may start a stop string
    assert safe_prefix_len("abc\ufffd", []) == 3  # half a character is held back


def test_cli_rejects_a_non_checkpoint(tmp_path):
    from jobs.serve import main

    with pytest.raises(BatrayError, match="not a checkpoint"):
        main([str(tmp_path), "serve.max_batch_size=4"])
    with pytest.raises(SystemExit):
        main(["serve.max_batch_size=4"])  # no CHECKPOINT
