"""Several encoder specs, as few models and forward passes as they allow: ``create_encoders(specs)``.

An extraction that writes K stores (one per spec) runs each *model* once per batch. Specs that name
the same open_clip model with and without ``#pre`` share one: it is built as the ``#pre`` encoder
and also derives the joint embedding from the same forward pass (``Encoder.encode_outputs``). Specs
that name the same timm model (and checkpoint) with and without ``#blockK`` share one too: it is built
as the plain spec (else the first level named) and gives the other levels from the same pass. Every
other spec is its own model. One spec is the K=1 case: one group with one output.

``create_encoders(specs)`` gives one ``FrameEncoder`` per spec, with the spec, dim and provenance that
spec alone would have (``create_encoder(spec)``), so a store written from a shared forward is the same
store, and can be grown later by a run of that spec alone; ``group_outputs`` finds the models behind a
list of them (an engine runs each ``EncoderGroup`` once per batch).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import ConfigError
from .base import FrameEncoder, Preprocess
from .registry import canonical_spec, create_encoder, parse_spec, spec_options

_SHARED = ("openclip", "timm")  # backends whose spec options are further outputs of the same model

__all__ = ["DerivedOutput", "EncoderGroup", "create_encoders", "group_outputs", "group_specs"]


class DerivedOutput:
    """One extra output of a shared model's forward (the joint embedding of a ``#pre`` open_clip model):
    a ``FrameEncoder`` with the spec, dim and provenance that spec alone would have."""

    def __init__(self, model: Any, name: str, spec: str, dim: int, info: dict[str, Any]) -> None:
        self.model, self.name = model, name  # the Encoder that runs the forward; what it derives, e.g. "joint"
        self.spec, self.dim, self._info = spec, int(dim), info
        self.weights_id: str = model.weights_id
        self.device: Any = model.device
        self.preprocess_cfg: Preprocess = model.preprocess_cfg
        self.precision: str = model.precision

    def encode(self, frames: Any) -> np.ndarray:
        return self.model.encode_outputs(frames, (self.name,))[1]

    def provenance(self) -> dict[str, Any]:
        return dict(self._info)

    def __repr__(self) -> str:
        return f"DerivedOutput(spec={self.spec!r}, dim={self.dim}, of={self.model!r})"


class EncoderGroup:
    """One model's forward pass feeding one or more outputs (one store each)."""

    def __init__(self, model: FrameEncoder, derived: Sequence[DerivedOutput] = ()) -> None:
        self.model = model
        self.derived = tuple(derived)
        self.outputs: tuple[FrameEncoder, ...] = (model, *self.derived)

    @property
    def preprocess_cfg(self) -> Preprocess:
        return self.model.preprocess_cfg

    @property
    def device(self) -> Any:
        return self.model.device

    def encode(self, frames: Any) -> list[np.ndarray]:
        """One forward: float32 (N, dim) embeddings per output, in ``outputs`` order."""
        if not self.derived:
            return [self.model.encode(frames)]
        return self.model.encode_outputs(frames, tuple(d.name for d in self.derived))  # type: ignore[attr-defined]

    def __repr__(self) -> str:
        return f"EncoderGroup({', '.join(o.spec for o in self.outputs)})"


def group_specs(specs: Sequence[str]) -> list[list[int]]:
    """Indices of ``specs`` per model, in first-appearance order; ConfigError for a spec named twice.
    Checks the specs only (no model is built), so a run refuses a bad list before loading anything."""
    if not specs:
        raise ConfigError("encoder: give at least one encoder spec")
    seen: dict[str, int] = {}
    groups: dict[str, list[int]] = {}
    for i, spec in enumerate(specs):
        canon = canonical_spec(spec)
        if canon in seen:
            raise ConfigError(
                f"encoder {spec!r} is named twice (as {specs[seen[canon]]!r}); each encoder writes one store"
            )
        seen[canon] = i
        backend = parse_spec(spec)[0]
        key = spec_options(canon)[0] if backend in _SHARED else canon  # e.g. joint and #pre share the model
        groups.setdefault(key, []).append(i)
    return list(groups.values())


def create_encoders(
    specs: Sequence[str], device: Any = "auto", precision: str = "auto", channels_last: bool | None = None
) -> list[FrameEncoder]:
    """One encoder per spec, sharing models where they can (``group_outputs`` finds the shared forwards)."""
    out: list[Any] = [None] * len(specs)
    for members in group_specs(specs):
        if len(members) == 1:
            out[members[0]] = create_encoder(
                specs[members[0]], device=device, precision=precision, channels_last=channels_last
            )
            continue
        first, names = _shared_model(specs, members)
        model = create_encoder(specs[first], device=device, precision=precision, channels_last=channels_last)
        out[first] = model
        size = model.preprocess_cfg.size  # one real forward gives each output's size, as Encoder does for dim
        for i, name in names.items():
            dim = model.encode_outputs(np.zeros((1, size, size, 3), np.uint8), (name,))[1].shape[1]
            spec = canonical_spec(specs[i])
            info = model.provenance()
            info.update(spec=spec, dim=int(dim), features=name)  # what that spec's own encoder records
            out[i] = DerivedOutput(model, name, spec, dim, info)
    return out


def _shared_model(specs: Sequence[str], members: list[int]) -> tuple[int, dict[int, str]]:
    """(the member whose encoder runs the forward, {other member: the output it derives}) for one model's
    specs, as the module doc says."""
    options = {i: spec_options(specs[i])[1] for i in members}
    if parse_spec(specs[members[0]])[0] == "openclip":  # group_specs: at most the joint and the #pre spec
        first = next(i for i in members if "pre" in options[i])
        return first, {i: "joint" for i in members if i != first}
    first = next((i for i in members if not options[i]), members[0])
    return first, {i: next(iter(options[i])) for i in members if i != first}


def group_outputs(outputs: Sequence[FrameEncoder]) -> tuple[list[EncoderGroup], list[tuple[int, int]]]:
    """(groups, where): one ``EncoderGroup`` per distinct model behind ``outputs`` (a ``DerivedOutput``
    joins its model's group), and for ``outputs[i]`` its (group, output) in ``where[i]``."""
    models: list[Any] = []
    derived: list[list[DerivedOutput]] = []
    for o in outputs:
        model = o.model if isinstance(o, DerivedOutput) else o
        if not any(model is m for m in models):
            models.append(model)
            derived.append([])
        g = next(k for k, m in enumerate(models) if m is model)
        if isinstance(o, DerivedOutput) and not any(d is o for d in derived[g]):
            derived[g].append(o)
    groups = [EncoderGroup(m, d) for m, d in zip(models, derived)]
    where = []
    for o in outputs:
        g = next(k for k, grp in enumerate(groups) if grp.model is (o.model if isinstance(o, DerivedOutput) else o))
        where.append((g, next(j for j, out in enumerate(groups[g].outputs) if out is o)))
    return groups, where
