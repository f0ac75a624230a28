"""`batray serve` under clients that send odd shapes or try to hog it (real servers on 127.0.0.1).

The protocol shapes scoring clients send (token-id batches, echo with prompt logprobs, max_tokens 0),
every field checked at the boundary with one-line OpenAI errors, and isolation: a bad row fails its
own request only, one large request does not hold a small one back (bounded against the same
server's idle batch time, a ratio), a full queue answers 429, a disconnected request frees the
engine, a stop signal answers in-flight requests with 503, and an oversized body gets 413 before
the API key is looked at. Rows use `ignore_eos` so that a random tiny model generates fixed lengths.
"""

from __future__ import annotations

import asyncio
import json
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest
import torch

from batray.serve import load_served_model, start_server
from batray.serve.batching import BatchingEngine
from batray.serve.generation import GenRow

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def served(tiny_checkpoint):
    return load_served_model(tiny_checkpoint, device="cpu", default_max_tokens=8)


def _base(handle) -> str:
    return handle.url.removesuffix("/v1")


def _post(handle, path: str, body: dict, timeout: float = 120, **kw) -> httpx.Response:
    return httpx.post(handle.url + path, json=body, timeout=timeout, **kw)


def _fixed(handle, n: int = 1, max_tokens: int = 8, **kw) -> dict:
    return {"model": handle.model, "prompt": "Marnet is", "n": n, "max_tokens": max_tokens, "temperature": 0,
            "ignore_eos": True, **kw}


def _wait_for(handle, key: str, at_least: int, timeout: float = 60, at_most: int | None = None) -> None:
    """Poll /health until the engine reports `key` >= at_least (or <= at_most): e.g. a request is decoding."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = httpx.get(_base(handle) + "/health", timeout=10).json()[key]
        if (value <= at_most) if at_most is not None else (value >= at_least):
            return
        time.sleep(0.005)
    raise AssertionError(f"/health never showed {key} {'<= ' + str(at_most) if at_most is not None else '>= ' + str(at_least)}")


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


# ---- protocol -----------------------------------------------------------------------------------


def test_token_id_batches_echo_and_score_only(served):
    """lm-evaluation-harness's request: a batch of token-id lists, echo, logprobs, max_tokens 0 or 1."""
    with start_server(served, batch_wait_ms=1) as h:
        prompts = [[5, 6, 7, 8], [9, 10]]
        r = _post(h, "/completions", {"model": h.model, "prompt": prompts, "max_tokens": 0, "echo": True,
                                      "logprobs": 1, "temperature": 0})
        assert r.status_code == 200, r.text
        choices = r.json()["choices"]
        assert len(choices) == 2 and r.json()["usage"]["completion_tokens"] == 0
        model = served.generator.model
        for ids, choice in zip(prompts, choices):
            lp = choice["logprobs"]
            assert len(lp["tokens"]) == len(ids) and lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None
            with torch.no_grad():
                want = model(input_ids=torch.tensor([ids])).logits[0].log_softmax(-1)
            for j in range(1, len(ids)):
                assert lp["token_logprobs"][j] == pytest.approx(float(want[j - 1, ids[j]]), abs=1e-4)
                assert max(lp["top_logprobs"][j].values()) == pytest.approx(float(want[j - 1].max()), abs=1e-4)
            assert choice["text"] == served.tokenizer.decode(ids, skip_special_tokens=True)
        # max_tokens 1: the prompt's logprobs, then the one generated token's (what local-completions reads)
        r = _post(h, "/completions", {"model": h.model, "prompt": prompts, "max_tokens": 1, "echo": True,
                                      "logprobs": 1, "temperature": 0, "ignore_eos": True})
        for ids, choice in zip(prompts, r.json()["choices"]):
            assert len(choice["logprobs"]["token_logprobs"]) == len(ids) + 1
        # a batch of token-id lists answers as each list alone
        alone = [_post(h, "/completions", {"model": h.model, "prompt": p, "max_tokens": 4, "temperature": 0})
                 .json()["choices"][0]["text"] for p in prompts]
        together = _post(h, "/completions", {"model": h.model, "prompt": prompts, "max_tokens": 4, "temperature": 0})
        assert [c["text"] for c in together.json()["choices"]] == alone
        # streaming with echo: the prompt comes first
        stream = openai.OpenAI(base_url=h.url, api_key="x", max_retries=0).completions.create(
            model=h.model, prompt="Marnet is", max_tokens=3, temperature=0, echo=True, stream=True)
        assert "".join(c.choices[0].text for c in stream).startswith("Marnet is")


