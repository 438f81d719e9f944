"""The ``radio`` command: quantize, evaluate and inspect models.

    radio quantize MODEL --bits 3.5 --out DIR     MODEL: a local transformers directory, or
                                                  "smollm2-135m" (the packaged SmolLM2-135M)
    radio eval DIR --text FILE                    perplexity of a saved model (or of MODEL)
    radio inspect DIR                             per-layer bits, bits per weight, bytes, depths

Errors the user can fix (missing files, unwritable output, bad values) print one line starting
with "radio: error:" and exit with status 2; nothing is written on error.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import List, Optional

__all__ = ["main"]

TEXT_NAMES = {"wikitext2": "WikiText-2 test (non-empty rows)",
              "sotu-eval": "State of the Union 1990-2021"}


class UsageError(Exception):
    """A problem with the command line or its files: printed without a traceback."""


# ------------------------------------------------------------------------------------------------
# argument types
# ------------------------------------------------------------------------------------------------

def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _dtype(name: str):
    import torch

    table = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
    if name not in table:
        raise UsageError(f"--dtype must be one of {sorted(table)}, got {name!r}")
    return table[name]


# ------------------------------------------------------------------------------------------------
# loading models and text
# ------------------------------------------------------------------------------------------------

def load_source_model(name: str, dtype, device: str):
    """(model, tokenizer) of an unquantized model: "smollm2-135m" or a local transformers dir."""
    from .models import SMOLLM2_NAME, load_smollm2

    if name == SMOLLM2_NAME:
        return load_smollm2(dtype=dtype, device=device)
    path = Path(name)
    if not path.exists():
        raise UsageError(f"model {name!r} not found: expected a local transformers model "
                         f"directory or the name {SMOLLM2_NAME!r}")
    if not (path / "config.json").is_file():
        raise UsageError(f"{path} has no config.json: not a transformers model directory")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype, local_files_only=True)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError, TypeError):
        tokenizer = None  # a model without tokenizer files; text needs one, token ids do not
    return model.to(device).eval(), tokenizer


def load_any_model(name: str, dtype, device: str):
    """A radio directory (quantized) or anything ``load_source_model`` takes."""
    from . import io

    path = Path(name)
    if path.is_dir() and io.is_radio_dir(path):
        model = io.load(path, device=device)
        tokenizer = None
        if any(path.glob("tokenizer*")):
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        return model, tokenizer
    return load_source_model(name, dtype, device)


def read_text(spec: str) -> tuple:
    """(text, label) for a file path or one of the names in TEXT_NAMES."""
    from . import data

    if spec == "wikitext2":
        return data.wikitext2_test(), TEXT_NAMES[spec]
    if spec == "sotu-eval":
        return data.sotu_text("evaluation"), TEXT_NAMES[spec]
    path = Path(spec)
    if not path.is_file():
        raise UsageError(f"text file not found: {path} (or use one of {sorted(TEXT_NAMES)})")
    try:
        return path.read_text(encoding="utf-8"), str(path)
    except UnicodeDecodeError as e:
        raise UsageError(f"{path} is not UTF-8 text: {e}") from None


def read_calibration_text(spec: str) -> str:
    """A calibration text file, or "sotu-calib" (never an evaluation text)."""
    from . import data

    if spec == "sotu-calib":
        return data.sotu_text("calibration")
    if spec in TEXT_NAMES:
        raise UsageError(f"{spec!r} is an evaluation text; never calibrate on it (use a file "
                         f"or 'sotu-calib')")
    return read_text(spec)[0]


# ------------------------------------------------------------------------------------------------
# commands
# ------------------------------------------------------------------------------------------------

def cmd_quantize(args) -> int:
    from . import io
    from .config import QuantConfig
    from .quantize import quantize

    out = Path(args.out)
    io._check_target(out)  # fail before the slow part: missing parent, unwritable, not radio
    targets = [t for t in (args.bits, args.size, args.max_distortion) if t is not None]
    if len(targets) != 1:
        raise UsageError("give exactly one of --bits, --size, --max-distortion")
    overrides = {k: v for k, v in (("rounds", args.rounds), ("seq_len", args.seq_len),
                                   ("rows_per_group", args.group_size),
                                   ("quantizer", args.quantizer), ("seed", args.seed))
                 if v is not None}
    if args.quiet:
        overrides["progress"] = False
    dtype = _dtype(args.dtype)
    device = args.device
    preset = args.preset or ("paper" if device.startswith("cuda") else "cpu")
    config = getattr(QuantConfig, preset)(**overrides)

    calib = None if args.calib is None else [read_calibration_text(args.calib)]
    model, tokenizer = load_source_model(args.model, dtype, device)
    if calib is not None:
        if tokenizer is None:
            raise UsageError("--calib text needs the model's tokenizer, and none was found")
    start = time.perf_counter()
    quantize(model, bits=args.bits, size=args.size, max_distortion=args.max_distortion,
             calib=calib, config=config, tokenizer=tokenizer, verbose=not args.quiet,
             checkpoint_dir=args.checkpoint_dir)
    io.save(model, out, tokenizer=tokenizer)
    summary = json.loads((out / io.CONFIG_FILE).read_text())["radio"]["summary"]
    print(f"radio: saved {out} ({summary['layers']} quantized layers, "
          f"{summary['bits_per_weight']:.4f} bits per weight all-in, {summary['bytes']:,} bytes) "
          f"in {time.perf_counter() - start:.1f}s")
    return 0


def cmd_eval(args) -> int:
    from .eval import perplexity

    text, label = read_text(args.text)
    model, tokenizer = load_any_model(args.model, _dtype(args.dtype), args.device)
    if tokenizer is None:
        raise UsageError(f"{args.model} has no tokenizer files: save the model with its "
                         f"tokenizer (radio.save(model, dir, tokenizer=...))")
    ppl = perplexity(model, text, ctx=args.ctx, tokenizer=tokenizer, batch_size=args.batch_size,
                     max_windows=args.max_windows, progress=not args.quiet)
    windows = "all windows" if args.max_windows is None else f"first {args.max_windows} windows"
    result = {"model": str(args.model), "text": label, "ctx": args.ctx, "windows": windows,
              "perplexity": ppl}
    if args.json:
        print(json.dumps(result))
    else:
        print(f"perplexity {ppl:.4f}  ({label}, ctx {args.ctx}, {windows})")
    return 0


def inspect_table(path) -> dict:
    """Per-layer and total sizes of a radio directory or file (no model is built)."""
    from . import io
    from .report import depth_histogram

    layers, _ = io.read_packed_layers(path)
    rows = []
    for name, p in layers.items():
        rows.append({"name": name, "shape": [p.out_features, p.in_features],
                     "rows_per_group": p.rows_per_group, "quantizer": p.quantizer,
                     "bytes": p.nbytes(), "bits_per_weight": p.bits_per_weight(),
                     "index_bits_per_weight": p.index_bits_per_weight(),
                     "depth_histogram": depth_histogram(p)})
    return {"layers": rows, "total": io.size_summary(layers),
            "depth_histogram": [sum(r["depth_histogram"][b] for r in rows) for b in range(9)]}


def _format_hist(hist: List[int]) -> str:
    total = max(sum(hist), 1)
    return " ".join(f"{100.0 * n / total:4.0f}" for n in hist)


def cmd_inspect(args) -> int:
    path = Path(args.model)
    if not path.exists():
        raise UsageError(f"not found: {path}")
    table = inspect_table(path)
    if args.json:
        print(json.dumps(table))
        return 0
    width = max(len(r["name"]) for r in table["layers"])
    print(f"{'layer':<{width}}  {'shape':>11}  {'gs':>4}  {'bytes':>10}  {'bpw':>6}  "
          f"{'index':>6}  % weights at depth 0..8")
    for r in table["layers"]:
        shape = "x".join(map(str, r["shape"]))
        print(f"{r['name']:<{width}}  {shape:>11}  {r['rows_per_group']:>4}  {r['bytes']:>10,}  "
              f"{r['bits_per_weight']:6.3f}  {r['index_bits_per_weight']:6.3f}  "
              f"{_format_hist(r['depth_histogram'])}")
    t = table["total"]
    print(f"{'total':<{width}}  {t['weights']:>11,}  {'':>4}  {t['bytes']:>10,}  "
          f"{t['bits_per_weight']:6.3f}  {t['index_bits_per_weight']:6.3f}  "
          f"{_format_hist(table['depth_histogram'])}")
    return 0


# ------------------------------------------------------------------------------------------------
# parser
# ------------------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="radio", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    q = sub.add_parser("quantize", help="quantize a model and save it as a radio directory")
    q.add_argument("model", help='local transformers model directory, or "smollm2-135m"')
    q.add_argument("--out", required=True, help="output directory (replaced atomically)")
    q.add_argument("--bits", type=_positive_float,
                   help="target bits per weight, all side information counted")
    q.add_argument("--size", type=_positive_int, help="target bytes of the quantized layers")
    q.add_argument("--max-distortion", type=_positive_float,
                   help="target modelled distortion relative to 0 bits, in (0, 1]")
    q.add_argument("--calib", help='calibration text: a file, or "sotu-calib" '
                                   '(State of the Union < 1990); default: self-generated')
    q.add_argument("--preset", choices=("paper", "cpu"),
                   help="settings preset (default: paper on CUDA, cpu otherwise)")
    q.add_argument("--rounds", type=_positive_int)
    q.add_argument("--seq-len", type=_positive_int)
    q.add_argument("--group-size", type=_positive_int, help="rows per group")
    q.add_argument("--quantizer", choices=("laplace", "uniform"))
    q.add_argument("--seed", type=int)
    q.add_argument("--checkpoint-dir",
                   help="save the state after every calibration round there; rerunning the same "
                        "command resumes after the last saved round (same result)")
    q.set_defaults(func=cmd_quantize)

    e = sub.add_parser("eval", help="perplexity of a radio directory (or an unquantized model)")
    e.add_argument("model", help='radio directory, transformers directory, or "smollm2-135m"')
    e.add_argument("--text", required=True,
                   help=f"UTF-8 text file, or one of {sorted(TEXT_NAMES)}")
    e.add_argument("--ctx", type=_positive_int, default=2048,
                   help="window length (capped at the model's maximum)")
    e.add_argument("--max-windows", type=_positive_int,
                   help="evaluate only the first windows (a shorter slice)")
    e.add_argument("--batch-size", type=_positive_int, default=1)
    e.add_argument("--json", action="store_true", help="print one JSON line")
    e.set_defaults(func=cmd_eval)

    i = sub.add_parser("inspect", help="per-layer bits, bits per weight, bytes, depth histogram")
    i.add_argument("model", help="radio directory or radio .safetensors file")
    i.add_argument("--json", action="store_true")
    i.set_defaults(func=cmd_inspect)

    for p in (q, e):
        p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
        p.add_argument("--dtype", default="float32", help="float32, float16 or bfloat16")
        p.add_argument("--quiet", action="store_true", help="no progress bars or report")
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (UsageError, FileNotFoundError, FileExistsError, PermissionError, ValueError) as e:
        if os.environ.get("RADIO_DEBUG"):
            raise
        print(f"radio: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
