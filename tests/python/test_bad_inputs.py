"""Bad inputs to every public Python function and CLI command give a clear error.

One table row per bad input: the call, the exception type expected, and substrings its message
must contain. The substrings are the offending value (or the argument's name and the value seen)
and what was expected, so a bare "invalid input" or an exception from deep inside torch or numpy
fails the row. Categories: wrong type/dtype/shape/device, NaN and Inf, negative or zero sizes,
out-of-range values, missing files, unwritable outputs, unsupported models, malformed files.

The CLI rows run ``radio.cli.main(argv)``: a usage error exits with status 2 and one
"radio: error: ..." line (argparse's own errors: status 2 and "error: argument ...").
"""
from __future__ import annotations

import json
import types
from pathlib import Path

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")

import radio
from radio import _core, cli, ops
from radio.format import PackedLayer
from radio.nn import RadioLinear
from test_io import fake_quantize, tiny_llama

N, K, GS = 64, 96, 32  # the small layer every per-layer row starts from: C = 2, U = 3, Kp = 96


@pytest.fixture(scope="module")
def e(tmp_path_factory):
    """Valid objects that each row spoils in one way."""
    root = tmp_path_factory.mktemp("bad_inputs")
    g = torch.Generator().manual_seed(0)
    ns = types.SimpleNamespace(root=root)
    ns.W = torch.randn(N, K, generator=g)
    ns.stats = radio.layer_statistics(ns.W, rows_per_group=GS)
    ns.packed = radio.quantize_weight(ns.W, bits=4.5, rows_per_group=GS,
                                      bias=torch.randn(N, generator=g))
    ns.d = ns.packed.to_numpy_dict()
    ns.idx = radio.unpack(ns.packed.qweight, ns.packed.depth, N, GS)
    ns.x = torch.randn(3, K, generator=g)
    ns.layer_kwargs = dict(qweight=ns.packed.qweight, scale=ns.packed.scale, loc=ns.packed.loc,
                           depth=ns.packed.depth, row_perm=ns.packed.row_perm,
                           col_perm=ns.packed.col_perm, bias=ns.packed.bias, out_features=N,
                           in_features=K, rows_per_group=GS, quantizer="laplace")
    ns.model = fake_quantize(tiny_llama())
    ns.saved = radio.save(ns.model, root / "saved")
    ns.radio_file = ns.saved / "model.safetensors"
    ns.text_file = root / "text.txt"
    ns.text_file.write_text("hello world\n" * 20)
    ns.binary_file = root / "not_utf8.txt"
    ns.binary_file.write_bytes(b"\xff\xfe\x00\x81" * 64)
    ns.a_file = root / "a_file"
    ns.a_file.write_text("not a directory")
    ns.foreign_dir = root / "foreign"
    ns.foreign_dir.mkdir()
    (ns.foreign_dir / "notes.txt").write_text("someone else's files")
    ns.plain_dir = root / "plain"  # an unquantized transformers model directory
    tiny_llama().save_pretrained(ns.plain_dir)
    ns.unknown_model_dir = root / "unknown_model"
    ns.unknown_model_dir.mkdir()
    (ns.unknown_model_dir / "config.json").write_text(json.dumps({"model_type": "no-such-arch"}))
    return ns


def packed_with(e, **changes) -> PackedLayer:
    """A copy of e.packed with some fields replaced."""
    fields = {name: getattr(e.packed, name) for name in (
        "out_features", "in_features", "rows_per_group", "quantizer", "row_perm", "col_perm",
        "depth", "scale", "loc", "qweight", "bias")}
    fields.update(changes)
    return PackedLayer(**fields)


def dict_with(e, **changes) -> dict:
    d = dict(e.d)
    d.update(changes)
    return d


def saved_copy(e, name, edit):
    """A copy of the saved model directory with ``edit(path)`` applied."""
    import shutil

    target = e.root / name
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(e.saved, target)
    edit(target)
    return target


def flip_byte(path: Path, offset_from_end: int = 10) -> None:
    data = bytearray(path.read_bytes())
    data[-offset_from_end] ^= 0xFF
    path.write_bytes(bytes(data))


def set_config(path: Path, change) -> None:
    config = json.loads((path / "config.json").read_text())
    change(config)
    (path / "config.json").write_text(json.dumps(config))


def with_nan_weight():
    model = tiny_llama()
    model.model.layers[0].mlp.up_proj.weight.data[3, 5] = float("nan")
    return model


def no_linear_model():
    return torch.nn.Sequential(torch.nn.Embedding(10, 4), torch.nn.LayerNorm(4))


NAN, INF = float("nan"), float("inf")


# ------------------------------------------------------------------------------------------------
# the table: (id, call, exception, substrings of the message)
# ------------------------------------------------------------------------------------------------

def row(id_, call, exc, *words, xfail=None):
    marks = [pytest.mark.xfail(strict=True, reason=xfail)] if xfail else []
    return pytest.param(call, exc, words, id=id_, marks=marks)


