"""radio.save / radio.load (python/radio/io.py): round trips, atomicity, refusals."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")

import radio
from radio import io as rio
from radio.format import QUANTIZERS, PackedLayer
from radio.nn import RadioLinear
from test_ops import random_layer


def tiny_llama():
    cfg = transformers.LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=96,
                                   num_hidden_layers=2, num_attention_heads=4,
                                   num_key_value_heads=2, max_position_embeddings=64,
                                   tie_word_embeddings=True)
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(cfg).eval()


def tiny_opt():
    cfg = transformers.OPTConfig(vocab_size=128, hidden_size=64, ffn_dim=96, num_hidden_layers=2,
                                 num_attention_heads=4, max_position_embeddings=64,
                                 word_embed_proj_dim=64)
    torch.manual_seed(0)
    return transformers.OPTForCausalLM(cfg).eval()


def fake_quantize(model, gs=32, skip=("lm_head",)):
    """Replaces every nn.Linear (but lm_head) by a RadioLinear holding a random packed layer.

    Independent of radio.quantize: io must round-trip any valid packed layer.
    """
    seed = 0
    for name, module in list(model.named_modules()):
        if not isinstance(module, torch.nn.Linear) or name in skip:
            continue
        seed += 1
        layer, _ = random_layer(module.out_features, module.in_features, gs, seed % 2,
                                seed=seed, bias=module.bias is not None)
        packed = PackedLayer(layer["out_features"], layer["in_features"], gs,
                             QUANTIZERS[layer["quantizer"]], layer["row_perm"],
                             layer["col_perm"], layer["depth"], layer["scale"], layer["loc"],
                             layer["qweight"], layer["bias"])
        owner, _, leaf = name.rpartition(".")
        setattr(model.get_submodule(owner), leaf, RadioLinear.from_packed(packed))
    return model


IDS = torch.randint(0, 128, (2, 24), generator=torch.Generator().manual_seed(3))


@pytest.mark.parametrize("make", [tiny_llama, tiny_opt], ids=["llama", "opt"])
def test_save_load_bit_identical(tmp_path, make):
    model = fake_quantize(make())
    model.radio_report = {"bits_per_weight": 4.25, "note": "test"}
    before = model(IDS).logits
    out = radio.save(model, tmp_path / "q")
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "dense.safetensors",
                                                      "model.safetensors"]
    loaded = radio.load(out)
    after = loaded(IDS).logits
    assert torch.equal(before, after)
    n_radio = sum(isinstance(m, RadioLinear) for m in loaded.modules())
    assert n_radio == sum(isinstance(m, RadioLinear) for m in model.modules()) > 0
    config = json.loads((out / "config.json").read_text())
    assert config["radio"]["format_version"] == 1
    assert config["radio"]["report"]["note"] == "test"
    assert loaded.radio_report["note"] == "test"
    # tied embeddings are stored once and stay tied
    if make is tiny_llama:
        assert config["radio"]["aliases"] == {"lm_head.weight": "model.embed_tokens.weight"}
        assert loaded.lm_head.weight is loaded.model.embed_tokens.weight
    # the quantized layers survive bit for bit
    for name, m in model.named_modules():
        if isinstance(m, RadioLinear):
            other = loaded.get_submodule(name)
            for key, t in m.state_dict().items():
                assert torch.equal(t, other.state_dict()[key]), (name, key)


def test_radio_file_is_the_format(tmp_path):
    """model.safetensors holds only format tensors with the stored dtypes of docs/format.md."""
    from safetensors import safe_open

    model = fake_quantize(tiny_llama())
    radio.save(model, tmp_path / "q")
    with safe_open(str(tmp_path / "q" / "model.safetensors"), framework="np") as f:
        meta = f.metadata()
        keys = list(f.keys())
        row_perm = f.get_tensor("model.layers.0.mlp.down_proj.row_perm")
    assert meta["format"] == "radio" and meta["format_version"] == "1"
    assert len(meta["crc32"]) == 8
    assert {k.rpartition(".")[2] for k in keys} <= {"row_perm", "col_perm", "depth", "scale",
                                                     "loc", "qweight", "bias"}
    assert row_perm.dtype.name == "uint16"
    layers, _ = rio.read_packed_layers(tmp_path / "q")
    assert "model.layers.1.self_attn.k_proj" in layers


def test_save_replaces_previous_radio_dir(tmp_path):
    model = fake_quantize(tiny_llama())
    radio.save(model, tmp_path / "q")
    first = (tmp_path / "q" / "model.safetensors").read_bytes()
    model2 = fake_quantize(tiny_llama(), gs=64)
    radio.save(model2, tmp_path / "q")
    assert (tmp_path / "q" / "model.safetensors").read_bytes() != first
    assert torch.equal(radio.load(tmp_path / "q")(IDS).logits, model2(IDS).logits)
    assert [p.name for p in tmp_path.iterdir()] == ["q"]  # no temp dirs left behind


_SLOW_SAVE = textwrap.dedent("""
    import sys, time, torch
    sys.path.insert(0, {tests!r})
    import radio, radio.io as rio
    from test_io import fake_quantize, tiny_llama
    model = fake_quantize(tiny_llama())
    real = rio._write_dense_file
    def slow(path, dense):
        real(path, dense)
        print("WRITING", flush=True)
        time.sleep(60)
    rio._write_dense_file = slow
    radio.save(model, {out!r})
