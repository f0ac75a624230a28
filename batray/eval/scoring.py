"""Scoring backends: a local causal LM (transformers) or an OpenAI-compatible endpoint.

Both answer two questions about a batch of prompts:
- `letter_scores(prompts)`: the next-token scores of A/B/C/D after each prompt (`da` mode: the
  prediction is their argmax). Locally this is ONE forward pass per item, batched, keeping only the
  last position's logits. An endpoint gives the top log-probabilities of its first generated token
  (top 5 on `/v1/completions`, that API's limit; top 20 on chat); a letter absent from them scores
  -inf; an endpoint that returns no log-probabilities gets None and the caller falls back to
  reading the letter from the generated text.
- `generate(prompts, max_new_tokens)`: greedy text (`cot` mode).

The letter token ids (local): for each letter L, the last token of encoding `prompt + L`, checked to
be exactly one token appended to the encoding of `prompt`; this works for byte-level BPE (where
"A".."D" are single tokens), SentencePiece ("▁A" vs "A" depends on the context) and others alike.
When a tokenizer merges the letter into the preceding text, the first token of encoding L alone is
used and a warning is logged. Ids are cached per prompt ending.
"""

from __future__ import annotations

import logging
import math
from concurrent.futures import ThreadPoolExecutor

import torch

from batray.errors import BatrayError
from batray.eval.data import LETTERS

log = logging.getLogger(__name__)


def is_endpoint(model: str) -> bool:
    return model.startswith(("http://", "https://"))


