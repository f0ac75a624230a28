"""Language-modelling objectives: bidirectional pretraining (Eq. 1) and instruction tuning (Eq. 2).

Eq. 1 (§3.1) maximizes, for every sequence x,
    sum_t log p(x_t | x_<t)  +  sum_t log p(x_t | x_>t)
The first sum is read left to right after `<|l2r|>`; the second is an ordinary causal LM over the
reversed tokens after `<|r2l|>` (docs/DESIGN.md §4), so one causal model computes both. A packed block
carries a per-token `directions` tensor (0: l2r, 1: r2l, see `batray.data.direction.Block`), which is
how the two sums are kept apart in the metrics while the optimized loss is their sum.

Eq. 2 (§3.2) is the same causal log-likelihood restricted to the response tokens; the masking is
done when the sample is built (`batray.data.sft.build_sft_sample` puts IGNORE_INDEX elsewhere).

Every function here returns the loss that is optimized plus additive `stats` (sums and counts as
0-d tensors) so that a trainer can add them across micro batches and workers before turning them
into means and perplexities with `lm_metrics`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from batray.data.direction import IGNORE_INDEX

DIRECTIONS = ("l2r", "r2l")


def segment_causal_mask(position_ids: torch.Tensor, attn_implementation: str | None, dtype: torch.dtype) -> torch.Tensor:
    """4D attention mask (B, 1, T, T) for packed blocks: causal within a segment, nothing across.

    A segment starts wherever position_ids is 0 (`pack_samples` restarts positions per segment; each
    pad is a one-token segment). transformers uses a 4D mask as given: boolean (True = attend) for
    SDPA, additive (0 / dtype min) for eager attention.
    """
    segment = (position_ids == 0).cumsum(-1)  # (B, T)
    same = segment[:, :, None] == segment[:, None, :]
    t = position_ids.size(-1)
    causal = torch.ones(t, t, dtype=torch.bool, device=position_ids.device).tril()
    allowed = (same & causal)[:, None, :, :]
    if attn_implementation == "sdpa":
        return allowed
    return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(~allowed, torch.finfo(dtype).min)


def packed_mask_for(model, position_ids: torch.Tensor) -> torch.Tensor:
    """`segment_causal_mask` in the form `model` (an HF model, or an engine that wraps one in `.module`)
    reads: the one mask every packed Eq. 1 forward uses (pretraining, and PPO's lambda_ptx term)."""
    inner = getattr(model, "module", model)
    return segment_causal_mask(position_ids, getattr(inner.config, "_attn_implementation", None),
                               next(inner.parameters()).dtype)


def packed_lm_logits(model, input_ids: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
    """Logits of a packed block (B, T, V): every segment attends only to itself, causally."""
    return model(input_ids=input_ids, position_ids=position_ids, attention_mask=packed_mask_for(model, position_ids),
                 use_cache=False).logits


def token_nll(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token negative log-likelihood of next-token prediction (HF convention: labels unshifted).

    logits: (B, T, V); labels: (B, T) with IGNORE_INDEX where no loss is taken.
    Returns (nll, mask), both (B, T-1): nll[b, t] = -log p(labels[b, t+1] | tokens <= t), 0 where masked.
    """
    shift_logits = logits[:, :-1, :].float()
    shift_labels = labels[:, 1:]
    mask = shift_labels != IGNORE_INDEX
    nll = F.cross_entropy(
        shift_logits.reshape(-1, shift_logits.size(-1)),
        shift_labels.reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction="none",
    ).view_as(shift_labels)
    return nll * mask, mask


def bidirectional_lm_loss(
    logits: torch.Tensor, labels: torch.Tensor, directions: torch.Tensor
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Eq. 1 on a packed batch: the negated sum of both directions' log-likelihoods per target token.

    loss = (NLL_l2r + NLL_r2l) / (n_l2r + n_r2l), i.e. -(Eq. 1's two sums) over the batch divided by
    its number of target tokens (the constant keeps the step size independent of batch size).
    `directions` (B, T) says which sum each target token belongs to (0: l2r, 1: r2l); a block of a
    left-to-right-only run simply has no r2l tokens. stats: nll_<dir> and tokens_<dir> sums.
    """
    nll, mask = token_nll(logits, labels)
    target_dirs = directions[:, 1:]
    stats: dict[str, torch.Tensor] = {}
    for code, name in enumerate(DIRECTIONS):
        in_dir = mask & (target_dirs == code)
        stats[f"nll_{name}"] = nll[in_dir].sum().detach()
        stats[f"tokens_{name}"] = in_dir.sum().detach().to(nll.dtype)
    n_tokens = mask.sum().clamp(min=1)
    return nll.sum() / n_tokens, stats


def eq1_log_likelihood(model, token_ids: list[int], l2r_id: int, r2l_id: int, eos_id: int) -> float:
    """Eq. 1 for one sequence computed directly, with two separate forward passes (no packing).

    Returns sum_t log p(x_t | x_<t) + sum_t log p(x_t | x_>t) over the sample's targets (tokens and
    eos, not the marker): the reference that tests compare the packed training loss against.
    """
    from batray.data.direction import l2r_sample, r2l_sample

    total = 0.0
    for sample in (l2r_sample(token_ids, l2r_id, eos_id), r2l_sample(token_ids, r2l_id, eos_id)):
        ids = torch.tensor([sample])
        with torch.no_grad():
            logits = model(input_ids=ids).logits
        nll, _ = token_nll(logits, ids)
        total -= float(nll.sum())
    return total


def sft_loss(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Eq. 2: -log p(response | prompt) per response token; non-response labels are IGNORE_INDEX.

    stats: nll_response and tokens_response sums.
    """
    nll, mask = token_nll(logits, labels)
    n_tokens = mask.sum()
    stats = {"nll_response": nll.sum().detach(), "tokens_response": n_tokens.detach().to(nll.dtype)}
    return nll.sum() / n_tokens.clamp(min=1), stats


def lm_metrics(stats: dict[str, float], prefix: str = "") -> dict[str, float]:
    """Turn summed `nll_<name>` / `tokens_<name>` stats into `loss_<name>` and `ppl_<name>`.

    Also `loss` (and `ppl`) over all names together: for Eq. 1 that is the per-token value of the
    objective itself. Names without tokens in the window are left out rather than reported as 0.
    """
    out: dict[str, float] = {}
    total_nll = total_tokens = 0.0
    for key, nll in stats.items():
        if not key.startswith("nll_"):
            continue
        name = key[len("nll_"):]
        n = float(stats.get(f"tokens_{name}", 0.0))
        if n <= 0:
            continue
        total_nll += float(nll)
        total_tokens += n
        out[f"{prefix}loss_{name}"] = float(nll) / n
        out[f"{prefix}ppl_{name}"] = _ppl(float(nll) / n)
    if total_tokens > 0:
        out[f"{prefix}loss"] = total_nll / total_tokens
        out[f"{prefix}ppl"] = _ppl(total_nll / total_tokens)
    return out


def _ppl(loss: float) -> float:
    return math.exp(min(loss, 50.0))  # capped so an early divergent step logs a number, not inf


@torch.no_grad()
def sequence_logprob(model, token_ids: list[list[int]], pad_id: int = 0) -> torch.Tensor:
    """log p(x_2..x_n | x_1) of each sequence under a causal LM (the first token is its marker).

    Used to score choices in either direction: pass `<|l2r|>` + tokens, or `<|r2l|>` + the reversed
    tokens for the right-to-left reading of Eq. 1's second sum. Returns a (N,) float tensor.
    """
    n = max(len(t) for t in token_ids)
    ids = torch.full((len(token_ids), n), pad_id, dtype=torch.long)
    labels = torch.full((len(token_ids), n), IGNORE_INDEX, dtype=torch.long)
    for i, t in enumerate(token_ids):
        ids[i, : len(t)] = torch.tensor(t)
        labels[i, 1 : len(t)] = torch.tensor(t[1:])
    logits = model(input_ids=ids).logits  # right padding: causal attention never reaches the pads
    nll, _ = token_nll(logits, labels)
    return -nll.sum(-1)
