"""Turn an expansion request into a plan: the new config, one mapping per dimension, every output tensor.

Planning reads only `config.json` and the safetensors headers (no weights), validates the request
and fails with a one-line `BatrayError` before anything is written. The plan is small (index
vectors, tensor names) and picklable: it is what the parallel shard writers receive, so every
tensor is expanded with the same random mapping s(.) drawn once from the seed.

Depth (Algorithm 1's StackLayers): new layer j copies source layer j mod L, i.e. the order
0..L-1, 0..L-1. With `stack: zero` the copies' output projections (attention `o_proj`, MLP
`down_proj`, and their biases) are zero, so each copy adds nothing to the residual stream and the
deeper model computes exactly the shallower one's function.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, get_args

import torch

from batray.errors import BatrayError
from batray.expansion.mapping import UnitMap, exact_map, fpi_map, grouped_head_maps

# Decoder layers with separate q/k/v projections, RMSNorm and a gated MLP (fused or not): the GLM layout.
SUPPORTED_MODEL_TYPES = ("glm", "llama", "mistral", "qwen2")
# Why some common types are refused (one line each).
UNSUPPORTED_WHY = {
    "gpt2": "its fused c_attn/c_proj Conv1D weights and LayerNorm have no mapping",
    "gemma": "its embedding is scaled by sqrt(hidden_size), which width growth changes",
    "gemma2": "its embedding is scaled by sqrt(hidden_size), which width growth changes",
}

# Per tensor: the space each axis lives in, and the axis the layer reads (Eq. 7 divides it).
# Spaces: vocab, hidden, q (query heads x head_dim), kv (KV heads x head_dim), ffn, ffn2 (fused gate;up).
GLOBAL_ROLES: dict[str, tuple[tuple[str, ...], int | None]] = {
    "model.embed_tokens.weight": (("vocab", "hidden"), None),
    "model.norm.weight": (("hidden",), None),
    "lm_head.weight": (("vocab", "hidden"), 1),
}
LAYER_ROLES: dict[str, tuple[tuple[str, ...], int | None]] = {
    "input_layernorm.weight": (("hidden",), None),
    "post_attention_layernorm.weight": (("hidden",), None),
    "self_attn.q_proj.weight": (("q", "hidden"), 1),
    "self_attn.q_proj.bias": (("q",), None),
    "self_attn.k_proj.weight": (("kv", "hidden"), 1),
    "self_attn.k_proj.bias": (("kv",), None),
    "self_attn.v_proj.weight": (("kv", "hidden"), 1),
    "self_attn.v_proj.bias": (("kv",), None),
    "self_attn.o_proj.weight": (("hidden", "q"), 1),
    "self_attn.o_proj.bias": (("hidden",), None),
    "mlp.gate_up_proj.weight": (("ffn2", "hidden"), 1),
    "mlp.gate_proj.weight": (("ffn", "hidden"), 1),
    "mlp.gate_proj.bias": (("ffn",), None),
    "mlp.up_proj.weight": (("ffn", "hidden"), 1),
    "mlp.up_proj.bias": (("ffn",), None),
    "mlp.down_proj.weight": (("hidden", "ffn"), 1),
    "mlp.down_proj.bias": (("hidden",), None),
}
# Written into the residual stream: zero in the stacked copies under `stack: zero`.
RESIDUAL_WRITERS = ("self_attn.o_proj.", "mlp.down_proj.")
LAYER_NAME = re.compile(r"^model\.layers\.(\d+)\.(.+)$")

DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}


WidthMethod = Literal["fpi", "exact"]  # Eqs. 5-7 (random mapping, function-preserving), or integer-factor copies
StackInit = Literal["copy", "zero"]  # Alg. 1's stacked copies as they are, or with zeroed residual writers


@dataclass(frozen=True)
class Request:
    """Target sizes (None: unchanged) and how to get there. Mirrors `ExpandConfig`."""

    hidden_size: int | None = None
    intermediate_size: int | None = None
    num_heads: int | None = None
    num_kv_heads: int | None = None
    num_layers: int | None = None
    method: WidthMethod = "exact"
    stack: StackInit = "zero"
    noise_std: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        for name, kind in (("method", WidthMethod), ("stack", StackInit)):
            if getattr(self, name) not in get_args(kind):
                raise BatrayError(f"{name} must be one of {', '.join(get_args(kind))}, not {getattr(self, name)!r}")

    @classmethod
    def from_config(cls, cfg) -> "Request":
        return cls(**{k: getattr(cfg, k) for k in cls.__dataclass_fields__})


@dataclass
class TensorSpec:
    """One output tensor: where it comes from and how it is mapped."""

    name: str
    source: str  # source tensor name
    spaces: tuple[str, ...]
    in_axis: int | None
    shape: tuple[int, ...]
    dtype: str  # safetensors dtype string, same as the source's
    zero: bool = False  # a stacked copy's residual writer under `stack: zero`

    @property
    def nbytes(self) -> int:
        n = DTYPE_BYTES[self.dtype]
        for d in self.shape:
            n *= d
        return n


@dataclass
class ExpansionPlan:
    src_dir: str
    new_config: dict
    maps: dict[str, UnitMap]  # space -> unit mapping (only the spaces that change)
    source_files: dict[str, str]  # source tensor -> file name in src_dir
    shards: list[list[TensorSpec]]
    shard_names: list[str]
    noise_std: float
    seed: int
    summary: dict = field(default_factory=dict)

    @property
    def total_bytes(self) -> int:
        return sum(t.nbytes for shard in self.shards for t in shard)


def read_source_index(src_dir: Path) -> dict[str, str]:
    """Tensor name -> safetensors file, from the index file or the single `model.safetensors`."""
    index = src_dir / "model.safetensors.index.json"
    if index.is_file():
        return dict(json.loads(index.read_text())["weight_map"])
    single = src_dir / "model.safetensors"
    if single.is_file():
        from safetensors import safe_open

        with safe_open(str(single), "pt") as f:
            return {k: "model.safetensors" for k in f.keys()}
    raise BatrayError(f"{src_dir} has no safetensors weights (model.safetensors or its index); "
                      "re-save the checkpoint with save_pretrained(safe_serialization=True)")


def read_headers(src_dir: Path, files: dict[str, str]) -> dict[str, tuple[str, tuple[int, ...]]]:
    """Tensor name -> (dtype, shape), read from the safetensors headers without loading data."""
    from safetensors import safe_open

    out = {}
    for fname in sorted(set(files.values())):
        with safe_open(str(src_dir / fname), "pt") as f:
            for k in f.keys():
                sl = f.get_slice(k)
                out[k] = (sl.get_dtype(), tuple(sl.get_shape()))
    return out


def _grow(name: str, old: int, new: int | None) -> int:
    new = old if new is None else new
    if new < old:
        raise BatrayError(f"{name}: cannot shrink ({old} -> {new}); expansion only grows a model")
    return new


def target_sizes(cfg: dict, request: Request, where: str = "config.json") -> dict:
    """Validate `request` against a model config (a `config.json` dict); {"source": sizes, "target": sizes}.

    Every check an expansion needs that does not look at weights, so a caller can validate a whole
    plan of expansions (e.g. `batray grow`) before any training starts.
    """
    model_type = cfg.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        why = UNSUPPORTED_WHY.get(model_type, "expansion maps GLM-like decoder layers only")
        raise BatrayError(f"cannot expand model type {model_type!r} ({where}): {why}; expansion supports "
                          f"{', '.join(SUPPORTED_MODEL_TYPES)}")

    hidden, ffn = cfg["hidden_size"], cfg["intermediate_size"]
    heads = cfg["num_attention_heads"]
    kv_heads = cfg.get("num_key_value_heads") or heads
    layers = cfg["num_hidden_layers"]
    head_dim = cfg.get("head_dim") or hidden // heads

    new_hidden = _grow("hidden_size", hidden, request.hidden_size)
    new_ffn = _grow("intermediate_size", ffn, request.intermediate_size)
    new_heads = _grow("num_heads", heads, request.num_heads)
    new_kv = _grow("num_kv_heads", kv_heads, request.num_kv_heads)
    new_layers = _grow("num_layers", layers, request.num_layers)
    if new_heads % new_kv:
        raise BatrayError(f"num_heads ({new_heads}) must be divisible by num_kv_heads ({new_kv})")
    if new_heads // new_kv < heads // kv_heads:
        raise BatrayError(f"queries per KV head would shrink ({heads // kv_heads} -> {new_heads // new_kv}); "
                          f"grow num_kv_heads by at most the factor num_heads grows")
    if new_layers % layers:
        raise BatrayError(f"num_layers ({new_layers}) must be a multiple of the source depth {layers}: "
                          "depth grows by stacking the layers (Algorithm 1)")
    if request.method == "exact":
        for name, old, new in (("hidden_size", hidden, new_hidden), ("intermediate_size", ffn, new_ffn),
                               ("num_kv_heads", kv_heads, new_kv),
                               ("queries per KV head", heads // kv_heads, new_heads // new_kv)):
            if new % old:
                raise BatrayError(f"method exact needs integer-factor growth: {name} {old} -> {new} is not a "
                                  f"multiple; use method fpi for arbitrary sizes")

    names = ("hidden_size", "intermediate_size", "num_heads", "num_kv_heads", "num_layers")
    return {"source": dict(zip(names, (hidden, ffn, heads, kv_heads, layers)), head_dim=head_dim),
            "target": dict(zip(names, (new_hidden, new_ffn, new_heads, new_kv, new_layers)), head_dim=head_dim)}


def plan_expansion(src_dir: str | Path, request: Request, max_shard_bytes: int = 2 << 30) -> ExpansionPlan:
    """Validate `request` against the checkpoint at `src_dir` and lay out every output tensor."""
    src = Path(src_dir)
    cfg_path = src / "config.json"
    if not cfg_path.is_file():
        raise BatrayError(f"expansion source {src} is not a checkpoint folder (no config.json)")
    cfg = json.loads(cfg_path.read_text())
    model_type = cfg.get("model_type")
    sizes = target_sizes(cfg, request, str(cfg_path))
    hidden, ffn, heads, kv_heads, layers, head_dim = (sizes["source"][k] for k in (
        "hidden_size", "intermediate_size", "num_heads", "num_kv_heads", "num_layers", "head_dim"))
    new_hidden, new_ffn, new_heads, new_kv, new_layers = (sizes["target"][k] for k in (
        "hidden_size", "intermediate_size", "num_heads", "num_kv_heads", "num_layers"))
    tied = bool(cfg.get("tie_word_embeddings", False))

    # Eq. 5's s(.), drawn once from the seed in a fixed order (hidden, ffn, heads).
    gen = torch.Generator().manual_seed(request.seed)
    if request.method == "exact":
        hidden_map, ffn_map = exact_map(hidden, new_hidden), exact_map(ffn, new_ffn)
    else:
        hidden_map, ffn_map = fpi_map(hidden, new_hidden, gen), fpi_map(ffn, new_ffn, gen)
    q_heads, kv_heads_map = grouped_head_maps(heads, kv_heads, new_heads, new_kv, method=request.method, generator=gen)
    maps = {
        "hidden": hidden_map,
        "ffn": ffn_map,
        "ffn2": ffn_map.stacked(2),
        "q": q_heads.expand_units(head_dim),
        "kv": kv_heads_map.expand_units(head_dim),
    }
    maps = {k: v for k, v in maps.items() if not v.is_identity()}
    src_sizes = {"vocab": cfg["vocab_size"], "hidden": hidden, "ffn": ffn, "ffn2": 2 * ffn,
                 "q": heads * head_dim, "kv": kv_heads * head_dim}

    files = read_source_index(src)
    headers = read_headers(src, files)
    outputs: list[TensorSpec] = []
    layer_tensors: dict[int, list[tuple[str, str]]] = {}
    for name in sorted(headers):
        m = LAYER_NAME.match(name)
        if m:
            suffix = m.group(2)
            if suffix not in LAYER_ROLES:
                raise BatrayError(f"unknown tensor {name!r} for {model_type}: expansion does not know how to map it")
            layer_tensors.setdefault(int(m.group(1)), []).append((name, suffix))
            spaces, in_axis = LAYER_ROLES[suffix]
        elif name in GLOBAL_ROLES:
            spaces, in_axis = GLOBAL_ROLES[name]
        else:
            raise BatrayError(f"unknown tensor {name!r} for {model_type}: expansion does not know how to map it")
        dtype, shape = headers[name]
        want = tuple(src_sizes[s] for s in spaces)
        if shape != want:
            raise BatrayError(f"tensor {name!r} has shape {list(shape)} but config.json implies {list(want)}")
        if not m:
            if name == "lm_head.weight" and tied:
                in_axis = None  # tied: the head IS the embedding; the division moves to the final norm
            if name == "model.norm.weight" and tied:
                in_axis = 0  # fold Eq. 7's division of the (tied) head's in-dimension into the norm weight
            outputs.append(_spec(name, name, spaces, in_axis, dtype, maps, src_sizes))
    if sorted(layer_tensors) != list(range(layers)):
        raise BatrayError(f"checkpoint layers {sorted(layer_tensors)} do not match num_hidden_layers={layers}")
    for j in range(new_layers):
        copy = j >= layers
        for name, suffix in layer_tensors[j % layers]:
            spaces, in_axis = LAYER_ROLES[suffix]
            dtype = headers[name][0]
            spec = _spec(f"model.layers.{j}.{suffix}", name, spaces, in_axis, dtype, maps, src_sizes)
            spec.zero = copy and request.stack == "zero" and suffix.startswith(RESIDUAL_WRITERS)
            outputs.append(spec)

    new_config = dict(cfg)
    new_config.update(hidden_size=new_hidden, intermediate_size=new_ffn, num_attention_heads=new_heads,
                      num_key_value_heads=new_kv, num_hidden_layers=new_layers, head_dim=head_dim)
    if isinstance(cfg.get("layer_types"), list):  # Qwen2: per-layer attention kinds follow the stacking
        new_config["layer_types"] = [cfg["layer_types"][j % layers] for j in range(new_layers)]

    shards = _pack(outputs, max_shard_bytes)
    n = len(shards)
    names = ["model.safetensors"] if n == 1 else [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
    summary = {
        "model_type": model_type,
        "method": request.method,
        "stack": request.stack,
        "seed": request.seed,
        "noise_std": request.noise_std,
        "tied_head": tied,
        **sizes,
    }
    return ExpansionPlan(str(src), new_config, maps, files, shards, names, request.noise_std, request.seed, summary)


def _spec(name, source, spaces, in_axis, dtype, maps, src_sizes) -> TensorSpec:
    shape = tuple(maps[s].new_size if s in maps else src_sizes[s] for s in spaces)
    if in_axis is not None and spaces[in_axis] not in maps:
        in_axis = None  # that dimension does not grow: nothing to divide
    return TensorSpec(name, source, spaces, in_axis, shape, dtype)


def _pack(tensors: list[TensorSpec], max_bytes: int) -> list[list[TensorSpec]]:
    """Consecutive tensors into shards of at most `max_bytes` (a bigger tensor gets a shard of its own)."""
    shards: list[list[TensorSpec]] = [[]]
    size = 0
    for t in tensors:
        if shards[-1] and size + t.nbytes > max_bytes:
            shards.append([])
            size = 0
        shards[-1].append(t)
        size += t.nbytes
    return shards