class LocalBackend:
    """A causal LM checkpoint (folder or hub id) on this process's device.

    Plain prompts are encoded as the tokenizer encodes text, its BOS included (`<|l2r|>` for a batray
    checkpoint: Eq. 1 taught it every left-to-right text after that token; the tokenizer adds it);
    `chat` prompts are already rendered by the chat template, which writes its own BOS.
    """

    def __init__(self, path: str, device: str = "cpu", dtype: torch.dtype = torch.float32, batch_size: int = 8,
                 model=None, tokenizer=None, chat: bool = False, chat_template: str | None = None):
        from batray.models.loading import load_model_and_tokenizer

        self.name = path
        if model is None:
            model, tokenizer = load_model_and_tokenizer(path, tokenizer=tokenizer, chat_template=chat_template,
                                                        dtype=dtype)
        elif tokenizer is None:
            from batray.models.tokenizer import load_tokenizer

            tokenizer = load_tokenizer(path, chat_template=chat_template)
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.chat = chat
        self.device = torch.device(device)
        self.model.to(self.device)
        self.batch_size = batch_size
        self.context = int(getattr(self.model.config, "max_position_embeddings", 0) or 4096)
        self._letter_ids: dict[str, list[int]] = {}
        self.truncated = 0  # prompts cut from the left because they exceeded the context

    # -- tokens -------------------------------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        bos = self.tokenizer.bos_token
        rendered = self.chat or bool(bos and text.startswith(bos))  # a template wrote the BOS already
        return self.tokenizer.encode(text, add_special_tokens=not rendered)

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer.encode(text, add_special_tokens=False))

    def letter_ids(self, prompt: str) -> list[int]:
        key = prompt[-8:]
        if key not in self._letter_ids:
            base = self.tokenizer.encode(prompt, add_special_tokens=False)
            ids = []
            for letter in LETTERS:
                full = self.tokenizer.encode(prompt + letter, add_special_tokens=False)
                if len(full) == len(base) + 1 and full[: len(base)] == base:
                    ids.append(full[-1])
                else:
                    alone = self.tokenizer.encode(letter, add_special_tokens=False)
                    log.warning("letter %s merges with the prompt's last token; scoring token %r", letter,
                                self.tokenizer.convert_ids_to_tokens(alone[0]))
                    ids.append(alone[0])
            if len(set(ids)) != 4:
                raise BatrayError(f"the tokenizer maps A/B/C/D to the same token ids {ids}; cannot score letters")
            self._letter_ids[key] = ids
        return self._letter_ids[key]

    def _batch(self, seqs: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Left-padded ids, attention mask and position ids (positions count real tokens only)."""
        width = max(len(s) for s in seqs)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        ids = torch.full((len(seqs), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, s in enumerate(seqs):
            ids[i, width - len(s):] = torch.tensor(s)
            mask[i, width - len(s):] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        return ids.to(self.device), mask.to(self.device), positions.to(self.device)

    def _fit(self, ids: list[int], room: int) -> list[int]:
        """Keep the last tokens when a prompt would overflow the context (counted)."""
        limit = self.context - room
        if len(ids) > limit:
            self.truncated += 1
            return ids[-limit:]
        return ids

    # -- da -----------------------------------------------------------------------------------
    @torch.no_grad()
    def letter_scores(self, prompts: list[str]) -> list[list[float]]:
        """Next-token logits of A/B/C/D after each prompt: one forward pass per item, batched."""
        out: list[list[float]] = []
        for start in range(0, len(prompts), self.batch_size):
            chunk = prompts[start:start + self.batch_size]
            ids, mask, pos = self._batch([self._fit(self.encode(p), 1) for p in chunk])
            logits = self.model(input_ids=ids, attention_mask=mask, position_ids=pos, logits_to_keep=1).logits[:, -1]
            for p, row in zip(chunk, logits.float()):
                out.append(row[self.letter_ids(p)].tolist())
        return out

    @torch.no_grad()
    def letter_scores_separately(self, prompts: list[str]) -> list[list[float]]:
        """The 4-pass baseline some harnesses use: score `prompt + L` as its own sequence per option.

        Returns log p(L | prompt) per letter (same argmax as `letter_scores`), at four forward
        sequences per item; kept for the benchmark that compares the two.
        """
        seqs, owners = [], []
        for i, p in enumerate(prompts):
            ctx = self._fit(self.encode(p), 1)
            for letter_id in self.letter_ids(p):
                seqs.append(ctx + [letter_id])
                owners.append(i)
        scores = [[0.0] * 4 for _ in prompts]
        for start in range(0, len(seqs), self.batch_size):
            chunk = seqs[start:start + self.batch_size]
            ids, mask, pos = self._batch(chunk)
            logits = self.model(input_ids=ids, attention_mask=mask, position_ids=pos, logits_to_keep=2).logits[:, 0]
            logp = logits.float().log_softmax(-1)
            for j, seq in enumerate(chunk):
                k = start + j
                scores[owners[k]][k % 4] = float(logp[j, seq[-1]])
        return scores

    # -- ppl ----------------------------------------------------------------------------------
    @torch.no_grad()
    def continuation_logprobs(self, pairs: list[tuple[str, str]]) -> list[float]:
        """log p(continuation | prompt), summed over the continuation's tokens, for each (prompt, text)."""
        seqs = []
        for prompt, text in pairs:
            ctx = self.encode(prompt)
            full = self.encode(prompt + text)
            n = len(full) - len(ctx) if full[:len(ctx)] == ctx else len(self.tokenizer.encode(text, add_special_tokens=False))
            seqs.append((self._fit(full, 0), max(1, n)))
        out = []
        for start in range(0, len(seqs), self.batch_size):
            chunk = seqs[start:start + self.batch_size]
            ids, mask, pos = self._batch([s for s, _ in chunk])
            logp = self.model(input_ids=ids, attention_mask=mask, position_ids=pos).logits.float().log_softmax(-1)
            for j, (s, n) in enumerate(chunk):
                width = ids.shape[1]
                targets = ids[j, width - n:]
                out.append(float(logp[j, width - n - 1:width - 1].gather(-1, targets[:, None]).sum()))
        return out

    # -- cot ----------------------------------------------------------------------------------
    def generate(self, prompts: list[str], max_new_tokens: int) -> list[str]:
        from batray.rollout.engine import HFRolloutEngine, SamplingParams

        engine = HFRolloutEngine(self.model, self.tokenizer, device=self.device, batch_size=self.batch_size)
        ids = [self._fit(self.encode(p), max_new_tokens) for p in prompts]
        done = engine.generate(ids, SamplingParams(temperature=0.0, max_new_tokens=max_new_tokens))
        return [c.text for c in done]


class EndpointBackend:
    """An OpenAI-compatible server (`/v1/completions`, or `/v1/chat/completions` with `chat`)."""

    def __init__(self, base_url: str, served_model: str | None = None, api_key: str | None = None,
                 chat: bool = False, batch_size: int = 8, timeout_s: float = 120.0, top_logprobs: int = 20):
        from openai import OpenAI

        self.client = OpenAI(base_url=base_url, api_key=api_key or "EMPTY", timeout=timeout_s, max_retries=2)
        self.chat = chat
        self.batch_size = batch_size
        self.top_logprobs = top_logprobs
        if served_model is None:
            try:
                served_model = self.client.models.list().data[0].id
            except Exception as e:  # noqa: BLE001 - any connection/protocol failure is the user's endpoint
                raise BatrayError(f"endpoint {base_url}: cannot list its models ({type(e).__name__}: {e})") from None
        self.name = served_model
        self.context = None  # unknown: prompts are not shortened (no tokenizer), as in the official code
        self.truncated = 0

    def count_tokens(self, text: str) -> int:  # pragma: no cover - never called (context is None)
        raise NotImplementedError

    def _map(self, fn, prompts):
        with ThreadPoolExecutor(max_workers=self.batch_size) as pool:
            return list(pool.map(fn, prompts))

    def _request(self, prompt: str, max_tokens: int, logprobs: bool):
        if self.chat:
            extra = dict(logprobs=True, top_logprobs=self.top_logprobs) if logprobs else {}
            r = self.client.chat.completions.create(
                model=self.name, messages=[{"role": "user", "content": prompt}], max_tokens=max_tokens,
                temperature=0.0, **extra)
            choice = r.choices[0]
            top = None
            if logprobs and choice.logprobs and choice.logprobs.content:
                top = {t.token: t.logprob for t in choice.logprobs.content[0].top_logprobs}
            return choice.message.content or "", top
        extra = dict(logprobs=min(self.top_logprobs, 5)) if logprobs else {}  # the completions API allows <= 5
        r = self.client.completions.create(model=self.name, prompt=prompt, max_tokens=max_tokens, temperature=0.0,
                                           **extra)
        choice = r.choices[0]
        top = None
        if logprobs and choice.logprobs and choice.logprobs.top_logprobs:
            top = dict(choice.logprobs.top_logprobs[0])
        return choice.text or "", top

    def letter_scores(self, prompts: list[str]) -> list[list[float] | None]:
        def one(prompt: str) -> list[float] | None:
            _, top = self._request(prompt, 1, logprobs=True)
            if not top:
                return None
            scores = [-math.inf] * 4
            for token, lp in top.items():
                t = token.strip().lstrip("▁")
                if t in LETTERS:
                    k = LETTERS.index(t)
                    scores[k] = max(scores[k], lp)
            return scores
        return self._map(one, prompts)

    def generate(self, prompts: list[str], max_new_tokens: int) -> list[str]:
        return self._map(lambda p: self._request(p, max_new_tokens, logprobs=False)[0], prompts)


def make_backend(model: str, *, device: str = "cpu", batch_size: int = 8, chat: bool = False,
                 served_model: str | None = None, api_key: str | None = None, chat_template: str | None = None):
    if is_endpoint(model):
        return EndpointBackend(model, served_model=served_model, api_key=api_key, chat=chat, batch_size=batch_size)
    return LocalBackend(model, device=device, batch_size=batch_size, chat=chat, chat_template=chat_template)
