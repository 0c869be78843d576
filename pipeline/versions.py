"""Versions of vidprobe and the libraries a result was made with, for provenance and result files.

One helper, so a store, a head file and a benchmark record versions the same way. Versions come from
the installed distributions' metadata: asking needs no import of the (slow) libraries themselves.
"""

from __future__ import annotations

import platform
from importlib import metadata

from . import __version__

__all__ = ["cpu_model", "versions"]


def versions(*dists: str) -> dict[str, str]:
    """``{name: version}`` for distribution names; ``vidprobe`` is this code, ``python`` the interpreter."""
    out = {}
    for name in dists:
        if name == "vidprobe":
            out[name] = __version__
        elif name == "python":
            out[name] = platform.python_version()
        else:
            try:
                out[name] = metadata.version(name)
            except metadata.PackageNotFoundError:
                out[name] = "not installed"
    return out


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``; else what ``platform`` knows): every figure names its CPU,
    since results and speed differ between the machines of one kind (AVX2 vs AVX-512/AMX)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            name = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        name = ""
    return name or platform.processor() or platform.machine() or "unknown"
