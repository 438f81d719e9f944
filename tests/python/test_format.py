"""radio._core format functions against the numpy twin (radio.reference) and the file rules of
docs/format.md: pack/unpack, quantizers, dequantize, dequant_matmul, save/load and rejection of
malformed files and inputs."""
from __future__ import annotations

import json
import math
import struct
import zlib

import numpy as np
import pytest

from radio import _core, reference
from radio.format import LayerGeometry

# (N, K, gs): single row/column, K not a multiple of 32, ragged last chunk, one big chunk.
SHAPES = [(1, 1, 1), (7, 33, 4), (33, 7, 32), (70, 45, 32), (100, 1000, 256), (1000, 70, 256)]


def random_layer(rng, n, k, gs, quantizer="laplace", depth=None, bias=False, refine=True,
                 symmetric=False):
    """A layer dict from radio._core.quantize_layer on random Laplace weights."""
    geo = LayerGeometry(n, k, gs)
    weight = rng.laplace(size=(n, k)).astype(np.float32) * 0.02
    row_perm = rng.permutation(n).astype(np.int32)
    col_perm = np.full((geo.chunks, geo.padded_in), k, dtype=np.int32)
    for c in range(geo.chunks):
        col_perm[c, :k] = rng.permutation(k)
    if depth is None:
        depth = rng.integers(0, 9, size=(geo.chunks, geo.units)).astype(np.uint8)
    out = _core.quantize_layer(weight, row_perm, col_perm, depth, gs, quantizer, refine, symmetric)
    layer = dict(out_features=n, in_features=k, rows_per_group=gs, quantizer=quantizer,
                 row_perm=row_perm, col_perm=col_perm, depth=depth, **out)
    if bias:
        layer["bias"] = rng.standard_normal(n).astype(np.float16).view(np.uint16)
    return layer, weight


