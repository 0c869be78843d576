"""``vidprobe benchmark CONFIG``: encoders × poolings × heads (and few-shot curves) over cached stores.

One YAML file names the stores (one per dataset and encoder), the poolings, the heads and the
few-shot protocol; the run writes ``results.csv`` (one row per fit, with the store, its encoder and
weights, the head settings, the chosen hyperparameter, the seeds and the split it used: every figure
can be traced and re-run), ``results.md`` (tables), ``details.jsonl`` (per-class reports and confusion
matrices), ``benchmark.json`` (the config and versions) and plots (accuracy bars, few-shot curves).
Nothing is extracted here: features come from the stores, so a benchmark re-runs in minutes.

Config keys (see ``configs/demo-bench.yaml``)::

    name: my-bench                 # used in titles (default: the file's stem)
    output: bench-out/my-bench     # results folder (default bench-out/<name>; -o overrides)
    seed: 0                        # split seed (where a store's manifest has no splits) and head seed
    val_fraction: 0.2              # for carving val (and test) where the manifest has none
    test_fraction: 0.2
    stores:                        # paths are relative to the current directory
      - {dataset: ucf101, path: features/ucf101-b32, encoder: B-32}      # encoder: display name (optional)
      - {dataset: ucf101-s2, path: features/ucf101-b32, splits_from: {source: data/ucfTrainTestlist, split: 2}}
      - {dataset: ucf101, path: features/ucf101}   # a folder of stores (extract -o DIR --encoder A --encoder B):
                                                   # one entry per store in it, DIR/<name>/
    poolings: [center, mean, seg4]
    heads: [logreg, mlp, knn, zeroshot, attn, gru]   # or mappings: {kind: attn, depth: 2, lrs: [...]}
                                   # attn / gru read the frames: one row each (pool "frames"), not one per pooling
    fewshot: {shots: [1, 2, 4, 8, 16], seeds: [0, 1, 2, 3, 4], heads: [logreg], poolings: [mean]}
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

import numpy as np

from ..config import build, check_known, read_yaml_mapping, rule
from ..data.splits import SplitsFrom, SplitSpec
from ..errors import ConfigError, VidprobeError
from ..store import PROVENANCE_FILE, open_store
from ..versions import versions
from .heads.registry import head_kind
from .heads.settings import HeadConfig
from .pooling import get_pool, is_order_aware
from .report import markdown_table, plot_accuracy_bars, plot_confusion, plot_fewshot, write_csv
from .sequences import SEQUENCE_POOL, HeadInput
from .train import fit_on_store, pooled_features

CSV_COLUMNS = (
    "benchmark",
    "dataset",
    "encoder",
    "pool",
    "order_aware",
    "head",
    "shots",
    "shot_seed",
    "seed",
    "top1",
    "top5",
    "mean_class_acc",
    "val_top1",
    "hparams",
    "n_train",
    "n_val",
    "n_test",
    "split_source",
    "fit_seconds",
    "status",
    "store",
    "encoder_spec",
    "weights_id",
    "sampling",
    "head_settings",
)
_TOP_KEYS = ("name", "output", "seed", "val_fraction", "test_fraction", "stores", "poolings", "heads", "fewshot")


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


def _encoder_name(spec: str) -> str:
    """A readable encoder name: file paths inside a spec shortened to their file names."""
    return re.sub(r"(?:[^:@#]*/)+([^:@#/]+)", r"\1", spec)


def _mean_std(values: list[float]) -> tuple[float, float]:
    a = np.asarray(values, float)
    return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else 0.0


def head_grid(poolings: list[str], heads: list[HeadConfig]) -> list[tuple[str, HeadConfig]]:
    """(pool, head) fits: every pooling x every pooled head, then each temporal head once on the frames."""
    grid = [(pool, h) for pool in poolings for h in heads if not head_kind(h.kind).temporal]
    return grid + [(SEQUENCE_POOL, h) for h in heads if head_kind(h.kind).temporal]


def run_benchmark(
    config: BenchmarkConfig | str | Path,
    output: str | Path | None = None,
    *,
    say: Callable[[str], None] = print,
    device: str | None = None,
) -> dict[str, Any]:
    """Run every (store × pooling × head) fit and the few-shot grid; write results; return a summary."""
    cfg = config if isinstance(config, BenchmarkConfig) else load_benchmark_config(config)
    if device:
        from ..encoders.base import resolve_device

        resolve_device(device)  # a device that is not there fails here, not once per fit
    out = Path(output or cfg.output)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    cfg = dataclasses.replace(cfg, stores=expand_stores(cfg.stores))
    rows: list[dict[str, Any]] = []
    details: list[dict[str, Any]] = []
    grid = head_grid(cfg.poolings, cfg.heads)
    fewshot_grid = head_grid(cfg.fewshot_poolings, cfg.fewshot_heads)
    n_jobs = len(cfg.stores) * (len(grid) + len(fewshot_grid) * len(cfg.fewshot_shots) * len(cfg.fewshot_seeds))
    say(f"benchmark {cfg.name}: {len(cfg.stores)} store(s), {n_jobs} fits -> {out}")
    for entry in cfg.stores:
        base: dict[str, Any] = {
            "benchmark": cfg.name,
            "dataset": entry.dataset,
            "store": str(Path(entry.path).resolve()),
            "seed": cfg.split.seed,
        }
        try:
            store = open_store(entry.path)
            prov = store.provenance
        except VidprobeError as exc:
            say(f"  {entry.dataset}: {exc}")
            rows.append({**base, "encoder": entry.encoder or "?", "status": f"error: {exc}"})
            continue
        base.update(
            encoder=entry.encoder or _encoder_name(prov["encoder"]),
            encoder_spec=prov["encoder"],
            weights_id=prov["weights_id"],
            sampling=prov["sampling"],
        )
        features: dict[str, HeadInput] = {}
        zs_encoder: list[Any] = []  # built once per store, on first use

        def fit(head: HeadConfig, pool: str, shots: int | None = None, shot_seed: int = 0) -> dict[str, Any]:
            if device and "device" in head.to_dict():
                head = head.replace(device=device)
            row = {
                **base,
                "pool": pool,
                "order_aware": is_order_aware(pool),
                "head": head.kind,
                "head_settings": head.to_dict(),
                "shots": shots,
                "shot_seed": shot_seed if shots else None,
            }
            t0 = time.perf_counter()
            try:
                if pool not in features:
                    features[pool] = pooled_features(store, pool)
                if head.kind == "zeroshot" and not zs_encoder:
                    from .heads.zeroshot import zeroshot_encoder

                    zs_encoder.append(
                        zeroshot_encoder(prov.get("encoder"), weights_id=prov.get("weights_id"), device=head.device)
                    )
                split = dataclasses.replace(cfg.split, shots=shots, shot_seed=shot_seed, splits_from=entry.splits_from)
                _, rec = fit_on_store(
                    store,
                    head,
                    pool,
                    split=split,
                    X_all=features[pool],
                    encoder=zs_encoder[0] if head.kind == "zeroshot" else None,
                )
            except VidprobeError as exc:
                row.update(
                    status=f"skipped: {exc}" if head.kind == "zeroshot" else f"error: {exc}",
                    fit_seconds=round(time.perf_counter() - t0, 3),
                )
                return row
            m = rec.get("test") or {}
            row.update(
                top1=m.get("top1", math.nan),
                top5=math.nan if m.get("top5") is None else m["top5"],  # None: 5 classes or fewer
                mean_class_acc=m.get("mean_class_acc", math.nan),
                val_top1=rec["val_top1"],
                hparams=rec["hparams"],
                n_train=rec["n_train"],
                n_val=rec["n_val"],
                n_test=rec["n_test"],
                split_source=rec["split_source"],
                fit_seconds=round(time.perf_counter() - t0, 3),
                status="ok" if m else "no test split",
            )
            details.append(
                {k: row[k] for k in ("dataset", "encoder", "pool", "head", "shots", "shot_seed")}
                | {"classes": rec["classes"], "report": m.get("report"), "confusion": m.get("confusion")}
            )
            return row

        for pool, head in grid:
            row = fit(head, pool)
            rows.append(row)
            say(
                f"  {entry.dataset:12s} {row['encoder'][:24]:24s} {pool:8s} {head.kind:8s} "
                + (
                    f"top1={row['top1']:.3f} top5={row['top5']:.3f} "
                    f"mean-class={row['mean_class_acc']:.3f} ({row['fit_seconds']:.1f} s)"
                    if row.get("status") == "ok"
                    else _short(row.get("status", ""))
                )
            )
        for pool, head in fewshot_grid:
            for k in cfg.fewshot_shots:
                accs = []
                for s in cfg.fewshot_seeds:
                    row = fit(head, pool, shots=k, shot_seed=s)
                    rows.append(row)
                    if row.get("status") == "ok":
                        accs.append(row["top1"])
                if accs:
                    mean, std = _mean_std(accs)
                    say(
                        f"  {entry.dataset:12s} {base['encoder'][:24]:24s} {pool:8s} "
                        f"{head.kind:8s} {k:3d}-shot top1={mean:.3f} ± {std:.3f} (n={len(accs)})"
                    )
    summary = write_results(cfg, out, rows, details)
    summary["seconds"] = time.perf_counter() - t_start
    (out / "benchmark.json").write_text(
        json.dumps(
            {
                "config": cfg.raw,
                "name": cfg.name,
                "seconds": summary["seconds"],
                "versions": versions(*_VERSIONS),
                "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            },
            indent=2,
            default=str,
        ),
        encoding="utf-8",
    )
    say(summary["markdown"])
    say(f"results: {out}/results.csv, results.md, details.jsonl, plots ({summary['seconds']:.0f} s)")
    return summary


def _short(text: str, width: int = 90) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


_VERSIONS = ("vidprobe", "torch", "scikit-learn", "skops", "numpy", "open_clip_torch")  # recorded in benchmark.json


def _fmt(mean: float, std: float | None = None) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "—"
    return f"{100 * mean:.1f}" if std is None else f"{100 * mean:.1f} ± {100 * std:.1f}"


def write_results(
    cfg: BenchmarkConfig, out: Path, rows: list[dict[str, Any]], details: list[dict[str, Any]]
) -> dict[str, Any]:
    """results.csv, details.jsonl, results.md (full-data table + few-shot table) and the plots."""
    write_csv(rows, out / "results.csv", CSV_COLUMNS)
    with open(out / "details.jsonl", "w", encoding="utf-8") as fh:
        for d in details:
            fh.write(json.dumps(d, default=str) + "\n")
    full = [r for r in rows if r.get("shots") is None and "pool" in r]
    few = [r for r in rows if r.get("shots") is not None and r.get("status") == "ok"]
    heads = list(dict.fromkeys(r["head"] for r in full))
    # Full-data table: one row per dataset × encoder × pooling, one column per head (test top-1 %).
    table_rows = []
    for key in dict.fromkeys((r["dataset"], r["encoder"], r["pool"]) for r in full):
        cells = {r["head"]: r for r in full if (r["dataset"], r["encoder"], r["pool"]) == key}
        tr = {
            "dataset": key[0],
            "encoder": key[1],
            "pool": key[2],
            "order-aware": "yes" if is_order_aware(key[2]) else "",
        }
        for h in heads:
            r = cells.get(h)
            tr[h] = _fmt(r["top1"]) if r and r.get("status") == "ok" else "—"
        ok = [c for c in cells.values() if c.get("status") == "ok"]
        tr["top-5 (best head)"] = _fmt(max(ok, key=lambda c: c["top1"])["top5"]) if ok else "—"
        table_rows.append(tr)
    md = [
        f"## {cfg.name}: test top-1 (%) by pooling and head",
        "",
        markdown_table(table_rows, ["dataset", "encoder", "pool", "order-aware", *heads, "top-5 (best head)"]),
        "",
    ]
    # Few-shot table: mean ± std over seeds.
    groups: dict[tuple, dict[int, list[float]]] = {}
    for r in few:
        groups.setdefault((r["dataset"], r["encoder"], r["head"], r["pool"]), {}).setdefault(
            int(r["shots"]), []
        ).append(r["top1"])
    shots = sorted({int(r["shots"]) for r in few})
    fs_rows: list[dict[str, Any]] = []
    curves_by_ds: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for (ds, enc, head, pool), by_k in groups.items():
        fr = {"dataset": ds, "encoder": enc, "head": head, "pool": pool}
        curve: dict[str, Any] = {"label": f"{head}/{pool}", "shots": [], "mean": [], "std": []}
        for k in shots:
            if k in by_k:
                m, s = _mean_std(by_k[k])
                fr[f"{k}-shot"] = _fmt(m, s)
                curve["shots"].append(k)
                curve["mean"].append(m)
                curve["std"].append(s)
            else:
                fr[f"{k}-shot"] = "—"
        fs_rows.append(fr)
        curves_by_ds.setdefault((ds, enc), []).append(curve)
    if fs_rows:
        n_seeds = len(cfg.fewshot_seeds)
        md += [
            f"## {cfg.name}: few-shot test top-1 (%), mean ± std over {n_seeds} seeds",
            "",
            markdown_table(fs_rows, ["dataset", "encoder", "head", "pool", *[f"{k}-shot" for k in shots]]),
            "",
        ]
    markdown = "\n".join(md)
    (out / "results.md").write_text(markdown + "\n", encoding="utf-8")
    plots = []
    for ds, enc in dict.fromkeys((r["dataset"], r["encoder"]) for r in full):
        sel = [r for r in full if r["dataset"] == ds and r["encoder"] == enc and r.get("status") == "ok"]
        if not sel:
            continue
        slug = re.sub(r"[^\w.-]+", "_", f"{ds}-{enc}")
        plots.append(
            plot_accuracy_bars(
                sel,
                out / f"accuracy-{slug}.png",
                group="pool",
                series="head",
                title=f"{ds} · {enc}: test top-1 by pooling and head",
            )
        )
        best = max(sel, key=lambda r: r["top1"])
        det = next(
            (
                d
                for d in details
                if d["dataset"] == ds
                and d["encoder"] == enc
                and d["pool"] == best["pool"]
                and d["head"] == best["head"]
                and d["shots"] is None
            ),
            None,
        )
        if det and det["confusion"]:
            plots.append(
                plot_confusion(
                    det["confusion"],
                    det["classes"],
                    out / f"confusion-{slug}.png",
                    title=f"{ds} · {enc}: {best['head']}/{best['pool']} (best)",
                )
            )
        if (ds, enc) in curves_by_ds:
            zs = [r for r in sel if r["head"] == "zeroshot"]
            baselines = (
                [
                    {
                        "label": f"zero-shot/{max(zs, key=lambda r: r['top1'])['pool']}",
                        "value": max(r["top1"] for r in zs),
                    }
                ]
                if zs
                else []
            )
            plots.append(
                plot_fewshot(
                    curves_by_ds[(ds, enc)],
                    out / f"fewshot-{slug}.png",
                    title=f"{ds} · {enc}: few-shot",
                    baselines=baselines,
                )
            )
    errors = [r for r in rows if str(r.get("status", "")).startswith("error")]
    return {
        "rows": len(rows),
        "errors": len(errors),
        "markdown": markdown,
        "plots": [str(p) for p in plots],
        "output": str(out),
    }
