"""Saving and loading quantized transformers models as a directory (never pickle).

A saved model is a directory:

- ``model.safetensors``: a radio file exactly as docs/format.md "File" defines it: every
  ``RadioLinear`` under its module name (``model.layers.0.mlp.up_proj.qweight`` ...), the
  format's metadata (format, format_version, layers, crc32). Only format tensors live here, so
  the C++ loader (``radio::load`` / ``radio._core.load``) reads the same file.
- ``dense.safetensors``: every other parameter and buffer of the model (embeddings, norms,
  rotary tables, unquantized linears), in its own dtype. Tensors shared by several names (tied
  embeddings) are stored once; the other names are listed as aliases in config.json.
- ``config.json``: the transformers config plus a ``"radio"`` section: format_version, the
  model class, the quantized layers, the aliases, a size summary and the quantization report.
- tokenizer files, when a tokenizer is passed.

Writes are atomic: everything goes into a temporary directory beside the target, is fsynced,
and replaces the target in one rename (an atomic exchange when the target exists), so an
interrupted save leaves any previous output intact.
"""
from __future__ import annotations

import ctypes
import json
import math
import os
import shutil
import tempfile
import zlib
from pathlib import Path
from typing import Dict, Optional, Tuple

import numpy as np
import torch
from torch import nn

from .format import (FORMAT_VERSION, MAX_DEPTH, QUANTIZERS, LayerGeometry, PackedLayer,
                     index_bytes)
from .nn import RadioLinear, validate_packed

__all__ = ["save", "load", "read_packed_layers", "is_radio_dir", "RADIO_FILE", "DENSE_FILE",
           "CONFIG_FILE"]

RADIO_FILE = "model.safetensors"
DENSE_FILE = "dense.safetensors"
CONFIG_FILE = "config.json"
_FORMAT_KEYS = ("format", "format_version", "layers", "crc32")


# ------------------------------------------------------------------------------------------------
# save
# ------------------------------------------------------------------------------------------------

