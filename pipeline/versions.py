"""Versions of vidprobe and the libraries a result was made with, for provenance and result files.

One helper, so a store, a head file and a benchmark record versions the same way. Versions come from
the installed distributions' metadata: asking needs no import of the (slow) libraries themselves.
"""

from __future__ import annotations

import platform
from importlib import metadata

from . import __version__

__all__ = ["versions"]


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
