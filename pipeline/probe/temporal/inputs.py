"""What a temporal head reads per frame, shared by training and prediction: the input features and the
standardisation (or PCA whitening) fitted on the training clips. numpy only."""

from __future__ import annotations

import numpy as np

from ..sequences import FrameSequences

__all__ = ["clip_means", "frame_steps", "input_features", "input_stats"]


def clip_means(seqs: FrameSequences) -> np.ndarray:
    """(N, D) mean of each clip's real frames."""
    m = seqs.mask[..., None]
    return (np.where(m, seqs.x, 0).sum(axis=1) / np.maximum(m.sum(axis=1), 1)).astype(np.float32)


def _apply(x: np.ndarray, stats: dict[str, np.ndarray], part: str) -> np.ndarray:
    shifted = x - stats[f"input.{part}.shift"]
    if f"input.{part}.proj" in stats:
        return shifted @ stats[f"input.{part}.proj"]
    return shifted / stats[f"input.{part}.scale"]


def _has_prev(mask: np.ndarray) -> np.ndarray:
    """(N, T) True where a real frame has a real frame before it (it has a step)."""
    return np.concatenate([np.zeros_like(mask[:, :1]), mask[:, :-1]], axis=1) & mask


def frame_steps(seqs: FrameSequences) -> np.ndarray:
    """(N, T, D) each real frame minus the real frame before it (the first frame of a clip: zero).

    The step between sampled frames is what a motion's direction is made of: played backwards, every
    step changes sign. Computed on the cached frames before any augmentation, so a dropped frame loses
    its own step but never turns its neighbours' steps into a jump across it."""
    prev = np.concatenate([seqs.x[:, :1], seqs.x[:, :-1]], axis=1)
    return np.where(_has_prev(seqs.mask)[..., None], seqs.x - prev, 0).astype(np.float32)


def input_features(seqs: FrameSequences, stats: dict[str, np.ndarray], inputs: str) -> np.ndarray:
    """What the module reads per frame (N, T, D'), padding zeroed.

    ``frames``: the standardised embedding. ``residual``: the frame's deviation from its clip's mean,
    standardised on its own, next to the standardised clip mean. The deviations are small beside what a
    clip's frames share (the filmed object), so standardising them apart makes motion as visible to the
    head as identity; the mean half keeps what mean pooling sees. ``delta`` (the default): the residual,
    the step from the previous frame (``frame_steps``) and the clip mean. A softmax-weighted average of
    tokens is a convex combination, so without the step an attentive probe can only tell a motion from
    its reverse through the position embedding; with it, one query averaging the steps already holds the
    direction (``tdiff`` is that average's telescoped form). Standardised means PCA-whitened onto the top
    ``components`` directions when the head has them (``input_stats``), else per dimension.
    """
    m = seqs.mask[..., None]
    if inputs == "frames":
        x = _apply(seqs.x, stats, "frame")
    else:
        mu = clip_means(seqs)
        parts = [_apply(seqs.x - mu[:, None], stats, "residual")]
        if inputs == "delta":
            parts.append(_apply(frame_steps(seqs), stats, "delta"))
        c = _apply(mu, stats, "mean")
        parts.append(np.broadcast_to(c[:, None], (*parts[0].shape[:2], c.shape[-1])))
        x = np.concatenate(parts, axis=-1)
    return np.where(m, x, 0).astype(np.float32)


def _fit_part(a: np.ndarray, part: str, components: int) -> dict[str, np.ndarray]:
    """Shift and scale (per dimension) or whitening projection (top ``components`` principal directions,
    each scaled to unit variance; directions with no variance in the training data get weight 0)."""
    a = a.astype(np.float64)
    shift = a.mean(axis=0)
    out = {f"input.{part}.shift": shift.astype(np.float32)}
    if not components:
        floor = 1e-6 * max(1.0, float(np.abs(a).max(initial=0.0)))
        out[f"input.{part}.scale"] = np.maximum(a.std(axis=0), floor).astype(np.float32)
        return out
    centred = a - shift
    cov = centred.T @ centred / max(len(a) - 1, 1)
    vals, vecs = np.linalg.eigh(cov)
    order = np.argsort(vals)[::-1][:components]
    vals, vecs = vals[order], vecs[:, order]
    keep = vals > 1e-9 * max(float(vals.max(initial=0.0)), 1e-30)
    proj = np.where(keep, vecs / np.sqrt(np.where(keep, vals, 1.0)), 0.0)
    if proj.shape[1] < components:  # fewer dimensions than components: pad, so the width is fixed
        proj = np.pad(proj, [(0, 0), (0, components - proj.shape[1])])
    out[f"input.{part}.proj"] = proj.astype(np.float32)
    return out


def input_stats(seqs: FrameSequences, inputs: str, components: int = 0) -> dict[str, np.ndarray]:
    """The standardisation of ``input_features``, fitted on training sequences."""
    if inputs == "frames":
        return _fit_part(seqs.x[seqs.mask], "frame", components)
    mu = clip_means(seqs)
    r = (seqs.x - mu[:, None])[seqs.mask]
    stats = {**_fit_part(r, "residual", components), **_fit_part(mu, "mean", components)}
    if inputs == "delta":  # fitted on real steps only (a clip's first frame has none)
        steps = frame_steps(seqs)[_has_prev(seqs.mask)]
        stats.update(
            _fit_part(steps if len(steps) else np.zeros((1, seqs.x.shape[2]), np.float32), "delta", components)
        )
    return stats