def save(model: nn.Module, path, tokenizer=None, report=None) -> Path:
    """Writes ``model`` (a transformers model holding ``RadioLinear`` layers) to directory ``path``.

    ``report`` defaults to ``model.radio_report`` (set by ``radio.quantize``). An existing
    ``path`` is replaced only if it is a radio directory or empty; anything else is refused.
    """
    config = getattr(model, "config", None)
    if config is None or not hasattr(config, "to_dict"):
        raise TypeError(f"radio.save needs a transformers model (with .config), got "
                        f"{type(model).__name__}")
    target = Path(path)
    _check_target(target)
    radio_layers = {name: m.to_packed() for name, m in model.named_modules()
                    if isinstance(m, RadioLinear)}
    if not radio_layers:
        raise ValueError("the model has no RadioLinear layers: quantize it first "
                         "(radio.quantize) or save it with model.save_pretrained")
    dense, aliases = _dense_tensors(model)
    report = getattr(model, "radio_report", None) if report is None else report
    radio_section = {
        "format_version": FORMAT_VERSION,
        "model_class": type(model).__name__,
        "layers": {name: p.attributes() for name, p in radio_layers.items()},
        "aliases": aliases,
        "summary": size_summary(radio_layers),
        "report": _report_dict(report),
    }
    config_dict = config.to_dict()
    config_dict["radio"] = radio_section

    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        _write_radio_file(tmp / RADIO_FILE, radio_layers)
        _write_dense_file(tmp / DENSE_FILE, dense)
        (tmp / CONFIG_FILE).write_text(json.dumps(config_dict, indent=2, sort_keys=True))
        if tokenizer is not None:
            tokenizer.save_pretrained(str(tmp))
        # mkdtemp makes the directory 0700 (and some writers make 0600 files): give the result
        # the modes a plain mkdir/open would have had under the user's umask.
        umask = os.umask(0)
        os.umask(umask)
        for f in tmp.iterdir():
            f.chmod((0o777 if f.is_dir() else 0o666) & ~umask)
            fsync_path(f)
        tmp.chmod(0o777 & ~umask)
        fsync_path(tmp)
        _replace_dir(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def size_summary(layers: Dict[str, PackedLayer]) -> dict:
    """Bytes and bits per weight of the quantized layers (docs/format.md "Size")."""
    total_bytes = sum(p.nbytes() for p in layers.values())
    index_bytes_ = sum(4 * int(p.qweight.numel()) for p in layers.values())
    weights = sum(p.out_features * p.in_features for p in layers.values())
    return {"layers": len(layers), "weights": weights, "bytes": total_bytes,
            "bits_per_weight": 8.0 * total_bytes / weights,
            "index_bits_per_weight": 8.0 * index_bytes_ / weights}


def _check_target(target: Path) -> None:
    parent = target.parent
    if not parent.is_dir():
        raise FileNotFoundError(f"cannot save to {target}: the parent directory {parent} does "
                                f"not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise PermissionError(f"cannot save to {target}: the directory {parent} is not writable")
    if target.exists():
        if not target.is_dir():
            raise FileExistsError(f"cannot save to {target}: it exists and is not a directory")
        if any(target.iterdir()) and not is_radio_dir(target):
            raise FileExistsError(f"cannot save to {target}: it is a non-empty directory that "
                                  f"is not a radio model; choose another path or remove it")


def is_radio_dir(path) -> bool:
    """True when ``path`` holds a config.json with a "radio" section and a radio file."""
    path = Path(path)
    try:
        config = json.loads((path / CONFIG_FILE).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and "radio" in config and (path / RADIO_FILE).is_file()


def _dense_tensors(model: nn.Module) -> Tuple[Dict[str, torch.Tensor], Dict[str, str]]:
    """Every parameter/buffer outside RadioLinear layers, each tensor once; aliases for repeats."""
    quantized = {name for name, m in model.named_modules() if isinstance(m, RadioLinear)}

    def inside_quantized(name: str) -> bool:
        return any(name.startswith(q + ".") for q in quantized)

    dense: Dict[str, torch.Tensor] = {}
    aliases: Dict[str, str] = {}
    seen: Dict[Tuple[int, int, torch.dtype, tuple, tuple], str] = {}
    named = list(model.named_parameters(remove_duplicate=False)) + \
        list(model.named_buffers(remove_duplicate=False))
    for name, tensor in named:
        if tensor is None or inside_quantized(name):
            continue
        if tensor.device.type == "meta":
            raise ValueError(f"cannot save {name}: it is on the meta device (no data)")
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tensor.dtype,
               tuple(tensor.shape), tuple(tensor.stride()))
        if key in seen:
            aliases[name] = seen[key]
            continue
        seen[key] = name
        dense[name] = tensor.detach().to("cpu").contiguous()
    return dense, aliases


def _report_dict(report):
    if report is None:
        return None
    if hasattr(report, "to_dict"):
        return report.to_dict()
    if isinstance(report, dict):
        return json.loads(json.dumps(report))  # JSON-safe or a clear TypeError now
    raise TypeError(f"report must be a dict or have to_dict(), got {type(report).__name__}")


def _write_radio_file(path: Path, layers: Dict[str, PackedLayer]) -> None:
    from ._ext import _core

    if hasattr(_core, "save"):  # the C++ writer: the reference implementation of the format
        _core.save(str(path), {name: p.to_numpy_dict() for name, p in layers.items()}, {})
        return
    # Same layout through the safetensors package: perms narrowed to u16 where they fit,
    # f16 tensors as float16, then the CRC of the data section patched into the header.
    from safetensors.numpy import save_file

    arrays = {}
    for name, packed in layers.items():
        for tensor, array in _file_arrays(packed).items():
            arrays[f"{name}.{tensor}"] = array
    metadata = {"format": "radio", "format_version": str(FORMAT_VERSION),
                "layers": json.dumps({n: p.attributes() for n, p in layers.items()}),
                "crc32": "00000000"}
    save_file(arrays, str(path), metadata=metadata)
    _patch_crc(path)


def _file_arrays(packed: PackedLayer) -> Dict[str, np.ndarray]:
    """The layer's tensors with the dtypes the file stores (docs/format.md "Tensors")."""
    d = packed.to_numpy_dict()
    out = {}
    for name in packed.tensors():
        a = d[name]
        if name == "row_perm" and index_bytes(packed.out_features) == 2:
            a = a.astype(np.uint16)
        elif name == "col_perm" and index_bytes(packed.in_features) == 2:
            a = a.astype(np.uint16)
        elif name in ("scale", "loc", "bias"):
            a = a.view(np.float16)
        out[name] = np.ascontiguousarray(a)
    return out


def _read_header(path: Path) -> Tuple[dict, int]:
    """(JSON header, data section start) of a safetensors file, with the length checked."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ValueError(f"{path} is {size} bytes, too short for a safetensors file")
        n = int.from_bytes(head, "little")
        if n > size - 8 or n > 100 * 2 ** 20:
            raise ValueError(f"{path}: header length {n} does not fit the file ({size} bytes); "
                             f"the file is truncated or not a safetensors file")
        try:
            header = json.loads(f.read(n))
        except ValueError as e:
            raise ValueError(f"{path}: the header is not valid JSON ({e}); not a safetensors "
                             f"file") from None
    if not isinstance(header, dict):
        raise ValueError(f"{path}: the header is not a JSON object; not a safetensors file")
    return header, 8 + n


def _data_crc(path: Path, start: int) -> str:
    crc = 0
    with open(path, "rb") as f:
        f.seek(start)
        while True:
            block = f.read(1 << 22)
            if not block:
                break
            crc = zlib.crc32(block, crc)
    return f"{crc:08x}"


def _patch_crc(path: Path) -> None:
    """Replaces the placeholder crc32 in the header (same length, so offsets do not move)."""
    header, start = _read_header(path)
    crc = _data_crc(path, start)
    with open(path, "r+b") as f:
        raw = f.read(start)
        placeholder = b'"crc32":"00000000"'
        if raw.count(placeholder) != 1:
            raise RuntimeError(f"{path}: cannot find the crc32 placeholder in the header")
        f.seek(raw.index(placeholder))
        f.write(f'"crc32":"{crc}"'.encode())


def _write_dense_file(path: Path, dense: Dict[str, torch.Tensor]) -> None:
    from safetensors.torch import save_file

    save_file(dense, str(path), metadata={"format": "radio-dense"})


def fsync_path(path: Path) -> None:
    """Flush a file's (or a directory's entries') data to disk (also used by radio.checkpoint)."""
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if path.is_dir() else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_RENAME_EXCHANGE = 2  # linux/fs.h


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swaps two paths (Linux renameat2 RENAME_EXCHANGE); False if unsupported."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd = -100
    rc = fn(at_fdcwd, os.fsencode(str(a)), at_fdcwd, os.fsencode(str(b)), _RENAME_EXCHANGE)
    return rc == 0


def _replace_dir(tmp: Path, target: Path) -> None:
    if not target.exists():
        os.rename(tmp, target)
    elif _exchange(tmp, target):
        shutil.rmtree(tmp)  # tmp now holds the previous output
    else:
        # No atomic exchange: move the old directory aside first; a crash between the two
        # renames leaves it intact under the .old name.
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
        os.rmdir(old)
        os.rename(target, old)
        os.rename(tmp, target)
        shutil.rmtree(old)
    fsync_path(target.parent)


# ------------------------------------------------------------------------------------------------
# load
# ------------------------------------------------------------------------------------------------

def read_packed_layers(path, verify_crc: bool = True) -> Tuple[Dict[str, PackedLayer], dict]:
    """The layers of a radio file (or of the model.safetensors in a radio directory).

    Returns ``(layers, metadata)``; checks the format name and version (a newer version is
    refused), every tensor's dtype, shape and data offsets from the header before any tensor is
    touched, the CRC of the data section, and every layer (``radio._core.validate_layer``).

    The tensors are memory-mapped, not copied: they are views into the file's pages (a private
    map, so writing to them never changes the file), and only the permutations stored as u16 are
    widened into new int32 tensors (``PackedLayer`` holds them as int32). Loading a model thus
    needs about the file's size in memory, not twice it.
    """
    path = Path(path)
    if path.is_dir():
        path = path / RADIO_FILE
    if not path.is_file():
        raise FileNotFoundError(f"radio file not found: {path}")
    header, start = _read_header(path)
    meta = header.get("__metadata__") or {}
    if not isinstance(meta, dict):
        raise ValueError(f"{path}: __metadata__ must be a JSON object, got "
                         f"{type(meta).__name__}")
    if meta.get("format") != "radio":
        raise ValueError(f"{path} is not a radio file (metadata format={meta.get('format')!r}, "
                         f"expected 'radio')")
    version = meta.get("format_version", "")
    if not str(version).isdigit():
        raise ValueError(f"{path}: format_version must be a decimal integer, got {version!r}")
    if int(version) > FORMAT_VERSION:
        raise ValueError(f"{path} has format_version {version}, newer than this radio "
                         f"understands ({FORMAT_VERSION}); upgrade radio to read it")
    if int(version) < 1:
        raise ValueError(f"{path}: format_version {version} is not valid; expected 1 to "
                         f"{FORMAT_VERSION}")
    try:
        attrs = json.loads(meta.get("layers", ""))
    except (ValueError, TypeError):
        raise ValueError(f"{path}: metadata 'layers' is not valid JSON") from None
    if not isinstance(attrs, dict):
        raise ValueError(f"{path}: metadata 'layers' must be a JSON object, got "
                         f"{type(attrs).__name__}")
    for name, a in attrs.items():
        _check_attributes(path, name, a)
    _check_entries(path, header, path.stat().st_size - start, attrs)
    if verify_crc:
        crc = _data_crc(path, start)
        if meta.get("crc32") != crc:
            raise ValueError(f"{path}: CRC-32 of the data is {crc}, the header says "
                             f"{meta.get('crc32')!r}; the file is damaged")
    from safetensors import SafetensorError, safe_open

    try:
        layers = _read_layers(path, attrs, safe_open)
    except (SafetensorError, TypeError) as e:  # a malformed file, said the safetensors reader
        raise ValueError(f"{path}: not a valid safetensors file: {e}") from None
    extra = {k: v for k, v in meta.items() if k not in _FORMAT_KEYS}
    return layers, extra


def _check_attributes(path: Path, name: str, a) -> None:
    """A layer's attributes exactly as docs/format.md "File" has them (no silent conversion)."""
    if not isinstance(a, dict):
        raise ValueError(f"{path}: layer {name!r}: attributes must be a JSON object, got {a!r}")
    for key in ("out_features", "in_features", "rows_per_group"):
        value = a.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{path}: layer {name!r}: {key} must be a positive integer, got "
                             f"{value!r}")
    if a.get("quantizer") not in QUANTIZERS:
        raise ValueError(f"{path}: layer {name!r}: quantizer must be one of {QUANTIZERS}, got "
                         f"{a.get('quantizer')!r}")
    if not isinstance(a.get("has_bias"), bool):
        raise ValueError(f"{path}: layer {name!r}: has_bias must be true or false, got "
                         f"{a.get('has_bias')!r}")


_TENSORS = ("row_perm", "col_perm", "depth", "scale", "loc", "qweight", "bias")
# safetensors dtype name -> (bytes per element, torch dtype), for the dtypes the format uses
_FILE_DTYPES = {"U8": (1, torch.uint8), "U16": (2, torch.uint16), "F16": (2, torch.float16),
                "I32": (4, torch.int32)}


def _file_entry(tensor: str, a: dict) -> Tuple[str, Optional[tuple]]:
    """(safetensors dtype, shape) docs/format.md stores ``tensor`` of a layer ``a`` with; the
    shape of qweight is None here: its length depends on the depths (checked once they are read).
    """
    geometry = LayerGeometry(a["out_features"], a["in_features"], a["rows_per_group"])
    n, c, u, kp = geometry.out_features, geometry.chunks, geometry.units, geometry.padded_in
    perm = {"row_perm": n, "col_perm": geometry.in_features}
    if tensor in perm:
        dtype = "U16" if index_bytes(perm[tensor]) == 2 else "I32"
        return dtype, (n,) if tensor == "row_perm" else (c, kp)
    return {"depth": ("U8", (c, u)), "scale": ("F16", (c, kp)), "loc": ("F16", (c, kp)),
            "qweight": ("I32", None), "bias": ("F16", (n,))}[tensor]


def _check_entries(path: Path, header: dict, data_size: int, attrs: dict) -> None:
    """Every tensor entry of the header against the layer attributes, before any data is used.

    Names: exactly the tensors of the listed layers. dtype and shape: docs/format.md "Tensors".
    data_offsets: within the data section, spanning exactly the tensor's bytes, and no two
    tensors overlapping (the file is mapped and the tensors are views of it, so a bad offset
    must never reach the reader).
    """
    entries = {k: v for k, v in header.items() if k != "__metadata__"}
    wanted = {f"{name}.{t}" for name, a in attrs.items() for t in _TENSORS
              if t != "bias" or a["has_bias"]}
    for key in sorted(entries):
        if key not in wanted:
            layer, _, tensor = key.rpartition(".")
            if tensor == "bias" and layer in attrs:
                raise ValueError(f"{path}: {key} is present but layer {layer!r} says "
                                 f"has_bias=false")
            raise ValueError(f"{path}: tensor {key!r} is not a tensor of any layer listed in "
                             f"metadata 'layers'")
    spans = []
    for name, a in attrs.items():
        for tensor in _TENSORS:
            key = f"{name}.{tensor}"
            if key not in wanted:
                continue
            entry = entries.get(key)
            if entry is None:
                raise ValueError(f"{path}: layer {name!r} has no tensor {tensor!r}")
            if not (isinstance(entry, dict) and {"dtype", "shape", "data_offsets"} <= set(entry)):
                raise ValueError(f"{path}: {key}: the entry must be an object with dtype, shape "
                                 f"and data_offsets, got {str(entry)[:200]}")
            dtype, shape = _file_entry(tensor, a)
            if entry["dtype"] != dtype:
                raise ValueError(f"{path}: {key} must be {dtype}, got {entry['dtype']!r}")
            seen = entry["shape"]
            if not (isinstance(seen, list) and all(type(d) is int and d >= 0 for d in seen)):
                raise ValueError(f"{path}: {key}: shape must be a list of non-negative "
                                 f"integers, got {seen!r}")
            if shape is None and len(seen) != 1:
                raise ValueError(f"{path}: {key} must be 1-D, got shape {seen}")
            if shape is not None and tuple(seen) != shape:
                raise ValueError(f"{path}: {key} must have shape {shape} for layer "
                                 f"attributes {a}, got {seen}")
            offsets = entry["data_offsets"]
            if not (isinstance(offsets, list) and len(offsets) == 2
                    and all(type(o) is int for o in offsets)):
                raise ValueError(f"{path}: {key}: data_offsets must be [begin, end], got "
                                 f"{offsets!r}")
            begin, end = offsets
            if not 0 <= begin <= end <= data_size:
                raise ValueError(f"{path}: {key}: data_offsets [{begin}, {end}] are not within "
                                 f"the data section of {data_size} bytes")
            nbytes = _FILE_DTYPES[dtype][0] * math.prod(seen)
            if end - begin != nbytes:
                raise ValueError(f"{path}: {key}: data_offsets [{begin}, {end}] span "
                                 f"{end - begin} bytes, its dtype and shape need {nbytes}")
            spans.append((begin, end, key))
    spans.sort()
    for (_, end, first), (begin, _, second) in zip(spans, spans[1:]):
        if begin < end:
            raise ValueError(f"{path}: the data of {first} and {second} overlap")


def _mapped(path: Path, f, key: str, dtype: str) -> torch.Tensor:
    """``key`` as a tensor viewing the file's map; copied only when its bytes are misaligned for
    the element type (the C++ writer packs tensors back to back, so e.g. an odd-length depth
    shifts what follows; the core's C++ reads typed pointers, which must be aligned)."""
    t = f.get_tensor(key)
    if t.dtype != _FILE_DTYPES[dtype][1]:  # the header check has run: a reader disagreement
        raise ValueError(f"{path}: {key} came back as {t.dtype}, expected {dtype}")
    if t.data_ptr() % t.element_size() != 0:
        t = t.clone()
    return t


def _read_layers(path: Path, attrs: dict, safe_open) -> Dict[str, PackedLayer]:
    layers: Dict[str, PackedLayer] = {}
    # framework="pt" returns views of one private memory map of the file (no copies), unlike
    # framework="np", which copies every tensor out of the map.
    with safe_open(str(path), framework="pt") as f:
        for name, a in attrs.items():
            t = {tensor: _mapped(path, f, f"{name}.{tensor}", _file_entry(tensor, a)[0])
                 for tensor in _TENSORS if tensor != "bias" or a["has_bias"]}
            geometry = LayerGeometry(a["out_features"], a["in_features"], a["rows_per_group"])
            depth = t["depth"].numpy()
            if depth.size and int(depth.max()) > MAX_DEPTH:
                raise ValueError(f"{path}: layer {name!r}: depth {int(depth.max())} is out of "
                                 f"range 0..{MAX_DEPTH}")
            words = geometry.qweight_words(depth)
            if t["qweight"].numel() != words:
                raise ValueError(f"{path}: layer {name!r}: qweight has {t['qweight'].numel()} "
                                 f"words but the depths need {words}")
            packed = PackedLayer(
                a["out_features"], a["in_features"], a["rows_per_group"], a["quantizer"],
                row_perm=t["row_perm"].to(torch.int32), col_perm=t["col_perm"].to(torch.int32),
                depth=t["depth"], scale=t["scale"], loc=t["loc"], qweight=t["qweight"],
                bias=t.get("bias"))
            validate_packed(packed)
            layers[name] = packed
    return layers


def load(path, device="cpu", verify_crc: bool = True) -> nn.Module:
    """Rebuilds a model saved by ``radio.save``; the original weights are not needed.

    The transformers model is built on the meta device from config.json, its quantized layers
    are replaced by ``RadioLinear`` modules from model.safetensors and every other tensor is
    assigned from dense.safetensors. Returns the model in eval mode on ``device``.

    On the CPU both files stay memory-mapped (privately: in-place changes to the model never
    reach the files) and their pages are read as they are used. ``radio.save`` over the same
    directory is safe (it writes new files and renames them into place); truncating or
    rewriting the files in place while the model lives is not.
    """
    import transformers

    try:
        target_device = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device must be a torch device such as 'cpu' or 'cuda:0', got "
                         f"{device!r}") from None
    if target_device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} needs CUDA, which this torch cannot use; expected "
                         f"'cpu'")
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"radio model directory not found: {path}")
    config_path = path / CONFIG_FILE
    if not config_path.is_file():
        raise FileNotFoundError(f"{path} has no {CONFIG_FILE}: not a radio model directory")
    try:
        config_dict = json.loads(config_path.read_text())
    except ValueError as e:
        raise ValueError(f"{config_path} is not valid JSON: {e}") from None
    radio_section = config_dict.pop("radio", None) if isinstance(config_dict, dict) else None
    if not isinstance(radio_section, dict):
        raise ValueError(f"{config_path} has no 'radio' section: not saved by radio.save "
                         f"(a plain transformers model loads with from_pretrained)")
    version = radio_section.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ValueError(f"{path} was saved with format_version {version!r}; this radio "
                         f"understands up to {FORMAT_VERSION}; upgrade radio to read it")
    class_name = radio_section.get("model_class")
    model_class = getattr(transformers, str(class_name), None)
    if not (isinstance(model_class, type) and issubclass(model_class, transformers.PreTrainedModel)):
        raise ValueError(f"{config_path}: model_class {class_name!r} is not a transformers model "
                         f"class")
    for name in (RADIO_FILE, DENSE_FILE):
        if not (path / name).is_file():
            raise FileNotFoundError(f"{path} has no {name}: the save is incomplete")

    layers, _ = read_packed_layers(path / RADIO_FILE, verify_crc=verify_crc)
    if set(layers) != set(radio_section.get("layers", {})):
        raise ValueError(f"{path}: the layers of {RADIO_FILE} do not match config.json")
    model_type = config_dict.pop("model_type", None)
    config = transformers.AutoConfig.for_model(model_type, **config_dict)
    with torch.device("meta"):
        model = model_class(config)

    for name, packed in layers.items():
        _set_module(model, name, RadioLinear.from_packed(packed, validate=False))
    from safetensors import safe_open

    from safetensors import SafetensorError

    try:
        with safe_open(str(path / DENSE_FILE), framework="pt") as f:
            dense = {key: f.get_tensor(key) for key in f.keys()}
    except SafetensorError as e:
        raise ValueError(f"{path / DENSE_FILE}: not a valid safetensors file: {e}") from None
    for name, target in radio_section.get("aliases", {}).items():
        if target not in dense:
            raise ValueError(f"{path}: alias {name} -> {target} names no stored tensor")
    for name, tensor in dense.items():
        _set_tensor(model, name, tensor)
    for name, target in radio_section.get("aliases", {}).items():
        _set_tensor(model, name, _get_tensor(model, target))
    missing = [n for n, t in list(model.named_parameters()) + list(model.named_buffers())
               if t.device.type == "meta"]
    if missing:
        raise ValueError(f"{path}: no data for {len(missing)} tensors of the model, e.g. "
                         f"{missing[:3]}; the dense file does not match config.json")
    report = radio_section.get("report")
    if report is not None:
        model.radio_report = report
    return model.to(device).eval()