def random_indices(rng, depth, n, gs):
    kp = depth.shape[1] * 32
    per_row = np.repeat(depth, 32, axis=1)[np.arange(n) // gs]  # [N, Kp] depth of each index
    return (rng.integers(0, 256, size=(n, kp)) & ((1 << per_row.astype(np.int64)) - 1)).astype(
        np.uint8)


# ---------------------------------------------------------------------------------------------
# tables, pack, unpack
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("quantizer", ["laplace", "uniform"])
def test_tables_equal_reference(quantizer):
    for depth in range(9):
        np.testing.assert_array_equal(_core.table(quantizer, depth),
                                      reference.table(quantizer, depth))
    np.testing.assert_allclose(_core.table("laplace", 1), [-math.log(2), math.log(2)], rtol=1e-6)
    np.testing.assert_allclose(_core.table("laplace", 2), [-1.3863, -0.2877, 0.2877, 1.3863],
                               atol=1e-4)
    with pytest.raises(ValueError, match="depth"):
        _core.table(quantizer, 9)


@pytest.mark.parametrize("n,k,gs", SHAPES)
def test_pack_unpack_equal_reference(n, k, gs):
    rng = np.random.default_rng(n * 1000 + k)
    geo = LayerGeometry(n, k, gs)
    depth = rng.integers(0, 9, size=(geo.chunks, geo.units)).astype(np.uint8)
    idx = random_indices(rng, depth, n, gs)
    q = _core.pack(idx, depth, gs)
    assert q.dtype == np.int32 and q.size == geo.qweight_words(depth)
    np.testing.assert_array_equal(q, reference.pack(idx, depth, gs))
    np.testing.assert_array_equal(_core.unpack(q, depth, n, gs), idx)
    np.testing.assert_array_equal(reference.unpack(q, depth, n, gs), idx)


@pytest.mark.parametrize("bits", range(9))
def test_pack_every_depth(bits):
    rng = np.random.default_rng(bits)
    n, k, gs = 40, 70, 16
    geo = LayerGeometry(n, k, gs)
    depth = np.full((geo.chunks, geo.units), bits, dtype=np.uint8)
    idx = random_indices(rng, depth, n, gs)
    q = _core.pack(idx, depth, gs)
    assert q.size == n * geo.units * bits
    np.testing.assert_array_equal(q, reference.pack(idx, depth, gs))
    np.testing.assert_array_equal(_core.unpack(q, depth, n, gs), idx)


def test_pack_word_layout_by_hand():
    # 2 chunks of 2 rows, 1 unit: depth 1 then 2. Chunk 0 owns words 0,1 (one per row); chunk 1
    # starts at word 2 and interleaves rows: word 2 + b * 2 + r.
    idx = np.zeros((4, 32), dtype=np.uint8)
    idx[0, 0] = 1       # chunk 0 row 0 bit 0
    idx[1, 31] = 1      # chunk 0 row 1 bit 31
    idx[2, 16] = 3      # chunk 1 row 0: bits 32, 33 -> word b=1 bits 0, 1
    idx[3, 0] = 2       # chunk 1 row 1: bit 1 of word b=0
    depth = np.array([[1], [2]], dtype=np.uint8)
    q = _core.pack(idx, depth, 2).view(np.uint32)
    np.testing.assert_array_equal(q, [1, 1 << 31, 0, 2, 3, 0])


def test_pack_rejects_bad_arguments():
    depth = np.full((1, 1), 2, dtype=np.uint8)
    idx = np.zeros((4, 32), dtype=np.uint8)
    with pytest.raises(ValueError, match=r"indices must have dtype uint8, got int64"):
        _core.pack(idx.astype(np.int64), depth, 4)
    with pytest.raises(ValueError, match=r"shape \(\*, 32\), got \(4, 33\)"):
        _core.pack(np.zeros((4, 33), np.uint8), depth, 4)
    with pytest.raises(ValueError, match="C-contiguous"):
        _core.pack(np.zeros((32, 4), np.uint8).T, depth, 4)
    with pytest.raises(ValueError, match="rows_per_group must be positive, got 0"):
        _core.pack(idx, depth, 0)
    with pytest.raises(ValueError, match=r"depth must have shape \(2, 1\)"):
        _core.pack(idx, depth, 2)
    idx[3, 5] = 4
    with pytest.raises(ValueError, match=r"indices\[3, 5\] = 4"):
        _core.pack(idx, depth, 4)
    with pytest.raises(ValueError, match="depth.*got 9"):
        _core.pack(np.zeros((4, 32), np.uint8), np.full((1, 1), 9, np.uint8), 4)
    with pytest.raises(ValueError, match="empty"):
        _core.pack(np.zeros((0, 32), np.uint8), np.zeros((0, 1), np.uint8), 4)
    with pytest.raises(ValueError, match="qweight has 3 words but the depths need 8"):
        _core.unpack(np.zeros(3, np.int32), depth, 4, 4)


# ---------------------------------------------------------------------------------------------
# quantizers and dequantize
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("quantizer,symmetric", [("laplace", False), ("uniform", False),
                                                 ("uniform", True)])
@pytest.mark.parametrize("n,k,gs", [(7, 33, 4), (70, 45, 32), (300, 40, 256)])
def test_quantize_layer_equals_reference(quantizer, symmetric, n, k, gs):
    rng = np.random.default_rng(5)
    layer, weight = random_layer(rng, n, k, gs, quantizer, refine=False, symmetric=symmetric)
    ref = reference.quantize_layer(weight, layer["row_perm"], layer["col_perm"], layer["depth"],
                                   gs, quantizer, symmetric)
    np.testing.assert_array_equal(layer["scale"], ref["scale"])
    np.testing.assert_array_equal(layer["loc"], ref["loc"])
    idx = _core.unpack(layer["qweight"], layer["depth"], n, gs)
    # expm1 may differ by an ulp between libm and numpy: allow a value on a bin edge to move.
    assert np.mean(idx != ref["indices"]) < 1e-3
    assert np.abs(idx.astype(int) - ref["indices"]).max(initial=0) <= 1


@pytest.mark.parametrize("quantizer", ["laplace", "uniform"])
def test_dequantize_equals_reference(quantizer):
    rng = np.random.default_rng(11)
    for n, k, gs in [(7, 33, 4), (70, 45, 32), (1000, 70, 256)]:
        layer, _ = random_layer(rng, n, k, gs, quantizer)
        np.testing.assert_array_equal(_core.dequantize(layer), reference.dequantize(layer))


def test_dequant_matmul_with_bias():
    rng = np.random.default_rng(2)
    layer, _ = random_layer(rng, 70, 45, 32, bias=True)
    x = rng.standard_normal((9, 45)).astype(np.float32)
    y = _core.dequant_matmul(layer, x)
    assert y.shape == (9, 70) and y.dtype == np.float32
    np.testing.assert_allclose(y, reference.dequant_matmul(layer, x), rtol=1e-5, atol=1e-5)
    layer.pop("bias")
    y0 = _core.dequant_matmul(layer, x)
    np.testing.assert_allclose(y0, x.astype(np.float64) @ _core.dequantize(layer).T.astype(
        np.float64), rtol=1e-5, atol=1e-5)


def test_zero_bit_groups_reconstruct_to_location():
    rng = np.random.default_rng(3)
    for quantizer in ("laplace", "uniform"):
        layer, weight = random_layer(rng, 40, 64, 16, quantizer,
                                     depth=np.zeros((3, 2), np.uint8))
        assert layer["qweight"].size == 0
        w_hat = _core.dequantize(layer)
        for c in range(3):
            rows = layer["row_perm"][c * 16:(c + 1) * 16]
            for p in range(64):
                col = layer["col_perm"][c, p]
                group = weight[rows, col]
                expect = np.sort(group)[(group.size - 1) // 2] if quantizer == "laplace" else (
                    (group.max() + group.min()) * np.float32(0.5))
                assert np.all(w_hat[rows, col] == reference.to_half(expect))
                assert layer["scale"][c, p] == 0


def test_refinement_never_increases_group_error():
    rng = np.random.default_rng(4)
    n, k, gs = 96, 64, 32
    for quantizer in ("laplace", "uniform"):
        plain, weight = random_layer(rng, n, k, gs, quantizer, refine=False)
        refined = dict(plain)
        refined.update(_core.quantize_layer(weight, plain["row_perm"], plain["col_perm"],
                                            plain["depth"], gs, quantizer, True))
        err_plain = (_core.dequantize(plain) - weight).astype(np.float64) ** 2
        err_refined = (_core.dequantize(refined) - weight).astype(np.float64) ** 2
        for c in range(n // gs):
            rows = plain["row_perm"][c * gs:(c + 1) * gs]
            per_group_plain = err_plain[rows].sum(axis=0)
            per_group_refined = err_refined[rows].sum(axis=0)
            assert np.all(per_group_refined <= per_group_plain * (1 + 1e-6) + 1e-30)
        assert err_refined.sum() < err_plain.sum()  # and it helps overall


def test_scale_and_loc_are_f16():
    rng = np.random.default_rng(6)
    layer, _ = random_layer(rng, 64, 64, 32)
    assert layer["scale"].dtype == np.uint16 and layer["loc"].dtype == np.uint16
    assert np.all(np.isfinite(layer["scale"].view(np.float16)))
    # padding positions hold 0
    layer2, _ = random_layer(rng, 64, 40, 32)
    assert np.all(layer2["scale"][:, 40:] == 0) and np.all(layer2["loc"][:, 40:] == 0)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_quantize_rejects_non_finite_weights(bad):
    rng = np.random.default_rng(0)
    layer, weight = random_layer(rng, 8, 40, 4)
    weight[5, 17] = bad
    with pytest.raises(ValueError, match=r"weight\[5, 17\] = .* is not finite"):
        _core.quantize_layer(weight, layer["row_perm"], layer["col_perm"], layer["depth"], 4)


def test_quantize_rejects_bad_inputs():
    rng = np.random.default_rng(0)
    layer, weight = random_layer(rng, 8, 40, 4)
    args = [layer["row_perm"], layer["col_perm"], layer["depth"], 4]
    with pytest.raises(ValueError, match="weight must not be empty"):
        _core.quantize_layer(np.zeros((0, 40), np.float32), *args)
    with pytest.raises(ValueError, match="weight must have dtype float32, got float64"):
        _core.quantize_layer(weight.astype(np.float64), *args)
    with pytest.raises(ValueError, match="quantizer must be"):
        _core.quantize_layer(weight, *args, quantizer="gauss")
    with pytest.raises(ValueError, match="symmetric"):
        _core.quantize_layer(weight, *args, quantizer="laplace", symmetric=True)
    perm = layer["row_perm"].copy()
    perm[0] = perm[1]
    with pytest.raises(ValueError, match="row_perm is not a permutation"):
        _core.quantize_layer(weight, perm, *args[1:])
    colp = layer["col_perm"].copy()
    colp[1, 63] = 3
    with pytest.raises(ValueError, match=r"col_perm\[1, 63\] = 3 is a padding position"):
        _core.quantize_layer(weight, layer["row_perm"], colp, *args[2:])
    with pytest.raises(ValueError, match="too large|float16"):
        _core.quantize_layer(weight * np.float32(1e8), *args)


def test_dequant_matmul_rejects_bad_x():
    rng = np.random.default_rng(0)
    layer, _ = random_layer(rng, 8, 40, 4)
    with pytest.raises(ValueError, match=r"x must have shape \(\*, 40\), got \(2, 41\)"):
        _core.dequant_matmul(layer, np.zeros((2, 41), np.float32))
    x = np.zeros((2, 40), np.float32)
    x[1, 3] = np.nan
    with pytest.raises(ValueError, match=r"x\[1, 3\] = nan is not finite"):
        _core.dequant_matmul(layer, x)


def test_validate_layer_and_bytes():
    rng = np.random.default_rng(8)
    layer, _ = random_layer(rng, 70, 45, 32, bias=True)
    _core.validate_layer(layer)
    geo = LayerGeometry(70, 45, 32)
    assert _core.layer_bytes(layer) == geo.side_bytes(True) + 4 * layer["qweight"].size
    bad = dict(layer, depth=layer["depth"].copy())
    bad["depth"][0, 0] = 9
    with pytest.raises(ValueError, match=r"depth\[0, 0\] = 9"):
        _core.validate_layer(bad)
    bad = dict(layer, qweight=layer["qweight"][:-1])
    with pytest.raises(ValueError, match="qweight has"):
        _core.validate_layer(bad)
    bad = dict(layer, has_bias=False)
    with pytest.raises(ValueError, match="has_bias"):
        _core.validate_layer(bad)
    bad = dict(layer, scale=layer["scale"].view(np.float16))
    with pytest.raises(ValueError, match="scale .*uint16"):
        _core.validate_layer(bad)


# ---------------------------------------------------------------------------------------------
# files
# ---------------------------------------------------------------------------------------------

def read_header(path):
    raw = open(path, "rb").read()
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8:8 + n]), raw[8 + n:]


