"""The hallucination experiment (`batray experiment hallucination`): do both directions reduce confidently
wrong answers?

    batray experiment hallucination [--config FILE] [--run-dir DIR] [--pretrain-steps N] [--sft-steps N]
                                    [--n N] [--weight W] [--limit Q] [key.sub=value ...]

Two models of the same size are trained on the same demo-world data with the same steps: one with
Eq. 1 (`pretrain.direction=both`), one left to right only (`pretrain.direction=l2r`); each is then
instruction-tuned (Eq. 2) on the same SFT rows. Both answer the demo world's held-out and unseen
fact questions (`hallucination/questions.jsonl`) with plain left-to-right decoding (greedy, and
best-of-N by forward likelihood) and with bidirectional reranking of the same N samples
(`batray.bidirectional.hallucination`). Prints accuracy and the share of confidently wrong answers
as a Markdown table; writes `results.json` and `table.md` under
`<run_dir>/experiments/hallucination/`. Trained models are reused on a rerun.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from batray.config import RecipeConfig
from batray.ray_session import init_ray

log = logging.getLogger("batray.experiment.hallucination")

# Defaults of this experiment (the tiny recipe's world and training shapes); `key=value` overrides them.
DEFAULTS = [
    "data.held_out_fraction=0",  # the probes are held-out questions, not held-out text: train on every text
    "data.demo.num_countries=16", "data.demo.num_people=16", "data.demo.corpus_repeats=3",
    "model.vocab_size=1024",
    "pretrain.seq_len=128", "pretrain.micro_batch_size=16", "pretrain.log_every=25", "pretrain.ckpt_every=100000",
    "pretrain.optim.lr=3e-3",
    "pretrain.scaling.num_workers=1", "pretrain.deepspeed.zero_stage=0",
    "sft.seq_len=192", "sft.micro_batch_size=16", "sft.log_every=25", "sft.ckpt_every=100000",
    "sft.optim.lr=1e-3", "sft.scaling.num_workers=1", "sft.deepspeed.zero_stage=0",
    "eval.rerank.max_new_tokens=32",
]



def run_hallucination(cfg: RecipeConfig, *, pretrain_steps: int, sft_steps: int, limit: int | None = None) -> dict:
    """Train both models (reused when already trained), measure them, write results.json and table.md."""
    import torch

    from batray.bidirectional.hallucination import format_table, load_questions, measure
    from batray.data.io import read_rows
    from batray.data.world import World
    from batray.models.presets import load_causal_lm
    from batray.models.tokenizer import load_tokenizer, save_tokenizer, train_bpe
    from batray.rollout.engine import SamplingParams
    from batray.train.pretrain import run_pretrain
    from batray.train.sft import run_sft
    from batray.train.stage import demo_data_file

    corpus = demo_data_file(cfg, "corpus.jsonl")
    sft_data = demo_data_file(cfg, "sft.jsonl")
    questions = load_questions(demo_data_file(cfg, "hallucination/questions.jsonl"))
    if limit is not None and limit < len(questions):  # evenly spread, so both kinds and languages stay in
        questions = [questions[i * len(questions) // limit] for i in range(limit)]
    world = World.load(demo_data_file(cfg, "world.json"))
    out = Path(cfg.run_dir, "experiments", "hallucination")
    tok_dir = out / "tokenizer"
    if not (tok_dir / "tokenizer_config.json").exists():  # one tokenizer for both models: equal data
        texts = [r["text"] for r in read_rows(corpus, "corpus")[0]]
        save_tokenizer(train_bpe(texts, vocab_size=cfg.model.vocab_size), tok_dir)
    cfg = cfg.model_copy(update={"model": cfg.model.model_copy(update={"tokenizer": str(tok_dir)})})
    rcfg = cfg.eval.rerank
    params = SamplingParams(rcfg.temperature, rcfg.top_p, rcfg.max_new_tokens, rcfg.seed)

    init_ray(cfg)
    results: dict = {"pretrain_steps": pretrain_steps, "sft_steps": sft_steps, "n": rcfg.n, "weight": rcfg.weight,
                     "sampling": {"temperature": rcfg.temperature, "top_p": rcfg.top_p,
                                  "max_new_tokens": rcfg.max_new_tokens, "seed": rcfg.seed},
                     "questions": {k: sum(q["kind"] == k for q in questions) for k in ("held_out", "unseen")},
                     "models": {}}
    names = {"both": "bidirectional (Eq. 1)", "l2r": "left-to-right only"}
    for direction in ("both", "l2r"):
        t0 = time.perf_counter()
        pcfg = cfg.pretrain.model_copy(update={"direction": direction})
        run_cfg = cfg.model_copy(update={"pretrain": pcfg})
        pretrained = run_pretrain(run_cfg, str(out / direction / "pretrain"), corpus=corpus, max_steps=pretrain_steps)
        tuned = run_sft(run_cfg, str(out / direction / "sft"), init_from=pretrained, data=sft_data, max_steps=sft_steps)
        t1 = time.perf_counter()
        torch.manual_seed(cfg.seed)
        model, tokenizer = load_causal_lm(tuned).eval(), load_tokenizer(tuned)
        backward = load_causal_lm(pretrained).eval()
        measured = measure(model, tokenizer, world, questions, n=rcfg.n, weight=rcfg.weight, params=params,
                           backward_model=backward)
        measured["seconds"] = {"train": round(t1 - t0, 1), "measure": round(time.perf_counter() - t1, 1)}
        log.info("%s: trained in %.0fs, measured in %.0fs", names[direction], t1 - t0, time.perf_counter() - t1)
        results["models"][names[direction]] = measured
    table = format_table(results["models"])
    results["summary"] = (
        f"hallucination experiment: {results['questions']['held_out']} held-out and "
        f"{results['questions']['unseen']} unseen fact questions; {pretrain_steps} pretraining + {sft_steps} SFT "
        f"steps per model; N={rcfg.n} samples at temperature {rcfg.temperature:g}, rerank weight {rcfg.weight:g}")
    results["table"] = table
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2, ensure_ascii=False), encoding="utf-8")
    (out / "table.md").write_text(results["summary"] + "\n\n" + table + "\n", encoding="utf-8")
    results["path"] = str(out / "results.json")
    return results
