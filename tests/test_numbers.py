"""Numbers you can trust (issue 25): an interval and n on every score, mean-class accuracy over every class
scored (an unseen class counts 0), repeats over split seeds, the paired comparison with the best row,
top-5 omitted below 6 classes, strict JSON, and the plots with their error bars. Real stores, real fits."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from pipeline.cli import main
from pipeline.probe.metrics import metrics
from pipeline.probe.report import plot_confusion
from pipeline.store import ShardWriter, create_or_open


def _strict(text: str) -> object:
    """json.loads that refuses NaN and Infinity (what a browser or jq would do)."""

    def bad(token: str) -> None:
        raise AssertionError(f"non-JSON number {token} in the output")

    return json.loads(text, parse_constant=bad)


def _store(path: Path, *, splits: bool, seed: int = 0, clips_per_video: int = 1, test_classes: int = 3) -> Path:
    """3 classes x 12 videos of 5-d features (6 frames); ``splits``: the manifest's train/val/test (8/2/2
    videos per class; classes beyond ``test_classes`` have no test video), else none (vidprobe splits)."""
    rng = np.random.default_rng(seed)
    prov = {"encoder": "enc", "weights_id": "w", "dim": 5, "preprocess": {}, "sampling": {"num_frames": 6}}
    store = create_or_open(path, prov)
    base = rng.normal(size=(3, 5))
    with ShardWriter(store) as w:
        for c in range(3):
            for j in range(12):
                split = ("train" if j < 8 else "val" if j < 10 else "test") if splits else ""
                if split == "test" and c >= test_classes:
                    split = "train"
                for k in range(clips_per_video):
                    frames = base[c] + 1.6 * rng.normal(size=(6, 5))
                    start = None if clips_per_video == 1 else float(2 * k)
                    end = None if clips_per_video == 1 else float(2 * k + 2)
                    w.add(f"c{c}/v{j:02d}.mp4", start, end, f"class{c}", split, frames.astype(np.float32), np.arange(6))
    return path


def test_mean_class_counts_an_unseen_class_as_zero_like_balanced_accuracy() -> None:
    from sklearn.metrics import balanced_accuracy_score

    rng = np.random.default_rng(0)
    y_true = ["a"] * 5 + ["b"] * 7 + ["c"] * 4  # the head was trained on a and b only
    proba = rng.dirichlet([1, 1], size=len(y_true))
    m = metrics(proba, y_true, ["a", "b"])
    y_pred = np.array(["a", "b"])[proba.argmax(1)]
    assert m["mean_class_acc"] == pytest.approx(balanced_accuracy_score(y_true, y_pred), abs=1e-12)
    assert m["per_class"]["c"] == 0.0 and m["unseen_classes"] == ["c"]
    recalls = [np.mean(y_pred[np.array(y_true) == k] == k) for k in "ab"]
    assert m["mean_class_acc"] == pytest.approx((sum(recalls) + 0.0) / 3)
    assert m["mean_class_ci"]["value"] == m["mean_class_acc"] and m["mean_class_ci"]["classes"] == 3
    ci = m["top1_ci"]
    assert ci["method"] == "wilson" and ci["n"] == ci["groups"] == 16 and ci["lo"] <= m["top1"] <= ci["hi"]
    assert m["top5"] is None  # 2 classes


def test_clips_of_one_video_get_a_bootstrap_over_videos() -> None:
    y = ["a", "a", "b", "b"] * 5
    proba = np.tile([[0.9, 0.1], [0.4, 0.6], [0.2, 0.8], [0.3, 0.7]], (5, 1))
    groups = [f"v{i // 4}" for i in range(20)]
    m = metrics(proba, y, ["a", "b"], groups)
    assert m["top1_ci"]["method"] == "bootstrap" and m["top1_ci"]["groups"] == 5 and m["top1_ci"]["n"] == 20
    assert m["top1_ci"]["lo"] <= m["top1"] <= m["top1_ci"]["hi"]


def test_train_and_evaluate_show_the_interval_and_the_class_without_test_clips(tmp_path: Path, capsys) -> None:
    store = _store(tmp_path / "s", splits=True, test_classes=2)
    head = tmp_path / "h.npz"
    assert main(["train", str(store), "-o", str(head)]) == 0
    text = capsys.readouterr().out
    line = next(ln for ln in text.splitlines() if ln.startswith("test: "))
    assert "top1=" in line and " [" in line and "n=4 " in line and "top5" not in line and "wilson" in line
    assert "note: no test clip of class class2" in text
    assert main(["train", str(store), "-o", str(tmp_path / "j.npz"), "--json"]) == 0
    out = _strict(capsys.readouterr().out)
    assert isinstance(out, dict) and "test_clips" not in out
    assert set(out["test"]["top1_ci"]) == {"value", "n", "groups", "lo", "hi", "method"}
    assert out["test"]["absent_classes"] == ["class2"] and out["test"]["top5"] is None
    assert main(["evaluate", str(store), str(head), "--json"]) == 0
    ev = _strict(capsys.readouterr().out)
    assert isinstance(ev, dict) and ev["top1_ci"]["n"] == 4 and ev["mean_class_ci"]["classes"] == 2
    png = tmp_path / "cm.png"
    assert main(["evaluate", str(store), str(head), "--confusion", str(png)]) == 0
    assert "note: no test clip of class class2" in capsys.readouterr().out and png.stat().st_size > 5000


def test_confusion_plot_labels_a_class_without_test_clips(tmp_path: Path, monkeypatch) -> None:
    import matplotlib.axes

    labels: list[str] = []
    real = matplotlib.axes.Axes.set_yticks

    def spy(self, ticks, labels_=None, **kw):  # type: ignore[no-untyped-def]
        labels.extend(labels_ or [])
        return real(self, ticks, labels_, **kw)

    monkeypatch.setattr(matplotlib.axes.Axes, "set_yticks", spy)
    plot_confusion([[0, 0, 2]], ["a", "b"], tmp_path / "cm.png")  # nonzero cells: a -> a twice
    assert labels == ["a", "b (no test clips)"]


def test_train_repeats_refit_over_split_seeds_and_evaluate_refuses_them(tmp_path: Path, capsys) -> None:
    store = _store(tmp_path / "s", splits=False)
    head = tmp_path / "h.npz"
    assert main(["train", str(store), "-o", str(head), "--repeats", "3", "--seed", "4", "--json"]) == 0
    out = _strict(capsys.readouterr().out)
    assert isinstance(out, dict)
    rep = out["repeats"]
    assert rep["seeds"] == [4, 5, 6] and rep["repeats"] == 3 and rep["note"] is None
    assert len(rep["top1"]["values"]) == 3 and rep["top1"]["values"][0] == out["test"]["top1"]
    assert rep["top1"]["mean"] == pytest.approx(np.mean(rep["top1"]["values"]))
    assert rep["top1"]["std"] == pytest.approx(np.std(rep["top1"]["values"], ddof=1))
    assert json.loads(head.with_suffix(".json").read_text())["repeats"]["seeds"] == [4, 5, 6]
    assert main(["evaluate", str(store), str(head)]) == 0
    text = capsys.readouterr().out
    assert "training repeats: top1 " in text and "± " in text and "split seeds 4-6" in text
    assert main(["evaluate", str(store), str(head), "--repeats", "2"]) == 2
    assert "train --repeats" in capsys.readouterr().err


def _bench(tmp: Path, stores: list[dict], **extra: object) -> Path:
    cfg = {"name": "nums", "stores": stores, "poolings": ["mean", "max"], "heads": ["logreg", "knn"], **extra}
    path = tmp / "b.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _rows(out: Path) -> list[dict[str, str]]:
    with open(out / "results.csv", newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def bench(tmp_path_factory) -> tuple[Path, dict]:
    """Two stores of one dataset (clips of one video share it: bootstrap intervals), few-shot curves."""
    d = tmp_path_factory.mktemp("nums")
    stores = [
        {"dataset": "toy", "path": str(_store(d / "a", splits=True, clips_per_video=2)), "encoder": "A"},
        {"dataset": "toy", "path": str(_store(d / "b", splits=True, seed=1, clips_per_video=2)), "encoder": "B"},
    ]
    path = _bench(d, stores, fewshot={"shots": [1, 2], "seeds": [0, 1, 2], "poolings": ["mean"]})
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        code = main(["benchmark", str(path), "-o", str(d / "out"), "--json"])
    assert code == 0
    return d / "out", _strict(buf.getvalue())  # type: ignore[return-value]


def test_benchmark_rows_carry_n_intervals_and_the_paired_verdict(bench) -> None:
    out, summary = bench
    rows = _rows(out)
    full = [r for r in rows if not r["shots"]]
    assert len(full) == 2 * 2 * 2
    for r in full:
        assert int(r["n_test"]) == 12 and int(r["test_videos"]) == 6 and r["ci_method"] in ("bootstrap", "wilson")
        assert float(r["top1_lo"]) <= float(r["top1"]) <= float(r["top1_hi"])
        assert float(r["mean_class_lo"]) <= float(r["mean_class_acc"]) <= float(r["mean_class_hi"])
        assert r["top5"] == "" and "nan" not in ",".join(r.values()).lower()
        assert r["tie_best"] in ("True", "False") and 0 <= float(r["p_vs_best"]) <= 1
    # both encoders' stores hold the same clips: one task, one best row among the 8 fits
    assert sum(r["best"] == "True" for r in full) == 1
    assert all(r["tie_best"] == "True" for r in full if r["best"] == "True")
    assert all(r["tie_best"] == "" and r["p_vs_best"] == "" for r in rows if r["shots"])
    md = (out / "results.md").read_text()
    assert "every fit against the best of its task" in md and "★ best" in md and "n (videos)" in md
    assert "| 12 (6) |" in md and "[95 % CI]" in md
    assert isinstance(summary, dict) and summary["rows"] == len(rows)


def test_benchmark_details_hold_each_test_clip_and_no_nan(bench) -> None:
    out, _ = bench
    for line in (out / "details.jsonl").read_text().splitlines():
        d = _strict(line)
        assert isinstance(d, dict) and len(d["test_clips"]) == len(d["correct"]) == 12
    _strict((out / "benchmark.json").read_text())


def test_benchmark_plots_have_error_bars(bench) -> None:
    out, _ = bench
    for name in ("accuracy-toy-A.png", "accuracy-toy-B.png", "fewshot-toy-A.png", "confusion-toy-A.png"):
        assert (out / name).stat().st_size > 5000, name
    shutil.copy(out / "accuracy-toy-A.png", "/tmp/ci25-accuracy.png")
    shutil.copy(out / "fewshot-toy-A.png", "/tmp/ci25-fewshot.png")


def test_benchmark_repeats_refit_over_split_seeds(tmp_path: Path) -> None:
    store = _store(tmp_path / "s", splits=False)
    path = _bench(tmp_path, [{"dataset": "toy", "path": str(store)}], repeats=3, seed=2)
    assert main(["benchmark", str(path), "-o", str(tmp_path / "out"), "-q"]) == 0
    rows = _rows(tmp_path / "out")
    assert sorted((r["pool"], r["head"], r["seed"]) for r in rows) == sorted(
        (p, h, str(s)) for p in ("mean", "max") for h in ("logreg", "knn") for s in (2, 3, 4)
    )
    assert {r["split_source"] for r in rows} == {f"random(seed={s})" for s in (2, 3, 4)}
    assert sum(r["best"] == "True" for r in rows) == 3  # one best per split seed: each has its own test clips
    md = (tmp_path / "out" / "results.md").read_text()
    assert "mean ± std over 3 split seeds" in md
    line = next(ln for ln in md.splitlines() if ln.startswith("| toy | enc | mean |"))
    accs = [float(r["top1"]) for r in rows if r["pool"] == "mean" and r["head"] == "logreg"]
    assert f"{100 * np.mean(accs):.1f} ± {100 * np.std(accs, ddof=1):.1f}" in line
    assert main(["benchmark", str(path), "-o", str(tmp_path / "o2"), "-q", "--repeats", "1"]) == 0
    assert len(_rows(tmp_path / "o2")) == 4
