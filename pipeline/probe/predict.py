"""Label new videos with a saved head: rebuild the head's extraction from its sidecar, pool, predict.

The videos come from the sources ``extract`` reads (a file, a folder, a glob, a CSV/JSONL manifest, each
local or at a URL: ``read_sources``) and are decoded and encoded by extraction's own front
(``extract.clips.VideoDecoder``: decoder worker processes, frames of many videos packed into full encoder
batches), so a video is sampled exactly as the training store was, at extraction's speed. Each video's
result comes as it finishes (``predict_iter``); ``predict_sources`` writes them to a resumable file
(``probe.predictions``). Temporal heads (pool ``frames``) read each clip's frame sequence instead of a pooled vector.
``explain=True`` adds per-clip, per-frame weights (``pipeline.probe.explain``) and, with ``plot_dir``,
writes one timeline PNG per video."""

from __future__ import annotations

import glob
import os
import time
from collections.abc import Iterator, Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..config import ExtractConfig, SamplingConfig
from ..data.manifest import VideoItem, load_manifest
from ..data.remote import is_url
from ..errors import HeadError, ManifestError, VidprobeError
from .heads.files import load_head, load_head_meta
from .pooling import get_pool
from .sequences import SEQUENCE_POOL, FrameSequences

if TYPE_CHECKING:
    from ..extract.clips import Clips

__all__ = ["predict_iter", "predict_sources", "predict_videos", "read_sources"]

Video = tuple[str, VideoItem]  # (the path its rows name, what to decode)
Entry = tuple[str, VideoItem | str]  # a video, or (the path its row names, why it is none)


def read_sources(
    sources: Sequence[str | Path], *, root: str | Path | None = None, format: str = "auto", leave_out: Sequence = ()
) -> list[Entry]:
    """Each video of ``sources``, read as ``extract`` reads them (``data.manifest.load_manifest``), or why
    an entry is none: a source that is missing or no video, a manifest row it cannot use, and a file a
    folder holds that is not a video by its extension (what extract leaves out) are entries with their
    cause, so a run goes on with the rest. ``leave_out``: files to pass over silently (the output file).
    A video at a URL is named by its URL redacted of secrets (``data.remote.redact``), as extract keys it."""
    entries: list[Entry] = []
    skip = {os.path.realpath(p) for p in leave_out}
    for source in map(str, sources):
        if not is_url(source) and not os.path.lexists(source) and not glob.has_magic(source):
            entries.append((source, f"{source}: file not found"))
            continue
        if os.path.exists(source) and not os.path.isdir(source) and not os.path.isfile(source):
            entries.append((source, _item(source)))  # a FIFO or device: the decoder's timeout covers it
            continue
        try:
            manifest = load_manifest(source, root, format=format)
        except ManifestError as exc:
            entries.append((source, str(exc)))
            continue
        for item in manifest.items:
            if item.url:
                entries.append((item.path, item))
                continue
            real = os.path.realpath(item.abspath)
            if real not in skip:  # the source itself, when it is one video, keeps the name it was given
                entries.append((source if real == os.path.realpath(source) else _shown(item.abspath), item))
        for problem in manifest.problems:
            remote = isinstance(manifest.root, str) or is_url(problem.path)
            entries.append((problem.path if remote else _shown(Path(manifest.root) / problem.path), problem.error))
        for name in manifest.ignored:
            path = Path(manifest.root) / name
            if os.path.realpath(path) not in skip:
                why = f"{_shown(path)}: not a video by its extension ({path.suffix or 'none'}); extract leaves it out"
                entries.append((_shown(path), why))
    return entries


def _item(path: str | Path) -> VideoItem:
    return VideoItem(Path(path).name, str(Path(path).absolute().parent))


def _shown(path: Path) -> str:
    """A path as rows name it: relative to the current folder when under it, else absolute."""
    rel = os.path.relpath(path)
    return str(path) if rel.startswith("..") or os.path.isabs(rel) else rel


