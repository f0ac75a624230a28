"""Token-level batched generation for the server: one decode loop over rows with their own settings.

A `GenRow` is one sequence to generate (a request with `n = 3` becomes three rows). Rows of a batch
may differ in temperature, top_p, max_tokens, stop strings, seed and logprobs: every row samples
from its own `torch.Generator`, so a seeded request gives the same text whatever else shares its
batch. The loop emits a `StepOut` per row per step, which is how streaming works.

Log-probabilities are those of the model's raw distribution (temperature 1, no top_p), as OpenAI
and vLLM (default `raw_logprobs`) report them; the judge's confidence relies on that.
"""

from __future__ import annotations

import inspect
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from batray.models.chat import stop_token_ids
from batray.models.tokenizer import pad_id


@dataclass
class TokenInfo:
    token: str  # the token's text
    logprob: float | None  # None only for a prompt's first token (nothing predicts it)
    top: list[tuple[str, float]] = field(default_factory=list)  # [(token text, logprob)], best first


@dataclass
class StepOut:
    delta: str  # new text, safe to show (no partial stop string, no partial UTF-8 character)
    tokens: list[TokenInfo]  # tokens generated this step (with logprobs when asked)
    finish_reason: str | None = None  # "stop" | "length" | "error" when the row is done
    error: str | None = None
    num_tokens: int = 1  # tokens this StepOut accounts for (usage counts)
    prompt: list[TokenInfo] | None = None  # the prompt's own tokens and logprobs (`prompt_logprobs` rows)
    status: int = 500  # the HTTP status of an error (503: the server is stopping)


@dataclass(eq=False)
class GenRow:
    prompt_ids: list[int]
    max_tokens: int  # 0: score the prompt only (with prompt_logprobs)
    temperature: float = 1.0
    top_p: float = 1.0
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    top_logprobs: int | None = None  # None: no logprobs; k >= 0: the chosen token's plus the k best
    prompt_logprobs: bool = False  # also report every prompt token's logprob (echo with logprobs)
    ignore_eos: bool = False  # end-of-sequence tokens do not end the row
    emit: Callable[[StepOut], None] = lambda out: None
    cancelled: bool = False  # set by the server when the client went away (the row leaves its batch)
    started: bool = False  # set once the row emitted anything (a failed batch is retried only before)
    done: bool = False  # set once the row emitted its finish


def stop_cut(text: str, stops: list[str]) -> int | None:
    """Index where the earliest stop string starts in `text`, or None."""
    hits = [i for i in (text.find(s) for s in stops) if i >= 0]
    return min(hits) if hits else None


def safe_prefix_len(text: str, stops: list[str]) -> int:
    """How much of `text` can be shown now: hold back a tail that may be the start of a stop string,
    and a trailing replacement character (half of a multi-byte character)."""
    end = len(text)
    while end and text[end - 1] == "\ufffd":
        end -= 1
    hold = 0
    for s in stops:
        for k in range(min(len(s) - 1, end), 0, -1):
            if text[:end].endswith(s[:k]):
                hold = max(hold, k)
                break
    return end - hold


def sample_next(logits: torch.Tensor, temperature: float, top_p: float, gen: torch.Generator) -> int:
    """One token from a row of logits: greedy at temperature 0, else nucleus sampling."""
    if temperature == 0:
        return int(logits.argmax())
    probs = torch.softmax(logits.float() / temperature, dim=-1).cpu()
    if top_p < 1.0:
        sorted_p, order = probs.sort(descending=True)
        keep = (sorted_p.cumsum(-1) - sorted_p) < top_p  # the smallest set whose mass reaches top_p
        probs = torch.zeros_like(probs).scatter(0, order[keep], sorted_p[keep])
    return int(torch.multinomial(probs, 1, generator=gen))


