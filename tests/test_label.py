"""`batray label` against real OpenAI-compatible servers on 127.0.0.1, through labeler actors.

- a fault-injecting judge (429 with Retry-After, 500, answers slower than the client's timeout,
  malformed bodies): retries recover, every pair is labeled exactly once;
- non-retryable errors and unparsable answers end as failures with their reason; a budget stops
  labeling and a rerun labels only what is missing;
- a fact-checking judge on the demo world (its judgment is the world's checker) labels right-vs-wrong
  pairs with the right preference, in English and Chinese;
- with no endpoint, the run's SFT model (tiny checkpoint) served by `batray serve` is the judge.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import re
import threading
from collections import Counter

import pyarrow.parquet as pq
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from batray.config import EndpointConfig, load_config
from batray.data.io import read_rows, write_jsonl
from batray.feedback.world_judge import create_world_judge_app, judge_option
from batray.serve import start_server
from batray.stages import run_stage
from jobs.label import main as label_main


def run_label(cfg, out_dir, *, pairs, endpoints):
    """The label stage through the registry, as `batray label` and `batray run` run it."""
    from actors import kit

    cfg = cfg.model_copy(update={"label": cfg.label.model_copy(update={"pairs": pairs, "endpoints": endpoints})})
    return run_stage(cfg, "label", kit(), out_dir=out_dir).plan.outputs["ai_labels"]


def _completion(answer: str, confident: float | None = 0.9) -> dict:
    """A chat completion whose content is `answer`, with top logprobs when `confident` is set."""
    choice = {"index": 0, "message": {"role": "assistant", "content": answer}, "finish_reason": "stop", "logprobs": None}
    if confident is not None and answer.isdigit():
        other = "2" if answer == "1" else "1"
        top = [{"token": answer, "logprob": math.log(confident), "bytes": None},
               {"token": other, "logprob": math.log(1 - confident), "bytes": None}]
        choice["logprobs"] = {"content": [{"token": answer, "logprob": math.log(confident), "bytes": None,
                                           "top_logprobs": top}]}
    return {"id": "x", "object": "chat.completion", "created": 0, "model": "judge", "choices": [choice]}


class FaultyJudge:
    """An OpenAI-compatible judge that prefers responses containing 'GOOD', with injected faults.

    The fault of an attempt depends on (hash of the question, attempt number), so every question
    meets at most two faults and then succeeds. Prompts containing POISON get a 400 (not retried);
    prompts containing GIBBERISH get an answer no parser can read.
    """

    def __init__(self, slow_s: float = 2.5, faults: bool = True):
        self.attempts: Counter = Counter()
        self.faults_served: Counter = Counter()
        self.slow_s = slow_s
        self.faults = faults
        self.lock = threading.Lock()
        self.app = FastAPI()
        self.app.post("/v1/chat/completions")(self.chat)

    async def chat(self, request: Request):
        body = await request.json()
        user = body["messages"][-1]["content"]
        key = hashlib.sha1(user.encode()).hexdigest()
        with self.lock:
            self.attempts[key] += 1
            attempt = self.attempts[key]
        if "POISON" in user:
            return JSONResponse({"error": {"message": "bad request", "type": "invalid_request_error"}}, status_code=400)
        if self.faults and attempt <= 2:
            kind = ("429", "500", "slow", "malformed", "badjson", None, None)[(int(key[:8], 16) + attempt) % 7]
            if kind is not None:
                with self.lock:
                    self.faults_served[kind] += 1
                if kind == "429":
                    return JSONResponse({"error": {"message": "slow down", "type": "rate_limit"}}, status_code=429,
                                        headers={"retry-after": "0.05"})
                if kind == "500":
                    return JSONResponse({"error": {"message": "boom", "type": "server_error"}}, status_code=500)
                if kind == "slow":
                    await asyncio.sleep(self.slow_s)
                if kind == "malformed":
                    return JSONResponse({"object": "chat.completion"})
                if kind == "badjson":
                    return Response('{"choices": [', media_type="application/json")
        if "GIBBERISH" in user:
            return JSONResponse(_completion("I like turtles", None))
        return JSONResponse(_completion(judge_option(user, lambda p, r: "GOOD" in r)[0]))


def _pairs(n: int, tag: str = "") -> list[dict]:
    rows = []
    for i in range(n):
        a_good = i % 2 == 0
        rows.append({"pair_id": f"p{i:03d}", "prompt": f"question {i} {tag}",
                     "response_a": "GOOD answer" if a_good else "poor answer",
                     "response_b": "poor answer" if a_good else "GOOD answer", "model_a": "m", "model_b": "m"})
    return rows


def _cfg(tmp_path, **label):
    overrides = [f"run_dir={tmp_path / 'run'}"] + [f"label.{k}={v}" for k, v in label.items()]
    return load_config(None, overrides)


def _endpoint(handle, **kw) -> EndpointConfig:
    base = dict(url=handle.url, model="judge", api_key_env=None, concurrency=8, timeout_s=1.0, backoff_s=0.01,
                max_retries=4)
    return EndpointConfig(**{**base, **kw})


def test_retries_recover_every_pair_exactly_once(tmp_path, ray_session):
    judge = FaultyJudge()
    pairs = _pairs(8)
    write_jsonl(pairs, str(tmp_path / "pairs.jsonl"))
    with start_server(app=judge.app) as h:
        out = run_label(_cfg(tmp_path, num_labelers=2, chunk_size=3), str(tmp_path / "label"),
                        pairs=str(tmp_path / "pairs.jsonl"), endpoints=[_endpoint(h)])
    rows = pq.read_table(out).to_pylist()
    assert sorted(r["pair_id"] for r in rows) == [p["pair_id"] for p in pairs]  # none lost, none twice
    assert pq.read_table(tmp_path / "label" / "failures.parquet").num_rows == 0
    for r, p in zip(sorted(rows, key=lambda r: r["pair_id"]), pairs):
        a_good = p["response_a"].startswith("GOOD")
        assert r["d"] == (-1 if a_good else 1)
        assert r["helpfulness"] == ("a_better" if a_good else "b_better")
        assert (r["acceptable_a"], r["acceptable_b"]) == (a_good, not a_good)
        assert r["source"] == "ai" and r["rater"] == f"judge@{h.url}"
        assert r["confidence"] == pytest.approx(0.9, abs=1e-6)  # from the logprobs, both orders agreeing
    # every kind of fault was met, and every question was retried past it
    assert set(judge.faults_served) == {"429", "500", "slow", "malformed", "badjson"}
    assert len(judge.attempts) == 8 * 4 and max(judge.attempts.values()) >= 2


def test_failures_have_reasons_budget_and_rerun(tmp_path, ray_session):
    judge = FaultyJudge(faults=False)
    pairs = _pairs(6)
    pairs[1]["prompt"] += " POISON"
    pairs[2]["prompt"] += " GIBBERISH"
    pairs.append(dict(pairs[0]))  # a repeated pair_id is rejected, not labeled twice
    pairs.append({"pair_id": "broken", "prompt": "q"})  # not a valid pair
    path = str(tmp_path / "pairs.jsonl")
    write_jsonl(pairs, path)
    out_dir = tmp_path / "label"
    with start_server(app=judge.app) as h:
        ep = _endpoint(h)
        # Budget: 4 questions per pair, 14 requests -> 3 pairs are asked, 3 are not.
        run_label(_cfg(tmp_path, max_requests=14), str(out_dir), pairs=path, endpoints=[ep])
        labeled = pq.read_table(out_dir / "ai.parquet").to_pylist()
        failed = pq.read_table(out_dir / "failures.parquet").to_pylist()
        assert len(labeled) + len(failed) == 6
        reasons = {f["pair_id"]: f["error"] for f in failed}
        assert sum("budget exhausted" in e for e in reasons.values()) == 3
        assert sum(judge.attempts.values()) <= 14
        rejected = (out_dir / "rejected_pairs.jsonl").read_text()
        assert "duplicate pair_id" in rejected and "response_a missing" in rejected

        # Rerun without a budget: only the missing pairs are asked again.
        before = sum(judge.attempts.values())
        run_label(_cfg(tmp_path), str(out_dir), pairs=path, endpoints=[ep])
        asked_again = sum(judge.attempts.values()) - before
        assert asked_again == 4 * (6 - len(labeled))
    labeled = pq.read_table(out_dir / "ai.parquet").to_pylist()
    failed = {f["pair_id"]: f["error"] for f in pq.read_table(out_dir / "failures.parquet").to_pylist()}
    assert sorted(r["pair_id"] for r in labeled) == ["p000", "p003", "p004", "p005"]
    assert failed["p001"].startswith("HTTP 400")
    assert failed["p002"].startswith("unparsable answer")


def test_cli_label_one_endpoint(tmp_path, ray_session, monkeypatch):
    judge = FaultyJudge(faults=False)
    path = str(tmp_path / "pairs.jsonl")
    write_jsonl(_pairs(3), path)
    monkeypatch.setenv("JUDGE_KEY", "sk-secret-value")
    with start_server(app=judge.app) as h:
        rc = label_main(["--pairs", path, "--endpoint", h.url, "--model", "judge", "--out", str(tmp_path / "o"),
                         "--concurrency", "2", "--api-key-env", "JUDGE_KEY", f"run_dir={tmp_path}/run"])
    assert rc == 0
    assert pq.read_table(tmp_path / "o" / "ai.parquet").num_rows == 3
    for f in (tmp_path / "o").iterdir():  # the key is never written
        assert b"sk-secret-value" not in f.read_bytes()


def test_fact_checking_judge_on_demo_world(tmp_path, ray_session):
    from batray.data.demo import generate_demo
    from batray.data.world import World

    files = generate_demo(str(tmp_path / "demo"))
    world = World.load(files["world"])
    prefs, _ = read_rows(files["preferences"], "preferences")
    right_wrong = [p for p in prefs if p["d"] != 0][:16]
    assert {p["d"] for p in right_wrong} == {-1, 1}
    # The library's fact-checking judge (the tiny recipe's), a real OpenAI-compatible server.
    app = create_world_judge_app(world)

    path = str(tmp_path / "pairs.jsonl")
    write_jsonl([{k: p[k] for k in ("pair_id", "prompt", "response_a", "response_b")} | {"model_a": "x", "model_b": "y"}
                 for p in right_wrong], path)
    with start_server(app=app) as h:
        out = run_label(_cfg(tmp_path), str(tmp_path / "label"), pairs=path, endpoints=[_endpoint(h)])
    got = {r["pair_id"]: r for r in pq.read_table(out).to_pylist()}
    assert len(got) == len(right_wrong)
    for p in right_wrong:
        assert got[p["pair_id"]]["d"] == p["d"], p
        assert (got[p["pair_id"]]["acceptable_a"], got[p["pair_id"]]["acceptable_b"]) == (p["d"] == -1, p["d"] == 1)
    langs = {("zh" if re.search(r"[\u4e00-\u9fff]", p["prompt"]) else "en") for p in right_wrong}
    assert langs == {"en", "zh"}  # both templates were exercised


@pytest.mark.parametrize("style", ["sentence", "short"])
def test_world_judge_answers_in_the_sft_datas_style(tmp_path, style):
    """As the tiny recipe's "another LLM" (`pairs.model_b: world`) the world judge answers a plain chat
    request rightly and phrased as the demo's SFT data phrases answers, so a pair of its answer and the
    policy's differs in the fact, not in the style (a reward model learns the style first)."""
    import json

    import openai

    from batray.config import DemoDataConfig
    from batray.data.demo import generate_demo
    from batray.data.world import World

    cfg = DemoDataConfig(seed=0, num_countries=4, num_people=4, corpus_repeats=1, answer_style=style)
    files = generate_demo(str(tmp_path / "demo"), cfg)
    world = World.load(files["world"])
    assert world.answer_style == style
    rows = [json.loads(line) for line in open(files["prompts"], encoding="utf-8")][:12]
    assert {r["lang"] for r in rows} == {"en", "zh"}
    with start_server(app=create_world_judge_app(world)) as h:
        client = openai.OpenAI(base_url=h.url, api_key="x")

        def ask(text):
            got = client.chat.completions.create(model="demo-world-judge", messages=[{"role": "user", "content": text}])
            return got.choices[0].message.content

        for r in rows:
            reply = ask(r["prompt"])
            assert world.grade(r["fact_id"], reply) == "right", (r["prompt"], reply)
            subject = getattr(world.entities[r["subject"]], r["lang"])
            if style == "short":
                name = world.answer_name(r["fact_id"], r["lang"])
                assert reply == (f"{name}." if r["lang"] == "en" else f"{name}。"), reply  # the object alone
            else:
                assert subject in reply and not reply.endswith("\n"), reply  # a sentence restating the subject
        assert ask("What is the weather like?") == "I don't know."


def test_sft_model_served_as_judge(tmp_path, ray_session, tiny_checkpoint):
    """The tiny recipe's judge: with no endpoint, `batray serve` runs the run's SFT model (here a random
    tiny one) and the answers are read through guided_choice log-probabilities, so every pair gets a
    label with a confidence."""
    import shutil

    shutil.copytree(tiny_checkpoint, tmp_path / "run" / "sft" / "final")
    path = str(tmp_path / "pairs.jsonl")
    write_jsonl(_pairs(3) + [{**_pairs(1)[0], "pair_id": "zh", "prompt": "维洛里亚的首都是哪里？"}], path)
    run_label(_cfg(tmp_path), str(tmp_path / "label"), pairs=path, endpoints=[])
    labeled = pq.read_table(tmp_path / "label" / "ai.parquet").to_pylist()
    assert pq.read_table(tmp_path / "label" / "failures.parquet").num_rows == 0
    assert sorted(r["pair_id"] for r in labeled) == ["p000", "p001", "p002", "zh"]
    for r in labeled:
        assert r["d"] in (-1, 0, 1) and 0 < r["confidence"] < 1
        assert r["rater"].startswith("final@http://127.0.0.1:")