def predict_videos(head_path: str | Path, videos: Sequence[str | Path], **options: Any) -> list[dict[str, Any]]:
    """Top-k (label, probability) per video path, in their order (``predict_iter``'s results)."""
    named = [(str(v), _item(v)) for v in videos]
    out: list[Any] = [None] * len(named)
    for i, rows in predict_iter(head_path, named, **options):
        out[i] = rows[0]
    return out


def predict_iter(
    head_path: str | Path,
    videos: Sequence[Video],
    *,
    top_k: int = 5,
    device: str = "auto",
    encoder: Any = None,
    trust: bool = False,
    decode_timeout: float | None = None,
    per_clip: bool = False,
    explain: bool = False,
    plot_dir: str | Path | None = None,
    progress: bool = False,
    skip: Sequence[frozenset] | None = None,
) -> Iterator[tuple[int, list[dict[str, Any]]]]:
    """(index in ``videos``, its rows) per video as it finishes: one row of top-k (label, probability), its
    clips' probabilities averaged (``per_clip``: one per clip window), or one with the ``error`` that stopped
    it; ``warnings`` where the decoder worked around something (a header that lies about the duration).
    ``trust`` allows pickle (.joblib) heads: see ``heads.load_head``. ``decode_timeout``: seconds a video's
    decoder may go without progress (default: extraction's ``extract.decode_timeout``). ``explain``: also
    ``explained_by`` and ``clips`` (window, the top label's probability, each frame's time and weight),
    and with ``plot_dir`` a timeline PNG per video (``explain.explanation_png``; its path under ``plot``).
    ``progress``: a bar on stderr (where it is a terminal). ``skip``: per video, the clip windows a windowed
    sampling leaves out (``per_clip`` rows written already); a video left with none yields no rows.

    Everything that can be checked without the model is checked first (head, sidecar, its sampling and
    pooling, that the videos exist; an .npz head is loaded in full), so a mistake costs no torch import.
    The videos are then decoded in the background while the encoder is built, once, and only if some
    video exists."""
    meta = load_head_meta(head_path, trust=trust)
    sampling = SamplingConfig(**meta["sampling"])
    pool = None if meta["pool"] == SEQUENCE_POOL else get_pool(meta["pool"])
    how = None
    if explain:
        from .explain import check_explainable

        how = check_explainable(meta)
    present = []
    for i, (name, item) in enumerate(videos):  # a FIFO goes on: the decode timeout covers it
        if item.url or os.path.lexists(item.abspath):  # a URL's fetch failing is its decoder's failure
            present.append(i)
        else:
            yield i, [_failed(name, item, f"{name}: file not found")]
    if not present:
        return
    head = load_head(head_path, trust=trust, meta=meta)  # .npz: numpy only (a .skops file imports scikit-learn broadly)
    skips = [skip[i] if skip and sampling.windowed else frozenset() for i in present]
    items = [videos[i][1] for i in present]
    done = _embedded(head_path, meta, sampling, items, skips, encoder, device, decode_timeout)
    with _Bar(len(present), progress) as bar:
        for j, clips in done:
            name, item = videos[present[j]]
            if isinstance(clips, VidprobeError):
                rows = [_failed(name, item, str(clips))]
            elif not clips and skips[j]:  # every window of it done already
                rows = []
            elif not clips:
                rows = [_failed(name, item, f"{name}: no clip window of the head's sampling fits in the video")]
            else:
                try:
                    rows = _rows(name, item, clips, head, pool, top_k, per_clip, how, plot_dir)
                except HeadError as exc:  # e.g. probabilities that overflow on this video's features: its row
                    rows = [_failed(name, item, str(exc))]
            bar.count(rows, clips)
            yield present[j], rows


def _failed(name: str, item: VideoItem, error: str) -> dict[str, Any]:
    """A failure row; its cause names the video as the row does."""
    error = error.replace(str(item.abspath), name)
    return {"path": name, **_window(item.start, item.end), "error": error if name in error else f"{name}: {error}"}


def _window(start: float | None, end: float | None) -> dict[str, float]:
    """A row's window (the clip's, or the manifest row's), where there is one."""
    return {k: v for k, v in (("start", start), ("end", end)) if v is not None}