def test_every_field_is_checked_at_the_boundary_with_one_line_errors(served):
    with start_server(served, batch_wait_ms=1) as h:
        bad = {
            "seed": dict(seed=2**64), "n": dict(n=True), "temperature": dict(temperature="hot"),
            "stream": dict(stream="yes"), "top_p": dict(top_p=0), "logprobs": dict(logprobs=6),
            "stop": dict(stop=["a", "b", "c", "d", "e"]), "echo": dict(echo=1),
        }
        for field, extra in bad.items():
            r = _post(h, "/completions", {"model": h.model, "prompt": "x", **extra})
            err = r.json()["error"]
            assert r.status_code == 400 and err["param"] == field and err["message"].startswith(field), (field, err)
            assert "\n" not in err["message"]
        for prompt in ([True], [], "", [[1, 2], []], [1, "a"], {"text": "x"}):
            r = _post(h, "/completions", {"model": h.model, "prompt": prompt})
            err = r.json()["error"]
            assert r.status_code == 400 and err["param"] == "prompt" and "prompt must" in err["message"], (prompt, err)
            assert ".str" not in err["message"] and "\n" not in err["message"]
        r = _post(h, "/completions", {"model": h.model, "prompt": [[1, 2], [3, 99999]]})
        assert r.status_code == 400 and "prompt[1] has token id 99999" in r.json()["error"]["message"]
        r = _post(h, "/completions", {"model": h.model, "prompt": "x", "max_tokens": 0})
        assert r.status_code == 400 and "echo" in r.json()["error"]["message"]
        r = _post(h, "/chat/completions", {"model": h.model, "messages": [{"role": "robot", "content": "x"}]})
        assert r.status_code == 400 and r.json()["error"]["param"] == "messages[0].role"
        r = httpx.post(h.url + "/completions", content=b'{"model": "tiny",\n  "prompt": }',
                       headers={"content-type": "application/json"})
        err = r.json()["error"]
        assert r.status_code == 400 and err["param"] is None
        assert err["message"] == "the request body is not valid JSON: Expecting value at line 2, column 13"
        r = httpx.post(h.url + "/completions", json=[1, 2])
        assert r.status_code == 400 and r.json()["error"]["message"] == "the request body must be a JSON object"
        # the edges of the ranges are accepted
        for seed in (2**63 - 1, -(2**63)):
            r = _post(h, "/completions", {"model": h.model, "prompt": "x", "max_tokens": 2, "seed": seed, "n": 2})
            assert r.status_code == 200, r.text
        assert httpx.head(_base(h) + "/health").status_code == 200


# ---- isolation ----------------------------------------------------------------------------------


def test_a_bad_row_fails_its_own_request_only(served):
    """A seed torch cannot take, concurrently with good requests: only its own request fails.

    Over HTTP the boundary refuses it (400); inside the engine (a row that reached a batch anyway)
    the generator answers that row with an error and decodes the others of the batch.
    """
    with start_server(served, batch_wait_ms=300, max_batch_size=8) as h:
        bodies = [_fixed(h, seed=2**64)] + [_fixed(h, seed=s) for s in range(3)]
        with ThreadPoolExecutor(4) as pool:
            codes = list(pool.map(lambda b: _post(h, "/completions", b).status_code, bodies))
        assert codes == [400, 200, 200, 200]

    async def engine_batch():
        engine = BatchingEngine(served.generator, max_batch_size=8, batch_wait_ms=200)
        engine.start()
        try:
            good = engine.submit([GenRow([5, 6, 7], 4, temperature=0, ignore_eos=True)])
            bad = engine.submit([GenRow([5, 6], 4, seed=2**64), GenRow([5, 6], 4, seed=1)])

            async def outcome(sub):
                reasons = {}
                while len(reasons) < len(sub.rows):
                    i, out = await sub.sink.get()
                    if out.finish_reason:
                        reasons[i] = out.finish_reason
                return reasons

            return await outcome(good), await outcome(bad), engine.batches_run
        finally:
            await engine.stop()

    good, bad, batches = asyncio.run(engine_batch())
    assert batches == 1  # the three rows shared one batch
    assert good == {0: "length"} and bad == {0: "error", 1: "length"}


