"""Calibration token sequences for ``radio.quantize`` (the ``calib=`` argument).

Accepted forms:

- a list of strings (or one string), tokenized with the tokenizer passed in (or attached to the
  model as ``model.tokenizer``): joined with blank lines, tokenized once, and cut into
  ``calib_sequences`` windows of ``seq_len`` tokens at fixed-seed random offsets;
- an integer tensor of token ids ``[n, T]`` (longer sequences are cut to ``seq_len``);
- an iterable of batches: tensors ``[b, T]`` / ``[T]`` or dicts holding ``"input_ids"``;
- ``None``: sequences sampled from the model itself (fixed seed, temperature 1), so that
  everything runs offline.
"""
from __future__ import annotations

import dataclasses
from typing import Iterable, Optional

import torch
from tqdm.auto import tqdm


@dataclasses.dataclass
class CalibrationSet:
    tokens: torch.Tensor  # int64 [n, T], CPU
    source: str  # "text", "tokens", "batches" or "generated"

    def __len__(self) -> int:
        return self.tokens.shape[0]

    @property
    def seq_len(self) -> int:
        return self.tokens.shape[1]

    def describe(self) -> str:
        return f"{len(self)} x {self.seq_len} tokens ({self.source})"


def _check_ids(tokens: torch.Tensor, vocab_size: Optional[int], what: str) -> None:
    if tokens.numel() == 0:
        raise ValueError(f"{what} is empty (shape {tuple(tokens.shape)}); expected [n, T] token "
                         "ids with n >= 1 and T >= 2")
    low, high = int(tokens.min()), int(tokens.max())
    if low < 0 or (vocab_size is not None and high >= vocab_size):
        raise ValueError(f"{what} holds token ids in [{low}, {high}]; expected ids in "
                         f"[0, {vocab_size})")


def from_token_tensor(tokens: torch.Tensor, seq_len: int, vocab_size: Optional[int],
                      source: str = "tokens") -> CalibrationSet:
    if not isinstance(tokens, torch.Tensor):
        raise ValueError(f"calibration tokens must be a torch.Tensor, got {type(tokens).__name__}")
    if tokens.dtype.is_floating_point or tokens.dtype.is_complex or tokens.dtype == torch.bool:
        raise ValueError(f"calibration token ids must be an integer tensor, got dtype "
                         f"{tokens.dtype}")
    if tokens.dim() == 1:
        tokens = tokens[None]
    if tokens.dim() != 2:
        raise ValueError(f"calibration token ids must have shape [n, T], got "
                         f"{tuple(tokens.shape)}")
    _check_ids(tokens, vocab_size, "calibration token tensor")
    if tokens.shape[1] < 2:
        raise ValueError(f"calibration sequences have {tokens.shape[1]} token(s); expected at "
                         "least 2")
    return CalibrationSet(tokens[:, :seq_len].to("cpu", torch.int64).contiguous(), source)


def from_text(texts, tokenizer, seq_len: int, count: int, seed: int,
              vocab_size: Optional[int]) -> CalibrationSet:
    if isinstance(texts, str):
        texts = [texts]
    texts = list(texts)
    if not texts or not any(isinstance(t, str) and t.strip() for t in texts):
        raise ValueError(f"calibration text is empty ({len(texts)} string(s), none with text); "
                         "expected at least one non-empty string")
    if not all(isinstance(t, str) for t in texts):
        bad = next(type(t).__name__ for t in texts if not isinstance(t, str))
        raise ValueError(f"calibration texts must all be strings, found a {bad}")
    if tokenizer is None:
        raise ValueError("calibration text needs a tokenizer: pass tokenizer= to "
                         "radio.quantize or attach one as model.tokenizer")
    joined = "\n\n".join(t for t in texts if t.strip())
    ids = tokenizer(joined, add_special_tokens=False)["input_ids"] if callable(tokenizer) \
        else tokenizer.encode(joined)
    ids = torch.as_tensor(ids, dtype=torch.int64).reshape(-1)
    if ids.numel() < seq_len:
        raise ValueError(f"calibration text has {ids.numel()} tokens; expected at least "
                         f"seq_len={seq_len} (give more text or lower QuantConfig.seq_len)")
    _check_ids(ids, vocab_size, "tokenized calibration text")
    gen = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, ids.numel() - seq_len + 1, (count,), generator=gen)
    windows = torch.stack([ids[s:s + seq_len] for s in starts.tolist()])
    return CalibrationSet(windows, "text")


