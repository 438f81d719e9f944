"""Gradient-variance (G^2) estimation by backpropagation (method.md §2.2).

The model "output" is the final hidden state ``h_t`` (the LM head's input), projected on one of
its principal directions ``v_k`` (eigh of the centred covariance, sorted): ``y = v_k^T h_t`` at a
few sampled token positions. Every quantized linear layer is wrapped in a ``LayerProbe`` whose
autograd function squares the weight gradient ``(delta^T X)`` of each backward pass and adds it
per group (one column of one chunk of ``gs`` rows) and per row. The probe never materialises a
``.grad`` on the weight and keeps only per-group accumulators, so a 7B model's statistics cost
~100 MB, not another copy of the weights.

Two estimators of ``sum_t (dy_t/dW)^2``:

- ``per_token`` (the paper's): the gradient of every sampled token separately. Computed in a few
  batched passes (``per_token_passes``): every sampled token of every sequence is a copy of its
  sequence in a batch, truncated after the token in causal models (nothing later reaches it),
  and one backward pass of the sum of the copies' outputs gives each copy its own gradient; the
  probes square each copy's weight gradient separately (``add_gradient(copies=...)``). At 17
  tokens of 2048 the copies hold 8.6x a sequence's tokens (attention: 5.9x): that much more
  work than ``random_sign`` (CPU, 4 layers x 256 wide, 512 tokens: 6.3x; the sequential loop,
  with a forward pass shared but 17 backward passes at full length: 12.7x).
  ``per_token_sequential`` is the simple reference twin: one backward pass per sampled token.
- ``random_sign``: one backward pass of ``sum_t s_t y_t`` with independent Rademacher signs
  ``s_t``. Since ``E[s_t s_u] = [t = u]``, ``E[(sum_t s_t g_t)^2] = sum_t g_t^2`` elementwise: an
  unbiased estimate at 1/17 of the backward passes (more variance per sequence, averaged away
  over the 1024 sequences of a run). Signs independent across sequences also make a micro-batch
  of sequences one backward pass.

The probe also keeps the running mean of its layer's input (for bias correction, method.md §5.4).
"""
from __future__ import annotations

import contextlib
import dataclasses
import warnings
from typing import Callable, Iterator, List, Optional, Tuple

import torch
from torch import nn
from torch.nn import functional as F

from . import grouping


