"""Parameter expansion (§3.4): exact width growth and zero stacking preserve the function, fpi follows
Eqs. 5-7 and reports its deviation, bad requests fail before anything is written.

Tiny GLM (the BatGPT family: fused gate/up, QKV bias, grouped KV heads, partial rotary, untied head),
Llama (with attention/MLP biases), Mistral and Qwen2 (tied head) models are built from config in the
test; stock checkpoints with their own tokenizers (`model_zoo`) are expanded and then generate.
Weights are drawn larger than the default init and norm weights are randomized, so logits are O(1)
and a wrong mapping (e.g. a copied norm weight in the wrong place) shows far above float32 rounding.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM, LlamaConfig, MistralConfig, Qwen2Config

from batray.errors import BatrayError
from batray.expansion import Request, expand, plan_expansion
from batray.models.presets import preset_config


def _save_random(config, folder: Path, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.normal_(1.0, 0.3)
            else:
                p.normal_(0.0, 0.3 if p.dim() == 1 else 1.0 / p.shape[-1] ** 0.5)
    model.save_pretrained(folder)
    return folder


def glm_config():
    return preset_config("batgpt-tiny", vocab_size=128, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=8)


def llama_config():
    return LlamaConfig(vocab_size=128, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, attention_bias=True, mlp_bias=True,
                       tie_word_embeddings=False, max_position_embeddings=128)


def mistral_config():
    return MistralConfig(vocab_size=128, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=8, sliding_window=None,
                         tie_word_embeddings=False, max_position_embeddings=128)


def qwen2_tied_config():
    return Qwen2Config(vocab_size=128, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
                       max_position_embeddings=128)


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    root = tmp_path_factory.mktemp("expand_src")
    return {name: _save_random(make(), root / name) for name, make in
            (("glm", glm_config), ("llama", llama_config), ("mistral", mistral_config),
              ("qwen2_tied", qwen2_tied_config))}


IDS = torch.randint(0, 128, (3, 24), generator=torch.Generator().manual_seed(7))


def logits(folder) -> torch.Tensor:
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    with torch.no_grad():
        return model(input_ids=IDS).logits


def assert_same_function(src, dst):
    ref, out = logits(src), logits(dst)
    assert ref.abs().max() > 0.5, "logits too small for the check to mean anything"
    # float32 rounding: summing 2x as many halved terms reorders additions, nothing more
    assert (ref - out).abs().max() < 1e-4 * ref.abs().max(), (ref - out).abs().max()


EXACT_WIDTH = Request(hidden_size=64, intermediate_size=96, num_heads=8, num_kv_heads=4, method="exact")


@pytest.mark.parametrize("arch", ["glm", "llama", "mistral", "qwen2_tied"])
def test_exact_width_x2_preserves_logits(sources, tmp_path, arch):
    dst = tmp_path / "wide"
    report = expand(sources[arch], dst, EXACT_WIDTH, probe=False)
    cfg = json.loads((dst / "config.json").read_text())
    assert (cfg["hidden_size"], cfg["intermediate_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"]) == (
        64, 96, 8, 4)
    assert cfg["head_dim"] == 8  # never changes: it fixes the rotary frequencies and the attention scale
    assert report["target"]["num_heads"] == 8
    assert_same_function(sources[arch], dst)


def test_exact_query_heads_only_keep_their_kv_head(sources, tmp_path):
    """Queries per KV head 2 -> 4 with the KV heads unchanged: grouping must map q' to its own KV head."""
    dst = tmp_path / "more_queries"
    expand(sources["glm"], dst, Request(num_heads=8, method="exact"), probe=False)
    assert_same_function(sources["glm"], dst)


def test_exact_noise_cancels_yet_separates_copies(sources, tmp_path):
    dst = tmp_path / "noisy"
    expand(sources["llama"], dst, Request(hidden_size=64, num_heads=8, num_kv_heads=4, method="exact",
                                          noise_std=0.05), probe=False)
    assert_same_function(sources["llama"], dst)
    with safe_open(str(dst / "model.safetensors"), "pt") as f:
        q = f.get_tensor("model.layers.0.self_attn.q_proj.weight")  # [8*8 heads, 64 hidden]
    assert not torch.allclose(q[:, :32], q[:, 32:]), "noise should make the two copies of each input unit differ"


