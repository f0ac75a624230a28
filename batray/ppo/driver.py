"""The PPO control loop (§3.3, Eq. 4) over the five role actor groups (`batray ppo`).

One PPO step, as the driver runs it (the math is in `batray.objectives.ppo` and `batray.ppo.*`):

    prompts  -> rollout engines generate (seeded by step)                        [generate]
             -> reward scores | policy old log-probs | reference log-probs |      [experience]
                critic values (chained on the engines' answers: Ray starts them
                as the engines return; a rule reward is scored in the driver)
             -> shaped rewards, GAE, whitening (driver, whole batch)
             -> policy update (Eq. 4: PPO + lambda_ptx Eq. 1) | critic update     [train]
             -> policy weights -> rollout engines, bucketed, with a timeout       [sync]
                (`ppo.sync_transport`: object store, a gloo/NCCL broadcast group, or CUDA IPC;
                 `batray.ppo.weight_sync.WeightSync`)

The roles (`batray.ppo.roles.PpoRoles`) are placed from the actor classes the caller hands in.

Reliability: a checkpoint every `ckpt_every` steps (policy, critic, optimizers, RNG, KL controller,
prompt and ptx positions); a rerun resumes from the latest one and, with a fixed seed on CPU,
continues exactly as an uninterrupted run. A rollout engine or reward actor that dies is restarted by
Ray (`max_restarts`), re-synced, and the step's generation or scoring is redone from the same prompts
and seeds, so no sample is lost or counted twice.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from batray import hooks
from batray.checkpoint import is_complete
from batray.config import RecipeConfig
from batray.data.formats import Keys
from batray.errors import BatrayError
from batray.groups import remote_error_line
from batray.metrics import MetricsLogger
from batray.models.loading import prepare_checkpoint
from batray.models.tokenizer import load_tokenizer
from batray.objectives.ppo import make_kl_controller
from batray.ppo import state
from batray.ppo.batch import Sample, answer_samples, collate, rollout_rows, select, split_rows
from batray.ppo.data import PromptStream, PtxStream
from batray.ppo.experience import make_experience
from batray.ppo.reward import RuleReward
from batray.ppo.roles import PpoRoles
from batray.ppo.train import num_update_steps
from batray.ppo.weight_sync import WeightSync, choose_transport
from batray.ppo.wire import from_wire, to_wire, wire_nbytes
from batray.progress import StepProgress
from batray.ray_session import init_ray
from batray.rollout.engine import SamplingParams
from batray.stages.kit import ActorKit
from batray.trackers import TrackerSpec, open_trackers

log = logging.getLogger("batray.ppo")


class StaleEngine(Exception):
    """A rollout engine answered without the latest weights (it was restarted after the last sync)."""


@dataclass
class Rollout:
    """A step's samples, the engines' answers they came from (object refs), and the experience calls
    chained on those answers, in flight: the forwards' groups and the reward actors' calls."""

    samples: list[Sample]
    answers: list
    forward_refs: list[list]
    score_refs: list


class Driver:
    """The PPO control loop's state and the calls it makes to the roles."""

    def __init__(self, cfg: RecipeConfig, roles: PpoRoles, prompts: PromptStream, ptx: PtxStream | None,
                 kl_ctl, pad_id: int, reward_stats: tuple[float, float], rule: RuleReward | None = None):
        self.cfg, self.ppo = cfg, cfg.ppo
        self.roles, self.prompts, self.ptx, self.kl_ctl = roles, prompts, ptx, kl_ctl
        self.pad_id = pad_id
        self.reward_mean, self.reward_std = reward_stats
        self.rule = rule  # a rule reward is scored here; a reward model on the reward actors
        self.synced_tag: int | None = None
        self.pending_weights: tuple[int, list] | None = None  # (version, bucket refs) for the next generate call
        self.recoveries = 0
        cuda = torch.cuda.is_available()
        transport = choose_transport(self.ppo.sync_transport, colocate=self.ppo.colocate, cuda=cuda)
        self.weight_sync = WeightSync(roles["policy"], roles["rollout"], transport, backend="nccl" if cuda else "gloo",
                                      timeout_s=self.ppo.sync_timeout_s)

    # -- sync ----------------------------------------------------------------------------------
    def sync_weights(self, tag: int) -> None:
        """Policy -> every rollout engine through `self.weight_sync` (object store, broadcast group or
        CUDA IPC); every policy rank takes part (under ZeRO-3 each bucket is gathered from all of them)."""
        import ray

        try:
            self.weight_sync.push(tag)
        except ray.exceptions.RayTaskError as e:
            raise BatrayError(f"weight sync ({self.weight_sync.transport}) failed: {remote_error_line(e)}") from None
        self.synced_tag = tag

    def compute_time(self, *roles: str, sequential: bool = False) -> tuple[float, float] | None:
        """With `ppo.profile_phases`: the own-compute time of the phase's actors since the last read, read
        outside the phase's timing, as (critical, total). Actors within a phase run concurrently (the slowest
        is the critical time); with `sequential`, the roles ran one after the other (their slowest actors add
        up). `total` is every actor's busy time summed: over the cluster's cores, a lower bound on the phase
        when its actors share fewer cores than there are actors."""
        import ray

        if not self.ppo.profile_phases:
            return None
        per_role = [ray.get([a.take_busy.remote() for a in self.roles[r].actors], timeout=self.ppo.actor_timeout_s)
                    for r in roles]
        critical = sum(max(t) for t in per_role) if sequential else max(t for ts in per_role for t in ts)
        return critical, sum(t for ts in per_role for t in ts)

    def _recover(self, role: str, err: Exception, attempt: int) -> None:
        """Wait for Ray to restart the role's actors, then re-sync rollout engines."""
        import ray

        limit = getattr(self.ppo, role).max_restarts
        if attempt >= limit:
            raise BatrayError(f"{role} actor failed {attempt + 1} times (max_restarts={limit}): {_first_line(err)}") from None
        self.recoveries += 1
        log.warning("%s actor lost (%s); waiting for its restart, then redoing this step's %s",
                    role, _first_line(err), "generation" if role == "rollout" else "scoring")
        deadline = time.monotonic() + self.ppo.actor_timeout_s
        for a in self.roles[role].actors:
            while True:  # a call to a restarting actor fails fast; ask again until it is back
                try:
                    ray.get(a.ready.remote(), timeout=max(1.0, deadline - time.monotonic()))
                    break
                except ray.exceptions.RayActorError:
                    if time.monotonic() > deadline:
                        raise BatrayError(f"{role} actor did not come back within {self.ppo.actor_timeout_s:g}s") from None
                    time.sleep(0.2)  # polling Ray's restart; no test synchronizes on this
        if role == "rollout":
            self.weight_sync.reconnect()  # the restarted engine is not in the old broadcast group
            if self.pending_weights is None:  # else the redone generate calls carry the weights
                self.sync_weights(self.synced_tag if self.synced_tag is not None else 0)

    # -- the phases ----------------------------------------------------------------------------
    def generate(self, batch_prompts: list[tuple[int, list[int]]], step: int) -> Rollout:
        """The step's samples, and the experience calls already in flight on them.

        The forwards (and a reward model's scoring) are launched right after the generate calls, chained on
        their answers (`RolloutRows`): Ray starts them as soon as the engines return. If an engine is lost
        or answers with stale weights, the chained calls are dropped (pure forwards: nothing to undo) and
        launched again with the redone generation."""
        import ray

        engines = self.roles["rollout"].actors
        s = self.ppo.sampling
        parts = split_rows(len(batch_prompts), len(engines))
        weights = self.pending_weights or ()  # the last update's weights ride with these calls (object store)
        expected = weights[0] if weights else self.synced_tag
        attempt = 0
        while True:
            forward_refs, score_refs = [], []
            try:
                refs = []
                for k, (engine, rows) in enumerate(zip(engines, parts)):
                    params = SamplingParams(temperature=s.temperature, top_p=s.top_p, max_new_tokens=s.max_new_tokens,
                                            seed=rollout_seed(self.ppo.seed, step, k))
                    refs.append(engine.generate_versioned.remote([ids for _, ids in batch_prompts[rows]], params,
                                                                 *weights))
                forward_refs = self.launch_experience_forward(refs, len(batch_prompts))
                score_refs = self.launch_score(refs, len(batch_prompts))
                versioned = ray.get(refs, timeout=self.ppo.actor_timeout_s)
                if any(version != expected for version, _ in versioned):  # restarted after the last sync
                    raise StaleEngine("a rollout engine answered with stale weights (restarted after the last sync)")
                break
            except (ray.exceptions.RayActorError, StaleEngine) as e:
                self._settle([r for group in forward_refs for r in group] + score_refs)
                self._recover("rollout", e, attempt)
                attempt += 1
        if weights:
            self.synced_tag, self.pending_weights = expected, None
        return Rollout(answer_samples(versioned, [index for index, _ in batch_prompts]), refs, forward_refs, score_refs)

    def _settle(self, dropped: list) -> None:
        """Wait out dropped chained calls: those on a lost engine's answers fail at once, those on stale
        answers finish their (pure) forwards. Their outcomes are read so that Ray does not log each one's
        error as unhandled; the step's own warning says what happened."""
        import ray

        for ref in dropped:
            try:
                ray.get(ref, timeout=self.ppo.actor_timeout_s)
            except (ray.exceptions.RayError, StaleEngine):
                pass

    def launch_score(self, answers: list, n: int) -> list:
        """The reward actors' calls on the engines' `answers` (n rows), in flight; none for a rule."""
        if self.rule is not None:
            return []
        actors = self.roles["reward"].actors
        return [a.score_rows.remote(rows, *answers)
                for a, rows in zip(actors, rollout_rows(n, len(actors), self.pad_id)) if rows is not None]

    def score(self, rollout: Rollout) -> torch.Tensor:
        """Scores of the rollout's samples: its reward calls already in flight; a lost reward actor is
        restarted and the batch scored again."""
        import ray

        samples, refs = rollout.samples, rollout.score_refs
        if self.rule is not None:  # called after the forwards are launched: it runs while the actors compute
            return torch.tensor(self.rule.score([s.response_ids for s in samples]), dtype=torch.float32)
        attempt = 0
        while True:
            try:
                scores = [x for part in ray.get(refs, timeout=self.ppo.actor_timeout_s) for x in part]
                return torch.tensor(scores, dtype=torch.float32)
            except ray.exceptions.RayActorError as e:
                self._recover("reward", e, attempt)
                attempt += 1
                refs = self.launch_score(rollout.answers, len(samples))

    def launch_experience_forward(self, answers: list, n: int) -> list[list]:
        """Old log-probs (policy ranks), reference log-probs and values of the engines' `answers` (n rows):
        the three groups of calls, in flight, each actor on its `RolloutRows`."""

        def launch(group, method):  # an actor with no rows (more reference actors than rows) is not called
            return [getattr(a, method).remote(rows, *answers)
                    for a, rows in zip(group.actors, rollout_rows(n, len(group), self.pad_id)) if rows is not None]

        # with LoRA the reference is the policy's base, adapters disabled (`PolicyActor.reference_logprobs`)
        reference = launch(self.roles["policy"], "reference_logprobs") if self.ppo.lora is not None \
            else launch(self.roles["reference"], "logprobs")
        return [launch(self.roles["policy"], "logprobs"), reference, launch(self.roles["critic"], "values")]

    def collect_experience_forward(self, refs: list[list]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        import ray

        flat = from_wire(ray.get([r for group in refs for r in group], timeout=self.ppo.actor_timeout_s))
        out, i = [], 0
        for group in refs:
            out.append(torch.cat(flat[i : i + len(group)]))
            i += len(group)
        return out[0], out[1], out[2]

    def ptx_blocks(self) -> list | None:
        """Each policy rank's Eq. 4 pretraining blocks for this step's updates, in wire form (None: no ptx term)."""
        if self.ptx is None or self.ppo.ptx_coef <= 0:
            return None
        k = num_update_steps(self.ppo)
        return [to_wire([self.ptx.next_blocks(self.ppo.ptx_batch_size) for _ in range(k)])
                for _ in range(len(self.roles["policy"]))]

    def train(self, experience: dict, step: int, ptx: list | None) -> tuple[dict, dict]:
        """The policy and critic updates; with the object store's sync the policy's calls also return the
        updated weights' bucket references (rank 0's), kept for the next generate call as version `step`."""
        import ray

        policy, critic = self.roles["policy"], self.roles["critic"]
        seed = rollout_seed(self.ppo.seed, step, 0xC0FFEE)
        parts = RowParts(experience)  # the config makes both roles' rank counts divide the batch: equal shards
        method = "train_then_buckets" if self.weight_sync.rides_with_calls else "train"
        p_refs = [getattr(a, method).remote(ref, ptx[r] if ptx else None, seed)
                  for r, (a, ref) in enumerate(zip(policy.actors, parts.refs(len(policy))))]
        c_refs = [a.train.remote(ref, seed) for a, ref in zip(critic.actors, parts.refs(len(critic)))]
        p_stats = ray.get(p_refs, timeout=self.ppo.actor_timeout_s)
        c_stats = ray.get(c_refs, timeout=self.ppo.actor_timeout_s)
        if self.weight_sync.rides_with_calls:
            self.pending_weights = (step, p_stats[0][1])
            p_stats = [stats for stats, _ in p_stats]
        return _mean_rows(p_stats), _mean_rows(c_stats)

    # -- one step ------------------------------------------------------------------------------
    def step(self, step: int) -> dict[str, float]:
        times, compute = {}, {}
        t = time.perf_counter()
        prompts = self.prompts.next_batch(self.ppo.rollout_batch_size)
        rollout = self.generate(prompts, step)
        samples = rollout.samples
        t_experience = time.perf_counter()
        times["generate"] = t_experience - t

        # Scoring and the experience forwards need only the samples: their calls are chained on the engines'
        # answers (in flight since `generate`), and the driver collates the batch, prepares the train phase's
        # ptx blocks and scores a rule reward meanwhile (one phase, "experience"). The phases' compute is read
        # after this phase, so that no forward runs outside a phase's clock.
        batch = collate(samples, self.pad_id)
        ptx = self.ptx_blocks()
        raw_scores = self.score(rollout)
        old_logprobs, ref_logprobs, values = self.collect_experience_forward(rollout.forward_refs)
        kl_coef = self.kl_ctl.value
        t_math = time.perf_counter()
        experience, stats = make_experience(
            batch, old_logprobs=old_logprobs, ref_logprobs=ref_logprobs, values=values, raw_scores=raw_scores,
            reward_mean=self.reward_mean, reward_std=self.reward_std, kl_coef=kl_coef, cfg=self.ppo,
        )
        math_s = time.perf_counter() - t_math  # the driver's own PPO math on the phase's critical path
        times["experience"] = time.perf_counter() - t_experience
        compute["generate"] = self.compute_time("rollout")
        compute["experience"] = self.compute_time(*(r for r in ("reward", "policy", "reference", "critic") if r in self.roles))

        t = time.perf_counter()
        policy_stats, critic_stats = self.train(experience, step, ptx)
        times["train"] = time.perf_counter() - t
        compute["train"] = self.compute_time("policy", "critic")

        if self.weight_sync.rides_with_calls:  # the weights left with the train calls; generate loads them
            times["sync"] = 0.0
            compute["sync"] = (0.0, 0.0) if self.ppo.profile_phases else None
        else:
            t = time.perf_counter()
            self.sync_weights(step)
            times["sync"] = time.perf_counter() - t
            compute["sync"] = self.compute_time("policy", "rollout", sequential=True)

        self.kl_ctl.update(stats["kl"], len(samples))
        gen_tokens = float(batch["response_mask"].sum())
        train_tokens = float(batch["attention_mask"].sum()) * self.ppo.ppo_epochs
        row = {**stats, **policy_stats, **critic_stats}
        row.update({f"time_{k}": v for k, v in times.items()})
        row["time_step"] = sum(times.values())
        if self.ppo.profile_phases:
            for k, (critical, total) in compute.items():
                row[f"compute_{k}"], row[f"busy_{k}"] = critical, total
            # make_experience (GAE, whitening) runs in the driver while no actor works: the step's math, not
            # orchestration (collate runs while the forwards compute; the other driver work is the calls)
            row["driver_experience"] = math_s
        row["generate_tokens_per_s"] = gen_tokens / max(times["generate"], 1e-9)
        row["train_tokens_per_s"] = train_tokens / max(times["train"], 1e-9)
        row["samples"] = float(len(samples))
        row["actor_recoveries"] = float(self.recoveries)
        return row

    def state_dict(self, step: int) -> dict:
        return {
            "step": step,
            "kl_controller": self.kl_ctl.state_dict(),
            "prompts": self.prompts.state_dict(),
            "ptx": self.ptx.state_dict() if self.ptx is not None else None,
            "config_hash": self.cfg.digest(),
        }

    def save_checkpoint(self, root: Path, step: int) -> Path:
        import ray

        tmp = state.begin_checkpoint(root, step)
        refs = self.roles["policy"].call_async("save_checkpoint", str(tmp / "policy"))
        refs += self.roles["critic"].call_async("save_checkpoint", str(tmp / "critic"))
        ray.get(refs, timeout=self.ppo.actor_timeout_s)
        return state.commit_checkpoint(root, step, tmp, self.state_dict(step), self.ppo.keep_checkpoints)


class RowParts:
    """A batch's contiguous row splits in wire form (numpy arrays, `batray.ppo.wire`), each made once: roles
    with the same number of actors (one each, usually) share the same split.

    A split of at most `INLINE_BYTES` goes inside each call, as Ray sends small arguments with the task
    itself. A bigger one is put in the object store once and every call gets its reference. On the tiny
    model, the inline splits took ~3 ms off each PPO step: the actors no longer fetch them from the object
    store before they start (`benchmarks/RESULTS.md`, PPO orchestration share)."""

    INLINE_BYTES = 64 << 10  # below Ray's limit for arguments sent with the task (100 KB by default)

    def __init__(self, batch: dict):
        self.batch, self.n, self._parts = batch, batch["input_ids"].shape[0], {}

    def refs(self, num_parts: int) -> list:
        import ray

        out = []
        for rows in split_rows(self.n, num_parts):
            if rows.stop == rows.start:
                out.append(None)
                continue
            key = (rows.start, rows.stop)
            if key not in self._parts:
                part = to_wire(select(self.batch, rows))
                self._parts[key] = part if wire_nbytes(part) <= self.INLINE_BYTES else ray.put(part)
            out.append(self._parts[key])
        return out


def rollout_seed(base: int, step: int, k: int) -> int:
    """The sampling seed of engine k at a PPO step (also the update's shuffle seed, k = 0xC0FFEE)."""
    return (base * 1_000_003 + step * 10_007 + k) % (2**31 - 1)


def _mean_rows(rows: list[dict]) -> dict:
    return {k: sum(r[k] for r in rows) / len(rows) for k in rows[0]} if rows else {}


def _first_line(err: Exception) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


# ---- the run ----------------------------------------------------------------------------------


def run_ppo(cfg: RecipeConfig, out_dir: str, *, policy_init: str, reward_model: str | None, prompts: str,
            kit: ActorKit, ptx_data: str | None = None, critic_init: str | None = None) -> str:
    """Run (or resume, or skip when finished) PPO into `out_dir`; returns `out_dir/final`.

    policy_init: the SFT model (pi_inst and pi_phi's start); reward_model: a reward checkpoint (None
    with `ppo.reward.kind: rule`); critic_init: the value model's start (default: the reward model, else
    the policy with a fresh head); kit: the actor classes of the five roles. After each step the
    `batray.hooks.PPO_STEP_DONE` point fires with the roles (tests kill actors or interrupt there).
    """
    import ray

    ppo = cfg.ppo
    out = Path(out_dir)
    final = out / "final"
    if is_complete(final):
        log.info("ppo: %s is complete; skipping", final)
        return str(final)
    if ppo.reward.kind == "model" and not reward_model:
        raise BatrayError("ppo: reward.kind is model but no reward model was given (ppo.reward_model)")
    if ppo.ptx_coef > 0 and not ptx_data:
        raise BatrayError("ppo: ptx_coef > 0 needs a pretraining corpus (ppo.ptx_data)")
    for what, path in (("policy_init", policy_init), ("reward_model", reward_model)):
        if path and "://" not in path and not Path(path).is_dir():
            raise BatrayError(f"ppo: {what} {path!r} is not a checkpoint folder")

    ckpt_root = out / "ckpt"
    resume = state.latest_checkpoint(ckpt_root)
    # Eq. 1's ptx term reads right to left: a stock policy gets the direction tokens (embeddings resized,
    # saved once under ppo/init so the policy, reference and rollout engines load the same weights).
    given_policy = policy_init
    policy_init = prepare_checkpoint(policy_init, str(out / "init"), chat_template=cfg.model.chat_template,
                                     directions=ppo.ptx_coef > 0 and ppo.ptx_bidirectional, seed=ppo.seed)
    if critic_init == given_policy:
        critic_init = policy_init
    tokenizer = load_tokenizer(policy_init)
    rule = RuleReward(tokenizer, ppo.reward.target_text or "") if ppo.reward.kind == "rule" else None
    prompt_stream = PromptStream.from_file(prompts, tokenizer, seed=ppo.seed, max_prompt_tokens=ppo.max_prompt_tokens,
                                           fmt=ppo.prompt_format, keys=Keys.of("ppo", ppo),
                                           rejected_out=str(out / "rejected_prompts.jsonl"))
    ptx_stream = None
    if ppo.ptx_coef > 0:
        ptx_stream = PtxStream.from_file(ptx_data, tokenizer, seed=ppo.seed, block_len=ppo.ptx_seq_len,
                                         bidirectional=ppo.ptx_bidirectional)
    kl_ctl = make_kl_controller("adaptive" if ppo.adaptive_kl else "fixed", ppo.kl_coef, ppo.kl_target, ppo.kl_horizon)
    critic_init = critic_init or reward_model or policy_init
    start = 0
    policy_path, critic_path = policy_init, critic_init
    if resume is not None:
        saved = state.read_state(resume)
        if saved.get("config_hash") != cfg.digest():
            log.warning("ppo: resuming %s written with a different config (hash %s, now %s)",
                        resume, saved.get("config_hash"), cfg.digest())
        start = int(saved["step"])
        kl_ctl.load_state_dict(saved["kl_controller"])
        prompt_stream.load_state_dict(saved["prompts"])
        if ptx_stream is not None and saved.get("ptx"):
            ptx_stream.load_state_dict(saved["ptx"])
        if ppo.lora is None:  # with LoRA the base is the start; DeepSpeed's checkpoint restores the adapters
            policy_path, critic_path = str(resume / "policy"), str(resume / "critic")
        log.info("ppo: resuming from %s (step %d)", resume, start)

    out.mkdir(parents=True, exist_ok=True)
    init_ray(cfg)  # waits for the local cluster `run_stage` started while the streams above were read
    roles = PpoRoles(ppo, kit, policy_path=policy_path, critic_path=critic_path, reference_path=policy_init,
                     reward_path=reward_model or policy_init, rollout_path=policy_init, seed=ppo.seed)
    metrics = trackers = progress = None
    failed = True
    try:
        roles.wait_ready(ppo.actor_timeout_s)
        for role in ("policy", "critic"):
            try:  # joins the role's ranks and builds their DeepSpeed engines over the group
                roles[role].setup_process_group(backend="gloo" if not torch.cuda.is_available() else None,
                                                timeout_s=ppo.sync_timeout_s)
            except ray.exceptions.RayTaskError as e:
                raise BatrayError(f"ppo: the {role} trainers failed to start: {remote_error_line(e)}") from None
            if resume is not None:
                roles[role].call("load_checkpoint", str(resume / role), timeout_s=ppo.actor_timeout_s)
        reward_stats = (rule.mean, rule.std) if rule is not None else \
            ray.get(roles["reward"].actors[0].stats.remote(), timeout=ppo.actor_timeout_s)
        driver = Driver(cfg, roles, prompt_stream, ptx_stream, kl_ctl, tokenizer.pad_token_id, reward_stats, rule)
        driver.sync_weights(start)
        metrics = MetricsLogger(out, resume_step=start + 1 if resume is not None else None,
                                tensorboard="tensorboard" in cfg.logging.report_to)
        trackers = open_trackers(TrackerSpec.of(cfg, "ppo", str(out)))
        progress = StepProgress("ppo", ppo.steps, mode=cfg.logging.progress)
        progress.start(start)
        for step in range(start + 1, ppo.steps + 1):
            try:
                row = driver.step(step)
            except (ray.exceptions.OutOfMemoryError, torch.OutOfMemoryError) as e:
                raise BatrayError(_failure(f"step {step}: out of memory ({_first_line(e)})", ckpt_root)) from None
            except ray.exceptions.RayTaskError as e:
                if "OutOfMemory" in str(e):
                    raise BatrayError(_failure(f"step {step}: out of memory ({_first_line(e)})", ckpt_root)) from None
                raise
            except ray.exceptions.GetTimeoutError:
                raise BatrayError(_failure(f"step {step}: a role did not answer within {ppo.actor_timeout_s:g}s "
                                           "(ppo.actor_timeout_s)", ckpt_root)) from None
            except BatrayError as e:
                raise BatrayError(_failure(f"step {step}: {e}", ckpt_root)) from None
            logged = metrics.log(step, **row)
            if trackers is not None:
                trackers.log(logged)
            progress.step(step)
            if step % ppo.log_every == 0 or step == ppo.steps:
                progress.metrics(logged)  # a plain line (or the bar's figures): reward, kl, value_loss, ETA
            if step % ppo.ckpt_every == 0 or step == ppo.steps:
                driver.save_checkpoint(ckpt_root, step)
            hooks.fire(hooks.PPO_STEP_DONE, step=step, roles=roles)
        roles["policy"].call(  # every rank: ZeRO-3 consolidates the weights collectively; rank 0 writes
            "save_final", str(final), step=ppo.steps, parent=policy_init, config_hash=cfg.digest(),
            extra={"reward_model": reward_model, "prompts": prompts}, timeout_s=ppo.actor_timeout_s,
        )
        failed = False
    finally:
        if metrics is not None:
            metrics.close()
        if progress is not None:
            progress.close()
        if trackers is not None:
            trackers.close(failed=failed)
        roles.shutdown()
    return str(final)


def _failure(message: str, ckpt_root: Path) -> str:
    last = state.latest_checkpoint(ckpt_root)
    where = f"the last checkpoint {last} is intact; rerun to resume from it" if last else "no checkpoint was written yet"
    return f"{message}; {where}"
