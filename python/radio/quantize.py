"""``radio.quantize``: the Radio method on a PyTorch / Hugging Face model (method.md §2-7).

One run:

1. Find the layers: every ``nn.Linear`` inside the decoder blocks (the largest ``nn.ModuleList``
   of blocks holding linear layers), or those ``filter_fn`` selects. Embeddings and the LM head
   stay full precision unless ``QuantConfig.include_lm_head``.
2. Calibration tokens (``calibration.prepare``), then the output principal directions from the
   full-precision model (eigh of the centred covariance of the final hidden states).
3. ``rounds`` times: backpropagate ``sequences_per_round`` sequences through the CURRENT
   quantized model, accumulating per-group squared gradients and input means in the layer probes
   (``sensitivity``); regroup rows, measure group spreads and allocate depths over ALL layers at
   once (``radio._core.allocate``); re-quantize every layer from its ORIGINAL weights and
   bias-correct ``b <- b - (W_hat - W) x_mean``.
4. The last round quantizes with the per-group refinement, packs every layer
   (``radio._core.pack``) and swaps in ``RadioLinear`` modules.

With ``checkpoint_dir``, the state after every round but the last is saved there
(``radio.checkpoint``), and a later call for the same job resumes after the last saved round.

With ``offload=True`` (``radio.offload``) the weights stay in host memory and FSDP2 streams the
original weights to the GPU block by block; each probe computes its working weight on the GPU
from the streamed original and the last round's quantization.

Under ``torch.distributed`` (``radio.distributed``), every rank runs this same loop on its share
of each round's sequences; the statistics are summed over the ranks before the allocation, which
rank 0 solves and broadcasts. With ``offload`` the weights are sharded across the ranks (every
rank runs as many passes; whole originals are gathered one layer at a time).

All per-round work (statistics, grouping, quantization) is vectorised torch on the model's
device, layer by layer; only the solver and the final bit packing run on the CPU.
"""
from __future__ import annotations

import collections
import functools
import math
import os
import sys
import time
import types
import warnings
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Dict, List, Optional, Tuple

import torch
from torch import nn
from tqdm.auto import tqdm

from . import calibration, checkpoint, distributed, grouping, host_memory, layer, sensitivity, \
    torch_quant
from .round_weighting import RoundWeighting
from . import offload as streaming
from .config import QuantConfig
from .format import LayerGeometry, PackedLayer
from .report import QuantReport

__all__ = ["quantize", "find_decoder_blocks", "find_target_layers"]

# Streamed final round: uint8 indices waiting to be packed. 64 MiB: at Llama-2-13B shapes two
# attention layers (25 MiB) or one MLP layer (67.5 MiB) wait while the GPU quantizes the
# next batch; packing the largest takes ~60 ms on one CPU core. (256 MiB cost 0.19 GiB more
# of the 13B run's host peak.)
_STREAMED_BACKLOG_BYTES = 64 << 20
_OFFLOAD_BYTES = 1 << 30  # keep originals on the GPU only below this size (config: None)
# Activation bytes autograd keeps per token, per (in + out) feature of the linear layers, in
# units of the element size: measured 1.05 on SmolLM2-135M shapes (bf16, sdpa) on an H100.
_ACTIVATION_FACTOR = 1.2


# ----------------------------------------------------------------------------------------------
# Finding the layers
# ----------------------------------------------------------------------------------------------

def find_decoder_blocks(model: nn.Module) -> Optional[Tuple[str, nn.ModuleList]]:
    """The model's decoder blocks: the ``nn.ModuleList`` holding the most linear layers (ties:
    more parameters). Counting the linear layers inside, not the children, keeps a list of
    experts inside one block (MoE) from beating the list of blocks. Returns (qualified name,
    list) or None."""
    best, best_key = None, None
    for name, module in model.named_modules():
        if not isinstance(module, nn.ModuleList):
            continue
        linears = sum(isinstance(m, nn.Linear) for m in module.modules())
        if not linears:
            continue
        key = (linears, sum(p.numel() for p in module.parameters()))
        if best_key is None or key > best_key:
            best, best_key = (name, module), key
    return best


def _output_head(model: nn.Module) -> Optional[nn.Module]:
    getter = getattr(model, "get_output_embeddings", None)
    try:
        head = getter() if callable(getter) else None
    except (NotImplementedError, AttributeError):
        head = None
    return head if isinstance(head, nn.Linear) else None


def find_target_layers(model: nn.Module, filter_fn: Optional[Callable] = None,
                       include_lm_head: bool = False) -> List[Tuple[str, nn.Linear]]:
    """(qualified name, module) of every linear layer ``quantize`` would replace.

    ``filter_fn(module, name) -> bool`` selects among all ``nn.Linear`` modules of the model;
    without it, the linear layers inside the decoder blocks (plus the LM head when asked).
    """
    if filter_fn is not None:
        return [(name, m) for name, m in model.named_modules()
                if isinstance(m, nn.Linear) and filter_fn(m, name)]
    found = find_decoder_blocks(model)
    targets = []
    if found is not None:
        prefix, blocks = found
        for name, m in blocks.named_modules():
            if isinstance(m, nn.Linear):
                targets.append((f"{prefix}.{name}" if prefix else name, m))
    head = _output_head(model) if include_lm_head else None
    if head is not None:
        head_name = next(name for name, m in model.named_modules() if m is head)
        if all(m is not head for _, m in targets):
            targets.append((head_name, head))
    return targets


