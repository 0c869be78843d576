"""The head registry: a head kind added from outside ``pipeline/`` trains, saves, loads, evaluates and predicts
through the CLI like a built-in one; heads saved before the registry still load and predict the same."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from pipeline.cli import main
from pipeline.config import rule
from pipeline.errors import ConfigError
from pipeline.probe.heads.files import load_head
from pipeline.probe.heads.fitting import FitResult, TrainingSet
from pipeline.probe.heads.native import NativeKind, register_native_kind
from pipeline.probe.heads.registry import HeadKind, head_names, register_head
from pipeline.probe.heads.settings import HeadConfig
from pipeline.probe.sequences import FrameSequences

OLD = Path(__file__).parent / "fixtures" / "old_heads"


# -- a toy kind, nearest class mean: settings as data, fit, numpy predictor, file form, one registration --


@dataclass
class NcmSettings:
    temperature: float = field(default=1.0, metadata=rule(gt=0))  # of the softmax over negative distances


class NearestMean:
    def __init__(self, means: np.ndarray, classes: list[str], temperature: float) -> None:
        self.means, self.classes, self.temperature = np.asarray(means, np.float64), list(classes), temperature

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        d = np.linalg.norm(np.asarray(X, np.float64)[:, None] - self.means[None], axis=-1)
        z = -d / self.temperature
        e = np.exp(z - z.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)


def fit_ncm(cfg: NcmSettings, data: TrainingSet) -> FitResult:
    X, y = np.asarray(data.X), np.asarray(data.y)
    if data.refit and data.X_val is not None:
        X, y = np.concatenate([X, data.X_val]), np.concatenate([y, data.y_val])
    means = np.stack([X[y == k].mean(axis=0) for k in range(len(data.classes))])
    return FitResult(NearestMean(means, data.classes, cfg.temperature), data.classes, {"temperature": cfg.temperature})


register_native_kind(
    "ncm",
    NativeKind(
        accepts=lambda est: isinstance(est, NearestMean),
        to_arrays=lambda est: ({"means": est.means}, {"temperature": est.temperature}),
        from_arrays=lambda arrays, model, classes: NearestMean(arrays["means"], classes, float(model["temperature"])),
    ),
)
register_head(HeadKind("ncm", NcmSettings, fit_ncm))


def test_toy_head_kind_settings_are_checked_by_the_one_validator() -> None:
    assert "ncm" in head_names()
    assert HeadConfig.from_dict({"kind": "ncm", "temperature": "0.5"}).to_dict() == {"kind": "ncm", "temperature": 0.5}
    with pytest.raises(ConfigError, match=r"temperature=0.0: must be > 0"):
        HeadConfig.from_dict({"kind": "ncm", "temperature": 0})
    with pytest.raises(ConfigError, match="'ks' does not apply to head 'ncm'"):
        HeadConfig.from_dict({"kind": "ncm", "ks": [3]})


def test_toy_head_kind_through_the_cli(labeled_folder: Path, tmp_path: Path, capsys) -> None:
    store, head = tmp_path / "store", tmp_path / "ncm.npz"
    args = ["-q", "extract.num_workers=1", "sampling.num_frames=2"]
    assert main(["extract", str(labeled_folder), "-o", str(store), *args]) == 3  # the folder's broken file fails
    capsys.readouterr()
    split = ["--val-fraction", "0.25", "--test-fraction", "0.25"]
    assert main(["train", str(store), "-o", str(head), "--head", "ncm", *split, "--json"]) == 0
    trained = json.loads(capsys.readouterr().out)
    assert trained["head"] == "ncm" and trained["head_settings"] == {"kind": "ncm", "temperature": 1.0}
    side = json.loads(head.with_suffix(".json").read_text())
    assert side["model"]["kind"] == "ncm" and side["format"] == "npz"

    loaded = load_head(head)
    assert isinstance(loaded.estimator, NearestMean) and loaded.classes == ["stripes_h", "stripes_v"]
    assert main(["evaluate", str(store), str(head), "--json"]) == 0
    scored = json.loads(capsys.readouterr().out)
    assert scored["top1"] == trained["test"]["top1"] and scored["n"] == trained["n_test"]

    videos = sorted(str(p) for p in labeled_folder.rglob("clip*"))
    assert main(["predict", str(head), *videos, "--json"]) == 0
    predicted = json.loads(capsys.readouterr().out)
    assert [p["path"] for p in predicted] == videos and all("error" not in p for p in predicted)
    assert all(abs(sum(t["prob"] for t in p["top"]) - 1) < 1e-6 for p in predicted)  # both classes listed
    assert [p["top"][0]["label"] for p in predicted] == [Path(v).parent.name for v in videos]  # stripes: easy


# -- heads saved before the registry ---------------------------------------------------------------


def test_old_heads_still_predict() -> None:
    expected = np.load(OLD / "expected.npz")
    logreg = load_head(OLD / "logreg.npz")
    assert logreg.classes == ["c0", "c1", "c2"]
    assert np.allclose(logreg.predict_proba(expected["logreg_X"]), expected["logreg_proba"], rtol=1e-6, atol=1e-9)
    attn = load_head(OLD / "attn.npz")
    seqs = FrameSequences(*(expected[f"attn_{k}"] for k in ("x", "t", "mask", "times")))
    assert attn.classes == ["k0", "k1"] and attn.meta["model"]["kind"] == "attn"
    assert np.allclose(attn.predict_proba(seqs), expected["attn_proba"], rtol=1e-5, atol=1e-7)
