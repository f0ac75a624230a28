"""The pure PPO helpers in batray/ppo: batch layout, data positions, experience, checkpoints, model side,
and the update loops (the ptx mask, loss aggregation over micro batches, gradient norms under ZeRO 0-3)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from batray.config.rl import PpoConfig
from batray.ppo import state
from batray.ppo.batch import Sample, collate, minibatches, response_slice, shard, split_rows, trim_padding
from batray.ppo.data import PromptStream, PtxStream
from batray.ppo.experience import make_experience
from batray.ppo.reward import token_fraction_reward
from batray.ppo.trainer import LocalTrainer
from batray.ppo.wire import from_wire, to_wire

PAD = 0


def _samples():
    return [
        Sample([5, 6, 7], [8, 9], [-0.5, -0.25], "stop", 0),
        Sample([5], [10, 11, 12], [-1.0, -2.0, -3.0], "length", 3),
    ]


def test_collate_layout():
    b = collate(_samples(), PAD)
    # prompts left-padded to 3, responses right-padded to 3
    assert b["input_ids"].tolist() == [[5, 6, 7, 8, 9, 0], [0, 0, 5, 10, 11, 12]]
    assert b["attention_mask"].tolist() == [[1, 1, 1, 1, 1, 0], [0, 0, 1, 1, 1, 1]]
    assert b["position_ids"].tolist() == [[0, 1, 2, 3, 4, 4], [0, 0, 0, 1, 2, 3]]
    assert b["response_mask"].tolist() == [[1, 1, 0], [1, 1, 1]]
    assert b["rollout_logprobs"].tolist() == [[-0.5, -0.25, 0.0], [-1.0, -2.0, -3.0]]
    assert b["prompt_index"].tolist() == [0, 3]
    assert {k: v.dtype for k, v in b.items()} == {
        "input_ids": torch.long, "attention_mask": torch.long, "position_ids": torch.long, "response_ids": torch.long,
        "response_mask": torch.float32, "rollout_logprobs": torch.float32, "prompt_index": torch.long}
    # logits at positions 2, 3, 4 predict response tokens 0, 1, 2
    assert response_slice(b) == slice(2, 5)


def test_wire_form_round_trips_bit_for_bit_through_read_only_buffers():
    """What crosses PPO's Ray calls: numpy arrays pickled out of band (pickle 5, as Ray does), read back from
    read-only buffers (the object store's) into writable tensors of the same dtype, shape and bits."""
    import pickle
    import warnings

    batch = collate(_samples(), PAD)
    tree = {"batch": batch, "blocks": [{"x": torch.randn(2, 3, dtype=torch.bfloat16)}], "scalar": torch.tensor(1.5),
            "flag": torch.tensor([True, False]), "step": 3}
    wire = to_wire(tree)
    assert isinstance(wire["batch"]["input_ids"], np.ndarray) and wire["step"] == 3
    buffers = []
    data = pickle.dumps(wire, protocol=5, buffer_callback=buffers.append)
    assert buffers  # the arrays' bytes went out of band, not through the pickle stream
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch warns when it wraps a non-writable array instead of copying it
        back = from_wire(pickle.loads(data, buffers=[memoryview(bytes(b.raw())) for b in buffers]))
    flat = [(batch[k], back["batch"][k]) for k in batch] + [
        (tree["blocks"][0]["x"], back["blocks"][0]["x"]), (tree["scalar"], back["scalar"]), (tree["flag"], back["flag"])]
    for before, after in flat:
        assert after.dtype == before.dtype and after.shape == before.shape and torch.equal(after, before)
        after.copy_(before)
    same_process = from_wire(to_wire(batch))  # no process boundary: still a copy, never the sender's memory
    same_process["input_ids"][0, 0] = 99
    assert batch["input_ids"][0, 0] == 5


def test_trim_padding_drops_all_pad_columns():
    b = collate(_samples(), PAD)
    one = trim_padding({k: v[1:] for k, v in b.items()})  # only the short-prompt row: 2 pad columns go
    assert one["input_ids"].tolist() == [[5, 10, 11, 12]]
    assert one["response_ids"].tolist() == [[10, 11, 12]]
    zero = trim_padding({k: v[:1] for k, v in b.items()})  # the short response: its pad column goes
    assert zero["input_ids"].tolist() == [[5, 6, 7, 8, 9]]
    assert zero["response_mask"].tolist() == [[1, 1]]
    assert response_slice(zero) == slice(2, 4)


def test_splits():
    assert split_rows(5, 2) == [slice(0, 3), slice(3, 5)]
    assert split_rows(1, 3) == [slice(0, 1), slice(1, 1), slice(1, 1)]
    b = collate(_samples() * 2, PAD)
    assert [s["prompt_index"].tolist() for s in shard(b, 2)] == [[0, 3], [0, 3]]
    with pytest.raises(ValueError, match="equal shards"):
        shard(b, 3)
    g = torch.Generator().manual_seed(0)
    parts = list(minibatches(b, 2, g))
    assert sorted(sum((p["prompt_index"].tolist() for p in parts), [])) == [0, 0, 3, 3]


def test_prompt_stream_positions_resume_exactly(tiny_tokenizer, tmp_path):
    path = tmp_path / "prompts.jsonl"
    rows = [{"prompt": f"question {i}"} for i in range(5)] + [{"prompt": 5}, {"nope": 1}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    s = PromptStream.from_file(str(path), tiny_tokenizer, seed=3, max_prompt_tokens=64)
    assert len(s) == 5  # the two bad rows are rejected (and reported), not served
    first = [i for i, _ in s.next_batch(4)]
    saved = s.state_dict()
    after = [i for i, _ in s.next_batch(4)]  # crosses into epoch 1
    assert sorted(first + after[:1]) == list(range(5)) and saved == {"epoch": 0, "offset": 4}
    again = PromptStream.from_file(str(path), tiny_tokenizer, seed=3, max_prompt_tokens=64)
    again.load_state_dict(saved)
    assert [i for i, _ in again.next_batch(4)] == after
    ids = s.prompt_ids[0]
    text = tiny_tokenizer.decode(ids)
    assert text.startswith("<|l2r|>[Turn 1]") and text.endswith("[Assistant] ")


def test_ptx_stream_is_eq1_bidirectional(tiny_tokenizer, tmp_path):
    path = tmp_path / "corpus.jsonl"
    path.write_text(json.dumps({"text": "Marnet is the capital of Veloria."}) + "\n")
    s = PtxStream.from_file(str(path), tiny_tokenizer, seed=0, block_len=64)
    l2r, r2l = tiny_tokenizer.convert_tokens_to_ids(["<|l2r|>", "<|r2l|>"])
    block = s.next_blocks(1)
    ids = block["input_ids"][0].tolist()
    assert ids[0] == l2r and r2l in ids  # both directions of the one text, packed
    body = tiny_tokenizer.encode("Marnet is the capital of Veloria.", add_special_tokens=False)
    j = ids.index(r2l)
    assert ids[1 : 1 + len(body)] == body and ids[j + 1 : j + 1 + len(body)] == body[::-1]
    assert block["labels"][0, 0].item() == -100 and block["labels"][0, j].item() == -100


def test_make_experience_rewards_and_kl():
    cfg = PpoConfig(kl_coef=0.5, gamma=1.0, gae_lambda=1.0, whiten_advantages=False, reward_clip=10.0)
    b = collate(_samples(), PAD)
    old = torch.tensor([[-1.0, -1.0, 0.0], [-1.0, -1.0, -1.0]])
    ref = torch.tensor([[-1.5, -1.0, 0.0], [-1.0, -1.0, -1.0]])
    values = torch.zeros(2, 3)
    exp, stats = make_experience(b, old_logprobs=old, ref_logprobs=ref, values=values,
                                 raw_scores=torch.tensor([3.0, 1.0]), reward_mean=1.0, reward_std=2.0,
                                 kl_coef=0.5, cfg=cfg)
    # normalized scores (3-1)/2 = 1 and 0; k1 KL 0.5 on row 0 token 0 -> reward -0.25 there
    # gamma = lambda = 1, V = 0: advantage = reward-to-go
    assert torch.allclose(exp["advantages"], torch.tensor([[0.75, 1.0, 0.0], [0.0, 0.0, 0.0]]))
    assert stats["kl"] == pytest.approx(0.25)  # mean over sequences of the summed KL: (0.5 + 0) / 2
    assert stats["reward"] == pytest.approx(0.5) and stats["reward_raw"] == pytest.approx(2.0)
    assert stats["response_length"] == pytest.approx(2.5)
    # rollout vs trainer log-probs: |(-0.5) - (-1)| ... over the 5 real tokens
    gaps = [0.5, 0.75, 0.0, 1.0, 2.0]
    assert stats["rollout_logprob_diff_mean"] == pytest.approx(sum(gaps) / 5)


def test_checkpoint_commit_latest_and_prune(tmp_path):
    root = tmp_path / "ckpt"
    assert state.latest_checkpoint(root) is None
    for step in (2, 4, 6):
        tmp = state.begin_checkpoint(root, step)
        (tmp / "policy").mkdir()
        state.commit_checkpoint(root, step, tmp, {"step": step}, keep=2)
    latest = state.latest_checkpoint(root)
    assert latest.name == "step_000006" and state.read_state(latest) == {"step": 6}
    assert sorted(p.name for p in root.glob("step_*")) == ["step_000004", "step_000006"]
    # a crash while writing step 8 leaves a .tmp folder; latest still names step 6
    state.begin_checkpoint(root, 8)
    assert state.latest_checkpoint(root).name == "step_000006"


def test_rule_reward(tiny_tokenizer):
    assert token_fraction_reward([1, 2, 3, 9], {1, 2}, ignore={9}) == pytest.approx(2 / 3)
    assert token_fraction_reward([9], {1}, ignore={9}) == 0.0
    # the driver's scorer: the target text's tokens count, stop tokens are left out, an empty target is refused
    from batray.models.chat import stop_token_ids
    from batray.errors import BatrayError
    from batray.ppo.reward import RuleReward

    rule = RuleReward(tiny_tokenizer, "hello world")
    target = tiny_tokenizer.encode("hello world", add_special_tokens=False)
    other = next(t for t in range(len(tiny_tokenizer)) if t not in rule.targets and t not in rule.ignore)
    stop = stop_token_ids(tiny_tokenizer)[0]
    assert rule.score([target, [other, *target[:1], stop], []]) == [1.0, 0.5, 0.0]
    with pytest.raises(BatrayError, match="target_text: encodes to no tokens"):
        RuleReward(tiny_tokenizer, "")


def test_trainer_logprobs_match_the_rollout_engine(tiny_checkpoint):
    """The rollout-vs-trainer log-prob comparison is meaningful: on CPU with equal weights they agree."""
    from batray.models.presets import load_causal_lm
    from batray.models.tokenizer import load_tokenizer
    from batray.ppo.train import response_logprobs, token_values
    from batray.reward.model import build_reward_model
    from batray.rollout.engine import HFRolloutEngine, SamplingParams

    tok = load_tokenizer(tiny_checkpoint)
    model = load_causal_lm(tiny_checkpoint)
    engine = HFRolloutEngine(model, tok)
    prompts = [tok.encode("<|l2r|>The capital of", add_special_tokens=False),
               tok.encode("<|l2r|>Marnet", add_special_tokens=False)]
    outs = engine.generate(prompts, SamplingParams(max_new_tokens=6, seed=1))
    batch = collate([Sample(c.prompt_ids, c.token_ids, c.logprobs) for c in outs], tok.pad_token_id)
    logp = response_logprobs(model, batch, micro_batch_size=1)
    mask = batch["response_mask"]
    assert ((logp - batch["rollout_logprobs"]).abs() * mask).max() < 1e-4
    critic, _ = build_reward_model(tiny_checkpoint, tok, seed=0)
    values = token_values(critic, batch)
    assert values.shape == mask.shape and (values[mask == 0] == 0).all()


def test_weight_sync_buckets_cover_every_parameter(tiny_checkpoint):
    from batray.models.presets import load_causal_lm
    from batray.ppo.weight_sync import bucket_layout, flatten, unflatten

    model = load_causal_lm(tiny_checkpoint)
    named = list(model.named_parameters())
    layout = bucket_layout(named, bucket_bytes=64 << 10)
    assert len(layout) > 1
    assert [n for spec in layout for n in spec.names] == [n for n, _ in named]
    for spec in layout[:-1]:  # full buckets stop before the limit, unless one tensor alone exceeds it
        assert len(spec.names) == 1 or spec.numel * 4 <= 64 << 10
    params = dict(named)
    for spec in layout:  # a flat bucket unflattens into the same tensors, names and shapes
        flat = flatten([params[n].detach() for n in spec.names])
        assert flat.numel() == spec.numel
        assert all(torch.equal(t, params[n]) for n, t in unflatten(flat, spec).items())
    # a dtype change starts a new bucket (every bucket travels as one flat tensor of one dtype)
    mixed = [("a", torch.zeros(4)), ("b", torch.zeros(4, dtype=torch.bfloat16)), ("c", torch.zeros(4, dtype=torch.bfloat16))]
    assert [spec.names for spec in bucket_layout(mixed, 1 << 20)] == [("a",), ("b", "c")]


def test_config_and_input_errors_are_one_line(tmp_path):
    from batray.config import load_config
    from batray.errors import BatrayError, ConfigError
    from actors import kit
    from batray.ppo.driver import run_ppo

    with pytest.raises(ConfigError, match=r"ppo: .*rollout_batch_size \(12\).*policy.num_actors"):
        load_config(None, ["ppo.rollout_batch_size=12", "ppo.num_minibatches=2", "ppo.policy.num_actors=4"])
    with pytest.raises(ConfigError, match=r"ppo.reward.*target_text"):
        load_config(None, ["ppo.reward.kind=rule"])
    with pytest.raises(ConfigError, match=r"ppo.kl_estimator"):
        load_config(None, ["ppo.kl_estimator=k4"])
    cfg = load_config(None, [])
    with pytest.raises(BatrayError, match="no reward model was given"):
        run_ppo(cfg, str(tmp_path), policy_init=str(tmp_path), reward_model=None, prompts="p.jsonl", kit=kit())
    with pytest.raises(BatrayError, match="policy_init .* is not a checkpoint folder"):
        run_ppo(cfg, str(tmp_path), policy_init=str(tmp_path / "missing"), reward_model=str(tmp_path), prompts="p.jsonl",
                kit=kit())


# ---- the update loops: Eq. 4's pretraining term, loss aggregation, gradient norms ----------------

RESPONSE_LENGTHS = [7, 6, 7, 5, 6, 7, 4, 7, 1, 2, 1, 3, 2, 1, 2, 1]  # rows 0-7 long, 8-15 short: shards differ


def test_ptx_segments_do_not_attend_to_each_other(tiny_checkpoint, tiny_tokenizer, tmp_path):
    """Eq. 4's lambda_ptx term sees packed blocks as pretraining does: changing only the first segment of a
    block moves nothing in the segments after it (by exactly 0)."""
    from batray.data.direction import IGNORE_INDEX
    from batray.models.presets import load_causal_lm
    from batray.ppo.train import ptx_loss

    path = tmp_path / "corpus.jsonl"
    texts = ["Marnet is the capital of Veloria.", "Ada Quill works as a cartographer in Marnet."]
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    block = PtxStream.from_file(str(path), tiny_tokenizer, seed=0, block_len=96).next_blocks(1)
    starts = (block["position_ids"][0] == 0).nonzero().flatten().tolist()
    first, second = slice(starts[0], starts[1]), slice(starts[1], starts[2])
    assert second.stop - second.start > 5 and len(starts) > 4  # l2r and r2l of both texts, then padding
    block["labels"][0, first] = IGNORE_INDEX  # the loss counts only the segments after the first
    changed = {k: v.clone() for k, v in block.items()}
    body = slice(first.start + 1, first.stop)  # keep the marker, change every other token of segment 1
    changed["input_ids"][0, body] = (changed["input_ids"][0, body] + 7) % len(tiny_tokenizer)
    model = load_causal_lm(tiny_checkpoint).eval()
    with torch.no_grad():
        assert ptx_loss(model, changed).item() == ptx_loss(model, block).item()
        from batray.ppo.train import ptx_logits

        a, b = ptx_logits(model, block)[0], ptx_logits(model, changed)[0]
    assert (a[second.start :] - b[second.start :]).abs().max().item() == 0.0
    assert (a[first] - b[first]).abs().max().item() > 1e-3  # the change itself did reach the model


def _experience(tokenizer, model, critic, n: int = 16, seed: int = 0) -> dict:
    """A rollout batch of uneven response lengths with PPO's experience fields filled in."""
    from batray.ppo.train import batch_values, response_logprobs

    g = torch.Generator().manual_seed(seed)
    vocab = len(tokenizer)
    samples = []
    for i in range(n):
        prompt = torch.randint(10, vocab, (2 + i % 3,), generator=g).tolist()
        r = RESPONSE_LENGTHS[i % len(RESPONSE_LENGTHS)]
        samples.append(Sample(prompt, torch.randint(10, vocab, (r,), generator=g).tolist(), [0.0] * r))
    b = collate(samples, tokenizer.pad_token_id)
    mask = b["response_mask"]
    logp = response_logprobs(model, b, n)
    b["old_logprobs"] = (logp + 0.3 * torch.randn(logp.shape, generator=g)) * mask  # some ratios get clipped
    b["advantages"] = torch.randn(mask.shape, generator=g) * mask
    b["old_values"] = batch_values(critic, b, n)
    b["returns"] = (b["old_values"] + torch.randn(mask.shape, generator=g)) * mask
    return b


class GradRecordingTrainer(LocalTrainer):
    """LocalTrainer that keeps a copy of the accumulated gradient at each step (to compare update schedules)."""

    def __init__(self, model, lr):
        super().__init__(model, lr=lr, grad_clip=1.0)
        self.grads = []

    def step(self):
        self.grads.append(torch.cat([p.grad.flatten() for p in self.module.parameters()]).clone())
        return super().step()


def _by_hand(model, experience, cfg, policy: bool) -> tuple[torch.Tensor, float]:
    """Gradient and its norm of the minibatch as one batch: the loss over all rows at once."""
    from batray.objectives.ppo import policy_loss, token_logprobs, value_loss
    from batray.ppo.train import response_logits, token_values

    model.zero_grad(set_to_none=True)
    mask = experience["response_mask"]
    if policy:
        logp = token_logprobs(response_logits(model, experience), experience["response_ids"])
        loss, _ = policy_loss(logp, experience["old_logprobs"], experience["advantages"], mask, cfg.clip_range,
                              loss_agg=cfg.loss_agg)
    else:
        values = token_values(model, experience)
        loss, _ = value_loss(values, experience["old_values"], experience["returns"], mask, cfg.value_clip,
                             loss_agg=cfg.loss_agg)
        loss = cfg.value_coef * loss
    loss.backward()
    grad = torch.cat([p.grad.flatten() for p in model.parameters()]).clone()
    model.zero_grad(set_to_none=True)
    return grad, float(grad.norm())


@pytest.mark.parametrize("loss_agg", [None, "seq_mean_token_mean", "seq_mean_token_sum"])
def test_micro_batches_give_the_gradient_of_one_batch(tiny_checkpoint, tiny_tokenizer, loss_agg):
    """16 rows of uneven lengths as 1 x 16 or 4 x 4 micro batches: the same gradient, the one of the 16 rows
    taken at once (policy and critic; None is the default, token_mean); the logged norm is its norm."""
    from batray.models.presets import load_causal_lm
    from batray.ppo.train import critic_update, policy_update
    from batray.reward.model import build_reward_model

    extra = {} if loss_agg is None else {"loss_agg": loss_agg}
    policy = load_causal_lm(tiny_checkpoint)
    critic, _ = build_reward_model(tiny_checkpoint, tiny_tokenizer, seed=0)
    exp = _experience(tiny_tokenizer, policy, critic)
    for update, model, is_policy in ((policy_update, policy, True), (critic_update, critic, False)):
        grads, norms = [], []
        for micro in (16, 4):
            cfg = PpoConfig(rollout_batch_size=16, micro_batch_size=micro, **extra)
            start = {k: v.clone() for k, v in model.state_dict().items()}
            trainer = GradRecordingTrainer(model, lr=1e-3)
            args = (trainer, exp, None, cfg, 0) if is_policy else (trainer, exp, cfg, 0)
            stats = update(*args)
            grads.append(trainer.grads[0])
            norms.append(stats["policy_grad_norm" if is_policy else "critic_grad_norm"])
            model.load_state_dict(start)
        hand, hand_norm = _by_hand(model, exp, PpoConfig(**extra), is_policy)
        for grad, norm in zip(grads, norms):
            assert torch.allclose(grad, hand, rtol=1e-4, atol=1e-7 * float(hand.abs().max()))
            assert norm == pytest.approx(hand_norm, rel=1e-4)


def _ranks_grad_norms(rank: int, port: int, checkpoint: str, shard: dict, queue) -> None:
    """One of two gloo ranks: DeepSpeedTrainer at each ZeRO stage, one policy and one critic update on this
    rank's shard (2 micro batches of 4); puts {stage: (policy_grad_norm, critic_grad_norm)}."""
    import os

    from batray.distributed import init_process_group
    from batray.models.presets import load_causal_lm
    from batray.models.tokenizer import load_tokenizer
    from batray.ppo.train import critic_update, policy_update
    from batray.ppo.trainer import DeepSpeedTrainer
    from batray.reward.model import build_reward_model

    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    init_process_group(rank, 2, "127.0.0.1", port, backend="gloo", timeout_s=60)
    tokenizer = load_tokenizer(checkpoint)
    out = {}
    for stage in (0, 1, 2, 3):
        cfg = PpoConfig(rollout_batch_size=16, micro_batch_size=4, policy={"num_actors": 2}, critic={"num_actors": 2},
                        deepspeed={"zero_stage": stage})
        policy = DeepSpeedTrainer(load_causal_lm(checkpoint), lr=1e-3, cfg=cfg, world_size=2)
        p = policy_update(policy, shard, None, cfg, seed=0)["policy_grad_norm"]
        critic_model, _ = build_reward_model(checkpoint, tokenizer, seed=0)
        critic = DeepSpeedTrainer(critic_model, lr=1e-3, cfg=cfg, world_size=2)
        c = critic_update(critic, shard, cfg, seed=0)["critic_grad_norm"]
        out[stage] = (p, c)
        del policy, critic
    queue.put((rank, out))


def test_grad_norms_are_the_global_norm_under_every_zero_stage(tiny_checkpoint, tiny_tokenizer):
    """Two gloo ranks under DeepSpeed, ZeRO 0-3, each with half of a 16-row minibatch (the halves differ in
    token count): both roles log the norm of the gradient of the whole minibatch as one batch (token_mean
    over all 16 rows, the count all-reduced), before clipping, as a number."""
    import math
    import multiprocessing

    from batray.distributed import free_port
    from batray.models.presets import load_causal_lm
    from batray.reward.model import build_reward_model

    policy = load_causal_lm(tiny_checkpoint)
    critic, _ = build_reward_model(tiny_checkpoint, tiny_tokenizer, seed=0)
    exp = _experience(tiny_tokenizer, policy, critic)
    cfg = PpoConfig()
    _, policy_norm = _by_hand(policy, exp, cfg, True)
    _, critic_norm = _by_hand(critic, exp, cfg, False)
    assert policy_norm > 1.0 and critic_norm > 1.0  # above grad_clip: a clipped norm would not match
    port = free_port()
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_ranks_grad_norms, args=(r, port, tiny_checkpoint, part, queue))
             for r, part in enumerate(shard(exp, 2))]
    for proc in procs:
        proc.start()
    try:
        results = dict(queue.get(timeout=300) for _ in procs)
    finally:
        for proc in procs:
            proc.join(timeout=60)
    for rank in (0, 1):
        for stage, (p, c) in results[rank].items():
            assert isinstance(p, float) and math.isfinite(p) and isinstance(c, float) and math.isfinite(c)
            assert p == pytest.approx(policy_norm, rel=1e-4), (rank, stage)
            assert c == pytest.approx(critic_norm, rel=1e-4), (rank, stage)