def write_raw(path, header, data, header_len=None):
    text = json.dumps(header).encode()
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text) if header_len is None else header_len))
        f.write(text)
        f.write(data)


def with_crc(header, data):
    header["__metadata__"]["crc32"] = "%08x" % zlib.crc32(data)
    return header


@pytest.fixture
def saved(tmp_path):
    rng = np.random.default_rng(9)
    layers = {"model.layers.0.mlp": random_layer(rng, 70, 45, 32, bias=True)[0],
              "weight": random_layer(rng, 33, 7, 4, "uniform")[0]}
    path = tmp_path / "m.radio"
    _core.save(str(path), layers, {"note": "hi"})
    return path, layers


def assert_same_layer(a, b):
    for key in ("out_features", "in_features", "rows_per_group", "quantizer"):
        assert a[key] == b[key]
    for key in ("row_perm", "col_perm", "depth", "scale", "loc", "qweight", "bias"):
        if key in a or key in b:
            assert a[key].dtype == b[key].dtype
            np.testing.assert_array_equal(a[key], b[key])


def test_save_load_round_trip(saved):
    path, layers = saved
    loaded, meta = _core.load(path)  # os.PathLike works too
    assert meta == {"note": "hi"}
    assert list(loaded) == list(layers)
    for name in layers:
        assert_same_layer(loaded[name], layers[name])
    assert loaded["model.layers.0.mlp"]["has_bias"] and not loaded["weight"]["has_bias"]
    assert not list(path.parent.glob("*.tmp-*"))


