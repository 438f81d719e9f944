"""Quality benchmark (issue 5): radio against RTN and GPTQ at equal true size on SmolLM2-135M.

Reference: the Q4_1-dequantized SmolLM2-135M-Instruct (see ../shared/data/README.md: its weights
lie on a 4-bit grid in row blocks of 32, which flatters 4-bit round-to-nearest; the comparisons
that matter are at other rates). Calibration: State of the Union addresses before 1990 (fixed-seed
windows), the same windows for radio and GPTQ. Evaluation: WikiText-2 test (non-empty rows) and
the 1990-2021 addresses. Every bits-per-weight figure counts all side information.

    python3 bench/bench_quality.py --out out/quality            # GPU: the full comparison, one call
    python3 bench/bench_quality.py --quick --out out/quality    # CPU smoke run (small, minutes)

Prints one table (method, bpw, perplexities, times), the max_distortion series with its
monotonicity check, and writes results.json (one row per run), run.json (settings, skipped runs),
table.md and quality.png. `--merge a/results.json b/results.json --out DIR` joins runs made in
several calls.

One call, in order of importance (`--time-budget`, default 570 s from the start of the script):
reference; radio at the main rates (`--bits`); RTN (per channel and g128, sym and asym) and GPTQ
(g128, with and without act-order) at 3 and 4 bits; radio at a baseline's g128 rate where no
cheaper radio point already beats it (`--match`); the max_distortion series (`--distortions`);
radio with the paper's `round_weighting="cumulative"` at `--cumulative-bits` (default none: the
variant below covers it); the per-token estimator variant at `--variant-bits` (a few batched
backward passes per sampled-token group: the slowest run); last the other variants at
`--variant-bits` (uniform quantizer, no bias correction, cumulative rounds). After every run the elapsed
time is printed. A run is not started when the longest earlier run of its kind would not fit in
what is left, and a run still going when the budget runs out is stopped (SIGALRM); both are
listed as skipped/stopped in the output and in run.json, never dropped silently, and the table,
plot and JSON are written for what ran.

Speed, and why the figures stay comparable:
- Radio models are evaluated through dense nn.Linear weights materialized ONCE per model
  (`radio.eval.materialize_dense`: `radio.ops.dequantize`, the reference twin of the CUDA kernels,
  cast to the model's dtype), not through RadioLinear's per-call dequantize + GEMM. The numbers
  are those of the packed layers (tests/python/test_eval_dense.py checks the perplexity against
  the RadioLinear path); the kernels have their own correctness tests. On the H100 this was ~40 s
  per radio model against ~15 s for a dense one.
- TF32 matmuls (`--tf32`, on by default on CUDA) in calibration forward/backward passes and in
  evaluation: 10-bit mantissa products with float32 accumulation, which moves perplexities by far
  less than the differences measured here, and every method (reference, RTN, GPTQ, radio) is
  evaluated the same way. GPTQ's own column solve keeps full float32 (TF32 switched off inside it,
  as the GPTQ authors' code does); its Hessians are float64.
- Evaluation batches of `--eval-batch` windows (16 on CUDA).
- Radio's calibration passes take 8 sequences at a time (`--activation-budget-gb`, 28 on CUDA)
  instead of the 4 that radio's default budget (a run near 20 GiB) allows for this model: the
  per-token estimator runs ~16 small passes per micro-batch and was bound by their launch
  overhead (torch.profiler on the H100: 6.8 s of GPU time against 20.2 s of CPU time per
  round; RESULTS.md session 5).
  The estimates do not depend on the split (random-sign signs are drawn per round).
- Every radio point uses the same settings (rounds x sequences x tokens, printed in the table
  header); nothing is reduced for variants or the series.
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import signal
import sys
import time
from pathlib import Path

import torch

import radio
from radio import baselines
from radio.data import sotu_text, wikitext2_test
from radio.eval import materialize_dense, perplexity, tokenize
from radio.models import load_smollm2

# The max_distortion series: chosen from the H100 run of 2026-11-24 (16 rounds), whose radio
# points had predicted relative distortions 6.3e-3 at 3.0 bpw, 4.0e-3 at 3.25, 2.6e-3 at 3.5,
# 1.1e-3 at 4.0 and 7.7e-4 at 4.25 (log2 D falls ~2.4 per bit): these land near 2.9, 3.5 and
# 4.1 bpw. Three points, for time; a monotonicity check needs at least three.
DEFAULT_DISTORTIONS = [0.008, 0.003, 0.001]
# Radio's variants: QuantConfig overrides. The per-token estimator (the slowest run) goes first,
# then the quantizer, bias correction and the paper's cumulative round weighting
# (QuantConfig.round_weighting; radio's default is "normalized").
SLOW_VARIANTS = {"per-token estimator": dict(estimator="per_token")}
VARIANTS = {"uniform quantizer": dict(quantizer="uniform"),
            "no bias correction": dict(bias_correction=False),
            "cumulative rounds": dict(round_weighting="cumulative")}
VARIANT_NAMES = (*SLOW_VARIANTS, *VARIANTS)


def calibration_windows(tokenizer, n: int, length: int, seed: int) -> torch.Tensor:
    """n fixed-seed windows of `length` tokens from the pre-1990 State of the Union addresses."""
    ids = tokenize(sotu_text("calibration"), tokenizer)
    gen = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, ids.numel() - length, (n,), generator=gen)
    return torch.stack([ids[s:s + length] for s in starts.tolist()])


def zero_bits_by_block(report) -> list:
    """Fraction of each decoder block's quantized weights stored at 0 bits (its layers' names
    carry the block index after the ModuleList's name), in block order."""
    totals: dict = {}
    for layer in report.layers:
        index = next((int(part) for part in layer.name.split(".") if part.isdigit()), -1)
        zero, total = totals.get(index, (0, 0))
        totals[index] = (zero + layer.depth_histogram[0], total + sum(layer.depth_histogram))
    return [round(z / max(t, 1), 4) for _, (z, t) in sorted(totals.items())]


