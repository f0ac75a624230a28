"""Sequence rewards r_theta(x, y) for PPO: a reward model's score, or a rule (for tests and demos).

`model`: a sequence-classification checkpoint with one label (`batray.reward.model`), read at the last
token of prompt + response; its saved mean/std normalize the score (in `batray.objectives.ppo`).
`rule`/`token_fraction`: the share of response tokens that belong to a target set, a reward that a
tiny policy learns in a few dozen steps, so the whole PPO loop can be checked end to end on CPU.
"""

from __future__ import annotations

import torch

from batray.errors import BatrayError
from batray.models.chat import stop_token_ids


@torch.no_grad()
def score_sequences(model, sequences: list[list[int]], pad_id: int, micro_batch_size: int = 16) -> torch.Tensor:
    """Reward-model scores of full token sequences (prompt + response), [N]."""
    model.eval()
    out = []
    for start in range(0, len(sequences), micro_batch_size):
        chunk = sequences[start : start + micro_batch_size]
        width = max(len(s) for s in chunk)
        ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, s in enumerate(chunk):
            ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
            mask[i, : len(s)] = 1
        device = next(model.parameters()).device
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False).logits
        out.append(logits[:, 0].float().cpu())
    return torch.cat(out)


def token_fraction_reward(response_ids: list[int], targets: set[int], ignore: set[int] = frozenset()) -> float:
    """Share of the response's tokens (stop tokens aside) that are in `targets`; 0 for an empty response."""
    tokens = [t for t in response_ids if t not in ignore]
    return sum(t in targets for t in tokens) / len(tokens) if tokens else 0.0


def target_token_ids(tokenizer, target_text: str) -> set[int]:
    """The token ids of `target_text` (special tokens excluded): the rule reward's target set."""
    ids = set(tokenizer.encode(target_text, add_special_tokens=False)) - set(tokenizer.all_special_ids)
    if not ids:
        raise BatrayError("ppo.reward.target_text: encodes to no tokens; give a non-empty text")
    return ids


class RuleReward:
    """`ppo.reward.kind: rule` (token_fraction), scored in the PPO driver: a few set lookups per token, which
    a reward actor would only wrap in a Ray call every step (a reward model runs on reward actors). Scores
    are already on the scale PPO uses: mean 0, std 1."""

    mean, std = 0.0, 1.0

    def __init__(self, tokenizer, target_text: str):
        self.targets = target_token_ids(tokenizer, target_text)
        self.ignore = set(stop_token_ids(tokenizer))

    def score(self, responses: list[list[int]]) -> list[float]:
        return [token_fraction_reward(r, self.targets, self.ignore) for r in responses]


def reward_stats(stats: dict) -> tuple[float, float]:
    """(mean, std) from a reward checkpoint's saved statistics."""
    try:
        return float(stats["mean"]), float(stats["std"])
    except KeyError as e:
        raise BatrayError(f"reward statistics lack {e.args[0]!r} (have {sorted(stats)}); retrain the reward model") from None
