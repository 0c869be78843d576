"""Human-facing output: accuracy tables (Markdown/text), strict JSON, and plots (accuracy bars with their
95 % intervals, few-shot curves, confusion matrices)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np


def finite(doc: Any) -> Any:
    """``doc`` with every NaN or infinite number as None (JSON null): Python's json writes a bare ``NaN``,
    which is not JSON and which strict parsers (browsers, jq, other languages) reject."""
    if isinstance(doc, (float, np.floating)):
        return float(doc) if math.isfinite(doc) else None
    if isinstance(doc, np.integer):
        return int(doc)
    if isinstance(doc, dict):
        return {k: finite(v) for k, v in doc.items()}
    if isinstance(doc, (list, tuple)):
        return [finite(v) for v in doc]
    return doc


def markdown_table(rows: Sequence[dict], columns: Sequence[str], floatfmt: str = ".3f") -> str:
    """A GitHub-style table; floats formatted, missing cells blank."""

    def cell(v) -> str:
        if isinstance(v, float):
            return "—" if np.isnan(v) else format(v, floatfmt)
        return "" if v is None else str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(cell(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


MAX_PLOTTED_CLASSES = 60  # a confusion plot shows at most this many classes (more cannot be read)


def confusion_matrix(cells: Sequence[Sequence[int]], n_classes: int) -> np.ndarray:
    """The dense (n, n) matrix of ``metrics.confusion``'s nonzero ``[true, predicted, count]`` cells."""
    cm = np.zeros((n_classes, n_classes), dtype=np.int64)
    for t, p, n in cells:
        cm[t, p] += n
    return cm


def _plotted_classes(cells: Sequence[Sequence[int]], n: int) -> tuple[list[int], str]:
    """Which classes a confusion plot shows: all of a few; of many, those with the most scored clips or
    predictions (MAX_PLOTTED_CLASSES), and a note saying so."""
    if n <= MAX_PLOTTED_CLASSES:
        return list(range(n)), ""
    seen: dict[int, int] = {}
    for t, p, c in cells:
        seen[t] = seen.get(t, 0) + c
        seen[p] = seen.get(p, 0) + c
    keep = sorted(sorted(seen, key=lambda i: -seen[i])[:MAX_PLOTTED_CLASSES])
    return keep, f"{len(keep)} of {n} classes (those with the most clips or predictions)"


def plot_confusion(
    cells: Sequence[Sequence[int]], classes: Sequence[str], path: str | Path, title: str = "", split: str = "test"
) -> Path:
    """Row-normalised confusion matrix with counts, saved as PNG (rows = true class), from ``metrics``'
    nonzero cells. A class with no clip in the scored ``split`` has an empty row, labelled "(no test clips)":
    nothing was measured there. Of many classes, only the most frequent are drawn (the title says so)."""
    plt = _pyplot()
    keep, note = _plotted_classes(cells, len(classes))
    index = {c: i for i, c in enumerate(keep)}
    shown = [(index[t], index[p], c) for t, p, c in cells if t in index and p in index]
    cm = confusion_matrix(shown, len(keep)).astype(float)
    classes = [classes[i] for i in keep]
    norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    n = len(classes)
    size = max(4.0, 0.5 * n + 2)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(n), classes, rotation=45, ha="right")
    rows = [f"{c} (no {split} clips)" if not cm[i].sum() else c for i, c in enumerate(classes)]
    ax.set_yticks(range(n), rows)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if title or note:
        ax.set_title("\n".join(t for t in (title, note) if t))
    if n <= 30:
        for i in range(n):
            for j in range(n):
                if cm[i, j]:
                    color = "white" if norm[i, j] > 0.5 else "black"
                    ax.text(j, i, f"{int(cm[i, j])}", ha="center", va="center", color=color, fontsize=8)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of true class")
    return _save(fig, path)


def plot_accuracy_bars(
    rows: Sequence[dict],
    path: str | Path,
    group: str = "task",
    series: str = "pool",
    value: str = "top1",
    title: str = "",
) -> Path:
    """Grouped bar chart (one group per ``group`` value, one bar per ``series`` value). Rows carrying
    ``{value}_lo``/``{value}_hi`` get whiskers (their 95 % interval); rows with ``tie_best`` are marked
    above the bar: ★ the best of its task, ≈ not distinguishable from it (paired test at 95 %)."""
    plt = _pyplot()
    groups = list(dict.fromkeys(r[group] for r in rows))
    names = list(dict.fromkeys(r[series] for r in rows))
    width = 0.8 / max(1, len(names))
    fig, ax = plt.subplots(figsize=(min(12, max(5, 1.8 * len(groups) * max(1, len(names)) / 3)), 4.4))
    marked = whiskers = False
    for j, name in enumerate(names):
        cells = [next((r for r in rows if r[group] == g and r[series] == name), {}) for g in groups]
        x = np.arange(len(groups)) + (j - (len(names) - 1) / 2) * width
        vals = np.array([_num(c.get(value)) for c in cells])
        ax.bar(x, vals, width, label=name)
        whiskers |= _whiskers(ax, x, vals, cells, value)
        marked |= _tie_marks(ax, x, vals, cells, value)
    ax.set_xticks(range(len(groups)), groups)
    ax.set_ylim(0, 1.1)
    ax.set_ylabel(f"{value} (whiskers: 95 % interval)" if whiskers else value)
    ax.legend(fontsize=8, ncol=min(6, len(names)), loc="upper center", bbox_to_anchor=(0.5, -0.1), frameon=False)
    if title or marked:
        key = "★ best of the task · ≈ tied with it (paired test, 95 %)"
        ax.set_title("\n".join(t for t in (title, key if marked else "") if t), fontsize=10)
    return _save(fig, path)


