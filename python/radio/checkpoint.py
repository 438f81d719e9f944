"""Resumable quantization: the state of ``radio.quantize``'s round loop after a completed round.

``radio.quantize(..., checkpoint_dir=DIR)`` calls ``save`` after every calibration round but the
last, and ``load`` once before the first: a run that crashed resumes after its last completed
round and ends bit-identical to an uninterrupted run (same seed, device and settings).

What a round hands to the next (everything else is recomputed from the model and the settings):

- per layer: the working (quantized, bias-corrected) weight and bias the model computes with,
  the current row grouping, the accumulated squared gradients (per group and per row), the sum
  and count of the layer's inputs, and the probe's pass / clock counters;
- the loop: rounds completed, sequences consumed, the calibration clock, the state of the one
  random generator the loop draws from (the Rademacher signs), the output directions, the
  per-round history and the phase timers.

Files in DIR (never pickle: tensors in safetensors, the rest in JSON):

- ``round-NNNN.safetensors``: the tensors after round NNNN;
- ``checkpoint.json``: format, version, the job description, the loop state, the name and
  SHA-256 of the tensor file. It is written last and replaced atomically (temporary file, fsync,
  ``os.replace``): a crash at any point leaves either the previous complete checkpoint or the new
  one, never a mix. Older round files are removed afterwards.

The job description (model, settings, calibration tokens, target, micro-batch, device type) is
compared on load: a checkpoint of another job is refused with a ``ValueError`` naming what
differs, and a damaged one (bad JSON, missing or altered tensor file) with a ``ValueError``
naming the file, rather than resuming with the wrong state.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import Dict, List, Optional

import torch

from . import sensitivity
from .io import fsync_path

__all__ = ["RoundState", "job_description", "save", "load", "STATE_FILE"]

FORMAT = "radio-checkpoint"
VERSION = 1
STATE_FILE = "checkpoint.json"
# Settings that only move memory around (where originals live, recomputation in the backward
# pass) or print: the micro-batch they lead to is part of the job, not they themselves.
_MEMORY_ONLY = ("progress", "checkpointing", "offload_originals", "activation_budget_gb")
# Values sampled per tensor for the model's fingerprint: hashing every weight of a 7B model would
# cost a device-to-host copy of the whole model at every start; evenly spaced samples of every
# tensor (plus names, shapes, dtypes) tell a different model or a fine-tune apart all the same.
_SAMPLES = 4096
_LAYER_TENSORS = ("weight", "bias", "row_perm", "g2_sum", "row_g2_sum", "x_sum")
_LAYER_COUNTERS = ("x_count", "passes", "mean_step")


@dataclasses.dataclass
class RoundState:
    """The round loop's state after ``rounds_done`` completed rounds."""

    rounds_done: int
    seq_counter: int
    clock_step: int
    generator_state: torch.Tensor  # uint8: torch.Generator.get_state()
    directions: torch.Tensor  # [k, D] float32
    history: List[dict]
    timers: Dict[str, float]
    layers: Dict[str, Dict[str, object]]  # name -> _LAYER_TENSORS (tensors) + _LAYER_COUNTERS

    @classmethod
    def capture(cls, rounds_done: int, seq_counter: int, clock_step: int,
                generator: torch.Generator, directions: torch.Tensor, history: List[dict],
                timers: Dict[str, float], states: List[sensitivity.LayerState]) -> "RoundState":
        layers = {}
        for s in states:
            entry: Dict[str, object] = {f: getattr(s, f).detach().to("cpu", copy=True)
                                        for f in _LAYER_TENSORS}
            entry.update({f: int(getattr(s, f)) for f in _LAYER_COUNTERS})
            layers[s.name] = entry
        return cls(rounds_done, seq_counter, clock_step, generator.get_state().clone(),
                   directions.detach().to("cpu", copy=True), [dict(h) for h in history],
                   dict(timers), layers)

    def apply(self, states: List[sensitivity.LayerState], generator: torch.Generator) -> None:
        """Put the saved values into the session's layer states (in place: the working weight
        is the tensor the model computes with) and the generator."""
        for s in states:
            entry = self.layers[s.name]
            s.weight.copy_(entry["weight"])
            s.bias.copy_(entry["bias"])
            for f in ("row_perm", "g2_sum", "row_g2_sum", "x_sum"):
                setattr(s, f, entry[f].to(getattr(s, f).device))
            for f in _LAYER_COUNTERS:
                setattr(s, f, entry[f])
        generator.set_state(self.generator_state)


