"""The reward actor: r_theta(x, y) for PPO from a reward model (`ppo.reward.kind: model`; a rule is scored
in the driver, `batray.ppo.reward.RuleReward`).

Stateless between calls (the model is loaded at start), so Ray can restart it and the step's
scoring is simply asked again.
"""

from __future__ import annotations

from batray.groups import BusyClock, busy
from batray.models.tokenizer import load_tokenizer
from batray.ppo import reward, train


class RewardActor(BusyClock):
    def __init__(self, model_path: str, *, micro_batch_size: int = 16):
        from batray.reward.model import build_reward_model, read_reward_stats

        from batray.ppo.batch import default_device

        train.quiet_model_loading()
        self.micro_batch_size = micro_batch_size
        self.tokenizer = load_tokenizer(model_path)
        self.model, _ = build_reward_model(model_path, self.tokenizer, seed=None)
        self.model.to(default_device())
        self.model.eval().requires_grad_(False)
        self.mean, self.std = reward.reward_stats(read_reward_stats(model_path))

    def ready(self) -> bool:
        return True

    def stats(self) -> tuple[float, float]:
        """(mean, std) the scores are normalized with."""
        return self.mean, self.std

    @busy
    def score(self, prompts: list[list[int]], responses: list[list[int]]) -> list[float]:
        """Raw (unnormalized) scores of each prompt + response."""
        seqs = [p + r for p, r in zip(prompts, responses)]
        return reward.score_sequences(self.model, seqs, self.tokenizer.pad_token_id, self.micro_batch_size).tolist()

    @busy
    def score_rows(self, rows, *answers) -> list[float]:
        """`score` of the `RolloutRows` `rows` of the rollout engines' `answers` (object refs Ray resolves)."""
        samples = rows.samples(list(answers))
        return self.score([s.prompt_ids for s in samples], [s.response_ids for s in samples])