def evaluate(model, texts, args) -> dict:
    return {name: perplexity(model, ids, ctx=args.ctx, max_windows=args.max_windows,
                             batch_size=args.eval_batch, progress=False)
            for name, ids in texts.items()}


def radio_config(args, **overrides):
    base = dict(rounds=args.rounds, sequences_per_round=args.sequences_per_round,
                seq_len=args.seq_len, progress=False, seed=args.seed,
                activation_budget_gb=args.activation_budget_gb)
    if args.quick:
        return radio.QuantConfig.cpu(**{**base, **overrides})
    return radio.QuantConfig.paper(**{**base, **overrides})


# ----------------------------------------------------------------------------------------------
# Time budget
# ----------------------------------------------------------------------------------------------

class BudgetExceeded(Exception):
    """Raised (from SIGALRM) inside a run that is still going when the budget runs out."""


class Budget:
    """Seconds since the script started, and whether a run of some kind still fits.

    A kind's estimate is the longest run of that kind so far (0 before the first: the first run
    of a kind is always tried, and stopped by the alarm if it does not finish in time).
    """

    def __init__(self, seconds: float, start: float, clock=time.perf_counter) -> None:
        self.seconds, self.start, self.clock = float(seconds), start, clock
        self.longest: dict = {}
        self.skipped: list = []  # "label (why)"
        self.stopped: list = []

    def elapsed(self) -> float:
        return self.clock() - self.start

    def left(self) -> float:
        return self.seconds - self.elapsed()

    def estimate(self, kind: str) -> float:
        return self.longest.get(kind, 0.0)

    def fits(self, kind: str) -> bool:
        return self.left() > 0 and self.estimate(kind) <= self.left()

    def done(self, kind: str, seconds: float) -> None:
        self.longest[kind] = max(self.longest.get(kind, 0.0), seconds)


def _alarm(_signum, _frame):
    raise BudgetExceeded


