"""Label new videos with a saved head: rebuild the head's extraction from its sidecar, pool, predict.

Temporal heads (pool ``frames``) read each clip's frame sequence instead of a pooled vector.
``explain=True`` adds per-clip, per-frame weights (``pipeline.probe.explain``) and, with ``plot_dir``,
writes one timeline PNG per video."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..config import ExtractConfig, SamplingConfig
from ..errors import HeadError, VidprobeError
from .heads import load_head, load_head_meta
from .pooling import get_pool
from .sequences import SEQUENCE_POOL, FrameSequences


def predict_videos(
    head_path: str | Path,
    videos: list[str | Path],
    *,
    top_k: int = 5,
    device: str = "auto",
    encoder=None,
    trust: bool = False,
    decode_timeout: float | None = None,
    explain: bool = False,
    plot_dir: str | Path | None = None,
) -> list[dict[str, Any]]:
    """Top-k (label, probability) per video; a video that fails gets an ``error`` instead of ``top``.
    ``trust`` allows pickle (.joblib) heads: see ``heads.load_head``. ``decode_timeout``: seconds a video's
    decoder may go without progress (default: extraction's ``extract.decode_timeout``). ``explain``: also
    ``explained_by`` and ``clips`` (window, the top label's probability, each frame's time and weight),
    and with ``plot_dir`` a ``<video>-explain.png`` timeline per video (its path under ``plot``).

    Everything that can be checked without the model is checked first (head, sidecar, its sampling and
    pooling, that the videos exist), so a mistake costs no torch import; the encoder is built once, and
    only if some video can be read."""
    meta = load_head_meta(head_path, trust=trust)
    sampling = SamplingConfig(**meta["sampling"])
    sequences = meta["pool"] == SEQUENCE_POOL
    pool = None if sequences else get_pool(meta["pool"])
    how = None
    if explain:
        from .explain import check_explainable

        how = check_explainable(meta)
    missing = {str(v) for v in videos if not Path(v).exists()}  # a FIFO goes on: the decode timeout covers it
    results: list[dict[str, Any]] = [
        {"path": str(v), "error": f"{v}: file not found"} for v in videos if str(v) in missing
    ]
    if len(missing) == len(videos):
        return results
    from ..extract.local import embed_clips

    head = load_head(head_path, trust=trust)  # skops' type list imports scikit-learn, and with it torch
    if encoder is None:
        from ..encoders import create_encoder

        encoder = create_encoder(meta["encoder"], device=device)
    if encoder.weights_id != meta.get("weights_id"):
        raise HeadError(
            f"{head_path}: head expects encoder weights {meta.get('weights_id')} but {meta['encoder']} loaded "
            f"{encoder.weights_id}"
        )
    results = []
    for video in videos:
        if str(video) in missing:
            results.append({"path": str(video), "error": f"{video}: file not found"})
            continue
        try:
            timeout = ExtractConfig().decode_timeout if decode_timeout is None else decode_timeout
            clips = embed_clips(encoder, video, sampling, timeout=timeout)
        except VidprobeError as exc:
            results.append({"path": str(video), "error": str(exc)})
            continue
        # several clips per video (multiclip / sliding sampling): average their probabilities
        if pool is None:
            X: Any = FrameSequences.from_clips([(c.frames, c.timestamps) for _, _, c in clips])
        else:
            X = np.stack([pool(c.frames) for _, _, c in clips])
        per_clip = head.predict_proba(X)
        proba = per_clip.mean(axis=0)
        order = proba.argsort()[::-1][:top_k]
        result: dict[str, Any] = {
            "path": str(video),
            "top": [{"label": head.classes[i], "prob": float(proba[i])} for i in order],
        }
        if how is not None:
            from .explain import explain_clips

            result["explained_by"] = how
            windows = [(s, e, c.frames, c.timestamps) for s, e, c in clips]
            result["clips"] = explain_clips(head.estimator, how, windows, per_clip, int(order[0]))
            if plot_dir is not None:
                from .report import plot_timeline

                png = Path(plot_dir) / f"{Path(video).stem}-explain.png"
                result["plot"] = str(plot_timeline({**result, "label": head.classes[order[0]]}, png))
        results.append(result)
    return results
