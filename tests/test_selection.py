"""Hyperparameters are never chosen on nothing: thin validation -> k-fold CV grouped by source video, no CV
possible -> the fixed default with a warning naming the classes; the record says which. Real videos, sliding
windows, the real offline encoder and real stores, as a small dataset for transfer learning looks."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from media import pattern_frames, write_video

from pipeline.config import load_config
from pipeline.data.manifest import load_manifest
from pipeline.data.splits import SplitSpec, video_group
from pipeline.errors import ConfigError
from pipeline.extract.entry import extract
from pipeline.probe.heads import selection
from pipeline.probe.heads.fitting import fit_head
from pipeline.probe.heads.registry import head_kind
from pipeline.probe.heads.settings import HeadConfig
from pipeline.probe.sequences import FrameSequences
from pipeline.probe.train import fit_on_store
from pipeline.store import open_store

# 12 s videos, 2 s windows every 2 s: 6 windows (clips) per video, 2 frames each
WINDOWS = ("sampling.strategy=sliding", "sampling.clip_length=2", "sampling.stride=2", "sampling.num_frames=2")
THIN_VAL = SplitSpec(val_fraction=0.25, test_fraction=0.0)  # one video of each class with two: 6 clips each


def _video(root: Path, label: str, kind: int, j: int) -> None:
    frames = pattern_frames(48, height=64, width=80, kind=kind, seed=10 * kind + j)
    write_video(root / label / f"v{j}.mp4", frames, fps=4)


@pytest.fixture(scope="module")
def stores(tmp_path_factory, effnet) -> dict[str, Path]:
    """ "five": 5 real videos, 3 labels (a, b: two videos each; c: one); "six": the same plus c's second video."""
    root = tmp_path_factory.mktemp("sel")
    videos = root / "videos"
    for kind, label in enumerate("abc"):
        for j in range(2 if label != "c" else 1):
            _video(videos, label, kind, j)
    cfg = load_config(None, list(WINDOWS))
    extract(load_manifest(videos), root / "five", cfg, encoders=[effnet], progress=False)
    shutil.copytree(root / "five", root / "six")
    _video(videos, "c", 2, 1)
    extract(load_manifest(videos), root / "six", cfg, encoders=[effnet], progress=False)  # only the new video
    return {"five": root / "five", "six": root / "six"}


@pytest.fixture
def used_folds(monkeypatch) -> list[tuple[np.ndarray, list]]:
    """The folds selection really used, with the groups it dealt them by."""
    seen: list[tuple[np.ndarray, list]] = []
    real = selection.grouped_stratified_folds

    def spy(labels, groups, k, seed=0):
        folds = real(labels, groups, k, seed)
        seen.append((np.asarray(groups), folds))
        return folds

    monkeypatch.setattr(selection, "grouped_stratified_folds", spy)
    return seen


@pytest.mark.parametrize("head", ["knn", "logreg"])
def test_thin_val_chooses_by_cv_grouped_by_video(stores, used_folds, head) -> None:
    store = open_store(stores["six"])
    assert len(store) == 36
    result, rec = fit_on_store(store, head, split=THIN_VAL)
    assert rec["n_val"] == 18 and rec["n_train"] == 18  # val: 18 clips < 20, too thin to choose on
    sel = rec["selection"]
    assert sel["how"] == "cv" and sel["k"] == 2 and sel["n"] == 36 and "CV grouped by video" in sel["reason"]
    assert sum(sel["fold_sizes"]) == 36 and rec["val_top1"] == sel["score"] is not None
    assert rec["warnings"] == [] and rec["missing_classes"] == {}
    # the folds used: over train + val, grouped by the real video of every window, none cut through
    ((groups, folds),) = used_folds
    index = store.index()
    assert sorted(groups.tolist()) == sorted(video_group(v) for v in index.video)
    assert len(folds) == 2
    for tr, va in folds:
        assert set(groups[tr]).isdisjoint(groups[va]) and len(set(groups[va])) == 3  # a video of every class
    assert rec["fit_info"]["fits"] == 2 * len(result.val_scores) + 1  # every candidate on both folds, + the fit