""")


def test_interrupted_save_keeps_previous_output(tmp_path):
    model = fake_quantize(tiny_llama())
    radio.save(model, tmp_path / "q")
    before = {p.name: p.read_bytes() for p in (tmp_path / "q").iterdir()}
    script = _SLOW_SAVE.format(tests=str(Path(__file__).parent), out=str(tmp_path / "q"))
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()  # the save is half done: files written into the temp dir
        assert line.strip() == "WRITING", line
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    after = {p.name: p.read_bytes() for p in (tmp_path / "q").iterdir()}
    assert after == before
    assert torch.equal(radio.load(tmp_path / "q")(IDS).logits, model(IDS).logits)


def test_newer_format_version_refused(tmp_path):
    radio.save(fake_quantize(tiny_llama()), tmp_path / "q")
    config_path = tmp_path / "q" / "config.json"
    config = json.loads(config_path.read_text())
    config["radio"]["format_version"] = 2
    config_path.write_text(json.dumps(config))
    with pytest.raises(ValueError, match="format_version 2.*upgrade radio"):
        radio.load(tmp_path / "q")


def test_newer_file_version_refused(tmp_path):
    radio.save(fake_quantize(tiny_llama()), tmp_path / "q")
    path = tmp_path / "q" / "model.safetensors"
    raw = path.read_bytes()
    assert raw.count(b'"format_version":"1"') == 1
    path.write_bytes(raw.replace(b'"format_version":"1"', b'"format_version":"7"'))
    with pytest.raises(ValueError, match="format_version 7.*upgrade radio"):
        radio.load(tmp_path / "q")


def test_damaged_file_refused(tmp_path):
    radio.save(fake_quantize(tiny_llama()), tmp_path / "q")
    path = tmp_path / "q" / "model.safetensors"
    raw = bytearray(path.read_bytes())
    raw[-5] ^= 0x40  # flip one bit of the data section
    path.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="damaged|CRC"):
        radio.load(tmp_path / "q")


def test_bad_inputs(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        radio.load(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="config.json"):
        radio.load(tmp_path / "empty")
    plain = tmp_path / "plain"
    tiny_llama().save_pretrained(plain)
    with pytest.raises(ValueError, match="not saved by radio.save"):
        radio.load(plain)
    with pytest.raises(ValueError, match="not a radio file"):
        rio.read_packed_layers(plain / "model.safetensors")
    with pytest.raises(FileExistsError, match="not a radio model"):
        radio.save(fake_quantize(tiny_llama()), plain)
    with pytest.raises(ValueError, match="no RadioLinear"):
        radio.save(tiny_llama(), tmp_path / "out")
    with pytest.raises(FileNotFoundError, match="parent directory"):
        radio.save(fake_quantize(tiny_llama()), tmp_path / "no" / "such" / "dir")
    (tmp_path / "file").write_text("x")
    with pytest.raises(FileExistsError, match="not a directory"):
        radio.save(fake_quantize(tiny_llama()), tmp_path / "file")
    with pytest.raises(TypeError, match="transformers model"):
        radio.save(torch.nn.Linear(2, 2), tmp_path / "out")
    (tmp_path / "junk.safetensors").write_bytes(b"\xff" * 20)
    with pytest.raises(ValueError, match="safetensors"):
        rio.read_packed_layers(tmp_path / "junk.safetensors")


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
def test_unwritable_output_dir(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        with pytest.raises(PermissionError, match="not writable"):
            radio.save(fake_quantize(tiny_llama()), locked / "q")
    finally:
        locked.chmod(0o700)


def test_python_and_cpp_writers_agree(tmp_path, monkeypatch):
    """The safetensors fallback writer and radio._core.save make files both readers accept."""
    core = radio._core
    if not hasattr(core, "save"):
        pytest.skip("radio._core.save is not built")
    model = fake_quantize(tiny_opt())
    layers = {n: m.to_packed() for n, m in model.named_modules() if isinstance(m, RadioLinear)}
    rio._write_radio_file(tmp_path / "cpp.safetensors", layers)
    monkeypatch.delattr(core, "save")
    rio._write_radio_file(tmp_path / "py.safetensors", layers)
    monkeypatch.undo()
    for name in ("cpp", "py"):
        path = tmp_path / f"{name}.safetensors"
        ours, _ = rio.read_packed_layers(path)
        theirs, _ = core.load(str(path))
        assert set(ours) == set(theirs) == set(layers)
        for layer, packed in layers.items():
            for tensor, value in packed.to_numpy_dict().items():
                assert np.array_equal(ours[layer].to_numpy_dict()[tensor], value), (name, tensor)
                assert np.array_equal(theirs[layer][tensor], value), (name, layer, tensor)


def test_saved_files_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        out = radio.save(fake_quantize(tiny_llama()), tmp_path / "q")
    finally:
        os.umask(old)
    assert out.stat().st_mode & 0o777 == 0o755
    assert {p.stat().st_mode & 0o777 for p in out.iterdir()} == {0o644}


# ------------------------------------------------------------------------------------------------
# the loader maps the file instead of copying it
# ------------------------------------------------------------------------------------------------

def _file_map(path: Path):
    """[start, end) address ranges where this process maps ``path`` (from /proc/self/maps)."""
    ranges = []
    for line in Path("/proc/self/maps").read_text().splitlines():
        if line.endswith(str(path.resolve())):
            lo, hi = (int(x, 16) for x in line.split()[0].split("-"))
            ranges.append((lo, hi))
    return ranges


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs Linux /proc")
def test_loaded_tensors_view_the_file_map_and_writes_stay_private(tmp_path):
    model = fake_quantize(tiny_llama())
    radio.save(model, tmp_path / "q")
    path = tmp_path / "q" / "model.safetensors"
    raw = path.read_bytes()
    layers, _ = rio.read_packed_layers(path)
    ranges = _file_map(path)
    assert ranges, "the radio file is not memory-mapped"

    def mapped(t):
        return any(lo <= t.data_ptr() < hi for lo, hi in ranges)

    header, start = rio._read_header(path)
    views = copies = 0
    for name, packed in layers.items():
        for tensor, t in packed.tensors().items():
            assert t.data_ptr() % t.element_size() == 0, (name, tensor)
            file_aligned = (start + header[f"{name}.{tensor}"]["data_offsets"][0]) \
                % t.element_size() == 0
            if tensor in ("row_perm", "col_perm"):  # u16 in this file: widened to int32 copies
                assert not mapped(t), (name, tensor)
                continue
            # a view of the map exactly where the file's bytes are aligned, else an aligned copy
            assert mapped(t) == file_aligned, (name, tensor, file_aligned)
            views += file_aligned
            copies += not file_aligned
    assert views > 0 and copies > 0, (views, copies)  # both cases occur in this file
    # the map is private: writing to a loaded tensor leaves the file as it was
    viewed = [p.qweight for p in layers.values() if mapped(p.qweight)]
    assert viewed
    viewed[0].fill_(0)
    assert path.read_bytes() == raw


def test_misaligned_tensors_load_bit_identically(tmp_path):
    """Odd depth sizes shift the following tensors off their alignment: copied, same values."""
    model = fake_quantize(tiny_llama(), gs=24)  # 96 rows / 24 = 4 chunks; 64 rows -> 3 chunks
    layers = {n: m.to_packed() for n, m in model.named_modules() if isinstance(m, RadioLinear)}
    odd = [n for n, p in layers.items() if p.depth.numel() % 2]
    assert odd, "the test needs a layer with an odd number of depth bytes"
    rio._write_radio_file(tmp_path / "r.safetensors", layers)
    ours, _ = rio.read_packed_layers(tmp_path / "r.safetensors")
    for name, packed in layers.items():
        for tensor, t in packed.tensors().items():
            loaded = ours[name].tensors()[tensor]
            assert loaded.data_ptr() % loaded.element_size() == 0, (name, tensor)
            assert loaded.dtype == t.dtype and torch.equal(loaded, t), (name, tensor)
    loaded = radio.load(radio.save(model, tmp_path / "q"))
    assert torch.equal(loaded(IDS).logits, model(IDS).logits)


def _rewrite_header(path: Path, change) -> None:
    """Edits the JSON header of a safetensors file in place; the CRC stays valid (data kept)."""
    import struct

    raw = path.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    change(header)
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + raw[8 + n:])


@pytest.mark.parametrize("edit, words", [
    (lambda h, k: h[k + ".qweight"].update(dtype="F32"), ["qweight must be I32", "'F32'"]),
    (lambda h, k: h[k + ".depth"].update(shape=[3, 3]), ["depth must have shape (2, 2)",
                                                         "[3, 3]"]),
    (lambda h, k: h[k + ".qweight"].update(shape=[7]), ["data_offsets", "span",
                                                        "its dtype and shape need 28"]),
    (lambda h, k: h[k + ".loc"].update(data_offsets=h[k + ".scale"]["data_offsets"]),
     ["overlap"]),
    (lambda h, k: h[k + ".qweight"].update(data_offsets=[0, 1 << 40]),
     ["not within the data section"]),
    (lambda h, k: h.pop(k + ".col_perm"), ["has no tensor 'col_perm'"]),
    (lambda h, k: h.update({k + ".extra": h[k + ".depth"]}), ["is not a tensor of any layer"]),
], ids=["dtype", "shape", "size", "overlap", "outside", "missing", "stray"])
def test_header_checked_before_the_data_is_touched(tmp_path, edit, words):
    radio.save(fake_quantize(tiny_llama()), tmp_path / "q")
    path = tmp_path / "q" / "model.safetensors"
    _rewrite_header(path, lambda h: edit(h, "model.layers.0.self_attn.q_proj"))
    with pytest.raises(ValueError) as info:
        rio.read_packed_layers(path)
    message = str(info.value)
    assert "model.safetensors" in message
    for word in words:
        assert word in message, (word, message)


def test_qweight_length_against_the_depths(tmp_path, monkeypatch):
    """A self-consistent header whose qweight is one word short of what the depths need."""
    model = fake_quantize(tiny_llama())
    layers = {n: m.to_packed() for n, m in model.named_modules() if isinstance(m, RadioLinear)}
    name = "model.layers.0.self_attn.q_proj"
    short = layers[name]
    need = short.qweight.numel()
    layers[name] = PackedLayer(short.out_features, short.in_features, short.rows_per_group,
                               short.quantizer, short.row_perm, short.col_perm, short.depth,
                               short.scale, short.loc, short.qweight[:-1].clone(), short.bias)
    # the C++ writer refuses such a layer: write it through the safetensors fallback
    monkeypatch.delattr(radio._core, "save", raising=False)
    rio._write_radio_file(tmp_path / "short.safetensors", layers)
    monkeypatch.undo()
    with pytest.raises(ValueError, match=f"qweight has {need - 1} words but the depths need "
                                         f"{need}"):
        rio.read_packed_layers(tmp_path / "short.safetensors")


def test_loaded_model_saves_over_its_own_directory(tmp_path):
    """The loaded tensors view model.safetensors; saving to the same path writes a new file and
    renames it into place, so the views (the old inode) stay valid during and after the save."""
    model = fake_quantize(tiny_llama())
    expected = model(IDS).logits
    loaded = radio.load(radio.save(model, tmp_path / "q"))
    radio.save(loaded, tmp_path / "q")
    assert torch.equal(loaded(IDS).logits, expected)
    assert torch.equal(radio.load(tmp_path / "q")(IDS).logits, expected)
