"""Row clustering and column ordering of layers (docs/format.md; method.md §4).

Rows are sorted by ``log2 Var(row) + log2 G^2(row)`` so that rows of similar variance and
sensitivity share a chunk of ``gs`` rows; inside each chunk the columns are sorted by the group
score ``log2(G^2 S^2)`` so that runs of 32 similar columns form the units that share one depth.

Every function works on a STACK of ``L`` layers of one shape at once (leading dimension ``L``),
so that the per-round work of a model is a few large kernels per layer shape rather than dozens
of small ones per layer. Shapes: weights ``[L, N, K]``, row permutations ``[L, N]``, per-group
values ``[L, C, K]``, column orders ``[L, C, Kp]``, unit values ``[L, C, U]``. Per-chunk sums use
one-hot matrix products rather than ``index_add_`` because those are deterministic on the GPU.
"""
from __future__ import annotations

from typing import Iterator, List, Tuple

import torch

from .format import UNIT

_TINY = 1e-30  # floor before log2: zero variance or sensitivity sorts last, never NaN


def chunk_count(out_features: int, rows_per_group: int) -> int:
    return -(-out_features // rows_per_group)


def rows_per_chunk(out_features: int, rows_per_group: int, device=None) -> torch.Tensor:
    """int64 [C]: rows of every chunk (only the last may be shorter)."""
    c = torch.arange(chunk_count(out_features, rows_per_group), device=device)
    return torch.clamp(out_features - c * rows_per_group, max=rows_per_group)


def chunk_blocks(w_perm: torch.Tensor, rows_per_group: int
                 ) -> Iterator[Tuple[int, int, int, torch.Tensor]]:
    """Blocks of equal-height chunks of a stack ``w_perm`` [L, N, ...] (rows permuted).

    Yields ``(first_chunk, chunks, rows, block [L * chunks, rows, ...])``: one block of all
    full chunks and, when ``gs`` does not divide ``N``, one of the short last chunks. Blocks are
    views when the layout allows.
    """
    stack, n = w_perm.shape[0], w_perm.shape[1]
    full = n // rows_per_group
    rest = w_perm.shape[2:]
    if full:
        yield 0, full, rows_per_group, w_perm[:, :full * rows_per_group].reshape(
            stack * full, rows_per_group, *rest)
    tail = n - full * rows_per_group
    if tail:
        yield full, 1, tail, w_perm[:, full * rows_per_group:].reshape(stack, tail, *rest)


def merge_chunks(pieces: List[torch.Tensor], stack: int) -> torch.Tensor:
    """Per-chunk results of ``chunk_blocks``' blocks ([L * chunks_i, ...]) -> [L, C, ...]."""
    return torch.cat([p.reshape(stack, -1, *p.shape[1:]) for p in pieces], dim=1)


def permute_rows(weights: torch.Tensor, row_perm: torch.Tensor) -> torch.Tensor:
    """[L, N, K] -> [L, N, K] with row p of layer l = row ``row_perm[l, p]``."""
    index = row_perm.to(torch.int64)[:, :, None].expand(-1, -1, weights.shape[2])
    return torch.gather(weights, 1, index)


def chunk_of_rows(row_perm: torch.Tensor, rows_per_group: int) -> torch.Tensor:
    """int64 [L, N]: the chunk of every ORIGINAL row under ``row_perm`` [L, N]."""
    n = row_perm.shape[-1]
    out = torch.empty_like(row_perm, dtype=torch.int64)
    positions = torch.arange(n, device=row_perm.device) // rows_per_group
    out.scatter_(-1, row_perm.to(torch.int64), positions.expand_as(out).contiguous())
    return out


def chunk_one_hot(row_perm: torch.Tensor, rows_per_group: int, chunks: int,
                  dtype=torch.float32) -> torch.Tensor:
    """[L, C, N]: entry (l, c, r) is 1 when ORIGINAL row r of layer l sits in chunk c."""
    hot = torch.nn.functional.one_hot(chunk_of_rows(row_perm, rows_per_group), chunks)
    return hot.to(dtype).transpose(-1, -2)


# ----------------------------------------------------------------------------------------------
# Rows
# ----------------------------------------------------------------------------------------------

def row_log2_variance(weight: torch.Tensor) -> torch.Tensor:
    """float32 [..., N]: log2 of every row's variance (about its mean)."""
    w = weight.to(torch.float32)
    return torch.log2(w.var(dim=-1, unbiased=False).clamp_min(_TINY))


def row_order(row_log2_var: torch.Tensor, row_g2: torch.Tensor) -> torch.Tensor:
    """int64 [..., N]: the row permutation, rows sorted by ``log2 Var + log2 G^2`` (descending).

    ``row_g2`` is the row's mean squared gradient (any positive scale); all zeros (no statistics
    yet) keeps the variance order. Stable, so equal scores keep their original order.
    """
    score = row_log2_var.to(torch.float64) + torch.log2(row_g2.to(torch.float64).clamp_min(_TINY))
    return torch.argsort(score, dim=-1, descending=True, stable=True)


# ----------------------------------------------------------------------------------------------
# Groups
# ----------------------------------------------------------------------------------------------

def group_spread(weights: torch.Tensor, row_perm: torch.Tensor, rows_per_group: int
                 ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Location (lower median) and RMS spread about it of every group -> two float32
    [L, C, K]."""
    from .torch_quant import lower_median, rms_about

    w_perm = permute_rows(weights.to(torch.float32), row_perm)
    locs, spreads = [], []
    for _, _, _, block in chunk_blocks(w_perm, rows_per_group):
        loc = lower_median(block)
        locs.append(loc)
        spreads.append(rms_about(block, loc))
    stack = weights.shape[0]
    return merge_chunks(locs, stack), merge_chunks(spreads, stack)


def column_order(group_score: torch.Tensor) -> torch.Tensor:
    """int64 [..., C, Kp]: every chunk's columns sorted by ``group_score`` [..., C, K]
    (descending, stable), then the sentinel ``K`` at the ``Kp - K`` padding positions."""
    k = group_score.shape[-1]
    order = torch.argsort(group_score, dim=-1, descending=True, stable=True)
    pad = -(-k // UNIT) * UNIT - k
    if pad:
        order = torch.cat([order, order.new_full((*order.shape[:-1], pad), k)], dim=-1)
    return order


def group_log2_score(g2: torch.Tensor, spread2: torch.Tensor) -> torch.Tensor:
    """log2(G^2 S^2) per group, floored so that empty groups sort last without NaN."""
    return torch.log2((g2.to(torch.float64) * spread2.to(torch.float64)).clamp_min(_TINY))


def columns_to_positions(values: torch.Tensor, col_perm: torch.Tensor,
                         rows_per_group: int) -> torch.Tensor:
    """[L, R, K] per original column -> [L, R, Kp] in chunk-position order, 0 at padding.

    Row ``r`` of ``values`` belongs to chunk ``r // rows_per_group`` (pass 1 for per-group
    values [L, C, K], ``gs`` for permuted weight rows [L, N, K]); ``col_perm`` is [L, C, Kp].
    """
    rows = values.shape[1]
    padded = torch.cat([values, values.new_zeros(*values.shape[:2], 1)], dim=2)  # K: zero
    chunk_of_row = torch.arange(rows, device=values.device) // rows_per_group
    return padded.gather(2, col_perm.to(torch.int64)[:, chunk_of_row])


def depth_per_column(depth: torch.Tensor, col_perm: torch.Tensor, in_features: int
                     ) -> torch.Tensor:
    """int64 [..., C, K]: the depth of every group (original column order) from the unit depths
    [..., C, U] and the column order [..., C, Kp]."""
    depth_pos = depth.to(torch.int64).repeat_interleave(UNIT, dim=-1)
    out = depth_pos.new_zeros(*depth.shape[:-1], in_features + 1)
    out.scatter_(-1, col_perm.to(torch.int64), depth_pos)  # padding lands in column K, dropped
    return out[..., :in_features]


def unit_coefficients(group_dist: torch.Tensor, col_perm: torch.Tensor,
                      chunk_rows: torch.Tensor) -> torch.Tensor:
    """float64 [L, C, U]: modelled distortion at 0 bits of every unit, ``sum over its groups of
    rows_c * G^2 S^2`` (``group_dist`` [L, C, K] is the per-weight ``G^2 S^2``)."""
    pos = columns_to_positions(group_dist.to(torch.float64), col_perm, 1)  # [L, C, Kp]
    units = pos.view(*pos.shape[:2], -1, UNIT).sum(dim=3)
    return units * chunk_rows.to(torch.float64)[None, :, None]


# ----------------------------------------------------------------------------------------------
# Statistics across a regrouping
# ----------------------------------------------------------------------------------------------

def remap_group_sums(group_sum: torch.Tensor, old_perm: torch.Tensor, new_perm: torch.Tensor,
                     row_g2: torch.Tensor, rows_per_group: int) -> torch.Tensor:
    """Carry per-group sums of squared gradients [L, C, K] from one row grouping to another.

    The accumulators are per group, not per weight (a full-size float32 accumulator would
    double the memory of a 7B model). When the rows move, the squared gradient of weight
    ``(r, k)`` is modelled as ``mean_G2[old chunk of r, k] * rho_r``, ``rho_r`` being row r's
    squared gradient relative to the mean of its old chunk (the per-row statistics ``row_g2``
    [L, N] are exact); the new group sums add these over their rows. Totals are preserved.
    """
    chunks, n = group_sum.shape[1], old_perm.shape[1]
    old_hot = chunk_one_hot(old_perm, rows_per_group, chunks, torch.float64)  # [L, C, N]
    new_hot = chunk_one_hot(new_perm, rows_per_group, chunks, torch.float64)
    rows = rows_per_chunk(n, rows_per_group, group_sum.device).to(torch.float64)
    row_g2 = row_g2.to(torch.float64)
    chunk_mean = (old_hot @ row_g2[:, :, None])[:, :, 0] / rows  # [L, C]
    old_chunk_mean_of_row = (old_hot.transpose(1, 2) @ chunk_mean[:, :, None])[:, :, 0]
    rho = torch.where(old_chunk_mean_of_row > 0, row_g2 / old_chunk_mean_of_row.clamp_min(_TINY),
                      torch.ones_like(row_g2))
    mixing = (new_hot * rho[:, None, :]) @ old_hot.transpose(1, 2)  # [L, C_new, C_old]
    mean = group_sum.to(torch.float64) / rows[None, :, None]
    return (mixing @ mean).to(group_sum.dtype)
