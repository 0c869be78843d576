"""Temporal heads (attn, gru): the numpy predictor is the torch module, padding changes nothing, the batched
sweep is the candidates trained one by one, a seed fixes the weights, order is learned where pooling is blind,
saved heads reproduce their metrics in a fresh process without torch, and explanations sum as documented."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from media import pattern_frames, write_video

from pipeline.cli import main
from pipeline.data.splits import SplitSpec
from pipeline.errors import ConfigError
from pipeline.probe.heads.files import load_head
from pipeline.probe.heads.settings import HeadConfig
from pipeline.probe.predict import predict_videos
from pipeline.probe.sequences import FrameSequences, relative_times
from pipeline.probe.temporal.arch import TemporalSettings, resolve_components, temporal_arch
from pipeline.probe.temporal.inputs import frame_steps, input_features, input_stats
from pipeline.probe.temporal.models import build_model, clip_trend
from pipeline.probe.temporal.predictor import TemporalHead
from pipeline.probe.temporal.train import train_candidates
from pipeline.probe.train import evaluate_head, train_head
from pipeline.store import ShardWriter, create_or_open

REPO = Path(__file__).resolve().parents[1]
D = 16


def _order_store(path: Path, n_per_class: int = 40, T: int = 6, seed: int = 0, prov: dict | None = None) -> Path:
    """4 classes = 2 frame sets x 2 directions: a class and its partner hold the same frames in reverse order,
    so any order-blind pooling is at chance within a pair. Clip lengths vary (T-2..T frames): padding is real."""
    rng = np.random.default_rng(seed)
    prov = prov or {
        "encoder": "test-enc",
        "weights_id": "w1",
        "dim": D,
        "preprocess": {},
        "sampling": {"strategy": "fps"},
    }
    store = create_or_open(path, prov)
    a, b = rng.normal(size=(2, 2, prov["dim"]))  # per frame set: a start and an end point
    with ShardWriter(store) as w:
        for c in range(4):
            start, end = a if c < 2 else b
            for j in range(n_per_class):
                split = "train" if j < 0.6 * n_per_class else "val" if j < 0.8 * n_per_class else "test"
                k = int(rng.integers(T - 2, T + 1))
                s = np.linspace(0, 1, k)[:, None]
                frames = (1 - s) * start + s * end + 0.6 * rng.normal(size=(k, prov["dim"]))
                if c % 2:
                    frames = frames[::-1]  # the partner class: the same clip played backwards
                ts = np.sort(rng.uniform(0, 4, size=k))
                w.add(f"c{c}/v{j}.mp4", None, None, f"class{c}", split, frames.astype(np.float32), ts)
    return path


def _randomise_trend(model: torch.nn.Module) -> torch.nn.Module:
    """The trend readout starts at zero; give it weights, so that the comparisons below see it."""
    if getattr(model, "trend", None) is not None:
        with torch.no_grad():
            model.trend.weight.normal_(0, 0.3)
            model.trend.bias.normal_(0, 0.3)
    return model


def _random_seqs(n: int = 5, T: int = 7, dim: int = D, seed: int = 0) -> FrameSequences:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, T + 1, size=n)
    clips = [(rng.normal(size=(k, dim)).astype(np.float32), np.sort(rng.uniform(0, 3, k))) for k in lengths]
    return FrameSequences.from_clips(clips)


@pytest.mark.parametrize(
    "settings",
    [
        {"kind": "attn", "depth": 2, "queries": 3, "num_heads": 2, "width": 8},
        {"kind": "attn", "inputs": "frames", "queries": 1, "components": 0},
        {"kind": "attn", "components": 6, "width": 8, "num_heads": 2},
        {"kind": "attn", "inputs": "residual", "queries": 2, "width": 8, "num_heads": 2},
        {"kind": "gru", "width": 8},
        {"kind": "gru", "width": 8, "bidirectional": False, "inputs": "frames"},
        {"kind": "attn", "width": 8, "num_heads": 2, "trend": False},
        {"kind": "gru", "width": 8, "trend": False},
    ],
)
def test_numpy_predictor_is_the_torch_module(settings: dict) -> None:
    cfg = HeadConfig.from_dict(settings)
    arch = temporal_arch(cfg.kind, cfg.settings, D, 3)
    seqs = _random_seqs()
    stats = input_stats(seqs, cfg.inputs, arch["components"])
    torch.manual_seed(0)
    model = _randomise_trend(build_model(arch).eval())
    assert (model.trend is not None) == cfg.trend
    head = TemporalHead(
        arch, {**{k: v.detach().numpy() for k, v in model.state_dict().items()}, **stats}, ["a", "b", "c"]
    )
    x = torch.from_numpy(input_features(seqs, stats, cfg.inputs))
    with torch.no_grad():
        expected = model(x, torch.from_numpy(seqs.t), torch.from_numpy(seqs.mask)).numpy()
    np.testing.assert_allclose(head.decision_function(seqs), expected, rtol=1e-4, atol=1e-5)
    if cfg.kind == "attn":
        w = head.explain(seqs)
        np.testing.assert_allclose(w.sum(axis=1), 1.0, rtol=1e-5)
        assert (w[~seqs.mask] == 0).all()


@pytest.mark.parametrize(
    "settings",
    [
        {"kind": "attn", "depth": 2, "queries": 3, "num_heads": 2, "width": 8},
        {"kind": "attn", "inputs": "frames", "queries": 1, "components": 0},
        {"kind": "gru", "width": 8},
        {"kind": "gru", "width": 8, "bidirectional": False},
        {"kind": "gru", "width": 8, "trend": False},
    ],
)
def test_batched_forward_is_each_candidates_module(settings: dict) -> None:
    """The sweep's stacked forward (shared input product, folded queries) computes each module's logits."""
    from torch.func import stack_module_state

    from pipeline.probe.temporal.batched import batched_logits

    cfg = HeadConfig.from_dict(settings)
    arch = temporal_arch(cfg.kind, cfg.settings, D, 3)
    seqs = _random_seqs(n=6, T=7)  # 1..7 frames: padding is real
    stats = input_stats(seqs, cfg.inputs, arch["components"])
    torch.manual_seed(0)
    models = [_randomise_trend(build_model(arch).eval()) for _ in range(3)]  # three different initialisations
    params, _ = stack_module_state(models)
    x = torch.from_numpy(input_features(seqs, stats, cfg.inputs))
    t, m = torch.from_numpy(seqs.t), torch.from_numpy(seqs.mask)
    with torch.no_grad():
        together = batched_logits(arch, params, x, t, m, train=False)
        for g, model in enumerate(models):
            np.testing.assert_allclose(together[g].numpy(), model(x, t, m).numpy(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kind", ["attn", "gru"])
def test_padding_changes_nothing(kind: str) -> None:
    seqs = _random_seqs(n=4, T=5)
    longer = FrameSequences.concat([seqs, _random_seqs(n=1, T=9, seed=3)])[:4]  # same clips, padded to 9
    assert longer.x.shape[1] > seqs.x.shape[1]
    cfg = HeadConfig(kind=kind, width=8, num_heads=2)
    arch = temporal_arch(cfg.kind, cfg.settings, D, 2)
    torch.manual_seed(1)
    weights = {k: v.detach().numpy() for k, v in _randomise_trend(build_model(arch)).state_dict().items()}
    head = TemporalHead(arch, {**weights, **input_stats(seqs, cfg.inputs, arch["components"])}, ["a", "b"])
    np.testing.assert_allclose(head.predict_proba(longer), head.predict_proba(seqs), rtol=1e-5, atol=1e-7)


def test_frame_steps_change_sign_when_a_clip_is_played_backwards() -> None:
    seqs = _random_seqs(n=6, T=7)  # clips of 1..7 frames, zero-padded
    steps = frame_steps(seqs)
    backwards = FrameSequences.from_clips(
        [(seqs.x[i, :k][::-1], seqs.times[i, :k]) for i, k in enumerate(seqs.lengths)]
    )
    for i, k in enumerate(seqs.lengths):
        assert (steps[i, 0] == 0).all() and (steps[i, k:] == 0).all()  # no step into the first frame or padding
        np.testing.assert_allclose(frame_steps(backwards)[i, 1:k], -steps[i, 1:k][::-1], atol=1e-6)
    stats = input_stats(seqs, "delta", 0)
    assert input_features(seqs, stats, "delta").shape == (*seqs.x.shape[:2], 3 * D)


def test_clip_trend_is_the_mean_and_the_slope_and_flips_with_the_order() -> None:
    """The trend readout's input: a clip moving linearly from a to b has mean (a + b) / 2 and slope (b - a)
    (x 1/4), whatever its frame count or padding; played backwards the slope changes sign; one frame: 0."""
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(2, D)).astype(np.float32)
    clips = []
    for k in (2, 5, 8):
        s = np.linspace(0, 1, k, dtype=np.float32)[:, None]
        clips.append(((1 - s) * a + s * b, np.linspace(1.0, 3.0, k)))
    clips.append((a[None], np.array([0.0])))
    seqs = FrameSequences.from_clips(clips)
    forward = clip_trend(torch.from_numpy(seqs.x), torch.from_numpy(seqs.t), torch.from_numpy(seqs.mask)).numpy()
    for i in range(3):
        np.testing.assert_allclose(forward[i, :D], (a + b) / 2, atol=1e-5)
        np.testing.assert_allclose(forward[i, D:], (b - a) / 4, atol=1e-5)
    np.testing.assert_allclose(forward[3], np.concatenate([a, np.zeros(D)]), atol=1e-6)
    back = FrameSequences.from_clips([(x[::-1].copy(), t) for x, t in clips[:3]])
    backward = clip_trend(torch.from_numpy(back.x), torch.from_numpy(back.t), torch.from_numpy(back.mask)).numpy()
    np.testing.assert_allclose(backward[:, D:], -forward[:3, D:], atol=1e-5)


def test_components_auto_standardises_small_sets_and_whitens_big_ones() -> None:
    cfg = HeadConfig(kind="attn")
    assert resolve_components(cfg, 1280, (216, 8)) == 0  # the demo's how-task: 26 MB at full width
    assert resolve_components(cfg, 1280, (1_000_000, 8)) == 64  # 123 GB at full width
    assert resolve_components(cfg, 512, (2000, 8)) == 0  # under 4 clips per dimension, 25 MB
    assert resolve_components(cfg, 512, (6000, 8)) == 64  # enough clips to estimate the whitening
    assert resolve_components(cfg, 512, (1500, 8 * 64)) == 64  # few clips, but 4.7 GB at full width
    assert resolve_components(HeadConfig(kind="attn", components=32), 1280, (216, 8)) == 32
    assert (
        temporal_arch(cfg.kind, cfg.settings, D, 3, (1_000_000, 8))["dim"] == 3 * D
    )  # 16-d inputs: 64 directions is all of them


def test_relative_times_need_no_fixed_frame_count() -> None:
    np.testing.assert_allclose(relative_times(np.array([2.0, 3.0, 6.0])), [0.0, 0.25, 1.0])
    assert relative_times(np.array([5.0])).tolist() == [0.5]


def _seqs_and_labels(tmp_path: Path):
    from pipeline.probe.sequences import store_sequences
    from pipeline.store import open_store

    store = open_store(_order_store(tmp_path / "s", n_per_class=20))
    S = store_sequences(store)
    y = np.array([int(lab[-1]) for lab in store.labels])
    split = np.array(store.splits)
    return S, y, split


def test_batched_sweep_equals_the_candidates_fitted_one_by_one(tmp_path: Path) -> None:
    S, y, split = _seqs_and_labels(tmp_path)
    tr, va = split == "train", split == "val"
    cfg = HeadConfig(kind="attn", width=8, num_heads=2, queries=2)
    arch = temporal_arch(cfg.kind, cfg.settings, D, 4)
    # dropout, frame dropout and time jitter on: their draws are shared by the candidates, so each trains as
    # it would alone. fp32: bf16 rounds a batched product and a single one differently
    recipe = TemporalSettings(lrs=(3e-3, 1e-3), wds=(0.01, 0.4), epochs=4, batch_size=16, precision="fp32")
    stats = input_stats(S[np.flatnonzero(tr)], cfg.inputs, arch["components"])
    data = (S[np.flatnonzero(tr)], y[tr]), (S[np.flatnonzero(va)], y[va])
    together = train_candidates(arch, recipe, recipe.candidates, *data, stats, seed=0)
    for g, cand in enumerate(recipe.candidates):
        alone = train_candidates(arch, recipe, [cand], *data, stats, seed=0)
        assert alone.best_epoch[0] == together.best_epoch[g]
        for name, value in alone.states[0].items():
            np.testing.assert_allclose(together.states[g][name], value, rtol=1e-3, atol=1e-4, err_msg=name)


@pytest.mark.parametrize(("kind", "precision"), [("attn", "fp32"), ("attn", "bf16"), ("gru", "bf16")])
def test_a_seed_fixes_the_weights(tmp_path: Path, kind: str, precision: str) -> None:
    S, y, split = _seqs_and_labels(tmp_path)
    tr = np.flatnonzero(split == "train")
    cfg = HeadConfig(kind=kind, width=8, num_heads=2)
    arch = temporal_arch(cfg.kind, cfg.settings, D, 4)
    recipe = TemporalSettings(lrs=(1e-3,), wds=(0.1,), epochs=2, batch_size=16, precision=precision)
    stats = input_stats(S[tr], cfg.inputs, arch["components"])
    runs = [train_candidates(arch, recipe, recipe.candidates, (S[tr], y[tr]), None, stats, seed=s) for s in (0, 0, 1)]
    for name in runs[0].states[0]:
        assert np.array_equal(runs[0].states[0][name], runs[1].states[0][name]), name
    assert any(not np.array_equal(runs[0].states[0][k], runs[2].states[0][k]) for k in runs[0].states[0])


def _fresh_process(code: str, *args: str) -> str:
    proc = subprocess.run([sys.executable, "-c", code, *args], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip().splitlines()[-1]


def test_temporal_heads_learn_order_and_reproduce_their_metrics_in_a_fresh_process(tmp_path: Path) -> None:
    store = _order_store(tmp_path / "order")
    pooled = train_head(store, tmp_path / "mean.npz", head="logreg", pool="mean")
    small = {"width": 32, "lrs": [3e-3, 1e-3], "wds": [0.01, 0.1], "epochs": 30, "batch_size": 16}
    heads = {kind: tmp_path / f"{kind}.npz" for kind in ("attn", "gru")}
    for kind, path in heads.items():
        out = train_head(store, path, head=HeadConfig.from_dict({"kind": kind, **small}))
        assert out["pool"] == "frames" and set(out["hparams"]) == {"lr", "wd"} and out["n_test"] == 32
        # order decides half the label: mean pooling is at chance within each pair (~0.5), these are not
        assert out["test"]["top1"] >= 0.85 > pooled["test"]["top1"] + 0.2, (kind, out["test"]["top1"])
        side = json.loads(path.with_suffix(".json").read_text())
        assert side["format"] == "npz" and side["model"]["kind"] == kind and side["pool"] == "frames"
        assert len(side["val_scores"]) == 4 and side["fit_info"]["fits"] == 5  # 4 candidates + the refit
    code = (
        "import json, sys\nfrom pipeline.probe.train import evaluate_head\n"
        "out = [evaluate_head(sys.argv[1], h) for h in sys.argv[2:]]\n"
        "print(json.dumps([out, 'torch' in sys.modules]))"
    )
    fresh, torch_loaded = json.loads(_fresh_process(code, str(store), *map(str, heads.values())))
    assert not torch_loaded  # a saved temporal head predicts with numpy alone
    for path, metrics in zip(heads.values(), fresh):
        recorded = json.loads(path.with_suffix(".json").read_text())["metrics"]["test"]
        for key in ("top1", "mean_class_acc", "per_class", "report", "confusion", "n"):
            assert metrics[key] == recorded[key], (path.name, key)
    few = train_head(
        store, tmp_path / "few.npz", head=HeadConfig.from_dict({"kind": "attn", **small}), split=SplitSpec(shots=4)
    )
    assert few["n_train"] == 16 and few["fit_info"]["fits"] == 4  # few-shot: val selects, no refit
    assert evaluate_head(store, tmp_path / "few.npz")["top1"] == few["test"]["top1"]


def test_temporal_settings_are_checked_before_any_work(tmp_path: Path) -> None:
    store = _order_store(tmp_path / "s", n_per_class=5)
    with pytest.raises(ConfigError, match="reads every frame"):
        train_head(store, tmp_path / "a.npz", head="attn", pool="seg2")
    with pytest.raises(ConfigError, match="NAME.npz"):
        train_head(store, tmp_path / "a.skops", head="attn")
    with pytest.raises(ConfigError, match="only the temporal heads"):
        train_head(store, tmp_path / "l.npz", head="logreg", pool="frames")
    with pytest.raises(ConfigError, match="must divide width"):
        HeadConfig.from_dict({"kind": "attn", "width": 10, "num_heads": 4})
    with pytest.raises(ConfigError, match="does not apply to head 'gru'"):
        HeadConfig.from_dict({"kind": "gru", "queries": 2})
    with pytest.raises(ConfigError, match="frame_dropout"):
        HeadConfig.from_dict({"kind": "attn", "frame_dropout": 1.0})


@pytest.mark.parametrize(
    "head, needle",
    [
        ("{kind: attn, epochs: 1e9}", "epochs=1000000000: must be 1..10000"),
        ("{kind: gru, width: 100000}", "width=100000: must be 1..4096"),
        (
            "{kind: attn, lrs: [1, 2, 3, 4, 5, 6, 7, 8, 9], wds: [1, 2, 3, 4, 5, 6, 7, 8]}",
            "72 candidates, must be <= 64",
        ),
        ("{kind: mlp, hidden: 1e9}", "hidden=1000000000: must be 1..8192"),
        ("{kind: logreg, max_iter: 1e12}", "max_iter=1000000000000: must be 1..100000"),
        ("{kind: knn, ks: [" + ", ".join(map(str, range(1, 101))) + "]}", "need at most 64 values (got 100)"),
    ],
)
def test_unbounded_settings_are_refused_in_under_a_second(tmp_path: Path, capsys, head: str, needle: str) -> None:
    store = _order_store(tmp_path / "s", n_per_class=5)
    config = tmp_path / "bench.yaml"
    config.write_text(f"stores:\n  - {{dataset: x, path: {store}}}\npoolings: [mean]\nheads:\n  - {head}\n")
    t = time.perf_counter()
    assert main(["benchmark", str(config), "-o", str(tmp_path / "out")]) == 2
    assert time.perf_counter() - t < 1.0  # refused before any fit (epochs: 1e9 used to run until killed)
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert needle in line and len(line) < 300, line


class _Terminal(io.StringIO):
    def isatty(self) -> bool:  # what tqdm checks before it draws
        return True


def test_a_fit_shows_its_progress_on_a_terminal_unless_quiet(tmp_path: Path, monkeypatch) -> None:
    from pipeline.probe.heads import fitting

    store = _order_store(tmp_path / "s", n_per_class=5)
    head = HeadConfig(kind="gru", width=4, epochs=3, lrs=(1e-3,), wds=(0.1,))
    monkeypatch.setattr(fitting, "PROGRESS_DELAY_S", 0.0)  # the bar shows at once, not after 3 s
    for quiet in (False, True):
        err = _Terminal()
        monkeypatch.setattr(sys, "stderr", err)
        with fitting.quiet_fits(quiet):
            train_head(store, tmp_path / "g.npz", head=head)
        text = err.getvalue()
        assert ("gru fit (1 candidates)" in text and "epoch" in text) != quiet, text


def test_damaged_temporal_head_is_one_error_naming_the_file(tmp_path: Path) -> None:
    from pipeline.errors import HeadError

    store = _order_store(tmp_path / "s", n_per_class=5)
    head = tmp_path / "g.npz"
    train_head(store, head, head=HeadConfig(kind="gru", width=4, epochs=1, lrs=(1e-3,), wds=(0.1,)))
    side = head.with_suffix(".json")
    meta = json.loads(side.read_text())
    meta["model"]["bidirectional"] = False  # the sidecar no longer describes the arrays
    side.write_text(json.dumps(meta))
    with pytest.raises(HeadError, match="g.npz"):
        load_head(head)


def decoded_frames(effnet, video: Path, prov: dict) -> np.ndarray:
    from pipeline.config import SamplingConfig
    from pipeline.extract.clips import embed_clips

    ((_, _, decoded),) = embed_clips(effnet, video, SamplingConfig(**prov["sampling"]))
    return decoded.frames


def test_predict_explain_on_a_real_video(tmp_path: Path, effnet) -> None:
    prov = {
        "encoder": "effnet-lite0",
        "weights_id": effnet.weights_id,
        "dim": 1280,
        "preprocess": {},
        "sampling": {"strategy": "uniform", "num_frames": 6},
    }
    store = _order_store(tmp_path / "s", n_per_class=8, prov=prov)
    attn, logreg = tmp_path / "attn.npz", tmp_path / "mean.npz"
    train_head(store, attn, head=HeadConfig(kind="attn", width=16, epochs=2, lrs=(1e-3,), wds=(0.1,)))
    train_head(store, logreg, head="logreg", pool="mean")
    video = tmp_path / "real.mp4"
    write_video(video, pattern_frames(36, kind=1), fps=12)  # 3 s
    (out,) = predict_videos(attn, [video], encoder=effnet, explain=True, plot_dir=tmp_path / "plots")
    assert out["explained_by"] == "attention" and Path(out["plot"]).stat().st_size > 1000
    (clip,) = out["clips"]
    times = [f["time"] for f in clip["frames"]]
    assert len(times) == 6 and times == sorted(times) and times[0] >= 0 and times[-1] <= 3.0
    assert sum(f["weight"] for f in clip["frames"]) == pytest.approx(1.0, abs=1e-5)
    assert clip["top_prob"] == pytest.approx(out["top"][0]["prob"])
    # the winning logit, split between the attention part (what the weights explain) and the trend readout
    head = load_head(attn).estimator
    seqs = FrameSequences.from_clips([(decoded_frames(effnet, video, prov), np.array(times))])
    winner = head.classes.index(out["top"][0]["label"])
    parts = clip["logit"]
    assert parts["attention"] + parts["trend"] == pytest.approx(head.decision_function(seqs)[0, winner], rel=1e-5)
    assert parts["trend"] != 0  # the default head has a trend readout, and it was trained
    # logreg on mean pooling: the frames' contributions add up to the winning logit minus its bias
    (lin,) = predict_videos(logreg, [video], encoder=effnet, explain=True)
    est = load_head(logreg).estimator
    winner = est.classes.index(lin["top"][0]["label"])
    logits = est.decision_function(decoded_frames(effnet, video, prov).mean(axis=0, keepdims=True))[0]
    total = sum(f["weight"] for f in lin["clips"][0]["frames"])
    assert total == pytest.approx(logits[winner] - est.b[winner], rel=1e-4, abs=1e-6)
    assert "plot" not in lin
    # the JSON the CLI prints, and a head without a per-frame explanation refused in one line
    gru = tmp_path / "gru.npz"
    train_head(store, gru, head=HeadConfig(kind="gru", width=4, epochs=1, lrs=(1e-3,), wds=(0.1,)))
    with pytest.raises(ConfigError, match="no per-frame explanation"):
        predict_videos(gru, [video], encoder=effnet, explain=True)
    assert main(["predict", str(gru), str(video), "--explain"]) == 2


def test_explanations_of_two_videos_named_alike_never_share_a_file(tmp_path: Path, effnet) -> None:
    prov = {
        "encoder": "effnet-lite0",
        "weights_id": effnet.weights_id,
        "dim": 1280,
        "preprocess": {},
        "sampling": {"strategy": "uniform", "num_frames": 4},
    }
    store = _order_store(tmp_path / "s", n_per_class=5, prov=prov)
    head = tmp_path / "mean.npz"
    train_head(store, head, head="logreg", pool="mean")
    videos = [tmp_path / folder / "clip.mp4" for folder in ("a", "b")]
    for kind, video in enumerate(videos):
        write_video(video, pattern_frames(24, kind=kind), fps=12)
    plots = tmp_path / "plots"
    out = predict_videos(head, videos, encoder=effnet, explain=True, plot_dir=plots)
    pngs = [Path(r["plot"]) for r in out]
    assert pngs[0] != pngs[1] and sorted(plots.iterdir()) == sorted(pngs)
    assert all(p.name.startswith("clip-") and p.name.endswith("-explain.png") for p in pngs)
    # the same file named another way gets the same name (one video, one timeline)
    (again,) = predict_videos(
        head, [tmp_path / "a" / ".." / "a" / "clip.mp4"], encoder=effnet, explain=True, plot_dir=plots
    )
    assert Path(again["plot"]) == pngs[0]
