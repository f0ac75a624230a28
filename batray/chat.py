"""A multi-turn conversation with one checkpoint (`batray chat`): rendered with the checkpoint's chat
template, streamed token by token (transformers' `TextIteratorStreamer`), or reranked by both
directions (`rerank_n` > 1: N answers sampled left to right, the best by (1 - W) forward + W backward
log-likelihood per token).
"""

from __future__ import annotations

import sys
import threading
from typing import TextIO


class ChatSession:
    """A multi-turn conversation with one model; `reply` streams the answer to `out` and returns it."""

    def __init__(self, checkpoint: str, *, system: str | None = None, max_new_tokens: int = 128,
                 temperature: float = 0.7, top_p: float = 0.9, seed: int | None = 0,
                 rerank_n: int = 1, rerank_weight: float = 0.5, chat_template: str | None = None):
        import torch

        from batray.serve.chat import load_chat_model

        loaded = load_chat_model(checkpoint, chat_template=chat_template)
        self.device, self.model, self.tokenizer, self.stop_ids = loaded.device, loaded.model, loaded.tokenizer, loaded.stop_ids
        self.system = system
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        self.top_p = top_p
        self.max_context = loaded.max_context
        self.rerank_n, self.rerank_weight, self.seed = rerank_n, rerank_weight, seed
        self.reranker = None  # built on first use (batray.bidirectional.Reranker)
        self.last_rerank = None  # the last reply's candidates, when reranked
        self.turn = 0
        if seed is not None:
            torch.manual_seed(seed)
        self.reset()

    def reset(self) -> None:
        self.messages: list[dict] = [{"role": "system", "content": self.system}] if self.system else []

    def _prompt_ids(self) -> list[int]:
        """The rendered conversation, dropping the oldest turns while it leaves no room to answer."""
        from batray.serve.chat import conversation_ids

        return conversation_ids(self.tokenizer, self.messages, max_context=self.max_context,
                                max_new_tokens=self.max_new_tokens)

    def reply(self, user_text: str, out: TextIO = sys.stdout) -> str:
        import torch
        from transformers import TextIteratorStreamer

        self.messages.append({"role": "user", "content": user_text})
        if self.rerank_n > 1:
            return self._reranked_reply(out)
        input_ids = torch.tensor([self._prompt_ids()], device=self.device)
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        sampling = dict(do_sample=True, temperature=self.temperature, top_p=self.top_p) if self.temperature > 0 \
            else dict(do_sample=False)
        kwargs = dict(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), streamer=streamer,
                      max_new_tokens=self.max_new_tokens, eos_token_id=self.stop_ids,
                      pad_token_id=self.model.generation_config.pad_token_id, **sampling)
        worker = threading.Thread(target=self.model.generate, kwargs=kwargs, daemon=True)
        worker.start()
        pieces = []
        for piece in streamer:
            pieces.append(piece)
            out.write(piece)
            out.flush()
        worker.join()
        out.write("\n")
        answer = "".join(pieces).strip()
        self.messages.append({"role": "assistant", "content": answer})
        return answer

    def _reranked_reply(self, out: TextIO) -> str:
        from batray.bidirectional.rerank import Reranker
        from batray.rollout.engine import SamplingParams

        if self.reranker is None:
            self.reranker = Reranker(self.model, self.tokenizer, device=self.device)
        self.turn += 1
        seed = None if self.seed is None else self.seed + self.turn  # fresh samples every turn, reproducibly
        params = SamplingParams(self.temperature, self.top_p, self.max_new_tokens, seed)
        self.last_rerank = self.reranker.rerank([self._prompt_ids()], self.rerank_n, self.rerank_weight, params)[0]
        answer = self.last_rerank.best.text.strip()
        out.write(answer + "\n")
        out.flush()
        self.messages.append({"role": "assistant", "content": answer})
        return answer