class HFGenerator:
    """A transformers causal LM decoded step by step with a KV cache; rows left-padded into one batch."""

    def __init__(self, model, tokenizer, device: str | torch.device = "cpu"):
        self.model = model.to(device).eval()
        self.tokenizer = tokenizer
        self.device = torch.device(device)
        self.stop_ids = set(stop_token_ids(tokenizer, getattr(model, "generation_config", None)))
        self.pad_id = pad_id(tokenizer)
        self.context_len = int(getattr(model.config, "max_position_embeddings", 2048))
        self.vocab_size = int(model.get_input_embeddings().num_embeddings)
        self._token_text: dict[int, str] = {}
        self.lock = threading.Lock()  # one forward at a time: the generation loop and choice scoring
        # transformers 5 renamed `past_key_values` to `cache` in forward(); older models keep the old name.
        params = inspect.signature(model.forward).parameters
        self._cache_kwarg = "cache" if "cache" in params else "past_key_values"
        self._keep_last = {"logits_to_keep": 1} if "logits_to_keep" in params else {}  # no [B, T, V] prefill logits

    def token_text(self, token_id: int) -> str:
        if token_id not in self._token_text:
            self._token_text[token_id] = self.tokenizer.decode([token_id])
        return self._token_text[token_id]

    @torch.no_grad()
    def score_choices(self, prompt_ids: list[int], choices: list[str]) -> list[float]:
        """log p(choice | prompt) of each choice string, summed over its tokens (for `guided_choice`)."""
        seqs = [self.tokenizer(c, add_special_tokens=False)["input_ids"] for c in choices]
        width = len(prompt_ids) + max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, s in enumerate(seqs):  # right padding: every choice starts right after the prompt
            ids[i, : len(prompt_ids) + len(s)] = torch.tensor(prompt_ids + s)
            mask[i, : len(prompt_ids) + len(s)] = 1
        with self.lock:
            logits = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device)).logits
        logp = logits.float().log_softmax(-1)
        out = []
        for i, s in enumerate(seqs):
            pos = torch.arange(len(prompt_ids) - 1, len(prompt_ids) - 1 + len(s))
            out.append(float(logp[i, pos, torch.tensor(s)].sum()))
        return out

    @torch.no_grad()
    def generate(self, rows: list[GenRow]) -> None:
        """Generate every row to its end, calling `row.emit` once per step per live row.

        A row whose own settings fail (a seed torch cannot take, a token id outside the vocabulary)
        is answered with an error alone; the others of the batch go on. Finished and cancelled rows
        leave the batch (their KV cache rows are dropped), so they cost nothing after they end.
        """
        with self.lock:
            self._generate(rows)

    def _prepare(self, rows: list[GenRow]) -> tuple[list[GenRow], list[torch.Generator]]:
        ok, gens = [], []
        for r in rows:
            if r.cancelled:
                continue
            try:
                bad = [t for t in r.prompt_ids if not 0 <= t < self.vocab_size]
                if bad or not r.prompt_ids:
                    raise ValueError(f"prompt token id {bad[0] if bad else None} is outside the vocabulary [0, {self.vocab_size})")
                g = torch.Generator(device="cpu")
                g.manual_seed(r.seed) if r.seed is not None else g.seed()
            except (ValueError, RuntimeError, OverflowError, TypeError) as e:
                r.emit(StepOut("", [], "error", error=f"{type(e).__name__}: {e}", num_tokens=0))
                continue
            ok.append(r)
            gens.append(g)
        return ok, gens

    def _prompt_infos(self, logits: torch.Tensor, r: GenRow, width: int) -> list[TokenInfo]:
        """Every prompt token with its logprob given the tokens before it (the first has none)."""
        n = len(r.prompt_ids)
        k = r.top_logprobs or 0
        infos = [TokenInfo(self.token_text(r.prompt_ids[0]), None, [])]
        if n > 1:
            # left padding: the prompt sits in the last n positions; position p predicts token p + 1
            logp = logits[width - n: width - 1].float().log_softmax(-1)
            target = torch.tensor(r.prompt_ids[1:], device=logp.device)
            chosen = logp.gather(1, target[:, None])[:, 0].tolist()
            if k:
                top_lp, top_id = logp.topk(min(k, logp.shape[-1]), dim=-1)
                top_lp, top_id = top_lp.tolist(), top_id.tolist()
            for j, tok in enumerate(r.prompt_ids[1:]):
                top = [(self.token_text(t), v) for t, v in zip(top_id[j], top_lp[j])] if k else []
                infos.append(TokenInfo(self.token_text(tok), chosen[j], top))
        return infos

    def _generate(self, rows: list[GenRow]) -> None:
        rows, gens = self._prepare(rows)
        if not rows:
            return
        width = max(len(r.prompt_ids) for r in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, r in enumerate(rows):
            ids[i, width - len(r.prompt_ids):] = torch.tensor(r.prompt_ids)
            mask[i, width - len(r.prompt_ids):] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        out_ids: list[list[int]] = [[] for _ in rows]
        shown = [0] * len(rows)  # characters of text already emitted per row
        want_top = max((r.top_logprobs or 0) for r in rows if r.top_logprobs is not None) if any(
            r.top_logprobs is not None for r in rows) else None
        # Prompt logprobs (echo) need the logits of every prompt position; otherwise only the last one.
        want_prompt = any(r.prompt_logprobs for r in rows)

        out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True,
                         **({} if want_prompt else self._keep_last))
        past = getattr(out, self._cache_kwarg)
        can_drop = hasattr(past, "batch_select_indices")
        if want_prompt:
            for i, r in enumerate(rows):
                if r.prompt_logprobs:
                    r.emit(StepOut("", [], prompt=self._prompt_infos(out.logits[i], r, width), num_tokens=0))
        logits = out.logits[:, -1, :].clone() if want_prompt else out.logits[:, -1, :]
        del out  # (with prompt logprobs: the [B, T, V] logits are freed here)
        for r in rows:
            if r.max_tokens == 0:  # score only: the prompt was all that was asked
                r.emit(StepOut("", [], "length", num_tokens=0))
        live = [i for i, r in enumerate(rows) if r.max_tokens > 0]  # batch position b holds rows[live[b]]
        if not live:
            return
        if can_drop and len(live) < len(rows):
            keep = torch.tensor(live, device=self.device)
            logits, mask, positions = logits[keep], mask[keep], positions[keep]
            past.batch_select_indices(keep)
        else:
            live = list(range(len(rows)))
        ended = [r.max_tokens == 0 for r in rows]
        for _step in range(max(r.max_tokens for r in rows)):
            logp = logits.float().log_softmax(-1) if want_top is not None else None
            if want_top:
                top_lp, top_id = logp.topk(min(want_top, logp.shape[-1]), dim=-1)
            next_ids = torch.full((len(live),), self.pad_id, dtype=torch.long)
            for b, i in enumerate(live):
                r = rows[i]
                if ended[i]:
                    continue
                if r.cancelled:
                    ended[i] = True
                    continue
                tok = sample_next(logits[b], r.temperature, r.top_p, gens[i])
                next_ids[b] = tok
                info = []
                if r.top_logprobs is not None:
                    top = []
                    if r.top_logprobs:
                        top = [(self.token_text(int(t)), float(v))
                               for t, v in zip(top_id[b, : r.top_logprobs].tolist(), top_lp[b, : r.top_logprobs].tolist())]
                    info = [TokenInfo(self.token_text(tok), float(logp[b, tok]), top)]
                finish = None
                if tok in self.stop_ids and not r.ignore_eos:
                    finish = "stop"
                else:
                    out_ids[i].append(tok)
                text = self.tokenizer.decode(out_ids[i], skip_special_tokens=True)
                cut = stop_cut(text, r.stop)
                if cut is not None:
                    text, finish = text[:cut], "stop"
                elif finish is None and len(out_ids[i]) >= r.max_tokens:
                    finish = "length"
                upto = len(text) if finish else safe_prefix_len(text, r.stop)
                delta = text[shown[i]:upto] if upto > shown[i] else ""
                shown[i] = max(shown[i], upto)
                r.emit(StepOut(delta, info, finish))
                if finish:
                    ended[i] = True
            still = [b for b, i in enumerate(live) if not ended[i] and not rows[i].cancelled]
            if not still:
                break
            if can_drop and len(still) < len(live):  # finished and cancelled rows leave the batch
                keep = torch.tensor(still, device=self.device)
                next_ids, mask, positions = next_ids[still], mask[keep], positions[keep]
                past.batch_select_indices(keep)
                live = [live[b] for b in still]
            mask = torch.cat([mask, torch.ones((len(live), 1), dtype=mask.dtype, device=self.device)], dim=1)
            positions = positions[:, -1:] + 1
            out = self.model(input_ids=next_ids[:, None].to(self.device), attention_mask=mask,
                             position_ids=positions, use_cache=True, **{self._cache_kwarg: past})
            past = getattr(out, self._cache_kwarg)
            logits = out.logits[:, -1, :]
