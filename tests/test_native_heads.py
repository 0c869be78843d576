""".npz heads: numpy predictors give the fitted scikit-learn estimator's probabilities, and load without it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pipeline.errors import HeadError
from pipeline.probe.heads.files import load_head, save_head
from pipeline.probe.heads.fitting import FitResult, fit_head
from pipeline.probe.heads.logreg import linear_classifier
from pipeline.probe.heads.settings import HeadConfig

REPO = Path(__file__).resolve().parents[1]
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")
# Both sides run the same float operations on the same machine; the slack only absorbs BLAS blocking
# differences between a (N, D) product and its rows, never a different formula.
RTOL, ATOL = 1e-5, 1e-6


@pytest.fixture(scope="module")
def features(effnet) -> tuple[np.ndarray, np.ndarray]:
    """Real effnet-lite0 embeddings (1280-d) of random crops of four photographs; label = photo."""
    from pipeline.demo.videos import load_photo

    rng = np.random.default_rng(0)
    frames, labels = [], []
    for name in PHOTOS:
        photo = np.asarray(load_photo(name, 160))
        h, w = photo.shape[:2]
        for _ in range(12):
            s = int(rng.integers(min(h, w) // 3, min(h, w) // 2))
            y, x = int(rng.integers(0, h - s)), int(rng.integers(0, w - s))
            crop = photo[y : y + s, x : x + s]
            frames.append(np.asarray(_resize(crop, 224)))
            labels.append(name)
    return effnet.encode(np.stack(frames)).astype(np.float32), np.array(labels)


def _resize(crop: np.ndarray, size: int) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(crop).resize((size, size), Image.Resampling.BILINEAR))


def _split(X: np.ndarray, y: np.ndarray, classes: tuple[str, ...] = PHOTOS):
    """Train (2 of every 4 rows), val (1 of 4), test (1 of 4): every class in each."""
    keep = np.isin(y, classes)
    X, y = X[keep], y[keep]
    part = np.arange(len(y)) % 4
    tr, va, te = part < 2, part == 2, part == 3
    return X[tr], y[tr], X[va], y[va], X[te], y[te]


def _roundtrip(tmp_path: Path, result: FitResult, name: str):
    head = tmp_path / f"{name}.npz"
    save_head(head, result, {"head": name})
    return head, load_head(head)


@pytest.mark.parametrize("kind", ["logreg", "mlp", "knn"])
@pytest.mark.parametrize("n_classes", [4, 2])
def test_npz_head_matches_the_sklearn_estimator(features, tmp_path: Path, kind: str, n_classes: int) -> None:
    X_tr, y_tr, X_va, y_va, X_te, y_te = _split(*features, PHOTOS[:n_classes])
    cfg = {"logreg": HeadConfig(), "mlp": HeadConfig(kind="mlp", hidden=32), "knn": HeadConfig(kind="knn")}[kind]
    result = fit_head(cfg, X_tr, y_tr, X_va, y_va)
    head, loaded = _roundtrip(tmp_path, result, kind)
    side = json.loads(head.with_suffix(".json").read_text())
    assert side["format"] == "npz" and side["model"]["kind"] == {"logreg": "linear"}.get(kind, kind)
    assert loaded.classes == result.classes == sorted(set(y_tr))
    for X in (X_te, X_tr, X_te.astype(np.float64)):  # training rows: knn at (near) zero distance
        expected = result.estimator.predict_proba(X)
        got = loaded.predict_proba(X)
        assert got.shape == (len(X), n_classes)
        np.testing.assert_allclose(got, expected, rtol=RTOL, atol=ATOL)
    assert (loaded.predict_proba(X_te).argmax(1) == result.estimator.predict_proba(X_te).argmax(1)).all()
    assert np.mean(np.array(loaded.classes)[loaded.predict_proba(X_te).argmax(1)] == y_te) > 1 / n_classes


def test_npz_zeroshot_form_matches(features, tmp_path: Path) -> None:
    """Zero-shot heads are Normalizer + linear_classifier(logit_scale * class embeddings)."""
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import Normalizer

    X, y = features
    T = np.stack([X[y == c].mean(0) for c in PHOTOS])
    T /= np.linalg.norm(T, axis=1, keepdims=True)
    est = make_pipeline(Normalizer(), linear_classifier(100.0 * T, np.zeros(4), list(PHOTOS)))
    _, loaded = _roundtrip(tmp_path, FitResult(est, list(PHOTOS), {}), "zeroshot")
    Xq = np.concatenate([X, np.zeros((1, X.shape[1]), np.float32)])  # a zero row stays zero, as in sklearn
    np.testing.assert_allclose(loaded.predict_proba(Xq), est.predict_proba(Xq), rtol=RTOL, atol=ATOL)


def test_knn_exact_duplicates_vote_alone(tmp_path: Path) -> None:
    """Queries at distance exactly 0 from training rows: only those rows vote (scikit-learn's rule)."""
    X = np.array([[1, 0, 0], [2, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0], [0, 1, 1]], np.float32)
    y = ["a", "b", "b", "c", "a", "c"]
    result = fit_head(HeadConfig(kind="knn", ks=(4,)), X, y)
    _, loaded = _roundtrip(tmp_path, result, "knn")
    Q = np.array([[3, 0, 0], [0, 5, 0], [1, 1, 1], [0.2, 1, 0]], np.float32)
    got, expected = loaded.predict_proba(Q), result.estimator.predict_proba(Q)
    np.testing.assert_allclose(got, expected, rtol=RTOL, atol=ATOL)
    np.testing.assert_array_equal(got[0], [0.5, 0.5, 0.0])  # [1,0,0] (a) and [2,0,0] (b) both at distance 0


def test_loading_an_npz_head_imports_neither_sklearn_nor_skops(features, tmp_path: Path) -> None:
    X_tr, y_tr, _, _, X_te, _ = _split(*features)
    heads = []
    for kind in ("logreg", "mlp", "knn"):
        result = fit_head(HeadConfig.from_dict(kind), X_tr, y_tr)
        heads.append(_roundtrip(tmp_path, result, kind)[0])
        np.save(tmp_path / f"{kind}-expected.npy", result.estimator.predict_proba(X_te))
    np.save(tmp_path / "X.npy", X_te)
    code = (
        "import json, sys\nimport numpy as np\nfrom pipeline.probe.heads.files import load_head\n"
        "X = np.load(sys.argv[1])\nok = []\n"
        "for h in sys.argv[2:]:\n"
        "    p = load_head(h).predict_proba(X)\n"
        "    ok.append(bool(np.allclose(p, np.load(h[:-4] + '-expected.npy'), rtol=1e-5, atol=1e-6)))\n"
        "print(json.dumps([ok, [m for m in ('sklearn', 'skops', 'torch', 'scipy') if m in sys.modules]]))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "X.npy"), *map(str, heads)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    ok, loaded = json.loads(proc.stdout.strip().splitlines()[-1])
    assert ok == [True, True, True] and loaded == []


def test_damaged_or_pickled_npz_is_one_headerror(features, tmp_path: Path) -> None:
    X_tr, y_tr, *_ = _split(*features)
    head, _ = _roundtrip(tmp_path, fit_head(HeadConfig(), X_tr, y_tr), "h")
    side = head.with_suffix(".json")
    meta = json.loads(side.read_text())
    # an object array needs pickle to load: refused, nothing runs
    with open(head, "wb") as f:
        np.savez(f, W=np.array([{"x": 1}], dtype=object), classes=np.array(PHOTOS))
    meta["head_sha256"] = __import__("hashlib").sha256(head.read_bytes()).hexdigest()
    side.write_text(json.dumps(meta))
    with pytest.raises(HeadError, match=r"h\.npz: cannot load head .*pickle"):
        load_head(head)
    # arrays missing for the recorded model
    with open(head, "wb") as f:
        np.savez(f, classes=np.array(PHOTOS))
    meta["head_sha256"] = __import__("hashlib").sha256(head.read_bytes()).hexdigest()
    side.write_text(json.dumps(meta))
    with pytest.raises(HeadError, match=r"h\.npz: linear head: array 'W' missing"):
        load_head(head)
    # a sidecar without a model entry
    del meta["model"]
    side.write_text(json.dumps(meta))
    with pytest.raises(HeadError, match="no 'model' entry"):
        load_head(head)


def test_an_estimator_without_native_form_is_refused_for_npz(tmp_path: Path) -> None:
    from sklearn.neighbors import KNeighborsClassifier

    est = KNeighborsClassifier(n_neighbors=1, algorithm="kd_tree").fit(np.eye(3), ["a", "b", "c"])
    with pytest.raises(HeadError, match=r"KNeighborsClassifier head has no native \(\.npz\) form"):
        save_head(tmp_path / "odd.npz", FitResult(est, ["a", "b", "c"], {}), {})
    assert not (tmp_path / "odd.npz").exists() and not (tmp_path / "odd.npz.tmp").exists()
