"""The Python entry points: ``extract``, ``open_store``, ``train``, ``evaluate``, ``load_head``, ``predict``.

Each is the function the matching ``vidprobe`` command calls, with the command's defaults, so a script and
the command line give the same stores, heads and predictions. Examples that the tests run: docs/api.md.
Importing this module imports no torch; ``extract`` and ``predict`` do when they build the encoder.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .probe.heads.files import LoadedHead, load_head
from .store import FeatureStore, open_store

if TYPE_CHECKING:
    from .extract.job import ExtractSummary

__all__ = ["FeatureStore", "LoadedHead", "evaluate", "extract", "load_head", "open_store", "predict", "train"]


def extract(
    source: str | Path,
    output: str | Path,
    *,
    encoder: str | Sequence[str] | None = None,
    config: str | Path | None = None,
    overrides: Sequence[str] = (),
    root: str | Path | None = None,
    format: str = "auto",
    label_from: str = "auto",
    progress: bool = False,
    **options: Any,
) -> list[ExtractSummary]:
    """``vidprobe extract SOURCE -o OUTPUT``: embed every clip of ``source`` (folder, manifest, video, glob,
    URL or WebDataset shards; ``label_from``: a shard sample's label member, ``--label-from``) that the
    store at ``output`` still lacks; one summary per store (several encoders: ``output/<name>``).
    ``config``/``overrides``: a settings file and ``key=value`` strings; ``encoder`` wins over both.
    ``options``: the rest of ``pipeline.extract.entry.extract`` (``engine``, ``retry_failed``, ``shard``, ...)."""
    from .config import load_config
    from .data.manifest import load_manifest
    from .extract.entry import extract as run

    cfg = load_config(config, list(overrides))
    if encoder is not None:
        cfg.encoder = encoder if isinstance(encoder, str) else tuple(encoder)
        cfg.validate()
    manifest = load_manifest(source, root=root, format=format, label_from=label_from)
    return run(manifest, output, cfg, progress=progress, **options)


def train(
    store: str | Path,
    head_path: str | Path,
    *,
    head: str = "logreg",
    pool: str | None = None,
    repeats: int = 1,
    strict: bool = False,
    **split: Any,
) -> dict[str, Any]:
    """``vidprobe train STORE -o HEAD_PATH --json``: fit ``head`` on the pooled clips, save it with its sidecar,
    return the record that ``--json`` prints (docs/json.md). ``split``: ``seed``, ``val_fraction``,
    ``test_fraction``, ``shots``, ``shot_seed``, ``splits_from`` (``pipeline.data.splits.SplitSpec``)."""
    from .data.splits import SplitSpec
    from .probe.train import train_head

    return train_head(
        store, head_path, head=head, pool=pool, split=SplitSpec(**split).validate(), repeats=repeats, strict=strict
    )


def evaluate(store: str | Path, head_path: str | Path, *, split: str = "test", trust: bool = False) -> dict[str, Any]:
    """``vidprobe evaluate STORE HEAD_PATH --json``: the head's metrics on ``split`` (test, val, train or all)."""
    from .probe.train import evaluate_head

    return evaluate_head(store, head_path, split=split, trust=trust)


def predict(
    head_path: str | Path,
    sources: str | Path | Sequence[str | Path],
    *,
    top_k: int = 5,
    output: str | Path | None = None,
    **options: Any,
) -> dict[str, Any]:
    """``vidprobe predict HEAD_PATH SOURCE... [-o OUT] --json``: every video of ``sources`` (files, folders, globs,
    CSV/JSONL manifests, as ``extract`` reads them) extracted as the head's store was, then its top-k labels.
    Returns ``rows`` (one per video; a failed one has ``error`` instead of ``top``) and the counts ``predicted``,
    ``failed``, ``skipped``. With ``output`` (.csv/.jsonl) rows are appended there and a re-run skips the videos
    it holds (``per_clip``: the clip windows it holds). ``options``: ``device``, ``trust``, ``decode_timeout``,
    ``per_clip``, ``root``, ``explain``, ``plot_dir`` (``pipeline.probe.predict.predict_sources``)."""
    from .probe.predict import predict_sources

    paths = [sources] if isinstance(sources, (str, Path)) else list(sources)
    return predict_sources(head_path, paths, top_k=top_k, output=output, **options)
