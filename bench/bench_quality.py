"""Quality benchmark (issue 5): radio against RTN and GPTQ at equal true size on SmolLM2-135M.

Reference: the Q4_1-dequantized SmolLM2-135M-Instruct (see ../shared/data/README.md: its weights
lie on a 4-bit grid in row blocks of 32, which flatters 4-bit round-to-nearest; the comparisons
that matter are at other rates). Calibration: State of the Union addresses before 1990 (fixed-seed
windows), the same windows for radio and GPTQ. Evaluation: WikiText-2 test (non-empty rows) and
the 1990-2021 addresses. Every bits-per-weight figure counts all side information.

    python3 bench/bench_quality.py --out out/quality            # GPU: the full comparison
    python3 bench/bench_quality.py --quick --out out/quality    # CPU smoke run (small, minutes)

Prints one table (method, bpw, perplexities, time) and writes results.json and quality.png.
`--merge a/results.json b/results.json --out DIR` joins runs made in several calls.
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import os
import sys
import time
from pathlib import Path

import torch

import radio
from radio import baselines
from radio.data import sotu_text, wikitext2_test
from radio.eval import perplexity, tokenize
from radio.models import load_smollm2


def calibration_windows(tokenizer, n: int, length: int, seed: int) -> torch.Tensor:
    """n fixed-seed windows of `length` tokens from the pre-1990 State of the Union addresses."""
    ids = tokenize(sotu_text("calibration"), tokenizer)
    gen = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, ids.numel() - length, (n,), generator=gen)
    return torch.stack([ids[s:s + length] for s in starts.tolist()])


def evaluate(model, texts, args) -> dict:
    return {name: perplexity(model, ids, ctx=args.ctx, max_windows=args.max_windows,
                             batch_size=args.eval_batch, progress=False)
            for name, ids in texts.items()}


def radio_config(args, **overrides):
    base = dict(rounds=args.rounds, sequences_per_round=args.sequences_per_round,
                seq_len=args.seq_len, progress=False, seed=args.seed)
    if args.quick:
        return radio.QuantConfig.cpu(**{**base, **overrides})
    return radio.QuantConfig.paper(**{**base, **overrides})


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bits", type=float, nargs="*", default=[2.5, 3.0, 3.25, 3.5, 4.0, 4.25])
    p.add_argument("--variant-bits", type=float, nargs="+", default=[3.25],
                   help="rates at which radio's variants are also run")
    p.add_argument("--distortions", type=float, nargs="+", default=[0.02, 0.01, 0.005, 0.0025],
                   help="max_distortion targets for the distortion-mode check")
    p.add_argument("--rounds", type=int, default=16)
    p.add_argument("--sequences-per-round", type=int, default=16)
    p.add_argument("--seq-len", type=int, default=2048)
    p.add_argument("--calib-sequences", type=int, default=128)
    p.add_argument("--ctx", type=int, default=2048)
    p.add_argument("--max-windows", type=int, default=None, help="evaluate only the first windows")
    p.add_argument("--eval-batch", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="CPU smoke settings")
    p.add_argument("--skip-variants", action="store_true")
    p.add_argument("--skip-baselines", action="store_true",
                   help="radio only (the baselines' rates are then not added to --bits)")
    p.add_argument("--out", type=Path, default=Path("out/quality"))
    p.add_argument("--merge", type=Path, nargs="+", default=None, metavar="RESULTS_JSON",
                   help="no runs: merge results.json files of earlier runs (first occurrence of "
                        "each method wins), print the table, write results.json and quality.png")
    args = p.parse_args(argv)
    if args.merge:
        return merge(args.merge, args.out)
    if args.quick:  # smaller lists, unless given on the command line
        if args.bits == p.get_default("bits"):
            args.bits = [3.0, 4.0]
        if args.variant_bits == p.get_default("variant_bits"):
            args.variant_bits = [3.0]
        if args.distortions == p.get_default("distortions"):
            args.distortions = args.distortions[:3]
        args.rounds, args.sequences_per_round, args.seq_len = 2, 2, 256
        args.calib_sequences, args.ctx, args.max_windows, args.eval_batch = 8, 256, 4, 1
    args.out.mkdir(parents=True, exist_ok=True)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(args.seed)

    reference, tokenizer = load_smollm2(dtype=torch.float32, device=device)
    texts = {"wikitext2": tokenize(wikitext2_test(), tokenizer),
             "sotu_1990_2021": tokenize(sotu_text("evaluation"), tokenizer)}
    calib = calibration_windows(tokenizer, args.calib_sequences, args.seq_len, args.seed)
    rows = []

    def record(method, bpw, ppl, seconds, **extra):
        row = {"method": method, "bpw": bpw, **{f"ppl_{k}": v for k, v in ppl.items()},
               "seconds": seconds, **extra}
        rows.append(row)
        print(f"  {method:<40} {bpw:7.4f} bpw  " +
              "  ".join(f"{k} {v:8.3f}" for k, v in ppl.items()) + f"  {seconds:7.1f} s", flush=True)
        (args.out / "results.json").write_text(json.dumps(rows, indent=1))

    t = time.perf_counter()
    record("reference (Q4_1-dequantized, fp32)", 16.0, evaluate(reference, texts, args), 0.0)

    baseline_runs = [("RTN", dict(bits=b, group_size=g, symmetric=s))
                     for b in (3, 4) for g in (0, 128) for s in (False, True)]
    baseline_runs += [("GPTQ", dict(bits=b, group_size=128, act_order=a)) for b in (3, 4) for a in (False, True)]
    baseline_bpw = []
    for method, kw in ([] if args.skip_baselines else baseline_runs):
        model = copy.deepcopy(reference)
        t = time.perf_counter()
        if method == "RTN":
            rep = baselines.quantize_rtn(model, **kw)
        else:
            rep = baselines.quantize_gptq(model, calib.to(device), **kw)
        seconds = time.perf_counter() - t
        record(str(rep).split(":")[0], rep.bits_per_weight, evaluate(model, texts, args), seconds)
        if kw.get("group_size") == 128:
            baseline_bpw.append(round(rep.bits_per_weight, 4))
        del model

    def run_radio(label, bits=None, max_distortion=None, **overrides):
        model = copy.deepcopy(reference)
        t = time.perf_counter()
        radio.quantize(model, bits=bits, max_distortion=max_distortion, calib=calib.to(device),
                       config=radio_config(args, **overrides), verbose=False)
        seconds = time.perf_counter() - t
        rep = model.radio_report
        record(label, rep.bits_per_weight, evaluate(model, texts, args), seconds,
               predicted_distortion=rep.predicted_distortion, total_bytes=rep.total_bytes)
        del model

    for bits in sorted(set(args.bits) | set(baseline_bpw)):
        run_radio(f"radio {bits:g}", bits=bits)
    if not args.skip_variants:
        variants = {"uniform quantizer": dict(quantizer="uniform"),
                    "no bias correction": dict(bias_correction=False),
                    "per-token estimator": dict(estimator="per_token")}
        for bits in args.variant_bits:
            for name, overrides in variants.items():
                run_radio(f"radio {bits:g} {name}", bits=bits, **overrides)
    for d in args.distortions:
        run_radio(f"radio max_distortion={d:g}", max_distortion=d)

    plot(rows, args.out / "quality.png")
    print_table(rows)
    return 0


def merge(paths, out: Path) -> int:
    """Table and plot from the results.json of runs made in several calls (same settings)."""
    rows, seen = [], set()
    for path in paths:
        for row in json.loads(Path(path).read_text()):
            if row["method"] not in seen:
                seen.add(row["method"])
                rows.append(row)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(rows, indent=1))
    plot(rows, out / "quality.png")
    print_table(rows)
    return 0


def print_table(rows) -> None:
    keys = [k for k in rows[0] if k.startswith("ppl_")]
    print("\n| method | bpw (all-in) | " + " | ".join(k[4:] for k in keys) + " | seconds |")
    print("|---|---|" + "---|" * len(keys) + "---|")
    for r in rows:
        print(f"| {r['method']} | {r['bpw']:.4f} | " + " | ".join(f"{r[k]:.3f}" for k in keys)
              + f" | {r['seconds']:.1f} |")


def plot(rows, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [k for k in rows[0] if k.startswith("ppl_")]
    fig, axes = plt.subplots(1, len(keys), figsize=(6 * len(keys), 4.5))
    reference = rows[0]
    families = {"radio": lambda m: m.startswith("radio ") and "max_distortion" not in m and
                m.split()[-1].replace(".", "").isdigit(),
                "GPTQ": lambda m: m.startswith("GPTQ"), "RTN g128": lambda m: m.startswith("RTN") and "g128" in m,
                "RTN per channel": lambda m: m.startswith("RTN") and "channel" in m}
    for ax, key in zip(axes, keys):
        for name, pick in families.items():
            pts = sorted((r["bpw"], r[key]) for r in rows if pick(r["method"]))
            if pts:
                ax.plot(*zip(*pts), marker="o", label=name)
        ax.axhline(reference[key], color="gray", ls="--", label="reference")
        ax.set_xlabel("bits per weight (all side information counted)")
        ax.set_ylabel(f"perplexity, {key[4:]}")
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle("SmolLM2-135M: perplexity against true size")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    sys.exit(main())
