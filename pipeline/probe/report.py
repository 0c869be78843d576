"""Human-facing output: accuracy tables (Markdown/text) and confusion-matrix plots."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np


def markdown_table(rows: Sequence[dict], columns: Sequence[str], floatfmt: str = ".3f") -> str:
    """A GitHub-style table; floats formatted, missing cells blank."""

    def cell(v) -> str:
        if isinstance(v, float):
            return "—" if np.isnan(v) else format(v, floatfmt)
        return "" if v is None else str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(cell(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def plot_confusion(cm: np.ndarray | list, classes: Sequence[str], path: str | Path, title: str = "") -> Path:
    """Row-normalised confusion matrix with counts, saved as PNG (rows = true class)."""
    plt = _pyplot()
    cm = np.asarray(cm, dtype=float)
    norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    n = len(classes)
    size = max(4.0, 0.5 * n + 2)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(n), classes, rotation=45, ha="right")
    ax.set_yticks(range(n), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if title:
        ax.set_title(title)
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
    """Grouped bar chart (one group per ``group`` value, one bar per ``series`` value)."""
    plt = _pyplot()
    groups = list(dict.fromkeys(r[group] for r in rows))
    names = list(dict.fromkeys(r[series] for r in rows))
    width = 0.8 / max(1, len(names))
    fig, ax = plt.subplots(figsize=(min(12, max(5, 1.8 * len(groups) * max(1, len(names)) / 3)), 4))
    for j, name in enumerate(names):
        vals = [next((r[value] for r in rows if r[group] == g and r[series] == name), np.nan) for g in groups]
        ax.bar(np.arange(len(groups)) + (j - (len(names) - 1) / 2) * width, vals, width, label=name)
    ax.set_xticks(range(len(groups)), groups)
    ax.set_ylim(0, 1.02)
    ax.set_ylabel(value)
    ax.legend(fontsize=8, ncol=min(6, len(names)), loc="upper center", bbox_to_anchor=(0.5, -0.1), frameon=False)
    if title:
        ax.set_title(title)
    return _save(fig, path)


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
    """Few-shot curves: x = shots per class (log2 axis), y = mean test top-1 with a ±1 std band.

    ``curves``: dicts with label, shots, mean, std (lists); ``baselines``: dicts with label, value,
    drawn as dashed horizontal lines (e.g. zero-shot or the full-data probe).
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for c in curves:
        k, m, s = np.asarray(c["shots"], float), np.asarray(c["mean"], float), np.asarray(c["std"], float)
        (line,) = ax.plot(k, m, marker="o", label=c["label"])
        ax.fill_between(k, m - s, m + s, alpha=0.2, color=line.get_color())
    for b in baselines:
        ax.axhline(b["value"], linestyle="--", linewidth=1, color="gray")
        ax.annotate(b["label"], (ax.get_xlim()[0], b["value"]), fontsize=7, va="bottom", color="gray")
    ax.set_xscale("log", base=2)
    ks = sorted({int(k) for c in curves for k in c["shots"]})
    if ks:
        ax.set_xticks(ks, [str(k) for k in ks])
    ax.set_ylim(0, 1)
    ax.set_xlabel("training clips per class")
    ax.set_ylabel("test top-1 (mean ± std over seeds)")
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
