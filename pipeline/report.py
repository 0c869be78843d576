"""Human-facing output: accuracy tables (Markdown/text) and confusion-matrix plots."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

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
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
                    ax.text(j, i, f"{int(cm[i, j])}", ha="center", va="center", color="white" if norm[i, j] > 0.5 else "black", fontsize=8)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of true class")
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def plot_accuracy_bars(rows: Sequence[dict], path: str | Path, group: str = "task", series: str = "pool", value: str = "top1", title: str = "") -> Path:
    """Grouped bar chart (one group per ``group`` value, one bar per ``series`` value)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = list(dict.fromkeys(r[group] for r in rows))
    names = list(dict.fromkeys(r[series] for r in rows))
    width = 0.8 / max(1, len(names))
    fig, ax = plt.subplots(figsize=(max(5, 1.8 * len(groups) * max(1, len(names)) / 3), 4))
    for j, name in enumerate(names):
        vals = [next((r[value] for r in rows if r[group] == g and r[series] == name), np.nan) for g in groups]
        ax.bar(np.arange(len(groups)) + (j - (len(names) - 1) / 2) * width, vals, width, label=name)
    ax.set_xticks(range(len(groups)), groups)
    ax.set_ylim(0, 1.02)
    ax.set_ylabel(value)
    ax.legend(fontsize=8, ncol=min(6, len(names)), loc="upper center", bbox_to_anchor=(0.5, -0.1), frameon=False)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
