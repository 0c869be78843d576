"""The head registry: one ``HeadKind`` per head, registered once, found by name.

Built-in kinds are listed by module name and imported on first use, so the list of names (the CLI's
``--head`` choices) costs no numpy; a kind from elsewhere calls ``register_head`` in its own module.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ...errors import ConfigError, allowed_values

__all__ = ["HeadKind", "head_kind", "head_names", "register_head", "temporal_head_names"]


@dataclass(frozen=True)
class HeadKind:
    """One head kind: its settings as data, its fit, and how the rest of vidprobe treats it.

    ``settings``: a dataclass whose fields are the kind's settings with their defaults and rules
    (``field(metadata=rule(...))``), and an optional ``_check(prefix)`` for rules between fields.
    ``fit(settings, data: TrainingSet) -> FitResult``. Its file form is a native kind registered with
    ``register_native_kind`` by the same module (``pipeline.probe.heads.native``)."""

    name: str
    settings: type
    fit: Callable[..., Any]
    temporal: bool = False  # reads each clip's frames (FrameSequences, pool "frames"), not one pooled vector
    trained: bool = True  # False: built from the class names alone (zeroshot), no training rows
    cv_folds: int = 5  # k of the grouped CV that chooses where val is thin (fewer where each fold is a costly sweep)


# name -> module of pipeline.probe.heads that registers it (imported on first use)
_BUILTIN = {"logreg": "logreg", "mlp": "mlp", "knn": "knn", "zeroshot": "zeroshot", "attn": "attn", "gru": "gru"}
_KINDS: dict[str, HeadKind] = {}


def register_head(kind: HeadKind) -> HeadKind:
    """Make ``kind`` trainable, savable and loadable by name (``--head NAME``, ``HeadConfig(kind=NAME)``)."""
    _KINDS[kind.name] = kind
    return kind


def head_names() -> tuple[str, ...]:
    """Every head kind's name, built-in first; imports nothing."""
    return (*_BUILTIN, *(n for n in _KINDS if n not in _BUILTIN))


def head_kind(name: str) -> HeadKind:
    """The registered kind ``name``; ConfigError listing the kinds if there is none."""
    if name not in _KINDS and name in _BUILTIN:
        importlib.import_module(f"{__package__}.{_BUILTIN[name]}")
    if name not in _KINDS:
        raise ConfigError(f"head={name!r}: {allowed_values(head_names())}")
    return _KINDS[name]


def temporal_head_names() -> tuple[str, ...]:
    return tuple(n for n in head_names() if head_kind(n).temporal)