ROWS = [
    # ---- radio.layer_statistics ----------------------------------------------------------------
    row("layer_statistics/weight-numpy", lambda e: radio.layer_statistics(e.W.numpy()),
        ValueError, "weight must be a torch.Tensor", "ndarray"),
    row("layer_statistics/weight-1d", lambda e: radio.layer_statistics(e.W[0]),
        ValueError, "2-D", "(96,)"),
    row("layer_statistics/weight-int", lambda e: radio.layer_statistics(e.W.to(torch.int32)),
        ValueError, "floating-point", "torch.int32"),
    row("layer_statistics/weight-empty", lambda e: radio.layer_statistics(torch.zeros(0, 4)),
        ValueError, "both >= 1", "(0, 4)"),
    row("layer_statistics/weight-nan",
        lambda e: radio.layer_statistics(torch.where(e.W > 2, NAN, e.W)),
        ValueError, "non-finite", "NaN or inf"),
    row("layer_statistics/weight-inf", lambda e: radio.layer_statistics(e.W.index_put(
        (torch.tensor([1]), torch.tensor([2])), torch.tensor(INF))),
        ValueError, "1 non-finite values", "expected finite"),
    row("layer_statistics/weight-meta", lambda e: radio.layer_statistics(e.W.to("meta")),
        ValueError, "weight", "meta"),
    row("layer_statistics/rows_per_group-0",
        lambda e: radio.layer_statistics(e.W, rows_per_group=0),
        ValueError, "rows_per_group must be a positive integer", "got 0"),
    row("layer_statistics/rows_per_group-negative",
        lambda e: radio.layer_statistics(e.W, rows_per_group=-3),
        ValueError, "rows_per_group must be a positive integer", "got -3"),
    row("layer_statistics/rows_per_group-float",
        lambda e: radio.layer_statistics(e.W, rows_per_group=2.5),
        ValueError, "rows_per_group must be a positive integer", "2.5"),
    row("layer_statistics/sensitivity-shape",
        lambda e: radio.layer_statistics(e.W, torch.ones(3, 3), rows_per_group=GS),
        ValueError, "sensitivity must have shape", "[64, 96]", "(3, 3)"),
    row("layer_statistics/sensitivity-negative",
        lambda e: radio.layer_statistics(e.W, -torch.ones(N, K), rows_per_group=GS),
        ValueError, "sensitivity", ">= 0"),
    row("layer_statistics/sensitivity-nan",
        lambda e: radio.layer_statistics(e.W, torch.full((N, K), NAN), rows_per_group=GS),
        ValueError, "sensitivity", "finite"),
    row("layer_statistics/row_perm-not-permutation",
        lambda e: radio.layer_statistics(e.W, rows_per_group=GS, row_perm=torch.zeros(N)),
        ValueError, "row_perm must be a permutation of 0..63", "[64]"),
    row("layer_statistics/row_perm-shape",
        lambda e: radio.layer_statistics(e.W, rows_per_group=GS, row_perm=torch.arange(5)),
        ValueError, "row_perm must be a permutation", "(5,)"),

    # ---- radio.allocate ------------------------------------------------------------------------
    row("allocate/no-stats", lambda e: radio.allocate([], bits=4), ValueError,
        "at least one LayerStatistics", "none"),
    row("allocate/stats-not-statistics", lambda e: radio.allocate([e.W], bits=4), ValueError,
        "LayerStatistics", "Tensor"),
    row("allocate/no-target", lambda e: radio.allocate([e.stats]), ValueError,
        "exactly one of bits=", "none"),
    row("allocate/two-targets", lambda e: radio.allocate([e.stats], bits=4, size=1000),
        ValueError, "exactly one of", "'bits'", "'size'"),
    row("allocate/bits-nan", lambda e: radio.allocate([e.stats], bits=NAN), ValueError,
        "bits must be a finite number", "nan"),
    row("allocate/bits-inf", lambda e: radio.allocate([e.stats], bits=INF), ValueError,
        "bits must be a finite number", "inf"),
    row("allocate/bits-string", lambda e: radio.allocate([e.stats], bits="4"), ValueError,
        "bits must be a finite number", "'4'"),
    row("allocate/bits-zero", lambda e: radio.allocate([e.stats], bits=0), ValueError,
        "bits=0.0 is outside the reachable range", "expected bits in ("),
    row("allocate/bits-negative", lambda e: radio.allocate([e.stats], bits=-2), ValueError,
        "bits=-2.0", "expected bits in ("),
    row("allocate/bits-above-8", lambda e: radio.allocate([e.stats], bits=9), ValueError,
        "bits=9.0", ", 8]"),
    row("allocate/size-zero", lambda e: radio.allocate([e.stats], size=0), ValueError,
        "size=0 bytes is outside the reachable range", "expected size in ("),
    row("allocate/size-negative", lambda e: radio.allocate([e.stats], size=-100), ValueError,
        "size=-100", "expected size in ("),
    row("allocate/max_distortion-zero", lambda e: radio.allocate([e.stats], max_distortion=0),
        ValueError, "max_distortion=0.0", "(0, 1]"),
    row("allocate/max_distortion-above-1",
        lambda e: radio.allocate([e.stats], max_distortion=1.5), ValueError,
        "max_distortion=1.5", "(0, 1]"),
    row("allocate/index_bits-negative", lambda e: radio.allocate([e.stats], index_bits=-1),
        ValueError, "index_bits=-1.0", "[0, 8]"),
    row("allocate/rounding", lambda e: radio.allocate([e.stats], bits=4, rounding="up"),
        ValueError, "rounding must be 'rd' or 'nearest'", "'up'"),
    row("allocate/max_depth-9", lambda e: radio.allocate([e.stats], bits=4, max_depth=9),
        ValueError, "max_depth", "9", "8"),
    row("allocate/max_depth-0", lambda e: radio.allocate([e.stats], bits=4, max_depth=0),
        ValueError, "max_depth", "0"),

    # ---- radio.quantize_weight -----------------------------------------------------------------
    row("quantize_weight/weight-list", lambda e: radio.quantize_weight([[1.0]], bits=4),
        ValueError, "weight must be a torch.Tensor", "list"),
    row("quantize_weight/weight-3d", lambda e: radio.quantize_weight(e.W[None], bits=4),
        ValueError, "2-D", "(1, 64, 96)"),
    row("quantize_weight/weight-nan",
        lambda e: radio.quantize_weight(torch.full((4, 4), NAN), bits=4),
        ValueError, "16 non-finite values", "expected finite"),
    row("quantize_weight/quantizer", lambda e: radio.quantize_weight(e.W, bits=4, quantizer="gauss"),
        ValueError, "quantizer must be one of", "'gauss'"),
    row("quantize_weight/no-depth-no-bits", lambda e: radio.quantize_weight(e.W, stats=e.stats),
        ValueError, "depth=", "bits="),
    row("quantize_weight/depth-shape",
        lambda e: radio.quantize_weight(e.W, torch.zeros(5, 5, dtype=torch.uint8), stats=e.stats),
        ValueError, "depth must have shape [C, U] = [2, 3]", "(5, 5)"),
    row("quantize_weight/depth-9",
        lambda e: radio.quantize_weight(e.W, torch.full((2, 3), 9, dtype=torch.uint8),
                                        stats=e.stats),
        ValueError, "depth must hold integers in 0..8", "9"),
    row("quantize_weight/depth-negative",
        lambda e: radio.quantize_weight(e.W, torch.full((2, 3), -1), stats=e.stats),
        ValueError, "depth must hold integers in 0..8", "-1"),
    row("quantize_weight/depth-float",
        lambda e: radio.quantize_weight(e.W, torch.full((2, 3), 2.5), stats=e.stats),
        ValueError, "depth must hold integers", "torch.float32"),
    row("quantize_weight/stats-other-shape",
        lambda e: radio.quantize_weight(e.W[:32], bits=4, stats=e.stats),
        ValueError, "[64, 96]", "[32, 96]"),
    row("quantize_weight/bias-shape",
        lambda e: radio.quantize_weight(e.W, bits=4, rows_per_group=GS, bias=torch.zeros(3)),
        ValueError, "bias must have shape [64]", "(3,)"),
    row("quantize_weight/bias-nan",
        lambda e: radio.quantize_weight(e.W, bits=4, rows_per_group=GS,
                                        bias=torch.full((N,), NAN)),
        ValueError, "bias", "finite"),
    row("quantize_weight/x_mean-shape",
        lambda e: radio.quantize_weight(e.W, bits=4, rows_per_group=GS, x_mean=torch.zeros(7)),
        ValueError, "x_mean must have shape [96]", "(7,)"),
    row("quantize_weight/x_mean-inf",
        lambda e: radio.quantize_weight(e.W, bits=4, rows_per_group=GS,
                                        x_mean=torch.full((K,), INF)),
        ValueError, "x_mean", "finite"),
    row("quantize_weight/bits-out-of-range",
        lambda e: radio.quantize_weight(e.W, bits=0.1, rows_per_group=GS),
        ValueError, "bits=0.1", "expected bits in ("),
    row("quantize_weight/weight-too-large-for-f16",
        lambda e: radio.quantize_weight(e.W * 1e6, bits=4, rows_per_group=GS),
        ValueError, "float16", "65504"),

    # ---- radio.dequantize ----------------------------------------------------------------------
    row("dequantize/dict", lambda e: radio.dequantize(e.d), ValueError,
        "dequantize expects a radio.format.PackedLayer", "dict"),
    row("dequantize/qweight-short",
        lambda e: radio.dequantize(packed_with(e, qweight=e.packed.qweight[:-1])),
        ValueError, "qweight has", "words but the depths need"),
    row("dequantize/depth-9",
        lambda e: radio.dequantize(packed_with(e, depth=torch.full_like(e.packed.depth, 9))),
        ValueError, "depth", "9", "0..8"),

    # ---- radio.pack ----------------------------------------------------------------------------
    row("pack/indices-float", lambda e: radio.pack(e.idx.float(), e.packed.depth, GS),
        ValueError, "indices must be uint8 [N, Kp]", "torch.float32"),
    row("pack/indices-1d", lambda e: radio.pack(e.idx[0], e.packed.depth, GS),
        ValueError, "indices must be uint8 [N, Kp]", "(96,)"),
    row("pack/depth-int64", lambda e: radio.pack(e.idx, e.packed.depth.long(), GS),
        ValueError, "depth must be uint8 [C, U]", "torch.int64"),
    row("pack/indices-columns", lambda e: radio.pack(e.idx[:, :40].contiguous(), e.packed.depth, GS),
        ValueError, "indices", "96", "40"),
    row("pack/depth-chunks", lambda e: radio.pack(e.idx, e.packed.depth[:1].contiguous(), GS),
        ValueError, "depth", "(2, 3)", "(1, 3)"),
    row("pack/rows_per_group-0", lambda e: radio.pack(e.idx, e.packed.depth, 0),
        ValueError, "rows_per_group must be a positive integer", "got 0"),
    row("pack/index-too-large", lambda e: radio.pack(
        e.idx.clone().index_fill_(0, torch.tensor([0]), 255), e.packed.depth, GS),
        ValueError, "indices[0,", "does not fit", "expected <"),
    row("pack/depth-9", lambda e: radio.pack(e.idx, torch.full_like(e.packed.depth, 9), GS),
        ValueError, "depth", "9", "0..8"),

    # ---- radio.unpack --------------------------------------------------------------------------
    row("unpack/qweight-int64", lambda e: radio.unpack(e.packed.qweight.long(), e.packed.depth, N, GS),
        ValueError, "qweight must be int32 [W]", "torch.int64"),
    row("unpack/qweight-2d", lambda e: radio.unpack(e.packed.qweight[None], e.packed.depth, N, GS),
        ValueError, "qweight must be int32 [W]", "shape (1,"),
    row("unpack/qweight-length",
        lambda e: radio.unpack(e.packed.qweight[:5], e.packed.depth, N, GS),
        ValueError, "qweight has 5 words", "the depths need"),
    row("unpack/out_features-0", lambda e: radio.unpack(e.packed.qweight, e.packed.depth, 0, GS),
        ValueError, "out_features", "0"),
    row("unpack/out_features-negative",
        lambda e: radio.unpack(e.packed.qweight, e.packed.depth, -64, GS),
        ValueError, "out_features", "-64"),
    row("unpack/rows_per_group-negative",
        lambda e: radio.unpack(e.packed.qweight, e.packed.depth, N, -1),
        ValueError, "rows_per_group must be a positive integer", "-1"),
    row("unpack/depth-does-not-match-out_features",
        lambda e: radio.unpack(e.packed.qweight, e.packed.depth, 200, GS),
        ValueError, "depth must have shape (7, *) for 200 rows", "(2, 3)"),

    # ---- radio.RadioLinear.from_packed ---------------------------------------------------------
    row("from_packed/dict", lambda e: RadioLinear.from_packed(e.d), TypeError,
        "from_packed expects a radio.format.PackedLayer", "dict"),
    row("from_packed/row_perm-duplicate",
        lambda e: RadioLinear.from_packed(packed_with(
            e, row_perm=e.packed.row_perm.clone().index_fill_(0, torch.tensor([1]), 0))),
        ValueError, "row_perm is not a permutation", "appears twice"),
    row("from_packed/col_perm-out-of-range",
        lambda e: RadioLinear.from_packed(packed_with(
            e, col_perm=e.packed.col_perm.clone().index_fill_(1, torch.tensor([0]), 500))),
        ValueError, "col_perm[0, 0] = 500", "expected a column in 0..95"),
    row("from_packed/scale-nan",
        lambda e: RadioLinear.from_packed(packed_with(
            e, scale=torch.full_like(e.packed.scale, NAN))),
        ValueError, "scale/loc", "not finite"),
    row("from_packed/scale-float32",
        lambda e: RadioLinear.from_packed(packed_with(e, scale=e.packed.scale.float())),
        ValueError, "scale", "float16", "float32"),
    row("from_packed/depth-shape",
        lambda e: RadioLinear.from_packed(packed_with(e, depth=e.packed.depth[:, :2])),
        ValueError, "depth", "(2, 3)", "(2, 2)"),
    row("from_packed/quantizer",
        lambda e: RadioLinear.from_packed(packed_with(e, quantizer="gauss")),
        ValueError, "quantizer must be", "laplace", "\"gauss\""),
    row("from_packed/dtype", lambda e: RadioLinear.from_packed(e.packed, dtype=torch.int8),
        ValueError, "dtype must be float16, bfloat16, float32 or None", "torch.int8"),
    row("from_packed/out_features-0",
        lambda e: RadioLinear.from_packed(packed_with(e, out_features=0)),
        ValueError, "out_features must be positive, got 0"),

    # ---- radio.ops.qlinear ---------------------------------------------------------------------
    row("qlinear/x-int", lambda e: ops.qlinear(e.x.long(), **e.layer_kwargs), ValueError,
        "x must be float16, bfloat16 or float32", "torch.int64"),
    row("qlinear/x-features", lambda e: ops.qlinear(e.x[:, :5], **e.layer_kwargs), ValueError,
        "x must have shape [..., 96]", "(3, 5)"),
    row("qlinear/x-0d", lambda e: ops.qlinear(torch.tensor(1.0), **e.layer_kwargs), ValueError,
        "x must have shape [..., 96]", "()"),
    row("qlinear/quantizer", lambda e: ops.qlinear(e.x, **{**e.layer_kwargs, "quantizer": "gauss"}),
        ValueError, "quantizer must be one of", "'gauss'"),
    row("qlinear/qweight-dtype",
        lambda e: ops.qlinear(e.x, **{**e.layer_kwargs, "qweight": e.packed.qweight.long()}),
        ValueError, "qweight must be torch.int32", "torch.int64"),
    row("qlinear/scale-shape",
        lambda e: ops.qlinear(e.x, **{**e.layer_kwargs, "scale": e.packed.scale[:1]}),
        ValueError, "scale must have shape (2, 96)", "(1, 96)"),
    row("qlinear/bias-shape",
        lambda e: ops.qlinear(e.x, **{**e.layer_kwargs, "bias": e.packed.bias[:3]}),
        ValueError, "bias must have shape (64,)", "(3,)"),
    row("qlinear/out_features-0", lambda e: ops.qlinear(e.x, **{**e.layer_kwargs, "out_features": 0}),
        ValueError, "out_features must be a positive int", "got 0"),
    row("qlinear/rows_per_group-negative",
        lambda e: ops.qlinear(e.x, **{**e.layer_kwargs, "rows_per_group": -32}),
        ValueError, "rows_per_group must be a positive int", "-32"),
    row("qlinear/qweight-short",
        lambda e: ops.qlinear(e.x, **{**e.layer_kwargs, "qweight": e.packed.qweight[:10]}),
        ValueError, "qweight has 10 words", "the depths need"),  # CPU only: no per-call sync
    row("ops.prepare/qweight-short",
        lambda e: ops.prepare(**{**e.layer_kwargs, "qweight": e.packed.qweight[:10]}),
        ValueError, "qweight has 10 words", "the depths need"),

    # ---- radio._core ---------------------------------------------------------------------------
    row("_core.table/quantizer", lambda e: _core.table("gauss", 3), ValueError,
        "quantizer must be \"laplace\" or \"uniform\"", "\"gauss\""),
    row("_core.table/depth-9", lambda e: _core.table("laplace", 9), ValueError, "depth", "9"),
    row("_core.pack/int32-indices",
        lambda e: _core.pack(e.idx.numpy().astype(np.int32), e.d["depth"], GS), ValueError,
        "indices must have dtype uint8", "int32"),
    row("_core.pack/not-contiguous",
        lambda e: _core.pack(np.asfortranarray(e.idx.numpy()), e.d["depth"], GS), ValueError,
        "C-contiguous"),
    row("_core.pack/list", lambda e: _core.pack([[1, 2]], e.d["depth"], GS), ValueError,
        "indices must be a numpy uint8 array", "list"),
    row("_core.unpack/out_features-0", lambda e: _core.unpack(e.d["qweight"], e.d["depth"], 0, GS),
        ValueError, "out_features", "0"),
    row("_core.quantize_layer/nan-weight",
        lambda e: _core.quantize_layer(np.full((N, K), np.nan, np.float32), e.d["row_perm"],
                                       e.d["col_perm"], e.d["depth"], GS), ValueError,
        "weight[0, 0] = nan", "not finite"),
    row("_core.quantize_layer/float64-weight",
        lambda e: _core.quantize_layer(e.W.double().numpy(), e.d["row_perm"], e.d["col_perm"],
                                       e.d["depth"], GS), ValueError,
        "weight must have dtype float32", "float64"),
    row("_core.quantize_layer/quantizer",
        lambda e: _core.quantize_layer(e.W.numpy(), e.d["row_perm"], e.d["col_perm"],
                                       e.d["depth"], GS, "gauss"), ValueError,
        "quantizer must be", "\"gauss\""),
    row("_core.dequantize/missing-key",
        lambda e: _core.dequantize({k: v for k, v in e.d.items() if k != "depth"}),
        ValueError, "depth"),
    row("_core.dequantize/not-dict", lambda e: _core.dequantize([1, 2, 3]), (ValueError, TypeError),
        "dict", "list"),
    row("_core.dequant_matmul/x-shape",
        lambda e: _core.dequant_matmul(e.d, np.zeros((3, 5), np.float32)), ValueError,
        "x must have shape", "96", "(3, 5)"),
    row("_core.validate_layer/bad-depth",
        lambda e: _core.validate_layer(dict_with(e, depth=np.full_like(e.d["depth"], 12))),
        ValueError, "depth[0, 0] = 12", "expected 0..8"),
    row("_core.layer_bytes/out_features-negative",
        lambda e: _core.layer_bytes(dict_with(e, out_features=-5)), ValueError,
        "out_features", "-5"),
    row("_core.save/missing-directory",
        lambda e: _core.save(str(e.root / "no" / "such" / "x.radio"), {"w": e.d}, {}),
        ValueError, "no/such/x.radio", "No such file or directory"),
    row("_core.save/parent-is-a-file",
        lambda e: _core.save(str(e.a_file / "x.radio"), {"w": e.d}, {}),
        ValueError, "a_file/x.radio", "Not a directory"),
    row("_core.save/reserved-metadata",
        lambda e: _core.save(str(e.root / "m.radio"), {"w": e.d}, {"crc32": "x"}),
        ValueError, "metadata key \"crc32\" is reserved"),
    row("_core.save/metadata-not-string",
        lambda e: _core.save(str(e.root / "m.radio"), {"w": e.d}, {"note": 5}),
        (ValueError, TypeError), "note"),
    row("_core.load/missing", lambda e: _core.load(str(e.root / "missing.radio")),
        (ValueError, FileNotFoundError), "missing.radio", "No such file or directory"),
    row("_core.load/directory", lambda e: _core.load(str(e.root)),
        ValueError, "is not a regular file"),
    row("_core.load/text-file", lambda e: _core.load(str(e.text_file)), ValueError,
        "text.txt", "header length", "not a safetensors file"),
    row("_core.allocate/coef-nan",
        lambda e: _core.allocate(np.array([1.0, np.nan]), np.array([32.0, 32.0]),
                                 target_index_bits=2.0), ValueError, "coef", "nan"),
    row("_core.allocate/weight-negative",
        lambda e: _core.allocate(np.array([1.0, 2.0]), np.array([32.0, -32.0]),
                                 target_index_bits=2.0), ValueError, "weight", "-32"),
    row("_core.allocate/length-mismatch",
        lambda e: _core.allocate(np.array([1.0, 2.0]), np.array([32.0]), target_index_bits=2.0),
        ValueError, "weight has 1", "2"),
    row("_core.allocate/float32-coef",
        lambda e: _core.allocate(np.array([1.0], np.float32), np.array([32.0]),
                                 target_index_bits=2.0), ValueError, "float64", "float32"),
    row("_core.GroupStats/negative", lambda e: _core.GroupStats(-1), (ValueError, TypeError),
        "-1"),
    row("_core.GroupStats.add/length",
        lambda e: _core.GroupStats(4).add(np.zeros(3), 1), ValueError, "(4,)", "(3,)"),
    row("_core.group_spread/bad-row_perm",
        lambda e: _core.group_spread(e.W.numpy(), np.zeros(N, np.int32), GS), ValueError,
        "row_perm[1] = 0 repeats an earlier entry", "permutation of 0..63"),
    row("_core.InputMean.add/shape",
        lambda e: _core.InputMean(K).add(np.zeros((2, 5), np.float32)), ValueError,
        "96", "(2, 5)"),

    # ---- radio.QuantConfig ---------------------------------------------------------------------
    row("QuantConfig/rows_per_group-0", lambda e: radio.QuantConfig(rows_per_group=0),
        ValueError, "rows_per_group", "0"),
    row("QuantConfig/quantizer", lambda e: radio.QuantConfig(quantizer="gauss"),
        ValueError, "quantizer", "'gauss'"),
    row("QuantConfig/rounds-negative", lambda e: radio.QuantConfig(rounds=-2),
        ValueError, "rounds", "-2"),
    row("QuantConfig/unknown-field", lambda e: radio.QuantConfig(bits=4), TypeError, "bits"),

    # ---- radio.quantize ------------------------------------------------------------------------
    row("quantize/not-a-module", lambda e: radio.quantize("smollm2", bits=4), ValueError,
        "model must be a torch.nn.Module", "str"),
    row("quantize/unsupported-model-no-linear", lambda e: radio.quantize(no_linear_model(), bits=4),
        ValueError, "found no nn.Linear layers", "Sequential"),
    row("quantize/nan-weights", lambda e: radio.quantize(with_nan_weight(), bits=4), ValueError,
        "model.layers.0.mlp.up_proj", "1 non-finite weights", "expected finite"),
    row("quantize/bits-nan", lambda e: radio.quantize(tiny_llama(), bits=NAN), ValueError,
        "bits must be a finite number", "nan"),
    row("quantize/bits-zero", lambda e: radio.quantize(tiny_llama(), bits=0), ValueError,
        "bits=0.0", "expected bits in ("),
    row("quantize/bits-above-8", lambda e: radio.quantize(tiny_llama(), bits=12), ValueError,
        "bits=12.0", ", 8]"),
    row("quantize/no-target", lambda e: radio.quantize(tiny_llama(), bits=None), ValueError,
        "bits=", "size=", "max_distortion="),
    row("quantize/size-and-distortion",
        lambda e: radio.quantize(tiny_llama(), size=10, max_distortion=0.5), ValueError,
        "at most one of size= and max_distortion=", "size=10", "max_distortion=0.5"),
    row("quantize/size-negative", lambda e: radio.quantize(tiny_llama(), size=-5), ValueError,
        "size=-5", "expected size in ("),
    row("quantize/max_distortion-2", lambda e: radio.quantize(tiny_llama(), max_distortion=2.0),
        ValueError, "max_distortion=2.0", "(0, 1]"),
    row("quantize/config-string", lambda e: radio.quantize(tiny_llama(), bits=4, config="cpu"),
        ValueError, "config must be a radio.QuantConfig", "str"),
    row("quantize/calib-float-tensor",
        lambda e: radio.quantize(tiny_llama(), bits=4, calib=torch.rand(2, 16)), ValueError,
        "integer tensor", "torch.float32"),
    row("quantize/calib-ids-out-of-vocab",
        lambda e: radio.quantize(tiny_llama(), bits=4, calib=torch.full((2, 16), 500)),
        ValueError, "[500, 500]", "[0, 128)"),
    row("quantize/calib-text-without-tokenizer",
        lambda e: radio.quantize(tiny_llama(), bits=4, calib=["some text"]), ValueError,
        "needs a tokenizer", "tokenizer="),
    row("quantize/calib-int", lambda e: radio.quantize(tiny_llama(), bits=4, calib=42),
        ValueError, "calib must be", "int"),
    row("quantize/calib-empty-tensor",
        lambda e: radio.quantize(tiny_llama(), bits=4, calib=torch.zeros(0, 16, dtype=torch.long)),
        ValueError, "empty", "(0, 16)"),

    # ---- radio.save ----------------------------------------------------------------------------
    row("save/not-a-transformers-model",
        lambda e: radio.save(torch.nn.Linear(2, 2), e.root / "out-linear"), TypeError,
        "needs a transformers model", "Linear"),
    row("save/not-quantized", lambda e: radio.save(tiny_llama(), e.root / "out-plain"),
        ValueError, "no RadioLinear layers", "radio.quantize"),
    row("save/missing-parent", lambda e: radio.save(e.model, e.root / "no" / "such" / "out"),
        FileNotFoundError, "no/such", "does not exist"),
    row("save/target-is-a-file", lambda e: radio.save(e.model, e.a_file), FileExistsError,
        "a_file", "not a directory"),
    row("save/target-is-foreign-dir", lambda e: radio.save(e.model, e.foreign_dir),
        FileExistsError, "foreign", "not a radio model"),
    row("save/unwritable-directory", lambda e: radio.save(e.model, Path("/proc/self/radio-out")),
        PermissionError, "/proc/self", "not writable"),
    row("save/report-not-json",
        lambda e: radio.save(e.model, e.root / "out-report", report={"x": object()}),
        TypeError, "object", "JSON"),

    # ---- radio.load ----------------------------------------------------------------------------
    row("load/missing-directory", lambda e: radio.load(e.root / "nowhere"), FileNotFoundError,
        "nowhere", "not found"),
    row("load/a-file", lambda e: radio.load(e.a_file), FileNotFoundError, "a_file"),
    row("load/no-config", lambda e: radio.load(saved_copy(
        e, "no-config", lambda p: (p / "config.json").unlink())), FileNotFoundError,
        "config.json", "not a radio model directory"),
    row("load/config-not-json", lambda e: radio.load(saved_copy(
        e, "bad-json", lambda p: (p / "config.json").write_text("{not json"))), ValueError,
        "config.json is not valid JSON"),
    row("load/plain-transformers-dir", lambda e: radio.load(e.plain_dir), ValueError,
        "no 'radio' section", "from_pretrained"),
    row("load/newer-format", lambda e: radio.load(saved_copy(
        e, "newer", lambda p: set_config(p, lambda c: c["radio"].update(format_version=99)))),
        ValueError, "format_version 99", "up to 1", "upgrade radio"),
    row("load/unsupported-model-class", lambda e: radio.load(saved_copy(
        e, "class", lambda p: set_config(p, lambda c: c["radio"].update(model_class="os")))),
        ValueError, "model_class 'os'", "not a transformers model class"),
    row("load/missing-dense", lambda e: radio.load(saved_copy(
        e, "no-dense", lambda p: (p / "dense.safetensors").unlink())), FileNotFoundError,
        "dense.safetensors", "incomplete"),
    row("load/corrupted-radio-file", lambda e: radio.load(saved_copy(
        e, "flipped", lambda p: flip_byte(p / "model.safetensors"))), ValueError,
        "CRC-32", "damaged"),
    row("load/truncated-radio-file", lambda e: radio.load(saved_copy(
        e, "truncated", lambda p: (p / "model.safetensors").write_bytes(
            (p / "model.safetensors").read_bytes()[:100]))), ValueError,
        "model.safetensors", "truncated"),
    row("load/truncated-dense-file", lambda e: radio.load(saved_copy(
        e, "dense-truncated", lambda p: (p / "dense.safetensors").write_bytes(
            (p / "dense.safetensors").read_bytes()[:4000]))), ValueError,
        "dense.safetensors", "not a valid safetensors file"),
    row("load/device-nonsense", lambda e: radio.load(e.saved, device="gpu7"), ValueError,
        "device must be a torch device", "'gpu7'"),
    pytest.param(lambda e: radio.load(e.saved, device="cuda"), ValueError,
                 ("device 'cuda' needs CUDA", "expected 'cpu'"), id="load/cuda-without-gpu",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="has a GPU")),

    # ---- radio.perplexity ----------------------------------------------------------------------
    row("perplexity/ctx-1", lambda e: radio.perplexity(e.model, torch.arange(100) % 128, ctx=1),
        ValueError, "ctx must be an int >= 2", "got 1"),
    row("perplexity/ctx-float", lambda e: radio.perplexity(e.model, torch.arange(100), ctx=2.5),
        ValueError, "ctx must be an int >= 2", "2.5"),
    row("perplexity/stride-0",
        lambda e: radio.perplexity(e.model, torch.arange(100), ctx=16, stride=0), ValueError,
        "stride must be an int in 1..ctx=16", "got 0"),
    row("perplexity/batch_size-0",
        lambda e: radio.perplexity(e.model, torch.arange(100), ctx=16, batch_size=0),
        ValueError, "batch_size must be a positive int", "got 0"),
    row("perplexity/max_windows-negative",
        lambda e: radio.perplexity(e.model, torch.arange(100), ctx=16, max_windows=-1),
        ValueError, "max_windows must be a positive int", "-1"),
    row("perplexity/text-without-tokenizer", lambda e: radio.perplexity(e.model, "some text"),
        ValueError, "needs a tokenizer"),
    row("perplexity/float-ids", lambda e: radio.perplexity(e.model, torch.rand(100), ctx=16),
        ValueError, "token ids must be integers", "torch.float32"),
    row("perplexity/2d-ids",
        lambda e: radio.perplexity(e.model, torch.zeros(2, 50, dtype=torch.long), ctx=16),
        ValueError, "1-D (or [1, T])", "(2, 50)"),
    row("perplexity/too-short",
        lambda e: radio.perplexity(e.model, torch.arange(10), ctx=16, progress=False),
        ValueError, "10 tokens", "ctx=16"),
    row("perplexity/ids-out-of-vocab",
        lambda e: radio.perplexity(e.model, torch.full((40,), 500), ctx=16, progress=False),
        ValueError, "500", "[0, 128)"),
    row("perplexity/negative-ids",
        lambda e: radio.perplexity(e.model, torch.full((40,), -3), ctx=16, progress=False),
        ValueError, "-3", "[0, 128)"),
]


