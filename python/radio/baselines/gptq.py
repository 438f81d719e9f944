"""GPTQ (Frantar, Ashkboos, Hoefler, Alistarh, ICLR 2023), written from the paper.

Each linear layer minimises ||W X - W_hat X||^2 over its calibration inputs X: columns are
quantized one at a time and the rounding error of each is pushed onto the not-yet-quantized
columns through the inverse Hessian H^-1 (H = 2 X X^T), using its upper Cholesky factor and lazy
batch updates of 128 columns. Layers are processed block by block: a block's inputs are the
outputs of the already-quantized previous blocks, as in the paper.

Speed (the method is unchanged): calibration sequences go through each block ``batch_size`` at a
time; layers fed the same input tensor (q/k/v, gate/up) share one Hessian accumulation and are
solved as one stacked matrix, and layers of the same input width share one column loop
(``gptq_quantize_weights``); the column solve runs with TF32 off (full float32, as the authors'
code), whatever the caller set for the forward passes.
"""
from __future__ import annotations

import contextlib
import math
from typing import Dict, List, Sequence

import torch
from torch import nn

from .common import BaselineReport, check_bits, decoder_blocks, fake_quantize, rtn_bits_per_weight, uniform_grid


class _HessianAccumulator:
    """Running H = 2/n * sum x x^T over the rows x of a layer's inputs."""

    def __init__(self, columns: int, device: torch.device) -> None:
        self.h = torch.zeros(columns, columns, dtype=torch.float64, device=device)
        self.samples = 0

    def add(self, x: torch.Tensor) -> None:
        x = x.reshape(-1, x.shape[-1]).to(torch.float64)
        n = x.shape[0]
        self.h *= self.samples / (self.samples + n)
        self.samples += n
        x = x * math.sqrt(2 / self.samples)
        self.h += x.T @ x


@contextlib.contextmanager
def _full_float32():
    """TF32 off for CUDA matmuls inside (restored after): the error feedback wants float32."""
    saved = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = saved


def gptq_quantize_weight(weight: torch.Tensor, hessian: torch.Tensor, bits: int, group_size: int = 128,
                         symmetric: bool = False, act_order: bool = False, damp: float = 0.01,
                         block: int = 128) -> torch.Tensor:
    """GPTQ approximation of ``weight`` [N, K] given the layer's input Hessian [K, K]."""
    return gptq_quantize_weights([weight], [hessian], bits, group_size, symmetric, act_order,
                                 damp, block)[0]