# ----------------------------------------------------------------------------------------------
# The job
# ----------------------------------------------------------------------------------------------

def _sample_digest(tensor: torch.Tensor) -> bytes:
    flat = tensor.detach().reshape(-1)
    step = max(1, flat.numel() // _SAMPLES)
    sample = flat[::step].to("cpu").contiguous()
    if sample.dtype == torch.bool:
        sample = sample.to(torch.uint8)
    return sample.view(torch.uint8).numpy().tobytes()


def model_digest(model: torch.nn.Module) -> str:
    """SHA-256 over the names, shapes, dtypes and sampled values of the model's state."""
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        h.update(json.dumps([name, list(t.shape), str(t.dtype)]).encode())
        h.update(_sample_digest(t))
    return h.hexdigest()


def job_description(model_sha256: str, config, calib_tokens: torch.Tensor, target: dict,
                    micro_batch: int, device: torch.device) -> dict:
    """What must be equal for a checkpoint to continue this run (JSON-able)."""
    settings = {k: v for k, v in config.to_dict().items() if k not in _MEMORY_ONLY}
    tokens = calib_tokens.detach().to("cpu", torch.int64).contiguous()
    return {"model_sha256": model_sha256, "settings": settings, "target": target,
            "calibration_sha256": hashlib.sha256(tokens.numpy().tobytes()).hexdigest(),
            "calibration_shape": list(tokens.shape), "micro_batch": int(micro_batch),
            "device_type": device.type}


# ----------------------------------------------------------------------------------------------
# Files
# ----------------------------------------------------------------------------------------------

def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            h.update(block)
    return h.hexdigest()


def _tensor_file(rounds_done: int) -> str:
    return f"round-{rounds_done:04d}.safetensors"


def save(directory, job: dict, state: RoundState) -> Path:
    """Write ``state`` into ``directory`` atomically; returns the path of ``checkpoint.json``."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {"generator_state": state.generator_state, "directions": state.directions}
    counters = {}
    for name, entry in state.layers.items():
        for f in _LAYER_TENSORS:
            tensors[f"{name}:{f}"] = entry[f].contiguous()
        counters[name] = {f: entry[f] for f in _LAYER_COUNTERS}
    name = _tensor_file(state.rounds_done)
    tmp = directory / f".{name}.tmp-{os.getpid()}"
    save_file(tensors, str(tmp))
    fsync_path(tmp)
    os.replace(tmp, directory / name)
    record = {"format": FORMAT, "version": VERSION, "job": job,
              "rounds_done": state.rounds_done, "seq_counter": state.seq_counter,
              "clock_step": state.clock_step, "history": state.history, "timers": state.timers,
              "layers": counters, "tensor_file": name,
              "tensor_sha256": _file_sha256(directory / name)}
    final = directory / STATE_FILE
    tmp = directory / f".{STATE_FILE}.tmp-{os.getpid()}"
    tmp.write_text(json.dumps(record, indent=1))
    fsync_path(tmp)
    os.replace(tmp, final)  # the commit point
    for old in directory.glob("round-*.safetensors"):
        if old.name != name:
            old.unlink(missing_ok=True)
    return final


def _differences(saved: dict, job: dict) -> List[str]:
    out = []
    for key in sorted(set(saved) | set(job)):
        a, b = saved.get(key), job.get(key)
        if a == b:
            continue
        if key == "settings" and isinstance(a, dict) and isinstance(b, dict):
            for k in sorted(set(a) | set(b)):
                if a.get(k) != b.get(k):
                    out.append(f"setting {k}: checkpoint {a.get(k)!r}, this run {b.get(k)!r}")
        elif key.endswith("sha256"):
            out.append(f"{key.replace('_sha256', '')} differs")
        else:
            out.append(f"{key}: checkpoint {a!r}, this run {b!r}")
    return out


def load(directory, job: dict, states: List[sensitivity.LayerState]) -> Optional[RoundState]:
    """The checkpoint in ``directory`` for this job, or None when there is none yet.

    Raises ValueError for a checkpoint of another job or a damaged one (naming the file)."""
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise ValueError(f"checkpoint_dir {directory} exists and is not a directory")
    path = directory / STATE_FILE
    if not path.exists():
        return None
    hint = f"delete {directory} (or use another checkpoint_dir) to start afresh"
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"checkpoint {path} is damaged (not valid JSON: {e}); {hint}") from None
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise ValueError(f"{path} is not a radio checkpoint (expected format {FORMAT!r}); "
                         f"{hint}")
    if record.get("version") != VERSION:
        raise ValueError(f"checkpoint {path} has version {record.get('version')!r}; this radio "
                         f"reads version {VERSION}; {hint}")
    # Through JSON, as the saved job went: tuples become lists, and so on.
    job = json.loads(json.dumps(job))
    if record.get("job") != job:
        saved = record.get("job") if isinstance(record.get("job"), dict) else {}
        raise ValueError(f"checkpoint {path} belongs to a different job ("
                         f"{'; '.join(_differences(saved, job)) or 'job record unreadable'}); "
                         f"{hint}")
    try:
        tensor_path = directory / str(record["tensor_file"])
        sha = record["tensor_sha256"]
        counters = record["layers"]
        rounds_done, seq_counter = int(record["rounds_done"]), int(record["seq_counter"])
        clock_step = int(record["clock_step"])
        history, timers = list(record["history"]), dict(record["timers"])
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"checkpoint {path} is damaged (field {e} missing or malformed); "
                         f"{hint}") from None
    if not tensor_path.is_file():
        raise ValueError(f"checkpoint {path} names {tensor_path.name}, which is missing; {hint}")
    if _file_sha256(tensor_path) != sha:
        raise ValueError(f"checkpoint tensor file {tensor_path} is damaged (its SHA-256 differs "
                         f"from the one recorded in {STATE_FILE}); {hint}")
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(tensor_path), device="cpu")
    except (SafetensorError, OSError, ValueError) as e:
        raise ValueError(f"checkpoint tensor file {tensor_path} is unreadable ({e}); "
                         f"{hint}") from None
    layers = {}
    for s in states:
        entry: Dict[str, object] = {}
        for f in _LAYER_TENSORS:
            key, want = f"{s.name}:{f}", getattr(s, f)
            got = tensors.get(key)
            if got is None or got.shape != want.shape or got.dtype != want.dtype:
                have = "missing" if got is None else f"{got.dtype} {list(got.shape)}"
                raise ValueError(f"checkpoint tensor {key!r} in {tensor_path} is {have}; "
                                 f"expected {want.dtype} {list(want.shape)}; {hint}")
            entry[f] = got
        try:
            entry.update({f: int(counters[s.name][f]) for f in _LAYER_COUNTERS})
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"checkpoint {path} lacks the counters of layer {s.name!r}; "
                             f"{hint}") from None
        layers[s.name] = entry
    for key in ("generator_state", "directions"):
        if key not in tensors:
            raise ValueError(f"checkpoint tensor file {tensor_path} lacks {key!r}; {hint}")
    return RoundState(rounds_done, seq_counter, clock_step, tensors["generator_state"],
                      tensors["directions"], history, timers, layers)
