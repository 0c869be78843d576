"""One registry from spec strings to encoders, in the spirit of open_clip's ``factory.py``.

The spec grammar is documented in ``pipeline.encoders``. Backends import their libraries only when a
spec of theirs is built, so ``import pipeline.encoders`` stays cheap.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .base import Encoder, resolve_device, resolve_precision

DEFAULT_ENCODER = "effnet-lite0"
_DEFAULT_ALIASES = ("effnet-lite0", "default")
_BACKEND_ALIASES = {"open_clip": "openclip"}
SPEC_FORMS = "effnet-lite0 (or default) | openclip:MODEL[@WEIGHTS][#pre] | timm:NAME[@CHECKPOINT][#blockK]"
# Options appended as ``#NAME``; only a known name at the very end counts, so a '#' inside a path stays put.
SPEC_OPTIONS = {
    "pre": "openclip: pre-projection (penultimate) image features instead of the joint embedding",
    "blockK": "timm: the global average of feature level K (timm's forward_intermediates index) instead of the "
    "pre-logits features",
}
_OPTION_PATTERNS = {"pre": "pre", "blockK": r"block\d+"}  # option key -> what its spelling matches
_OPTION_BACKENDS = {"pre": ("openclip",), "blockK": ("timm",)}

Factory = Callable[..., Encoder]  # (spec, model, weights, device=, precision=, channels_last=) -> Encoder


def _effnet(*args: Any, **kwargs: Any) -> Encoder:
    from .effnet_lite import build

    return build(*args, **kwargs)


def _openclip(*args: Any, **kwargs: Any) -> Encoder:
    from .openclip_backend import build

    return build(*args, **kwargs)


def _timm(*args: Any, **kwargs: Any) -> Encoder:
    from .timm_backend import build

    return build(*args, **kwargs)


def _openclip_check(*args: Any) -> None:
    from .openclip_backend import check

    check(*args)


BACKENDS: dict[str, Factory] = {"effnet-lite0": _effnet, "openclip": _openclip, "timm": _timm}
# backend -> check(spec, model, weights): what it refuses before torch is imported (e.g. weights it cannot fetch)
CHECKS: dict[str, Callable[[str, str, str | None], None]] = {"openclip": _openclip_check}


def register_backend(name: str, factory: Factory, check: Callable[[str, str, str | None], None] | None = None) -> None:
    """Add a backend reachable as ``name:MODEL[@WEIGHTS]``; ``check(spec, model, weights)``, if given, runs before
    torch is imported and raises for what can be refused without it."""
    BACKENDS[name.lower()] = factory
    if check is not None:
        CHECKS[name.lower()] = check


def spec_options(spec: str) -> tuple[str, frozenset[str]]:
    """``"openclip:ViT-B-32@openai#pre"`` -> (``"openclip:ViT-B-32@openai"``, {"pre"}); ``#block2`` -> {"block2"}."""
    s, options = spec.strip(), set()
    alternatives = "|".join(_OPTION_PATTERNS.values())
    while m := re.fullmatch(r"(.+)#(" + alternatives + r")", s, flags=re.IGNORECASE):
        s, name = m.group(1), m.group(2).lower()
        options.add(f"block{int(name[5:])}" if name.startswith("block") else name)  # #block02 is #block2
    return s, frozenset(options)


def option_key(name: str) -> str:
    """The ``SPEC_OPTIONS`` key an option spelling belongs to: ``"block2"`` -> ``"blockK"``."""
    return next(k for k, pattern in _OPTION_PATTERNS.items() if re.fullmatch(pattern, name))


def block_option(spec: str) -> int | None:
    """K of a ``#blockK`` option in ``spec``, None without one."""
    blocks = [int(o[5:]) for o in spec_options(spec)[1] if option_key(o) == "blockK"]
    return blocks[0] if blocks else None


