"""Malformed and hostile radio files through the Python loader (radio.io, used by radio.load and
``radio inspect``) and the C++ loader (radio._core.load), side by side.

A fixed-seed mutator edits a valid file: flipped bytes, truncations, and header edits (dtypes,
shapes, data offsets, layer attributes, metadata), then rewrites the header's CRC-32 so that most
edits get past the checksum. The contract on every file: each loader either returns layers that
pass validation or raises ValueError (FileNotFoundError for a missing file) with a message, never
another exception; and the Python loader accepts nothing the C++ loader (the format's reference
reader, docs/format.md "File") rejects. The libFuzzer targets (tests/fuzz) do the same for the
C++ loader at scale.
"""
from __future__ import annotations

import copy
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest

from radio import _core, io, reference

UNIT = 32


def layer_dict(rng, n, k, gs, bias):
    chunks, units = -(-n // gs), -(-k // UNIT)
    kp = units * UNIT
    depth = rng.integers(0, 9, (chunks, units)).astype(np.uint8)
    limit = np.repeat(np.repeat(1 << depth.astype(np.int64), UNIT, axis=1), gs, axis=0)[:n]
    idx = (rng.integers(0, 256, (n, kp)) % limit).astype(np.uint8)
    col_perm = np.full((chunks, kp), k, np.int32)
    for c in range(chunks):
        col_perm[c, :k] = rng.permutation(k)
    scale = np.zeros((chunks, kp), np.float16)
    loc = np.zeros((chunks, kp), np.float16)
    scale[:, :k] = rng.uniform(0.01, 0.1, (chunks, k))
    loc[:, :k] = rng.normal(0, 0.01, (chunks, k))
    d = dict(out_features=n, in_features=k, rows_per_group=gs, quantizer="laplace",
             row_perm=rng.permutation(n).astype(np.int32), col_perm=col_perm, depth=depth,
             scale=scale.view(np.uint16), loc=loc.view(np.uint16),
             qweight=reference.pack(idx, depth, gs))
    if bias:
        d["bias"] = rng.normal(0, 0.1, n).astype(np.float16).view(np.uint16)
    return d


@pytest.fixture(scope="module")
def valid_file(tmp_path_factory):
    rng = np.random.default_rng(7)
    path = tmp_path_factory.mktemp("hostile") / "valid.radio"
    _core.save(str(path), {"a.q_proj": layer_dict(rng, 40, 70, 16, True),
                           "a.k_proj": layer_dict(rng, 33, 32, 8, False)}, {"note": "seed"})
    return path.read_bytes()


def split(raw: bytes):
    n = struct.unpack("<Q", raw[:8])[0]
    return json.loads(raw[8:8 + n]), raw[8 + n:]


def join(header: dict, data: bytes, fix_crc: bool = True) -> bytes:
    header = copy.deepcopy(header)
    if fix_crc and isinstance(header.get("__metadata__"), dict):
        header["__metadata__"]["crc32"] = f"{zlib.crc32(data):08x}"
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + data


DTYPES = ["U8", "U16", "I16", "I32", "I64", "F16", "F32", "F64", "BOOL", "BF16"]


def mutate(raw: bytes, rng: np.random.Generator) -> tuple:
    """(description, bytes) of one random edit of a valid file."""
    header, data = split(raw)
    tensors = [k for k in header if k != "__metadata__"]
    kind = rng.integers(0, 9)
    name = tensors[rng.integers(0, len(tensors))]
    entry = header[name]
    if kind == 0:  # flip bytes of the data section, CRC fixed
        data = bytearray(data)
        for _ in range(rng.integers(1, 4)):
            data[rng.integers(0, len(data))] ^= int(rng.integers(1, 256))
        return "flip data bytes", join(header, bytes(data))
    if kind == 1:  # truncate anywhere
        cut = int(rng.integers(0, len(raw)))
        return f"truncate at {cut}", raw[:cut]
    if kind == 2:
        entry["dtype"] = DTYPES[rng.integers(0, len(DTYPES))]
        return f"{name} dtype {entry['dtype']}", join(header, data)
    if kind == 3:
        choice = rng.integers(0, 4)
        entry["shape"] = [[], [0], [int(rng.integers(1, 2 ** 40))], entry["shape"][::-1] + [1]][choice]
        return f"{name} shape {entry['shape']}", join(header, data)
    if kind == 4:
        begin, end = entry["data_offsets"]
        entry["data_offsets"] = [[end, begin], [0, 2 ** 40], [begin, end + 2],
                                 [max(begin - 2, 0), end - 2]][rng.integers(0, 4)]
        return f"{name} data_offsets {entry['data_offsets']}", join(header, data)
    meta = header["__metadata__"]
    layers = json.loads(meta["layers"])
    layer = list(layers)[rng.integers(0, len(layers))]
    if kind == 5:
        key = ["out_features", "in_features", "rows_per_group"][rng.integers(0, 3)]
        layers[layer][key] = [0, -1, 2 ** 31, 2 ** 62, "7", 7.5, None, layers[layer][key] + 1][
            rng.integers(0, 8)]
        meta["layers"] = json.dumps(layers)
        return f"{layer}.{key} = {layers[layer][key]!r}", join(header, data)
    if kind == 6:
        key = ["quantizer", "has_bias"][rng.integers(0, 2)]
        layers[layer][key] = ["gauss", True, False, 1, None][rng.integers(0, 5)]
        meta["layers"] = json.dumps(layers)
        return f"{layer}.{key} = {layers[layer][key]!r}", join(header, data)
    if kind == 7:
        edit = rng.integers(0, 5)
        if edit == 0:
            meta["format_version"] = ["2", "0", "-1", "one", "1.0"][rng.integers(0, 5)]
        elif edit == 1:
            meta["layers"] = ["{", "[]", "null", json.dumps({"x": 1})][rng.integers(0, 4)]
        elif edit == 2:
            del header[name]
        elif edit == 3:
            header[name + "x"] = entry
        else:
            meta.pop(["format", "layers", "format_version"][rng.integers(0, 3)])
        return f"metadata/entries edit {edit}", join(header, data)
    # a tensor's bytes replaced by values out of the format's range, CRC fixed
    begin, end = header[name]["data_offsets"]
    data = bytearray(data)
    data[begin:end] = bytes(rng.integers(0, 256, end - begin, dtype=np.uint8))
    return f"{name} random bytes", join(header, bytes(data))


def load_outcome(loader, path):
    try:
        loader(path)
    except ValueError as e:
        assert str(e), "empty error message"
        return "rejected"
    return "accepted"


def test_hand_made_1kb_file_claiming_a_1tb_tensor_is_refused(tmp_path):
    """The header is self-consistent ([2^20, 2^20] layer, a 2^38-word qweight = 1 TB) and its
    CRC right; only the file is 1 KB. Both loaders must refuse it from the header alone."""
    n = k = 1 << 20
    gs, data = 256, b"\0" * 64
    chunks = n // gs
    layers = {"w": dict(out_features=n, in_features=k, rows_per_group=gs, quantizer="laplace",
                        has_bias=False)}
    offsets = np.cumsum([0, 4 * n, 4 * chunks * k, chunks * k // UNIT, 2 * chunks * k,
                         2 * chunks * k, 1 << 40]).tolist()
    entries = [("row_perm", "I32", [n]), ("col_perm", "I32", [chunks, k]),
               ("depth", "U8", [chunks, k // UNIT]), ("scale", "F16", [chunks, k]),
               ("loc", "F16", [chunks, k]), ("qweight", "I32", [(1 << 40) // 4])]
    header = {"__metadata__": {"format": "radio", "format_version": "1",
                               "layers": json.dumps(layers)}}
    for i, (name, dtype, shape) in enumerate(entries):
        header[f"w.{name}"] = {"dtype": dtype, "shape": shape,
                               "data_offsets": [offsets[i], offsets[i + 1]]}
    path = tmp_path / "hostile.radio"
    path.write_bytes(join(header, data))
    assert path.stat().st_size < 1024
    with pytest.raises(ValueError, match="not within the data section of 64 bytes"):
        _core.load(str(path))
    with pytest.raises(ValueError, match="hostile.radio"):
        io.read_packed_layers(path)


def test_mutated_files_are_loaded_or_refused_with_a_value_error(valid_file, tmp_path):
    rng = np.random.default_rng(2025)
    path = tmp_path / "mutant.radio"
    problems, counts = [], {"both rejected": 0, "both accepted": 0}
    for trial in range(300):
        what, raw = mutate(valid_file, rng)
        path.write_bytes(raw)
        outcome = {}
        for label, loader in (("C++", lambda p: _core.load(str(p))),
                              ("Python", io.read_packed_layers)):
            try:
                outcome[label] = load_outcome(loader, path)
            except Exception as e:  # noqa: BLE001 - any other exception is the finding
                problems.append(f"#{trial} {what}: {label} loader raised {type(e).__name__}: {e}")
                outcome[label] = "crashed"
        if outcome["C++"] == "rejected" and outcome["Python"] == "accepted":
            problems.append(f"#{trial} {what}: the Python loader accepts a file the C++ loader "
                            f"refuses")
        key = f"both {outcome['C++']}" if outcome["C++"] == outcome["Python"] else None
        if key in counts:
            counts[key] += 1
    assert counts["both rejected"] > 100  # the mutator does reach the checks
    assert not problems, "\n".join(problems[:20]) + f"\n({len(problems)} problems)"
