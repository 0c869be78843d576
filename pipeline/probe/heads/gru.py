"""``gru``: a (bi)GRU over a clip's frames (``temporal.models.GRUHead``): trained by the batched lr x wd sweep
(``temporal.train``), saved as arrays, predicted with numpy."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..temporal.arch import TemporalSettings
from ..temporal.predictor import native_kind
from ..temporal.train import fit_temporal
from .native import register_native_kind
from .registry import HeadKind, register_head


@dataclass
class GruSettings(TemporalSettings):
    bidirectional: bool = True  # also read the clip backwards

    def arch(self) -> dict[str, Any]:
        return {"bidirectional": self.bidirectional}


register_native_kind("gru", native_kind("gru"))
register_head(HeadKind("gru", GruSettings, lambda cfg, data: fit_temporal("gru", cfg, data), temporal=True, cv_folds=3))
