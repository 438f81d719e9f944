"""Perplexity, by the conventions of ../shared/data/README.md.

CRLF -> LF, tokenize the whole text once, cut the ids into windows of ``ctx`` tokens (2048, or the
model's maximum when smaller), drop the partial last window, and report
``PPL = exp(mean next-token NLL)`` over every scored token. With the default ``stride = ctx`` the
windows do not overlap and each scores its ``ctx - 1`` next-token predictions. A smaller stride
gives sliding windows: each later window scores only its last ``stride`` tokens, with the rest
as context.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Union

import torch
from torch import nn

__all__ = ["perplexity", "tokenize", "model_max_length", "dense_linear", "materialize_dense"]


def model_max_length(model) -> Optional[int]:
    """The model's maximum context (``config.max_position_embeddings`` or similar), if known."""
    config = getattr(model, "config", None)
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def tokenize(text: str, tokenizer) -> torch.Tensor:
    """The whole text as one int64 id sequence (CRLF -> LF first), tokenized once."""
    if tokenizer is None:
        raise ValueError("perplexity of a text needs a tokenizer (or pass token ids)")
    text = text.replace("\r\n", "\n")
    ids = tokenizer(text, return_tensors="pt", verbose=False)["input_ids"]
    return ids.reshape(-1).to(torch.int64)


def _as_ids(text_or_ids, tokenizer) -> torch.Tensor:
    if isinstance(text_or_ids, str):
        return tokenize(text_or_ids, tokenizer)
    ids = torch.as_tensor(text_or_ids)
    if ids.dtype.is_floating_point or ids.dtype == torch.bool:
        raise ValueError(f"token ids must be integers, got dtype {ids.dtype}")
    if ids.dim() == 2 and ids.shape[0] == 1:
        ids = ids[0]
    if ids.dim() != 1:
        raise ValueError(f"token ids must be 1-D (or [1, T]), got shape {tuple(ids.shape)}")
    return ids.to(torch.int64)


def _device_of(model) -> torch.device:
    for tensor in list(model.parameters()) + list(model.buffers()):
        if tensor.device.type != "meta":
            return tensor.device
    return torch.device("cpu")


def _logits(model, input_ids: torch.Tensor) -> torch.Tensor:
    out = model(input_ids)
    if isinstance(out, torch.Tensor):
        return out
    logits = getattr(out, "logits", None)
    if logits is None and isinstance(out, (tuple, list)):
        logits = out[0]
    if logits is None:
        raise TypeError(f"model output {type(out).__name__} has no logits")
    return logits