def gptq_quantize_weights(weights: Sequence[torch.Tensor], hessians: Sequence[torch.Tensor],
                          bits: int, group_size: int = 128, symmetric: bool = False,
                          act_order: bool = False, damp: float = 0.01,
                          block: int = 128) -> List[torch.Tensor]:
    """GPTQ of several layers with the same input width K at once: ``weights[l]`` [N_l, K] with
    its own Hessian ``hessians[l]`` [K, K].

    Every row is quantized exactly as alone (GPTQ treats rows independently); the layers only
    share the column loop, whose per-column steps are small enough that their count, not their
    size, sets the time on a GPU. Shorter layers are padded with copies of their first row
    (finite values, dropped at the end).
    """
    check_bits(bits, group_size)
    if len(weights) != len(hessians) or not weights:
        raise ValueError(f"need one Hessian per weight, got {len(weights)} weights and "
                         f"{len(hessians)} Hessians")
    k = weights[0].shape[1]
    for weight, hessian in zip(weights, hessians):
        if weight.dim() != 2 or weight.shape[1] != k:
            raise ValueError(f"weights must be [N, {k}], got {tuple(weight.shape)}")
        if hessian.shape != (k, k):
            raise ValueError(f"hessian must have shape ({k}, {k}), got {tuple(hessian.shape)}")
    rows = [wt.shape[0] for wt in weights]
    n = max(rows)
    w = torch.stack([torch.cat([wt.detach().float(), wt.detach().float()[:1].expand(n - r, k)])
                     for wt, r in zip(weights, rows)])  # [L, N, K]
    h = torch.stack([hs.to(torch.float64) for hs in hessians])  # [L, K, K] (a copy)
    diag = h.diagonal(dim1=1, dim2=2)  # a view
    dead = diag == 0  # inputs never seen: any value is exact; fix them to 0
    diag[dead] = 1
    w.masked_fill_(dead[:, None, :], 0)
    perm = None
    if act_order:  # quantize the inputs with the largest Hessian diagonal first
        perm = torch.argsort(h.diagonal(dim1=1, dim2=2), dim=1, descending=True)  # [L, K]
        w = torch.gather(w, 2, perm[:, None, :].expand_as(w))
        h = torch.stack([hl[p][:, p] for hl, p in zip(h, perm)])
    mean_diag = h.diagonal(dim1=1, dim2=2).mean(dim=1)
    h += damp * mean_diag[:, None, None] * torch.eye(k, dtype=h.dtype, device=h.device)
    hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)),
                                 upper=True).to(torch.float32)  # [L, K, K]

    layers = w.shape[0]
    group = k if group_size == 0 else group_size
    q_all = torch.zeros_like(w)
    scale = zero = None
    for b0 in range(0, k, block):
        b1 = min(b0 + block, k)
        w_blk = w[:, :, b0:b1].clone()
        q_blk = torch.zeros_like(w_blk)
        err_blk = torch.zeros_like(w_blk)
        hinv_blk = hinv[:, b0:b1, b0:b1]
        for i in range(b1 - b0):
            col = b0 + i
            if col % group == 0:
                # Groups follow the (possibly permuted) quantization order, on the updated weights.
                upcoming = torch.cat([w_blk[:, :, i:], w[:, :, b1:]], dim=2)[:, :, :group]
                scale, zero = uniform_grid(upcoming.reshape(layers * n, -1), bits, symmetric)
            q = fake_quantize(w_blk[:, :, i].reshape(layers * n, 1), scale, zero,
                              bits).view(layers, n)
            q_blk[:, :, i] = q
            err = (w_blk[:, :, i] - q) / hinv_blk[:, i, i][:, None]
            w_blk[:, :, i:] -= err[:, :, None] * hinv_blk[:, None, i, i:]
            err_blk[:, :, i] = err
        q_all[:, :, b0:b1] = q_blk
        w[:, :, b1:] -= torch.bmm(err_blk, hinv[:, b0:b1, b1:])
    if perm is not None:
        q_all = torch.gather(q_all, 2, torch.argsort(perm, dim=1)[:, None, :].expand_as(q_all))
    return [q_all[l, :r].to(wt.dtype) for l, (wt, r) in enumerate(zip(weights, rows))]


def _block_output(block: nn.Module, hidden: torch.Tensor, kwargs: dict) -> torch.Tensor:
    out = block(hidden, **kwargs)
    return out[0] if isinstance(out, (tuple, list)) else out


class _StopForward(Exception):
    pass


class _SharedInputHessians:
    """Forward hooks on a block's linears that accumulate one Hessian per distinct input tensor.

    Layers called on the same tensor object in a forward pass (q/k/v get the same normalized
    hidden states, gate/up too) have identical Hessians: the first such layer accumulates, the
    others alias it (found in the first pass). ``groups()`` lists the layers per Hessian.
    """

    def __init__(self, linears: Dict[str, nn.Linear], device: torch.device) -> None:
        self.linears = linears
        self.acc: Dict[str, _HessianAccumulator] = {}
        self.alias: Dict[str, str] = {}  # name -> the layer whose Hessian it shares
        self._current: Dict[str, torch.Tensor] = {}  # inputs seen in this forward pass
        self._first_pass = True
        self._device = device
        self._hooks = [m.register_forward_hook(self._hook(name)) for name, m in linears.items()]

    def _hook(self, name: str):
        def hook(_module, args, _output):
            x = args[0]
            if self._first_pass:
                owner = next((o for o, t in self._current.items() if t is x), None)
                if owner is not None:
                    self.alias[name] = owner
                    return
                self._current[name] = x
                self.acc[name] = _HessianAccumulator(x.shape[-1], self._device)
            elif name in self.alias:
                return
            self.acc[name].add(x)
        return hook

    def end_pass(self) -> None:
        self._first_pass = False
        self._current.clear()

    def remove(self) -> None:
        for h in self._hooks:
            h.remove()

    def groups(self) -> List[List[str]]:
        """Layer names grouped by shared Hessian, in module order (owner first)."""
        return [[name] + [a for a in self.linears if self.alias.get(a) == name]
                for name in self.linears if name not in self.alias]