def from_batches(batches: Iterable, seq_len: int, vocab_size: Optional[int]) -> CalibrationSet:
    rows = []
    for i, batch in enumerate(batches):
        if isinstance(batch, dict) or hasattr(batch, "keys"):
            if "input_ids" not in batch:
                raise ValueError(f"calibration batch {i} is a mapping without 'input_ids' "
                                 f"(keys: {list(batch.keys())})")
            batch = batch["input_ids"]
        batch = torch.as_tensor(batch)
        if batch.dim() == 1:
            batch = batch[None]
        if batch.dim() != 2:
            raise ValueError(f"calibration batch {i} has shape {tuple(batch.shape)}; expected "
                             "[b, T] or [T] token ids")
        rows.extend(batch)
    if not rows:
        raise ValueError("calibration batches are empty; expected at least one sequence")
    length = min(min(r.shape[0] for r in rows), seq_len)
    return from_token_tensor(torch.stack([r[:length] for r in rows]), seq_len, vocab_size,
                             "batches")


@torch.no_grad()
def generate(model: torch.nn.Module, count: int, length: int, seed: int, device,
             vocab_size: int, batch_size: int = 16, progress: bool = True) -> CalibrationSet:
    """Sample ``count`` sequences of ``length`` tokens from the model (temperature 1).

    Each sequence starts with BOS (when the model has one) and one uniformly random token, so
    the samples differ from the first step; sampling uses a generator seeded with ``seed`` on
    the model's device. Uses the model's KV cache when it has one.
    """
    bos = getattr(getattr(model, "config", None), "bos_token_id", None)
    gen = torch.Generator(device=device).manual_seed(seed)
    cpu_gen = torch.Generator().manual_seed(seed)
    out = []
    bar = tqdm(total=count * length, desc="radio: sampling calibration tokens", unit="tok",
               disable=not progress, leave=False)
    for start in range(0, count, batch_size):
        b = min(batch_size, count - start)
        first = torch.randint(0, vocab_size, (b, 1), generator=cpu_gen)
        seq = first if bos is None or length < 3 else torch.cat(
            [torch.full((b, 1), int(bos)), first], dim=1)
        seq = seq.to(device)
        past, step_input = None, seq
        while seq.shape[1] < length:
            logits, past = _next_logits(model, step_input, seq, past)
            probs = torch.softmax(logits.float(), dim=-1)
            nxt = torch.multinomial(probs, 1, generator=gen)
            seq = torch.cat([seq, nxt], dim=1)
            step_input = nxt
            bar.update(b)
        out.append(seq[:, :length].cpu())
    bar.close()
    return CalibrationSet(torch.cat(out).to(torch.int64), "generated")


def _next_logits(model, step_input, seq, past):
    """Logits of the next token [b, vocab]; with a KV cache when the model offers one."""
    try:
        result = model(input_ids=step_input if past is not None else seq, past_key_values=past,
                       use_cache=True)
        past = getattr(result, "past_key_values", None)
    except TypeError:  # a plain module: recompute the whole prefix
        result, past = model(seq), None
    logits = result.logits if hasattr(result, "logits") else (
        result[0] if isinstance(result, (tuple, list)) else result)
    if past is None:
        # Without a cache the next call must see the whole sequence again.
        return logits[:, -1], None
    return logits[:, -1], past


def prepare(calib, model: torch.nn.Module, *, tokenizer, seq_len: int, calib_sequences: int,
            generate_sequences: int, generate_length: int, seed: int, device,
            vocab_size: Optional[int], progress: bool = True) -> CalibrationSet:
    """Turn any accepted ``calib=`` value into a ``CalibrationSet``."""
    if calib is None:
        if vocab_size is None:
            raise ValueError("cannot sample calibration sequences: the model has no "
                             "config.vocab_size; pass calib= token ids")
        return generate(model, generate_sequences, generate_length, seed, device, vocab_size,
                        batch_size=16 if torch.device(device).type == "cuda" else 8,
                        progress=progress)
    if isinstance(calib, CalibrationSet):
        return from_token_tensor(calib.tokens, seq_len, vocab_size, calib.source)
    if isinstance(calib, torch.Tensor):
        return from_token_tensor(calib, seq_len, vocab_size)
    if isinstance(calib, str) or (isinstance(calib, (list, tuple)) and (
            not calib or all(isinstance(t, str) for t in calib))):
        tok = tokenizer if tokenizer is not None else getattr(model, "tokenizer", None)
        return from_text(calib, tok, seq_len, calib_sequences, seed, vocab_size)
    if isinstance(calib, Iterable):
        return from_batches(calib, seq_len, vocab_size)
    raise ValueError(f"calib must be a list of strings, a [n, T] token tensor, an iterable of "
                     f"batches or None, got {type(calib).__name__}")
