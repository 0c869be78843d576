"""Label new videos with a saved head: rebuild the head's extraction from its sidecar, pool, predict.

Temporal heads (pool ``frames``) read each clip's frame sequence instead of a pooled vector.
``explain=True`` adds per-clip, per-frame weights (``pipeline.probe.explain``) and, with ``plot_dir``,
writes one timeline PNG per video."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..config import ExtractConfig, SamplingConfig
from ..errors import DecodeError, HeadError, VidprobeError
from .heads.files import load_head, load_head_meta
from .pooling import get_pool
from .sequences import SEQUENCE_POOL, FrameSequences

if TYPE_CHECKING:
    from ..extract.clips import Clips


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
    """Top-k (label, probability) per video; a video that fails gets an ``error`` instead of ``top``, one
    the decoder worked around (a header that lies about the duration) also ``warnings``.
    ``trust`` allows pickle (.joblib) heads: see ``heads.load_head``. ``decode_timeout``: seconds a video's
    decoder may go without progress (default: extraction's ``extract.decode_timeout``). ``explain``: also
    ``explained_by`` and ``clips`` (window, the top label's probability, each frame's time and weight),
    and with ``plot_dir`` a timeline PNG per video (``explain.explanation_png``; its path under ``plot``).

    Everything that can be checked without the model is checked first (head, sidecar, its sampling and
    pooling, that the videos exist; an .npz head is loaded in full), so a mistake costs no torch import.
    The videos are then decoded in the background (one decoder worker process for all) while the encoder
    is built, once, and only if some video exists."""
    meta = load_head_meta(head_path, trust=trust)
    sampling = SamplingConfig(**meta["sampling"])
    pool = None if meta["pool"] == SEQUENCE_POOL else get_pool(meta["pool"])
    how = None
    if explain:
        from .explain import check_explainable

        how = check_explainable(meta)
    missing = {str(v) for v in videos if not Path(v).exists()}  # a FIFO goes on: the decode timeout covers it
    if len(missing) == len(videos):
        return [{"path": str(v), "error": f"{v}: file not found"} for v in videos]
    head = load_head(head_path, trust=trust, meta=meta)  # .npz: numpy only (a .skops file imports scikit-learn broadly)
    readable = [str(v) for v in videos if str(v) not in missing]
    done = _embed_videos(head_path, meta, sampling, readable, encoder, device, decode_timeout)
    results: list[dict[str, Any]] = []
    for video in map(str, videos):
        clips = done.get(video)
        if clips is None or isinstance(clips, VidprobeError):
            results.append({"path": video, "error": str(clips) if clips is not None else f"{video}: file not found"})
        else:
            results.append(_video_result(video, clips, head, pool, top_k, how, plot_dir))
    return results


def _embed_videos(
    head_path: str | Path, meta: dict, sampling: SamplingConfig, videos: list[str], encoder: Any, device: str, timeout
) -> dict[str, Clips | DecodeError]:
    """Each video's clips embedded as the head's training store was, or why it failed. Decoding starts
    at once, in a worker process, and runs while torch imports and the model is built."""
    from ..encoders.base import Preprocess
    from ..extract.clips import VideoDecoder

    if encoder is None and not meta.get("preprocess"):  # an old sidecar: the encoder says how to prepare frames
        encoder = _build_encoder(meta, device)
    try:
        preprocess = encoder.preprocess_cfg if encoder is not None else Preprocess.from_dict(meta["preprocess"])
    except (TypeError, ValueError) as exc:
        raise HeadError(f"{head_path}: sidecar's preprocess entry is unusable ({exc})") from None
    timeout = ExtractConfig().decode_timeout if timeout is None else timeout
    with VideoDecoder([(v, None, None) for v in videos], sampling, preprocess, timeout=timeout) as decoder:
        encoder = encoder or _build_encoder(meta, device)
        if encoder.weights_id != meta.get("weights_id"):
            raise HeadError(
                f"{head_path}: head expects encoder weights {meta.get('weights_id')} but {meta['encoder']} loaded "
                f"{encoder.weights_id}"
            )
        if encoder.preprocess_cfg != preprocess:
            raise HeadError(
                f"{head_path}: head was trained on frames preprocessed as {meta['preprocess']}, but "
                f"{meta['encoder']} now expects {encoder.preprocess_cfg.to_dict()}"
            )
        return dict(zip(videos, decoder.embedded(encoder.encode)))


def _video_result(
    video: str, clips: Clips, head: Any, pool: Any, top_k: int, how: str | None, plot_dir: str | Path | None
) -> dict[str, Any]:
    """One video's top-k labels (several clips: their probabilities averaged), warnings and explanation."""
    if pool is None:  # a temporal head reads each clip's frames
        X: Any = FrameSequences.from_clips([(c.frames, c.timestamps) for _, _, c in clips])
    else:
        X = np.stack([pool(c.frames) for _, _, c in clips])
    per_clip = head.predict_proba(X)
    proba = per_clip.mean(axis=0)
    order = proba.argsort()[::-1][:top_k]
    result: dict[str, Any] = {
        "path": video,
        "top": [{"label": head.classes[i], "prob": float(proba[i])} for i in order],
    }
    said = list(dict.fromkeys(w for _, _, c in clips for w in c.warnings))  # e.g. a header that lies
    if said:
        result["warnings"] = said
    if how is not None:
        from .explain import explain_clips, explanation_png

        result["explained_by"] = how
        windows = [(s, e, c.frames, c.timestamps) for s, e, c in clips]
        result["clips"] = explain_clips(head.estimator, how, windows, per_clip, int(order[0]))
        if plot_dir is not None:
            from .report import plot_timeline

            png = explanation_png(plot_dir, video)
            result["plot"] = str(plot_timeline({**result, "label": head.classes[order[0]]}, png))
    return result


def _build_encoder(meta: dict[str, Any], device: str):
    from ..encoders import create_encoder

    return create_encoder(meta["encoder"], device=device)
