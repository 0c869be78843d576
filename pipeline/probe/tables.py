"""results.md's tables: test top-1 by pooling × head (★ best, ≈ tied with it), every fit against the best of
its task with n and its 95 % intervals, and the few-shot table (mean ± std over seeds) with its curves."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .pooling import is_order_aware
from .repeats import mean_std
from .report import markdown_table
from .sequences import SEQUENCE_POOL

__all__ = ["fewshot_summary", "fmt", "full_table", "order_aware", "vs_best_table"]


def order_aware(pool: str) -> bool:
    """Whether a row's input keeps the frames' order: an order-aware pooling, or the frames themselves."""
    return pool == SEQUENCE_POOL or is_order_aware(pool)


def fmt(mean: float, std: float | None = None) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "—"
    return f"{100 * mean:.1f}" if std is None else f"{100 * mean:.1f} ± {100 * std:.1f}"


def _mark(row: dict[str, Any]) -> str:
    """★ the best fit of its task, ≈ one a paired test cannot tell from it at 95 %, else nothing."""
    return "★" if row.get("best") else "≈" if row.get("tie_best") else ""


def full_table(full: list[dict[str, Any]]) -> str:
    """One row per dataset × encoder × pooling, one column per head (test top-1 %, mean ± std where the fits
    repeat over split seeds; the first seed's ★/≈ mark)."""
    heads = list(dict.fromkeys(r["head"] for r in full))
    table = []
    for key in dict.fromkeys((r["dataset"], r["encoder"], r["pool"]) for r in full):
        mine = [r for r in full if (r["dataset"], r["encoder"], r["pool"]) == key and r.get("status") == "ok"]
        cells = {h: [r for r in mine if r["head"] == h] for h in heads}
        table.append(
            dict(zip(("dataset", "encoder", "pool"), key))
            | {"order-aware": "yes" if order_aware(key[2]) else ""}
            | {h: _cell(cells[h]) for h in heads}
            | {"top-5 (best head)": fmt(max(mine, key=lambda c: c["top1"])["top5"]) if mine else "—"}
        )
    return markdown_table(table, ["dataset", "encoder", "pool", "order-aware", *heads, "top-5 (best head)"])


def _cell(fits: list[dict[str, Any]]) -> str:
    if not fits:
        return "—"
    value = fmt(fits[0]["top1"]) if len(fits) == 1 else fmt(*mean_std([r["top1"] for r in fits]))
    return f"{value} {_mark(fits[0])}".rstrip()


def _ci(row: dict[str, Any], key: str, lo: str, hi: str) -> str:
    if row.get(key) is None or math.isnan(row[key]):
        return "—"
    return f"{100 * row[key]:.1f} [{100 * row[lo]:.1f}, {100 * row[hi]:.1f}]"


def vs_best_table(name: str, repeats: int, full: list[dict[str, Any]]) -> list[str]:
    """results.md's second table: every scored full-data fit with n, its 95 % intervals, and the paired
    test against the best fit on the same test clips."""
    ok = [r for r in full if r.get("status") == "ok"]
    if not ok:
        return []
    table = [
        {k: r[k] for k in ("dataset", "encoder", "pool", "head", "seed")}
        | {
            "n (videos)": f"{r['n_test']} ({r['test_videos']})",
            "top-1 % [95 % CI]": _ci(r, "top1", "top1_lo", "top1_hi"),
            "mean-class % [95 % CI]": _ci(r, "mean_class_acc", "mean_class_lo", "mean_class_hi"),
            "CI": r["ci_method"],
            "p vs best": "" if r.get("p_vs_best") is None else f"{r['p_vs_best']:.3f}",
            "vs best": {"★": "★ best", "≈": "≈ best"}.get(_mark(r), ""),
        }
        for r in ok
    ]
    columns = ["dataset", "encoder", "pool", "head", *(["seed"] if repeats > 1 else []), *list(table[0])[5:]]
    return [
        f"## {name}: every fit against the best of its task (same test clips, paired test)",
        "",
        "★ best of its task (dataset and split seed); ≈ best: the paired test (exact McNemar where every test "
        "clip is its own video, else an exact sign-flip test over videos) cannot tell it from the best at 95 % "
        "(p >= 0.05). "
        "Intervals: Wilson over independent clips, else a bootstrap over source videos.",
        "",
        markdown_table(table, columns),
        "",
    ]


def fewshot_summary(few: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[int], dict[tuple, list]]:
    """The few-shot table's rows (mean ± std over seeds per shots), its shots, and the curves per dataset ×
    encoder (with each point's 95 % test interval averaged over the seeds)."""
    groups: dict[tuple, dict[int, list[dict[str, Any]]]] = {}
    for r in few:
        key = (r["dataset"], r["encoder"], r["head"], r["pool"])
        groups.setdefault(key, {}).setdefault(int(r["shots"]), []).append(r)
    shots = sorted({int(r["shots"]) for r in few})
    table: list[dict[str, Any]] = []
    curves: dict[tuple, list[dict[str, Any]]] = {}
    for (ds, enc, head, pool), by_k in groups.items():
        stats = {k: mean_std([r["top1"] for r in by_k[k]]) for k in shots if k in by_k}
        table.append(
            {"dataset": ds, "encoder": enc, "head": head, "pool": pool}
            | {f"{k}-shot": fmt(*stats[k]) if k in stats else "—" for k in shots}
        )
        curve = {"label": f"{head}/{pool}", "shots": list(stats)}
        curve |= {"mean": [m for m, _ in stats.values()], "std": [s for _, s in stats.values()]}
        curve |= {end: [float(np.nanmean([r[f"top1_{end}"] for r in by_k[k]])) for k in stats] for end in ("lo", "hi")}
        curves.setdefault((ds, enc), []).append(curve)
    return table, shots, curves
