"""The pure PPO helpers in batray/ppo: batch layout, data positions, experience, checkpoints, model side."""

from __future__ import annotations

import json

import pytest
import torch

from batray.config.rl import PpoConfig
from batray.ppo import state
from batray.ppo.batch import Sample, collate, minibatches, response_slice, shard, split_rows, trim_padding
from batray.ppo.data import PromptStream, PtxStream
from batray.ppo.experience import make_experience
from batray.ppo.reward import token_fraction_reward

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
    # logits at positions 2, 3, 4 predict response tokens 0, 1, 2
    assert response_slice(b) == slice(2, 5)


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


def test_rule_reward():
    assert token_fraction_reward([1, 2, 3, 9], {1, 2}, ignore={9}) == pytest.approx(2 / 3)
    assert token_fraction_reward([9], {1}, ignore={9}) == 0.0


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
