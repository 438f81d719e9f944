"""GPTQ (Frantar, Ashkboos, Hoefler, Alistarh, ICLR 2023), written from the paper.

Each linear layer minimises ||W X - W_hat X||^2 over its calibration inputs X: columns are
quantized one at a time and the rounding error of each is pushed onto the not-yet-quantized
columns through the inverse Hessian H^-1 (H = 2 X X^T), using its upper Cholesky factor and lazy
batch updates of 128 columns. Layers are processed block by block: a block's inputs are the
outputs of the already-quantized previous blocks, as in the paper.
"""
from __future__ import annotations

import math
from typing import List, Sequence

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


def gptq_quantize_weight(weight: torch.Tensor, hessian: torch.Tensor, bits: int, group_size: int = 128,
                         symmetric: bool = False, act_order: bool = False, damp: float = 0.01,
                         block: int = 128) -> torch.Tensor:
    """GPTQ approximation of ``weight`` [N, K] given the layer's input Hessian [K, K]."""
    check_bits(bits, group_size)
    w = weight.detach().to(torch.float32).clone()
    n, k = w.shape
    if hessian.shape != (k, k):
        raise ValueError(f"hessian must have shape ({k}, {k}), got {tuple(hessian.shape)}")
    h = hessian.to(torch.float64).clone()
    dead = torch.diag(h) == 0  # inputs never seen: any value is exact; fix them to 0
    h[dead, dead] = 1
    w[:, dead] = 0
    perm = None
    if act_order:  # quantize the inputs with the largest Hessian diagonal first
        perm = torch.argsort(torch.diag(h), descending=True)
        w = w[:, perm]
        h = h[perm][:, perm]
    h += damp * torch.mean(torch.diag(h)) * torch.eye(k, dtype=h.dtype, device=h.device)
    hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True).to(torch.float32)

    group = k if group_size == 0 else group_size
    q_all = torch.zeros_like(w)
    scale = zero = None
    for b0 in range(0, k, block):
        b1 = min(b0 + block, k)
        w_blk = w[:, b0:b1].clone()
        q_blk = torch.zeros_like(w_blk)
        err_blk = torch.zeros_like(w_blk)
        hinv_blk = hinv[b0:b1, b0:b1]
        for i in range(b1 - b0):
            col = b0 + i
            if col % group == 0:
                # Groups follow the (possibly permuted) quantization order, on the updated weights.
                upcoming = torch.cat([w_blk[:, i:], w[:, b1:]], dim=1)[:, :group]
                scale, zero = uniform_grid(upcoming, bits, symmetric)
            q = fake_quantize(w_blk[:, i:i + 1], scale, zero, bits)[:, 0]
            q_blk[:, i] = q
            err = (w_blk[:, i] - q) / hinv_blk[i, i]
            w_blk[:, i:] -= err[:, None] * hinv_blk[i, i:][None, :]
            err_blk[:, i] = err
        q_all[:, b0:b1] = q_blk
        w[:, b1:] -= err_blk @ hinv[b0:b1, b1:]
    if perm is not None:
        q_all = q_all[:, torch.argsort(perm)]
    return q_all.to(weight.dtype)


def _block_output(block: nn.Module, hidden: torch.Tensor, kwargs: dict) -> torch.Tensor:
    out = block(hidden, **kwargs)
    return out[0] if isinstance(out, (tuple, list)) else out


class _StopForward(Exception):
    pass


def _same_input_groups(linears: dict, acc: dict) -> List[List[str]]:
    """Names of the linears grouped by identical Hessian (same inputs), in module order."""
    groups: List[List[str]] = []
    for name in linears:
        for group in groups:
            first = acc[group[0]].h
            if first.shape == acc[name].h.shape and torch.equal(first, acc[name].h):
                group.append(name)
                break
        else:
            groups.append([name])
    return groups


@torch.no_grad()
def quantize_gptq(model: nn.Module, calib: torch.Tensor | Sequence[torch.Tensor], bits: int = 4,
                  group_size: int = 128, symmetric: bool = False, act_order: bool = False,
                  damp: float = 0.01) -> BaselineReport:
    """Quantize every decoder-block linear of ``model`` with GPTQ, in place.

    ``calib`` holds token ids, [n, T] or a list of [1, T] tensors. Blocks are processed in order;
    each block sees the outputs of the already-quantized blocks before it.
    """
    check_bits(bits, group_size)
    sequences: List[torch.Tensor] = list(calib) if not torch.is_tensor(calib) else list(calib.split(1))
    if not sequences:
        raise ValueError("calib must hold at least one sequence of token ids, got none")
    device = next(model.parameters()).device
    blocks_name, blocks = decoder_blocks(model)

    # Capture every sequence's input to the first block, with the keyword arguments the model
    # passes (masks, position embeddings), by stopping the forward pass there.
    inputs: List[torch.Tensor] = []
    block_kwargs: List[dict] = []

    def catch(_module, args, kwargs):
        inputs.append(args[0] if args else kwargs.pop("hidden_states"))
        block_kwargs.append({k: v for k, v in kwargs.items() if k != "hidden_states"})
        raise _StopForward

    handle = blocks[0].register_forward_pre_hook(catch, with_kwargs=True)
    try:
        for ids in sequences:
            try:
                model(ids.reshape(1, -1).to(device), use_cache=False)
            except _StopForward:
                pass
    finally:
        handle.remove()

    total_bits = 0.0
    weights = 0
    for block in blocks:
        linears = {name: m for name, m in block.named_modules() if isinstance(m, nn.Linear)}
        acc = {name: _HessianAccumulator(m.in_features, device) for name, m in linears.items()}
        hooks = [m.register_forward_hook(lambda mod, a, o, n=name: acc[n].add(a[0]))
                 for name, m in linears.items()]
        for x, kw in zip(inputs, block_kwargs):
            _block_output(block, x, kw)
        for h in hooks:
            h.remove()
        # GPTQ treats rows independently, so layers fed the same input (q/k/v, gate/up: their
        # Hessians are bit-identical) are quantized as one stacked matrix: same result, fewer
        # passes of the per-column loop.
        for group in _same_input_groups(linears, acc):
            stacked = torch.cat([linears[name].weight for name in group])
            q = gptq_quantize_weight(stacked, acc[group[0]].h, bits, group_size, symmetric,
                                     act_order, damp)
            for name, part in zip(group, q.split([linears[n].out_features for n in group])):
                m = linears[name]
                m.weight.copy_(part)
                total_bits += rtn_bits_per_weight(bits, m.out_features, m.in_features, group_size,
                                                  symmetric, act_order)
                weights += m.weight.numel()
        inputs = [_block_output(block, x, kw) for x, kw in zip(inputs, block_kwargs)]
    return BaselineReport("GPTQ", bits, group_size, symmetric, act_order, weights, total_bits)
