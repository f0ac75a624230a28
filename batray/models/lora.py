"""LoRA through `peft`: adapters on a stage's model, merged Hugging Face folders, merged weights for rollouts.

`<stage>.lora` (`batray.config.base.LoraConfig`, for sft, reward and ppo's policy and critic) turns a
stage's model into a `peft.PeftModel`: the base weights are frozen (DeepSpeed's optimizer only sees
the adapters and `modules_to_save`), so they stay bit-identical. The default `target_modules` are the
attention and MLP projections of the model type (`DEFAULT_TARGETS`; other types: peft's `all-linear`);
reward models and critics also train their value/score head in full (`modules_to_save`).

What a LoRA stage writes:
- training checkpoints hold the adapter (and its optimizer state) only: the frozen base is what the
  stage started from (`frozen_excluded` for DeepSpeed's `exclude_frozen_parameters`);
- `final/adapter/`: the adapter (`adapter_config.json`, `adapter_model.safetensors`), loadable with
  `peft.PeftModel.from_pretrained(base, final/adapter)`;
- `final/` itself: with `lora.merge: true` (default) the merged model, a plain Hugging Face folder
  that loads without peft (`merged_copy`); with `merge: false` the adapter files alone.

Under PPO the reference pi_inst is the policy's base with its adapters disabled (`peft`'s
`disable_adapter`), so no second copy of the weights exists, and the rollout engines receive the
merged weights `W + B A * alpha / r` under the base model's names (`merged_weights`).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from batray.errors import BatrayError

log = logging.getLogger(__name__)

ADAPTER_DIR = "adapter"  # final/adapter: the adapter beside the merged folder
ADAPTER_CONFIG = "adapter_config.json"

# The attention and MLP projections of each model type (transformers' module names).
_LLAMA_LIKE = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
DEFAULT_TARGETS: dict[str, list[str]] = {
    "glm": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_up_proj", "down_proj"],  # BatGPT's family
    "glm4": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_up_proj", "down_proj"],
    "llama": _LLAMA_LIKE, "mistral": _LLAMA_LIKE, "qwen2": _LLAMA_LIKE, "qwen3": _LLAMA_LIKE, "gemma": _LLAMA_LIKE,
    "gemma2": _LLAMA_LIKE, "olmo": _LLAMA_LIKE, "olmo2": _LLAMA_LIKE, "granite": _LLAMA_LIKE,
    "phi3": ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"],
    "gpt2": ["c_attn", "c_proj", "c_fc"],  # Conv1D layers (peft sets fan_in_fan_out)
    "gpt_neox": ["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"],
    "falcon": ["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"],
}
SCORE_HEADS = ["score"]  # transformers' `<Family>ForSequenceClassification` head (reward model, critic)


def _peft():
    try:
        import peft
    except ImportError:  # pragma: no cover - peft is a dependency
        raise BatrayError("lora needs peft: pip install peft") from None
    return peft


def target_modules(model_type: str, settings) -> list[str] | str:
    """`settings.target_modules`, else the model type's projections, else peft's `all-linear`."""
    if settings.target_modules:
        return list(settings.target_modules)
    return DEFAULT_TARGETS.get(model_type, "all-linear")


def apply_lora(model: torch.nn.Module, settings, *, kind: str = "causal", base: str | None = None):
    """`model` wrapped as a `peft.PeftModel` with fresh adapters (B = 0: the outputs start unchanged).

    kind: "causal" (a causal LM) or "score" (a sequence classifier: its score head is trained in full,
    `modules_to_save`); base: recorded as the adapter's `base_model_name_or_path`."""
    peft = _peft()
    save = settings.modules_to_save if settings.modules_to_save is not None else (SCORE_HEADS if kind == "score" else None)
    config = peft.LoraConfig(
        r=settings.rank, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
        target_modules=target_modules(model.config.model_type, settings), modules_to_save=save or None,
        task_type="SEQ_CLS" if kind == "score" else "CAUSAL_LM", bias="none",
    )
    try:
        wrapped = peft.get_peft_model(model, config)
    except ValueError as e:
        raise BatrayError(f"lora on model type {model.config.model_type!r}: {str(e).splitlines()[0]} "
                          "(set lora.target_modules)") from None
    if base is not None:
        wrapped.peft_config["default"].base_model_name_or_path = str(base)
    trainable, total = trainable_share(wrapped)
    log.info("lora: rank %d on %s; %d of %d parameters trainable (%.2f%%)", settings.rank,
             config.target_modules, trainable, total, 100.0 * trainable / max(total, 1))
    return wrapped


