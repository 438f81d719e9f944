"""Quantization time and peak memory of radio.quantize (issue 3 figures).

    python3 bench/bench_quantize.py smollm2            # the real SmolLM2-135M, default settings
    python3 bench/bench_quantize.py llama2-7b-shapes   # Llama-2-7B's layer shapes, random fp16 weights
    python3 bench/bench_quantize.py tiny --rounds 2    # a smoke run that works on a CPU
    python3 bench/bench_quantize.py llama2-13b-shapes --offload --rounds 2   # bigger than 24 GB:
        # weights in host memory, streamed to the GPU block by block (radio.quantize offload=True)
    torchrun --nproc_per_node 2 bench/bench_quantize.py llama-0.1g-shapes --offload --rounds 2 \
        --seq-len 16 --sequences 4   # the weights sharded over 2 ranks (gloo on CPUs, NCCL on
        # GPUs: one GPU per rank); every rank prints its own figures (host RSS per phase)

The weights' values do not change the time (the work per round is the same for any values), so
the shaped models are built from their configuration with random weights, in fp16: on the GPU,
or with --offload in host memory (random values drawn on the GPU one tensor at a time and copied
out, so that the GPU never holds the whole model). They calibrate on fixed random token ids
(CALIB_ROWS sequences of the preset's length): sampling text from the model would dominate the
time (and cannot be done from a streamed model). Prints wall time per phase and per round, peak
GPU memory (allocated and reserved), peak host RSS and the model's size, and the host RSS of
each phase (``host_rss_gib``: resident after it and its peak, via radio.host_memory; the session's
methods are wrapped to mark the phases: wrapping, output directions, backprop, plan,
requantize, final packing into modules).
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import resource
import sys
import time

import torch

import radio
from radio import host_memory

quantize_module = importlib.import_module("radio.quantize")  # the module, not the function

# Session methods that start and end a phase of host memory (bench_quantize wraps them).
PHASES = ["install", "stream", "output_directions", "backprop", "plan", "requantize", "finish"]


CALIB_ROWS = 64  # random calibration sequences of the shaped models (rounds cycle over them)
SHAPES = {
    "llama2-7b-shapes": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                             num_attention_heads=32, num_key_value_heads=32),
    "llama2-13b-shapes": dict(hidden_size=5120, intermediate_size=13824, num_hidden_layers=40,
                              num_attention_heads=40, num_key_value_heads=40),
    # ~0.9 GiB in fp16: the host-memory phases of an offloaded run, measurable on a CPU
    "llama-1g-shapes": dict(hidden_size=1024, intermediate_size=2816, num_hidden_layers=32,
                            num_attention_heads=16, num_key_value_heads=16),
    # ~0.11 GiB in fp16, a Llama-2 vocabulary (the embedding and the LM head are 0.055 of it):
    # host memory per phase and per rank of an offloaded run in a minute on a CPU
    "llama-0.1g-shapes": dict(hidden_size=512, intermediate_size=1408, num_hidden_layers=8,
                              num_attention_heads=8, num_key_value_heads=8),
}
MODELS = ["smollm2", *SHAPES, "tiny"]


def _no_init_weights():
    """transformers' context that skips weight initialisation (its location moved between
    versions); without it the model is initialised normally, only slower."""
    for where in ("transformers.initialization", "transformers.modeling_utils"):
        try:
            module = __import__(where, fromlist=["no_init_weights"])
            return module.no_init_weights()
        except (ImportError, AttributeError):
            continue
    return contextlib.nullcontext()


def build_in_host_memory(cfg, dtype):
    """The model in host memory with random weights (matrices ~ N(0, 0.02^2), norms at one),
    drawn on the GPU one tensor at a time when there is one (a 13B model on the CPU's random
    generator takes minutes)."""
    import transformers

    with _no_init_weights():
        model = transformers.AutoModelForCausalLM.from_config(cfg, torch_dtype=dtype)
    gen = torch.Generator(device="cuda" if torch.cuda.is_available() else "cpu").manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim >= 2:
                p.copy_(torch.randn(p.shape, generator=gen, device=gen.device, dtype=dtype)
                        .mul_(0.02))
    return model.eval()


def build(name: str, device: str, offload: bool = False):
    import transformers

    if name == "smollm2":
        from radio.models import load_smollm2
        model, _ = load_smollm2(dtype=torch.float32, device=device)
        return model
    if name in SHAPES:
        cfg = transformers.LlamaConfig(**SHAPES[name], vocab_size=32000,
                                       max_position_embeddings=4096)
        dtype = torch.float16
    elif name == "tiny":
        cfg = transformers.LlamaConfig(hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                                       num_attention_heads=4, num_key_value_heads=2, vocab_size=256,
                                       max_position_embeddings=512)
        dtype = torch.float32
    else:
        raise ValueError(f"model must be one of {MODELS}, got {name!r}")
    if offload:
        return build_in_host_memory(cfg, dtype)
    with torch.device(device):
        model = transformers.AutoModelForCausalLM.from_config(cfg, torch_dtype=dtype)
    return model.eval()


class HostMemoryPhases:
    """Host RSS per phase: after each call of a PHASES method of the quantize session, the
    resident size and the peak since the previous mark (GiB; the max over calls)."""

    def __init__(self) -> None:
        self.figures: dict = {}
        self._saved = {}

    def mark(self, phase: str) -> None:
        peak, now = host_memory.peak_rss_bytes() / 2**30, host_memory.rss_bytes() / 2**30
        old = self.figures.get(phase, {"peak": 0.0, "after": 0.0})
        self.figures[phase] = {"peak": round(max(old["peak"], peak), 3),
                               "after": round(max(old["after"], now), 3)}
        host_memory.reset_peak_rss()

    def __enter__(self):
        session = quantize_module._Session
        for name in PHASES:
            original = getattr(session, name)
            self._saved[name] = original

            def wrapped(*args, _original=original, _name=name, **kwargs):
                self.mark("before " + _name)
                try:
                    return _original(*args, **kwargs)
                finally:
                    self.mark(_name)
            setattr(session, name, wrapped)
        return self

    def __exit__(self, *exc) -> None:
        for name, original in self._saved.items():
            setattr(quantize_module._Session, name, original)
        self._saved = {}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", choices=MODELS)
    p.add_argument("--bits", type=float, default=4.0)
    p.add_argument("--rounds", type=int, default=None, help="override the preset's rounds")
    p.add_argument("--json", default=None, help="write the figures here")
    p.add_argument("--seq-len", type=int, default=None,
                   help="override the preset's sequence length (short CPU runs)")
    p.add_argument("--sequences", type=int, default=None,
                   help="override sequences_per_round and pca_sequences (short CPU runs)")
    p.add_argument("--offload", action="store_true",
                   help="keep the model in host memory and stream it to the GPU block by block "
                        "(radio.quantize offload=True); on a machine without a GPU the same "
                        "FSDP path runs with the CPU as the device (a smoke test)")
    args = p.parse_args(argv)
    if args.offload and args.model == "smollm2":
        p.error("--offload is for the random-weight models (shaped or tiny)")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:  # under torchrun: one process group, one GPU per rank
        if device == "cuda":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        torch.distributed.init_process_group("nccl" if device == "cuda" else "gloo")
    rank = torch.distributed.get_rank() if world > 1 else 0
    phases = HostMemoryPhases()
    host_memory.reset_peak_rss()
    t0 = time.perf_counter()
    model = build(args.model, device, offload=args.offload)
    build_seconds = time.perf_counter() - t0
    phases.mark("build")
    model_gib = sum(t.numel() * t.element_size() for t in model.parameters()) / 2**30
    overrides = {}
    if args.rounds is not None:
        overrides["rounds"] = args.rounds
    if args.seq_len is not None:
        overrides["seq_len"] = args.seq_len
    if args.sequences is not None:
        overrides.update(sequences_per_round=args.sequences, pca_sequences=args.sequences)
    config = radio.QuantConfig.for_device(device, **overrides)
    calib = None
    if args.model != "smollm2":
        seq_len = config.resolved_seq_len(model.config.max_position_embeddings)
        calib = torch.randint(0, model.config.vocab_size, (CALIB_ROWS, seq_len),
                              generator=torch.Generator().manual_seed(0))
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    with phases:
        radio.quantize(model, bits=args.bits, calib=calib, config=config, verbose=False,
                       offload=(True if device == "cuda" else "cpu") if args.offload else False)
        if device == "cuda":
            torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    phases.mark("end")
    rep = model.radio_report
    figures = {
        "model": args.model, "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
        "preset": rep.preset, "rounds": config.rounds, "estimator": rep.estimator,
        "target_bits": args.bits, "bits_per_weight": rep.bits_per_weight,
        "quantized_weights": rep.total_weights, "quantize_seconds": seconds,
        "phases": rep.seconds, "build_seconds": build_seconds,
        "seconds_per_round": [round(h["seconds"], 3) for h in rep.history],
        "offload": args.offload, "model_gib": model_gib,
        "calibration": "random token ids" if calib is not None else "sampled from the model",
        "peak_gpu_gib": torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None,
        "peak_gpu_reserved_gib": (torch.cuda.max_memory_reserved() / 2**30 if device == "cuda"
                                  else None),
        # The highest of the phases' peaks: the kernel's peak counter (ru_maxrss) is reset at
        # every phase by radio.host_memory, so it alone would give the last phase's peak.
        "peak_host_rss_gib": max((v["peak"] for v in phases.figures.values()),
                                 default=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20),
        "host_rss_gib": phases.figures, "rank": rank, "world": world,
    }
    # The phases on one line (a run's log keeps only its tail); the --json file has them all.
    if rank == 0:
        print(json.dumps({k: v for k, v in figures.items() if k != "host_rss_gib"}, indent=1))
    for r in range(world):  # every rank's host memory, in rank order
        if world > 1:
            torch.distributed.barrier()
        if r == rank:
            print(f"rank {rank}/{world} host_rss_gib (phase: [peak, after]):", json.dumps(
                {k: [v["peak"], v["after"]] for k, v in phases.figures.items()},
                separators=(",", ":")), flush=True)
    if args.json:
        path = args.json if world == 1 else f"{args.json}.rank{rank}"
        with open(path, "w") as f:
            json.dump(figures, f, indent=1)
    if world > 1:
        torch.distributed.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
