"""Heads: every kind reproduces its recorded metrics in a fresh process; head files load without running code."""

from __future__ import annotations

import hashlib
import json
import pickle
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from media import pattern_frames, write_video

from pipeline.cli import main
from pipeline.data.splits import SplitSpec
from pipeline.errors import ConfigError, HeadError
from pipeline.probe.heads.files import load_head, save_head
from pipeline.probe.heads.fitting import FitResult, fit_head
from pipeline.probe.heads.logreg import linear_classifier
from pipeline.probe.heads.native import NATIVE_KINDS, NativeKind
from pipeline.probe.heads.settings import HeadConfig
from pipeline.probe.heads.zeroshot import label_to_text
from pipeline.probe.train import train_head
from pipeline.store import ShardWriter, create_or_open

REPO = Path(__file__).resolve().parents[1]
PROV = {
    "encoder": "test-enc",
    "weights_id": "w1",
    "dim": 8,
    "preprocess": {},
    "sampling": {"strategy": "uniform", "num_frames": 4},
}


@pytest.fixture(scope="module")
def store_path(tmp_path_factory) -> Path:
    """4 overlapping classes (accuracy well above chance, below 100%) of 4-frame clips; manifest splits."""
    path = tmp_path_factory.mktemp("heads") / "s"
    rng = np.random.default_rng(0)
    store = create_or_open(path, PROV)
    means = rng.normal(size=(4, 8))
    with ShardWriter(store) as w:
        for c in range(4):
            for j in range(30):
                split = "train" if j < 18 else "val" if j < 24 else "test"
                frames = 0.5 * means[c] + 1.5 * rng.normal(size=(4, 8))
                w.add(f"c{c}/v{j}.mp4", None, None, f"class{c}", split, frames.astype(np.float32), np.arange(4) * 0.5)
    return path


def _fresh_process_metrics(store: Path, heads: list[Path], trust: bool = False) -> list[dict]:
    """Evaluate each head in one new Python process (nothing shared with the training process)."""
    code = (
        "import json, sys\nfrom pipeline.probe.train import evaluate_head\n"
        f"print(json.dumps([evaluate_head(sys.argv[1], h, trust={trust!r}) for h in sys.argv[2:]]))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(store), *map(str, heads)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_heads_reproduce_recorded_metrics_in_a_fresh_process(store_path: Path, tmp_path: Path) -> None:
    kinds = {"logreg": {"C"}, "mlp": {"alpha"}, "knn": {"k"}}
    # .npz (the default) for the kinds, .skops (older heads) for the few-shot one: both load in a fresh process
    heads = [tmp_path / f"{kind}.npz" for kind in kinds] + [tmp_path / "fewshot.skops"]
    for kind, head in zip(kinds, heads):
        out = train_head(store_path, head, head=kind, pool="mean")
        assert 0.35 < out["test"]["top1"] <= 1.0 and out["n_test"] == 24  # 4 classes: chance is 0.25
        assert set(out["hparams"]) == kinds[kind]
    few = train_head(store_path, heads[-1], head="logreg", pool="seg2", split=SplitSpec(shots=2, shot_seed=1))
    assert few["n_train"] == 8 and few["shots"] == 2
    for head, fresh in zip(heads, _fresh_process_metrics(store_path, heads)):
        recorded = json.loads(head.with_suffix(".json").read_text())
        assert recorded["format"] == head.suffix[1:]
        for key in ("top1", "top5", "mean_class_acc", "per_class", "report", "n"):
            assert fresh[key] == recorded["metrics"]["test"][key], (head.name, key)


def test_logreg_follows_the_clip_protocol(store_path: Path, tmp_path: Path) -> None:
    out = train_head(store_path, tmp_path / "h.skops", head="logreg", pool="mean")
    side = json.loads((tmp_path / "h.json").read_text())
    tried = [float(k.split("=")[1]) for k, _ in side["val_scores"]]
    assert tried[:3] == [1e-6, 1e-5, 1e-4]  # coarse grid climbed from CLIP's smallest C
    assert out["C"] == pytest.approx(min(tried, key=lambda c: abs(c - out["C"])), rel=1e-3) and out["val_top1"] == max(
        v for _, v in side["val_scores"]
    )
    assert side["fit_info"]["solver"] == "torch" and side["fit_info"]["fits"] == len(tried) + 1  # + refit on train+val
    # Every candidate solved to scikit-learn's tolerance, both solvers walk the same path to the same C.
    tight = train_head(store_path, tmp_path / "t.skops", head=HeadConfig(sweep_tol=1e-4), pool="mean")
    sk = train_head(store_path, tmp_path / "sk.skops", head=HeadConfig(solver="sklearn", sweep_tol=1e-4), pool="mean")
    assert sk["C"] == pytest.approx(tight["C"]) and sk["val_top1"] == tight["val_top1"]
    assert abs(sk["test"]["top1"] - tight["test"]["top1"]) <= 1 / 24 + 1e-9  # at most one clip apart


def test_knn_is_cosine(store_path: Path) -> None:
    rng = np.random.default_rng(1)
    X, y = rng.normal(size=(40, 8)), [f"c{i % 3}" for i in range(40)]
    a = fit_head(HeadConfig(kind="knn", ks=(3,)), X, y)
    b = fit_head(HeadConfig(kind="knn", ks=(3,)), X * rng.uniform(0.5, 5, size=(40, 1)), y)  # per-row scale
    Xq = rng.normal(size=(10, 8))
    np.testing.assert_allclose(a.estimator.predict_proba(Xq), b.estimator.predict_proba(Xq * 7.0))


def test_linear_classifier_is_the_softmax_for_two_and_many_classes() -> None:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(5, 4))
    for K in (2, 4):
        W, b = rng.normal(size=(K, 4)), rng.normal(size=K)
        z = X @ W.T + b
        expected = np.exp(z - z.max(1, keepdims=True))
        expected /= expected.sum(1, keepdims=True)
        np.testing.assert_allclose(
            linear_classifier(W, b, [f"k{i}" for i in range(K)]).predict_proba(X), expected, atol=1e-12
        )


