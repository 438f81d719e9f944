"""GPTQ (Frantar, Ashkboos, Hoefler, Alistarh, ICLR 2023), written from the paper.

Each linear layer minimises ||W X - W_hat X||^2 over its calibration inputs X: columns are
quantized one at a time and the rounding error of each is pushed onto the not-yet-quantized
columns through the inverse Hessian H^-1 (H = 2 X X^T), using its upper Cholesky factor and lazy
batch updates of 128 columns. Layers are processed block by block: a block's inputs are the
outputs of the already-quantized previous blocks, as in the paper.

Speed (the method is unchanged): calibration sequences go through each block ``batch_size`` at a
time; layers fed the same input tensor (q/k/v, gate/up) share one Hessian accumulation and are
solved as one stacked matrix; the column solve runs with TF32 off (full float32, as the authors'
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
        for group in hessians.groups():
            stacked = torch.cat([linears[name].weight for name in group])
            with _full_float32():
                q = gptq_quantize_weight(stacked, hessians.acc[group[0]].h, bits, group_size,
                                         symmetric, act_order, damp)
            for name, part in zip(group, q.split([linears[n].out_features for n in group])):
                m = linears[name]
                m.weight.copy_(part)
                total_bits += rtn_bits_per_weight(bits, m.out_features, m.in_features, group_size,
                                                  symmetric, act_order)
                weights += m.weight.numel()
        del hessians
        inputs = [_block_output(block, x, kw) for x, kw in zip(inputs, block_kwargs)]
    return BaselineReport("GPTQ", bits, group_size, symmetric, act_order, weights, total_bits)