def _embedded(
    head_path: str | Path,
    meta: dict,
    sampling: SamplingConfig,
    items: list[VideoItem],
    skip: list[frozenset],
    encoder: Any,
    device: str,
    timeout: float | None,
) -> Iterator[tuple[int, Clips | VidprobeError]]:
    """Each video's clips embedded as the head's training store was, or why it failed, as each finishes.
    Decoding starts at once, in extraction's decoder processes, and runs while torch imports and the model
    is built; then extraction's runtime defaults (batch size, workers) apply."""
    from ..encoders.base import Preprocess
    from ..extract.clips import VideoDecoder
    from ..extract.local import resolve_runtime  # also keeps torch's waiting threads off the decoders' cores

    if encoder is None and not meta.get("preprocess"):  # an old sidecar: the encoder says how to prepare frames
        encoder = _build_encoder(meta, device)
    try:
        preprocess = encoder.preprocess_cfg if encoder is not None else Preprocess.from_dict(meta["preprocess"])
    except (TypeError, ValueError) as exc:
        raise HeadError(f"{head_path}: sidecar's preprocess entry is unusable ({exc})") from None
    ext = ExtractConfig()
    rt = resolve_runtime(ext, "cuda" if str(device).startswith("cuda") else "cpu")
    timeout = ext.decode_timeout if timeout is None else timeout
    prefetch = max(2, rt.prefetch_frames // rt.batch_size)
    threads = 0 if len(items) == 1 else rt.decode_threads  # one video: FFmpeg's threads use the idle cores
    with VideoDecoder(
        items,
        sampling,
        preprocess,
        timeout=timeout,
        workers=rt.num_workers,
        threads=threads,
        chunk=rt.batch_size,
        prefetch=prefetch,
        skip=skip,
    ) as decoder:
        encoder = encoder or _build_encoder(meta, device)
        _check_encoder(head_path, meta, encoder, preprocess)
        where = getattr(encoder, "device", "cpu")
        batch_size = resolve_runtime(ext, str(where).split(":")[0]).batch_size
        yield from decoder.embedded(encoder.encode, batch_size, device=where)


def _check_encoder(head_path: str | Path, meta: dict, encoder: Any, preprocess: Any) -> None:
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


def _top(proba: np.ndarray, classes: list[str], k: int) -> list[dict[str, Any]]:
    return [{"label": classes[i], "prob": float(proba[i])} for i in proba.argsort()[::-1][:k]]


def _rows(
    name: str,
    item: VideoItem,
    clips: Clips,
    head: Any,
    pool: Any,
    top_k: int,
    per_clip: bool,
    how: str | None,
    plot_dir: str | Path | None,
) -> list[dict[str, Any]]:
    """One video's row (several clips: their probabilities averaged; ``per_clip``: a row per clip), with its
    warnings and explanation."""
    if pool is None:  # a temporal head reads each clip's frames
        X: Any = FrameSequences.from_clips([(c.frames, c.timestamps) for _, _, c in clips])
    else:
        X = np.stack([pool(c.frames) for _, _, c in clips])
    per_window = head.predict_proba(X)
    said = list(dict.fromkeys(w for _, _, c in clips for w in c.warnings))  # e.g. a header that lies
    extra = {"warnings": said} if said else {}
    if per_clip:
        return [
            {"path": name, "clip": i, **_window(s, e), "windows": len(clips), "top": _top(p, head.classes, top_k)}
            | extra
            for i, ((s, e, _), p) in enumerate(zip(clips, per_window))
        ]
    proba = per_window.mean(axis=0)
    result = {
        "path": name,
        **_window(item.start, item.end),
        "windows": len(clips),
        "top": _top(proba, head.classes, top_k),
    } | extra
    if how is not None:
        from .explain import explain_clips, explanation_png

        result["explained_by"] = how
        windows = [(s, e, c.frames, c.timestamps) for s, e, c in clips]
        result["clips"] = explain_clips(head.estimator, how, windows, per_window, int(proba.argmax()))
        if plot_dir is not None:
            from .report import plot_timeline

            png = explanation_png(plot_dir, item.path if item.url else item.abspath)
            label = head.classes[int(proba.argmax())]
            result["plot"] = str(plot_timeline({**result, "label": label}, png))
    return [result]


class _Bar:
    """The run's progress bar (as extract's: videos, frames per second, failures); quiet where asked or
    where stderr is not a terminal."""

    def __init__(self, total: int, progress: bool) -> None:
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total, unit="video", desc="predict", disable=None if progress else True)
        self.started, self.frames, self.failed = time.perf_counter(), 0, 0

    def count(self, rows: list[dict[str, Any]], clips: Any) -> None:
        self.failed += bool(rows) and "error" in rows[0]
        if isinstance(clips, list):
            self.frames += sum(len(c.timestamps) for _, _, c in clips)
        rate = self.frames / max(time.perf_counter() - self.started, 1e-9)
        self.bar.update(1)
        self.bar.set_postfix(frames_s=f"{rate:.1f}", failed=self.failed, refresh=False)

    def __enter__(self) -> _Bar:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.bar.close()


