"""predict answers a mistake before importing the model stack: inputs are checked first."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from pipeline.probe.heads import HeadConfig, fit_head, save_head

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
