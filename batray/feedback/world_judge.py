"""A fact-checking judge for the demo world, served as an OpenAI-compatible endpoint.

It reads the same judge prompts any LLM judge gets (`batray.feedback.templates`, English or
Chinese), finds the question and the response(s) in them, checks each response against the demo
world's facts (`World.check_answer`) and answers with the option number, with log-probabilities,
exactly as an LLM judge would over HTTP. This is the tiny recipe's stand-in for a strong LLM judge:
small SFT models cannot judge facts, and a reward model learns nothing from a judge that only says
"tie". Questions it cannot map to a fact are answered "both not good" / "unacceptable" at low
confidence, so they count as low-information labels rather than confident ones.

A chat request that is not a judge prompt is answered as a knowledgeable assistant would: the demo
question's gold answer. The tiny recipe uses that as the paper's "another LLM" for response B
(`pairs.model_b: world`), so pairs hold a right answer to compare the policy's against.
"""

from __future__ import annotations

import math
import re
import time

from fastapi import FastAPI, Request

from batray.data.world import World

# Section headers of the judge templates (English and Chinese) -> role in the question.
_SECTIONS = {
    "User request": "prompt", "用户请求": "prompt",
    "Response": "response", "回答": "response",
    "Response 1": "first", "回答 1": "first", "回答1": "first",
    "Response 2": "second", "回答 2": "second", "回答2": "second",
}
_SECTION_RE = re.compile(r"^\[([^\]]+)\]\n(.*?)(?=\n\n(?:\[|Options:|选项[:：]))", re.S | re.M)


def judge_sections(user_text: str) -> dict[str, str]:
    """The judge prompt's parts: prompt and response (acceptability) or first and second (helpfulness)."""
    return {_SECTIONS[m.group(1)]: m.group(2) for m in _SECTION_RE.finditer(user_text) if m.group(1) in _SECTIONS}


def judge_option(user_text: str, is_right) -> tuple[str, float]:
    """(option number, confidence) for a judge prompt, with `is_right(prompt, response) -> bool | None`
    (None: the fact is unknown)."""
    s = judge_sections(user_text)
    if "response" in s:
        ok = is_right(s["prompt"], s["response"])
        return ("1", 0.95) if ok else ("2", 0.95 if ok is False else 0.4)
    first, second = is_right(s.get("prompt", ""), s.get("first", "")), is_right(s.get("prompt", ""), s.get("second", ""))
    if first is None or second is None:
        return "4", 0.4
    return {(True, False): "1", (False, True): "2", (True, True): "3", (False, False): "4"}[(first, second)], 0.95


def world_checker(world: World):
    def is_right(prompt: str, response: str) -> bool | None:
        qid = world.question_id(prompt)
        return None if qid is None else bool(world.check_answer(qid, response))

    return is_right


def create_world_judge_app(world: World, model_name: str = "demo-world-judge") -> FastAPI:
    """`/v1/models` and `/v1/chat/completions` (non-streaming, with logprobs/top_logprobs)."""
    app = FastAPI(title="batray demo-world judge")
    is_right = world_checker(world)

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": model_name, "object": "model", "owned_by": "batray"}]}

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        body = await request.json()
        user = next((m["content"] for m in reversed(body.get("messages", [])) if m.get("role") == "user"), "")
        if not judge_sections(user):
            return _message(model_name, reference_answer(world, user), None)
        answer, confidence = judge_option(user, is_right)
        options = body.get("guided_choice") or ["1", "2", "3", "4"]
        rest = [o for o in options if o != answer]
        top = [{"token": answer, "logprob": math.log(confidence), "bytes": None}] + [
            {"token": o, "logprob": math.log((1 - confidence) / max(len(rest), 1)), "bytes": None} for o in rest
        ]
        logprobs = {"content": [{"token": answer, "logprob": math.log(confidence), "bytes": None, "top_logprobs": top}]}
        return _message(model_name, answer, logprobs if body.get("logprobs") else None)

    return app


def start_world_judge(world_path: str):
    """`create_world_judge_app` for the world saved at `world_path`, served on 127.0.0.1
    (a `batray.serve.ServerHandle`: a context manager, or call `close()`)."""
    from batray.serve import start_server

    return start_server(app=create_world_judge_app(World.load(world_path)))


def reference_answer(world: World, question: str) -> str:
    """The right answer to a demo question, in the question's language and the SFT data's answer style
    (`batray.data.demo.reference_answer_text`); an honest "don't know" otherwise."""
    from batray.data.demo import reference_answer_text

    zh = re.search(r"[\u4e00-\u9fff]", question) is not None
    qid = world.question_id(question)
    if qid is None:
        return "我不知道。" if zh else "I don't know."
    return reference_answer_text(world, qid, "zh" if zh else "en")


def _message(model_name: str, content: str, logprobs: dict | None) -> dict:
    return {
        "id": f"judge-{time.time_ns()}", "object": "chat.completion", "created": int(time.time()), "model": model_name,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop",
                     "logprobs": logprobs}],
        "usage": {"prompt_tokens": 0, "completion_tokens": 1, "total_tokens": 1},
    }
