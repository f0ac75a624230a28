"""Model presets and loading.

`batgpt-15b` is the released BatGPT-15B shape expressed as transformers' `GlmForCausalLM`: 48 layers,
hidden 5632, 44 query heads of 128, 2 KV heads, SwiGLU 13696 with a fused gate/up projection, QKV
bias, rotary on half of each head, RMSNorm, untied head, vocabulary 65,536. `batgpt-tiny` is the same
family at test size. Any Hugging Face causal LM loads from a path or hub name
(`batray.models.loading`).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from batray.errors import BatrayError

if TYPE_CHECKING:  # torch and transformers are imported where a model or config is made: the stage
    import torch  # registry reads PRESETS before a command starts its Ray cluster
    from transformers import GlmConfig, PretrainedConfig, PreTrainedModel


def __getattr__(name: str):
    if name == "load_causal_lm":  # the historical import path, imported on first use
        from batray.models.loading import load_causal_lm

        return load_causal_lm
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

# Ids of <pad>, <|endoftext|> and <|l2r|> in a tokenizer trained by batray (SPECIAL_TOKENS order).
_SPECIAL_IDS = dict(pad_token_id=0, eos_token_id=1, bos_token_id=2)

PRESETS: dict[str, dict] = {
    "batgpt-15b": dict(
        vocab_size=65536,
        hidden_size=5632,
        intermediate_size=13696,
        num_hidden_layers=48,
        num_attention_heads=44,
        num_key_value_heads=2,
        head_dim=128,
        partial_rotary_factor=0.5,
        attention_bias=True,
        tie_word_embeddings=False,
        rms_norm_eps=1e-5,
        max_position_embeddings=32768,
        rope_theta=10000.0,
        **_SPECIAL_IDS,
    ),
    # Same family at test size: grouped KV heads (4 query heads share 2 KV heads), partial rotary.
    "batgpt-tiny": dict(
        vocab_size=1024,
        hidden_size=64,
        intermediate_size=176,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        partial_rotary_factor=0.5,
        attention_bias=True,
        tie_word_embeddings=False,
        rms_norm_eps=1e-5,
        max_position_embeddings=1024,
        rope_theta=10000.0,
        **_SPECIAL_IDS,
    ),
}


def preset_config(name: str, **overrides) -> GlmConfig:
    """The `GlmConfig` of a preset, with field overrides (e.g. vocab_size of a trained tokenizer)."""
    from transformers import GlmConfig

    if name not in PRESETS:
        raise BatrayError(f"unknown model preset {name!r}; known: {', '.join(sorted(PRESETS))}")
    return GlmConfig(**{**PRESETS[name], **overrides})


def resolve_config(preset_or_path: str) -> PretrainedConfig:
    """A preset name, a local checkpoint folder or a hub name -> its config (no weights)."""
    from transformers import AutoConfig

    if preset_or_path in PRESETS:
        return preset_config(preset_or_path)
    try:
        return AutoConfig.from_pretrained(preset_or_path)
    except (OSError, ValueError) as e:
        raise BatrayError(
            f"cannot load a model config from {preset_or_path!r}: not a preset ({', '.join(PRESETS)}), "
            f"a checkpoint folder or a reachable hub name ({type(e).__name__})"
        ) from None


def build_model(config: PretrainedConfig, seed: int | None = None, dtype: torch.dtype | None = None) -> PreTrainedModel:
    """A freshly initialized causal LM for `config` (deterministic when seed is given), float32 by default."""
    import torch
    from transformers import AutoModelForCausalLM

    if seed is not None:
        torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config, dtype=dtype or torch.float32)


def count_parameters(config: PretrainedConfig) -> int:
    """Exact parameter count, built on the meta device: nothing is allocated."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in model.parameters())


def describe(preset_or_path: str) -> dict:
    """Architecture summary for `batray model info`."""
    cfg = resolve_config(preset_or_path)
    keys = (
        "model_type", "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
        "num_attention_heads", "num_key_value_heads", "head_dim", "partial_rotary_factor",
        "attention_bias", "tie_word_embeddings", "rms_norm_eps", "max_position_embeddings",
    )
    info = {k: getattr(cfg, k) for k in keys if hasattr(cfg, k)}
    info["architectures"] = getattr(cfg, "architectures", None) or [type(cfg).__name__.replace("Config", "ForCausalLM")]
    info["parameters"] = count_parameters(cfg)
    return info


def is_checkpoint_dir(path: str) -> bool:
    return (Path(path) / "config.json").is_file()