def test_python_safetensors_reads_cpp_file(saved):
    from safetensors.numpy import load_file
    from safetensors import safe_open

    path, layers = saved
    tensors = load_file(str(path))
    layer = layers["model.layers.0.mlp"]
    assert tensors["model.layers.0.mlp.row_perm"].dtype == np.uint16
    np.testing.assert_array_equal(tensors["model.layers.0.mlp.row_perm"], layer["row_perm"])
    np.testing.assert_array_equal(tensors["model.layers.0.mlp.scale"].view(np.uint16),
                                  layer["scale"])
    np.testing.assert_array_equal(tensors["model.layers.0.mlp.qweight"], layer["qweight"])
    with safe_open(str(path), "np") as f:
        meta = f.metadata()
    assert meta["format"] == "radio" and meta["format_version"] == "1"
    assert json.loads(meta["layers"])["weight"] == {
        "out_features": 33, "in_features": 7, "rows_per_group": 4, "quantizer": "uniform",
        "has_bias": False}
    _, data = read_header(path)
    assert meta["crc32"] == "%08x" % zlib.crc32(data)


def test_cpp_reads_python_safetensors_file(tmp_path):
    from safetensors.numpy import save_file

    rng = np.random.default_rng(10)
    layer, _ = random_layer(rng, 70, 45, 32, bias=True)
    tensors = {"lin.row_perm": layer["row_perm"].astype(np.uint16),
               "lin.col_perm": layer["col_perm"].astype(np.uint16),
               "lin.depth": layer["depth"], "lin.scale": layer["scale"].view(np.float16),
               "lin.loc": layer["loc"].view(np.float16), "lin.qweight": layer["qweight"],
               "lin.bias": layer["bias"].view(np.float16)}
    meta = {"format": "radio", "format_version": "1", "crc32": "00000000", "extra": "x",
            "layers": json.dumps({"lin": {"out_features": 70, "in_features": 45,
                                          "rows_per_group": 32, "quantizer": "laplace",
                                          "has_bias": True}})}
    path = tmp_path / "py.safetensors"
    save_file(tensors, str(path), metadata=meta)
    # Patch the CRC in place (same length, so no offset moves).
    raw = bytearray(path.read_bytes())
    (n,) = struct.unpack("<Q", raw[:8])
    crc = b"%08x" % zlib.crc32(bytes(raw[8 + n:]))
    at = raw.index(b'"00000000"', 8, 8 + n)
    raw[at + 1:at + 9] = crc
    path.write_bytes(bytes(raw))
    loaded, meta_back = _core.load(str(path))
    assert meta_back == {"extra": "x"}
    assert_same_layer(loaded["lin"], layer)


