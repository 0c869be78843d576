import json
import subprocess
import sys

import numpy as np
import pytest

from pipeline.data.splits import make_splits
from pipeline.errors import HeadError
from pipeline.probe.metrics import metrics, topk_accuracy
from pipeline.probe.report import confusion_matrix
from pipeline.probe.train import evaluate_head, train_head
from pipeline.store import ShardWriter, create_or_open

PROV = {
    "encoder": "test-enc",
    "weights_id": "w1",
    "dim": 6,
    "preprocess": {},
    "sampling": {"strategy": "uniform", "num_frames": 4},
}


@pytest.fixture
def store_path(tmp_path):
    """3 separable classes; class 2 differs from class 1 only in temporal order."""
    rng = np.random.default_rng(0)
    store = create_or_open(tmp_path / "s", PROV)
    base = rng.normal(size=(3, 6))
    with ShardWriter(store) as w:
        for c in range(3):
            for j in range(20):
                frames = base[c] + 0.3 * rng.normal(size=(4, 6))
                if c == 2:
                    frames = (base[1] + 0.3 * rng.normal(size=(4, 6))) + np.linspace(-1, 1, 4)[:, None]
                if c == 1:
                    frames = frames + np.linspace(1, -1, 4)[:, None]
                w.add(f"c{c}/v{j}.mp4", None, None, f"class{c}", "", frames.astype(np.float32), np.arange(4) * 0.5)
    return tmp_path / "s"


def test_train_evaluate_roundtrip_in_fresh_process(store_path, tmp_path):
    head = tmp_path / "h.skops"
    out = train_head(store_path, head, head="logreg", pool="seg2")
    assert out["split_source"].startswith("random")
    assert out["n_train"] + out["n_val"] + out["n_test"] == 60
    assert out["test"]["top1"] >= 0.9
    side = json.loads(head.with_suffix(".json").read_text())
    assert (
        side["pool"] == "seg2" and side["encoder"] == "test-enc" and side["classes"] == ["class0", "class1", "class2"]
    )
    # a fresh process reproduces the recorded test metrics exactly
    code = (
        "from pipeline.probe.train import evaluate_head; import json; "
        f"print(json.dumps(evaluate_head({str(store_path)!r}, {str(head)!r})['top1']))"
    )
    top1 = float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    assert top1 == out["test"]["top1"]


def test_order_blind_pool_cannot_separate_reversed_classes(store_path, tmp_path):
    mean = train_head(store_path, tmp_path / "m.skops", pool="mean")
    seg = train_head(store_path, tmp_path / "s.skops", pool="seg2")
    assert seg["test"]["top1"] > mean["test"]["top1"]


def test_mlp_head(store_path, tmp_path):
    out = train_head(store_path, tmp_path / "mlp.skops", head="mlp", pool="seg2")
    assert out["test"]["top1"] >= 0.8


def test_evaluate_refuses_features_from_other_encoder(store_path, tmp_path):
    head = tmp_path / "h.skops"
    train_head(store_path, head)
    other = create_or_open(tmp_path / "o", {**PROV, "encoder": "other"})
    with ShardWriter(other) as w:
        w.add("x.mp4", None, None, "class0", "test", np.zeros((4, 6), np.float32), np.arange(4.0))
    with pytest.raises(HeadError, match="encoder"):
        evaluate_head(tmp_path / "o", head)


def test_splits_keep_manifest_splits_and_videos_together():
    labels = ["a"] * 6 + ["b"] * 6
    splits = ["train"] * 4 + ["test"] * 2 + ["train"] * 4 + ["test"] * 2
    videos = [f"v{i // 2}" for i in range(12)]  # two windows per video
    sp = make_splits(labels, splits, videos, seed=1)
    assert sp.source == "manifest+carved-val"
    assert set(sp.test) == {4, 5, 10, 11}
    train_videos = {videos[i] for i in sp.train}
    assert not train_videos & {videos[i] for i in sp.val}


