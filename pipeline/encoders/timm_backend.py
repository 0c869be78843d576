"""timm backend: ``timm:NAME`` (pretrained from the hub) or ``timm:NAME@/path/to/weights.pth|.safetensors``.

The embedding is timm's pre-logits feature (``forward_head(..., pre_logits=True)``), i.e. what the model
gives with ``num_classes=0``; the classifier is kept when the checkpoint has one so ``classify`` works.
Preprocessing comes from ``timm.data.resolve_data_config``, the same config timm's eval transform uses.

``timm:NAME[@CHECKPOINT]#blockK`` embeds with feature level K instead (timm's ``forward_intermediates``
index, as ``model.feature_info`` lists the levels: e.g. resnet18's 0..4 = stem, layer1..layer4), averaged
over its spatial positions (ViT levels: over the patch tokens). Named beside the plain spec (or beside
other levels) in one extraction, every level comes from the same forward pass (``Encoder.encode_outputs``).
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

    def __init__(self, *, model: Any, block: int | None = None, **kwargs: Any) -> None:
        self.block = None if block is None else _check_block(model, int(block), kwargs["spec"])
        if self.block is not None:
            kwargs["extra"] = {**(kwargs.get("extra") or {}), "features": f"block{self.block}"}
        kwargs.setdefault("preprocess_cfg", timm_preprocess(model))
        kwargs.setdefault("versions", library_versions("timm"))
        super().__init__(model=model, **kwargs)

    def _features(self, x):
        if self.block is None:
            return self.model.forward_head(self.model.forward_features(x), pre_logits=True)
        return self._outputs(x, ())[0]

    def _outputs(self, x, derived: tuple[str, ...]) -> list:
        """This encoder's output and each derived ``blockK`` level, from one pass through the trunk (it stops
        after the deepest level when the pre-logits features are not among them)."""
        wanted = [self.block, *(_block_of(name, self.spec) for name in derived)]  # None: pre-logits features
        levels = sorted({k for k in wanted if k is not None})
        if None in wanted:
            if levels:
                final, maps = self.model.forward_intermediates(x, indices=levels)
            else:
                final, maps = self.model.forward_features(x), []
            final = self.model.forward_head(final, pre_logits=True)
        else:
            final = None
            maps = self.model.forward_intermediates(x, indices=levels, intermediates_only=True, stop_early=True)
        pooled = {k: m.mean(dim=(2, 3)) for k, m in zip(levels, maps)}  # NCHW maps: the spatial average
        return [final if k is None else pooled[k] for k in wanted]

    def _logits(self, x):
        if not getattr(self.model, "num_classes", 0):
            return super()._logits(x)
        return self.model.forward_head(self.model.forward_features(x))


def _block_of(name: str, spec: str) -> int:
    if not name.startswith("block") or not name[5:].isdigit():
        raise EncoderError(f"encoder {spec!r} has no output {name!r}; a timm encoder gives #blockK levels")
    return int(name[5:])


def _check_block(model: Any, block: int, spec: str) -> int:
    """``block`` if the model can give feature level ``block``; else one error naming the levels it has."""
    levels = list(getattr(model, "feature_info", None) or [])
    if not hasattr(model, "forward_intermediates") or not levels:
        raise EncoderError(
            f"encoder spec {spec!r}: timm model {type(model).__name__} has no forward_intermediates, so #blockK "
            "is not available for it"
        )
    if not 0 <= block < len(levels):
        named = ", ".join(f"{i}={lv.get('module', '?')} ({lv.get('num_chs', '?')}-d)" for i, lv in enumerate(levels))
        raise ConfigError(f"encoder spec {spec!r}: #block{block} is out of range; the levels are {named}")
    return block


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
