"""The reversal-curse experiment (`batray experiment reversal`): the "limited memory" claim of §3.1.

Two tiny models are pretrained on the demo world's capital facts stated in one direction only ("The
capital of A is B"), one left to right only (`pretrain.direction=l2r`), one with Eq. 1 (both
directions), with the same rows, steps and batch. Both are then asked the reverse question ("B is the
capital of ...") as a 4-way choice scored by log p(completion | prompt) read left to right; the forward
question is the control. The bidirectional model is also asked through its right-to-left reading:
which A makes "The capital of A is B." likeliest when read from B backwards. Chance is 1 / choices.
"""

from __future__ import annotations

import json
from pathlib import Path

from batray.config import RecipeConfig
from batray.data.io import read_rows
from batray.ray_session import init_ray

# Defaults of the reversal experiment; any `key=value` on the command line overrides them.
REVERSAL_DEFAULTS = [
    "data.held_out_fraction=0",  # the probes are reverse questions, not held-out text: train on every fact
    "pretrain.seq_len=64",
    "pretrain.micro_batch_size=16",
    "pretrain.log_every=25",
    "pretrain.ckpt_every=100000",
    "pretrain.optim.lr=3e-3",
    "pretrain.optim.warmup_steps=10",
    "pretrain.scaling.num_workers=1",
    "pretrain.deepspeed.zero_stage=0",
]



def run_reversal(cfg: RecipeConfig, steps: int) -> dict:
    """Train both models (skipped when already trained), score the probes, write results.json."""
    from batray.models.tokenizer import save_tokenizer, train_bpe
    from batray.train.pretrain import run_pretrain
    from batray.train.stage import demo_data_file

    train = demo_data_file(cfg, "reversal/train.jsonl")
    reverse_rows, _ = read_rows(demo_data_file(cfg, "reversal/test.jsonl"), "prompts")
    forward_rows, _ = read_rows(demo_data_file(cfg, "reversal/forward.jsonl"), "prompts")
    out = Path(cfg.run_dir, "experiments", "reversal")
    tok_dir = out / "tokenizer"
    if not (tok_dir / "tokenizer_config.json").exists():  # one tokenizer for both models: equal data
        texts = [r["text"] for r in read_rows(train, "corpus")[0]]
        texts += [r["prompt"] + r["completion"] for r in reverse_rows + forward_rows]
        save_tokenizer(train_bpe(texts, vocab_size=cfg.model.vocab_size), tok_dir)
    cfg = cfg.model_copy(update={"model": cfg.model.model_copy(update={"tokenizer": str(tok_dir)})})

    init_ray(cfg)
    results: dict = {"steps": steps, "train_rows": len(read_rows(train, "corpus")[0]), "models": {}}
    for direction in ("l2r", "both"):
        pcfg = cfg.pretrain.model_copy(update={"direction": direction})
        final = run_pretrain(cfg.model_copy(update={"pretrain": pcfg}), str(out / direction), corpus=train,
                             max_steps=steps)
        results["models"][direction] = score_model(final, reverse_rows, forward_rows,
                                                   with_r2l=direction == "both")
    (out / "results.json").write_text(json.dumps(results, indent=2, ensure_ascii=False))
    results["path"] = str(out / "results.json")
    return results


def score_model(checkpoint: str, reverse_rows: list[dict], forward_rows: list[dict], with_r2l: bool) -> dict:
    """Accuracies of one checkpoint on the reverse probes and the forward control."""
    from batray.models.presets import load_causal_lm
    from batray.models.tokenizer import load_tokenizer

    model = load_causal_lm(checkpoint).eval()
    tokenizer = load_tokenizer(checkpoint)
    scores = {
        "reverse_l2r": choice_accuracy(model, tokenizer, [(r["prompt"], r["completion"], r["answer"], r["choices"])
                                                          for r in reverse_rows], "l2r"),
        "forward_l2r": choice_accuracy(model, tokenizer, [(r["prompt"], r["completion"], r["answer"], r["choices"])
                                                          for r in forward_rows], "l2r"),
        "chance": sum(1 / len(r["choices"]) for r in reverse_rows) / len(reverse_rows),
    }
    if with_r2l:
        scores["reverse_r2l"] = choice_accuracy(model, tokenizer, reverse_as_cloze(reverse_rows, forward_rows), "r2l")
    return scores


def reverse_as_cloze(reverse_rows: list[dict], forward_rows: list[dict]) -> list[tuple[str, str, str, list[str]]]:
    """A reverse question as the training sentence with the asked-for name blank, for a right-to-left
    reading: "The capital of ___ is B." is scored from B backwards, so the choice is predicted from B.

    Each reverse probe (B -> A) is paired with the forward probe of the same fact (A -> B); the text is
    the forward prompt with A replaced by the choice, then the forward completion. Returned as
    (prefix, suffix, answer, choices) where the whole sentence is prefix.replace(answer, choice) + suffix.
    """
    items = []
    for r in reverse_rows:
        matches = [f for f in forward_rows if f["lang"] == r["lang"] and r["answer"] in f["prompt"]
                   and f["answer"] in r["prompt"]]
        if not matches:
            continue
        f = matches[0]
        items.append((f["prompt"], f["completion"], r["answer"], r["choices"]))
    return items


def choice_accuracy(model, tokenizer, items, direction: str) -> float:
    """Share of items whose answer is the likeliest choice.

    l2r: score = log p(completion | prompt) = log p(prompt + completion) - log p(prompt), read left to
    right after `<|l2r|>`. r2l: score = log p(sentence) read right to left after `<|r2l|>` (Eq. 1's
    second term); the sentence is the prompt with the answer replaced by the choice, plus the completion.
    """
    from batray.models.tokenizer import direction_ids
    from batray.objectives.lm import sequence_logprob

    l2r_id, r2l_id = direction_ids(tokenizer)
    correct = 0
    for prompt, completion, answer, choices in items:
        if direction == "l2r":
            texts = [prompt + completion.replace(answer, c) for c in choices]
            seqs = [[l2r_id, *tokenizer(t, add_special_tokens=False)["input_ids"]] for t in texts]
            prompt_ids = [l2r_id, *tokenizer(prompt, add_special_tokens=False)["input_ids"]]
            scores = sequence_logprob(model, seqs) - sequence_logprob(model, [prompt_ids])[0]
        else:
            texts = [prompt.replace(answer, c) + completion for c in choices]
            seqs = [[r2l_id, *reversed(tokenizer(t, add_special_tokens=False)["input_ids"])] for t in texts]
            scores = sequence_logprob(model, seqs)
        correct += choices[int(scores.argmax())] == answer
    return correct / max(1, len(items))


def format_reversal(results: dict) -> str:
    m = results["models"]
    lines = [
        f"reversal curse experiment: {results['train_rows']} training sentences (one direction only), "
        f"{results['steps']} steps per model; chance {m['l2r']['chance']:.0%}",
        f"  left-to-right only model:  reverse question {m['l2r']['reverse_l2r']:.1%}   "
        f"(forward control {m['l2r']['forward_l2r']:.1%})",
        f"  bidirectional (Eq. 1):     reverse question {m['both']['reverse_l2r']:.1%}   "
        f"(forward control {m['both']['forward_l2r']:.1%})",
        f"  bidirectional, read right to left (\"The capital of ___ is B.\" from B backwards): "
        f"{m['both']['reverse_r2l']:.1%}",
    ]
    if "path" in results:
        lines.append(f"  results: {results['path']}")
    return "\n".join(lines)