def attempt(budget: Budget, label: str, kind: str, fn) -> bool:
    """Run ``fn()`` unless the budget says it cannot finish; stop it at the budget's end."""
    if not budget.fits(kind):
        why = ("no time left" if budget.left() <= 0 else
               f"needs ~{budget.estimate(kind):.0f} s (longest {kind} run so far), "
               f"{budget.left():.0f} s left")
        budget.skipped.append(f"{label} ({why})")
        print(f"  SKIPPED {label}: {why}", flush=True)
        return False
    use_alarm = hasattr(signal, "setitimer")
    if use_alarm:
        previous = signal.signal(signal.SIGALRM, _alarm)
        signal.setitimer(signal.ITIMER_REAL, max(budget.left(), 0.01))
    t = time.perf_counter()
    try:
        fn()
    except BudgetExceeded:
        budget.stopped.append(f"{label} (stopped after {time.perf_counter() - t:.0f} s: budget "
                              f"of {budget.seconds:.0f} s reached)")
        print(f"  STOPPED {label}: the time budget ran out during the run", flush=True)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        return False
    finally:
        if use_alarm:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
    budget.done(kind, time.perf_counter() - t)
    print(f"    [elapsed {budget.elapsed():6.1f} s of {budget.seconds:.0f} s]", flush=True)
    return True


# ----------------------------------------------------------------------------------------------
# The runs
# ----------------------------------------------------------------------------------------------

