"""``attn``: the attentive probe over a clip's frames (``temporal.models.AttentiveProbe``, V-JEPA's pooler):
trained by the batched lr x wd sweep (``temporal.train``), saved as arrays, predicted with numpy."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ...config import rule
from ...errors import ConfigError
from ..temporal.arch import TemporalSettings
from ..temporal.predictor import native_kind
from ..temporal.train import fit_temporal
from .native import register_native_kind
from .registry import HeadKind, register_head

TIME_BINS = 16  # learned time-embedding vectors over a clip


@dataclass
class AttnSettings(TemporalSettings):
    depth: int = field(default=1, metadata=rule(min=1, max=12))  # blocks (depth - 1 self-attention first)
    queries: int = field(default=1, metadata=rule(min=1, max=64))  # learnable queries
    num_heads: int = field(default=4, metadata=rule(min=1))  # attention heads (must divide width)

    def _check(self, prefix: str) -> None:
        super()._check(prefix)
        if self.width % self.num_heads:
            raise ConfigError(f"num_heads={self.num_heads}: must divide width={self.width}")

    def arch(self) -> dict[str, Any]:
        return {"depth": self.depth, "queries": self.queries, "num_heads": self.num_heads, "time_bins": TIME_BINS}


register_native_kind("attn", native_kind("attn"))
register_head(
    HeadKind("attn", AttnSettings, lambda cfg, data: fit_temporal("attn", cfg, data), temporal=True, cv_folds=3)
)