def is_lora(model: torch.nn.Module) -> bool:
    return type(model).__module__.startswith("peft.")


def trainable_share(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, all) parameter counts (ZeRO-3's partitioned parameters by their full size)."""
    def n(p):
        return getattr(p, "ds_numel", p.numel())

    params = list(model.parameters())
    return sum(n(p) for p in params if p.requires_grad), sum(n(p) for p in params)


def frozen_excluded(model: torch.nn.Module) -> bool:
    """Whether checkpoints leave frozen parameters out (a LoRA model: they are the unchanged base)."""
    return any(not p.requires_grad for p in model.parameters())


@contextlib.contextmanager
def adapters_disabled(model: torch.nn.Module) -> Iterator[None]:
    """The base model's outputs inside the block (PPO's reference pi_inst); no-op without LoRA."""
    if is_lora(model):
        with model.disable_adapter():
            yield
    else:
        yield


def _auto_class(config):
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    archs = getattr(config, "architectures", None) or []
    return AutoModelForSequenceClassification if any("SequenceClassification" in a for a in archs) \
        else AutoModelForCausalLM


def full_copy(peft_model, state: dict | None = None):
    """A separate PeftModel with the same adapters holding `state` (default: `peft_model`'s own; under
    ZeRO-3 the consolidated state, or gather first), so the training model stays as it is."""
    peft = _peft()
    base = peft_model.get_base_model()
    dtype = next(base.parameters()).dtype
    with torch.random.fork_rng(devices=[]):  # the copy's throwaway init must not move the caller's RNG
        copy = peft.get_peft_model(type(base)(base.config).to(dtype), peft_model.peft_config["default"])
    state = peft_model.state_dict() if state is None else state
    missing, unexpected = copy.load_state_dict({k: v.detach().to("cpu").clone() for k, v in state.items()},
                                               strict=False)
    if unexpected or [k for k in missing if "lora_" in k]:
        raise BatrayError(f"lora: the state does not match the adapter layout (e.g. {(unexpected or missing)[0]})")
    return copy.eval()


def merged_copy(peft_model, state: dict | None = None) -> torch.nn.Module:
    """A plain transformers model holding base + adapter merged (`peft`'s `merge_and_unload`) of a copy."""
    merged = full_copy(peft_model, state).merge_and_unload()
    merged.config.architectures = [type(merged).__name__]
    return merged.eval()


def lora_meta(settings) -> dict:
    """What batray.json records of a LoRA stage."""
    return {"lora": {"rank": settings.rank, "alpha": settings.alpha, "merged": settings.merge, "adapter": ADAPTER_DIR}}


def save_lora_final(peft_model, out_dir: str | Path, settings, save: Callable[[torch.nn.Module, dict], Path],
                    merged: torch.nn.Module | None = None) -> Path:
    """The final folder of a LoRA stage: `save(model, extra_marker)` writes `out_dir` as the stage always
    does, with the merged model (`settings.merge`; `merged` when the caller already built it) or the
    PeftModel (whose `save_pretrained` writes the adapter files alone); then the adapter goes to
    `out_dir/adapter/`."""
    import os
    import shutil

    out = Path(out_dir)
    staged = out.with_name(out.name + ".adapter.tmp")
    if staged.exists():
        shutil.rmtree(staged)
    # A stage that added tokens (a pad token) resized the embeddings: their rows are in neither the adapter
    # nor the original base, so they go into the adapter file (load it onto the base resized to the tokenizer).
    peft_model.save_pretrained(staged, safe_serialization=True, save_embedding_layers=embeddings_resized(peft_model))
    if settings.merge:
        model = merged if merged is not None else merged_copy(peft_model)
    else:
        model = peft_model
    written = Path(save(model, lora_meta(settings)))
    os.replace(staged, written / ADAPTER_DIR)
    return written


def embeddings_resized(peft_model) -> bool:
    """Whether the model's vocabulary differs from its base checkpoint's (the stage added tokens)."""
    from batray.models.loading import read_config

    base = peft_model.peft_config["default"].base_model_name_or_path
    if not base or not Path(base, "config.json").is_file():
        return False
    vocab = getattr(read_config(base), "vocab_size", None)
    rows = peft_model.get_base_model().get_input_embeddings().weight
    return isinstance(vocab, int) and getattr(rows, "ds_numel", rows.numel()) // rows.shape[-1] != vocab


def is_adapter_folder(path: str | Path) -> bool:
    """A peft adapter without weights of its own (`adapter_config.json`, no `config.json`)."""
    p = Path(path)
    return (p / ADAPTER_CONFIG).is_file() and not (p / "config.json").is_file()


def load_merged(adapter_dir: str | Path, base: str | None = None) -> torch.nn.Module:
    """Base (`base`, else the adapter's `base_model_name_or_path`) + the adapter in `adapter_dir`, merged."""
    import json

    peft = _peft()
    from batray.models.loading import from_pretrained, read_config

    base = base or json.loads(Path(adapter_dir, ADAPTER_CONFIG).read_text()).get("base_model_name_or_path")
    if not base:
        raise BatrayError(f"{adapter_dir}: the adapter names no base model; merge it with its base first")
    model = from_pretrained(_auto_class(read_config(base)), base)
    return peft.PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()


# -- merged weights for the rollout engines ---------------------------------------------------------


@dataclass
class MergedTensor:
    """One tensor of the merged model: its base-model name, a parameter with its full shape and dtype
    (for the bucket layout), the parameters to gather under ZeRO-3, and how to compute it."""

    name: str
    like: torch.Tensor
    params: list
    compute: Callable[[], torch.Tensor]


def merged_weights(peft_model) -> list[MergedTensor]:
    """The merged model's parameters in `named_parameters` order of the base model, under its names:
    a LoRA layer gives `W + delta` (`LoraLayer.get_delta_weight`), a `modules_to_save` module its
    trained copy, every other parameter itself. A tied parameter appears once, as in named_parameters."""
    from peft.tuners.lora import LoraLayer
    from peft.utils import ModulesToSaveWrapper

    base = peft_model.get_base_model()
    adapter = peft_model.active_adapter
    out: list[MergedTensor] = []
    seen: set[int] = set()
    skip: list[str] = []
    for mod_name, module in base.named_modules():
        if any(mod_name.startswith(s + ".") for s in skip):
            continue
        prefix = f"{mod_name}." if mod_name else ""
        if isinstance(module, LoraLayer):
            skip.append(mod_name)
            layer = module.get_base_layer()
            lora_params = list(module.parameters())
            w = layer.weight
            out.append(MergedTensor(f"{prefix}weight", w, lora_params,
                                    lambda m=module, w=w: w.detach() + m.get_delta_weight(adapter).to(w.dtype)))
            if getattr(layer, "bias", None) is not None:
                b = layer.bias
                out.append(MergedTensor(f"{prefix}bias", b, [b], lambda b=b: b.detach()))
            seen.update(id(p) for p in lora_params)
        elif isinstance(module, ModulesToSaveWrapper):
            skip.append(mod_name)
            trained = module.modules_to_save[adapter]
            for n, p in trained.named_parameters():
                out.append(MergedTensor(f"{prefix}{n}", p, [p], lambda p=p: p.detach()))
            seen.update(id(p) for p in module.parameters())
        else:
            for n, p in module.named_parameters(recurse=False):
                if id(p) in seen:
                    continue
                seen.add(id(p))
                out.append(MergedTensor(f"{prefix}{n}", p, [p], lambda p=p: p.detach()))
    return out