def test_large_axes_use_int32_permutations(tmp_path):
    rng = np.random.default_rng(12)
    layers = {"tall": random_layer(rng, 70000, 3, 4096, depth=np.full((18, 1), 2, np.uint8))[0],
              "wide": random_layer(rng, 2, 70000, 2, depth=np.full((1, 2188), 1, np.uint8))[0]}
    path = tmp_path / "big.radio"
    _core.save(str(path), layers)
    header, _ = read_header(path)
    assert header["tall.row_perm"]["dtype"] == "I32" and header["tall.col_perm"]["dtype"] == "U16"
    assert header["wide.col_perm"]["dtype"] == "I32" and header["wide.row_perm"]["dtype"] == "U16"
    loaded, _ = _core.load(str(path))
    for name in layers:
        assert_same_layer(loaded[name], layers[name])
        assert _core.layer_bytes(loaded[name]) == LayerGeometry(
            layers[name]["out_features"], layers[name]["in_features"],
            layers[name]["rows_per_group"]).side_bytes(False) + 4 * layers[name]["qweight"].size


def test_save_is_atomic_on_error(saved):
    path, layers = saved
    before = path.read_bytes()
    bad = dict(layers["weight"], depth=layers["weight"]["depth"].copy())
    bad["depth"][0, 0] = 9
    with pytest.raises(ValueError, match="layer 'weight'"):
        _core.save(str(path), {"weight": bad})
    with pytest.raises(ValueError, match="reserved"):
        _core.save(str(path), layers, {"crc32": "0"})
    with pytest.raises(ValueError, match="cannot create"):
        _core.save(str(path.parent / "no_such_dir" / "x.radio"), layers)
    assert path.read_bytes() == before
    assert not list(path.parent.glob("*.tmp-*"))