def _whiskers(ax: Any, x: np.ndarray, vals: np.ndarray, cells: list[dict], value: str) -> bool:
    """Each bar's 95 % interval (``{value}_lo`` .. ``{value}_hi``) as a whisker; False where none has one."""
    lo, hi = (np.array([_num(c.get(f"{value}_{end}")) for c in cells]) for end in ("lo", "hi"))
    if not np.isfinite(lo).any():
        return False
    err = np.nan_to_num(np.vstack([vals - lo, hi - vals]).clip(min=0))
    ax.errorbar(x, vals, yerr=err, fmt="none", ecolor="black", elinewidth=0.8, capsize=2)
    return True


def _tie_marks(ax: Any, x: np.ndarray, vals: np.ndarray, cells: list[dict], value: str) -> bool:
    """★ above the best bar of a task, ≈ above each bar a paired test cannot tell from it (``tie_best``)."""
    marked = False
    for xi, v, c in zip(x, vals, cells):
        mark = "★" if _true(c.get("best")) else "≈" if _true(c.get("tie_best")) else ""
        top = _num(c.get(f"{value}_hi"))
        if mark and np.isfinite(v):
            ax.text(xi, (top if np.isfinite(top) else v) + 0.01, mark, ha="center", va="bottom", fontsize=8)
            marked = True
    return marked


def _num(v: Any) -> float:
    return float("nan") if v is None or v == "" else float(v)


def _true(v: Any) -> bool:
    return v is True or v == "true"


def write_csv(rows: Sequence[dict], path: str | Path, columns: Sequence[str] | None = None) -> Path:
    """Rows as CSV (columns = ``columns`` or the union of keys in first-seen order); dicts/lists as JSON."""
    import csv
    import json

    cols = list(columns) if columns else list(dict.fromkeys(k for r in rows for k in r))
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=cols, extrasaction="ignore")
        writer.writeheader()
        for r in rows:
            writer.writerow(
                {
                    k: json.dumps(v, sort_keys=True) if isinstance(v, (dict, list, tuple)) else ("" if v is None else v)
                    for k, v in r.items()
                }
            )
    return out


def plot_fewshot(curves: Sequence[dict], path: str | Path, title: str = "", baselines: Sequence[dict] = ()) -> Path:
    """Few-shot curves: x = shots per class (log2 axis), y = mean test top-1 over seeds with a ±1 std band
    (how much the draw of training clips moves it) and, where curves carry ``lo``/``hi``, whiskers of the
    test score's 95 % interval averaged over seeds (how much other test clips could move it).

    ``curves``: dicts with label, shots, mean, std (lists; lo, hi optional); ``baselines``: dicts with label,
    value, drawn as dashed horizontal lines (e.g. zero-shot or the full-data probe).
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    whiskers = False
    for c in curves:
        k, m, s = np.asarray(c["shots"], float), np.asarray(c["mean"], float), np.asarray(c["std"], float)
        (line,) = ax.plot(k, m, marker="o", label=c["label"])
        ax.fill_between(k, m - s, m + s, alpha=0.2, color=line.get_color())
        if c.get("lo") is not None:
            lo, hi = np.asarray(c["lo"], float), np.asarray(c["hi"], float)
            err = np.nan_to_num(np.vstack([m - lo, hi - m]).clip(min=0))
            ax.errorbar(k, m, yerr=err, fmt="none", ecolor=line.get_color(), elinewidth=0.8, capsize=3)
            whiskers = True
    for b in baselines:
        ax.axhline(b["value"], linestyle="--", linewidth=1, color="gray")
        ax.annotate(b["label"], (ax.get_xlim()[0], b["value"]), fontsize=7, va="bottom", color="gray")
    ax.set_xscale("log", base=2)
    ks = sorted({int(k) for c in curves for k in c["shots"]})
    if ks:
        ax.set_xticks(ks, [str(k) for k in ks])
    ax.set_ylim(0, 1)
    ax.set_xlabel("training clips per class")
    ax.set_ylabel("test top-1: mean over seeds, band ± 1 std" + (",\nwhiskers 95 % test interval" if whiskers else ""))
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title)
    return _save(fig, path)


def plot_timeline(explained: dict, path: str | Path, title: str = "") -> Path:
    """One video's explanation over time: each frame's weight (bars, one colour per clip window) and the
    winning class's probability per clip window (steps over the window's sampled span)."""
    plt = _pyplot()
    clips = explained["clips"]
    fig, ax = plt.subplots(figsize=(8, 3.2))
    times = np.array([f["time"] for c in clips for f in c["frames"]], float)
    gaps = np.diff(np.unique(times))
    width = 0.8 * (gaps.min() if len(gaps) else 1.0)
    for i, c in enumerate(clips):
        t = [f["time"] for f in c["frames"]]
        ax.bar(t, [f["weight"] for f in c["frames"]], width=width, color=f"C{i % 10}", alpha=0.8)
    ax.axhline(0, color="black", linewidth=0.5)
    ax.set_xlabel("time (s)")
    ax.set_ylabel(f"frame weight ({explained['explained_by']})")
    twin = ax.twinx()
    for c in clips:
        t = [f["time"] for f in c["frames"]]
        twin.plot([min(t), max(t)], [c["top_prob"]] * 2, color="black", linewidth=2)
    twin.set_ylim(0, 1.02)
    twin.set_ylabel(f"P({explained['label']})")
    ax.set_title(title or f"{Path(explained['path']).name}: {explained['label']}")
    return _save(fig, path)


def _pyplot():
    """matplotlib's pyplot on the file-only Agg backend (no display needed), imported on first use."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | Path) -> Path:
    """Lay out, write as PNG (folders created) and free the figure."""
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    _pyplot().close(fig)
    return out