def test_a_class_with_one_video_gets_the_fixed_default_and_one_warning(stores, used_folds) -> None:
    _, rec = fit_on_store(open_store(stores["five"]), "knn", split=THIN_VAL)
    assert rec["missing_classes"] == {"val": ["c"]}  # c's only video stays in train
    sel = rec["selection"]
    assert sel["how"] == "fixed" and sel["classes"] == ["c"] and sel["k"] is None and sel["n"] == 0
    assert rec["val_top1"] is None and rec["hparams"] == {"k": 5}  # today's fallback: the middle of the ks <= 30 clips
    assert used_folds == []  # no CV tried
    assert rec["warnings"][0] == "classes missing from a split: val lacks c"
    (fixed,) = [w for w in rec["warnings"] if "not chosen" in w]
    assert "(c)" in fixed and "k=5" in fixed and len(rec["warnings"]) == 2


def test_logreg_fixed_default_is_c_1(stores) -> None:
    _, rec = fit_on_store(open_store(stores["five"]), "logreg", split=THIN_VAL)
    assert rec["selection"]["how"] == "fixed" and rec["C"] == 1.0
    assert any("C=1" in w and "(c)" in w for w in rec["warnings"])


def test_shots_above_a_class_warn_or_refuse_with_strict(stores) -> None:
    store = open_store(stores["six"])
    spec = SplitSpec(val_fraction=0.25, test_fraction=0.0, shots=10)
    _, rec = fit_on_store(store, "knn", split=spec)
    assert rec["n_train"] == 18  # every class has 6 training clips (one video): all used
    (short,) = [w for w in rec["warnings"] if w.startswith("shots=")]
    assert short == "shots=10: 3 classes have fewer training clips, all of them used: a (6), b (6), c (6)"
    # val (18 clips) is too thin and the shots hold one video per class: fixed, the classes named
    assert rec["selection"]["how"] == "fixed" and rec["selection"]["classes"] == ["a", "b", "c"]
    with pytest.raises(ConfigError, match=r"shots=10: 3 classes .* a \(6\)"):
        fit_on_store(store, "knn", split=spec, strict=True)
    _, ok = fit_on_store(store, "knn", split=SplitSpec(val_fraction=0.25, test_fraction=0.0, shots=6), strict=True)
    assert not [w for w in ok["warnings"] if w.startswith("shots=")]


def test_the_missing_class_line_names_the_split(stores) -> None:
    _, rec = fit_on_store(open_store(stores["five"]), "knn", split=SplitSpec(val_fraction=0.25))
    # a and b lose a video to test, c keeps its only one in train: test and val lack c (val is empty)
    assert rec["missing_classes"] == {"test": ["c"]} and rec["n_val"] == 0
    assert "classes missing from a split: test lacks c" in rec["warnings"]
    assert rec["selection"]["how"] == "fixed" and rec["selection"]["classes"] == ["a", "b", "c"]


# -- every kind records "cv" on tiny synthetic data ---------------------------------------------------------


def _grouped(n_videos: int = 4, clips: int = 3, K: int = 3, D: int = 8, seed: int = 0):
    rng = np.random.default_rng(seed)
    mu = 2 * rng.normal(size=(K, D))
    y = np.repeat(np.arange(K), n_videos * clips)
    g = np.repeat(np.arange(K * n_videos), clips)
    X = mu[y] + rng.normal(size=(len(y), D)) + 0.5 * rng.normal(size=(K * n_videos, D))[g]
    return X.astype(np.float32), [f"k{i}" for i in y], [f"vid{i}" for i in g]


