"""predict answers a mistake before importing the model stack: inputs are checked first."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from pipeline.probe.heads.files import save_head
from pipeline.probe.heads.fitting import fit_head
from pipeline.probe.heads.settings import HeadConfig

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "open_clip", "timm", "sklearn")


def _head(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    result = fit_head(HeadConfig(kind="knn", ks=(1,)), rng.normal(size=(6, 4)), ["a", "b"] * 3)
    meta = {
        "encoder": "effnet-lite0",
        "weights_id": "w",
        "sampling": {"strategy": "uniform", "num_frames": 2},
        "pool": "mean",
    }
    save_head(tmp_path / "h.npz", result, meta)
    return tmp_path / "h.npz"


def _predict_in_fresh_process(*args: str) -> tuple[subprocess.CompletedProcess, list[str]]:
    code = (
        "import json, sys\nfrom pipeline.cli import main\nrc = main(sys.argv[1:])\n"
        f"print(json.dumps([rc, [m for m in {HEAVY!r} if m in sys.modules]]))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, "predict", *args], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    rc, loaded = json.loads(proc.stdout.strip().splitlines()[-1])
    return proc, [rc, loaded]


def test_missing_video_is_one_line_error_without_torch(tmp_path):
    proc, (rc, loaded) = _predict_in_fresh_process(str(_head(tmp_path)), str(tmp_path / "missing.mp4"))
    assert rc != 0 and loaded == []
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "missing.mp4" in lines[0] and "not found" in lines[0], proc.stderr


def test_missing_head_or_sidecar_is_one_line_error_without_torch(tmp_path):
    video = tmp_path / "v.mp4"
    video.write_bytes(b"x")
    proc, (rc, loaded) = _predict_in_fresh_process(str(tmp_path / "nohead.skops"), str(video))
    assert rc == 1 and loaded == [] and len(proc.stderr.strip().splitlines()) == 1 and "nohead.skops" in proc.stderr
    head = _head(tmp_path)
    head.with_suffix(".json").unlink()
    proc, (rc, loaded) = _predict_in_fresh_process(str(head), str(video))
    assert rc == 1 and loaded == [] and "sidecar" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_many_videos_one_model_one_decoder_same_answers(tmp_path, effnet, monkeypatch):
    """predict on several videos builds the encoder once and decodes them all in one background worker; its
    probabilities equal embedding each video on its own (``embed_clips``) and applying the head."""
    from media import pattern_frames, write_video

    import pipeline.encoders as encoders
    from pipeline.config import SamplingConfig
    from pipeline.extract.clips import embed_clips
    from pipeline.probe.heads.files import load_head
    from pipeline.probe.pooling import get_pool
    from pipeline.probe.predict import predict_videos

    videos = [write_video(tmp_path / f"v{k}.mp4", pattern_frames(24, kind=k, seed=k), fps=12) for k in range(3)]
    sampling = SamplingConfig(num_frames=3)
    X = np.concatenate([embed_clips(effnet, v, sampling)[0][2].frames for v in videos])
    result = fit_head(HeadConfig(kind="logreg"), X, ["k0"] * 3 + ["k1"] * 3 + ["k2"] * 3)
    meta = {
        "encoder": "effnet-lite0",
        "weights_id": effnet.weights_id,
        "sampling": dataclasses.asdict(sampling),
        "preprocess": effnet.preprocess_cfg.to_dict(),
        "pool": "mean",
    }
    save_head(tmp_path / "h.npz", result, meta)
    built = []
    monkeypatch.setattr(encoders, "create_encoder", lambda spec, device="auto": built.append(spec) or effnet)
    paths = [videos[0], tmp_path / "gone.mp4", videos[1], videos[2]]
    out = predict_videos(tmp_path / "h.npz", paths, top_k=3)
    assert built == ["effnet-lite0"]
    assert [r["path"] for r in out] == [str(p) for p in paths] and "not found" in out[1]["error"]
    head = load_head(tmp_path / "h.npz")
    for r, video in zip([out[0], out[2], out[3]], videos):
        expected = head.predict_proba(get_pool("mean")(embed_clips(effnet, video, sampling)[0][2].frames)[None])[0]
        got = {t["label"]: t["prob"] for t in r["top"]}
        np.testing.assert_allclose([got[c] for c in head.classes], expected, rtol=1e-4, atol=1e-5)
