"""Peak host memory of loading a quantized model, against the size of its files (issue item 6).

A Llama-shaped model of about 290 MB is saved with random packed layers (radio._core.pack on
random indices, random depths 3..8: the loader's work does not depend on how the layers were
quantized), then loaded in a fresh Python process that has already imported torch, transformers,
radio and the model class's code. The child resets its peak-RSS counter (/proc/self/clear_refs,
"5"), loads, and reports VmHWM - VmRSS(before): the peak growth of resident memory while
loading, file-backed (mapped) pages included. The target is < 1.1 x the directory's size, which
needs the weights memory-mapped rather than copied.

Run as a script for the figures alone:  python tests/python/test_load_memory.py [--layers 12]
"""
from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")

UNIT = 32
TARGET_RATIO = 1.1  # measured 0.90 with the mapped loader (2026-11-24); 1.77 when it copied


def random_packed(n: int, k: int, gs: int, rng: np.random.Generator):
    """A valid PackedLayer [n, k] with random depths 3..8, indices, perms, f16 scale/loc."""
    from radio import _core
    from radio.format import PackedLayer

    chunks, units = math.ceil(n / gs), math.ceil(k / UNIT)
    kp = units * UNIT
    depth = rng.integers(3, 9, (chunks, units), dtype=np.uint8)
    mask = np.repeat((1 << depth.astype(np.int32)) - 1, UNIT, axis=1).astype(np.uint8)
    idx = rng.integers(0, 256, (n, kp), dtype=np.uint8) & np.repeat(mask, gs, axis=0)[:n]
    qweight = _core.pack(idx, depth, gs)
    col_perm = np.full((chunks, kp), k, np.int32)
    for c in range(chunks):
        col_perm[c, :k] = rng.permutation(k)
    scale = np.zeros((chunks, kp), np.float16)
    loc = np.zeros((chunks, kp), np.float16)
    scale[:, :k] = rng.uniform(1e-3, 2e-2, (chunks, k))
    loc[:, :k] = rng.normal(0.0, 1e-3, (chunks, k))
    return PackedLayer(n, k, gs, "laplace", torch.from_numpy(rng.permutation(n).astype(np.int32)),
                       torch.from_numpy(col_perm), torch.from_numpy(depth),
                       torch.from_numpy(scale), torch.from_numpy(loc),
                       torch.from_numpy(np.asarray(qweight)))


def save_model(path: Path, hidden: int, intermediate: int, layers: int, vocab: int) -> int:
    """Saves a Llama whose decoder linears are random RadioLinear layers; returns its bytes."""
    import radio
    from radio.nn import RadioLinear

    cfg = transformers.LlamaConfig(vocab_size=vocab, hidden_size=hidden,
                                   intermediate_size=intermediate, num_hidden_layers=layers,
                                   num_attention_heads=hidden // 64,
                                   num_key_value_heads=hidden // 64,
                                   max_position_embeddings=256, tie_word_embeddings=True)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(cfg).eval()
    rng = np.random.default_rng(0)
    for name, module in list(model.model.layers.named_modules()):
        if isinstance(module, torch.nn.Linear):
            packed = random_packed(module.out_features, module.in_features, 256, rng)
            owner, _, leaf = name.rpartition(".")
            setattr(model.model.layers.get_submodule(owner), leaf, RadioLinear.from_packed(packed))
    radio.save(model, path)
    return sum(f.stat().st_size for f in path.iterdir())


CHILD = textwrap.dedent("""
    import json, sys
    import torch, transformers, radio
    import radio.io, radio.nn, radio.ops, radio.format  # everything load() imports, up front
    from radio import _core

    def status():
        fields = {}
        for line in open("/proc/self/status"):
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                fields[key] = int(value.split()[0]) * 1024
        return fields

    path, what = sys.argv[1], sys.argv[2]
    # transformers imports a model class's code on first use (~150 MB of modules): not weights
    config = json.load(open(path + "/config.json"))
    getattr(transformers, config["radio"]["model_class"])
    open("/proc/self/clear_refs", "w").write("5")  # peak RSS := current RSS
    before = status()
    if what == "radio.load":
        model = radio.load(path)
        held = sum(b.numel() * b.element_size() for b in model.buffers())
    else:  # the C++ loader of the radio file alone
        layers, _ = _core.load(path + "/model.safetensors")
        held = sum(a.nbytes for d in layers.values() for a in d.values() if hasattr(a, "nbytes"))
    after = status()
    print(json.dumps({"rss_before": before["VmRSS"], "peak": after["VmHWM"],
                      "rss_after": after["VmRSS"], "held": held,
                      "hwm_reset": before["VmHWM"] == before["VmRSS"]}))
""")


def measure(path: Path, what: str) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, str(path), what], check=True,
                         capture_output=True, text=True, timeout=600)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["growth"] = result["peak"] - result["rss_before"]
    return result


def figures(path: Path) -> dict:
    files = {f.name: f.stat().st_size for f in path.iterdir()}
    total = sum(files.values())
    load = measure(path, "radio.load")
    core = measure(path, "_core.load")
    return {"files": files, "bytes": total, "radio.load": load,
            "radio.load ratio": load["growth"] / total,
            "_core.load ratio (radio file)": core["growth"] / files["model.safetensors"]}


@pytest.mark.slow
def test_peak_memory_of_loading_is_under_1_1x_the_files(tmp_path):
    path = tmp_path / "model"
    size = save_model(path, hidden=1536, intermediate=4096, layers=12, vocab=8000)
    assert 200e6 < size < 600e6, size  # "a few hundred MB"
    result = figures(path)
    print(json.dumps(result, indent=1))
    load = result["radio.load"]
    assert load["hwm_reset"], "the kernel did not reset VmHWM: the peak would be meaningless"
    # the loaded model holds (about) the radio file's bytes: the measurement sees the load
    assert load["held"] > 0.8 * result["files"]["model.safetensors"]
    assert result["radio.load ratio"] < TARGET_RATIO, (
        f"peak RSS growth {load['growth'] / 1e6:.0f} MB = {result['radio.load ratio']:.2f} x "
        f"the files ({result['bytes'] / 1e6:.0f} MB); expected < {TARGET_RATIO} x")


def main() -> None:
    import tempfile

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=12, help="decoder blocks (~20 MB each)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model"
        save_model(path, hidden=1536, intermediate=4096, layers=args.layers, vocab=8000)
        print(json.dumps(figures(path), indent=1))


if __name__ == "__main__":
    main()
