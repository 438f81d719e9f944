"""Quantization time and peak memory of radio.quantize (issue 3 figures).

    python3 bench/bench_quantize.py smollm2            # the real SmolLM2-135M, default settings
    python3 bench/bench_quantize.py llama2-7b-shapes   # Llama-2-7B's layer shapes, random fp16 weights
    python3 bench/bench_quantize.py tiny --rounds 2    # a smoke run that works on a CPU

The weights' values do not change the time (the work per round is the same for any values), so
the 7B-shaped model is built from its configuration with random weights, in fp16, on the GPU.
Prints wall time per phase, peak GPU memory (torch.cuda.max_memory_allocated) and peak host RSS.
"""
from __future__ import annotations

import argparse
import json
import resource
import sys
import time

import torch

import radio


def build(name: str, device: str):
    import transformers

    if name == "smollm2":
        from radio.models import load_smollm2
        model, _ = load_smollm2(dtype=torch.float32, device=device)
        return model
    if name == "llama2-7b-shapes":
        cfg = transformers.LlamaConfig(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                                       num_attention_heads=32, num_key_value_heads=32,
                                       vocab_size=32000, max_position_embeddings=4096)
        dtype = torch.float16
    elif name == "tiny":
        cfg = transformers.LlamaConfig(hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                                       num_attention_heads=4, num_key_value_heads=2, vocab_size=256,
                                       max_position_embeddings=512)
        dtype = torch.float32
    else:
        raise ValueError(f"model must be smollm2, llama2-7b-shapes or tiny, got {name!r}")
    with torch.device(device):
        model = transformers.AutoModelForCausalLM.from_config(cfg, torch_dtype=dtype)
    return model.eval()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", choices=["smollm2", "llama2-7b-shapes", "tiny"])
    p.add_argument("--bits", type=float, default=4.0)
    p.add_argument("--rounds", type=int, default=None, help="override the preset's rounds")
    p.add_argument("--json", default=None, help="write the figures here")
    args = p.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    t0 = time.perf_counter()
    model = build(args.model, device)
    build_seconds = time.perf_counter() - t0
    config = radio.QuantConfig.for_device(device)
    if args.rounds is not None:
        config = radio.QuantConfig.for_device(device, rounds=args.rounds)
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    radio.quantize(model, bits=args.bits, config=config, verbose=False)
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    rep = model.radio_report
    figures = {
        "model": args.model, "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
        "preset": rep.preset, "rounds": config.rounds, "estimator": rep.estimator,
        "target_bits": args.bits, "bits_per_weight": rep.bits_per_weight,
        "quantized_weights": rep.total_weights, "quantize_seconds": seconds,
        "phases": rep.seconds, "build_seconds": build_seconds,
        "peak_gpu_gib": torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None,
        "peak_gpu_reserved_gib": (torch.cuda.max_memory_reserved() / 2**30 if device == "cuda"
                                  else None),
        "peak_host_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
    }
    print(json.dumps(figures, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(figures, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
