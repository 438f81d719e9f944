"""Loads the compiled modules: ``_core`` (required) and ``_cuda`` (optional).

Importing radio never initialises CUDA; ``has_cuda()`` asks torch only when called.
"""
from __future__ import annotations

from . import _core

try:  # the CUDA extension is built only where nvcc was found
    from . import _cuda  # type: ignore[attr-defined]
except ImportError:  # pragma: no cover - depends on the build
    _cuda = None


def has_cuda() -> bool:
    """True when radio._cuda was built and torch sees a CUDA device."""
    if _cuda is None:
        return False
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()
