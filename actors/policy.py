"""The PPO policy (trainer): one rank of N replicas that share a torch.distributed group (gloo on CPU, NCCL on GPU).

Holds pi_phi under a DeepSpeed engine (`ppo.deepspeed.zero_stage` 0-3, `batray.ppo.trainer`); computes old
log-probabilities of rollouts, runs Eq. 4's update on its shard, hands its weights out in buckets for the
rollout engines, and saves/restores its state. Under ZeRO-3 every method that touches the weights is a
collective: the driver calls it on all ranks at once.
"""

from __future__ import annotations

import torch

from batray.groups import DistributedWorker, busy
from batray.checkpoint import save_hf_checkpoint
from batray.config.rl import PpoConfig
from batray.models.loading import load_model_and_tokenizer
from batray.models.lora import adapters_disabled, apply_lora, full_copy, is_lora, save_lora_final
from batray.models.tokenizer import load_tokenizer
from batray.ppo import train
from batray.ppo.batch import default_device, forward_batch, to_device
from batray.ppo.trainer import DeepSpeedTrainer
from batray.ppo.weight_sync import broadcast, open_broadcast_group, share_cuda
from batray.ppo.wire import from_wire, to_wire


class PolicyActor(DistributedWorker):
    def __init__(self, model_path: str, cfg: PpoConfig, seed: int, rank: int = 0, world_size: int = 1):
        super().__init__(rank, world_size)
        torch.manual_seed(seed + rank)
        train.quiet_model_loading()
        self.cfg = cfg
        self.device = default_device()
        self.model_path = model_path
        self.tokenizer = load_tokenizer(model_path)
        self.trainer: DeepSpeedTrainer | None = None

    def ready(self) -> bool:
        return True

    def join_process_group(self, addr: str, port: int, backend: str | None, timeout_s: float) -> None:
        """Join the role's group, then build the DeepSpeed engine over it (ZeRO partitions across the ranks)."""
        super().join_process_group(addr, port, backend, timeout_s)
        model, _ = load_model_and_tokenizer(self.model_path, tokenizer=self.tokenizer, device=self.device)
        if self.cfg.lora is not None:  # the base stays frozen: it is also the reference (adapters disabled)
            model = apply_lora(model, self.cfg.lora, base=self.model_path)
        self.trainer = DeepSpeedTrainer(model, lr=self.cfg.actor_lr, cfg=self.cfg, world_size=self.world_size)

    # Batches and log-probabilities cross Ray as numpy arrays (`batray.ppo.wire`: no torch.save per tensor).
    @busy
    def logprobs(self, batch, *answers):
        """Old log-probs of a batch split (wire form), or of `RolloutRows` of the engines' `answers`."""
        self.trainer.wake()  # the step's first use of the weights (ppo.offload_between_phases)
        self.trainer.eval()
        batch = to_device(forward_batch(batch, answers), self.device)
        return to_wire(train.response_logprobs(self.trainer, batch, self.cfg.micro_batch_size))

    @busy
    def reference_logprobs(self, batch, *answers):
        """log pi_inst of Eq. 4 with LoRA: the policy's own base, adapters disabled (no second copy)."""
        self.trainer.wake()
        self.trainer.eval()
        batch = to_device(forward_batch(batch, answers), self.device)
        with adapters_disabled(self.trainer.module):
            return to_wire(train.response_logprobs(self.trainer, batch, self.cfg.micro_batch_size))

    @busy
    def train(self, experience: dict, ptx_batches: list[dict] | None, seed: int) -> dict[str, float]:
        self.trainer.wake()
        experience = to_device(from_wire(experience), self.device)
        ptx_batches = [to_device(b, self.device) for b in from_wire(ptx_batches)] if ptx_batches else None
        return train.policy_update(self.trainer, experience, ptx_batches, self.cfg, seed)

    @busy
    def train_then_buckets(self, experience: dict, ptx_batches: list[dict] | None, seed: int) -> tuple[dict, list]:
        """`train`, then `weight_buckets` in the same call: with the object store the updated weights leave
        with the update's statistics, and the next generate call carries them to the engines (no sync round)."""
        return self.train(experience, ptx_batches, seed), self.weight_buckets()

    # -- weight sync (batray.ppo.weight_sync): every rank calls these at once; rank 0 sends ----------
    def sync_layout(self) -> list:
        return self.trainer.layout(self._bucket_bytes())

    @busy
    def weight_buckets(self) -> list:
        """`object_store`: references to (spec, flat bucket in its wire form, `batray.ppo.wire`) per bucket on
        rank 0; [] elsewhere."""
        import ray

        refs = [ray.put((spec, to_wire(flat))) for spec, flat in self.trainer.buckets(self._bucket_bytes(), self.rank)
                if flat is not None]
        self.trainer.sleep()  # the step's last use of the weights
        return refs

    def open_sync_group(self, addr: str, port: int, world_size: int, backend: str) -> None:
        """`collective`: rank 0 becomes rank 0 of the broadcast group with the rollout engines."""
        self.sync_group = None  # drop a previous group (an engine restarted) before forming the new one
        if self.rank == 0:
            self.sync_group = open_broadcast_group(addr, port, 0, world_size, backend, self.cfg.sync_timeout_s)

    @busy
    def broadcast_weights(self) -> None:
        for _, flat in self.trainer.buckets(self._bucket_bytes(), self.rank):
            if flat is not None:
                broadcast(self.sync_group, flat, self.cfg.sync_timeout_s)
        self.trainer.sleep()

    @busy
    def share_weights(self) -> list:
        """`cuda_ipc`: (spec, IPC handle) per bucket on rank 0. The flat buckets stay alive here until the
        next sync replaces them, so the engines can read them after this returns."""
        self._shared = [(spec, flat) for spec, flat in self.trainer.buckets(self._bucket_bytes(), self.rank)
                        if flat is not None]
        self.trainer.sleep()  # the shared flat copies stay on the GPU until the next sync
        return [(spec, share_cuda(flat)) for spec, flat in self._shared]

    def _bucket_bytes(self) -> int:
        return int(self.cfg.sync_bucket_mb * (1 << 20))

    def save_checkpoint(self, folder: str) -> None:
        self.trainer.wake()
        self.trainer.save(folder, self.rank, tokenizer=self.tokenizer)

    def load_checkpoint(self, folder: str) -> None:
        self.trainer.wake()
        self.trainer.load(folder, self.rank)

    def save_final(self, folder: str, **marker) -> str | None:
        self.trainer.wake()
        state = self.trainer.consolidated_state_dict()  # a collective under ZeRO-3
        if self.rank != 0:
            return None
        module = self.trainer.module
        if is_lora(module):  # final/adapter, and final/ merged (ppo.lora.merge)
            return str(save_lora_final(
                full_copy(module, state), folder, self.cfg.lora,
                lambda m, more: save_hf_checkpoint(m, self.tokenizer, folder, stage="ppo",
                                                   **{**marker, "extra": {**marker.get("extra", {}), **more}})))
        return str(save_hf_checkpoint(module, self.tokenizer, folder, stage="ppo", state_dict=state, **marker))