@pytest.mark.parametrize("arch", ["glm", "llama", "mistral"])
def test_zero_stacking_preserves_logits_and_copy_stacking_does_not(sources, tmp_path, arch):
    zero, copy = tmp_path / "zero", tmp_path / "copy"
    expand(sources[arch], zero, Request(num_layers=4, stack="zero"), probe=False)
    assert json.loads((zero / "config.json").read_text())["num_hidden_layers"] == 4
    assert_same_function(sources[arch], zero)
    with safe_open(str(zero / "model.safetensors"), "pt") as f, safe_open(str(sources[arch] / "model.safetensors"), "pt") as s:
        # order 0..L-1, 0..L-1: layer 3 is a copy of layer 1, with its residual writers zeroed
        assert torch.equal(f.get_tensor("model.layers.3.self_attn.q_proj.weight"),
                           s.get_tensor("model.layers.1.self_attn.q_proj.weight"))
        assert not f.get_tensor("model.layers.3.mlp.down_proj.weight").any()
        assert torch.equal(f.get_tensor("model.layers.1.mlp.down_proj.weight"),
                           s.get_tensor("model.layers.1.mlp.down_proj.weight"))
    report = expand(sources[arch], copy, Request(num_layers=4, stack="copy"))
    assert report["deviation"]["max_abs"] > 1e-2  # the probe can tell a changed function


