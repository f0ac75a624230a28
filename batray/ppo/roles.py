"""The five PPO roles as actor groups (policy, critic, reference, reward, rollout), on one shared or five
separate placement groups. The actor classes come from the caller (`batray.stages.ActorKit`)."""

from __future__ import annotations

import time

from batray.config.rl import PpoConfig, RoleConfig
from batray.errors import BatrayError
from batray.groups import ActorGroup, make_placement_group, remote_error_line
from batray.stages.kit import ActorKit

ROLES = ("policy", "critic", "reference", "reward", "rollout")


def started_roles(ppo: PpoConfig) -> list[str]:
    """The roles that get actors: with LoRA the policy's base (adapters disabled) is the reference, and a
    rule reward is scored in the driver (`batray.ppo.reward.RuleReward`)."""
    return [r for r in ROLES if not (r == "reference" and ppo.lora is not None)
            and not (r == "reward" and ppo.reward.kind == "rule")]


class PpoRoles:
    """The actor groups of a PPO run (`started_roles`), on one shared or one placement group per role."""

    def __init__(self, ppo: PpoConfig, kit: ActorKit, *, policy_path: str, critic_path: str, reference_path: str,
                 reward_path: str, rollout_path: str, seed: int):
        self.ppo = ppo
        self.pgs = []
        self.groups = {}
        specs = {
            "policy": (kit.need("policy"), (policy_path, ppo, seed), {}),
            "critic": (kit.need("critic"), (critic_path, ppo, seed), {}),
            "reference": (kit.need("reference"), (reference_path, ppo.micro_batch_size), {}),
            "reward": (kit.need("reward"), (reward_path,), {"micro_batch_size": ppo.micro_batch_size}),
            "rollout": (kit.need("rollout"), (rollout_path,), rollout_kwargs(ppo)),
        }
        try:
            placement = self._colocated(make_placement_group) if ppo.colocate else self._separate(make_placement_group)
            for role in started_roles(ppo):
                cls, args, kwargs = specs[role]
                cfg: RoleConfig = getattr(ppo, role)
                pg, bundles, cpus, gpus = placement[role]
                # Rollout engines are re-synced before a redo, so Ray must not silently retry their calls;
                # scoring is stateless, so Ray may retry it on the restarted reward actor.
                retries = cfg.max_restarts if role == "reward" else 0
                self.groups[role] = ActorGroup(
                    cls, cfg.num_actors, num_cpus=cpus, num_gpus=gpus, pg=pg, bundle_indices=bundles,
                    init_args=args, init_kwargs=kwargs, max_restarts=cfg.max_restarts, max_task_retries=retries,
                    name=f"ppo-{role}",
                )
        except BaseException:
            self.shutdown()  # no placement group outlives a failed start
            raise

    def _colocated(self, make_pg) -> dict:
        """One group of max(num_actors) bundles sized by the largest role; the started roles on a bundle
        split it evenly (fractional CPUs/GPUs; on GPU vLLM sleeps while the trainers run)."""
        roles = {r: getattr(self.ppo, r) for r in started_roles(self.ppo)}
        n = max(c.num_actors for c in roles.values())
        cpu = max(c.num_cpus for c in roles.values())
        gpu = max(c.num_gpus for c in roles.values())
        bundle = {"CPU": cpu, **({"GPU": gpu} if gpu else {})}
        pg = make_pg([dict(bundle) for _ in range(n)], strategy="PACK", name="ppo-colocated")
        self.pgs.append(pg)
        share = 1.0 / len(roles)
        return {r: (pg, list(range(c.num_actors)), cpu * share, gpu * share) for r, c in roles.items()}

    def _separate(self, make_pg) -> dict:
        out = {}
        for r in started_roles(self.ppo):
            c = getattr(self.ppo, r)
            bundle = {"CPU": c.num_cpus, **({"GPU": c.num_gpus} if c.num_gpus else {})}
            pg = make_pg([dict(bundle) for _ in range(c.num_actors)], strategy=c.strategy, name=f"ppo-{r}")
            self.pgs.append(pg)
            out[r] = (pg, list(range(c.num_actors)), c.num_cpus, c.num_gpus)
        return out

    def __getitem__(self, role: str):
        return self.groups[role]

    def __contains__(self, role: str) -> bool:
        return role in self.groups

    def wait_ready(self, timeout_s: float) -> None:
        """Every actor constructed (models loaded); a role whose actor fails to start is named."""
        import ray

        pending = {a.ready.remote(): role for role, g in self.groups.items() for a in g.actors}
        deadline = time.monotonic() + timeout_s
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1, timeout=max(0.0, deadline - time.monotonic()))
            if not done:
                roles = sorted(set(pending.values()))
                raise BatrayError(f"ppo: {', '.join(roles)} actor(s) not ready within {timeout_s:g}s (ppo.actor_timeout_s)")
            role = pending.pop(done[0])
            try:
                ray.get(done[0])
            except ray.exceptions.RayError as e:
                raise BatrayError(f"ppo: the {role} actor failed to start: {remote_error_line(e)}") from None

    def shutdown(self) -> None:
        from ray.util.placement_group import remove_placement_group

        for g in self.groups.values():
            g.kill()
        for pg in self.pgs:
            remove_placement_group(pg)


def rollout_kwargs(ppo: PpoConfig) -> dict:
    return {"backend": ppo.rollout.backend, "tensor_parallel_size": ppo.rollout.tensor_parallel_size,
            "sleep_between_phases": ppo.offload_between_phases}
