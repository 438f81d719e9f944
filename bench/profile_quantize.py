"""Where radio.quantize and the perplexity evaluation spend GPU time on SmolLM2-135M.

A diagnostic, not a benchmark: runs a short radio.quantize (``--rounds``, default 2, otherwise the
bench_quality settings) and the evaluation of ``--windows`` WikiText-2 windows under
torch.profiler, and prints the operators with the most self CUDA time and the wall time of each.
Used to decide what to speed up in the quality benchmark (bench/bench_quality.py), which must
fit one 10-minute GPU call. Needs a GPU and the SmolLM2 GGUF (radio.models.load_smollm2).

    python3 bench/profile_quantize.py [--rounds 2] [--windows 32] [--estimator random_sign] [--gptq]

``--gptq`` also profiles one GPTQ run (4-bit, g128) on the benchmark's calibration windows.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import sys
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))
import radio  # noqa: E402
from radio import baselines  # noqa: E402
from bench_quality import calibration_windows  # noqa: E402
from radio.data import wikitext2_test  # noqa: E402
from radio.eval import perplexity, tokenize  # noqa: E402
from radio.models import load_smollm2  # noqa: E402


def show(prof, title: str, rows: int) -> None:
    print(f"--- {title}: top {rows} operators by self CUDA time")
    print(prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=rows,
                                    max_name_column_width=60))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--sequences-per-round", type=int, default=16)
    p.add_argument("--seq-len", type=int, default=2048)
    p.add_argument("--estimator", default="random_sign")
    p.add_argument("--windows", type=int, default=32)
    p.add_argument("--rows", type=int, default=25)
    p.add_argument("--gptq", action="store_true", help="also profile GPTQ 4-bit g128")
    args = p.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("profile_quantize.py needs a GPU")
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    reference, tokenizer = load_smollm2(dtype=torch.float32, device="cuda")
    calib = calibration_windows(tokenizer, 128, args.seq_len, 0).cuda()
    config = radio.QuantConfig.paper(rounds=args.rounds, sequences_per_round=args.sequences_per_round,
                                     seq_len=args.seq_len, estimator=args.estimator,
                                     progress=False, seed=0)
    # one untimed run first: kernels, cuBLAS handles and the allocator warm
    radio.quantize(copy.deepcopy(reference), bits=4.0, calib=calib, config=config, verbose=False)
    model = copy.deepcopy(reference)
    torch.cuda.synchronize()
    t = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        radio.quantize(model, bits=4.0, calib=calib, config=config, verbose=False)
        torch.cuda.synchronize()
    print(f"radio.quantize ({args.rounds} rounds, {args.estimator}): "
          f"{time.perf_counter() - t:.2f} s under the profiler; phases (s): "
          + ", ".join(f"{k} {v:.2f}" for k, v in model.radio_report.seconds.items()))
    show(prof, "radio.quantize", args.rows)

    for profiled in ((True, False) if args.gptq else ()):  # the profiler's own cost shows too
        model = copy.deepcopy(reference)
        torch.cuda.synchronize()
        t = time.perf_counter()
        with (profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) if profiled
              else contextlib.nullcontext()) as prof:
            baselines.quantize_gptq(model, calib, bits=4, group_size=128)
            torch.cuda.synchronize()
        print(f"GPTQ 4-bit g128: {time.perf_counter() - t:.2f} s "
              f"{'under' if profiled else 'without'} the profiler")
        if profiled:
            show(prof, "GPTQ", args.rows)
        del model

    ids = tokenize(wikitext2_test(), tokenizer)
    perplexity(reference, ids, ctx=2048, max_windows=4, batch_size=16, progress=False)
    torch.cuda.synchronize()
    t = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        perplexity(reference, ids, ctx=2048, max_windows=args.windows, batch_size=16,
                   progress=False)
        torch.cuda.synchronize()
    print(f"perplexity of {args.windows} windows: {time.perf_counter() - t:.2f} s under the profiler")
    show(prof, "perplexity", args.rows)


if __name__ == "__main__":
    main()
