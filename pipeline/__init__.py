"""vidprobe: frozen image encoders + cached per-frame embeddings + cheap heads for video classification."""

from __future__ import annotations

__version__ = "0.1.0"
