"""Which frames drove a prediction: per-frame weights for ``vidprobe predict --explain``.

* ``attn``: the queries' cross-attention over the frames, averaged over heads and queries; each clip's
  weights sum to 1 (what the head looked at). A head with a trend readout (``trend``, the default) also has
  a linear part of its logit that reads every frame alike: each clip says how the winning logit splits
  between the two (``logit``: ``attention`` + ``trend``), so a weight is never read as the whole story.
* ``logreg`` on ``mean`` pooling: each frame's contribution to the winning class's logit. The logit of a
  mean-pooled clip is ``sum_t (1/T) w_c . standardise(x_t) + b_c``, so the terms add up exactly to the
  logit minus its bias; they can be negative (a frame that argued against the class). For two classes
  scikit-learn keeps one weight row (class 1 against class 0): the contribution is signed towards the winner.

Other heads (``mlp``, ``knn``, ``gru``, other poolings) have no exact per-frame decomposition; asking for
one is a ConfigError before any video is decoded (``check_explainable``).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError
from .heads.logreg import LinearPredictor
from .heads.native import to_native
from .sequences import SEQUENCE_POOL, FrameSequences
from .temporal.predictor import TemporalHead

ATTENTION = "attention"  # how the weights were made, in the output
CONTRIBUTION = "logit contribution"


def explanation_png(plot_dir: str | Path, video: str | Path) -> Path:
    """Where a video's timeline goes: ``STEM-HASH-explain.png`` in ``plot_dir``, HASH the first 8 hex digits of
    the SHA-1 of the video's absolute path. Two videos named alike in different folders get different files;
    the same video, however it is named on the command line, the same one."""
    digest = hashlib.sha1(str(Path(video).resolve()).encode("utf-8", "surrogateescape")).hexdigest()[:8]
    return Path(plot_dir) / f"{Path(video).stem}-{digest}-explain.png"


def check_explainable(meta: dict[str, Any]) -> str:
    """How a head's predictions are explained (``attention`` / ``logit contribution``), from its sidecar."""
    head, pool = meta.get("head"), meta.get("pool")
    if head == "attn" and pool == SEQUENCE_POOL:
        return ATTENTION
    if head == "logreg" and pool == "mean":
        return CONTRIBUTION
    raise ConfigError(
        f"--explain: a {head} head on {pool!r} has no per-frame explanation; explanations exist for attn heads "
        "(attention) and logreg heads on mean pooling (each frame's share of the winning logit)"
    )


def _linear_parts(estimator: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]:
    """W, b and the standardisation (mean, scale; None when the head has none) of a linear head."""
    if isinstance(estimator, LinearPredictor):
        arrays, how = estimator._arrays, estimator.input
    else:  # a scikit-learn pipeline loaded from .skops / .joblib
        arrays, model = to_native(estimator)
        how = model.get("input", "none")
    if how not in ("standardize", "none"):
        raise ConfigError(f"--explain: a linear head with {how!r} inputs has no per-frame contribution")
    W, b = np.asarray(arrays["W"], np.float64), np.asarray(arrays["b"], np.float64)
    if how == "standardize":
        return W, b, np.asarray(arrays["mean"], np.float64), np.asarray(arrays["scale"], np.float64)
    return W, b, None, None


def frame_contributions(estimator: Any, frames: np.ndarray, winner: int) -> np.ndarray:
    """(T,) each frame's term in the winning class's logit of the mean-pooled clip (see the module doc)."""
    W, b, mean, scale = _linear_parts(estimator)
    x = np.asarray(frames, np.float64)
    z = (x - mean) / scale if mean is not None and scale is not None else x
    if W.shape[0] == 1:  # binary: one row scores class 1 against class 0
        return (1.0 if winner == 1 else -1.0) * (z @ W[0]) / len(x)
    return (z @ W[winner]) / len(x)


def explain_clips(
    estimator: Any,
    how: str,
    clips: list[tuple[float | None, float | None, np.ndarray, np.ndarray]],
    proba: np.ndarray,
    winner: int,
) -> list[dict[str, Any]]:
    """Per clip: its window, the winner's probability, and each frame's time and weight.

    ``clips``: (start, end, frames (T, D), timestamps (T,)); ``proba``: (n_clips, K) of the head."""
    if how == ATTENTION:
        if not isinstance(estimator, TemporalHead):
            raise ConfigError("--explain: attention weights need an attn head")
        seqs = FrameSequences.from_clips([(f, t) for _, _, f, t in clips])
        weights, head_part, trend_part = estimator.explain_parts(seqs)
        per_clip = [weights[i, : len(c[2])] for i, c in enumerate(clips)]
    else:
        per_clip = [frame_contributions(estimator, f, winner) for _, _, f, _ in clips]
    out = []
    for i, ((start, end, _, ts), w, p) in enumerate(zip(clips, per_clip, proba)):
        clip: dict[str, Any] = {"start": start, "end": end, "top_prob": float(p[winner])}
        if how == ATTENTION:
            clip["logit"] = {"attention": float(head_part[i, winner]), "trend": float(trend_part[i, winner])}
        clip["frames"] = [{"time": float(t), "weight": float(v)} for t, v in zip(ts, w)]
        out.append(clip)
    return out


__all__ = ["ATTENTION", "CONTRIBUTION", "check_explainable", "explain_clips", "explanation_png", "frame_contributions"]
