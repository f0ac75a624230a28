"""Two responses A and B per prompt from rollout engine actors (§3.3; `batray pairs`).

Response A comes from `model_a` (the run's SFT model by default). Response B comes from `model_a`
sampled again (`model_b: null`, the paper's "both from BatGPT"), from a second checkpoint, or from an
OpenAI-compatible endpoint (`model_b: http://host:port/v1`, the paper's "another LLM"). Prompts are
rendered with the checkpoint's chat template as one user turn. Output: `pairs.parquet` (the pairs
contract); an existing one means the stage is done.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os

from batray.config import RecipeConfig, join_uri
from batray.data.io import exists, write_parquet
from batray.data.load import load_pairs_prompts
from batray.data.schemas import PAIRS, SAMPLE_MARK
from batray.errors import BatrayError
from batray.ray_session import init_ray

log = logging.getLogger("batray.pairs")


def pair_ids(prompts: list[dict]) -> list[str]:
    """The prompt's own `id` when it has one, else index + prompt hash; made unique."""
    out, seen = [], set()
    for i, r in enumerate(prompts):
        base = str(r.get("id") or f"{i:06d}-{hashlib.sha1(r['prompt'].encode()).hexdigest()[:8]}")
        pid, k = base, 1
        while pid in seen:
            pid, k = f"{base}-{k}", k + 1
        seen.add(pid)
        out.append(pid)
    return out


def chat_prompt_ids(tokenizer, prompts: list[str]) -> list[list[int]]:
    from batray.models.chat import chat_prompts_ids

    return chat_prompts_ids(tokenizer, prompts)