def test_metrics_topk_and_mean_class():
    proba = np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6], [0.5, 0.4, 0.1], [0.2, 0.7, 0.1]])
    m = metrics(proba, ["a", "b", "b", "b"], ["a", "b", "c"])
    assert m["top1"] == pytest.approx(0.5)
    assert m["mean_class_acc"] == pytest.approx((1.0 + 1 / 3) / 2)
    assert topk_accuracy(proba, np.array([0, 1, 1, 1]), 2) == pytest.approx(1.0)
    assert m["confusion"] == [[0, 0, 1], [1, 0, 1], [1, 1, 1], [1, 2, 1]]  # the nonzero [true, predicted, count]
    assert confusion_matrix(m["confusion"], 3).tolist() == [[1, 0, 0], [1, 1, 1], [0, 0, 0]]


def _clips(seed=0):
    rng = np.random.default_rng(seed)
    base = rng.normal(size=(3, 6))
    out = []
    for c in range(3):
        for j in range(20):
            frames = base[c] + 0.5 * rng.normal(size=(4, 6)) + np.linspace(-1, 1, 4)[:, None] * (c - 1)
            out.append((f"c{c}/v{j:02d}.mp4", f"class{c}", frames.astype(np.float32)))
    return out


@pytest.mark.parametrize("head", ["logreg", "attn"])
def test_a_fit_does_not_depend_on_the_order_extraction_wrote_the_clips(tmp_path, head):
    """Decoder workers finish clips in any order; the same clips in another order give the same split and head."""
    from pipeline.data.splits import SplitSpec
    from pipeline.probe.train import clip_inputs, fit_on_store, store_splits
    from pipeline.store import open_store

    clips = _clips()
    pool = "tdiff" if head == "logreg" else "frames"
    fits, split_keys = [], []
    for name, order in (("a", clips), ("b", clips[::-1][::2] + clips[::-1][1::2])):
        store = create_or_open(tmp_path / name, PROV)
        with ShardWriter(store, shard_size=7) as w:
            for video, label, frames in order:
                w.add(video, None, None, label, "", frames, np.arange(4) * 0.5)  # no manifest split: carved
        store = open_store(tmp_path / name)
        assert store.videos[0] == order[0][0]  # the store keeps the order it was written in
        sp = store_splits(store, SplitSpec(seed=3))
        split_keys.append([[store.videos[i] for i in part] for part in (sp.train, sp.val, sp.test)])
        result, rec = fit_on_store(store, head, pool, split=SplitSpec(seed=3))
        by_video = np.argsort(store.videos)  # the same inputs for both heads, in one order
        probs = result.estimator.predict_proba(clip_inputs(store, pool, by_video.tolist()))
        fits.append((rec, probs))
    assert split_keys[0][:2] == split_keys[1][:2]  # train and val: the same clips, in the same (key) order
    assert sorted(split_keys[0][2]) == sorted(split_keys[1][2])
    (a, pa), (b, pb) = fits
    assert a["hparams"] == b["hparams"] and a["val_top1"] == b["val_top1"]
    assert np.array_equal(pa, pb)  # bit for bit: same rows in the same order, same seed


def test_evaluate_scores_a_test_only_store_and_every_clip_with_split_all(store_path, tmp_path, capsys):
    """A held-out set whose manifest names only test clips is scored whole (no 'train' clips needed to score);
    ``--split all`` scores every labeled clip of any store."""
    from pipeline.cli import main

    head = tmp_path / "h.npz"
    train_head(store_path, head, pool="mean")
    rng = np.random.default_rng(1)
    held = create_or_open(tmp_path / "held", PROV)
    with ShardWriter(held) as w:
        for c in range(3):
            for j in range(4):
                w.add(
                    f"new/c{c}/v{j}.mp4",
                    None,
                    None,
                    f"class{c}",
                    "test",
                    rng.normal(size=(4, 6)).astype(np.float32),
                    np.arange(4) * 0.5,
                )
    assert main(["evaluate", str(tmp_path / "held"), str(head), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["split"], out["n"]) == ("test", 12)
    assert evaluate_head(tmp_path / "held", head, split="all")["n"] == 12
    assert evaluate_head(store_path, head, split="all")["n"] == 60
