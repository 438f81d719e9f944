"""Host (CPU) memory of this process: resident size now and its peak (Linux ``/proc``).

Used to measure what ``radio.quantize(..., offload=True)`` costs in host memory, phase by phase
(bench/bench_quantize.py) and in the offload test. ``getrusage``'s ``ru_maxrss`` is the peak of
the whole process life and cannot be reset; Linux (>= 4.0) resets the peak (``VmHWM``) when "5"
is written to ``/proc/self/clear_refs``, so a phase's own peak can be read.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import resource
from typing import Optional

__all__ = ["rss_bytes", "peak_rss_bytes", "reset_peak_rss", "return_free_memory"]


def _status_kib(key: str) -> Optional[int]:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])  # "VmRSS:   12345 kB"
    except OSError:
        return None
    return None


def rss_bytes() -> int:
    """Resident host memory now (bytes); 0 where ``/proc`` is missing."""
    kib = _status_kib("VmRSS")
    return 0 if kib is None else kib * 1024


def peak_rss_bytes() -> int:
    """Peak resident host memory since the last ``reset_peak_rss()`` (or the process start)."""
    kib = _status_kib("VmHWM")
    if kib is None:  # no /proc: the whole life's peak (Linux reports KiB)
        kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kib * 1024


def reset_peak_rss() -> bool:
    """Set the peak to the current resident size; False where the kernel does not allow it
    (then ``peak_rss_bytes`` keeps counting from the earlier peak)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def return_free_memory() -> bool:
    """Hand the heap's free pages back to the kernel (glibc ``malloc_trim(0)``); False where
    there is no glibc. Tensors above glibc's mmap threshold (at most 32 MiB) are unmapped as
    soon as they are freed; smaller ones (the layers of models below ~7B) come from the heap,
    whose freed pages stay resident, though reused, until trimmed."""
    name = ctypes.util.find_library("c")
    try:
        trim = ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):
        return False
    if trim is None:
        return False
    trim.argtypes = [ctypes.c_size_t]
    trim(0)
    return True