def predict_sources(
    head_path: str | Path,
    sources: Sequence[str | Path],
    *,
    output: str | Path | None = None,
    root: str | Path | None = None,
    format: str = "auto",
    **options: Any,
) -> dict[str, Any]:
    """Predict every video of ``sources`` (``read_sources``; ``options``: ``predict_iter``'s), each once.
    Without ``output``: ``rows``, all of them in the sources' order. With it (``.csv`` / ``.jsonl``,
    ``probe.predictions``): each video's rows appended as it finishes, the videos it holds already skipped
    (``per_clip``: the clips it holds; under a windowed sampling a video is opened to know its windows), and
    ``rows`` only this run's failures. Counts of videos: ``predicted`` and ``failed`` by this run,
    ``skipped`` (already in ``output``); ``seconds``."""
    from .predictions import PredictionFile, check_output

    started = time.perf_counter()
    if output is not None:
        check_output(output)
    entries = read_sources(sources, root=root, format=format, leave_out=[output] if output else [])
    meta = load_head_meta(head_path, trust=options.get("trust", False))  # refused before a row is written
    k = min(options.get("top_k", 5), len(meta.get("classes") or [])) or options.get("top_k", 5)
    with PredictionFile(output, k=k, per_clip=options.get("per_clip", False)) if output else nullcontext() as out:
        slots, todo, skipped = _plan(entries, out)
        if out is not None:  # the failures known before decoding
            for got in slots:
                if got:
                    out.write(got)
        if out is not None and out.per_clip:  # a windowed sampling decodes only the windows not in the file
            options["skip"] = [out.windows(name, item.start, item.end) for _, (name, item) in todo]
        held = 0  # videos whose every window the file held
        for i, rows in predict_iter(head_path, [v for _, v in todo], **options) if todo else ():
            if out is not None:
                out.write(rows)
            held += not rows
            slots[todo[i][0]] = rows if out is None or (rows and "error" in rows[0]) else []
    rows = [r for got in slots if got for r in got]
    failed = sum(1 for got in slots if got and "error" in got[0])
    return {
        "rows": rows,
        "predicted": len(todo) - held - sum(1 for i, _ in todo if slots[i] and "error" in slots[i][0]),
        "failed": failed,
        "skipped": skipped + held,
        "seconds": time.perf_counter() - started,
    }


def _plan(entries: list[Entry], out: Any) -> tuple[list[Any], list[tuple[int, Video]], int]:
    """(a slot per entry to predict or report: a failure's row, else None; the videos to predict, each with
    its slot; how many ``out`` holds already). Each video once: a repeat (two sources naming one file) is
    left out."""
    slots: list[Any] = []
    todo: list[tuple[int, Video]] = []
    seen: set = set()
    skipped = 0
    for name, what in entries:
        key = (name, what.start, what.end) if isinstance(what, VideoItem) else (name, None, None)
        if key in seen:
            continue
        seen.add(key)
        if out is not None and out.holds(key):
            skipped += 1
        elif isinstance(what, str):
            slots.append([{"path": name, "error": what}])
        else:
            todo.append((len(slots), (name, what)))
            slots.append(None)
    return slots, todo, skipped


def _build_encoder(meta: dict[str, Any], device: str):
    from ..encoders import create_encoder

    return create_encoder(meta["encoder"], device=device)