@dataclasses.dataclass
class LayerState:
    """Everything tracked for one quantized linear layer during the pipeline.

    Tensors live on the layer's device unless noted. ``weight`` is the working weight the model
    computes with (the dequantized one after the first round), in the model's dtype.
    """

    name: str
    module: nn.Linear
    rows_per_group: int
    weight: torch.Tensor  # [N, K], model dtype: working (dequantized) weight
    bias: torch.Tensor  # [N], model dtype: working (bias-corrected) bias; zeros if none
    original: torch.Tensor  # [N, K], model dtype: the original weight (maybe on the CPU)
    original_bias: Optional[torch.Tensor]  # [N] float32 or None
    row_log2_var: torch.Tensor  # [N] float32
    row_perm: torch.Tensor  # [N] int64: current row grouping
    g2_sum: torch.Tensor  # [C, K] float32: sum of squared gradients per group
    row_g2_sum: torch.Tensor  # [N] float64: sum of squared gradients per (original) row
    x_sum: torch.Tensor  # [K] float64: sum of the layer's inputs
    x_count: int = 0
    passes: int = 0  # sequences whose gradients were added
    mean_step: int = -1  # last clock step whose input mean was taken (checkpoint recomputes)
    collect: bool = False
    has_bias: bool = True  # the stored layer carries a bias (side information)
    # Set by the allocation of each round (layer.LayerStatistics) and the quantization:
    stats: Optional[object] = None
    depth: Optional[torch.Tensor] = None
    # Streamed models (radio.offload): FSDP streams the ORIGINAL weight, and this maps it to the
    # working weight on the device (the last round's quantization); None: compute with it as is.
    recipe: Optional[Callable[[torch.Tensor], torch.Tensor]] = None

    # The layer's whole shape, from the per-row and per-column statistics: a sharded streamed
    # run's ``weight`` / ``original`` hold this rank's block of rows only (radio.offload).
    @property
    def out_features(self) -> int:
        return self.row_log2_var.shape[0]

    @property
    def in_features(self) -> int:
        return self.x_sum.shape[0]

    @property
    def chunks(self) -> int:
        return grouping.chunk_count(self.out_features, self.rows_per_group)

    def x_mean(self) -> torch.Tensor:
        """float32 [K]: running mean of the layer input (zeros before any input)."""
        if self.x_count == 0:
            return torch.zeros(self.in_features, dtype=torch.float32, device=self.x_sum.device)
        return (self.x_sum / self.x_count).to(torch.float32)

    def group_g2(self) -> torch.Tensor:
        """float32 [C, K]: mean squared gradient per weight of every group (unnormalised scale:
        the allocation only compares groups)."""
        rows = grouping.rows_per_chunk(self.out_features, self.rows_per_group, self.g2_sum.device)
        return self.g2_sum / rows[:, None].to(torch.float32)

    def row_g2(self) -> torch.Tensor:
        return self.row_g2_sum / self.in_features

    # -- accumulation ---------------------------------------------------------------------------
    def observe_input(self, x: torch.Tensor, step: int) -> None:
        if not self.collect or self.mean_step == step:
            return
        self.mean_step = step
        flat = x.detach().reshape(-1, x.shape[-1])
        self.x_sum += flat.sum(dim=0, dtype=torch.float64)
        self.x_count += flat.shape[0]

    def add_gradient(self, grad_out: torch.Tensor, x: torch.Tensor,
                     copies: Optional[int] = None, max_elements: int = 1 << 26) -> None:
        """Add the squared weight gradient ``(grad_out^T x)^2`` per group and per row.

        ``copies``: the batch holds that many independent copies (dim 0 of ``grad_out`` and
        ``x``), and each copy's gradient is squared on its own: ``sum_i (delta_i^T x_i)^2``, not
        the square of the sum. The copies' gradients are formed ``max_elements`` weights at a
        time (one 7B layer is 45M weights: a copy at a time there)."""
        n, k = self.out_features, self.in_features
        if copies is not None:
            self._add_copies(grad_out, x, copies, max_elements)
            return
        delta = grad_out.reshape(-1, n)
        inputs = x.reshape(-1, k)
        # float16 products of gradients and activations may overflow; bfloat16 and float32 not.
        if delta.dtype == torch.float16:
            delta, inputs = delta.float(), inputs.float()
        delta = delta.to(inputs.dtype)
        # Rows in chunk order, so that groups are contiguous blocks: grad^T x with permuted rows.
        grad = delta[:, self.row_perm].t() @ inputs  # [N, K], permuted rows, input dtype
        # Sums of squares as single-pass norms (read once, accumulated in float32): the weight
        # gradient is the largest tensor here and is never squared into a float32 copy.
        row_norm = torch.linalg.vector_norm(grad, dim=1, dtype=torch.float32)
        self.row_g2_sum[self.row_perm] += row_norm.to(torch.float64).square_()
        for c0, chunks, _, block in grouping.chunk_blocks(grad[None], self.rows_per_group):
            norm = torch.linalg.vector_norm(block, dim=1, dtype=torch.float32)
            self.g2_sum[c0:c0 + chunks] += norm.square_()

    def _add_copies(self, grad_out: torch.Tensor, x: torch.Tensor, copies: int,
                    max_elements: int) -> None:
        n, k = self.out_features, self.in_features
        if grad_out.numel() % (copies * n) or x.numel() % (copies * k):
            raise ValueError(f"layer '{self.name}': a batch of {copies} copies needs gradients "
                             f"and inputs divisible into {copies} rows, got "
                             f"{tuple(grad_out.shape)} and {tuple(x.shape)}")
        delta, inputs = grad_out.reshape(copies, -1, n), x.reshape(copies, -1, k)
        if delta.dtype == torch.float16:  # products may overflow float16
            delta, inputs = delta.float(), inputs.float()
        delta = delta.to(inputs.dtype)
        step = max(1, max_elements // (n * k))
        for c0 in range(0, copies, step):
            # [c, N, K] in the original row order (the permutation is applied to the sum of
            # squares below, a row gather, rather than to the gradients' columns, a slow one).
            grad = delta[c0:c0 + step].transpose(1, 2) @ inputs[c0:c0 + step]
            # Our own temporary: squared in place (float32 for a bfloat16 model: at most
            # ``max_elements`` of them), summed over the copies.
            squares = grad.float().square_()
            squares = squares[0] if squares.shape[0] == 1 else squares.sum(dim=0)  # [N, K]
            self.row_g2_sum += squares.sum(dim=1, dtype=torch.float64)
            for g0, chunks, _, block in grouping.chunk_blocks(squares[self.row_perm][None],
                                                              self.rows_per_group):
                self.g2_sum[g0:g0 + chunks] += block.sum(dim=1)


# Set by ``_per_copy_gradients`` while a batch of per-token copies runs its backward pass: the
# number of copies every probe splits its gradient into (None: one gradient for the batch).
_copies: Optional[int] = None
# Cleared by a probe whose input does not hold the copies in its leading dimension (e.g. a
# mixture-of-experts expert, fed the tokens routed to it from all copies): its gradient cannot
# be split per copy, and ``backpropagate`` falls back to ``per_token_sequential``.
_rows_are_copies = True


class _MixedCopies(Exception):
    pass


@contextlib.contextmanager
def _per_copy_gradients(copies: int) -> Iterator[None]:
    global _copies
    saved, _copies = _copies, copies
    try:
        yield
    finally:
        _copies = saved


class _ProbeFunction(torch.autograd.Function):
    """``F.linear`` whose backward adds the squared weight gradient to the layer's statistics
    and returns only the input gradient (weights are frozen)."""

    @staticmethod
    def forward(ctx, x, weight, bias, anchor, state):
        ctx.state = state
        ctx.save_for_backward(x, weight)
        return F.linear(x, weight, bias)

    @staticmethod
    def backward(ctx, grad_out):
        x, weight = ctx.saved_tensors
        state = ctx.state
        if state.collect and _copies is None:
            state.add_gradient(grad_out, x)
        elif state.collect:
            state.add_gradient(grad_out, x, copies=_copies)
        grad_x = grad_out @ weight if ctx.needs_input_grad[0] else None
        return grad_x, None, None, None, None


class CalibrationClock:
    """Counts forward passes, so that a probe takes the input mean once per pass even when a
    checkpointed block runs its forward again during the backward pass."""

    def __init__(self) -> None:
        self.step = 0
        # A leaf that requires grad, fed to every probe: the probe outputs then require grad
        # (so every probe's backward runs) even when nothing upstream does.
        self.anchor = torch.zeros(0, requires_grad=True)


class LayerProbe(nn.Module):
    """Stands in for an ``nn.Linear`` during calibration: computes with the working weight and
    bias of its ``LayerState`` and records statistics."""

    def __init__(self, state: LayerState, clock: CalibrationClock,
                 own_weight: bool = False) -> None:
        super().__init__()
        self.state = state
        self.clock = clock
        self.in_features = state.in_features
        self.out_features = state.out_features
        # Streamed (offloaded) models: the weight is this module's parameter, so that FSDP
        # manages (streams) it (radio.offload): the original weight, turned into the working
        # weight on the device by ``state.recipe``.
        self.owns_weight = own_weight
        if own_weight:
            self.weight = nn.Parameter(state.weight.detach(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        global _rows_are_copies
        state = self.state
        if _copies is not None and (x.dim() < 3 or x.shape[0] != _copies):
            _rows_are_copies = False
        state.observe_input(x, self.clock.step)
        weight = self.weight if self.owns_weight else state.weight
        if self.owns_weight and state.recipe is not None:
            with torch.no_grad():
                weight = state.recipe(weight)
        x = x.to(weight.dtype)
        if torch.is_grad_enabled():
            return _ProbeFunction.apply(x, weight, state.bias, self.clock.anchor, state)
        return F.linear(x, weight, state.bias)

    def extra_repr(self) -> str:
        return f"{self.state.name}: in={self.in_features}, out={self.out_features}"


# ----------------------------------------------------------------------------------------------
# Output directions
# ----------------------------------------------------------------------------------------------

class OutputCovariance:
    """Running mean and covariance of output vectors (float64)."""

    def __init__(self, dim: int, device) -> None:
        self.sum = torch.zeros(dim, dtype=torch.float64, device=device)
        self.outer = torch.zeros(dim, dim, dtype=torch.float64, device=device)
        self.count = 0

    def add(self, h: torch.Tensor) -> None:
        flat = h.detach().reshape(-1, h.shape[-1]).to(torch.float64)
        self.sum += flat.sum(dim=0)
        self.outer += flat.t() @ flat
        self.count += flat.shape[0]

    def covariance(self) -> torch.Tensor:
        if self.count < 2:
            raise ValueError(f"the output covariance needs at least 2 token vectors, got "
                             f"{self.count}")
        mean = self.sum / self.count
        return self.outer / self.count - torch.outer(mean, mean)


def principal_directions(cov: torch.Tensor, components: int) -> torch.Tensor:
    """float32 [k, D]: unit eigenvectors of ``cov`` by descending eigenvalue; at most
    ``components``, dropping directions whose variance is below 1e-10 of the largest."""
    evals, evecs = torch.linalg.eigh(cov)
    order = torch.argsort(evals, descending=True)
    evals, evecs = evals[order], evecs[:, order]
    keep = int((evals > evals[0].clamp_min(0) * 1e-10).sum().item()) if evals[0] > 0 else 1
    keep = max(1, min(components, keep))
    return evecs[:, :keep].t().contiguous().to(torch.float32)


def logit_directions(cov: torch.Tensor, head_weight: torch.Tensor, components: int
                     ) -> torch.Tensor:
    """Principal directions of the logits ``W h`` as hidden-side vectors ``a_k`` [k, D] with
    ``u_k = W a_k`` the unit eigenvectors of ``Cov(logits) = W C W^T`` (never formed: it is
    vocab x vocab). With ``C = Q L Q^T``, ``A = W Q L^(1/2)``: the eigenvectors of ``A A^T`` are
    ``A e / sigma`` for the eigenpairs ``(e, sigma^2)`` of ``A^T A``, so
    ``a = Q L^(1/2) e / sigma``.
    """
    evals, q = torch.linalg.eigh(cov)
    root = q * evals.clamp_min(0).sqrt()[None, :]  # [D, D]
    w = head_weight.to(cov.device, torch.float64)
    gram = root.t() @ (w.t() @ w) @ root
    s2, e = torch.linalg.eigh(gram)
    order = torch.argsort(s2, descending=True)
    s2, e = s2[order], e[:, order]
    keep = int((s2 > s2[0].clamp_min(0) * 1e-10).sum().item()) if s2[0] > 0 else 1
    keep = max(1, min(components, keep))
    a = (root @ e[:, :keep]) / s2[:keep].clamp_min(1e-300).sqrt()[None, :]
    return a.t().contiguous().to(torch.float32)


def token_positions(seq_len: int, count: int) -> torch.Tensor:
    """``count`` evenly spaced positions in ``0..seq_len-1``, first and last included: for 2048
    tokens and 17 positions these are the paper's 0, 127, 255, ..., 2047."""
    count = min(count, seq_len)
    if count == 1:
        return torch.tensor([seq_len - 1])
    j = torch.arange(count, dtype=torch.float64)
    return torch.floor(j * (seq_len - 1) / (count - 1)).to(torch.int64)


def rademacher(shape, generator: torch.Generator) -> torch.Tensor:
    return torch.randint(0, 2, shape, generator=generator).to(torch.float32).mul_(2).sub_(1)


def backpropagate(output_fn: Callable[[torch.Tensor], torch.Tensor], tokens: torch.Tensor,
                  directions: torch.Tensor, positions: torch.Tensor, estimator: str,
                  generator: torch.Generator,
                  head: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
                  signs: Optional[torch.Tensor] = None, causal: bool = False) -> None:
    """The forward and backward pass(es) of the projected outputs of ``tokens`` [b, T].

    ``directions`` [b, D]: the unit direction of every sequence in the space of the projected
    output: hidden states, or logits when ``head`` maps the sampled hidden states to logits
    (``u_k = W a_k`` of ``logit_directions``). The probes add the squared gradients to their
    layers' statistics. ``signs`` [b, n]: the Rademacher signs of ``random_sign`` when drawn
    beforehand (a whole round at once, so that each sequence gets the same signs however the
    round is split into micro-batches or processes); ``None`` draws them from ``generator``.
    ``causal``: output ``t`` depends on the tokens ``<= t`` only (causal LMs), so ``per_token``
    may truncate each copy after its token; ``False`` runs every copy at full length (exact for
    any model, about twice the work).
    """
    if estimator == "per_token":
        try:
            per_token_batched(output_fn, tokens, directions, positions, head, causal)
        except _MixedCopies as e:
            warnings.warn(f"per_token: {e}; one backward pass per token instead (slow)",
                          stacklevel=2)
            per_token_sequential(output_fn, tokens, directions, positions, head)
        return
    if estimator != "random_sign":
        raise ValueError(f"estimator must be 'random_sign' or 'per_token', got {estimator!r}")
    proj = _projected_outputs(output_fn, tokens, directions, positions, head)
    if signs is None:
        signs = rademacher(proj.shape, generator)
    elif tuple(signs.shape) != tuple(proj.shape):
        raise ValueError(f"signs must have the projected outputs' shape {tuple(proj.shape)}, "
                         f"got {tuple(signs.shape)}")
    (proj * signs.to(proj.device)).sum().backward()


def _projected_outputs(output_fn, tokens, directions, positions, head) -> torch.Tensor:
    """float32 [b, n]: the outputs of ``tokens`` at ``positions`` projected on ``directions``."""
    hidden = output_fn(tokens)  # [b, T, D]
    picked = hidden[:, positions.to(hidden.device)]  # [b, n, D]
    if head is not None:
        picked = head(picked)  # [b, n, V] logits of the sampled tokens
    return torch.einsum("bnd,bd->bn", picked.float(), directions.to(picked.device))


def per_token_sequential(output_fn, tokens: torch.Tensor, directions: torch.Tensor,
                         positions: torch.Tensor, head=None) -> None:
    """The reference twin of ``per_token_batched``: one forward pass, then one backward pass
    per sampled token of every sequence (``b * n`` of them, the graph kept between them)."""
    flat = _projected_outputs(output_fn, tokens, directions, positions, head).reshape(-1)
    for i in range(flat.numel()):
        flat[i].backward(retain_graph=i + 1 < flat.numel())


def per_token_passes(positions: torch.Tensor, seq_len: int, causal: bool,
                     overhead: Optional[float] = None) -> List[Tuple[List[int], int]]:
    """The batched passes of ``per_token_batched``: ``(indices into positions, length)``.

    A pass of ``j`` positions at length ``L`` runs ``j`` copies of every sequence truncated to
    ``L`` tokens (``causal``; otherwise ``L = seq_len``). The first pass is the last position at
    full length alone: its batch is the sequences themselves, so the probes take their input
    means there (once per sequence, as a single forward pass would). The other positions, in
    ascending order, are cut into runs minimising the modelled cost ``sum (j * L + overhead)``
    per sequence (``overhead``: a pass's fixed cost in tokens, default ``seq_len / 16``), with
    ``j * L <= seq_len``: no pass holds more activations than the full-length one.
    """
    pos = [int(p) for p in positions.reshape(-1).tolist()]
    if not pos or min(pos) < 0 or max(pos) >= seq_len:
        raise ValueError(f"positions must be non-empty and within 0..{seq_len - 1}, got {pos}")
    overhead = seq_len / 16 if overhead is None else overhead
    order = sorted(range(len(pos)), key=lambda i: pos[i])
    rest = order[:-1]

    def length(i: int) -> int:
        return pos[i] + 1 if causal else seq_len

    # best[c]: cheapest cover of rest[:c]; cut[c]: where its last run starts.
    best, cut = [0.0] + [float("inf")] * len(rest), [0] * (len(rest) + 1)
    for c in range(1, len(rest) + 1):
        run_len = length(rest[c - 1])
        for a in range(c - 1, -1, -1):
            if (c - a) * run_len > seq_len:
                break
            cost = best[a] + (c - a) * run_len + overhead
            if cost < best[c]:
                best[c], cut[c] = cost, a
    runs, c = [], len(rest)
    while c > 0:
        runs.append((rest[cut[c]:c], length(rest[c - 1])))
        c = cut[c]
    return [([order[-1]], seq_len)] + runs[::-1]


def per_token_batched(output_fn, tokens: torch.Tensor, directions: torch.Tensor,
                      positions: torch.Tensor, head=None, causal: bool = False) -> None:
    """``per_token``'s statistics in a few batched passes (``per_token_passes``).

    In a pass of positions ``p_1..p_j`` at length ``L``, row ``i * b + s`` of the batch is
    sequence ``s`` truncated to ``L`` tokens, and its only output is its projection at ``p_i``.
    Rows do not interact, so one backward pass of the sum gives every row the gradient of its
    own output, which the probes square row by row: the same sums as one backward pass per
    token (``per_token_sequential``), at one forward pass per copy (of about half the length
    in causal models) instead of one per sequence.
    """
    global _rows_are_copies
    b, seq_len = tokens.shape
    directions = directions.to(torch.float32)
    for number, (index, length) in enumerate(per_token_passes(positions, seq_len, causal)):
        copies = len(index) * b
        batch = tokens[:, :length].repeat(len(index), 1)
        at = positions.reshape(-1)[index].repeat_interleave(b)  # row i * b + s: position p_i
        _rows_are_copies = True
        with _per_copy_gradients(copies):
            hidden = output_fn(batch)  # [copies, L, D]
            if number == 0 and head is not None:
                # The head's input mean over every sampled token, as in a single forward pass;
                # its calls below, in the same clock step, add nothing to it.
                with torch.no_grad():
                    head(hidden[:, positions.reshape(-1).to(hidden.device)])
            picked = hidden[torch.arange(copies, device=hidden.device), at.to(hidden.device)]
            if head is not None:
                picked = head(picked[:, None])[:, 0]  # [copies, V] (inputs [copies, 1, D])
            if not _rows_are_copies:
                # Before any gradient was added (the first pass: its forward took the input
                # means, which are those of the fallback's forward pass, the same tokens).
                if number:
                    raise RuntimeError("per_token: a layer's input layout changed between passes")
                raise _MixedCopies("a layer's input does not hold the copies in its leading "
                                   "dimension (expected [copies, tokens, features])")
            dirs = directions.to(picked.device).repeat(len(index), 1)
            (picked.float() * dirs).sum().backward()
