"""``vidprobe benchmark CONFIG``: encoders × poolings × heads (and few-shot curves) over cached stores.

One YAML file names the stores (one per dataset and encoder), the poolings, the heads and the
few-shot protocol; the run writes ``results.csv`` (one row per fit, with the store, its encoder and
weights, the head settings, the chosen hyperparameter, the seeds and the split it used: every figure
can be traced and re-run), ``results.md`` (tables; every fit's 95 % interval and whether a paired test can tell it from
the best fit of its task, ``compare.mark_ties``), ``details.jsonl`` (per-class reports, confusion matrices and
each test clip's result), ``benchmark.json`` (the config and versions) and plots (accuracy bars, few-shot curves).
Nothing is extracted here: features come from the stores, so a benchmark re-runs in minutes.

The config keys, with an example of each: ``configs/demo-bench.yaml`` and docs/benchmarks.md.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import build, check_known, read_yaml_mapping, rule
from ..data.splits import SplitsFrom, SplitSpec
from ..errors import ConfigError, StoreBusyError, StoreError, VidprobeError
from ..store import PROVENANCE_FILE, open_store
from ..store.layout import check_writable, write_error
from ..store.lock import live_holders
from ..versions import versions
from .compare import COMPARE_KEY, mark_ties
from .heads.registry import head_kind
from .heads.settings import HeadConfig
from .pooling import get_pool
from .repeats import over_seeds, repeat_note, repeat_seeds
from .report import finite, markdown_table, plot_accuracy_bars, plot_confusion, plot_fewshot, write_csv
from .sequences import SEQUENCE_POOL, HeadInput
from .tables import fewshot_summary, full_table, order_aware, vs_best_table
from .train import fit_on_store, pooled_features

# results.csv: which fit a row is, what it scored and chose, and what it takes to trace and re-run it.
_WHICH = ("benchmark", "dataset", "encoder", "pool", "order_aware", "head", "shots", "shot_seed", "seed")
_SCORED = ("top1", "top5", "mean_class_acc", "val_top1", "hparams", "n_train", "n_val", "n_test", "split_source")
# how far the score could move with other test clips (95 %), and whether a paired test tells it from the best
_TRUST = ("test_videos", "top1_lo", "top1_hi", "mean_class_lo", "mean_class_hi", "ci_method")
_VS_BEST = ("best", "p_vs_best", "tie_best")
_TRACE = ("fit_seconds", "status", "store", "encoder_spec", "weights_id", "sampling", "head_settings")
CSV_COLUMNS = (*_WHICH, *_SCORED, *_TRUST, *_VS_BEST, *_TRACE)
_TOP_KEYS = (
    "name",
    "output",
    "seed",
    "repeats",
    "val_fraction",
    "test_fraction",
    "stores",
    "poolings",
    "heads",
    "fewshot",
)


@dataclass
class StoreEntry:
    """``stores[i]`` of a benchmark file."""

    dataset: str
    path: str
    encoder: str | None = None  # display name (default: from the store's encoder spec)
    splits_from: SplitsFrom | None = None  # train/test from another manifest, e.g. UCF101 split 2


@dataclass
class FewshotSettings:
    """``fewshot:`` of a benchmark file; with shots, seeds default to 0..2, heads to logreg, poolings to the first."""

    shots: tuple[int, ...] = field(default=(), metadata=rule(min=1))
    seeds: tuple[int, ...] | None = None
    heads: tuple[Any, ...] | None = None  # names or mappings, as under heads
    poolings: tuple[str, ...] | None = None


@dataclass
class BenchmarkConfig:
    name: str
    output: str
    stores: list[StoreEntry]
    poolings: list[str]
    heads: list[HeadConfig]
    split: SplitSpec = field(default_factory=SplitSpec)  # seed, val_fraction, test_fraction (top-level keys)
    repeats: int = 1  # full-data fits per (pool, head): split seeds seed .. seed+repeats-1
    fewshot_shots: list[int] = field(default_factory=list)
    fewshot_seeds: list[int] = field(default_factory=list)
    fewshot_heads: list[HeadConfig] = field(default_factory=list)
    fewshot_poolings: list[str] = field(default_factory=list)
    raw: dict[str, Any] = field(default_factory=dict)


def _list(d: dict, key: str) -> list:
    v = d.get(key)
    if v is None:
        raise ConfigError(f"missing {key!r}")
    if not isinstance(v, list) or not v:
        raise ConfigError(f"{key!r} must be a non-empty list")
    return v


def _pools(items: Any, where: str) -> list[str]:
    for pool in items:
        try:
            get_pool(str(pool))
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from None
    return [str(x) for x in items]


def _heads(items: Any, where: str) -> list[HeadConfig]:
    out = []
    for i, h in enumerate(items):
        try:
            out.append(HeadConfig.from_dict(h))
        except ConfigError as exc:
            raise ConfigError(f"{where}[{i}]: {exc}") from None
    return out


def load_benchmark_config(path: str | Path) -> BenchmarkConfig:
    """Read and validate a benchmark YAML file; every error names the file and the dotted key."""
    p = Path(path)
    data = read_yaml_mapping(p, "benchmark config (see configs/demo-bench.yaml)")
    try:
        return _parse_benchmark(data, p.stem)
    except ConfigError as exc:
        raise ConfigError(f"{p}: {exc}") from None


def _parse_benchmark(data: dict[str, Any], stem: str) -> BenchmarkConfig:
    check_known(data, _TOP_KEYS, what="key")
    stores = [build(StoreEntry, s, prefix=f"stores[{i}].") for i, s in enumerate(_list(data, "stores"))]
    poolings = _pools(_list(data, "poolings"), "poolings")
    fs = build(FewshotSettings, data.get("fewshot") or {}, prefix="fewshot.")
    shots = list(fs.shots)
    name = str(data.get("name") or stem)
    if not re.fullmatch(r"[\w.-]+", name):
        raise ConfigError(f"name={name!r}: use letters, digits, '.', '_' or '-'")
    cfg = BenchmarkConfig(
        name=name,
        output=str(data.get("output") or f"bench-out/{name}"),
        stores=stores,
        poolings=poolings,
        heads=_heads(_list(data, "heads"), "heads"),
        split=SplitSpec.from_dict(data),
        repeats=_repeats(data.get("repeats", 1)),
        fewshot_shots=shots,
        fewshot_seeds=list(fs.seeds if fs.seeds is not None else (0, 1, 2) if shots else ()),
        fewshot_heads=_heads(fs.heads if fs.heads is not None else ("logreg",) if shots else (), "fewshot.heads"),
        fewshot_poolings=_pools(
            fs.poolings if fs.poolings is not None else poolings[:1] if shots else (), "fewshot.poolings"
        ),
        raw=data,
    )
    if any(h.kind == "zeroshot" for h in cfg.fewshot_heads):
        raise ConfigError(
            "fewshot.heads: zeroshot uses no training clips; list it under heads (it is drawn on the few-shot plot)"
        )
    return cfg


def _repeats(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"repeats={value!r}: must be an integer >= 1 (fits per row over consecutive split seeds)")
    return value


def expand_stores(entries: list[StoreEntry]) -> list[StoreEntry]:
    """An entry whose path is not a store but holds stores (``vidprobe extract -o DIR --encoder A --encoder
    B`` writes ``DIR/<name>/``) stands for each of them, in name order; other entries stay as they are."""
    out = []
    for entry in entries:
        p = Path(entry.path)
        inner = (
            sorted(d for d in p.iterdir() if (d / PROVENANCE_FILE).is_file())
            if p.is_dir() and not (p / PROVENANCE_FILE).exists()
            else []
        )
        named = (lambda d: f"{entry.encoder}/{d.name}") if entry.encoder else (lambda d: None)
        out += [dataclasses.replace(entry, path=str(d), encoder=named(d)) for d in inner] or [entry]
    return out


def check_stores(entries: list[StoreEntry]) -> None:
    """Every store is there, is a store and is not being written, before the first fit: one error naming each
    that is not (StoreBusyError where all of them are only busy: retrying later can succeed)."""
    problems: list[VidprobeError] = []
    for entry in entries:
        try:
            open_store(entry.path)
            holders = live_holders(entry.path) if Path(entry.path).is_dir() else []
        except VidprobeError as exc:
            problems.append(exc)
            continue
        if holders:
            who = "; ".join(h.describe() for h in holders)
            problems.append(StoreBusyError(f"{entry.path}: being written now ({who}); benchmark it once that ends"))
    if problems:
        busy = all(isinstance(p, StoreBusyError) for p in problems)
        named = f"{len(problems)} stores cannot be benchmarked: " if len(problems) > 1 else ""
        raise (StoreBusyError if busy else StoreError)(named + "; ".join(map(str, problems)))


def _encoder_name(spec: str) -> str:
    """A readable encoder name: file paths inside a spec shortened to their file names."""
    return re.sub(r"(?:[^:@#]*/)+([^:@#/]+)", r"\1", spec)


def head_grid(poolings: list[str], heads: list[HeadConfig]) -> list[tuple[str, HeadConfig]]:
    """(pool, head) fits: every pooling x every pooled head, then each temporal head once on the frames."""
    grid = [(pool, h) for pool in poolings for h in heads if not head_kind(h.kind).temporal]
    return grid + [(SEQUENCE_POOL, h) for h in heads if head_kind(h.kind).temporal]


FIT_LOG = "fits.jsonl"  # in the results folder while a run is going: each finished fit's row and details
_FIT_KEY = ("dataset", "store", "encoder", "weights_id", "split", "pool", "head_settings", "shots", "shot_seed", "seed")


class FitLog:
    """The fits a run has finished, one JSON line each, appended as each ends: a run stopped part-way (Ctrl-C, a
    time limit, a crash) resumes from them. A fit is known by what it fitted (``_FIT_KEY``), so a changed config
    re-uses only the fits it still asks for. ``path`` None: nothing is kept (the demo's grid)."""

    def __init__(self, path: Path | None, done: dict[str, dict[str, Any]] | None = None) -> None:
        self.path, self.done = path, done or {}

    @classmethod
    def open(cls, out: Path, overwrite: bool) -> FitLog:
        """The log of the results folder ``out``; a folder holding a finished run is refused unless ``overwrite``
        (then its log starts empty), before any store is opened."""
        record, path = out / "benchmark.json", out / FIT_LOG
        if record.is_file() and not overwrite:
            try:
                finished = json.loads(record.read_text(encoding="utf-8")).get("finished")
            except (OSError, ValueError, AttributeError):
                finished = "at an unknown time"
            if finished:
                raise ConfigError(
                    f"{out}: holds a finished benchmark run ({finished}); pass --overwrite to run it again, "
                    "or -o another folder"
                )
        if overwrite:  # the old record too: this run, if stopped, resumes without --overwrite
            path.unlink(missing_ok=True)
            record.unlink(missing_ok=True)
            return cls(path)
        done = {}
        if path.is_file():
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    fit = json.loads(line)
                    done[fit["key"]] = fit
                except (ValueError, KeyError, TypeError):  # a line cut short by the stop
                    continue
        return cls(path, done)

    @staticmethod
    def key(row: dict[str, Any]) -> str:
        return json.dumps([row.get(k) for k in _FIT_KEY], sort_keys=True, default=str)

    def get(self, row: dict[str, Any]) -> dict[str, Any] | None:
        return self.done.get(self.key(row))

    def add(self, ident: dict[str, Any], row: dict[str, Any], details: list[dict[str, Any]]) -> None:
        """Log a finished fit under what it fitted (``ident``: its row before the fit, with the split)."""
        if self.path is not None:
            with open(self.path, "a", encoding="utf-8") as fh:
                fh.write(json.dumps({"key": self.key(ident), "row": row, "details": details}, default=_plain) + "\n")


def _plain(value: Any) -> Any:
    """numpy scalars and arrays as Python numbers and lists (a logged row reads back as the row it was)."""
    return value.tolist() if hasattr(value, "tolist") else str(value)


def run_benchmark(
    config: BenchmarkConfig | str | Path,
    output: str | Path | None = None,
    *,
    say: Callable[[str], None] = print,
    device: str | None = None,
    repeats: int | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Run every (store × pooling × head) fit and the few-shot grid; write results; return a summary.
    ``repeats``: overrides the config's. A results folder whose run finished is refused unless ``overwrite``;
    one whose run was interrupted is resumed: the fits it logged (``FIT_LOG``) are kept, not fitted again."""
    cfg = config if isinstance(config, BenchmarkConfig) else load_benchmark_config(config)
    if repeats is not None:
        cfg = dataclasses.replace(cfg, repeats=_repeats(repeats))
    out = Path(output or cfg.output)
    check_writable(out, "write the benchmark results", folder=True)  # before any fit
    log = FitLog.open(out, overwrite)
    if device:
        from ..encoders.base import resolve_device

        resolve_device(device)  # a device that is not there fails here, not once per fit
    cfg = dataclasses.replace(cfg, stores=expand_stores(cfg.stores))
    check_stores(cfg.stores)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise write_error(out, "create the results folder", exc) from None
    t_start = time.perf_counter()
    grids = len(head_grid(cfg.poolings, cfg.heads)), len(head_grid(cfg.fewshot_poolings, cfg.fewshot_heads))
    n_fits = len(cfg.stores) * (grids[0] * cfg.repeats + grids[1] * len(cfg.fewshot_shots) * len(cfg.fewshot_seeds))
    resumed = f" (resuming: {len(log.done)} fits already done)" if log.done else ""
    say(f"benchmark {cfg.name}: {len(cfg.stores)} store(s), {n_fits} fits -> {out}{resumed}")
    rows, details = run_grid(cfg, say=say, device=device, log=log)
    try:
        summary = write_results(cfg, out, rows, details)
        summary["seconds"] = time.perf_counter() - t_start
        record = {"config": cfg.raw, "name": cfg.name, "seconds": summary["seconds"], "versions": versions(*_VERSIONS)}
        record["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        (out / "benchmark.json").write_text(json.dumps(finite(record), indent=2, default=str), encoding="utf-8")
    except OSError as exc:  # checked writable before the fits; a full disk or a folder removed since
        raise write_error(Path(exc.filename or out), "write the benchmark results", exc) from None
    (out / FIT_LOG).unlink(missing_ok=True)  # benchmark.json's "finished" now says the folder is whole
    say(summary["markdown"])
    say(f"results: {out}/results.csv, results.md, details.jsonl, plots ({summary['seconds']:.0f} s)")
    return summary


def run_grid(
    cfg: BenchmarkConfig,
    *,
    say: Callable[[str], None] = print,
    device: str | None = None,
    log: FitLog | None = None,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Every store's fits, the full-data grid then the few-shot one: the rows of results.csv (each full-data
    row marked against the best of its task, ``compare.mark_ties``), and the details (classes, per-class
    report, confusion matrix, each test clip's result) of each fit that scored. ``log``: fits done by an
    interrupted run are taken from it, and each new fit is added to it as it ends."""
    rows: list[dict[str, Any]] = []
    details: list[dict[str, Any]] = []
    for entry in cfg.stores:
        path = str(Path(entry.path).resolve())
        base = {"benchmark": cfg.name, "dataset": entry.dataset, "store": path, "seed": cfg.split.seed}
        try:
            fits = _StoreFits(cfg, entry, base, device, log or FitLog(None))
        except VidprobeError as exc:
            say(f"  {entry.dataset}: {exc}")
            rows.append({**base, "encoder": entry.encoder or "?", "status": f"error: {exc}"})
            continue
        rows += fits.run(say)
        details += fits.details
    mark_ties(rows)
    return rows, details


class _StoreFits:
    """The fits on one store: they share its pooled features and its zero-shot text tower (built on first use)."""

    def __init__(
        self, cfg: BenchmarkConfig, entry: StoreEntry, base: dict[str, Any], device: str | None, log: FitLog
    ) -> None:
        self.cfg, self.entry, self.device, self.log = cfg, entry, device, log
        self.store = open_store(entry.path)
        prov = self.store.provenance
        self.base = {
            **base,
            "encoder": entry.encoder or _encoder_name(prov["encoder"]),
            "encoder_spec": prov["encoder"],
            "weights_id": prov["weights_id"],
            "sampling": prov["sampling"],
        }
        self.features: dict[str, HeadInput] = {}
        self.zs_encoder: Any = None
        self.details: list[dict[str, Any]] = []

    def run(self, say: Callable[[str], None]) -> list[dict[str, Any]]:
        """The full-data grid (a line per fit; mean ± std where it repeats over split seeds), then the few-shot
        grid (a line per shots: mean ± std over the draws' seeds)."""
        cfg, name = self.cfg, f"  {self.entry.dataset:12s} {self.base['encoder'][:24]:24s}"
        rows: list[dict[str, Any]] = []
        for pool, head in head_grid(cfg.poolings, cfg.heads):
            fits, summary = over_seeds(
                lambda s: self.fit(head, pool, seed=s), repeat_seeds(cfg.split.seed, cfg.repeats), _ok_scores
            )
            rows += fits
            say(f"{name} {pool:8s} {head.kind:8s} " + _scores(fits[0]))
            if cfg.repeats > 1:
                say(f"{name} {pool:8s} {head.kind:8s} " + _spread(summary, fits[0], "repeats"))
        for pool, head in head_grid(cfg.fewshot_poolings, cfg.fewshot_heads):
            for k in cfg.fewshot_shots:
                few, summary = over_seeds(
                    lambda s: self.fit(head, pool, shots=k, shot_seed=s), cfg.fewshot_seeds, _ok_scores
                )
                rows += few
                if summary["seeds"]:
                    say(f"{name} {pool:8s} {head.kind:8s} {k:3d}-shot " + _spread(summary, few[0], "seeds"))
        return rows

    def fit(
        self, head: HeadConfig, pool: str, shots: int | None = None, shot_seed: int = 0, seed: int | None = None
    ) -> dict[str, Any]:
        """One row of results.csv (split seed ``seed``, default the config's); a fit that fails is a row with
        its error as status."""
        if self.device and "device" in head.to_dict():
            head = head.replace(device=self.device)
        seed = self.cfg.split.seed if seed is None else seed
        row = {**self.base, "seed": seed, "pool": pool, "order_aware": order_aware(pool), "head": head.kind}
        row.update(head_settings=head.to_dict(), shots=shots, shot_seed=shot_seed if shots else None)
        split = self.cfg.split
        ident = {**row, "split": [split.val_fraction, split.test_fraction, str(self.entry.splits_from)]}
        if (done := self.log.get(ident)) is not None:
            self.details += done["details"]
            return done["row"]
        row, details = self._fit_row(row, head, pool, shots, shot_seed, seed)
        self.details += details
        self.log.add(ident, row, details)
        return row

    def _fit_row(
        self, row: dict[str, Any], head: HeadConfig, pool: str, shots: int | None, shot_seed: int, seed: int
    ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """The fit itself: its row, and its details (none where it failed)."""
        t0 = time.perf_counter()
        try:
            splits_from = self.entry.splits_from
            split = dataclasses.replace(
                self.cfg.split, seed=seed, shots=shots, shot_seed=shot_seed, splits_from=splits_from
            )
            rec = self._fit(head, pool, split)
        except VidprobeError as exc:
            status = f"skipped: {exc}" if head.kind == "zeroshot" else f"error: {exc}"
            return {**row, "status": status, "fit_seconds": round(time.perf_counter() - t0, 3)}, []
        m = rec.get("test") or {}
        row.update(
            **_test_scores(m),
            **{k: rec[k] for k in ("val_top1", "hparams", "n_train", "n_val", "n_test", "split_source")},
            fit_seconds=round(time.perf_counter() - t0, 3),
            status="ok" if m else "no test split",
        )
        detail = {k: row[k] for k in ("dataset", "encoder", "pool", "head", "shots", "shot_seed", "seed")} | {
            "classes": rec["classes"],
            "report": m.get("report"),
            "confusion": m.get("confusion"),
        }
        if "test_clips" in rec:
            keys = self.store.index().keys()
            clips = {
                "test_clips": [keys[i] for i in rec["test_clips"]["rows"]],
                "correct": rec["test_clips"]["correct"],
            }
            detail |= clips
            row[COMPARE_KEY] = clips  # for compare.mark_ties, which removes it
        return row, [detail]

    def _fit(self, head: HeadConfig, pool: str, split: SplitSpec) -> dict[str, Any]:
        if pool not in self.features:
            self.features[pool] = pooled_features(self.store, pool)
        if head.kind == "zeroshot" and self.zs_encoder is None:
            from .heads.zeroshot import zeroshot_encoder

            prov = self.store.provenance
            self.zs_encoder = zeroshot_encoder(
                prov.get("encoder"), weights_id=prov.get("weights_id"), device=head.device
            )
        encoder = self.zs_encoder if head.kind == "zeroshot" else None
        return fit_on_store(self.store, head, pool, split=split, X_all=self.features[pool], encoder=encoder)[1]


def _test_scores(m: dict[str, Any]) -> dict[str, Any]:
    """A row's test scores from a fit's test metrics: values, n, 95 % intervals (nothing scored: NaN;
    top-5 None below 6 classes, written as an empty cell)."""
    top1, mc = m.get("top1_ci") or {}, m.get("mean_class_ci") or {}
    return {
        "top1": m.get("top1", math.nan),
        "top5": m.get("top5"),
        "mean_class_acc": m.get("mean_class_acc", math.nan),
        "test_videos": top1.get("groups"),
        "top1_lo": top1.get("lo", math.nan),
        "top1_hi": top1.get("hi", math.nan),
        "mean_class_lo": mc.get("lo", math.nan),
        "mean_class_hi": mc.get("hi", math.nan),
        "ci_method": top1.get("method"),
    }


def _ok_scores(row: dict[str, Any]) -> dict[str, Any] | None:
    return row if row.get("status") == "ok" else None


def _scores(row: dict[str, Any]) -> str:
    if row.get("status") != "ok":
        return _short(row.get("status", ""))
    top5 = "" if row.get("top5") is None else f" top5={row['top5']:.3f}"
    return (
        f"top1={row['top1']:.3f} [{row['top1_lo']:.2f}, {row['top1_hi']:.2f}]{top5} "
        f"mean-class={row['mean_class_acc']:.3f} n={row['n_test']} ({row['fit_seconds']:.1f} s)"
    )


def _spread(summary: dict[str, Any], first: dict[str, Any], what: str) -> str:
    """``top1=0.812 ± 0.031 mean-class=... (n=5 seeds)``: the scores' spread over repeated fits."""
    t, mc = summary["top1"], summary["mean_class_acc"]
    note = repeat_note(first.get("split_source") or "") if what == "repeats" else None
    return (
        f"top1={t['mean']:.3f} ± {t['std']:.3f} mean-class={mc['mean']:.3f} ± {mc['std']:.3f} "
        f"(n={len(summary['seeds'])}{' repeats' if what == 'repeats' else ''})" + (f"; {note}" if note else "")
    )


def _short(text: str, width: int = 90) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


_VERSIONS = ("vidprobe", "torch", "scikit-learn", "skops", "numpy", "open_clip_torch")  # recorded in benchmark.json


def write_results(
    cfg: BenchmarkConfig, out: Path, rows: list[dict[str, Any]], details: list[dict[str, Any]]
) -> dict[str, Any]:
    """results.csv, details.jsonl, results.md (full-data table, every fit against the best of its task,
    few-shot table) and the plots."""
    write_csv(rows, out / "results.csv", CSV_COLUMNS)
    with open(out / "details.jsonl", "w", encoding="utf-8") as fh:
        fh.writelines(json.dumps(finite(d), default=str) + "\n" for d in details)
    full = [r for r in rows if r.get("shots") is None and "pool" in r]
    fewshot_rows, shots, curves = fewshot_summary(
        [r for r in rows if r.get("shots") is not None and r.get("status") == "ok"]
    )
    over = f", mean ± std over {cfg.repeats} split seeds" if cfg.repeats > 1 else ""
    md = [f"## {cfg.name}: test top-1 (%) by pooling and head{over}", "", full_table(full), ""]
    fixed = sorted({str(r["dataset"]) for r in full if repeat_note(r.get("split_source") or "random")})
    if cfg.repeats > 1 and fixed:
        md += [f"Repeats on {', '.join(fixed)}: {repeat_note('manifest')} (the store's manifest has splits).", ""]
    md += vs_best_table(cfg.name, cfg.repeats, full)
    if fewshot_rows:
        md += [
            f"## {cfg.name}: few-shot test top-1 (%), mean ± std over {len(cfg.fewshot_seeds)} seeds",
            "",
            markdown_table(fewshot_rows, ["dataset", "encoder", "head", "pool", *[f"{k}-shot" for k in shots]]),
            "",
        ]
    markdown = "\n".join(md)
    (out / "results.md").write_text(markdown + "\n", encoding="utf-8")
    plots = write_plots(out, full, details, curves)
    errors = [r for r in rows if str(r.get("status", "")).startswith("error")]
    return {
        "rows": len(rows),
        "errors": len(errors),
        "markdown": markdown,
        "plots": [str(p) for p in plots],
        "output": str(out),
    }


def find_details(details: list[dict[str, Any]], **key: Any) -> dict[str, Any] | None:
    """The details of the full-data fit whose fields equal ``key`` (e.g. dataset, head, pool)."""
    return next((d for d in details if d["shots"] is None and all(d[k] == v for k, v in key.items())), None)


def write_plots(
    out: Path, full: list[dict[str, Any]], details: list[dict[str, Any]], curves: dict[tuple, list]
) -> list[Path]:
    """Per dataset × encoder: accuracy bars by pooling and head, the best fit's confusion matrix, few-shot curves."""
    plots = []
    for ds, enc in dict.fromkeys((r["dataset"], r["encoder"]) for r in full):
        sel = [r for r in full if r["dataset"] == ds and r["encoder"] == enc and r.get("status") == "ok"]
        if not sel:
            continue
        slug, name = re.sub(r"[^\w.-]+", "_", f"{ds}-{enc}"), f"{ds} · {enc}"
        seeds = sorted({r["seed"] for r in sel})
        title = f"{name}: test top-1 by pooling and head" + (f" (split seed {seeds[0]})" if len(seeds) > 1 else "")
        first = [r for r in sel if r["seed"] == seeds[0]]  # one bar per fit: the first seed's, with its interval
        plots.append(plot_accuracy_bars(first, out / f"accuracy-{slug}.png", group="pool", series="head", title=title))
        best = max(sel, key=lambda r: r["top1"])
        det = find_details(details, dataset=ds, encoder=enc, pool=best["pool"], head=best["head"], seed=best["seed"])
        if det and det["confusion"]:
            title = f"{name}: {best['head']}/{best['pool']} (best)"
            plots.append(plot_confusion(det["confusion"], det["classes"], out / f"confusion-{slug}.png", title=title))
        if (ds, enc) in curves:
            zs = max((r for r in sel if r["head"] == "zeroshot"), key=lambda r: r["top1"], default=None)
            baselines = [{"label": f"zero-shot/{zs['pool']}", "value": zs["top1"]}] if zs else []
            path, title = out / f"fewshot-{slug}.png", f"{name}: few-shot"
            plots.append(plot_fewshot(curves[(ds, enc)], path, title=title, baselines=baselines))
    return plots