@pytest.mark.parametrize("call, exc, words", ROWS)
def test_bad_input_gives_a_clear_error(e, call, exc, words):
    with pytest.raises(exc) as err:
        call(e)
    message = str(err.value)
    missing = [w for w in words if w not in message]
    assert not missing, f"message {message!r} does not mention {missing}"


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available() or not radio.has_cuda(),
                    reason="needs a CUDA GPU and radio._cuda")
def test_qlinear_refuses_tensors_on_another_device(e):
    with pytest.raises(ValueError) as err:
        ops.qlinear(e.x.cuda().half(), **e.layer_kwargs)  # the layer stays on the CPU
    assert "all layer tensors must be on cuda" in str(err.value) and "cpu" in str(err.value)


# ------------------------------------------------------------------------------------------------
# the CLI: radio quantize / eval / inspect
# ------------------------------------------------------------------------------------------------

def cli_row(id_, argv, *words, xfail=None):
    marks = [pytest.mark.xfail(strict=True, reason=xfail)] if xfail else []
    return pytest.param(argv, words, id=id_, marks=marks)


CLI_ROWS = [
    cli_row("no-command", lambda e: [], "required", "command"),
    cli_row("unknown-command", lambda e: ["compress", "x"], "invalid choice", "'compress'"),
    # quantize
    cli_row("quantize/missing-model", lambda e: ["quantize", e.root / "nowhere", "--bits", "4",
                                                 "--out", e.root / "q1"],
            "radio: error:", "nowhere", "not found", "smollm2-135m"),
    cli_row("quantize/dir-without-config", lambda e: ["quantize", e.foreign_dir, "--bits", "4",
                                                      "--out", e.root / "q2"],
            "radio: error:", "foreign", "no config.json"),
    cli_row("quantize/unsupported-model", lambda e: ["quantize", e.unknown_model_dir, "--bits",
                                                     "4", "--out", e.root / "q3"],
            "radio: error:", "no-such-arch"),
    cli_row("quantize/bits-negative", lambda e: ["quantize", e.plain_dir, "--bits", "-1",
                                                 "--out", e.root / "q4"],
            "argument --bits", "expected a positive number", "'-1'"),
    cli_row("quantize/bits-nan", lambda e: ["quantize", e.plain_dir, "--bits", "nan",
                                            "--out", e.root / "q5"],
            "argument --bits", "'nan'"),
    cli_row("quantize/bits-word", lambda e: ["quantize", e.plain_dir, "--bits", "four",
                                             "--out", e.root / "q6"],
            "argument --bits", "expected a number", "'four'"),
    cli_row("quantize/bits-above-8", lambda e: ["quantize", e.plain_dir, "--bits", "9", "--out",
                                                e.root / "q7", "--quiet"],
            "radio: error:", "bits=9.0", ", 8]"),
    cli_row("quantize/two-targets", lambda e: ["quantize", e.plain_dir, "--bits", "4", "--size",
                                               "1000", "--out", e.root / "q8"],
            "radio: error:", "exactly one of --bits, --size, --max-distortion"),
    cli_row("quantize/no-target", lambda e: ["quantize", e.plain_dir, "--out", e.root / "q9"],
            "radio: error:", "exactly one of --bits"),
    cli_row("quantize/size-zero", lambda e: ["quantize", e.plain_dir, "--size", "0",
                                             "--out", e.root / "q10"],
            "argument --size", "expected a positive integer", "'0'"),
    cli_row("quantize/group-size-negative", lambda e: ["quantize", e.plain_dir, "--bits", "4",
                                                       "--group-size", "-8", "--out",
                                                       e.root / "q11"],
            "argument --group-size", "'-8'"),
    cli_row("quantize/out-parent-missing", lambda e: ["quantize", e.plain_dir, "--bits", "4",
                                                      "--out", e.root / "no" / "such" / "q"],
            "radio: error:", "no/such", "does not exist"),
    cli_row("quantize/out-is-a-file", lambda e: ["quantize", e.plain_dir, "--bits", "4",
                                                 "--out", e.a_file],
            "radio: error:", "a_file", "not a directory"),
    cli_row("quantize/out-unwritable", lambda e: ["quantize", e.plain_dir, "--bits", "4",
                                                  "--out", "/proc/self/radio-out"],
            "radio: error:", "/proc/self", "not writable"),
    cli_row("quantize/out-foreign-dir", lambda e: ["quantize", e.plain_dir, "--bits", "4",
                                                   "--out", e.foreign_dir],
            "radio: error:", "foreign", "not a radio model"),
    cli_row("quantize/dtype", lambda e: ["quantize", e.plain_dir, "--bits", "4", "--dtype",
                                         "int8", "--out", e.root / "q12"],
            "radio: error:", "--dtype must be one of", "'int8'"),
    cli_row("quantize/calib-missing", lambda e: ["quantize", e.plain_dir, "--bits", "4",
                                                 "--calib", e.root / "nothing.txt", "--out",
                                                 e.root / "q13"],
            "radio: error:", "nothing.txt", "not found"),
    cli_row("quantize/calib-is-eval-text", lambda e: ["quantize", e.plain_dir, "--bits", "4",
                                                      "--calib", "wikitext2", "--out",
                                                      e.root / "q14"],
            "radio: error:", "'wikitext2'", "never calibrate on it"),
    cli_row("quantize/quantizer", lambda e: ["quantize", e.plain_dir, "--bits", "4",
                                             "--quantizer", "gauss", "--out", e.root / "q15"],
            "argument --quantizer", "'gauss'"),
    # eval
    cli_row("eval/missing-text", lambda e: ["eval", e.saved, "--text", e.root / "nothing.txt"],
            "radio: error:", "nothing.txt", "not found"),
    cli_row("eval/text-not-utf8", lambda e: ["eval", e.saved, "--text", e.binary_file],
            "radio: error:", "not_utf8.txt", "not UTF-8"),
    cli_row("eval/ctx-zero", lambda e: ["eval", e.saved, "--text", e.text_file, "--ctx", "0"],
            "argument --ctx", "'0'"),
    cli_row("eval/missing-model", lambda e: ["eval", e.root / "nowhere", "--text", e.text_file],
            "radio: error:", "nowhere", "not found"),
    cli_row("eval/model-without-tokenizer", lambda e: ["eval", e.saved, "--text", e.text_file],
            "radio: error:", "no tokenizer files"),
    cli_row("eval/corrupted-model", lambda e: ["eval", saved_copy(
        e, "cli-flipped", lambda p: flip_byte(p / "model.safetensors")), "--text", e.text_file],
            "radio: error:", "CRC-32", "damaged"),
    # inspect
    cli_row("inspect/missing", lambda e: ["inspect", e.root / "nowhere"],
            "radio: error:", "nowhere", "not found"),
    cli_row("inspect/not-a-radio-file", lambda e: ["inspect", e.text_file],
            "radio: error:", "text.txt", "not a safetensors file"),
    cli_row("inspect/plain-transformers-dir", lambda e: ["inspect", e.plain_dir],
            "radio: error:", "plain/model.safetensors is not a radio file", "expected 'radio'"),
    cli_row("inspect/dense-file-not-radio", lambda e: ["inspect", e.saved / "dense.safetensors"],
            "radio: error:", "not a radio file", "expected 'radio'"),
    cli_row("inspect/corrupted", lambda e: ["inspect", saved_copy(
        e, "cli-flipped2", lambda p: flip_byte(p / "model.safetensors"))],
            "radio: error:", "CRC-32", "damaged"),
]


@pytest.mark.parametrize("argv, words", CLI_ROWS)
def test_cli_bad_input_exits_2_with_a_clear_message(e, capsys, argv, words):
    try:
        code = cli.main([str(a) for a in argv(e)])
    except SystemExit as exit_:  # argparse's own errors
        code = exit_.code
    _, err = capsys.readouterr()
    assert code == 2, f"exit status {code}, stderr {err!r}"
    missing = [w for w in words if w not in err]
    assert not missing, f"stderr {err!r} does not mention {missing}"
    assert "Traceback" not in err