@torch.no_grad()
def quantize_gptq(model: nn.Module, calib: torch.Tensor | Sequence[torch.Tensor], bits: int = 4,
                  group_size: int = 128, symmetric: bool = False, act_order: bool = False,
                  damp: float = 0.01, batch_size: int = 8) -> BaselineReport:
    """Quantize every decoder-block linear of ``model`` with GPTQ, in place.

    ``calib`` holds token ids, [n, T] or a list of [1, T] tensors. Blocks are processed in order;
    each block sees the outputs of the already-quantized blocks before it. ``batch_size``
    sequences of equal length go through a block per forward pass (speed only).
    """
    check_bits(bits, group_size)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    sequences: List[torch.Tensor] = list(calib) if not torch.is_tensor(calib) else list(calib.split(1))
    if not sequences:
        raise ValueError("calib must hold at least one sequence of token ids, got none")
    device = next(model.parameters()).device
    blocks_name, blocks = decoder_blocks(model)
    # Batches of consecutive sequences of the same length.
    rows = [ids.reshape(1, -1) for ids in sequences]
    batches: List[torch.Tensor] = []
    for ids in rows:
        last = batches[-1] if batches else None
        if last is not None and last.shape[0] < batch_size and last.shape[1] == ids.shape[1]:
            batches[-1] = torch.cat([last, ids])
        else:
            batches.append(ids)

    # Capture every batch's input to the first block, with the keyword arguments the model
    # passes (masks, position embeddings), by stopping the forward pass there.
    inputs: List[torch.Tensor] = []
    block_kwargs: List[dict] = []

    def catch(_module, args, kwargs):
        inputs.append(args[0] if args else kwargs.pop("hidden_states"))
        block_kwargs.append({k: v for k, v in kwargs.items() if k != "hidden_states"})
        raise _StopForward

    handle = blocks[0].register_forward_pre_hook(catch, with_kwargs=True)
    try:
        for ids in batches:
            try:
                model(ids.to(device), use_cache=False)
            except _StopForward:
                pass
    finally:
        handle.remove()

    total_bits = 0.0
    weights = 0
    for block in blocks:
        linears = {name: m for name, m in block.named_modules() if isinstance(m, nn.Linear)}
        hessians = _SharedInputHessians(linears, device)
        try:
            for x, kw in zip(inputs, block_kwargs):
                _block_output(block, x, kw)
                hessians.end_pass()
        finally:
            hessians.remove()
        # GPTQ treats rows independently, so layers fed the same input (identical Hessians)
        # are quantized as one stacked matrix: same result, fewer passes of the column loop.
        # Groups of the same input width share one column loop (gptq_quantize_weights).
        groups = hessians.groups()
        for width in sorted({linears[g[0]].in_features for g in groups}):
            same = [g for g in groups if linears[g[0]].in_features == width]
            with _full_float32():
                solved = gptq_quantize_weights(
                    [torch.cat([linears[name].weight for name in g]) for g in same],
                    [hessians.acc[g[0]].h for g in same], bits, group_size, symmetric,
                    act_order, damp)
            for group, q in zip(same, solved):
                for name, part in zip(group, q.split([linears[n].out_features for n in group])):
                    m = linears[name]
                    m.weight.copy_(part)
                    total_bits += rtn_bits_per_weight(bits, m.out_features, m.in_features,
                                                      group_size, symmetric, act_order)
                    weights += m.weight.numel()
        del hessians
        inputs = [_block_output(block, x, kw) for x, kw in zip(inputs, block_kwargs)]
    return BaselineReport("GPTQ", bits, group_size, symmetric, act_order, weights, total_bits)