def main(argv=None) -> int:
    start = time.perf_counter()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bits", type=float, nargs="*", default=[2.5, 3.0, 3.25, 3.5, 4.0, 4.25])
    p.add_argument("--variant-bits", type=float, nargs="+", default=[3.25],
                   help="rates at which radio's variants are also run")
    p.add_argument("--cumulative-bits", type=float, nargs="*", default=[],
                   help="rates at which radio also runs with the paper's "
                        "round_weighting='cumulative' (before the variants)")
    p.add_argument("--distortions", type=float, nargs="*", default=DEFAULT_DISTORTIONS,
                   help="max_distortion targets for the distortion-mode check")
    p.add_argument("--match", choices=("needed", "gptq", "all", "none"), default="needed",
                   help="also run radio at the baselines' g128 rates: 'needed': at a baseline's "
                        "rate only when no radio point at a rate <= it already has lower "
                        "perplexities on every text (then that point is the comparison); 'gptq': "
                        "at GPTQ's rates (which include RTN g128 asym's); 'all'; 'none'")
    p.add_argument("--rounds", type=int, default=16)
    p.add_argument("--sequences-per-round", type=int, default=16)
    p.add_argument("--seq-len", type=int, default=2048)
    p.add_argument("--calib-sequences", type=int, default=128)
    p.add_argument("--ctx", type=int, default=2048)
    p.add_argument("--max-windows", type=int, default=None, help="evaluate only the first windows")
    p.add_argument("--eval-batch", type=int, default=None, help="windows per forward pass "
                   "(default 16 on CUDA, 1 on CPU)")
    p.add_argument("--tf32", action=argparse.BooleanOptionalAction, default=None,
                   help="TF32 matmuls in forward/backward passes (default: on with CUDA)")
    p.add_argument("--activation-budget-gb", type=float, default=None,
                   help="QuantConfig.activation_budget_gb of every radio run (default on CUDA: "
                        "28, i.e. micro-batches of 8 sequences of 2048 tokens; radio's own "
                        "default keeps a run near 20 GiB: 4 sequences here)")
    p.add_argument("--time-budget", type=float, default=570.0,
                   help="seconds from the start of the script; later runs are skipped, and a "
                        "run still going at the end is stopped (both reported)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="CPU smoke settings")
    p.add_argument("--skip-variants", action="store_true")
    p.add_argument("--variants", nargs="+", default=None, metavar="NAME",
                   help="run only these variants (names as in the table, or with _ for spaces: "
                        "'per-token estimator', 'uniform quantizer', 'no bias correction', "
                        "'cumulative rounds')")
    p.add_argument("--skip-baselines", action="store_true",
                   help="radio only (no radio runs at the baselines' rates either)")
    p.add_argument("--out", type=Path, default=Path("out/quality"))
    p.add_argument("--merge", type=Path, nargs="+", default=None, metavar="RESULTS_JSON",
                   help="no runs: merge results.json files of earlier runs (first occurrence of "
                        "each method wins), print the table, write results.json and quality.png")
    args = p.parse_args(argv)
    # Names with "_" for " " (uniform_quantizer) too, for shells that split on spaces.
    spelled = {n.replace(" ", "_"): n for n in VARIANT_NAMES}
    args.variants = None if args.variants is None else [spelled.get(v, v) for v in args.variants]
    unknown = set(args.variants or []) - set(VARIANT_NAMES)
    if unknown:
        p.error(f"--variants: unknown {sorted(unknown)}; expected some of {list(VARIANT_NAMES)}")
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
        args.calib_sequences, args.ctx, args.max_windows = 8, 256, 4
    args.out.mkdir(parents=True, exist_ok=True)
    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    if args.eval_batch is None:
        args.eval_batch = 16 if cuda and not args.quick else 1
    args.tf32 = cuda if args.tf32 is None else args.tf32
    if args.activation_budget_gb is None and cuda and not args.quick:
        args.activation_budget_gb = 28.0
    torch.backends.cuda.matmul.allow_tf32 = args.tf32
    torch.backends.cudnn.allow_tf32 = args.tf32
    torch.manual_seed(args.seed)
    budget = Budget(args.time_budget, start)

    reference, tokenizer = load_smollm2(dtype=torch.float32, device=device)
    texts = {"wikitext2": tokenize(wikitext2_test(), tokenizer),
             "sotu_1990_2021": tokenize(sotu_text("evaluation"), tokenizer)}
    calib = calibration_windows(tokenizer, args.calib_sequences, args.seq_len, args.seed).to(device)
    settings = (f"radio: {args.rounds} rounds x {args.sequences_per_round} sequences x "
                f"{args.seq_len} tokens ({'cpu' if args.quick else 'paper'} preset otherwise), "
                f"the same for every radio point; calibration (radio and GPTQ): "
                f"{args.calib_sequences} windows of {args.seq_len} tokens, SOTU before 1990; "
                f"perplexity: ctx {args.ctx}, "
                f"{'all windows' if args.max_windows is None else f'first {args.max_windows} windows'}, "
                f"batch {args.eval_batch}; TF32 {'on' if args.tf32 else 'off'}; radio activation "
                f"budget {args.activation_budget_gb or 'default'} GiB; radio evaluated "
                f"through dense weights materialized once; device {device}")
    print(settings, flush=True)
    rows = []

    def save():
        (args.out / "results.json").write_text(json.dumps(rows, indent=1))
        (args.out / "run.json").write_text(json.dumps(
            {"settings": settings, "args": {k: str(v) for k, v in vars(args).items()},
             "elapsed_s": budget.elapsed(), "time_budget_s": budget.seconds,
             "skipped": budget.skipped, "stopped": budget.stopped}, indent=1))
        (args.out / "table.md").write_text(table_text(rows, settings, budget))

    def record(method, bpw, ppl, seconds, eval_seconds, **extra):
        row = {"method": method, "bpw": bpw, **{f"ppl_{k}": v for k, v in ppl.items()},
               "seconds": seconds, "eval_seconds": eval_seconds, **extra}
        rows.append(row)
        print(f"  {method:<40} {bpw:7.4f} bpw  " +
              "  ".join(f"{k} {v:8.3f}" for k, v in ppl.items()) +
              f"  quantize {seconds:6.1f} s  eval {eval_seconds:5.1f} s", flush=True)
        save()

    def run_reference():
        t = time.perf_counter()
        ppl = evaluate(reference, texts, args)
        record("reference (Q4_1-dequantized, fp32)", 16.0, ppl, 0.0, time.perf_counter() - t)

    def run_baseline(method, kw):
        model = copy.deepcopy(reference)
        t = time.perf_counter()
        if method == "RTN":
            rep = baselines.quantize_rtn(model, **kw)
        else:
            rep = baselines.quantize_gptq(model, calib, **kw)
        seconds = time.perf_counter() - t
        t = time.perf_counter()
        ppl = evaluate(model, texts, args)
        record(str(rep).split(":")[0], rep.bits_per_weight, ppl, seconds, time.perf_counter() - t)
        return rep

    def run_radio(label, bits=None, max_distortion=None, **overrides):
        model = copy.deepcopy(reference)
        t = time.perf_counter()
        radio.quantize(model, bits=bits, max_distortion=max_distortion, calib=calib,
                       config=radio_config(args, **overrides), verbose=False)
        seconds = time.perf_counter() - t
        rep = model.radio_report
        t = time.perf_counter()
        materialize_dense(model)
        ppl = evaluate(model, texts, args)
        extra = {} if max_distortion is None else {"max_distortion": max_distortion}
        record(label, rep.bits_per_weight, ppl, seconds, time.perf_counter() - t,
               predicted_distortion=rep.predicted_distortion, total_bytes=rep.total_bytes,
               phases={k: round(v, 2) for k, v in rep.seconds.items()},
               zero_bit_fraction=rep.depth_histogram[0] / max(sum(rep.depth_histogram), 1),
               zero_bit_fraction_by_block=zero_bits_by_block(rep),
               distortion_by_round=[h["relative_distortion"] for h in rep.history], **extra)
        print("    phases: " + ", ".join(f"{k} {v:.1f}" for k, v in rep.seconds.items()), flush=True)

    attempt(budget, "reference", "evaluation", run_reference)
    for bits in args.bits:
        attempt(budget, f"radio {bits:g}", "radio", lambda b=bits: run_radio(f"radio {b:g}", bits=b))

    baseline_runs = [] if args.skip_baselines else (
        [("RTN", dict(bits=b, group_size=g, symmetric=s))
         for b in (3, 4) for g in (0, 128) for s in (False, True)]
        + [("GPTQ", dict(bits=b, group_size=128, act_order=a)) for b in (3, 4) for a in (False, True)])
    matched = []
    for method, kw in baseline_runs:
        before = len(rows)
        attempt(budget, f"{method} {kw}", method, lambda m=method, k=kw: run_baseline(m, k))
        if len(rows) > before and kw.get("group_size") == 128 and args.match != "none" and (
                args.match != "gptq" or method == "GPTQ"):
            matched.append(rows[-1])
    for bits in sorted({round(r["bpw"], 4) for r in matched} - set(args.bits)):
        beaten_by = [r for r in matched if round(r["bpw"], 4) == bits]
        if args.match == "needed":
            shown = [dominating_radio_point(rows, r) for r in beaten_by]
            if all(shown):
                print(f"  radio at {bits:g} bpw not needed: " + "; ".join(
                    f"{b['method']} is beaten by {d['method']} ({d['bpw']:.4f} bpw)"
                    for b, d in zip(beaten_by, shown)), flush=True)
                continue
        attempt(budget, f"radio {bits:g}", "radio", lambda b=bits: run_radio(f"radio {b:g}", bits=b))

    # The variants after the max_distortion series (all, or those named by --variants).
    chosen = VARIANT_NAMES if args.variants is None else args.variants
    slow_variants = {k: v for k, v in SLOW_VARIANTS.items() if k in chosen}
    variants = {k: v for k, v in VARIANTS.items() if k in chosen}
    for d in args.distortions:
        attempt(budget, f"radio max_distortion={d:g}", "radio",
                lambda d=d: run_radio(f"radio max_distortion={d:g}", max_distortion=d))
    for bits in [] if args.skip_variants else args.cumulative_bits:
        attempt(budget, f"radio {bits:g} cumulative rounds", "radio",
                lambda b=bits: run_radio(f"radio {b:g} cumulative rounds", bits=b,
                                         round_weighting="cumulative"))
    for bits in [] if args.skip_variants else args.variant_bits:
        for name, overrides in slow_variants.items():
            attempt(budget, f"radio {bits:g} {name}", "radio per-token",
                    lambda b=bits, n=name, o=overrides: run_radio(f"radio {b:g} {n}", bits=b, **o))
    for bits in [] if args.skip_variants else args.variant_bits:
        for name, overrides in variants.items():
            attempt(budget, f"radio {bits:g} {name}", "radio",
                    lambda b=bits, n=name, o=overrides: run_radio(f"radio {b:g} {n}", bits=b, **o))

    save()
    if rows:
        plot(rows, args.out / "quality.png")
    print(table_text(rows, settings, budget), flush=True)
    return 0


# ----------------------------------------------------------------------------------------------
# Output
# ----------------------------------------------------------------------------------------------

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
    print(table_text(rows, f"merged from {', '.join(str(p) for p in paths)}"))
    return 0


def dominating_radio_point(rows, baseline: dict):
    """A radio run at a rate <= the baseline's with lower perplexity on every text, or None."""
    keys = [k for k in baseline if k.startswith("ppl_")]
    for r in sorted(rows, key=lambda r: -r["bpw"]):
        if (r["method"].startswith("radio ") and r["bpw"] <= baseline["bpw"] + 1e-9
                and all(r[k] < baseline[k] for k in keys)):
            return r
    return None


def series_check(rows) -> dict:
    """The max_distortion rows, loosest target first, and whether size and perplexity move the
    right way: bpw non-decreasing and every perplexity non-increasing as the target tightens."""
    series = sorted((r for r in rows if "max_distortion" in r), key=lambda r: -r["max_distortion"])
    keys = [k for k in (rows[0] if rows else {}) if k.startswith("ppl_")]
    if len(series) < 2:
        return {"rows": series, "sizes": None, "perplexities": {k[4:]: None for k in keys}}
    pairs = list(zip(series, series[1:]))
    return {"rows": series,
            "sizes": all(b["bpw"] >= a["bpw"] for a, b in pairs),
            "perplexities": {k[4:]: all(b[k] <= a[k] for a, b in pairs) for k in keys}}


def _yes(flag) -> str:
    return "n/a (fewer than 2 points)" if flag is None else ("yes" if flag else "no")


def table_text(rows, settings: str = "", budget: Budget | None = None) -> str:
    if not rows:
        return "no runs finished"
    keys = [k for k in rows[0] if k.startswith("ppl_")]
    lines = [f"\n{settings}", "",
             "| method | bpw (all-in) | " + " | ".join(k[4:] for k in keys) +
             " | quantize s | eval s |",
             "|---|---|" + "---|" * len(keys) + "---|---|"]
    for r in rows:
        lines.append(f"| {r['method']} | {r['bpw']:.4f} | " +
                     " | ".join(f"{r[k]:.3f}" for k in keys) +
                     f" | {r['seconds']:.1f} | {r.get('eval_seconds', float('nan')):.1f} |")
    check = series_check(rows)
    if check["rows"]:
        lines += ["", "max_distortion series (target -> size -> quality):", "",
                  "| requested max_distortion | bpw (all-in) | predicted distortion | " +
                  " | ".join(k[4:] for k in keys) + " |",
                  "|---|---|---|" + "---|" * len(keys)]
        for r in check["rows"]:
            lines.append(f"| {r['max_distortion']:g} | {r['bpw']:.4f} | "
                         f"{r['predicted_distortion']:.4g} | " +
                         " | ".join(f"{r[k]:.3f}" for k in keys) + " |")
        lines.append(f"sizes monotone: {_yes(check['sizes'])}, perplexities monotone: " +
                     ", ".join(f"{_yes(v)} ({k})" for k, v in check["perplexities"].items()))
    if budget is not None:
        lines.append(f"\nelapsed {budget.elapsed():.1f} s of a {budget.seconds:.0f} s budget")
        for item in budget.skipped:
            lines.append(f"skipped: {item}")
        for item in budget.stopped:
            lines.append(f"stopped: {item}")
        if not budget.skipped and not budget.stopped:
            lines.append("every planned run finished")
    return "\n".join(lines)


def plot(rows, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [k for k in rows[0] if k.startswith("ppl_")]
    fig, axes = plt.subplots(1, len(keys), figsize=(6 * len(keys), 4.5), squeeze=False)
    reference = rows[0]
    families = {"radio": lambda r: r["method"].startswith("radio ") and "max_distortion" not in r
                and r["method"].split()[-1].replace(".", "").isdigit(),
                "radio max_distortion": lambda r: "max_distortion" in r,
                "GPTQ": lambda r: r["method"].startswith("GPTQ"),
                "RTN g128": lambda r: r["method"].startswith("RTN") and "g128" in r["method"],
                "RTN per channel": lambda r: r["method"].startswith("RTN") and "channel" in r["method"]}
    for ax, key in zip(axes[0], keys):
        for name, pick in families.items():
            pts = sorted((r["bpw"], r[key]) for r in rows if pick(r))
            if pts:
                ax.plot(*zip(*pts), marker="o", ls="-" if name != "radio max_distortion" else ":",
                        label=name)
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
