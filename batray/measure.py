"""Held-out measurements of a recipe run: the report's headline table (issue 19).

After the stages have run, `measure_run` measures each stage's claim from its artifacts on data that
stage never trained on, and returns one row per claim (`Claim`) plus the figures behind it:

- pretrain / grow: per-direction loss (Eq. 1's l2r and r2l sums) on the corpus texts pretraining held
  out (`data.held_out_fraction`, by a stable hash of the text), for the final model and the same
  architecture at initialization; Algorithm 1's stacked model against the final depth trained from
  scratch for the same parameter-tokens (`grow.compare_from_scratch`).
- expand: the function-preservation figure (max |delta logit| against the reference logits' std).
- sft: world-graded accuracy (`World.grade`) of greedy answers to the demo world's held-out questions
  (facts stated in the corpus, never asked in SFT or PPO data), before SFT (the pretrained model
  prompted with the chat template) and after; the share of answers that end with the end-of-turn token;
  and, to say why when it does not hold, whether each model holds the held-out facts (`knowledge_probe`)
  and how many answers name the entity asked about (`names_subject`).
- reward: pairwise accuracy on the pairs the reward stage held out (by pair id; the pairs of one prompt together), against 50%.
- ppo: on the same held-out questions, the same seeded sampling for the SFT and the PPO policy: mean
  reward (the reward model's normalized score), world-graded accuracy, KL(PPO || SFT reference).
- eval: the demo benchmarks' accuracy for each evaluated model against chance (25%), claimed for the
  `ppl` mode (the likeliest option text; `da` figures are reported beside it, not claimed), and the real
  CMMLU sample in `../shared/datasets` (when present), where a toy model is expected at chance.

Accuracies carry a Wilson 95% interval; means a normal 95% interval over items (paired where two
models answer the same items). Everything is small and batched: it adds seconds, not minutes.
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from batray.checkpoint import is_complete
from batray.config import RecipeConfig, join_uri

log = logging.getLogger("batray.measure")

Z95 = 1.959964
CHANCE = 0.25  # four options


# ---- statistics -------------------------------------------------------------------------------------


def wilson(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion k/n (Wilson 1927); (0, 1) when n is 0."""
    if n == 0:
        return 0.0, 1.0
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def mean_ci(values: list[float], z: float = Z95) -> tuple[float, float, float]:
    """(mean, low, high): the normal 95% interval of a mean, sd / sqrt(n) its standard error."""
    n = len(values)
    if n == 0:
        return math.nan, math.nan, math.nan
    m = sum(values) / n
    if n == 1:
        return m, m, m
    sd = math.sqrt(sum((v - m) ** 2 for v in values) / (n - 1))
    half = z * sd / math.sqrt(n)
    return m, m - half, m + half


def proportion(k: int, n: int) -> dict:
    lo, hi = wilson(k, n)
    return {"k": k, "n": n, "value": k / n if n else None, "low": lo, "high": hi}


def mean_figure(values: list[float]) -> dict:
    m, lo, hi = mean_ci(values)
    return {"n": len(values), "value": m, "low": lo, "high": hi}


def pct(p: dict) -> str:
    return f"{100 * p['value']:.1f}% ({p['k']}/{p['n']}; 95% CI {100 * p['low']:.1f}-{100 * p['high']:.1f}%)"


def num(m: dict, digits: int = 3) -> str:
    return f"{m['value']:.{digits}f} (95% CI {m['low']:.{digits}f} to {m['high']:.{digits}f}, n={m['n']})"


@dataclass
class Claim:
    """One headline row: what the stage should do, what was measured, against what, and whether it held."""

    stage: str
    claim: str
    measurement: str
    baseline: str
    figure: str
    held: bool | None  # None: not measured in this run (the note says why)
    note: str = ""
    values: dict = field(default_factory=dict)  # the numbers behind `figure`, for scripts


def not_measured(stage: str, claim: str, why: str) -> Claim:
    return Claim(stage, claim, "-", "-", "not measured", None, why)


# ---- models and answers --------------------------------------------------------------------------------