def _split(name: str) -> Tuple[str, str]:
    owner, _, leaf = name.rpartition(".")
    return owner, leaf


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    owner, leaf = _split(name)
    try:
        parent = model.get_submodule(owner)
        old = getattr(parent, leaf)
    except AttributeError:
        raise ValueError(f"quantized layer {name!r} is not a module of "
                         f"{type(model).__name__}") from None
    if not isinstance(old, nn.Linear):
        raise ValueError(f"quantized layer {name!r} replaces a {type(old).__name__}, expected "
                         f"nn.Linear")
    if (old.out_features, old.in_features) != (module.out_features, module.in_features):
        raise ValueError(f"quantized layer {name!r} is [{module.out_features}, "
                         f"{module.in_features}], the model expects [{old.out_features}, "
                         f"{old.in_features}]")
    setattr(parent, leaf, module)


def _get_tensor(model: nn.Module, name: str) -> torch.Tensor:
    owner, leaf = _split(name)
    return getattr(model.get_submodule(owner), leaf)


def _set_tensor(model: nn.Module, name: str, tensor: torch.Tensor) -> None:
    owner, leaf = _split(name)
    try:
        module = model.get_submodule(owner)
    except AttributeError:
        raise ValueError(f"stored tensor {name!r} has no module in the model") from None
    if leaf in module._parameters:
        old = module._parameters[leaf]
        if old is not None and tuple(old.shape) != tuple(tensor.shape):
            raise ValueError(f"stored tensor {name!r} has shape {tuple(tensor.shape)}, the model "
                             f"expects {tuple(old.shape)}")
        requires_grad = bool(old.requires_grad) if old is not None else False
        module._parameters[leaf] = (tensor if isinstance(tensor, nn.Parameter)
                                    else nn.Parameter(tensor, requires_grad=requires_grad))
    elif leaf in module._buffers:
        old = module._buffers[leaf]
        if old is not None and tuple(old.shape) != tuple(tensor.shape):
            raise ValueError(f"stored tensor {name!r} has shape {tuple(tensor.shape)}, the model "
                             f"expects {tuple(old.shape)}")
        module._buffers[leaf] = tensor
    else:
        raise ValueError(f"stored tensor {name!r} is neither a parameter nor a buffer of the "
                         f"model")