def test_width_and_depth_together_sharded(sources, tmp_path):
    dst = tmp_path / "both"
    report = expand(sources["glm"], dst, Request(hidden_size=64, intermediate_size=96, num_heads=8, num_kv_heads=4,
                                                 num_layers=4), max_shard_bytes=40_000)
    assert report["shards"] > 3
    index = json.loads((dst / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == {p.name for p in dst.glob("model-*.safetensors")}
    assert report["deviation"]["max_abs"] < 1e-4 * 10
    assert_same_function(sources["glm"], dst)
    marker = json.loads((dst / "batray.json").read_text())
    assert marker["stage"] == "expand" and marker["complete"]
    assert not Path(str(dst) + ".tmp").exists()


def test_fpi_follows_eqs_5_to_7(sources, tmp_path):
    src, dst = sources["glm"], tmp_path / "fpi"
    request = Request(hidden_size=45, intermediate_size=70, num_heads=6, num_kv_heads=3, method="fpi", seed=3)
    report = expand(src, dst, request)
    maps = plan_expansion(src, request).maps  # the same s(.) (drawn from the seed), to check the weights
    s_h, s_f = maps["hidden"].index, maps["ffn"].index
    # Eq. 5: the first units map to themselves, the extra ones to source units
    assert torch.equal(s_h[:32], torch.arange(32)) and int(s_h.max()) < 32 and len(s_h) == 45
    assert torch.equal(s_f[:48], torch.arange(48)) and len(s_f) == 70
    c_h = torch.bincount(s_h, minlength=32).float()  # Eq. 7's counts
    c_f = torch.bincount(s_f, minlength=48).float()
    with safe_open(str(src / "model.safetensors"), "pt") as a, safe_open(str(dst / "model.safetensors"), "pt") as b:
        emb, emb2 = a.get_tensor("model.embed_tokens.weight"), b.get_tensor("model.embed_tokens.weight")
        assert torch.equal(emb2, emb[:, s_h])  # the residual stream is copied, not divided
        down, down2 = a.get_tensor("model.layers.0.mlp.down_proj.weight"), b.get_tensor("model.layers.0.mlp.down_proj.weight")
        # Eq. 6/7: W'[i, j] = W[s_out(i), s_in(j)] / C(s_in(j)), checked element by element on a few entries
        for i, j in [(0, 0), (40, 3), (44, 69), (7, 55)]:
            assert torch.isclose(down2[i, j], down[s_h[i], s_f[j]] / c_f[s_f[j]])
        # ... so each source column's copies sum back to it
        summed = torch.zeros(45, 48).index_add_(1, s_f, down2)
        assert torch.allclose(summed, down[s_h], atol=1e-6)
        gu, gu2 = a.get_tensor("model.layers.1.mlp.gate_up_proj.weight"), b.get_tensor("model.layers.1.mlp.gate_up_proj.weight")
        fused = torch.cat([s_f, 48 + s_f])  # gate and up halves map alike
        assert torch.allclose(gu2, gu[fused][:, s_h] / c_h[s_h])
        head = b.get_tensor("lm_head.weight")
        assert torch.allclose(head, a.get_tensor("lm_head.weight")[:, s_h] / c_h[s_h])
        kv_map = maps["kv"].index.view(3, 8)[:, 0] // 8  # KV head of each new KV slot
        q_map = maps["q"].index.view(6, 8)[:, 0] // 8
        assert torch.equal(q_map // 2, kv_map.repeat_interleave(2))  # every query keeps its KV head
    dev = report["deviation"]
    assert 0 < dev["mean_abs"] <= dev["max_abs"] < 10 * dev["reference_logit_std"]
    saved = json.loads((dst / "expansion.json").read_text())
    assert saved["deviation"] == dev and saved["method"] == "fpi"


@pytest.mark.parametrize("request_, message", [
    (Request(hidden_size=16), "cannot shrink"),
    (Request(num_heads=6, num_kv_heads=4), "divisible"),
    (Request(hidden_size=48, method="exact"), "integer-factor"),
    (Request(num_kv_heads=4), "queries per KV head would shrink"),
    (Request(num_layers=3), "multiple of the source depth"),
])
def test_bad_requests_fail_before_writing(sources, tmp_path, request_, message):
    dst = tmp_path / "never"
    with pytest.raises(BatrayError, match=message):
        expand(sources["glm"], dst, request_)
    assert not dst.exists() and not Path(str(dst) + ".tmp").exists()


def test_unknown_architecture_fails_before_writing(tmp_path):
    from transformers import GPT2Config

    src = _save_random(GPT2Config(vocab_size=64, n_embd=16, n_layer=1, n_head=2), tmp_path / "gpt2")
    with pytest.raises(BatrayError, match="cannot expand model type 'gpt2'.*fused c_attn"):
        expand(src, tmp_path / "never", Request(hidden_size=32))
    assert not (tmp_path / "never").exists()


def test_probe_streams_layers_from_disk_for_models_too_big_for_memory(sources):
    """The big-model probe path (decoder layers offloaded, read in place) gives the in-memory logits."""
    from batray.expansion.probe import logits_of

    in_memory = logits_of(sources["llama"], IDS)
    offloaded = logits_of(sources["llama"], IDS, offload=True)
    assert torch.allclose(in_memory, offloaded, atol=1e-5)


@pytest.mark.parametrize("family", ["llama", "qwen2", "mistral"])
def test_expanded_stock_checkpoint_keeps_its_tokenizer_and_generates(tmp_path, family):
    """A stock checkpoint with its own tokenizer and chat template, grown in width and depth: the
    tokenizer files travel along, batray adds no token, and the expanded model serves right away."""
    from model_zoo import build_checkpoint
    from transformers import AutoTokenizer

    from batray.models.chat import chat_prompt_ids
    from batray.models.loading import load_model_and_tokenizer
    from batray.rollout.engine import HFRolloutEngine, SamplingParams

    src = build_checkpoint(family, tmp_path / family)
    dst = tmp_path / "grown"
    expand(src, dst, Request(hidden_size=64, intermediate_size=128, num_heads=8, num_kv_heads=4, num_layers=4,
                             method="exact"), probe=False)
    assert AutoTokenizer.from_pretrained(dst).chat_template == AutoTokenizer.from_pretrained(src).chat_template
    ref, out = logits(src), logits(dst)  # default-initialized weights: small logits, so a relative check
    assert (ref - out).abs().max() <= 1e-4 * ref.abs().max()
    model, tok = load_model_and_tokenizer(str(dst))
    assert model.get_input_embeddings().num_embeddings == len(tok) == len(AutoTokenizer.from_pretrained(src))
    prompt = chat_prompt_ids(tok, [{"role": "user", "content": "What is the capital of Veloria?"}])
    done = HFRolloutEngine(model, tok).generate([prompt], SamplingParams(temperature=0, max_new_tokens=4))[0]
    assert len(done.token_ids) >= 1 and done.prompt_ids == prompt


def test_gpt2_is_refused_in_one_line(tmp_path):
    from model_zoo import build_checkpoint

    src = build_checkpoint("gpt2", tmp_path / "gpt2")
    with pytest.raises(BatrayError) as e:
        expand(src, tmp_path / "never", Request(num_layers=4))
    assert "model type 'gpt2'" in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("arch", ["glm", "qwen2_tied"])
def test_streamed_probe_gives_the_in_memory_logits(sources, arch):
    """The probe's layer-streamed float32 forward (embedding rows, one layer at a time, head in blocks) is the model's."""
    from batray.expansion import probe

    assert torch.allclose(probe.streamed_logits(sources[arch], IDS), logits(sources[arch]), atol=1e-5)


@pytest.mark.parametrize("request_", [EXACT_WIDTH, Request(hidden_size=48, intermediate_size=64, num_heads=6,
                                                           num_kv_heads=3, method="fpi", seed=3),
                                      Request(hidden_size=64, num_heads=8, num_kv_heads=4, method="exact",
                                              noise_std=0.05, num_layers=4)])
def test_blockwise_writing_equals_whole_tensor_expansion(sources, tmp_path, monkeypatch, request_):
    """Tensors written a few rows at a time are bit-identical to expanding each source tensor whole (Eqs. 6-7)."""
    from batray.expansion import stream

    monkeypatch.setattr(stream, "BLOCK_BYTES", 256)  # every weight split into many row blocks
    dst = tmp_path / "blocks"
    expand(sources["glm"], dst, request_, probe=False, max_shard_bytes=8 << 10)
    plan = plan_expansion(sources["glm"], request_, max_shard_bytes=8 << 10)
    reader = stream.SourceReader(plan)
    for shard, name in zip(plan.shards, plan.shard_names):
        with safe_open(str(dst / name), "pt") as f:
            for spec in shard:
                whole = stream.expand_tensor(plan, spec, None if spec.zero else reader.whole(spec.source))
                if plan.noise_std > 0 and spec.in_axis == 1 and len(spec.shape) == 2:
                    assert torch.allclose(f.get_tensor(spec.name), whole, atol=0.3), spec.name  # noise drawn per block
                else:
                    assert torch.equal(f.get_tensor(spec.name), whole), spec.name
    if request_.method == "exact":
        assert_same_function(sources["glm"], dst)


def test_power_of_two_division_in_the_source_dtype_is_bit_identical_to_float32():
    """Exact x2 growth divides bf16/fp16 weights in their own dtype: the same bits as float32 then rounding."""
    from batray.expansion import exact_map, expand_weight

    maps = (exact_map(64, 128), exact_map(48, 96))
    for dtype in (torch.bfloat16, torch.float16):
        w = (torch.randn(64, 48, generator=torch.Generator().manual_seed(1)) * 1e-3).to(dtype)
        w[0, :4] = torch.tensor([6e-8, -6e-8, 1e-7, 65504.0]).to(dtype)  # subnormal results, the largest value
        reference = w.float().index_select(0, maps[0].index).index_select(1, maps[1].index) / 2
        assert torch.equal(expand_weight(w, maps, 1), reference.to(dtype)), dtype


def test_run_copies_gather_what_index_select_does():
    """`gather` copies runs of consecutive source units as slices (exact maps tile whole units); every map
    and axis gives index_select's values and dtype, and the caller's tensor is never divided in place."""
    from batray.expansion import exact_map, expand_weight
    from batray.expansion.mapping import contiguous_runs, fpi_map, gather

    assert contiguous_runs(torch.tensor([0, 1, 2, 0, 1, 2])) == [(0, 3), (0, 3)]
    assert contiguous_runs(torch.tensor([3, 1, 2])) == [(3, 1), (1, 2)]
    gen = torch.Generator().manual_seed(0)
    for unit_map in (exact_map(64, 128), exact_map(8, 16).expand_units(16), fpi_map(64, 96, gen)):
        n = unit_map.source_size
        for dtype in (torch.bfloat16, torch.float32):
            for shape, axis in (((n, 24), 0), ((24, n), 1), ((n,), 0)):
                t = torch.randn(shape, generator=gen).to(dtype)
                got, want = gather(t, axis, unit_map.index), t.index_select(axis, unit_map.index)
                assert got.dtype == want.dtype and torch.equal(got, want), (unit_map.new_size, dtype, shape, axis)
    w = torch.randn(4, 64, generator=gen)
    before = w.clone()
    expand_weight(w, (None, exact_map(64, 128)), 1)
    expand_weight(w, (None, None), 1)
    assert torch.equal(w, before)
