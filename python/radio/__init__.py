"""radio: rate-distortion optimal post-training quantization of large language models."""
from ._ext import _core, has_cuda

__version__ = "0.1.0"
__all__ = ["has_cuda", "__version__", "RadioLinear", "save", "load", "perplexity"]

# torch-dependent names load on first use, so `import radio` stays light (numpy + _core only).
_LAZY = {"RadioLinear": ".nn", "save": ".io", "load": ".io", "perplexity": ".eval"}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module 'radio' has no attribute {name!r}")
