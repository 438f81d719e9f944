"""radio: rate-distortion optimal post-training quantization of large language models."""
from ._ext import _core, has_cuda

__version__ = "0.1.0"
__all__ = ["has_cuda", "__version__"]