def test_row_parts_send_small_splits_inline_and_put_big_ones_once(ray_session):
    """A small split travels inside each call (no object-store fetch before the actor starts); one above
    `RowParts.INLINE_BYTES` is put once and shared by reference. Either way the actor reads the same rows."""
    import ray

    from batray.ppo.driver import RowParts
    from batray.ppo.wire import wire_nbytes

    small = collate(_samples(), PAD)
    parts = RowParts(small)
    first, again = parts.refs(1), parts.refs(1)
    assert isinstance(first[0], dict) and first[0] is again[0]  # made once, shared by the roles
    assert wire_nbytes(first[0]) <= RowParts.INLINE_BYTES
    halves = parts.refs(2)
    assert [from_wire(h)["input_ids"].tolist() for h in halves] == [[row] for row in small["input_ids"].tolist()]

    rows = RowParts.INLINE_BYTES // (8 * 64) + 1  # int64 rows of 64 tokens: just over the limit in input_ids alone
    big = {"input_ids": torch.arange(rows * 64).reshape(rows, 64), "mask": torch.ones(rows, 64, dtype=torch.bfloat16)}
    assert wire_nbytes(to_wire(big)) == rows * 64 * 8 + rows * 64 * 2  # the bf16 raw bytes counted too
    parts = RowParts(big)
    put, shared = parts.refs(1), parts.refs(1)
    assert isinstance(put[0], ray.ObjectRef) and put[0] == shared[0]

    @ray.remote(num_cpus=0)
    def read(part):
        return from_wire(part)["input_ids"].sum().item()

    assert ray.get([read.remote(put[0]), read.remote(halves[0])]) == [int(big["input_ids"].sum()), sum(small["input_ids"][0].tolist())]


