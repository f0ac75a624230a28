"""The frozen reference policy pi_inst of Eq. 4 (the SFT model): log-probabilities only."""

from __future__ import annotations

from batray.groups import BusyClock, busy
from batray.models.loading import load_model_and_tokenizer
from batray.ppo import train
from batray.ppo.batch import default_device, forward_batch, to_device
from batray.ppo.wire import to_wire


class ReferenceActor(BusyClock):
    def __init__(self, model_path: str, micro_batch_size: int = 8):
        train.quiet_model_loading()
        self.device = default_device()
        model, _ = load_model_and_tokenizer(model_path, device=self.device)  # resized like the policy's, if at all
        self.model = model.eval().requires_grad_(False)
        self.micro_batch_size = micro_batch_size

    def ready(self) -> bool:
        return True

    @busy
    def logprobs(self, batch, *answers):
        """Log-probs of a batch split, which crosses Ray as numpy arrays (`batray.ppo.wire`), or of
        `RolloutRows` of the rollout engines' `answers`."""
        batch = to_device(forward_batch(batch, answers), self.device)
        return to_wire(train.response_logprobs(self.model, batch, self.micro_batch_size))