@torch.no_grad()
def perplexity(model, text_or_ids: Union[str, torch.Tensor, Sequence[int]], ctx: int = 2048,
               tokenizer=None, stride: Optional[int] = None, batch_size: int = 1,
               max_windows: Optional[int] = None, progress: bool = True) -> float:
    """Perplexity of ``model`` (a causal LM returning logits) on a text or a token id sequence.

    ``ctx`` is capped at the model's maximum context. ``max_windows`` evaluates only the first
    windows (a shorter slice, for quick runs; say so when reporting). ``batch_size`` windows run
    per forward pass. The NLL is accumulated in float64 from float32 log-probabilities.
    """
    if not isinstance(ctx, int) or ctx < 2:
        raise ValueError(f"ctx must be an int >= 2, got {ctx!r}")
    limit = model_max_length(model)
    if limit is not None:
        ctx = min(ctx, limit)
    stride = ctx if stride is None else stride
    if not isinstance(stride, int) or not 1 <= stride <= ctx:
        raise ValueError(f"stride must be an int in 1..ctx={ctx}, got {stride!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if max_windows is not None and (not isinstance(max_windows, int) or max_windows < 1):
        raise ValueError(f"max_windows must be a positive int or None, got {max_windows!r}")

    ids = _as_ids(text_or_ids, tokenizer)
    vocab = getattr(getattr(model, "config", None), "vocab_size", None)
    if ids.numel() and (int(ids.min()) < 0 or (isinstance(vocab, int) and int(ids.max()) >= vocab)):
        raise ValueError(f"token ids lie in [{int(ids.min())}, {int(ids.max())}]; expected ids "
                         f"in [0, {vocab if isinstance(vocab, int) else 'vocab_size'})")
    n_windows = (ids.numel() - ctx) // stride + 1 if ids.numel() >= ctx else 0
    if n_windows < 1:
        raise ValueError(f"the text has {ids.numel()} tokens, fewer than one window of "
                         f"ctx={ctx}; use a longer text or a smaller ctx")
    if max_windows is not None:
        n_windows = min(n_windows, max_windows)
    starts = [i * stride for i in range(n_windows)]

    device = _device_of(model)
    was_training = model.training
    model.eval()
    total_nll, total_tokens = 0.0, 0
    try:
        from tqdm.auto import tqdm

        batches = range(0, n_windows, batch_size)
        for b0 in tqdm(batches, desc="perplexity", unit="batch", disable=not progress):
            batch_starts = starts[b0:b0 + batch_size]
            windows = torch.stack([ids[s:s + ctx] for s in batch_starts]).to(device)
            logits = _logits(model, windows)
            # Window w predicts tokens 1..ctx-1; a sliding window scores only its new tokens.
            first = torch.tensor([1 if s == 0 else ctx - stride for s in batch_starts],
                                 device=device)
            logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
            nll = -logp.gather(-1, windows[:, 1:, None]).squeeze(-1)  # [B, ctx-1]
            position = torch.arange(1, ctx, device=device)[None, :]
            scored = position >= first[:, None]
            total_nll += float(nll[scored].double().sum())
            total_tokens += int(scored.sum())
    finally:
        model.train(was_training)
    return math.exp(total_nll / total_tokens)


# ----------------------------------------------------------------------------------------------
# Dense evaluation copies of radio models
# ----------------------------------------------------------------------------------------------

@torch.no_grad()
def dense_linear(module) -> nn.Linear:
    """An ``nn.Linear`` holding the weight a ``radio.nn.RadioLinear`` reconstructs.

    The weight is ``radio.ops.dequantize`` of the module's packed tensors (the plain-torch
    reference twin the CUDA kernels are tested against, docs/format.md), computed once in float32
    and cast to the module's activation dtype (float32 when it has none), as is the f16 bias.
    ``y = x @ W.T + b`` through it is what the op computes, up to the order of the sums; the
    weight then costs dense memory, which is why this is for evaluation only.
    """
    from . import ops
    from .nn import RadioLinear

    if not isinstance(module, RadioLinear):
        raise ValueError(f"dense_linear expects a radio.nn.RadioLinear, got {type(module).__name__}")
    dtype = module.dtype or torch.float32
    weight = ops.dequantize(module.qweight, module.scale, module.loc, module.depth,
                            module.row_perm, module.col_perm, module.out_features,
                            module.in_features, module.rows_per_group, module.quantizer)
    linear = nn.Linear(module.in_features, module.out_features, bias=module.bias is not None,
                       device=weight.device, dtype=dtype)
    linear.weight.copy_(weight.to(dtype))
    if module.bias is not None:
        linear.bias.copy_(module.bias.to(dtype))
    return linear.requires_grad_(False)


def materialize_dense(model: nn.Module) -> int:
    """Replace every ``RadioLinear`` of ``model`` by its ``dense_linear``, in place.

    Evaluating a quantized model this way runs each layer as one dense GEMM instead of
    dequantizing the packed weight on every call: the same numbers, much faster for long
    evaluations (the kernels have their own correctness tests). Returns how many were replaced.
    """
    from .nn import RadioLinear

    names = [name for name, m in model.named_modules() if isinstance(m, RadioLinear)]
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, dense_linear(getattr(parent, child)))
    return len(names)