def _load(path: str):
    from batray.models.loading import load_model_and_tokenizer

    model, tok = load_model_and_tokenizer(path)
    return model.eval(), tok


def answer(model, tokenizer, prompts: list[str], *, temperature: float, max_new_tokens: int, seed: int,
           samples: int = 1, batch_size: int = 32) -> list:
    """Completions of each chat-rendered prompt (`samples` per prompt, in prompt order), seeded."""
    from batray.models.chat import chat_prompt_ids
    from batray.rollout.engine import HFRolloutEngine, SamplingParams

    ids = [chat_prompt_ids(tokenizer, p) for p in prompts for _ in range(samples)]
    engine = HFRolloutEngine(model, tokenizer, batch_size=batch_size)
    return engine.generate(ids, SamplingParams(temperature=temperature, max_new_tokens=max_new_tokens, seed=seed))


def ends_with_eot(completion, eot: set[int]) -> bool:
    return completion.finish_reason == "stop" and bool(completion.token_ids) and completion.token_ids[-1] in eot


def graded(world, questions: list[dict], completions: list, samples: int = 1) -> list[str]:
    return [world.grade(questions[i // samples]["fact_id"], c.text) for i, c in enumerate(completions)]


@torch.no_grad()
def sequence_logprobs(model, sequences: list[tuple[list[int], list[int]]], batch_size: int = 32) -> list[float]:
    """Sum of log pi(response token | prefix) for each (prompt ids, response ids), right-padded batches."""
    out = []
    for start in range(0, len(sequences), batch_size):
        chunk = sequences[start:start + batch_size]
        width = max(len(p) + len(r) for p, r in chunk)
        ids = torch.zeros((len(chunk), width), dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, (p, r) in enumerate(chunk):
            ids[i, :len(p) + len(r)] = torch.tensor(p + r)
            mask[i, :len(p) + len(r)] = 1
        logp = model(input_ids=ids, attention_mask=mask).logits.float().log_softmax(-1)
        for i, (p, r) in enumerate(chunk):
            if not r:
                out.append(0.0)
                continue
            pos = torch.arange(len(p) - 1, len(p) + len(r) - 1)
            out.append(float(logp[i, pos, torch.tensor(r)].sum()))
    return out


# ---- pretrain / grow ----------------------------------------------------------------------------------


def held_out_texts(cfg: RecipeConfig, corpus: str, limit: int = 96) -> list[str]:
    from batray.data.io import read_rows
    from batray.train.lm_data import is_held_out

    rows, _ = read_rows(corpus, "corpus")
    texts = [r["text"] for r in rows if isinstance(r.get("text"), str) and r["text"].strip()]
    held = [t for t in texts if is_held_out(t, cfg.data.held_out_fraction, cfg.seed)]
    return held[:limit]


@torch.no_grad()
def direction_losses(model, tokenizer, texts: list[str]) -> dict[str, list[float]]:
    """Per text, the mean token NLL of its l2r sample and of its r2l sample (Eq. 1's two sums)."""
    from batray.models.tokenizer import direction_ids
    from batray.train.lm_data import direction_samples

    l2r_id, r2l_id = direction_ids(tokenizer)
    out: dict[str, list[float]] = {"l2r": [], "r2l": []}
    encoded = tokenizer(texts, add_special_tokens=False)["input_ids"]
    samples = [s for ids in encoded
               for s in direction_samples(ids, l2r_id=l2r_id, r2l_id=r2l_id, eos_id=tokenizer.eos_token_id, want_r2l=True)]
    for start in range(0, len(samples), 32):
        chunk = samples[start:start + 32]
        width = max(len(s) for s, _ in chunk)
        ids = torch.zeros((len(chunk), width), dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, (s, _) in enumerate(chunk):
            ids[i, :len(s)] = torch.tensor(s)
            mask[i, :len(s)] = 1
        logp = model(input_ids=ids, attention_mask=mask).logits.float().log_softmax(-1)
        for i, (s, direction) in enumerate(chunk):
            tgt = torch.tensor(s[1:])
            nll = -logp[i, torch.arange(len(s) - 1), tgt].mean()
            out["r2l" if direction else "l2r"].append(float(nll))
    return out


def measure_pretrain(cfg: RecipeConfig, model_path: str, corpus: str, scratch_path: str | None,
                     stage: str) -> tuple[list[Claim], dict]:
    from transformers import AutoConfig, AutoModelForCausalLM

    texts = held_out_texts(cfg, corpus)
    if not texts:
        why = "no held-out corpus texts (data.held_out_fraction is 0 or the corpus is tiny)"
        return [not_measured(stage, "held-out loss falls in both directions", why)], {}
    model, tok = _load(model_path)
    torch.manual_seed(cfg.seed)
    init = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_path)).eval()
    final, start = direction_losses(model, tok, texts), direction_losses(init, tok, texts)
    figs = {d: {"init": mean_figure(start[d]), "final": mean_figure(final[d])} for d in ("l2r", "r2l")}
    held = all(figs[d]["final"]["high"] < figs[d]["init"]["low"] for d in figs)
    figure = "; ".join(f"{d}: {figs[d]['init']['value']:.2f} -> {num(figs[d]['final'], 2)}" for d in figs)
    rows = [Claim(stage, "held-out loss falls in both directions (Eq. 1)",
                  f"mean token NLL (nats) on {len(texts)} corpus texts held out of pretraining, l2r and r2l",
                  "the same architecture at initialization", figure, held, values=figs)]
    details = {"held_out_texts": len(texts), "direction_loss": figs}
    if scratch_path and is_complete(scratch_path):
        scratch_model, _ = _load(scratch_path)
        scratch = direction_losses(scratch_model, tok, texts)
        grown_all, scratch_all = final["l2r"] + final["r2l"], scratch["l2r"] + scratch["r2l"]
        diff = mean_figure([g - s for g, s in zip(grown_all, scratch_all)])
        compute = _grow_compute(Path(model_path).parent)
        g, s = mean_figure(grown_all), mean_figure(scratch_all)
        ratio = f"; compute grown/scratch {compute:.2f}" if compute else ""
        rows.append(Claim(
            "grow", "the stacked model is better than the final depth trained from scratch for the same compute (Alg. 1)",
            "held-out loss, both directions, stacked (grow/final) vs from scratch (grow/scratch/final)",
            "final depth from scratch, same parameter-tokens" + ratio,
            f"stacked {num(g, 3)}; scratch {num(s, 3)}; difference {num(diff, 3)}", diff["high"] < 0,
            note="" if diff["high"] < 0 else "the stacked model is not lower than scratch beyond the interval",
            values={"stacked": g, "scratch": s, "difference": diff, "compute_ratio": compute}))
        details["stacked_vs_scratch"] = {"stacked": g, "scratch": s, "difference": diff, "compute_ratio": compute}
    elif stage == "grow":
        rows.append(not_measured("grow", "the stacked model is better than the final depth from scratch",
                                 "grow.compare_from_scratch is false: no model trained from scratch to compare with"))
    return rows, details


def _grow_compute(grow_dir: Path) -> float | None:
    summary = grow_dir / "summary.json"
    if summary.is_file():
        return json.loads(summary.read_text()).get("compute_ratio")
    return None


# ---- expand -------------------------------------------------------------------------------------------


def measure_expand(model_path: str) -> tuple[list[Claim], dict]:
    report = Path(model_path) / "expansion.json"
    claim = "the widened model computes the same function (Eqs. 5-7)"
    if not report.is_file():
        return [not_measured("expand", claim, f"{report} not found")], {}
    data = json.loads(report.read_text())
    dev = data.get("deviation") or {}
    if "max_abs" not in dev:
        return [not_measured("expand", claim, "the probe was disabled (expand.probe_tokens)")], {}
    scale = dev.get("reference_logit_std") or 1.0
    rel = dev["max_abs"] / scale
    figure = f"max |delta logit| {dev['max_abs']:.2e} (mean {dev['mean_abs']:.2e}) vs logit std {scale:.3f}: {rel:.1e} of the scale"
    row = Claim("expand", claim, "max |delta logit| on a random probe batch, source vs widened",
                "the logits' own scale (std)", figure, rel < 1e-3, values={**dev, "relative": rel})
    return [row], {"deviation": dev, "source": data.get("source"), "target": data.get("target")}


# ---- sft, ppo -----------------------------------------------------------------------------------------


def statement_candidates(world, fact) -> list[str | int]:
    """The gold object first, then every rival of its kind (`batray.data.demo.rivals`)."""
    from batray.data.demo import rivals

    return [fact.object, *rivals(world, fact.object)]


def knowledge_probe(model, tokenizer, world, questions: list[dict]) -> dict:
    """Does the model hold the held-out facts as pretraining stated them? For each (fact, language) of
    the questions, the fact's first corpus sentence ("The capital of X is Y.") is scored with every
    candidate object (`statement_candidates`); the share where the gold sentence is the likeliest.

    This separates "the fact is not in the model" from "the model does not reach it from a question":
    it is the "why" of the SFT row when that row does not hold.
    """
    from batray.data.demo import render
    from batray.data.demo_text import TEMPLATES

    keys = dict.fromkeys((q["fact_id"], q["lang"]) for q in questions if q["fact_id"] in world.facts)
    texts, sizes = [], []
    for fact_id, lang in keys:
        fact = world.facts[fact_id]
        template = TEMPLATES[fact.relation]["state"][lang][0]
        candidates = [render(world, template, fact.subject, c, lang) for c in statement_candidates(world, fact)]
        texts += candidates
        sizes.append(len(candidates))
    # The tokenizer's own first token (a batray tokenizer's <|l2r|>, a stock BOS, else the sentence's first
    # token, the same for every candidate) is the prompt; the rest and EOS are scored, as pretraining reads it.
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    scores = sequence_logprobs(model, [(ids[:1], ids[1:] + eos) for ids in tokenizer(texts)["input_ids"]])
    right, start = 0, 0
    for n in sizes:
        block = scores[start:start + n]
        right += int(max(range(n), key=block.__getitem__) == 0)
        start += n
    return proportion(right, len(keys))


def names_subject(world, question: dict, text: str) -> bool:
    """Whether an answer names the entity the question asks about (a model that replays a trained
    answer names another one)."""
    subject = world.entities[question["subject"]]
    return question["subject"] in world.mentions(subject.type, text)


def held_out_questions(data_dir: str) -> list[dict]:
    """The demo world's held-out questions: facts stated in the corpus, never asked in SFT or PPO data."""
    path = Path(data_dir) / "hallucination" / "questions.jsonl"
    if not path.is_file():
        return []
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [r for r in rows if r.get("kind") == "held_out"]


def measure_sft(cfg: RecipeConfig, before: str, after: str, world, questions: list[dict]) -> tuple[list[Claim], dict]:
    from batray.models.chat import end_of_turn_ids, stop_token_ids

    max_new = cfg.ppo.sampling.max_new_tokens
    figs, examples = {}, {}
    for name, path in (("before", before), ("after", after)):
        model, tok = _load(path)
        done = answer(model, tok, [q["prompt"] for q in questions], temperature=0.0, max_new_tokens=max_new,
                      seed=cfg.seed)
        grades = graded(world, questions, done)
        eot = set(end_of_turn_ids(tok) or stop_token_ids(tok))
        figs[name] = {"accuracy": proportion(grades.count("right"), len(grades)),
                      "wrong": grades.count("wrong"), "unanswered": grades.count("unanswered"),
                      "ends_with_eot": proportion(sum(ends_with_eot(c, eot) for c in done), len(done)),
                      "names_subject": proportion(sum(names_subject(world, q, c.text) for q, c in zip(questions, done, strict=True)),
                                                  len(done)),
                      "knows_fact": knowledge_probe(model, tok, world, questions)}
        examples[name] = [{"question": q["prompt"], "gold": q["answer"], "answer": c.text, "grade": g}
                          for q, c, g in list(zip(questions, done, grades))[:6]]
    b, a = figs["before"], figs["after"]
    held = a["accuracy"]["low"] > b["accuracy"]["high"]
    figure = (f"before {pct(b['accuracy'])}; after {pct(a['accuracy'])}; end with end-of-turn: "
              f"before {100 * b['ends_with_eot']['value']:.0f}%, after {100 * a['ends_with_eot']['value']:.0f}%")
    row = Claim("sft", "instruction tuning makes the model answer held-out questions correctly, ending its turn (Eq. 2)",
                f"world-graded accuracy of greedy answers to {len(questions)} held-out demo-world questions "
                "(facts in the corpus, never asked in SFT/PPO data)",
                "the pretrained model prompted with the chat template", figure, held,
                note="" if held else _sft_why(b, a), values=figs)
    return [row], {"figures": figs, "examples": examples}


def _sft_why(before: dict, after: dict) -> str:
    """The SFT row's note when it does not hold: the overlap, and the two diagnostics that say why."""
    knows_b, knows_a, named = before["knows_fact"], after["knows_fact"], after["names_subject"]["value"]
    figures = (f"the right corpus sentence is the likeliest for {pct(knows_b)} of the held-out facts before SFT and "
               f"{pct(knows_a)} after; {100 * named:.0f}% of the after-SFT answers name the entity asked about")
    if knows_b["value"] < 0.5:
        reading = "pretraining did not store most of these facts, so no instruction tuning can retrieve them"
    elif named < 0.5:
        reading = ("the facts are in the pretrained model, but the tuned model replays answers it was trained on "
                   "instead of carrying the question's subject into its answer")
    else:
        reading = "the tuned model names the subject but does not recall the object"
    if knows_a["high"] < knows_b["low"]:
        reading += "; SFT also erased part of the stored facts"
    return (f"the after-SFT interval overlaps the before-SFT interval (after: {after['accuracy']['k']} right, "
            f"{after['wrong']} wrong, {after['unanswered']} unanswered). Why, measured: {figures}: {reading}")


def paired_rise(before: list[float], after: list[float], samples: int) -> dict:
    """The mean rise from `before` to `after` with its 95% interval, from paired differences, one per prompt.

    Both policies answer the same prompts with the same seeds (common random numbers), `samples` answers per
    prompt in prompt order. Each prompt gives one difference, the mean of its answers' rewards after minus
    before; the interval is over prompts. What varies from prompt to prompt (some questions are easy for
    both policies) is shared by the two sides and cancels, where an interval from the two means as
    independent samples would count it twice; answers to one prompt are correlated, so the prompt, not
    the answer, is the unit.
    """
    diffs = [a - b for a, b in zip(after, before, strict=True)]
    return mean_figure([sum(diffs[i:i + samples]) / samples for i in range(0, len(diffs), samples)])


def measure_ppo(cfg: RecipeConfig, sft: str, ppo: str, reward_model: str | None, world,
                questions: list[dict], samples: int = 4) -> tuple[list[Claim], dict]:
    from batray.ppo.reward import reward_stats, score_sequences
    from batray.reward.model import build_reward_model, read_reward_stats

    s = cfg.ppo.sampling
    prompts = [q["prompt"] for q in questions]
    runs, models = {}, {}
    for name, path in (("sft", sft), ("ppo", ppo)):
        model, tok = _load(path)
        models[name] = (model, tok)
        runs[name] = answer(model, tok, prompts, temperature=s.temperature, max_new_tokens=s.max_new_tokens,
                            seed=cfg.seed + 1, samples=samples)
    figs: dict = {}
    if reward_model and is_complete(reward_model):
        from batray.models.tokenizer import load_tokenizer

        rtok = load_tokenizer(reward_model)
        rm, _ = build_reward_model(reward_model, rtok, seed=None)
        mean, std = reward_stats(read_reward_stats(reward_model))
        for name, done in runs.items():
            scores = score_sequences(rm, [c.prompt_ids + c.token_ids for c in done], rtok.pad_token_id, 32)
            figs.setdefault(name, {})["rewards"] = ((scores - mean) / std).tolist()
    for name, done in runs.items():
        grades = graded(world, questions, done, samples)
        figs.setdefault(name, {})["accuracy"] = proportion(grades.count("right"), len(grades))
    # KL(PPO || SFT reference) per token on the PPO policy's samples: the k1 estimator, averaged per sequence.
    seqs = [(c.prompt_ids, c.token_ids) for c in runs["ppo"]]
    lp_ppo = sequence_logprobs(models["ppo"][0], seqs)
    lp_ref = sequence_logprobs(models["sft"][0], seqs)
    kl = mean_figure([(a - b) / max(1, len(r)) for (_, r), a, b in zip(seqs, lp_ppo, lp_ref)])
    details = {"samples_per_prompt": samples, "prompts": len(prompts), "kl_per_token": kl}
    acc_s, acc_p = figs["sft"]["accuracy"], figs["ppo"]["accuracy"]
    acc_ok = acc_p["value"] >= acc_s["low"]
    if "rewards" in figs["sft"]:
        r_s, r_p = mean_figure(figs["sft"]["rewards"]), mean_figure(figs["ppo"]["rewards"])
        gain = paired_rise(figs["sft"]["rewards"], figs["ppo"]["rewards"], samples)
        held = gain["low"] > 0 and acc_ok
        figure = (f"reward SFT {r_s['value']:.3f} -> PPO {r_p['value']:.3f}, rise {num(gain, 3)}; "
                  f"accuracy SFT {pct(acc_s)} -> PPO {pct(acc_p)}; KL(PPO||SFT) {kl['value']:.3f} nats/token")
        why = []
        if gain["low"] <= 0:
            why.append("the reward's rise is within its interval")
        if not acc_ok:
            why.append("the accuracy fell below the SFT policy's interval")
        row = Claim("ppo", "PPO raises the reward on held-out prompts without losing accuracy (Eq. 4)",
                    f"{samples} samples per held-out question ({len(prompts)} questions; temperature {s.temperature}, "
                    "the same seeds for both policies): mean normalized reward, its rise over paired per-question "
                    "differences, world-graded accuracy, KL to the reference",
                    "the SFT policy (PPO's start and reference)", figure, held, "; ".join(why),
                    values={"reward_sft": r_s, "reward_ppo": r_p, "reward_rise": gain, "accuracy_sft": acc_s,
                            "accuracy_ppo": acc_p, "kl_per_token": kl})
        details.update(reward_sft=r_s, reward_ppo=r_p, reward_rise=gain)
    else:
        row = Claim("ppo", "PPO keeps accuracy on held-out prompts", "world-graded accuracy on held-out prompts",
                    "the SFT policy", f"SFT {pct(acc_s)} -> PPO {pct(acc_p)}; KL {kl['value']:.3f} nats/token", acc_ok,
                    "a rule reward: no reward model to score with", values={"accuracy_sft": acc_s, "accuracy_ppo": acc_p})
    details.update(accuracy_sft=acc_s, accuracy_ppo=acc_p)
    return [row], details


# ---- reward -------------------------------------------------------------------------------------------


def measure_reward(reward_model: str) -> tuple[list[Claim], dict]:
    from batray.reward.model import read_reward_stats

    claim = "the reward model prefers the preferred response on held-out pairs (Eq. 3)"
    stats = read_reward_stats(reward_model)
    held_out = stats.get("held_out") or {}
    if not held_out.get("strict_pairs"):
        return [not_measured("reward", claim, "no held-out strict pairs (reward.held_out_fraction)")], {}
    n = held_out["strict_pairs"]
    k = round(held_out["accuracy"] * n)
    acc = proportion(k, n)
    row = Claim("reward", claim, f"pairwise accuracy on {n} strict pairs held out by pair id, a prompt's pairs together (never trained on)",
                "50% (a coin)", pct(acc), acc["low"] > 0.5,
                note="" if acc["low"] > 0.5 else "the interval reaches 50%", values={"accuracy": acc})
    return [row], {"accuracy": acc, "ties": held_out.get("ties"), "tie_accuracy": held_out.get("tie_accuracy"),
                   "calibration": held_out.get("calibration") or []}


# ---- eval ---------------------------------------------------------------------------------------------


def eval_figures(eval_dir: str) -> dict:
    """{benchmark: {model label: {"<mode>_<k>shot": proportion}}} from the eval stage's results.json files."""
    from batray.eval.results import find_results

    out: dict = {}
    if not Path(eval_dir).is_dir():
        return out
    for r in find_results([eval_dir]):
        key = f"{r.get('mode')}_{r.get('shots')}shot"
        out.setdefault(r["benchmark"], {}).setdefault(r.get("model_label", "?"), {})[key] = proportion(r["correct"], r["n"])
    return out


CLAIMED_MODE = "ppl"  # the eval claim is made for the likelihood mode; other modes are reported beside it


def measure_eval(cfg: RecipeConfig, eval_dir: str) -> tuple[list[Claim], dict]:
    """Per demo benchmark: every evaluated model's `ppl` settings above chance (the claim).

    `ppl` ranks the four options' texts by likelihood, which is how a toy base-sized model is judged (OpenCompass's
    ppl mode); `da` (the model writes the answer letter, the paper's setting) asks a 300k-parameter model to map
    a fact it knows onto an arbitrary letter, a skill the tiny recipe never trains. Those figures are shown in
    the same row, marked as reported, not claimed; when no `ppl` run exists, every setting is claimed."""
    figs = eval_figures(eval_dir)
    rows = []
    names = {"cmmlu": "CMMLU", "ceval": "C-Eval"}
    for bench, models in sorted(figs.items()):
        has_claimed = any(k.startswith(f"{CLAIMED_MODE}_") for runs in models.values() for k in runs)
        claimed, reported, held = [], [], True
        for label, runs in sorted(models.items()):
            for key, p in sorted(runs.items()):
                text = f"{label} {key.replace('_', ' ')}: {pct(p)}"
                if key.startswith(f"{CLAIMED_MODE}_") or not has_claimed:
                    claimed.append(text)
                    held &= p["low"] > CHANCE
                else:
                    reported.append(text)
        mode = f" in {CLAIMED_MODE} mode (the likeliest option text)" if has_claimed else ""
        figure = "; ".join(claimed)
        if reported:
            figure += "; reported, not claimed: " + "; ".join(reported)
        notes = [] if held else ["at least one claimed interval reaches 25%"]
        if reported:
            above = sum(1 for runs in models.values() for k, p in runs.items()
                        if not k.startswith(f"{CLAIMED_MODE}_") and p["low"] > CHANCE)
            notes.append(f"other modes (not claimed): {above} of {len(reported)} intervals above 25%")
        rows.append(Claim("eval", f"SFT and PPO models are above chance on the demo {names.get(bench, bench)}{mode} "
                                  "(questions on the corpus's facts)",
                          f"accuracy on the demo world's {names.get(bench, bench)}-layout test items",
                          "chance, 25%", figure, held, note="; ".join(notes), values=models))
    if not rows:
        rows.append(not_measured("eval", "above chance on the demo benchmarks", f"no results under {eval_dir}"))
    return rows, {"demo": figs}


def shared_datasets() -> Path | None:
    """`../shared/datasets` next to the checkout (or $BATRAY_SHARED_DATASETS), when it holds CMMLU."""
    candidates = [os.environ.get("BATRAY_SHARED_DATASETS"), Path.cwd().parent / "shared" / "datasets",
                  Path(__file__).resolve().parents[2] / "shared" / "datasets"]
    for c in candidates:
        if c and (Path(c) / "cmmlu" / "test").is_dir():
            return Path(c)
    return None


def measure_real_cmmlu(cfg: RecipeConfig, models: dict[str, str], out_dir: str, scorer_cls,
                       limit: int = 3) -> tuple[list[Claim], dict]:
    from batray.eval.run import evaluate

    claim = "a toy model is at chance on real CMMLU (expected: it knows only the demo world)"
    root = shared_datasets()
    if root is None:
        return [not_measured("eval", claim, "../shared/datasets/cmmlu not present")], {}
    if scorer_cls is None:
        return [not_measured("eval", claim, "no eval scorer actor class handed in")], {}
    ecfg = cfg.eval.model_copy(update={"limit": limit, "subjects": None, "chat": False})
    figs, parts = {}, []
    for label, path in models.items():
        run = Path(out_dir, "cmmlu_real", label, "da_0shot")
        if (run / "results.json").is_file():
            res = json.loads((run / "results.json").read_text())
        else:
            res = evaluate(path, "cmmlu", str(root), run, shots=0, mode="da", ecfg=ecfg, scorer_cls=scorer_cls, label=label)
        figs[label] = proportion(res["correct"], res["n"])
        parts.append(f"{label}: {pct(figs[label])}")
    held = all(p["low"] <= CHANCE <= p["high"] for p in figs.values())
    row = Claim("eval", claim, f"0-shot accuracy on {limit} real CMMLU test items per subject ({root}/cmmlu)",
                "chance, 25%", "; ".join(parts), held,
                note="at chance, as expected for a toy model" if held else "an interval excludes 25%", values=figs)
    return [row], {"real_cmmlu": figs, "data": str(root / "cmmlu")}


# ---- the whole run ------------------------------------------------------------------------------------


def measure_run(cfg: RecipeConfig, kit=None) -> dict:
    """Every measurable claim of the stages this run has; writes `<run_dir>/report.json`'s measurements."""
    from batray.data.world import World
    from batray.stages.registry import resolve

    run = Path(cfg.run_dir)
    stages = list(cfg.stages)
    rows: list[Claim] = []
    details: dict = {}
    data_dir = join_uri(cfg.run_dir, "data")
    world_path = Path(data_dir) / "world.json"
    world = World.load(world_path) if world_path.is_file() else None
    questions = held_out_questions(data_dir)

    def done(stage: str) -> str | None:
        path = join_uri(cfg.stage_dir(stage), "final")
        return path if stage in stages and is_complete(path) else None

    def attempt(stage: str, fn, *args):
        try:
            got, info = fn(*args)
        except Exception as e:  # a failed measurement is a row that says so, never a failed run
            log.exception("measure %s", stage)
            got, info = [not_measured(stage, "measurement", f"failed: {type(e).__name__}: {e}")], {}
        rows.extend(got)
        details.setdefault(stage, {}).update(info)

    corpus = resolve(cfg, "pretrain").inputs["corpus"].value if "pretrain" in stages or "grow" in stages else None
    for stage in [s for s in stages if s in ("pretrain", "grow")]:  # recipe order: pretrain may continue grow's model
        if done(stage) and corpus:
            scratch = join_uri(cfg.stage_dir("grow"), "scratch/final") if stage == "grow" else None
            attempt(stage, measure_pretrain, cfg, done(stage), corpus, scratch, stage)
    if done("expand"):
        attempt("expand", measure_expand, done("expand"))
    if done("sft") and world and questions:
        before = resolve(cfg, "sft").inputs["model"].value
        attempt("sft", measure_sft, cfg, before, done("sft"), world, questions)
    if done("reward"):
        attempt("reward", measure_reward, done("reward"))
    if done("ppo") and world and questions:
        plan = resolve(cfg, "ppo")
        reward_model = None if plan.inputs["reward_model"].unused else plan.inputs["reward_model"].value
        attempt("ppo", measure_ppo, cfg, plan.inputs["policy"].value, done("ppo"), reward_model, world, questions)
    if "eval" in stages and Path(cfg.stage_dir("eval")).is_dir():
        attempt("eval", measure_eval, cfg, cfg.stage_dir("eval"))
        from batray.eval.run import model_labels

        models = model_labels(resolve(cfg, "eval").inputs["models"].value or [])
        scorer = kit.get("eval_scorer") if kit is not None else None
        attempt("eval", measure_real_cmmlu, cfg, models, str(run / "measure"), scorer)
    return {"headline": [asdict(r) for r in rows], "stages": details}