def _wait_rows_started(engine, before: int, timeout: float = 60) -> None:
    """Until the engine has handed rows beyond `before` to a batch (the request is being decoded)."""
    deadline = time.monotonic() + timeout
    while engine.rows_run <= before:
        assert time.monotonic() < deadline, "the request never reached a batch"
        time.sleep(0.002)


def test_oversize_request_refused(served):
    with start_server(served, batch_wait_ms=2, max_batch_size=4, max_rows_per_request=32) as h:
        r = _post(h, "/completions", _fixed(h, n=9, prompt=["a", "b", "c", "d"]))
        err = r.json()["error"]
        assert r.status_code == 400 and "36 completions" in err["message"] and "serve.max_rows_per_request" in err["message"]
        with pytest.raises(openai.BadRequestError, match="max_rows_per_request"):
            openai.OpenAI(base_url=h.url, api_key="x", max_retries=0).chat.completions.create(
                model=h.model, messages=[{"role": "user", "content": "hi"}], n=33)
        assert _post(h, "/completions", _fixed(h, n=8, prompt=["a", "b", "c", "d"])).status_code == 200  # 32 fit


def test_a_large_request_is_split_and_does_not_hold_a_small_one(served):
    with start_server(served, batch_wait_ms=2, max_batch_size=4) as h:
        engine = h.app.state.engine
        tokens = 150
        # the bound: one full engine batch of this length on the idle server (median of three)
        one_batch = sorted(_timed(lambda: _post(h, "/completions", _fixed(h, n=4, max_tokens=tokens))) for _ in range(3))[1]
        done: dict[str, float] = {}
        before = engine.batches_run

        def large():
            r = _post(h, "/completions", _fixed(h, n=8, prompt=["a", "b", "c", "d"], max_tokens=tokens))
            assert r.status_code == 200 and len(r.json()["choices"]) == 32
            done["large"] = time.perf_counter()

        rows_before = engine.rows_run
        thread = threading.Thread(target=large)
        thread.start()
        _wait_rows_started(engine, rows_before)
        start = time.perf_counter()
        r = _post(h, "/completions", _fixed(h, max_tokens=tokens))
        done["small"] = time.perf_counter()
        small = done["small"] - start
        thread.join(timeout=300)
        assert r.status_code == 200
        assert done["small"] < done["large"], "the small request waited for the whole large one"
        # it waits for at most the running batch, then rides in the next one
        assert small / one_batch < 3.0, (small, one_batch)
        assert engine.batches_run - before >= 32 // 4  # the large request was split


def test_full_queue_answers_429_with_retry_after(served):
    with start_server(served, batch_wait_ms=1, max_batch_size=2, max_rows_per_request=8, max_queued_rows=8) as h:
        thread = threading.Thread(target=lambda: _post(h, "/completions", _fixed(h, n=8, max_tokens=500)))
        thread.start()
        _wait_for(h, "running_rows", 1)  # 2 rows decoding, 6 waiting (4 once the next batch starts)
        r = _post(h, "/completions", _fixed(h, n=5))
        assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
        assert r.json()["error"]["code"] == "queue_full" and "retry in" in r.json()["error"]["message"]
        assert _post(h, "/completions", _fixed(h, n=2)).status_code == 200  # what fits is still taken
        thread.join(timeout=300)


def _raw_request(handle, body: dict) -> socket.socket:
    """Send a POST on a raw socket and return it unread (the test closes it to disconnect)."""
    host, port = _base(handle).removeprefix("http://").split(":")
    data = json.dumps(body).encode()
    sock = socket.create_connection((host, int(port)))
    sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 + f"Content-Length: {len(data)}\r\n\r\n".encode() + data)
    return sock


