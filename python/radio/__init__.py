"""radio: rate-distortion optimal post-training quantization of large language models."""
from ._ext import _core, has_cuda

__version__ = "0.1.0"
__all__ = ["has_cuda", "__version__", "RadioLinear", "save", "load", "perplexity",
           "quantize", "QuantConfig", "QuantReport", "layer_statistics", "allocate",
           "quantize_weight", "dequantize", "pack", "unpack"]

# torch-dependent names load on first use, so `import radio` stays light (numpy + _core only).
_LAZY = {"RadioLinear": ".nn", "save": ".io", "load": ".io", "perplexity": ".eval",
         "quantize": ".quantize", "QuantConfig": ".config", "QuantReport": ".report",
         "layer_statistics": ".layer", "allocate": ".layer", "quantize_weight": ".layer",
         "dequantize": ".layer", "pack": ".layer", "unpack": ".layer"}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        # Cache it: importing the submodule radio.quantize set the attribute `quantize` to the
        # module, which must not shadow the function of the same name.
        globals()[name] = value
        return value
    raise AttributeError(f"module 'radio' has no attribute {name!r}")
