"""``HeadConfig``: a head kind and its settings, validated up front and recorded with every head and benchmark row.

Each kind declares its settings as a dataclass (``HeadKind.settings``); this class holds one of them, so
the one validator (``config.check_settings``) names the setting in every message, and ``to_dict`` records
exactly the settings the kind reads.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any

from ...config import build, check_known, check_settings, coerce
from ...errors import ConfigError
from .registry import head_kind, head_names

__all__ = ["HeadConfig"]


class HeadConfig:
    """``HeadConfig(kind="knn", ks=(3,))``; a setting reads as an attribute (``cfg.ks``)."""

    def __init__(self, kind: str = "logreg", **settings: Any) -> None:
        self.kind = kind
        cls = head_kind(kind).settings
        names = {f.name for f in dataclasses.fields(cls)}
        self.settings = cls(**{k: v for k, v in settings.items() if k in names})
        self._others = {k: v for k, v in settings.items() if k not in names}  # refused by validate

    def __getattr__(self, name: str) -> Any:
        if name == "settings":  # not set yet: no recursion
            raise AttributeError(name)
        return getattr(self.settings, name)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, HeadConfig) and (self.kind, self.settings) == (other.kind, other.settings)

    def __repr__(self) -> str:
        return f"HeadConfig(kind={self.kind!r}, {self.settings!r})"

    def validate(self) -> HeadConfig:
        _check_others(self.kind, self._others, [f.name for f in dataclasses.fields(self.settings)])
        check_settings(self.settings)  # coerces each field to its type, checks its rule, then ``_check``
        return self

    def replace(self, **changes: Any) -> HeadConfig:
        return HeadConfig(self.kind, **{**self.to_dict(), **changes, "kind": self.kind}).validate()

    def to_dict(self) -> dict[str, Any]:
        """The kind and the settings it uses (JSON-ready): what the sidecar and results.csv record."""
        out: dict[str, Any] = {"kind": self.kind}
        for f in dataclasses.fields(self.settings):
            v = getattr(self.settings, f.name)
            out[f.name] = list(v) if isinstance(v, tuple) else v
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any] | str) -> HeadConfig:
        """From a head name or a mapping (YAML); unknown keys are errors that name the key."""
        if isinstance(d, str):
            return cls(kind=d).validate()
        if not isinstance(d, dict):
            raise ConfigError(f"head: expected a name or a mapping of settings, got {d!r}")
        kind = d.get("kind", "logreg")
        if not isinstance(kind, str):
            raise ConfigError(f"head={kind!r}: a head kind is a name")
        cfg = cls(kind)
        names = [f.name for f in dataclasses.fields(cfg.settings)]
        _check_others(kind, {k: v for k, v in d.items() if k not in names and k != "kind"}, names)
        cfg.settings = build(type(cfg.settings), {k: v for k, v in d.items() if k in names}, what="head setting")
        return cfg


def _check_others(kind: str, others: dict[str, Any], names: list[str]) -> None:
    """Settings outside ``kind``'s ``names``: another kind's setting left at its default is ignored, one that
    differs does not apply (ConfigError naming it), and a key no kind has is unknown."""
    for key, value in others.items():
        kinds = (head_kind(n).settings for n in head_names())
        owner = next((cls for cls in kinds if key in {f.name for f in dataclasses.fields(cls)}), None)
        if owner is None:
            check_known({key: value}, ["kind", *names], what="head setting")
        elif coerce(value, typing.get_type_hints(owner)[key], key) != getattr(owner(), key):
            raise ConfigError(
                f"head setting {key!r} does not apply to head {kind!r} (its settings: {', '.join(names) or 'none'})"
            )
