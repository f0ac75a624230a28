"""Forward and backward log-likelihoods of an answer y to a prompt x under one Eq. 1 model.

A model trained with Eq. 1 reads every text both ways: after `<|l2r|>` left to right, after `<|r2l|>`
the token sequence reversed (`batray.data.direction.r2l_sample`). So it gives two estimates of how
likely an answer is:

- forward:  log p(y | x) = sum_t log p(y_t | <|l2r|> x y_<t), the usual left-to-right score.
- backward: the same quantity read right to left, by Bayes' rule on the reversed text:
            log p_r2l(x, y) - log p_r2l(x), where
            log p_r2l(x, y) = log p(<|r2l|> rev(x y) <eos>)  (the whole reversed sequence) and
            log p_r2l(x)    = log p(<|r2l|> rev(x) <eos>)    (the prompt alone, once per prompt).
            Read right to left, the answer comes first and the prompt is predicted from it, so the
            backward score asks "does this answer explain the question?" (p(x | y), up to p(y)).

Both are sums over the answer's tokens' worth of evidence, so both are divided by |y| when ranked
(`batray.bidirectional.rerank`). `x` holds the prompt's token ids as the model reads them left to
right, `<|l2r|>` first when present; the backward samples drop that marker, exactly as pretraining
builds a right-to-left sample from a text's tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from batray.data.direction import r2l_sample
from batray.errors import BatrayError
from batray.models.tokenizer import direction_ids


@dataclass(frozen=True)
class PairScores:
    """Scores of one (prompt, answer) pair; `n_answer` = |y| (the length normalizer)."""

    forward: float  # log p(y | x), left to right
    backward: float  # log p_r2l(x, y) - log p_r2l(x)
    backward_joint: float  # log p_r2l(x, y): the whole reversed sequence after <|r2l|>
    backward_prompt: float  # log p_r2l(x): the reversed prompt alone
    n_answer: int

    @property
    def forward_per_token(self) -> float:
        return self.forward / max(self.n_answer, 1)

    @property
    def backward_per_token(self) -> float:
        return self.backward / max(self.n_answer, 1)


def strip_marker(prompt_ids: list[int], l2r_id: int) -> list[int]:
    """The prompt's text tokens: its leading `<|l2r|>` (if any) removed."""
    return list(prompt_ids[1:]) if prompt_ids and prompt_ids[0] == l2r_id else list(prompt_ids)


@torch.no_grad()
def sequence_logprobs(model, seqs: list[list[int]], pad_id: int, batch_size: int = 16) -> list[list[float]]:
    """Per sequence, log p(s_i | s_<i) for i = 1..len-1 (the first token is the given context).

    Sequences are right-padded into batches, so positions start at 0 for every one of them and the
    padding, coming after the real tokens, never influences them under the causal mask.
    """
    device = next(model.parameters()).device
    limit = int(getattr(model.config, "max_position_embeddings", 0) or 0)
    out: list[list[float]] = []
    for start in range(0, len(seqs), batch_size):
        chunk = seqs[start:start + batch_size]
        width = max(len(s) for s in chunk)
        if limit and width > limit:
            raise BatrayError(f"a scored sequence is {width} tokens; the model's context is {limit}")
        ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, s in enumerate(chunk):
            ids[i, :len(s)] = torch.tensor(s, dtype=torch.long)
            mask[i, :len(s)] = 1
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits  # [B, T, V]
        logp = logits[:, :-1].float().log_softmax(-1)
        picked = logp.gather(-1, ids[:, 1:].to(device).unsqueeze(-1)).squeeze(-1).cpu()  # [B, T-1]
        for i, s in enumerate(chunk):
            out.append(picked[i, :len(s) - 1].tolist())
    return out


class BidirectionalScorer:
    """Forward and backward scores for (prompt ids, answer ids) pairs with one model (Eq. 1 trained).

    `backward_model` (default: the same model) reads the right-to-left samples, e.g. the pretrained
    checkpoint an instruction-tuned model came from (SFT trains the left-to-right direction only).
    """

    def __init__(self, model, tokenizer, batch_size: int = 16, backward_model=None):
        self.model = model.eval()
        self.backward_model = backward_model.eval() if backward_model is not None else self.model
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.l2r_id, self.r2l_id = direction_ids(tokenizer)
        self.eos_id = tokenizer.eos_token_id
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_id

    def forward_sample(self, prompt_ids: list[int], answer_ids: list[int]) -> list[int]:
        """`<|l2r|> x y`: the answer's tokens are the last |y| targets."""
        prompt = list(prompt_ids) if prompt_ids and prompt_ids[0] == self.l2r_id else [self.l2r_id, *prompt_ids]
        return prompt + list(answer_ids)

    def backward_sample(self, prompt_ids: list[int], answer_ids: list[int] = ()) -> list[int]:
        """`<|r2l|> rev(x y) <eos>` (Eq. 1's right-to-left sample of the prompt followed by the answer)."""
        return r2l_sample(strip_marker(prompt_ids, self.l2r_id) + list(answer_ids), self.r2l_id, self.eos_id)

    def score(self, pairs: list[tuple[list[int], list[int]]]) -> list[PairScores]:
        """Scores for every (prompt ids, answer ids); each distinct prompt's marginal is computed once."""
        prompts: dict[tuple[int, ...], int] = {}
        for x, _ in pairs:
            prompts.setdefault(tuple(strip_marker(x, self.l2r_id)), len(prompts))
        forward = [self.forward_sample(x, y) for x, y in pairs]
        backward = [self.backward_sample(x, y) for x, y in pairs] + [self.backward_sample(list(p)) for p in prompts]
        if self.backward_model is self.model:  # one pass over both kinds
            lps = sequence_logprobs(self.model, forward + backward, self.pad_id, self.batch_size)
        else:
            lps = (sequence_logprobs(self.model, forward, self.pad_id, self.batch_size)
                   + sequence_logprobs(self.backward_model, backward, self.pad_id, self.batch_size))
        n = len(pairs)
        out = []
        for i, (x, y) in enumerate(pairs):
            forward = sum(lps[i][len(lps[i]) - len(y):]) if y else 0.0
            joint = sum(lps[n + i])
            prompt = sum(lps[2 * n + prompts[tuple(strip_marker(x, self.l2r_id))]])
            out.append(PairScores(forward, joint - prompt, joint, prompt, len(y)))
        return out