@pytest.mark.parametrize("stream", [False, True])
def test_a_disconnected_request_frees_the_engine(served, stream):
    with start_server(served, batch_wait_ms=1, max_batch_size=4) as h:
        engine = h.app.state.engine
        per_50 = sorted(_timed(lambda: _post(h, "/completions", _fixed(h, max_tokens=50))) for _ in range(3))[1]
        # ~the whole context (1024 positions): about 20 times the 50-token request, left behind by its client
        rows_before = engine.rows_run
        sock = _raw_request(h, _fixed(h, max_tokens=10**9, stream=stream))
        _wait_rows_started(engine, rows_before)
        sock.close()
        after = _timed(lambda: _post(h, "/completions", _fixed(h, max_tokens=1)))
        assert after < 5 * per_50, (after, per_50)  # without cancelling it waits ~20 x per_50
        assert engine.rows_cancelled >= 1
        _wait_for(h, "running_rows", 0, at_most=0)


def test_stop_signal_answers_in_flight_requests_with_503(tiny_checkpoint, tmp_path):
    """SIGTERM to `batray serve` in the middle of a large request: a 503 for it and a prompt exit."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = open(tmp_path / "serve.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "batray.cli", "serve", tiny_checkpoint, "--port", str(port), "--backend", "hf",
         "serve.device=cpu", "serve.max_batch_size=4", "serve.batch_wait_ms=1"],
        cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "BATRAY_API_KEY": ""})
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "serve.log").read_text()
            try:
                if httpx.get(base + "/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.05)

        class H:  # what the helpers above need
            url, model = base + "/v1", Path(tiny_checkpoint).name

        tokens = 200
        one_batch = sorted(_timed(lambda: _post(H, "/completions", _fixed(H, n=4, max_tokens=tokens))) for _ in range(3))[1]
        answer: dict = {}
        thread = threading.Thread(target=lambda: answer.update(r=_post(H, "/completions", _fixed(H, n=64, max_tokens=tokens))))
        thread.start()
        _wait_for(H, "running_rows", 1)
        start = time.perf_counter()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)
        exit_s = time.perf_counter() - start
        print(f"ready after {time.monotonic() - deadline + 120:.1f} s; one batch {one_batch:.2f} s; stop took {exit_s:.2f} s")
        thread.join(timeout=30)
        r = answer["r"]
        assert r.status_code == 503 and r.json()["error"]["code"] == "shutting_down", r.text
        # uvicorn re-raises the signal once it has shut down cleanly, so the exit reads as SIGTERM's
        assert proc.returncode in (0, -signal.SIGTERM), (tmp_path / "serve.log").read_text()
        assert "Application shutdown complete" in (tmp_path / "serve.log").read_text()
        # 16 batches of work were left; the stop took a fraction of that
        assert exit_s < 4 * one_batch, (exit_s, one_batch)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()


def _read_reply(sock: socket.socket) -> str:
    """Everything the server sends until it closes the connection."""
    sock.settimeout(30)
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data.decode()


def test_body_limit_413_before_the_api_key(served):
    with start_server(served, api_key="k-1") as h:  # the default limit, 4 MiB
        host, port = _base(h).removeprefix("http://").split(":")
        # a declared 100 MB body, no key: refused from the header, before anything is read
        with socket.create_connection((host, int(port))) as sock:
            sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         b"Content-Length: 100000000\r\n\r\n{\"model\": ")
            head = _read_reply(sock)
        assert head.startswith("HTTP/1.1 413") and "connection: close" in head.lower(), head
        # a chunked body without Content-Length: counted while it streams in, answered once past the limit
        with socket.create_connection((host, int(port))) as sock:
            sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         b"Transfer-Encoding: chunked\r\n\r\n")
            sent = 0
            while not select.select([sock], [], [], 0.002)[0] and sent < 100 * 2**20:
                sock.sendall(b"4000\r\n" + b"x" * 16384 + b"\r\n")
                sent += 16384
            reply = _read_reply(sock)
        assert reply.startswith("HTTP/1.1 413") and "4194304 bytes" in reply, reply
        assert sent < 8 * 2**20  # the server answered soon after the limit, not at the end of the body
        # a small body without the key: 401 as before
        assert _post(h, "/completions", {"model": h.model, "prompt": "x"}).status_code == 401
