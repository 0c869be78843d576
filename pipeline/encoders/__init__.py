"""Frozen image encoders behind one spec string, e.g. ``create_encoder("openclip:ViT-B-32@laion2b_s34b_b79k")``.

Spec forms (``parse_spec`` -> (backend, model, weights | None)): ``effnet-lite0`` (the offline default),
``openclip:MODEL[@WEIGHTS][#pre]`` and ``timm:NAME[@CHECKPOINT][#blockK]``; what each part means is in
docs/extraction.md#settings and ``registry.SPEC_FORMS``.

Several specs in one extraction (``create_encoders``) share what they can: the joint and the ``#pre``
output of one open_clip model come from one forward pass, and so do a timm model's levels (see ``group``).

The backend name is case-insensitive and ``@`` splits at its first occurrence. ``Encoder.spec`` is the
canonical form (alias resolved, file paths absolute). See ``base`` for the preprocessing contract with
the decoder. Importing this package imports neither torch nor timm nor open_clip; building an encoder does.
"""

from __future__ import annotations

from .base import Encoder, Preprocess
from .group import EncoderGroup, create_encoders, group_outputs
from .registry import DEFAULT_ENCODER, canonical_spec, create_encoder, parse_spec, register_backend, spec_options

__all__ = [
    "DEFAULT_ENCODER",
    "Encoder",
    "EncoderGroup",
    "Preprocess",
    "canonical_spec",
    "create_encoder",
    "create_encoders",
    "group_outputs",
    "parse_spec",
    "register_backend",
    "spec_options",
]
