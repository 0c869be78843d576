"""What every temporal head shares: its settings, its architecture record (the sidecar's ``model``), and the
constants of the arithmetic that the torch module, the batched training forward and the numpy predictor
repeat."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ...config import AUTO, rule
from ...errors import ConfigError

__all__ = [
    "INPUTS",
    "MAX_CANDIDATES",
    "MAX_EPOCHS",
    "MAX_WIDTH",
    "NEG",
    "PRECISIONS",
    "TREND_SLOPE_SCALE",
    "TemporalSettings",
    "input_width",
    "temporal_arch",
]
NEG = -1e9  # attention score of a padded frame (finite: an all-masked row cannot make NaN)
TREND_SLOPE_SCALE = 0.25  # of the trend readout's slope: a quarter of the fitted change over the whole clip
INPUTS = ("delta", "residual", "frames")  # what a temporal head reads per frame (inputs.input_features)
PRECISIONS = ("auto", "fp32", "bf16")  # of the training steps' matrix products (train.train_precision)
# components=auto: standardise each dimension on sets of fewer than AUTO_CLIPS_PER_DIM clips per dimension whose
# full-width float32 inputs take at most AUTO_FULL_INPUT_BYTES (whitening amplifies the directions a few hundred
# clips cannot estimate), else PCA-whiten onto AUTO_COMPONENTS directions (full width costs (3 x D) / (3 x 64)
# times the input product's work, or does not fit at all). Measured: docs/performance.md.
AUTO_CLIPS_PER_DIM = 4
AUTO_FULL_INPUT_BYTES = 1 << 30
AUTO_COMPONENTS = 64
# Bounds on the settings that make a fit's work grow without limit (a typo such as epochs: 1e9 would run until
# killed): far above any value the recipe needs, low enough that the work stays finite.
MAX_EPOCHS = 10_000
MAX_WIDTH = 4096
MAX_CANDIDATES = 64  # lr x wd pairs, trained at once as one batched model (memory grows with their number)


@dataclass
class TemporalSettings:
    """The settings of every temporal head; a kind's own dataclass adds its architecture's (and ``arch``)."""

    # precision of the training steps' matrix products: auto (bf16 autocast on CUDA and on CPUs with native
    # bf16, else fp32) | fp32 | bf16; weights, optimizer and the saved head stay fp32
    precision: str = field(default="auto", metadata=rule(choices=PRECISIONS))
    # per frame, its deviation from the clip mean + its step from the previous frame + the clip mean (delta),
    # without the step (residual), or the frame itself (frames)
    inputs: str = field(default="delta", metadata=rule(choices=INPUTS))
    # inputs PCA-whitened onto this many directions (per part); 0 = standardise each dimension; auto: see above
    components: int | str = field(default=AUTO, metadata=rule(min=0, auto=True))
    width: int = field(default=64, metadata=rule(min=1, max=MAX_WIDTH))  # attn: embedding width; gru: hidden units
    # add a linear readout of each clip's mean input and its slope over time to the logits (``clip_trend``)
    trend: bool = True
    # learning rates and weight decays swept together on val (one batched model)
    lrs: tuple[float, ...] = field(
        default=(3e-3, 1e-3, 3e-4), metadata=rule(gt=0, finite=True, nonempty=True, most=MAX_CANDIDATES)
    )
    wds: tuple[float, ...] = field(default=(0.01, 0.1, 0.4), metadata=rule(min=0, nonempty=True, most=MAX_CANDIDATES))
    epochs: int = field(default=80, metadata=rule(min=1, max=MAX_EPOCHS))  # most epochs (early stopping on val)
    batch_size: int = field(default=64, metadata=rule(min=1, max=1 << 16))  # clips per step
    # attn: in the MLP and on the pooled queries; gru: on the frames and the final state (chosen: performance.md)
    dropout: float = field(default=0.3, metadata=rule(min=0, lt=1))
    # each cached frame left out of a training clip with this probability (augmentation)
    frame_dropout: float = field(default=0.1, metadata=rule(min=0, lt=1))
    # random shift of each frame's clip-relative time, in frame spacings (augmentation)
    time_jitter: float = field(default=0.25, metadata=rule(min=0, max=1))
    label_smoothing: float = field(default=0.1, metadata=rule(min=0, lt=1))
    # stop after this many epochs without a better val score for any candidate (0 = never)
    early_stop: int = field(default=20, metadata=rule(min=0, max=MAX_EPOCHS))
    device: str = field(default="auto", metadata=rule(device=True))  # auto | cpu | cuda[:K]

    def _check(self, prefix: str) -> None:
        n = len(self.lrs) * len(self.wds)
        if n > MAX_CANDIDATES:
            raise ConfigError(
                f"{prefix}lrs x {prefix}wds: {len(self.lrs)} x {len(self.wds)} = {n} candidates, must be <= "
                f"{MAX_CANDIDATES} (they train at once as one batched model)"
            )

    @property
    def candidates(self) -> list[tuple[float, float]]:
        """The (lr, wd) pairs of the sweep."""
        return [(lr, wd) for lr in self.lrs for wd in self.wds]

    def arch(self) -> dict[str, Any]:
        """The kind's own entries of the architecture record."""
        return {}


def input_width(inputs: str, dim: int, components: int) -> int:
    """D' of ``input_features`` for ``dim``-d embeddings."""
    return (components or dim) * {"frames": 1, "residual": 2, "delta": 3}[inputs]


def resolve_components(cfg: TemporalSettings, dim: int, train_shape: tuple[int, int] | None = None) -> int:
    """The number of input directions a fit uses: ``cfg.components``, with ``auto`` decided on the training
    set's (clips, frames) ``train_shape`` (None: a small set)."""
    if cfg.components != AUTO:
        return min(int(cfg.components), dim)
    n, t = train_shape or (0, 0)
    full = n * t * input_width(cfg.inputs, dim, 0) * 4
    small = n < AUTO_CLIPS_PER_DIM * dim and full <= AUTO_FULL_INPUT_BYTES
    return 0 if small else min(AUTO_COMPONENTS, dim)


def temporal_arch(
    kind: str, cfg: TemporalSettings, dim: int, n_classes: int, train_shape: tuple[int, int] | None = None
) -> dict[str, Any]:
    """The architecture record (sidecar ``model``) of a ``kind`` head on ``dim``-d frame embeddings
    (``train_shape``: the training set's (clips, frames), which ``components=auto`` is decided on)."""
    components = resolve_components(cfg, dim, train_shape)
    return {
        "kind": kind,
        "inputs": cfg.inputs,
        "dim": input_width(cfg.inputs, dim, components),  # what the module reads per frame
        "components": components,
        "embedding_dim": dim,
        "n_classes": n_classes,
        "width": cfg.width,
        "dropout": cfg.dropout,
        "trend": cfg.trend,
        **cfg.arch(),
    }