# Each case edits (header, data) of a valid file and names the error it must produce.
def _truncate(h, d):
    return h, d[:-10], True


def _flip_byte(h, d):
    d = bytearray(d)
    d[len(d) // 2] ^= 0x40
    return h, bytes(d), False


def _offsets_out_of_range(h, d):
    h["weight.depth"]["data_offsets"] = [len(d) - 2, len(d) + 6]
    return h, d, True


def _overlap(h, d):
    a = h["weight.loc"]["data_offsets"]
    h["weight.loc"]["data_offsets"] = [a[0] - 2, a[1] - 2]
    return h, d, True


def _wrong_dtype(h, d):
    h["weight.depth"]["dtype"] = "I8"
    return h, d, True


def _shape_mismatch(h, d):
    h["weight.scale"]["shape"] = [h["weight.scale"]["shape"][0] + 1, 32]
    return h, d, True


def _newer_version(h, d):
    h["__metadata__"]["format_version"] = "2"
    return h, d, True


def _huge_tensor(h, d):
    h["weight.qweight"]["shape"] = [250_000_000_000]
    h["weight.qweight"]["data_offsets"] = [0, 1_000_000_000_000]
    return h, d, True


def _missing_tensor(h, d):
    del h["weight.loc"]
    return h, d, True


def _unknown_layer(h, d):
    h["other.depth"] = dict(h["weight.depth"])
    return h, d, True


def _not_radio(h, d):
    h["__metadata__"]["format"] = "gguf"
    return h, d, True


def _bad_layers_json(h, d):
    h["__metadata__"]["layers"] = "{not json"
    return h, d, True


def _bad_attribute(h, d):
    layers = json.loads(h["__metadata__"]["layers"])
    layers["weight"]["rows_per_group"] = 4.5
    h["__metadata__"]["layers"] = json.dumps(layers)
    return h, d, True


def _depth_9(h, d):
    d = bytearray(d)
    d[h["weight.depth"]["data_offsets"][0]] = 9
    return h, bytes(d), True


def _bad_permutation(h, d):
    d = bytearray(d)
    begin = h["weight.row_perm"]["data_offsets"][0]
    d[begin:begin + 2] = d[begin + 2:begin + 4]  # row_perm[0] = row_perm[1]
    return h, bytes(d), True


REJECTIONS = [
    (_truncate, "data_offsets|truncated"),
    (_flip_byte, "CRC-32"),
    (_offsets_out_of_range, r"not within the data section"),
    (_overlap, "overlaps"),
    (_wrong_dtype, "dtype must be U8, got I8"),
    (_shape_mismatch, "shape must be"),
    (_newer_version, "format_version 2 is newer"),
    (_huge_tensor, "W <= |not within"),
    (_missing_tensor, "has no tensor 'loc'"),
    (_unknown_layer, "belongs to no layer"),
    (_not_radio, "must be \"radio\""),
    (_bad_layers_json, "not valid JSON"),
    (_bad_attribute, "rows_per_group must be an integer"),
    (_depth_9, r"depth\[0, 0\] = 9"),
    (_bad_permutation, "row_perm is not a permutation"),
]


@pytest.mark.parametrize("edit,message", REJECTIONS, ids=[e.__name__[1:] for e, _ in REJECTIONS])
def test_load_rejects_malformed_files(saved, edit, message):
    path, _ = saved
    header, data = read_header(path)
    header, data, fix_crc = edit(header, data)
    if fix_crc:  # so that the check under test, not the CRC, is what fails
        with_crc(header, data)
    write_raw(path, header, data)
    with pytest.raises(ValueError, match=message):
        _core.load(str(path))


def test_load_rejects_header_length_beyond_file(saved):
    path, _ = saved
    header, data = read_header(path)
    write_raw(path, header, data, header_len=10 ** 12)
    with pytest.raises(ValueError, match="header length 1000000000000 runs past the end"):
        _core.load(str(path))
    path.write_bytes(b"\x01\x02")
    with pytest.raises(ValueError, match="too short"):
        _core.load(str(path))
    with pytest.raises(ValueError, match="cannot open"):
        _core.load(str(path.parent / "missing.radio"))