def generate_with_engines(model: str, prompts: list[str], cfg: RecipeConfig, seeds: list[int],
                          rollout_cls: type) -> list[list[str]]:
    """Responses from a pool of rollout actors (`rollout_cls`) on `model`: one list of responses per seed
    (the same pool samples A and B when the policy is sampled twice). Prompts go out in chunks (about 8
    per engine, each with its own seed) to whichever engine is idle, behind one progress display."""
    from batray.groups import ActorGroup
    from batray.models.chat import turn_content
    from batray.models.tokenizer import load_tokenizer
    from batray.progress import Progress
    from batray.rollout.engine import SamplingParams

    pc = cfg.pairs
    tokenizer = load_tokenizer(model)
    ids = chat_prompt_ids(tokenizer, prompts)
    n = min(pc.num_engines, len(ids))
    group = ActorGroup(rollout_cls, n, num_cpus=pc.engine_cpus, init_kwargs={"model_path": model}, name="pairs-rollout")
    size = -(-len(ids) // (8 * n))
    chunks = [(k, ids[start:start + size]) for k, start in enumerate(range(0, len(ids), size))]
    out = []
    try:
        for i, seed in enumerate(seeds):
            def call_args(chunk, seed=seed):
                k, shard = chunk
                params = SamplingParams(pc.sampling.temperature, pc.sampling.top_p, pc.sampling.max_new_tokens,
                                        seed + 7919 * k)
                return (shard, params), {}

            what = f"pairs: {os.path.basename(model.rstrip('/'))}"
            if len(seeds) > 1:
                what += f" sample {i + 1}/{len(seeds)}"
            with Progress(len(ids), what, unit="responses") as progress:
                done = group.map_unordered("generate", chunks, call_args=call_args, progress=progress,
                                           weight=lambda chunk: len(chunk[1]))
            out.append([turn_content(tokenizer, c.text, c.finish_reason) for shard in done for c in shard])
    finally:
        group.kill()
    return out


def generate_with_endpoint(url: str, model: str | None, prompts: list[str], cfg: RecipeConfig) -> tuple[str, list[str]]:
    """Responses from an OpenAI-compatible endpoint (the SDK retries 429/5xx); returns (model id, texts)."""
    import openai

    s = cfg.pairs.sampling

    async def run() -> tuple[str, list[str]]:
        client = openai.AsyncOpenAI(base_url=url, api_key="EMPTY", max_retries=5, timeout=120)
        try:
            name = model or (await client.models.list()).data[0].id
            sem = asyncio.Semaphore(8)

            async def one(p: str) -> str:
                async with sem:
                    r = await client.chat.completions.create(
                        model=name, messages=[{"role": "user", "content": p}], temperature=s.temperature,
                        top_p=s.top_p, max_tokens=s.max_new_tokens, seed=cfg.pairs.seed)
                return r.choices[0].message.content or ""

            return name, list(await asyncio.gather(*(one(p) for p in prompts)))
        finally:
            await client.close()

    try:
        return asyncio.run(run())
    except openai.OpenAIError as e:
        raise BatrayError(f"pairs: endpoint {url} failed: {type(e).__name__}: {str(e)[:200]}") from None


def run_pairs(cfg: RecipeConfig, out_dir: str, *, model_a: str, model_b: str | None, prompts,
              rollout_cls: type, world: str | None = None) -> str:
    """Write `<out_dir>/pairs.parquet`; returns its path (kept as is when it already exists).

    model_a: the checkpoint of response A; model_b: None (A's model sampled again), a checkpoint, an
    http(s) endpoint, or "world" (the demo world's reference answers served as an endpoint from the
    `world` file: the paper's "another LLM" in the tiny recipe); prompts: the prompt rows.
    """
    from batray.models.presets import is_checkpoint_dir

    out = join_uri(out_dir, "pairs.parquet")
    if exists(out):
        log.info("pairs: %s exists, skipping", out)
        return out
    pc = cfg.pairs
    if not is_checkpoint_dir(model_a):
        raise BatrayError(f"pairs: model_a {model_a!r} is not a checkpoint folder; run `batray sft` or set pairs.model_a")
    if model_b == "world":
        if world is None or not exists(world):
            raise BatrayError(f"pairs: model_b is world but the demo world {world!r} does not exist; run the data stage")
        from batray.feedback.world_judge import start_world_judge

        with start_world_judge(world) as handle:  # a real local endpoint that knows the demo world
            return run_pairs(cfg, out_dir, model_a=model_a, model_b=handle.url, prompts=prompts,
                             rollout_cls=rollout_cls)
    is_url = model_b is not None and model_b.startswith(("http://", "https://"))
    if model_b is not None and not is_url and not is_checkpoint_dir(model_b):
        raise BatrayError(f"pairs: model_b {model_b!r} is neither a checkpoint folder, an http(s) endpoint URL "
                          "nor `world`")
    rows_in = load_pairs_prompts(cfg, prompts, out_dir)
    # Each prompt `samples_per_prompt` times in a row, its k-th copy (k >= 1) a pair of its own.
    k = pc.samples_per_prompt
    ids = [pid if s == 0 else f"{pid}{SAMPLE_MARK}{s}" for pid in pair_ids(rows_in) for s in range(k)]
    texts = [r["prompt"] for r in rows_in for _ in range(k)]
    init_ray(cfg)
    log.info("pairs: %d from %d prompts; A from %s, B from %s", len(texts), len(rows_in), model_a,
             model_b or "the same model resampled")
    seed_b = pc.seed + 1_000_003
    if model_b is None:  # the policy sampled twice, by one pool
        responses_a, responses_b = generate_with_engines(model_a, texts, cfg, [pc.seed, seed_b], rollout_cls)
        model_b = model_a
    else:
        (responses_a,) = generate_with_engines(model_a, texts, cfg, [pc.seed], rollout_cls)
        if is_url:
            name, responses_b = generate_with_endpoint(model_b, pc.model_b_name, texts, cfg)
            model_b = f"{name}@{model_b}"
        else:
            (responses_b,) = generate_with_engines(model_b, texts, cfg, [seed_b], rollout_cls)
    rows = [{"pair_id": pid, "prompt": p, "response_a": a, "response_b": b, "model_a": model_a, "model_b": model_b}
            for pid, p, a, b in zip(ids, texts, responses_a, responses_b)]
    if pc.shuffle_sides:
        rows = [swap_sides(r) if side_swapped(r["pair_id"], pc.seed) else r for r in rows]
    write_parquet(rows, out, PAIRS)
    same = sum(r["response_a"] == r["response_b"] for r in rows)
    print(f"pairs: {len(rows)} pairs written to {out} ({same} with identical responses)")
    return out


def side_swapped(pair_id: str, seed: int) -> bool:
    """A deterministic coin per pair: which model's response is A. With two different models, a fixed
    side would let a reward model learn the position (or the style of one side) instead of quality."""
    return hashlib.sha256(f"{seed}:{pair_id}".encode()).digest()[0] & 1 == 1


def swap_sides(row: dict) -> dict:
    return {**row, "response_a": row["response_b"], "response_b": row["response_a"],
            "model_a": row["model_b"], "model_b": row["model_a"]}
