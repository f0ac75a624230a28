"""The paper's width expansion as pure functions (§3.4, Eqs. 5-7).

A width expansion is, per dimension, a mapping s(.) from the new units to the source units
(Eq. 5). Every weight is then a gather of the source weight along its dimensions, and the
dimension that a layer *reads* (its input, "in-dimension") is divided by how many new units share
the source unit (Eqs. 6-7), so that the sum over the copies equals the source sum:

    W'[i, j] = W[s_out(i), s_in(j)] / C(s_in(j)),    C(u) = |{j : s_in(j) = u}|

Two mappings:
- `fpi_map` (the paper's): the first units map to themselves, the extra ones to uniformly sampled
  source units. Counts differ between units, so RMSNorm's statistics change slightly and the
  function is close to, not exactly, the source's.
- `exact_map`: integer-factor growth by tiling (unit i -> i mod n), every unit copied the same
  number of times. The mean square of a hidden vector whose every entry is repeated k times is
  unchanged, so RMSNorm (with its weight copied) and therefore the whole function are preserved up
  to float rounding.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class UnitMap:
    """s(.) of Eq. 5 for one dimension: new unit i takes source unit `index[i]`."""

    index: torch.Tensor  # int64 [new_size]
    source_size: int

    @property
    def new_size(self) -> int:
        return int(self.index.numel())

    def counts(self) -> torch.Tensor:
        """C(u) of Eq. 7: how many new units copy each source unit u ([source_size])."""
        return torch.bincount(self.index, minlength=self.source_size)

    def divisor(self) -> torch.Tensor:
        """C(s(j)) for every new unit j ([new_size], float): what Eq. 7 divides in-dimension weights by."""
        return self.counts()[self.index].to(torch.float32)

    def is_identity(self) -> bool:
        return self.new_size == self.source_size and bool(torch.equal(self.index, torch.arange(self.source_size)))

    def expand_units(self, unit_size: int) -> "UnitMap":
        """A mapping of whole blocks (attention heads of `unit_size` dims) -> the mapping of their dims."""
        dims = (self.index[:, None] * unit_size + torch.arange(unit_size)[None, :]).reshape(-1)
        return UnitMap(dims, self.source_size * unit_size)

    def stacked(self, times: int) -> "UnitMap":
        """The mapping of `times` blocks laid end to end (e.g. a fused [gate; up] projection)."""
        parts = [self.index + k * self.source_size for k in range(times)]
        return UnitMap(torch.cat(parts), self.source_size * times)


def identity_map(size: int) -> UnitMap:
    return UnitMap(torch.arange(size), size)


def fpi_map(old: int, new: int, generator: torch.Generator) -> UnitMap:
    """Eq. 5: s(i) = i for i < old, and s(i) ~ Uniform{0..old-1} for the extra units."""
    if new < old:
        raise ValueError(f"cannot shrink a dimension ({old} -> {new})")
    extra = torch.randint(0, old, (new - old,), generator=generator)
    return UnitMap(torch.cat([torch.arange(old), extra]), old)


def exact_map(old: int, new: int) -> UnitMap:
    """Integer-factor growth by tiling: s(i) = i mod old, so every unit has exactly new/old copies."""
    if new % old:
        raise ValueError(f"exact growth needs an integer factor ({old} -> {new})")
    return UnitMap(torch.arange(new) % old, old)


def grouped_head_maps(num_heads: int, num_kv_heads: int, new_heads: int, new_kv_heads: int, *,
                      method: str, generator: torch.Generator | None = None) -> tuple[UnitMap, UnitMap]:
    """Head mappings (query, KV) that keep every query head attached to the copy of its own KV head.

    With grouped-query attention, query head h reads KV head h // G (G = queries per KV head). The
    new heads are laid out as K' groups of G' queries; group m' copies KV head s_kv(m') and its
    query t' copies query s_q(t') of that same source group, so the source pairing survives. With
    the exact method both are tilings, which for equal factors is simply "tile queries and KV heads
    together" (q' = [q_0..q_{N-1}] * r, kv' = [kv_0..kv_{K-1}] * r).
    """
    group, new_group = num_heads // num_kv_heads, new_heads // new_kv_heads
    if method == "exact":
        kv_map, within = exact_map(num_kv_heads, new_kv_heads), exact_map(group, new_group)
    else:
        kv_map, within = fpi_map(num_kv_heads, new_kv_heads, generator), fpi_map(group, new_group, generator)
    q_index = (kv_map.index[:, None] * group + within.index[None, :]).reshape(-1)
    return UnitMap(q_index, num_heads), kv_map


def contiguous_runs(index: torch.Tensor) -> list[tuple[int, int]]:
    """`index` as (first source unit, length) runs of consecutive units: [0, 1, 2, 0, 1, 2] -> [(0, 3), (0, 3)]."""
    if index.numel() == 0:
        return []
    starts = [0, *(torch.nonzero(index[1:] != index[:-1] + 1).flatten() + 1).tolist()]
    ends = [*starts[1:], index.numel()]
    return [(int(index[a]), b - a) for a, b in zip(starts, ends)]


def gather(tensor: torch.Tensor, axis: int, index: torch.Tensor) -> torch.Tensor:
    """`tensor.index_select(axis, index)`, the same values; as copies of whole runs where the index has few.

    `exact` growth tiles whole units (hidden dims, heads, FFN units): the index is a few runs of
    consecutive source units, and copying each run as one slice goes at memory speed, where
    index_select gathers element by element (on a bf16 column gather, 3 s of a 6 s shard write).
    """
    runs = contiguous_runs(index)
    if len(runs) > max(1, index.numel() // 16):  # short runs (fpi's sampled units): nothing to gain
        return tensor.index_select(axis, index)
    return torch.cat([tensor.narrow(axis, start, length) for start, length in runs], dim=axis)


def expand_weight(weight: torch.Tensor, maps: tuple[UnitMap | None, ...], in_axis: int | None, *,
                  noise_std: float = 0.0, generator: torch.Generator | None = None) -> torch.Tensor:
    """Eqs. 6-7: gather `weight` along every mapped axis; divide the in-axis by the copy counts.

    `noise_std > 0` (2-D weights read along axis 1) adds `cancelling_noise`. Computed in float32,
    returned in the source dtype; except when every divisor is a power of two and there is no noise
    (`exact` growth by a factor of 2^k): dividing by 2^k only changes the exponent, so the source
    dtype gives the very bits float32-then-round would, without the float32 copies.
    """
    in_map = maps[in_axis] if in_axis is not None else None
    power_of_two = in_map is None or bool((torch.frexp(in_map.divisor()).mantissa == 0.5).all())
    out = weight if noise_std == 0 and power_of_two else weight.to(torch.float32)
    for axis, unit_map in enumerate(maps):
        if unit_map is not None and not unit_map.is_identity():
            out = gather(out, axis, unit_map.index)
    if in_axis is not None and maps[in_axis] is not None:
        shape = [1] * out.dim()
        shape[in_axis] = -1
        divisor = maps[in_axis].divisor().to(out.dtype).reshape(shape)
        # in place on our own copy (the gather's or the float32 one); never on the caller's tensor
        out = out.div_(divisor) if out.data_ptr() != weight.data_ptr() else out / divisor
        if noise_std > 0 and out.dim() == 2 and in_axis == 1:
            out = out + cancelling_noise(tuple(out.shape), maps[in_axis], noise_std, generator)
    return out.to(weight.dtype)


def cancelling_noise(shape: tuple[int, int], in_map: UnitMap, std: float, generator: torch.Generator) -> torch.Tensor:
    """Noise for a [out, in] weight that sums to zero over the copies of each source input unit.

    Copies of an input unit carry identical values, so adding this noise changes no output, yet
    the copies' weights differ and training can drive them apart (symmetry breaking).
    """
    noise = torch.randn(shape, generator=generator) * std
    group_sum = torch.zeros(shape[0], in_map.source_size).index_add_(1, in_map.index, noise)
    return noise - group_sum[:, in_map.index] / in_map.divisor()[None, :]
