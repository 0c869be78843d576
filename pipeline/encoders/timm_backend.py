"""timm backend: ``timm:NAME`` (pretrained from the hub) or ``timm:NAME@/path/to/weights.pth|.safetensors``.

The embedding is timm's pre-logits feature (``forward_head(..., pre_logits=True)``), i.e. what the model
gives with ``num_classes=0``; the classifier is kept when the checkpoint has one so ``classify`` works.
Preprocessing comes from ``timm.data.resolve_data_config``, the same config timm's eval transform uses.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from ..errors import ConfigError, EncoderError
from .base import Encoder, Preprocess, library_versions, sha256_file

_CROP_MODES = {"center": "shortest", "squash": "squash"}


def timm_preprocess(model: Any) -> Preprocess:
    """Preprocess equal to ``timm.data.create_transform(**resolve_data_config({}, model=model))``."""
    from timm.data import resolve_data_config

    cfg = resolve_data_config({}, model=model)
    h, w = cfg["input_size"][-2:]
    if h != w:
        raise EncoderError(f"timm model {type(model).__name__}: non-square input {h}x{w} is not supported")
    crop_mode = cfg.get("crop_mode") or "center"
    if crop_mode not in _CROP_MODES:
        raise EncoderError(f"timm crop_mode {crop_mode!r} is not supported (only {', '.join(_CROP_MODES)})")
    interpolation = cfg.get("interpolation", "bicubic")
    return Preprocess(
        size=w,
        resize_short=math.floor(w / (cfg.get("crop_pct") or 0.875)),
        mean=tuple(cfg["mean"]),
        std=tuple(cfg["std"]),
        interpolation=interpolation if interpolation in ("bilinear", "nearest") else "bicubic",
        resize_mode=_CROP_MODES[crop_mode],
    )


class TimmEncoder(Encoder):
    backend = "timm"

    def __init__(self, *, model: Any, **kwargs: Any) -> None:
        kwargs.setdefault("preprocess_cfg", timm_preprocess(model))
        kwargs.setdefault("versions", library_versions("timm"))
        super().__init__(model=model, **kwargs)

    def _features(self, x):
        return self.model.forward_head(self.model.forward_features(x), pre_logits=True)

    def _logits(self, x):
        if not getattr(self.model, "num_classes", 0):
            return super()._logits(x)
        return self.model.forward_head(self.model.forward_features(x))


def classifier_keys(model: Any) -> list[str]:
    names = model.pretrained_cfg.get("classifier") or []
    return [names] if isinstance(names, str) else list(names)


def load_strict(model: Any, state_dict: dict, source: str, spec: str) -> None:
    """``load_state_dict`` that reports missing/unexpected keys as one EncoderError naming the file."""
    try:
        result = model.load_state_dict(state_dict, strict=False)
    except RuntimeError as exc:  # shape mismatch
        first = str(exc).strip().splitlines()[-1].strip()
        raise EncoderError(f"encoder spec {spec!r}: weights in {source} do not fit the model ({first})") from None
    if result.missing_keys or result.unexpected_keys:
        raise EncoderError(
            f"encoder spec {spec!r}: weights in {source} do not fit the model "
            f"(missing {len(result.missing_keys)} keys e.g. {result.missing_keys[:3]}, "
            f"unexpected {len(result.unexpected_keys)} e.g. {result.unexpected_keys[:3]}); "
            "check the model name matches the checkpoint"
        )


def model_for_checkpoint(name: str, state_dict: dict) -> Any:
    """Build ``name`` with a head that fits the checkpoint: same class count, or none at all."""
    import timm

    # Any: create_model is typed nn.Module, but timm models also carry reset_classifier/num_classes/pretrained_cfg
    model: Any = timm.create_model(name, pretrained=False)
    heads = [k for k in classifier_keys(model) if f"{k}.weight" in state_dict]
    if not heads:
        model.reset_classifier(0)
        return model
    n = int(state_dict[f"{heads[0]}.weight"].shape[0])
    return model if n == model.num_classes else timm.create_model(name, pretrained=False, num_classes=n)


def build(spec: str, name: str, weights: str | None, **options: Any) -> TimmEncoder:
    import timm

    if not name.startswith("hf-hub:") and not timm.is_model(name):
        import difflib

        close = difflib.get_close_matches(name, timm.list_models(), n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join(close)}?" if close else "; see timm.list_models()"
        raise ConfigError(f"encoder spec {spec!r}: timm has no model {name!r}{hint}")
    if weights is None:
        try:
            model: Any = timm.create_model(name, pretrained=True)  # a timm model (see model_for_checkpoint)
        except Exception as exc:
            raise EncoderError(
                f"encoder spec {spec!r}: pretrained weights for timm model {name!r} could not be downloaded "
                f"({type(exc).__name__}); without network give a local checkpoint: "
                f"'timm:{name}@/path/to/weights.safetensors'"
            ) from exc
        cfg = model.pretrained_cfg
        weights_id = f"pretrained:{cfg.get('hf_hub_id') or name + '.' + str(cfg.get('tag', ''))}"
        extra: dict[str, Any] = {}
    else:
        from timm.models import load_state_dict

        path = Path(weights).expanduser()
        if not path.is_file():
            raise ConfigError(
                f"encoder spec {spec!r}: checkpoint file {str(path)!r} "
                "not found; give an existing .pth/.safetensors path"
            )
        try:
            state_dict = load_state_dict(str(path), weights_only=True)
        except Exception as exc:
            raise EncoderError(
                f"encoder spec {spec!r}: cannot read checkpoint {path} ({type(exc).__name__}: {exc})"
            ) from None
        model = model_for_checkpoint(name, state_dict)
        load_strict(model, state_dict, str(path), spec)
        weights_id = sha256_file(path)
        extra = {"weights_file": str(path.resolve())}
    return TimmEncoder(spec=spec, model=model, model_name=name, weights_id=weights_id, extra=extra, **options)