def test_joblib_needs_trust_and_skops_refuses_untrusted_types(store_path: Path, tmp_path: Path, capsys) -> None:
    head = tmp_path / "h.joblib"
    train_head(store_path, head, head="logreg")
    with pytest.raises(HeadError, match="--trust"):
        load_head(head)
    assert main(["evaluate", str(store_path), str(head), "--json"]) == 1
    err = capsys.readouterr().err.strip()
    assert "--trust" in err and len(err.splitlines()) == 1
    assert main(["evaluate", str(store_path), str(head), "--json", "--trust"]) == 0
    # A skops file holding a type outside the trusted list (a KD-tree) is refused, naming the type.
    from sklearn.neighbors import KNeighborsClassifier

    est = KNeighborsClassifier(3, algorithm="kd_tree").fit(
        np.random.default_rng(0).normal(size=(20, 3)), ["a", "b"] * 10
    )
    odd = tmp_path / "odd.skops"
    save_head(odd, FitResult(est, ["a", "b"], {}), {})
    with pytest.raises(HeadError, match="KDTree"):
        load_head(odd)
    assert load_head(odd, trust=True).predict_proba(np.zeros((1, 3))).shape == (1, 2)


def test_pickle_payload_never_runs_without_trust(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (Path.write_text, (marker, "ran"))

    head = tmp_path / "evil.joblib"
    head.write_bytes(pickle.dumps({"estimator": Payload(), "classes": ["a"]}))
    signed = {"encoder": "x", "head_sha256": hashlib.sha256(head.read_bytes()).hexdigest()}
    head.with_suffix(".json").write_text(json.dumps(signed))
    with pytest.raises(HeadError, match="pickle.*--trust"):
        load_head(head)
    assert not marker.exists()
    # the same bytes renamed .skops are not a skops file: refused as damaged, nothing runs
    fake = tmp_path / "evil.skops"
    fake.write_bytes(head.read_bytes())
    fake.with_suffix(".json").write_text(json.dumps(signed))
    with pytest.raises(HeadError, match="cannot load head"):
        load_head(fake)
    assert not marker.exists()


def test_replaced_head_file_is_detected(store_path: Path, tmp_path: Path) -> None:
    a, b = tmp_path / "a.skops", tmp_path / "b.skops"
    train_head(store_path, a, head="logreg")
    train_head(store_path, b, head="knn")
    a.write_bytes(b.read_bytes())
    with pytest.raises(HeadError, match="sha256"):
        load_head(a)


@pytest.mark.parametrize(
    "settings, needle",
    [
        ({"kind": "svm"}, "head='svm'"),
        ({"kind": "knn", "Cs": [1.0]}, "'Cs' does not apply"),
        ({"kind": "logreg", "Cs": [0, 1]}, "Cs="),
        ({"kind": "logreg", "solver": "adam"}, "solver='adam'"),
        ({"kind": "zeroshot", "templates": ["no placeholder"]}, "{label}"),
        ({"kind": "logreg", "colour": 1}, "unknown head setting 'colour'"),
    ],
)
def test_head_settings_are_validated_naming_the_key(settings: dict, needle: str) -> None:
    with pytest.raises(ConfigError) as info:
        HeadConfig.from_dict(settings)
    assert needle in str(info.value)


def test_head_file_name_is_checked_before_training(store_path: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"\.skops"):
        train_head(store_path, tmp_path / "h.pkl")


def test_label_to_text() -> None:
    assert label_to_text("ApplyEyeMakeup") == "apply eye makeup"
    assert label_to_text("brush_hair") == "brush hair"
    assert label_to_text("air drumming") == "air drumming"
    assert label_to_text("YoYo") == "yo yo"
    assert label_to_text("PlayingDaf") == "playing daf"


def test_cli_train_knn_few_shot(store_path: Path, tmp_path: Path, capsys) -> None:
    head = tmp_path / "k.skops"
    assert (
        main(["train", str(store_path), "-o", str(head), "--head", "knn", "--shots", "3", "--shot-seed", "2", "--json"])
        == 0
    )
    out = json.loads(capsys.readouterr().out)
    assert out["head"] == "knn" and out["n_train"] == 12 and out["hparams"]["k"] <= 12
    assert main(["evaluate", str(store_path), str(head)]) == 0
    text = capsys.readouterr().out
    assert "prec" in text and "class3" in text


def test_head_settings_from_yaml_numbers() -> None:
    import yaml

    cfg = HeadConfig.from_dict(
        yaml.safe_load("{kind: logreg, Cs: [1e-3, 1e-2, 0.1], tol: 1e-5, sweep_tol: 1e-4, patience: 0}")
    )
    assert cfg.Cs == (1e-3, 1e-2, 0.1) and cfg.tol == 1e-5 and cfg.patience == 0  # YAML reads 1e-3 as text
    assert HeadConfig.from_dict(cfg.to_dict()) == cfg  # settings round-trip
    with pytest.raises(ConfigError, match="ks=1.5"):
        HeadConfig.from_dict({"kind": "knn", "ks": [1.5]})


def test_knn_choice_of_k_equals_scikit_learn_predictions() -> None:
    """The blocked top-k search (small blocks, so several train and query blocks) scores each k exactly as
    scikit-learn's brute KNeighborsClassifier predictions do, and picks the same k."""
    from sklearn.neighbors import KNeighborsClassifier

    from pipeline.probe.heads.fitting import select_on_val
    from pipeline.probe.knn_topk import cosine_topk, predict_from_neighbours, select_k

    rng = np.random.default_rng(4)
    centers = rng.normal(size=(5, 16))
    y = rng.integers(0, 5, 700)
    X = (0.6 * centers[y] + rng.normal(size=(700, 16))).astype(np.float32)
    labels = np.array([f"c{i}" for i in y])
    X_tr, y_tr, X_va, y_va = X[:500], labels[:500], X[500:], labels[500:]
    ks = [1, 3, 5, 10, 20, 50]

    def make(k):
        return KNeighborsClassifier(n_neighbors=k, metric="cosine", algorithm="brute", weights="distance")

    idx, dist = cosine_topk(X_tr, X_va, 50, query_block=64, train_block=128)
    classes, yi = np.unique(y_tr, return_inverse=True)
    for k in ks:
        ours = classes[predict_from_neighbours(yi, idx, dist, k, len(classes))]
        assert np.array_equal(ours, make(k).fit(X_tr, y_tr).predict(X_va)), k
    assert select_k(ks, X_tr, y_tr, X_va, y_va) == select_on_val(ks, make, X_tr, y_tr, X_va, y_va, "k")
    # an exact duplicate of a training row: only the exact match votes, as in scikit-learn
    q = X_tr[:3].copy()
    i2, d2 = cosine_topk(X_tr, q, 5)
    assert np.array_equal(
        classes[predict_from_neighbours(yi, i2, d2, 5, len(classes))], make(5).fit(X_tr, y_tr).predict(q)
    )


# -- head files holding impossible values ----------------------------------------------------------


def _resign(head: Path, arrays: dict[str, np.ndarray]) -> None:
    """Rewrite an .npz head with ``arrays`` and recompute its sidecar's sha256 (the checksum then passes)."""
    with open(head, "wb") as f:
        np.savez(f, **arrays)
    side = head.with_suffix(".json")
    meta = json.loads(side.read_text())
    meta["head_sha256"] = hashlib.sha256(head.read_bytes()).hexdigest()
    side.write_text(json.dumps(meta))


def _with(arrays: dict[str, np.ndarray], name: str, fn) -> dict[str, np.ndarray]:
    return {**arrays, name: fn(arrays[name].copy())}


def _nan_at_0(a: np.ndarray) -> np.ndarray:
    a.flat[0] = np.nan
    return a


def _zero_at_3(a: np.ndarray) -> np.ndarray:
    a[3] = 0.0
    return a


ATTN = {"kind": "attn", "width": 8, "num_heads": 2, "epochs": 1, "lrs": [1e-3], "wds": [0.1]}


@pytest.mark.parametrize(
    "kind, name, damage, needle",
    [
        ("logreg", "W", _nan_at_0, r"array 'W' holds 1 NaN or infinite"),
        ("logreg", "scale", _zero_at_3, r"array 'scale' holds 1 value\(s\) <= 0"),
        ("logreg", "mean", lambda a: a[:3], r"array 'mean' has shape \(3,\), expected \(8,\) \(D = 8 from array 'W'\)"),
        ("logreg", "W", lambda a: a.astype("S8"), r"array 'W' holds \|S8 values, expected floats"),
        ("logreg", "b", lambda a: np.full_like(a, np.inf), r"array 'b' holds 4 NaN or infinite"),
        ("logreg", "classes", lambda a: a.astype("S8"), r"array 'classes' must be a list of class names"),
        ("logreg", "classes", lambda a: np.array(["c"] * len(a)), r"array 'classes' names a class twice"),
        ("mlp", "W1", _nan_at_0, r"mlp head: array 'W1' holds 1 NaN"),
        ("mlp", "b0", lambda a: a[:-1], r"array 'b0' has shape \(255,\), expected \(256,\) \(H1 = 256"),
        ("knn", "y", lambda a: a.astype(np.float64), r"array 'y' holds float64 values, expected integers"),
        ("knn", "X", lambda a: a.astype(np.complex64), r"array 'X' holds complex64 values"),
        ("attn", "linear.weight", _nan_at_0, r"attn head: array 'linear.weight' holds 1 NaN"),
    ],
)
def test_impossible_head_arrays_are_one_line_naming_file_and_array(
    store_path: Path, tmp_path: Path, capsys, kind: str, name: str, damage, needle: str
) -> None:
    head = tmp_path / f"{kind}.npz"
    train_head(store_path, head, head=HeadConfig.from_dict(ATTN if kind == "attn" else {"kind": kind}))
    with np.load(head) as z:
        arrays = dict(z)
    _resign(head, _with(arrays, name, damage))
    capsys.readouterr()
    video = tmp_path / "v.mp4"
    write_video(video, pattern_frames(12), fps=12)
    for argv in (["evaluate", str(store_path), str(head), "--json"], ["predict", str(head), str(video), "--json"]):
        assert main(argv) == 1  # never NaN probabilities with exit 0
        captured = capsys.readouterr()
        lines = [line for line in captured.err.splitlines() if line.strip()]
        assert len(lines) == 1 and "Traceback" not in captured.err and captured.out == "", captured.err
        assert str(head) in lines[0] and re.search(needle, lines[0]), lines[0]


def test_weights_that_overflow_are_refused_not_scored_as_nan(store_path: Path, tmp_path: Path, capsys) -> None:
    head = tmp_path / "h.npz"
    train_head(store_path, head, head="logreg")
    with np.load(head) as z:
        arrays = dict(z)
    _resign(head, _with(arrays, "W", lambda a: np.full_like(a, 1e308)))  # finite; the logits overflow
    capsys.readouterr()
    assert main(["evaluate", str(store_path), str(head), "--json"]) == 1
    captured = capsys.readouterr()
    assert "non-finite probabilities" in captured.err and str(head) in captured.err and captured.out == ""


def test_skops_head_with_nan_weights_is_refused_at_load(store_path: Path, tmp_path: Path) -> None:
    import skops.io as sio

    head = tmp_path / "h.skops"
    train_head(store_path, head, head="logreg")
    blob = sio.load(head, trusted=sio.get_untrusted_types(file=head))
    blob["estimator"].steps[-1][1].coef_[0, 0] = np.nan
    sio.dump(blob, head)
    side = head.with_suffix(".json")
    side.write_text(
        json.dumps({**json.loads(side.read_text()), "head_sha256": hashlib.sha256(head.read_bytes()).hexdigest()})
    )
    with pytest.raises(HeadError, match=r"h\.skops: linear head: array 'W' holds 1 NaN"):
        load_head(head)


def test_a_fit_with_nan_weights_is_not_written(tmp_path: Path) -> None:
    W = np.array([[np.nan, 1.0], [0.0, 1.0], [1.0, 0.0]])
    est = linear_classifier(W, np.zeros(3), ["a", "b", "c"])
    with pytest.raises(HeadError, match=r"h\.npz: not written: linear head: array 'W' holds 1 NaN"):
        save_head(tmp_path / "h.npz", FitResult(est, ["a", "b", "c"], {}), {})
    assert not (tmp_path / "h.npz").exists() and not (tmp_path / "h.json").exists()


class _Counted:
    """A head whose native form counts how often it is built (``save_head`` builds it once per save)."""

    def __init__(self, W: np.ndarray) -> None:
        self.W, self.classes, self.conversions = W, ["a", "b"], 0

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        return np.full((len(X), 2), 0.5)

    def to_arrays(self) -> tuple[dict[str, np.ndarray], dict]:
        self.conversions += 1
        return {"W": self.W}, {}


@pytest.fixture
def counted_kind(monkeypatch):
    """``_Counted`` as a native kind for one test only (removed from ``NATIVE_KINDS`` after it)."""
    kind = NativeKind(
        accepts=lambda est: isinstance(est, _Counted),
        to_arrays=lambda est: est.to_arrays(),
        from_arrays=lambda arrays, model, classes: _Counted(arrays["W"]),
    )
    monkeypatch.setitem(NATIVE_KINDS, "counted_test_kind", kind)


@pytest.mark.parametrize("name", ["h.npz", "h.joblib"])
@pytest.mark.usefixtures("counted_kind")
def test_save_head_builds_the_native_form_once_and_checks_it_first(tmp_path: Path, name: str) -> None:
    good = _Counted(np.ones((2, 3)))
    save_head(tmp_path / name, FitResult(good, ["a", "b"], {}), {})
    assert good.conversions == 1 and (tmp_path / name).is_file()
    bad = _Counted(np.array([[np.inf, 1.0, 0.0]]))
    with pytest.raises(HeadError, match=rf"{name}: not written: counted_test_kind head: array 'W' holds 1 "):
        save_head(tmp_path / f"bad{name}", FitResult(bad, ["a", "b"], {}), {})
    assert bad.conversions == 1 and not (tmp_path / f"bad{name}").exists()


def test_a_sidecar_without_a_checksum_needs_trust(store_path: Path, tmp_path: Path, capsys) -> None:
    head = tmp_path / "h.npz"
    train_head(store_path, head, head="logreg")
    side = head.with_suffix(".json")
    meta = json.loads(side.read_text())
    del meta["head_sha256"]
    side.write_text(json.dumps(meta))
    capsys.readouterr()
    assert main(["evaluate", str(store_path), str(head)]) == 1
    err = capsys.readouterr().err
    assert "h.json: no head_sha256" in err and "--trust" in err and len(err.strip().splitlines()) == 1
    assert main(["evaluate", str(store_path), str(head), "--trust", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["n"] == 24


def test_a_many_class_heads_sidecar_is_sized_by_its_clips(tmp_path: Path, capsys) -> None:
    """2000 classes x 2 clips: the sidecar holds no classes x classes matrix (it was 4 million cells), and
    evaluate still draws the confusion plot (of the classes that occur)."""
    path, K = tmp_path / "many", 2000
    rng = np.random.default_rng(0)
    store = create_or_open(path, PROV)
    with ShardWriter(store) as w:
        for c in range(K):
            for j, split in enumerate(("train", "test")):
                frames = rng.normal(size=(1, 8)).astype(np.float32)
                w.add(f"c{c}/v{j}.mp4", None, None, f"class{c:04d}", split, frames, np.zeros(1))
    head = tmp_path / "many.npz"
    out = train_head(path, head, head="logreg")
    side = head.with_suffix(".json")
    recorded = json.loads(side.read_text())["metrics"]["test"]
    assert side.stat().st_size < 1_000_000, side.stat().st_size  # ~240 bytes a class: names and the class report
    assert out["n_test"] == K and sum(n for _, _, n in recorded["confusion"]) == K  # one cell count per clip
    png = tmp_path / "cm.png"
    capsys.readouterr()
    assert main(["evaluate", str(path), str(head), "--confusion", str(png), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["confusion"] == recorded["confusion"] and png.stat().st_size > 5000