def _model_context(model: nn.Module) -> Optional[int]:
    cfg = getattr(model, "config", None)
    for key in ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length"):
        value = getattr(cfg, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def _vocab_size(model: nn.Module) -> Optional[int]:
    value = getattr(getattr(model, "config", None), "vocab_size", None)
    if isinstance(value, int) and value > 0:
        return value
    emb = getattr(model, "get_input_embeddings", None)
    try:
        emb = emb() if callable(emb) else None
    except (NotImplementedError, AttributeError):
        emb = None
    return emb.num_embeddings if isinstance(emb, nn.Embedding) else None


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


def _extract_hidden(out) -> torch.Tensor:
    for key in ("last_hidden_state", "logits"):
        value = getattr(out, key, None)
        if isinstance(value, torch.Tensor):
            return value
    if isinstance(out, (tuple, list)):
        return out[0]
    if isinstance(out, torch.Tensor):
        return out
    raise ValueError(f"cannot find the output tensor in a {type(out).__name__}; expected a "
                     "tensor, a tuple or a model output with last_hidden_state / logits")


def _output_root(model: nn.Module) -> nn.Module:
    """The module the calibration calls: an HF causal LM's ``base_model``, else the model."""
    base = getattr(model, "base_model", None)
    return base if isinstance(base, nn.Module) else model


def _output_function(model: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """tokens [b, T] -> final hidden states [b, T, D] (the LM head's input) of HF causal LMs
    (their ``base_model``), or the output of any other model."""
    target = _output_root(model)

    def run(tokens: torch.Tensor) -> torch.Tensor:
        try:
            out = target(input_ids=tokens, use_cache=False)
        except TypeError:
            out = target(tokens)
        return _extract_hidden(out)

    return run


# ----------------------------------------------------------------------------------------------
# Targets
# ----------------------------------------------------------------------------------------------

def _describe_target(bits, size, max_distortion) -> Tuple[str, dict]:
    if size is not None and max_distortion is not None:
        raise ValueError("give at most one of size= and max_distortion= (they replace bits=), "
                         f"got size={size!r} and max_distortion={max_distortion!r}")
    if size is not None:
        return f"size={size} bytes", {"size": size}
    if max_distortion is not None:
        return f"max_distortion={max_distortion} (relative)", {"max_distortion": max_distortion}
    if bits is None:
        raise ValueError("give a target: bits=, size= or max_distortion=")
    return f"bits={bits} per weight (all-in)", {"bits": bits}


def _check_target_reachable(target: dict, geometries: List[Tuple[LayerGeometry, bool]]) -> None:
    """The checks ``layer.allocate`` makes, before any expensive work."""
    total = sum(g.out_features * g.in_features for g, _ in geometries)
    side = sum(8 * g.side_bytes(b) for g, b in geometries)
    side_bpw = side / total
    if "bits" in target:
        bits = layer._check_number("bits", target["bits"])
        if not side_bpw < bits <= 8.0:
            raise ValueError(f"bits={bits} is outside the reachable range: the side information "
                             f"alone costs {side_bpw:.4f} bits per weight at these group sizes; "
                             f"expected bits in ({side_bpw:.4f}, 8]")
    elif "size" in target:
        size = layer._check_number("size", target["size"])
        if not side / 8 < size <= total:
            raise ValueError(f"size={size:.0f} bytes is outside the reachable range: the side "
                             f"information alone takes {side / 8:.0f} bytes; expected size in "
                             f"({side / 8:.0f}, {total}] (8 bits per weight)")
    else:
        d = layer._check_number("max_distortion", target["max_distortion"])
        if not 0.0 < d <= 1.0:
            raise ValueError(f"max_distortion={d} must be in (0, 1]: the modelled distortion "
                             "relative to every group at 0 bits")


# ----------------------------------------------------------------------------------------------
# The session: probes installed, statistics, rounds
# ----------------------------------------------------------------------------------------------

@torch.no_grad()
def _requantized(original: torch.Tensor, stats, depth: torch.Tensor, rows_per_group: int,
                 quantizer: str, refine, symmetric: bool, laplace: bool) -> torch.Tensor:
    """A streamed layer's working weight: its original quantized as ``requantize`` did (the
    same function of the same inputs), in the original's dtype."""
    q = torch_quant.quantize_layer(
        original, stats.row_perm, stats.col_perm, depth, rows_per_group, quantizer, refine,
        symmetric, mu0=stats.location if laplace else None,
        spread=stats.spread if laplace else None, need_indices=False)
    return q.w_hat.reshape(original.shape).to(original.dtype)


@torch.no_grad()
def _is_causal(output_fn, tokens: torch.Tensor, probe_len: int = 64) -> bool:
    """Whether a sequence's outputs before a position ignore the tokens after it (a causal LM:
    ``per_token`` may then truncate each token's copy after it). One batch of two copies of a
    sequence whose second halves differ (the same kernels for both rows): the first halves'
    outputs must agree within 1e-3 (relative RMS; a causal model's agree exactly), where a
    bidirectional model's differ by far more."""
    length = min(probe_len, tokens.shape[1])
    if length < 2:
        return True
    half = length // 2
    pair = tokens[:1, :length].repeat(2, 1)
    # Another suffix, every token changed, within the ids seen (valid for the embedding).
    pair[1, half:] = (pair[0, half:] + 1) % max(int(tokens.max()) + 1, 2)
    out = output_fn(pair).float()[:, :half]
    diff = (out[0] - out[1]).square().mean().sqrt()
    return bool(diff <= 1e-3 * out[0].square().mean().sqrt())


def _checkpointed(forward, *args, **kwargs):
    if torch.is_grad_enabled():
        return torch.utils.checkpoint.checkpoint(forward, *args, use_reentrant=False, **kwargs)
    return forward(*args, **kwargs)


class _Session:
    """Owns the model while it is being quantized; puts everything back on failure."""

    def __init__(self, model: nn.Module, targets: List[Tuple[str, nn.Linear]],
                 config: QuantConfig, device: torch.device, progress: bool) -> None:
        self.model = model
        self.targets = targets
        self.config = config
        self.device = device
        self.progress = progress
        self.clock = sensitivity.CalibrationClock()
        self.states: List[sensitivity.LayerState] = []
        self.probes: Dict[str, sensitivity.LayerProbe] = {}
        self.head_name: Optional[str] = None
        head = _output_head(model)
        for name, module in targets:
            if module is head:
                self.head_name = name
        self._saved_requires_grad = [(p, p.requires_grad) for p in model.parameters()]
        self._was_training = model.training
        self._patched_blocks: List[nn.Module] = []
        self._installed = False
        self._copy_stream = None
        self.streamed = False
        # Streamed over several ranks: each holds a block of rows of every original (FSDP's
        # sharding), gathered whole one layer at a time where a layer is read (``full_original``).
        self.sharded = False
        # Streamed runs: frees a layer's host original once its packed layer has replaced it
        # (set by ``stream``), and the layers replaced so, in order (``swapped``).
        self._release_original: Optional[Callable[[sensitivity.LayerState], None]] = None
        self.swapped: List[str] = []
        self.causal: Optional[bool] = None  # per_token: found by _is_causal on the first batch

    # -- install / restore ----------------------------------------------------------------------
    def install(self, offload: bool, has_bias: bool, streamed: bool = False) -> None:
        """Replace the target layers by probes. ``offload``: originals in host memory.
        ``streamed`` (``quantize(offload=True)``): the model is in host memory and will be
        streamed by FSDP; every probe owns its layer's original weight as a parameter (FSDP's
        copy becomes the only one, ``stream``), and the statistics live on the compute device."""
        cfg = self.config
        self.streamed = streamed
        target_ids = {id(m) for _, m in self.targets}
        # Weights shared with a module we do not replace (tied embeddings) must not be
        # overwritten in place: such layers get their own working copy.
        foreign = {p.data_ptr() for m in self.model.modules() if id(m) not in target_ids
                   for p in m.parameters(recurse=False)}
        for p, _ in self._saved_requires_grad:
            p.requires_grad_(False)
        self.model.eval()
        for name, module in self.targets:
            w = module.weight.detach()
            if streamed:
                self._install_streamed(name, module, w, has_bias)
                continue
            if offload:
                original = w.to("cpu", copy=True)
                if w.is_cuda:
                    original = original.pin_memory()
            else:
                original = w.clone()
            working = w.clone() if w.data_ptr() in foreign else w
            n, k = w.shape
            gs = cfg.rows_per_group_for(n)
            bias = module.bias.detach().clone() if module.bias is not None else \
                torch.zeros(n, dtype=w.dtype, device=w.device)
            state = sensitivity.LayerState(
                name=name, module=module, rows_per_group=gs, weight=working, bias=bias,
                original=original,
                original_bias=None if module.bias is None else
                module.bias.detach().to(torch.float32).clone(),
                row_log2_var=grouping.row_log2_variance(w),
                row_perm=grouping.row_order(grouping.row_log2_variance(w),
                                            torch.ones(n, device=w.device)),
                g2_sum=torch.zeros(grouping.chunk_count(n, gs), k, dtype=torch.float32,
                                   device=w.device),
                row_g2_sum=torch.zeros(n, dtype=torch.float64, device=w.device),
                x_sum=torch.zeros(k, dtype=torch.float64, device=w.device),
                has_bias=has_bias or module.bias is not None)
            self.states.append(state)
            probe = sensitivity.LayerProbe(state, self.clock)
            self.probes[name] = probe
            _set_submodule(self.model, name, probe)
        self._installed = True

    def _install_streamed(self, name: str, module: nn.Linear, w: torch.Tensor,
                          has_bias: bool) -> None:
        cfg, dev = self.config, self.device
        n, k = w.shape
        gs = cfg.rows_per_group_for(n)
        row_var = grouping.row_log2_variance(w.to(dev))
        bias = module.bias.detach().to(dev, copy=True) if module.bias is not None else \
            torch.zeros(n, dtype=w.dtype, device=dev)
        state = sensitivity.LayerState(
            name=name, module=module, rows_per_group=gs, weight=w, bias=bias, original=w,
            original_bias=None if module.bias is None else
            module.bias.detach().to(dev, torch.float32, copy=True),
            row_log2_var=row_var,
            row_perm=grouping.row_order(row_var, torch.ones(n, device=dev)),
            g2_sum=torch.zeros(grouping.chunk_count(n, gs), k, dtype=torch.float32, device=dev),
            row_g2_sum=torch.zeros(n, dtype=torch.float64, device=dev),
            x_sum=torch.zeros(k, dtype=torch.float64, device=dev),
            has_bias=has_bias or module.bias is not None)
        self.states.append(state)
        probe = sensitivity.LayerProbe(state, self.clock, own_weight=True)
        self.probes[name] = probe
        _set_submodule(self.model, name, probe)

    def stream(self, root: nn.Module, blocks: nn.ModuleList) -> "streaming.StreamedModel":
        """Wrap the model with FSDP2 (radio.offload). FSDP's pinned host copy of each original
        weight becomes the only one: as each unit is wrapped, the state and the replaced
        ``nn.Linear`` are pointed at it and the model's own tensor is let go (host memory stays
        ~1x the model, not 2x). The working weights are never stored: every probe computes its
        own from the streamed original (``LayerState.recipe``, set by ``requantize``)."""
        by_probe = {id(self.probes[s.name]): s for s in self.states}

        def adopt(unit: nn.Module) -> None:
            for module in unit.modules():
                state = by_probe.get(id(module))
                if state is not None:
                    host = streaming.StreamedModel.local_weight(module.weight)
                    state.module.weight.data = host
                    state.weight = state.original = host

        stream = streaming.StreamedModel(self.model, root, blocks,
                                         [self.probes[s.name] for s in self.states],
                                         self.device, on_wrapped=adopt)
        self.sharded = stream.world > 1

        def release(state: sensitivity.LayerState) -> None:
            # FSDP's host storage of this original (no copy reads it any more: the final round
            # streams nothing and its batch's device copy was waited for) is freed in place;
            # the replaced nn.Linear keeps an empty weight instead of a dangling one.
            stream.free_host_storage(state.original)
            state.module.weight.data = state.original.new_empty(0)
            state.original = state.weight = None

        self._release_original = release
        return stream

    def enable_checkpointing(self, blocks: Optional[nn.ModuleList], count: int) -> None:
        """Recompute the first ``count`` decoder blocks in the backward pass (the others keep
        their activations: only as much recomputation as the memory budget needs)."""
        if blocks is None:
            return
        for block in list(blocks)[:count]:
            block.forward = functools.partial(_checkpointed, block.forward)
            self._patched_blocks.append(block)

    def _unpatch_blocks(self) -> None:
        for block in self._patched_blocks:
            if "forward" in block.__dict__:
                del block.forward
        self._patched_blocks = []

    def restore(self) -> None:
        """Undo everything (after a failure): original modules and weights back."""
        self._unpatch_blocks()
        if self._installed:
            swapped = set(self.swapped)
            for state in self.states:
                if state.name in swapped:  # quantized for good: its original is freed
                    continue
                module = state.module
                if self.sharded:  # this rank holds a block of rows: the others send theirs
                    module.weight.data = distributed.gather_rows(
                        state.original, state.out_features, torch.device("cpu"))
                elif state.weight.data_ptr() == module.weight.data_ptr():
                    module.weight.data.copy_(state.original.to(module.weight.device))
                _set_submodule(self.model, state.name, module)
        self._finish_model()

    def _finish_model(self) -> None:
        for p, flag in self._saved_requires_grad:
            p.requires_grad_(flag)
        self.model.train(self._was_training)

    # -- output directions ----------------------------------------------------------------------
    @torch.no_grad()
    def output_directions(self, calib: calibration.CalibrationSet, output_fn, micro_batch: int
                          ) -> torch.Tensor:
        cfg = self.config
        count = min(len(calib), cfg.pca_sequences or len(calib))
        cov = None
        bar = tqdm(total=count, desc="radio: output covariance", unit="seq",
                   disable=not self.progress, leave=False)
        mine = distributed.my_indices(count)  # all of them in a single process
        steps = -(-len(mine) // micro_batch)
        if self.sharded:  # the same number of forward passes on every rank (FSDP collectives)
            steps = -(-len(distributed.my_indices_of(0, count)) // micro_batch)
        for step in range(steps):
            chunk = mine[step * micro_batch:(step + 1) * micro_batch]
            tokens = calib.tokens[chunk or [0]].to(self.device)
            h = output_fn(tokens)
            if not chunk:
                continue  # a lockstep pass: its outputs are not added
            if cov is None:
                cov = sensitivity.OutputCovariance(h.shape[-1], h.device)
            cov.add(h)
            bar.update(tokens.shape[0])
        bar.close()
        if distributed.is_distributed():
            # Rank 0 always has sequence 0; a rank without sequences adds zeros.
            dim = distributed.broadcast_object(None if cov is None else cov.sum.numel())
            if cov is None:
                cov = sensitivity.OutputCovariance(dim, self.device)
            count_sum = torch.tensor([float(cov.count)], dtype=torch.float64)
            distributed.all_reduce_sum([cov.sum, cov.outer, count_sum])
            cov.count = int(count_sum.item())
        covariance = cov.covariance()
        if self.head_name is None:
            return sensitivity.principal_directions(covariance, cfg.pca_components)
        head_state = next(s for s in self.states if s.name == self.head_name)
        w0 = self.full_original(head_state).to(self.device, torch.float32)
        hidden_side = sensitivity.logit_directions(covariance, w0, cfg.pca_components)
        return (hidden_side.to(self.device) @ w0.t()).contiguous()  # [k, V]: unit vectors u_k

    # -- one round ------------------------------------------------------------------------------
    def backprop(self, tokens: torch.Tensor, directions: torch.Tensor, positions, output_fn,
                 generator: torch.Generator, signs: Optional[torch.Tensor] = None,
                 record: bool = True) -> None:
        """The statistics of one micro-batch. ``record=False``: the same passes (a sharded
        streamed run's ranks must all run as many), adding nothing; give ``signs`` then, so
        that the shared generator is not drawn from."""
        if self.config.estimator == "per_token" and self.causal is None:
            self.causal = _is_causal(output_fn, tokens)
            if not self.causal:
                warnings.warn("per_token: the model's outputs depend on later tokens (not a "
                              "causal LM?): every sampled token's copy runs at full length, "
                              "about twice the work", stacklevel=2)
        if record:
            for state in self.states:
                state.collect = True
            self.clock.step += 1
        elif signs is None and self.config.estimator == "random_sign":
            raise ValueError("backprop(record=False) needs the random signs (signs=)")
        head = self.probes[self.head_name] if self.head_name is not None else None
        try:
            with torch.enable_grad():
                sensitivity.backpropagate(output_fn, tokens, directions, positions,
                                          self.config.estimator, generator, head=head,
                                          signs=signs, causal=bool(self.causal))
        finally:
            for state in self.states:
                state.collect = False
                if record:
                    state.passes += tokens.shape[0]

    # -- per-round work, batched over layers of one shape -----------------------------------
    def layer_batches(self, max_elements: int = 1 << 26) -> List[List[sensitivity.LayerState]]:
        """The layers in batches of one shape (and bias flag), each at most ``max_elements``
        weights (at least one layer): the per-round work runs as a few large kernels per batch
        instead of dozens of small ones per layer."""
        groups: Dict[tuple, List[sensitivity.LayerState]] = {}
        for state in self.states:
            key = (state.out_features, state.in_features, state.rows_per_group, state.has_bias)
            groups.setdefault(key, []).append(state)
        batches = []
        for (n, k, _, _), states in groups.items():
            take = max(1, max_elements // (n * k))
            batches.extend(states[i:i + take] for i in range(0, len(states), take))
        return batches

    def _load(self, batch, stream):
        """Start copying a batch's original weights to the device (on ``stream``)."""
        if stream is None:
            return [s.original.to(self.device) for s in batch], None
        with torch.cuda.stream(stream):
            parts = [s.original.to(self.device, non_blocking=True) for s in batch]
            event = torch.cuda.Event()
            event.record(stream)
        return parts, event

    def originals(self, batches):
        """Yield ``(batch, float32 [L, N, K] original weights on the device)``. Offloaded
        originals come from pinned memory on a side stream, the next batch's copy overlapping
        this batch's work."""
        if self.sharded:
            yield from self._gathered_originals(batches)
            return
        offloaded = self.states[0].original.device != self.device
        stream = None
        if offloaded and self.device.type == "cuda":
            # One copy stream for the whole run: the caching allocator pools blocks per stream,
            # so a new stream per pass would strand every pass's blocks in its own pool.
            if self._copy_stream is None:
                self._copy_stream = torch.cuda.Stream(self.device)
            stream = self._copy_stream
        pending = self._load(batches[0], stream) if batches else None
        for i, batch in enumerate(batches):
            parts, event = pending
            if i + 1 < len(batches):
                pending = self._load(batches[i + 1], stream)
            if event is not None:
                current = torch.cuda.current_stream(self.device)
                current.wait_event(event)
                for part in parts:  # allocated on the side stream, used on this one
                    part.record_stream(current)
            n, k = parts[0].shape
            stacked = torch.empty(len(parts), n, k, dtype=torch.float32, device=self.device)
            for j, part in enumerate(parts):
                stacked[j].copy_(part)
            del parts
            yield batch, stacked

    def full_original(self, state: sensitivity.LayerState) -> torch.Tensor:
        """The layer's whole original weight: gathered from every rank's rows when sharded (a
        collective: every rank asks for the same layers in the same order), on the device."""
        if self.sharded:
            return distributed.gather_rows(state.original, state.out_features, self.device)
        return state.original

    def _gathered_originals(self, batches):
        """``originals`` of a sharded run: each layer gathered whole, one at a time, into
        the batch's float32 stack (no side stream: the gathers are collectives)."""
        for batch in batches:
            n, k = batch[0].out_features, batch[0].in_features
            stacked = torch.empty(len(batch), n, k, dtype=torch.float32, device=self.device)
            for j, state in enumerate(batch):
                stacked[j].copy_(self.full_original(state))
            yield batch, stacked

    def plan(self, target: dict, batches) -> Tuple[layer.Allocation, float]:
        """Regroup every layer with its current statistics, then allocate over all layers.
        Returns the allocation and the seconds the solver took."""
        cfg = self.config
        for batch, weights in self.originals(batches):
            gs = batch[0].rows_per_group
            row_g2_sum = torch.stack([s.row_g2_sum for s in batch])
            new_perm = grouping.row_order(torch.stack([s.row_log2_var for s in batch]),
                                          row_g2_sum)
            g2_sum = grouping.remap_group_sums(torch.stack([s.g2_sum for s in batch]),
                                               torch.stack([s.row_perm for s in batch]),
                                               new_perm, row_g2_sum, gs)
            rows = grouping.rows_per_chunk(batch[0].out_features, gs, self.device)
            group_g2 = g2_sum / rows[None, :, None].to(torch.float32)
            stats = layer.statistics_batch(weights, new_perm, group_g2, gs, batch[0].has_bias)
            for i, state in enumerate(batch):
                state.g2_sum, state.row_perm, state.stats = g2_sum[i], new_perm[i], stats[i]
        t = time.perf_counter()
        # Solved once (rank 0) and broadcast; an error there is raised on every rank.
        alloc = None
        if distributed.is_main():
            try:
                alloc = layer.allocate([s.stats for s in self.states], rounding=cfg.rounding,
                                       max_depth=cfg.max_depth, **target)
            except Exception as error:  # noqa: BLE001 - re-raised below, on every rank
                if not distributed.is_distributed():
                    raise
                alloc = error
        alloc = distributed.broadcast_object(alloc)
        if isinstance(alloc, Exception):
            raise alloc
        return alloc, time.perf_counter() - t

    @torch.no_grad()
    def requantize(self, alloc: layer.Allocation, batches, refine: bool, final: bool
                   ) -> Dict[str, PackedLayer]:
        """Quantize every layer from its original weight at the allocated depths; update the
        working weights and biases; pack when ``final`` (bit packing runs on CPU threads while
        the GPU quantizes the next batch).

        A streamed run's final round builds each packed layer in host memory as soon as its
        bit packing is done, puts its ``RadioLinear`` in the model and frees the layer's host
        original (``_swap_in``), so host memory holds the originals not yet packed plus the
        packed layers done, never both of every layer (docs/design.md, "Offload")."""
        cfg = self.config
        depth_of = {state.name: d for state, d in zip(self.states, alloc.depths)}
        laplace = cfg.quantizer == "laplace"
        jobs = {}
        workers = min(8, os.cpu_count() or 1)
        pool = ThreadPoolExecutor(max_workers=workers) if final else None
        # Packing jobs not yet done hold their uint8 indices (1 byte per weight, half a 16-bit
        # model if all piled up): at most 2 per worker wait, the GPU waits for the oldest. A
        # streamed run, whose host memory is the bound, also keeps their indices within
        # _STREAMED_BACKLOG_BYTES (Llama-2-13B shapes on the H100, unbounded: the final round's
        # host peak was 0.38 GiB above the calibration rounds' with 16 jobs of up to 70 MB).
        unfinished = collections.deque()  # (state, bytes of its indices): jobs in ``jobs``
        waiting_bytes = 0  # their indices, summed
        packed: Dict[str, PackedLayer] = {}

        def settle(state: sensitivity.LayerState) -> None:
            """Wait for the layer's packing, assemble its packed layer (and, streamed, swap it
            in and free the original)."""
            future, side, bias = jobs.pop(state.name)
            st = state.stats
            packed[state.name] = layer.packed_layer(
                st.geometry, cfg.quantizer, st.row_perm, st.col_perm, state.depth, side, bias,
                qweight=future.result())
            if self.streamed:
                self._swap_in(state, packed[state.name])

        bar = tqdm(total=len(self.states), desc="radio: final quantization", unit="layer",
                   disable=not (self.progress and final), leave=False)
        try:
            for batch, weights in self.originals(batches):
                st = [s.stats for s in batch]
                depth = torch.stack([depth_of[s.name] for s in batch]).to(self.device)
                q = torch_quant.quantize_layers(
                    weights, torch.stack([x.row_perm for x in st]),
                    torch.stack([x.col_perm for x in st]), depth, batch[0].rows_per_group,
                    cfg.quantizer, cfg.refine_search if refine else False, cfg.symmetric,
                    mu0=torch.stack([x.location for x in st]) if laplace else None,
                    spread=torch.stack([x.spread for x in st]) if laplace else None,
                    need_indices=final)
                biases = None
                if batch[0].has_bias:
                    biases = torch.stack([
                        torch.zeros(weights.shape[1], device=self.device)
                        if s.original_bias is None else s.original_bias.to(self.device)
                        for s in batch])
                    if cfg.bias_correction:
                        x_mean = torch.stack([s.x_mean().to(self.device) for s in batch])
                        biases = biases - torch.bmm(q.w_hat - weights, x_mean[:, :, None])[..., 0]
                for i, state in enumerate(batch):
                    if self.streamed:  # the probe recomputes this w_hat from the original
                        state.recipe = functools.partial(
                            _requantized, stats=st[i], depth=depth[i],
                            rows_per_group=batch[0].rows_per_group, quantizer=cfg.quantizer,
                            refine=cfg.refine_search if refine else False,
                            symmetric=cfg.symmetric, laplace=laplace)
                    else:
                        state.weight.copy_(q.w_hat[i])
                    if biases is not None:
                        state.bias.copy_(biases[i])
                    state.depth = depth[i]
                    if final:
                        indices = q.indices[i].cpu()
                        # Keep only the small side tensors: holding q.layer(i) would keep the
                        # float32 w_hat of every layer alive until the end.
                        side = torch_quant.LayerQuantization(q.scale[i], q.loc[i], None, None)
                        bias = None if biases is None else biases[i]
                        if self.streamed:  # the packed layer is assembled in host memory
                            side = torch_quant.LayerQuantization(side.scale.cpu(),
                                                                 side.loc.cpu(), None, None)
                            bias = None if bias is None else bias.cpu()
                        while unfinished and (len(unfinished) >= 2 * workers or (
                                self.streamed and waiting_bytes + indices.numel()
                                > _STREAMED_BACKLOG_BYTES)):
                            done, nbytes = unfinished.popleft()
                            waiting_bytes -= nbytes
                            settle(done)
                        future = pool.submit(layer.pack, indices, depth[i], state.rows_per_group)
                        unfinished.append((state, indices.numel()))
                        waiting_bytes += indices.numel()
                        del indices
                        jobs[state.name] = (future, side, bias)
                del weights, q
                bar.update(len(batch))
            while unfinished:
                settle(unfinished.popleft()[0])
            packed = {state.name: packed[state.name] for state in self.states if final}
        finally:
            bar.close()
            if pool is not None:
                pool.shutdown(wait=True)
        return packed

    def _swap_in(self, state: sensitivity.LayerState, packed: PackedLayer) -> None:
        """A streamed run's final round: the layer's RadioLinear replaces its probe and the host
        original is freed. From the first swap on, a failure cannot restore this layer:
        ``swapped`` names the layers that stay quantized (``quantize`` raises with them)."""
        from .nn import RadioLinear

        if distributed.is_distributed():
            # Every rank quantized the same statistics at the same depths; rank 0's packed
            # layer is the answer on every rank (the ranks settle layers in the same order).
            distributed.broadcast_tensors(list(packed.tensors().values()))
        module = RadioLinear.from_packed(packed, dtype=state.original.dtype)
        _set_submodule(self.model, state.name, module)
        self.swapped.append(state.name)
        self.probes.pop(state.name, None)
        self._release_original(state)

    def finish(self, packed: Dict[str, PackedLayer]) -> None:
        """Swap the probes for RadioLinear modules holding the packed layers (those not
        swapped in already by a streamed final round)."""
        from .nn import RadioLinear

        swapped = set(self.swapped)
        # Build every module first: if one fails, restore() still finds the model intact.
        modules = {state.name: RadioLinear.from_packed(packed[state.name],
                                                       dtype=state.weight.dtype)
                   for state in self.states if state.name not in swapped}
        self._unpatch_blocks()
        self._finish_model()
        self._saved_requires_grad = []
        for state in self.states:
            if state.name not in swapped:
                _set_submodule(self.model, state.name, modules.pop(state.name))
            # Drop what the session held (originals in pinned CPU memory, the full-precision
            # module), so that its memory is freed layer by layer.
            state.original = state.weight = state.stats = state.module = None
            self.probes.pop(state.name, None)


# ----------------------------------------------------------------------------------------------
# Memory planning
# ----------------------------------------------------------------------------------------------

def activation_budget_gb(config: QuantConfig, model: nn.Module, device: torch.device,
                         resident_bytes: Optional[int] = None) -> float:
    """GiB the calibration activations may use: ``config.activation_budget_gb``, or, when unset,
    what keeps the whole run near 20 GiB of GPU memory (so a 7B model in 16-bit stays below
    24 GB): 20 GiB - 1.1 x the model's parameters - 1.5 GiB of working buffers, within
    [1, 16] GiB and at most 60% of the memory free now. ``resident_bytes``: the parameter bytes
    on the GPU when that is not the whole model (a streamed model: a few blocks)."""
    if config.activation_budget_gb is not None:
        return float(config.activation_budget_gb)
    params = (sum(p.numel() * p.element_size() for p in model.parameters())
              if resident_bytes is None else resident_bytes) / (1 << 30)
    budget = min(16.0, max(1.0, 20.0 - 1.1 * params - 1.5))
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        budget = min(budget, 0.6 * free / (1 << 30))
    return budget


def _plan_memory(config: QuantConfig, targets, blocks: Optional[nn.ModuleList], seq_len: int,
                 device: torch.device, dtype: torch.dtype, budget_gb: float) -> Tuple[int, int]:
    """(decoder blocks to checkpoint, sequences per forward/backward pass).

    The activations autograd keeps for one token are estimated from the linear layers' widths
    (their inputs and outputs, with norms, rotary embeddings and attention adding about half as
    much again). Without a GPU there is no budget: no checkpointing unless asked for, and
    micro-batches of about 2048 tokens. On a GPU the largest micro-batch that fits
    ``activation_budget_gb`` is used; when not even one sequence fits, the first blocks are
    recomputed in the backward pass (checkpointed), as few as the budget needs.
    """
    per_round = config.sequences_per_round
    n_blocks = len(blocks) if blocks is not None else 0
    # per_token runs each micro-batch as passes of at most the micro-batch's tokens
    # (sensitivity.per_token_passes): the same activation memory as random_sign.
    if config.micro_batch is not None:
        micro = min(config.micro_batch, per_round)
    else:
        micro = None
    if device.type != "cuda":
        return (n_blocks if config.checkpointing else 0,
                micro or max(1, min(per_round, 2048 // seq_len)))
    elem = torch.finfo(dtype).bits // 8
    widths = sum(m.in_features + m.out_features for _, m in targets)
    per_seq = _ACTIVATION_FACTOR * elem * widths * seq_len
    budget = budget_gb * (1 << 30)
    if micro is None:
        micro = int(max(1, min(per_round, budget // max(per_seq, 1))))
        # Same number of passes, evenly filled (16 as 8 + 8 rather than 11 + 5): less memory.
        micro = -(-per_round // -(-per_round // micro))
    if config.checkpointing is not None:
        return (n_blocks if config.checkpointing else 0), micro
    need = per_seq * micro
    if need <= budget or n_blocks == 0:
        return 0, micro
    # A checkpointed block keeps only its input ([T, hidden] per sequence) instead of all its
    # activations.
    hidden = max(m.in_features for _, m in targets)
    saved_per_block = max((per_seq / n_blocks - elem * seq_len * hidden) * micro, 1.0)
    return min(n_blocks, math.ceil((need - budget) / saved_per_block)), micro


def _streamed_resident_bytes(root: nn.Module, blocks: nn.ModuleList) -> int:
    """Parameter bytes a streamed model keeps on the GPU at once: the root's own parameters
    (embeddings, final norm) and three blocks (the one computing, the prefetched one, and the
    one being freed)."""
    def size(params):
        return sum(p.numel() * p.element_size() for p in params)
    in_blocks = {id(p) for p in blocks.parameters()}
    root_own = size(p for p in root.parameters() if id(p) not in in_blocks)
    return root_own + 3 * max(size(b.parameters()) for b in blocks)


def _plan_streamed_memory(config: QuantConfig, targets, blocks: nn.ModuleList, seq_len: int,
                          device: torch.device, dtype: torch.dtype, budget_gb: float
                          ) -> Tuple[int, int]:
    """``_plan_memory`` for a streamed model. On a GPU every block is checkpointed, whatever
    ``config.checkpointing`` says: a probe computes its working weight from the streamed
    original, and autograd would otherwise keep every layer's working weight until the backward
    pass (the whole model on the GPU). Checkpointing keeps each block's input per sequence plus
    one block's activations at a time, so micro-batches can be large, which matters: every
    micro-batch streams the whole model to the GPU twice (forward, backward). On the CPU (tests)
    the rule of ``_plan_memory``, so that the result can be compared with ``offload=False``."""
    if device.type != "cuda":
        return _plan_memory(config, targets, blocks, seq_len, device, dtype, budget_gb)
    per_round, n_blocks = config.sequences_per_round, len(blocks)
    if config.micro_batch is not None:
        return n_blocks, min(config.micro_batch, per_round)
    elem = torch.finfo(dtype).bits // 8
    widths = sum(m.in_features + m.out_features for _, m in targets)
    hidden = max(m.in_features for _, m in targets)
    per_seq = (elem * seq_len * hidden * n_blocks
               + _ACTIVATION_FACTOR * elem * widths * seq_len / n_blocks)
    micro = int(max(1, min(per_round, budget_gb * (1 << 30) // max(per_seq, 1))))
    micro = -(-per_round // -(-per_round // micro))
    return n_blocks, micro


def _now(device: torch.device) -> float:
    """Wall clock after the device's queued work (phase times would blur otherwise)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def _model_device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


# ----------------------------------------------------------------------------------------------
# The entry point
# ----------------------------------------------------------------------------------------------

def quantize(model: nn.Module, bits: Optional[float] = 4, *, size: Optional[int] = None,
             max_distortion: Optional[float] = None, calib=None,
             config: Optional[QuantConfig] = None, filter_fn: Optional[Callable] = None,
             tokenizer=None, verbose: bool = True,
             checkpoint_dir: Optional[os.PathLike] = None,
             offload: "streaming.OffloadArg" = False) -> nn.Module:
    """Quantize a causal LM (or any model, with ``filter_fn``) with the Radio method, in place.

    Parameters
    ----------
    model : nn.Module
        A transformers causal LM (Llama, Qwen2/3, Mistral, OPT, GPT-NeoX, ...) or any module
        mapping token ids ``[b, T]`` to outputs ``[b, T, D]``. Modified in place and returned:
        its linear layers are replaced by ``radio.nn.RadioLinear``.
    bits : float
        Target average bits per weight over the quantized layers, COUNTING ALL SIDE
        INFORMATION (scales, locations, permutations, depths, biases: ``PackedLayer.nbytes()``).
    size : int, optional
        Target total stored bytes of the quantized layers (replaces ``bits``).
    max_distortion : float in (0, 1], optional
        Target modelled output distortion ``sum_u coef_u 2^(-2 B_u)``, relative to its value with
        every group at 0 bits (replaces ``bits``); the size is whatever it implies.
    calib : list of str | LongTensor [n, T] | iterable of batches | None
        Calibration data (see ``radio.calibration``). ``None`` samples sequences from the model.
    config : QuantConfig, optional
        Hyperparameters; default ``QuantConfig.for_device`` (paper settings on a GPU, the
        ``cpu`` preset otherwise).
    filter_fn : callable(module, name) -> bool, optional
        Choose the ``nn.Linear`` layers to quantize instead of the decoder blocks' layers.
    tokenizer : optional
        Tokenizes text ``calib`` (default: ``model.tokenizer``).
    verbose : bool
        Print the report.
    checkpoint_dir : path, optional
        Save the state after every calibration round there (``radio.checkpoint``: safetensors
        and JSON, replaced atomically), and resume from it when it holds a checkpoint of the
        same job (model, settings, calibration, target): the result is bit-identical to an
        uninterrupted run on the same device. A checkpoint of another job, or a damaged one,
        raises ValueError. The directory is left in place at the end (delete it once the model
        is saved). ``None``: no checkpoints.
    offload : bool or device, optional
        ``True``: the model is bigger than the GPU. It stays in host memory (build or load it on
        the CPU) and PyTorch's FSDP2 (``fully_shard`` with ``CPUOffloadPolicy``, per decoder
        block plus the root) streams the weights to the GPU block by block for every forward
        and backward pass (``radio.offload``). Only the original weights are kept on the host
        (~1x the model, docs/design.md): each layer computes its working (quantized) weight
        on the GPU from the streamed original. Every decoder block is checkpointed (also so
        that large micro-batches fit). The GPU holds a few blocks plus activations. Needs
        ``calib`` (sampling from a streamed model would take hours); not with
        ``checkpoint_dir``. A device
        (``"cuda:1"``) picks the GPU; ``"cpu"`` runs the same path without a GPU (tests). Uses
        the existing process group under torchrun, FSDP sharding every weight's rows across
        its ranks (each host holds ~1/world of the originals; every rank ends with the same
        quantized model), otherwise a 1-rank group made and torn down here. The model is returned in host memory.
        The result equals ``offload=False`` within float rounding. In the final round each
        layer's original is freed as soon as its packed layer replaces it (host memory stays
        near 1x the model instead of 1x + the packed size), so a failure there cannot restore
        everything: every layer is then either quantized (``RadioLinear``) or original, the
        model runs, and a ``RuntimeError`` names the quantized layers (``quantized_layers``);
        a failure before the final round restores the whole model.

    Returns
    -------
    The model, with ``model.radio_report`` (a ``radio.report.QuantReport``).
    """
    start = time.perf_counter()
    seconds: Dict[str, float] = {}
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    device = _model_device(model)
    streamed = offload is not False and offload is not None
    if streamed:
        if config is not None and not isinstance(config, QuantConfig):
            raise ValueError(f"config must be a radio.QuantConfig, got {type(config).__name__}")
        device = streaming.compute_device(offload)
        if checkpoint_dir is not None:
            raise ValueError("offload=True with checkpoint_dir= is not supported: a checkpoint "
                             "holds the working weights, which a streamed run never stores; "
                             "expected checkpoint_dir=None")
        if calib is None:
            raise ValueError("offload=True needs calibration data (calib=: text or token ids): "
                             "sampling sequences from a model streamed block by block from host "
                             "memory would take hours")
    if config is None:
        config = QuantConfig.for_device(device)
    elif not isinstance(config, QuantConfig):
        raise ValueError(f"config must be a radio.QuantConfig, got {type(config).__name__}")
    progress = config.progress and distributed.is_main()
    target_text, target = _describe_target(bits, size, max_distortion)

    targets = find_target_layers(model, filter_fn, config.include_lm_head)
    if not targets:
        raise ValueError(f"found no nn.Linear layers to quantize in {type(model).__name__}: "
                         "expected decoder blocks (an nn.ModuleList of blocks holding linear "
                         "layers) or a filter_fn selecting nn.Linear modules")
    for name, module in targets:
        bad = int((~torch.isfinite(module.weight.detach())).sum())
        if bad:
            raise ValueError(f"layer '{name}' has {bad} non-finite weights (NaN or inf) out of "
                             f"{module.weight.numel()}; expected finite weights")
    has_bias = config.bias_correction
    geometries = [(LayerGeometry(m.out_features, m.in_features,
                                 config.rows_per_group_for(m.out_features)),
                   has_bias or m.bias is not None) for _, m in targets]
    _check_target_reachable(target, geometries)
    # Before calibration and installation: the model's original state names the job.
    model_sha = checkpoint.model_digest(model) if checkpoint_dir is not None else None

    seq_len = config.resolved_seq_len(_model_context(model))
    vocab = _vocab_size(model)
    t = time.perf_counter()
    calib_set = calibration.prepare(
        calib, model, tokenizer=tokenizer, seq_len=seq_len,
        calib_sequences=config.calib_sequences, generate_sequences=config.generate_sequences,
        generate_length=config.resolved_generate_length(seq_len), seed=config.seed,
        device=device, vocab_size=vocab, progress=progress)
    seconds["calibration data"] = time.perf_counter() - t
    seq_len = calib_set.seq_len
    positions = sensitivity.token_positions(seq_len, config.tokens_per_sequence)

    found = find_decoder_blocks(model)
    blocks = found[1] if found is not None else None
    dtype = targets[0][1].weight.dtype
    if streamed:
        root = _output_root(model)
        streaming.check_streamable(model, root, blocks)
        budget_gb = activation_budget_gb(config, model, device,
                                         resident_bytes=_streamed_resident_bytes(root, blocks))
        ckpt_blocks, micro = _plan_streamed_memory(config, targets, blocks, seq_len, device,
                                                   dtype, budget_gb)
        # Rank 0's plan everywhere (the GPUs' free memory may differ): the same micro-batches,
        # and the same passes on every rank.
        ckpt_blocks, micro = distributed.broadcast_object((ckpt_blocks, micro))
        offload_originals = True
    else:
        budget_gb = activation_budget_gb(config, model, device)
        ckpt_blocks, micro = _plan_memory(config, targets, blocks, seq_len, device, dtype,
                                          budget_gb)
        total_bytes = sum(m.weight.numel() * m.weight.element_size() for _, m in targets)
        offload_originals = config.offload_originals if config.offload_originals is not None \
            else (device.type == "cuda" and total_bytes > _OFFLOAD_BYTES)

    job = None if checkpoint_dir is None else checkpoint.job_description(
        model_sha, config, calib_set.tokens, target, micro, device)
    session = _Session(model, targets, config, device, progress)
    history: List[dict] = []
    stream = None
    try:
        session.install(offload_originals, has_bias, streamed=streamed)
        if streamed:
            stream = session.stream(root, blocks)
        output_fn = _output_function(model)
        generator = torch.Generator().manual_seed(config.seed)
        resumed = None if job is None else checkpoint.load(checkpoint_dir, job, session.states)
        t = time.perf_counter()
        if resumed is None:
            directions = session.output_directions(calib_set, output_fn, micro)
        else:
            directions = resumed.directions.to(device)
        seconds["output directions"] = time.perf_counter() - t
        session.enable_checkpointing(blocks, ckpt_blocks)
        batches = session.layer_batches()
        n_dir = directions.shape[0]
        seq_counter = first_round = session.clock.step = 0
        t_backprop = t_plan = t_solver = t_quant = t_save = 0.0
        if resumed is not None:
            if not 0 < resumed.rounds_done < config.rounds:
                raise ValueError(f"checkpoint in {checkpoint_dir} has {resumed.rounds_done} "
                                 f"rounds done; expected 1..{config.rounds - 1}")
            resumed.apply(session.states, generator)
            first_round, seq_counter = resumed.rounds_done, resumed.seq_counter
            session.clock.step = resumed.clock_step
            history = resumed.history
            t_backprop, t_plan, t_solver, t_quant = (
                resumed.timers.get(k, 0.0) for k in ("backprop", "plan", "solver", "quant"))
            del resumed
        bar = tqdm(total=config.rounds * config.sequences_per_round,
                   initial=first_round * config.sequences_per_round,
                   desc="radio: calibration rounds", unit="seq", disable=not progress)
        alloc = None
        packed: Dict[str, PackedLayer] = {}
        per_round = config.sequences_per_round
        # The round's sequences in micro-batches, the same at any number of processes: one
        # random-sign backward pass squares the gradient SUM of its micro-batch, so the
        # statistics depend on how sequences are batched, not on which rank runs a batch.
        micro_batches = [list(range(i, min(i + micro, per_round)))
                         for i in range(0, per_round, micro)]
        if len(micro_batches) < distributed.world_size() and distributed.is_main():
            warnings.warn(f"{len(micro_batches)} micro-batches of {micro} sequences per round "
                          f"for {distributed.world_size()} processes: some ranks add nothing "
                          f"(idle, or repeating passes in lockstep when the weights are "
                          f"sharded); set "
                          "QuantConfig.micro_batch (the same at every scale) lower",
                          stacklevel=2)
        weighting = RoundWeighting(config.round_weighting, history)
        for r in range(first_round, config.rounds):
            t0 = _now(device)
            # The whole round's signs from the shared generator (torch draws them element by
            # element: the same values as per micro-batch): sequence j of the round gets row j
            # on whichever rank runs it.
            round_signs = (sensitivity.rademacher((per_round, positions.numel()), generator)
                           if config.estimator == "random_sign" else None)
            weighting.begin_round(session.states)
            distributed.clear_local_statistics(session.states)
            done = 0
            # Micro-batch m: rank m % world. Sharded weights: every rank runs as many passes
            # (m = -1: micro-batch 0's passes again, adding nothing).
            mine = (distributed.lockstep_indices(len(micro_batches)) if session.sharded
                    else distributed.my_indices(len(micro_batches)))
            for m in mine:
                chunk = micro_batches[max(m, 0)]
                ids = [(seq_counter + j) % len(calib_set) for j in chunk]
                dirs = directions[[(seq_counter + j) % n_dir for j in chunk]]
                session.backprop(calib_set.tokens[ids].to(device), dirs, positions, output_fn,
                                 generator, None if round_signs is None else round_signs[chunk],
                                 record=m >= 0)
                if m >= 0:
                    bar.update(len(chunk))
                    done += len(chunk)
            distributed.all_reduce_states(session.states)
            mass = weighting.end_round(session.states)  # after the all-reduce: alike on all ranks
            bar.update(per_round - done)
            seq_counter += per_round
            t1 = _now(device)
            alloc, solver_seconds = session.plan(target, batches)
            t2 = _now(device)
            t_solver += solver_seconds
            final = r == config.rounds - 1
            refine = config.refine and (final or (config.refine_every > 0 and
                                                  (r + 1) % config.refine_every == 0))
            packed = session.requantize(alloc, batches, refine=refine, final=final)
            t3 = _now(device)
            t_backprop, t_plan, t_quant = t_backprop + t1 - t0, t_plan + t2 - t1, t_quant + t3 - t2
            history.append({"round": r + 1, "log2_V": float(alloc.report.get("log2_V", math.nan)),
                            "bits_per_weight": alloc.bits_per_weight,
                            "relative_distortion": alloc.relative_distortion,
                            "gradient_mass": mass, "seconds": t3 - t0})
            if device.type == "cuda":
                history[-1]["peak_gpu_gib"] = torch.cuda.max_memory_allocated(device) / (1 << 30)
            bar.set_postfix(bpw=f"{alloc.bits_per_weight:.3f}",
                            D=f"{alloc.relative_distortion:.3g}")
            if job is not None and not final:
                t4 = time.perf_counter()
                if distributed.is_main():  # every rank holds the same state: saved once
                    checkpoint.save(checkpoint_dir, job, checkpoint.RoundState.capture(
                        r + 1, seq_counter, session.clock.step, generator, directions, history,
                        {"backprop": t_backprop, "plan": t_plan, "solver": t_solver,
                         "quant": t_quant}, session.states))
                distributed.barrier()
                t_save += time.perf_counter() - t4
        bar.close()
        seconds["backprop"] = t_backprop
        seconds["statistics"] = t_plan - t_solver
        seconds["solver"] = t_solver
        seconds["quantization"] = t_quant
        if job is not None:
            seconds["checkpoints"] = t_save
        if distributed.is_distributed() and not streamed:  # (streamed: done in _swap_in)
            # Every rank quantized the same statistics at the same depths; rank 0's packed
            # layers are the answer on every rank, whatever the ranks' rounding did.
            for state in session.states:
                distributed.broadcast_tensors(list(packed[state.name].tensors().values()))
        if stream is not None:
            stream.close()
        session.finish(packed)
        if streamed:  # the model came in host memory and goes back there
            for name, _ in targets:
                model.get_submodule(name).to("cpu")
            host_memory.return_free_memory()  # the originals freed from the heap, if any
    except BaseException as error:
        if stream is not None:
            stream.close()
        session.restore()
        if session.swapped:
            message = _partly_quantized_message(session, error)
            if isinstance(error, Exception):
                failure = RuntimeError(message)
                failure.quantized_layers = list(session.swapped)
                raise failure from error
            error.add_note(message)  # KeyboardInterrupt and the like keep their type
        raise
    seconds["total"] = time.perf_counter() - start
    settings = config.to_dict()
    settings.update(seq_len=seq_len, micro_batch=micro, checkpointed_blocks=ckpt_blocks,
                    activation_budget_gb=round(budget_gb, 2),
                    offload_originals=offload_originals,
                    output_directions=int(directions.shape[0]))
    if streamed:
        settings["offload"] = str(device)
    if first_round:
        settings["resumed_after_round"] = first_round
    report = QuantReport.build(
        packed, target=target_text, predicted_distortion=alloc.relative_distortion,
        settings=settings, preset=config.preset, estimator=config.estimator,
        calibration=calib_set.describe(), device=str(device), seconds=seconds,
        solver=alloc.report, history=history)
    model.radio_report = report
    if verbose and distributed.is_main():
        print(report)
    return model


def _partly_quantized_message(session: _Session, error: BaseException) -> str:
    done, total = session.swapped, len(session.states)
    return (f"radio.quantize(offload=...) failed during the final packing "
            f"({type(error).__name__}: {error}) after {len(done)} of {total} layers had been "
            f"quantized: {', '.join(done)}. Those are RadioLinear modules now (their original "
            f"weights were freed to keep host memory near 1x the model); the other "
            f"{total - len(done)} layers are their original nn.Linear again, so the model runs, "
            "partly quantized. Quantize a freshly loaded model to get every layer quantized.")


class _CallableModule(types.ModuleType):
    """``radio.quantize`` names both this module and its function. Importing the submodule
    (``from radio.quantize import ...``) rebinds the package attribute to the module, so the
    module forwards calls to the function: ``radio.quantize(model, ...)`` works either way."""

    def __call__(self, *args, **kwargs):
        return quantize(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