def parse_spec(spec: str) -> tuple[str, str, str | None]:
    """``spec`` -> (backend, model, weights or None); ConfigError naming the spec and the allowed forms.
    Options (``#pre``) are not part of the result: see ``spec_options``."""
    if not isinstance(spec, str) or not spec.strip():
        raise ConfigError(f"encoder spec {spec!r} is empty; allowed forms: {SPEC_FORMS}")
    s, options = spec_options(spec)
    for name in options:
        backend = s.partition(":")[0].lower()
        key = option_key(name)
        if _BACKEND_ALIASES.get(backend, backend) not in _OPTION_BACKENDS[key]:
            why = "; timm and effnet-lite0 embeddings already are pre-classifier features" if key == "pre" else ""
            raise ConfigError(
                f"encoder spec {spec!r}: option #{name} is only for {', '.join(_OPTION_BACKENDS[key])} encoders "
                f"({SPEC_OPTIONS[key]}){why}"
            )
    if sum(option_key(o) == "blockK" for o in options) > 1:
        raise ConfigError(f"encoder spec {spec!r}: one #blockK per spec; name each level as its own encoder")
    if s.lower() in _DEFAULT_ALIASES:
        return "effnet-lite0", "tf_efficientnet_lite0", None
    backend, sep, rest = s.partition(":")
    backend = _BACKEND_ALIASES.get(backend.lower(), backend.lower())
    if not sep or backend not in BACKENDS or backend == "effnet-lite0":
        if backend == "effnet-lite0" or s.lower().startswith("effnet-lite0@"):
            why = "effnet-lite0 takes no model or weights"
        else:
            why = _unknown(s)
        raise ConfigError(f"encoder spec {spec!r}: {why}; allowed forms: {SPEC_FORMS}")
    model, at, weights = rest.partition("@")
    if not model or (at and not weights):
        raise ConfigError(
            f"encoder spec {spec!r}: empty {'model' if not model else 'weights'} part; allowed forms: {SPEC_FORMS}"
        )
    return backend, model, weights if at else None


def _unknown(s: str) -> str:
    """Why a spec names no registered encoder, with the closest registered name: ``effnet-lite`` ->
    effnet-lite0, ``openclp:M`` -> openclip:M; a bare model name is offered under each model backend."""
    models = [b for b in BACKENDS if b != "effnet-lite0"]
    backend, sep, rest = s.partition(":")
    if sep:
        close = difflib.get_close_matches(backend.lower(), [*models, *_BACKEND_ALIASES], n=1, cutoff=0.6)
        hint = f"did you mean {_BACKEND_ALIASES.get(close[0], close[0])}:{rest}?" if close else ""
        return f"unknown backend {backend.lower()!r} ({hint or 'registered: ' + ', '.join(models)})"
    close = difflib.get_close_matches(s.lower(), _DEFAULT_ALIASES, n=1, cutoff=0.6)
    if close:
        return f"no encoder is named {s!r} (did you mean {close[0]}?)"
    return f"no backend given (did you mean {' or '.join(f'{b}:{s}' for b in models)}?)"


def _absolute_if_path(s: str) -> str:
    p = Path(s).expanduser()
    looks_like_path = p.is_file() or "/" in s or "\\" in s or s.startswith((".", "~"))
    return str(p.resolve()) if looks_like_path and not s.startswith("hf-hub:") else s


def canonical_spec(spec: str) -> str:
    """The spec recorded with embeddings: alias resolved, backend lower-case, file paths absolute."""
    backend, model, weights = parse_spec(spec)
    if backend == "effnet-lite0":
        return "effnet-lite0"
    if model.lower().endswith(".json"):
        model = _absolute_if_path(model)
    out = f"{backend}:{model}"
    out = f"{out}@{_absolute_if_path(weights)}" if weights is not None else out
    return out + "".join(f"#{name}" for name in sorted(spec_options(spec)[1]))


def create_encoder(
    spec: str = DEFAULT_ENCODER,
    device: Any = "auto",
    precision: str = "auto",
    channels_last: bool | None = None,
) -> Encoder:
    """Build a frozen encoder from a spec (see module docstring).

    device: auto (CUDA if available) | cpu | cuda | cuda:K. precision: auto | fp32 | fp16 (CUDA only) | bf16
    (``base.resolve_precision``). channels_last: None = on for conv nets. Embeddings are float32 whatever the precision.
    """
    backend, model, weights = parse_spec(spec)
    if backend in CHECKS:  # before torch: seconds
        CHECKS[backend](canonical_spec(spec), model, weights)
    dev = resolve_device(device)  # validate run options before loading any weights
    resolve_precision(precision, dev)
    extra: dict[str, Any] = {"features": "pre"} if "pre" in spec_options(spec)[1] else {}
    if (block := block_option(spec)) is not None:
        extra = {"block": block}
    return BACKENDS[backend](
        canonical_spec(spec), model, weights, device=dev, precision=precision, channels_last=channels_last, **extra
    )