def test_rollout_rows_rebuild_the_drivers_rows_from_the_engines_answers(ray_session):
    """A chained experience call gets `RolloutRows` and the engines' answers as object refs: Ray resolves the
    refs, and each split equals the driver's own collate of the whole batch, bit for bit (prompts and
    responses of different lengths, so each split is padded to the whole batch's widths)."""
    import ray

    from batray.ppo.batch import RolloutRows, answer_samples, forward_batch, rollout_rows, select
    from batray.rollout.engine import Completion

    def completion(prompt, response):
        return Completion(prompt, response, [-0.5 - 0.1 * i for i in range(len(response))], "", "length")

    answers = [(3, [completion([5, 6, 7], [8]), completion([9], [10, 11, 12])]),  # engine 0: (version, completions)
               (3, [completion([13, 14], []), completion([15, 16, 17, 18], [19, 20])]),
               (3, [completion([21], [22, 23])])]
    samples = answer_samples(answers, [40, 41, 42, 43, 44])
    assert [s.prompt_index for s in samples] == [40, 41, 42, 43, 44]
    whole = collate(samples, PAD)
    parts = rollout_rows(len(samples), 3, PAD)
    assert [(p.start, p.stop) for p in parts] == [(0, 2), (2, 4), (4, 5)]
    assert rollout_rows(2, 3, PAD)[2] is None  # an actor with no rows is not called

    @ray.remote(num_cpus=0)
    def forward(rows, *engine_answers):  # as `PolicyActor.logprobs` reads its batch
        return {k: v for k, v in forward_batch(rows, engine_answers).items() if k != "prompt_index"}

    refs = [ray.put(a) for a in answers]
    got = ray.get([forward.remote(p, *refs) for p in parts])
    for p, batch in zip(parts, got):
        want = select(whole, slice(p.start, p.stop))
        assert set(batch) == set(want) - {"prompt_index"}
        for k, v in batch.items():
            assert v.dtype == want[k].dtype and torch.equal(v, want[k]), (p, k)
    assert forward_batch(to_wire(whole), ())["input_ids"].equal(whole["input_ids"])  # a wire split still works
    assert [s.response_ids for s in RolloutRows(1, 3, PAD).samples(answers)] == [[10, 11, 12], []]
