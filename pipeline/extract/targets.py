"""Several stores from one decode: where each encoder's store goes, and what each still needs.

``vidprobe extract SOURCE -o STORE --encoder A --encoder B`` writes one ordinary store per encoder:
with one encoder the store *is* ``STORE`` (as always), with several it is ``STORE/<name>/``
(``store_name``: ``effnet-lite0``, ``openclip-ViT-B-32-openai``, ``openclip-ViT-B-32-openai-pre``, ...).
A store is never made inside another store's folder (``store_paths`` refuses, naming it).
Each store has its own ``ExtractionJob`` (provenance, lock, plan, run record, writer, failures);
``ExtractionJobs`` enters them together and merges their plans (``UnionTask``): a clip is decoded once
if any store still lacks it, and handed only to the stores that lack it (``deliver``, the one way both
engines hand results to the stores). Encoders whose inputs are resized alike (same size, resize and
interpolation) share one resize (``decode_views``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..data.manifest import Manifest, VideoItem
from ..encoders import Preprocess, parse_spec, spec_options
from ..errors import ConfigError, StoreError
from ..store.layout import PROVENANCE_FILE
from ..store.sources import Source
from .job import ExtractionJob, Outcome, changed_since
from .workers import ClipTask

__all__ = ["ExtractionJobs", "UnionTask", "decode_views", "store_name", "store_paths"]


def store_name(spec: str) -> str:
    """Folder name of ``spec``'s store in a several-encoder run: backend, model, weights (a file's stem), pre."""
    backend, model, weights = parse_spec(spec)
    if backend == "effnet-lite0":
        return "effnet-lite0"
    parts = [backend, Path(model).stem if model.lower().endswith(".json") else model]
    if weights is not None:
        parts.append(Path(weights).stem if "/" in weights or "\\" in weights or Path(weights).is_file() else weights)
    parts += sorted(spec_options(spec)[1])
    return re.sub(r"[^A-Za-z0-9._-]+", "_", "-".join(parts)).strip("._") or backend


def store_paths(output: str | Path, specs: Sequence[str]) -> list[Path]:
    """The store of each spec: ``output`` itself for one encoder, ``output/<store_name>`` for several;
    ``StoreError`` where that would put a store inside another (``_refuse_nesting``)."""
    _refuse_nesting(Path(output), specs)
    if len(specs) == 1:
        return [Path(output)]
    names: dict[str, str] = {}
    for spec in specs:
        name = store_name(spec)
        if name in names:
            raise ConfigError(
                f"encoders {names[name]!r} and {spec!r} would both write {Path(output) / name}; "
                "extract them in separate runs with their own -o"
            )
        names[name] = spec
    return [Path(output) / name for name in names]


def _refuse_nesting(output: Path, specs: Sequence[str]) -> None:
    """A new store inside an existing store's folder would be hidden in it (the outer store's readers never
    see it; copying or deleting the outer one takes it along), and one encoder's store over a folder of
    several would hold them: refuse, naming the store(s) and what to pass instead."""
    where = Path(os.path.abspath(output))
    inner = [] if (where / PROVENANCE_FILE).exists() or not where.is_dir() else _stores_in(where)
    if len(specs) == 1 and inner:
        mine = store_name(specs[0])
        hint = f"-o {output / mine} to grow that store" if mine in inner else f"-o {output}/<name> to grow one"
        raise StoreError(
            f"-o {output}: holds the stores of a several-encoder run ({', '.join(inner)}); with one encoder -o "
            f"is the store itself: pass {hint}, or a new folder"
        )
    if len(specs) > 1 and (where / PROVENANCE_FILE).is_file():
        encoder = _encoder_of(where)
        raise StoreError(
            f"-o {output}: is the feature store of {encoder or 'one encoder'}; with several encoders -o names a "
            "folder that holds one store per encoder (FOLDER/<name>/): pass a new folder, or "
            f"{'--encoder ' + encoder if encoder else 'its encoder'} alone to grow this store"
        )
    for parent in where.parents:
        if (parent / PROVENANCE_FILE).is_file():
            raise StoreError(
                f"-o {output}: lies inside the feature store {parent}; a store cannot hold another: "
                "pass a path outside it"
            )


def _stores_in(folder: Path) -> list[str]:
    """Names of the stores directly inside ``folder`` (a several-encoder run's output)."""
    try:
        return sorted(p.name for p in folder.iterdir() if (p / PROVENANCE_FILE).is_file())
    except OSError:
        return []


def _encoder_of(store: Path) -> str:
    """The encoder spec ``store`` records ("" if its provenance cannot be read)."""
    try:
        return str(json.loads((store / PROVENANCE_FILE).read_text())["encoder"])
    except (OSError, ValueError, KeyError, TypeError):
        return ""


def decode_views(preprocesses: Sequence[Preprocess]) -> tuple[list[Preprocess], list[int]]:
    """(distinct decoder geometries, which one each input uses): mean/std are the encoder's business,
    so encoders that resize and crop alike share one resized frame."""
    views: list[Preprocess] = []
    keys: list[tuple] = []
    index = []
    for p in preprocesses:
        key = (p.size, p.resize_short, p.resize_mode, p.interpolation)
        if key not in keys:
            keys.append(key)
            views.append(p)
        index.append(keys.index(key))
    return views, index


@dataclass(frozen=True)
class UnionTask:
    """One decode for the stores that lack (part of) a manifest item."""

    item: VideoItem
    task: ClipTask  # skip: windows every target store has; views: the decoder geometries the targets need
    targets: tuple[int, ...]  # indices of the jobs that get this item's clips
    skips: tuple[frozenset, ...]  # per target: windows that store already has (windowed strategies)


class ExtractionJobs:
    """The ``ExtractionJob`` of each store, entered together (see the module doc); a context manager.
    Inside the ``with``: ``jobs`` (one per store, in the order given). ``plan(views_of)`` merges their
    plans; ``views_of[t]`` is the decoder geometry store ``t``'s encoder needs (``decode_views``).
    ``deliver`` hands each planned item's outcomes to its stores and counts it on the progress bar.
    """

    def __init__(self, manifest: Manifest, jobs: Sequence[ExtractionJob], *, progress: bool = False) -> None:
        self.manifest, self._jobs, self.progress = manifest, list(jobs), progress
        self._stack: contextlib.ExitStack | None = None
        self._bar: Any = None

    def __enter__(self) -> ExtractionJobs:
        checked: dict = {}  # planning's fingerprints, asked once for all the stores (``plan_tasks``)
        for job in self._jobs:
            job.checked = checked
        with contextlib.ExitStack() as stack:
            self.jobs = [stack.enter_context(job) for job in self._jobs]
            self._stack = stack.pop_all()
        return self

    def __exit__(self, *exc: Any) -> bool | None:
        assert self._stack is not None
        if self._bar is not None:
            self._bar.close()
        return self._stack.__exit__(*exc)

    def plan(self, views_of: Sequence[int]) -> list[UnionTask]:
        """Every item some store still needs, in manifest order, with the stores that need it."""
        planned = [{item.key: task for item, task in job.todo} for job in self.jobs]
        out: list[UnionTask] = []
        seen: set = set()
        for item in self.manifest.items:
            key = item.key
            targets = tuple(t for t, tasks in enumerate(planned) if key in tasks)
            if key in seen or not targets:
                continue
            seen.add(key)
            skips = tuple(planned[t][key].skip for t in targets)
            task = dataclasses.replace(
                planned[targets[0]][key],
                task=len(out),
                skip=frozenset.intersection(*skips),
                views=tuple(sorted({views_of[t] for t in targets})),
            )
            out.append(UnionTask(item, task, targets, skips))
        from tqdm.auto import tqdm

        unit = "video" if self.jobs[0].cfg.sampling.windowed else "clip"
        engine = self.jobs[0].engine
        desc = "extract" if engine == "local" else f"extract ({engine})"
        self._bar = tqdm(total=len(out), unit=unit, desc=desc, disable=not self.progress, dynamic_ncols=True)
        return out

    def deliver(self, unit: UnionTask, outcomes: Sequence[Outcome]) -> None:
        """Hand a planned item to each store that lacked it (``outcomes[i]`` for ``unit.targets[i]``). Whether
        its file is still the one decoded (``changed_since``) is asked once, whatever the number of stores."""
        verdicts: dict[tuple[int, ...] | None, str] = {}  # per decoded file (stores share one decode)

        def changed(source: Source | None) -> str:
            key = None if source is None else tuple(source)
            if key not in verdicts:
                verdicts[key] = changed_since(unit.item.location, source)
            return verdicts[key]

        for t, outcome in zip(unit.targets, outcomes, strict=True):
            self.jobs[t].deliver(unit.item, outcome, changed)
        elapsed = max(time.perf_counter() - self.jobs[0].started, 1e-9)
        frames = sum(job.summary.frames for job in self.jobs)
        failed = sum(job.summary.failed for job in self.jobs)
        self._bar.update(1)
        self._bar.set_postfix(frames_s=f"{frames / elapsed:.1f}", failed=failed, refresh=False)