@pytest.mark.parametrize(
    "head",
    [
        HeadConfig(kind="mlp", hidden=8, alphas=(1.0, 1e-2), max_iter=50),
        HeadConfig(kind="knn", ks=(1, 3, 5)),
        HeadConfig(kind="logreg", Cs=(0.01, 1.0), refine=()),
    ],
)
def test_pooled_kinds_choose_by_cv_without_val(head) -> None:
    X, y, g = _grouped()
    result = fit_head(head, X, y, groups=g)
    sel = result.selection
    folds = min(4, head_kind(head.kind).cv_folds)  # every class has 4 videos; mlp's sweeps use 3 folds
    assert sel is not None and sel["how"] == "cv" and sel["k"] == folds and sel["n"] == len(y)
    assert len(result.val_scores) >= 2 and sel["score"] == max(result.val_scores.values())
    assert result.warnings == []


def test_temporal_head_chooses_by_cv_and_refits_for_the_folds_mean_epochs() -> None:
    X, y, g = _grouped(n_videos=2, clips=4)
    rng = np.random.default_rng(1)
    seqs = FrameSequences.from_clips([(x + 0.1 * rng.normal(size=(3, len(x))), np.arange(3.0)) for x in X])
    head = HeadConfig(kind="attn", width=8, num_heads=2, lrs=(3e-3, 1e-3), wds=(0.01,), epochs=3, device="cpu")
    result = fit_head(head, seqs, y, groups=g)
    assert result.selection is not None and result.selection["how"] == "cv" and result.selection["k"] == 2
    info = result.info
    assert info["cv_folds"] == 2 and info["fits"] == 2 * 2 + 1 and 1 <= info["refit_epochs"] <= 3
    assert len(result.val_scores) == 2


def test_few_shot_cv_runs_over_the_shots_and_enough_val_still_chooses() -> None:
    X, y, g = _grouped()
    few = fit_head(HeadConfig(kind="knn", ks=(1, 3)), X, y, X[:6], y[:6], refit=False, groups=g)
    assert few.selection is not None and few.selection["how"] == "cv" and few.selection["n"] == len(y)  # shots only
    Xv, yv, gv = _grouped(n_videos=3, seed=2)  # 27 val clips, 9 of every class
    val = fit_head(HeadConfig(kind="knn", ks=(1, 3)), X, y, Xv, yv, groups=g, groups_val=gv)
    assert val.selection is not None and val.selection["how"] == "val" and val.selection["n"] == 27
    one = fit_head(HeadConfig(kind="knn", ks=(3,)), X, y, groups=g)  # one candidate: nothing to choose
    assert one.selection is not None and one.selection["how"] == "fixed" and one.warnings == []


def test_train_says_how_it_chose_warns_and_strict_refuses(stores, tmp_path, capsys) -> None:
    from pipeline.cli import main

    head = tmp_path / "h.npz"
    args = ["train", str(stores["six"]), "-o", str(head), "--head", "knn", "--val-fraction", "0.25"]
    assert main([*args, "--test-fraction", "0"]) == 0
    out = capsys.readouterr().out
    assert "chosen: by 2-fold cross-validation grouped by video on 36 training clips" in out
    five = ["train", str(stores["five"]), "--head", "knn", "--val-fraction", "0.25", "--test-fraction", "0"]
    assert main([*five, "-o", str(tmp_path / "f.npz")]) == 0
    captured = capsys.readouterr()
    assert "chosen: not chosen, fixed:" in captured.out
    (warning,) = [line for line in captured.err.splitlines() if "hyperparameters not chosen" in line]
    assert warning.startswith("vidprobe train: warning:") and "(c)" in warning
    shots = [*five, "--shots", "10", "-o", str(tmp_path / "s.npz")]
    assert main(shots) == 0 and "shots=10" in capsys.readouterr().err
    assert main([*shots, "--strict"]) == 2
    err = capsys.readouterr().err
    assert "shots=10" in err and "Traceback" not in err
