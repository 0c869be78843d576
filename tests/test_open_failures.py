"""Failures reconcile: a failure is shown by ``info``, retried by ``--retry-failed`` and kept by ``compact``
only while no clip of its video (inside its window) is stored; the extract summary and ``info`` count the
same thing -- failed videos, one number per cause.

Real PyAV-encoded videos (a truncated one among them), the real offline encoder, real stores, the CLI
run in-process.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import h5py
import pytest
from media import pattern_frames, write_video

from pipeline.cli import main
from pipeline.store import open_store

# windowed sampling: a video's clips are its windows, never the (path, whole video) key its failure has
OPTS = ("-q", "extract.num_workers=0", "sampling.strategy=sliding", "sampling.clip_length=0.5", "sampling.num_frames=2")


def _video(path: Path, seed: int) -> Path:
    return write_video(path, pattern_frames(12, 48, 64, kind=seed % 2, seed=seed), fps=12)


def _info(store: Path, capsys) -> dict:
    capsys.readouterr()
    assert main(["info", str(store), "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def _extract(source: Path, store: Path, capsys, *extra: str) -> tuple[int, dict]:
    capsys.readouterr()
    code = main(["extract", str(source), "-o", str(store), "--json", *OPTS, *extra])
    return code, json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("how", ["truncated, then replaced", "missing, then added"])
def test_a_failure_closes_once_its_video_is_stored(tmp_path, capsys, how):
    root, store = tmp_path / "videos", tmp_path / "store"
    _video(root / "good.mp4", seed=1)
    manifest = root / "m.csv"
    manifest.write_text("path,label\ngood.mp4,a\nbad.mp4,b\n")
    if how.startswith("truncated"):
        data = _video(tmp_path / "full.mp4", seed=2).read_bytes()
        (root / "bad.mp4").write_bytes(data[: len(data) // 3])  # a download cut short
    code, first = _extract(manifest, store, capsys)
    assert code == 3 and first["failed"] == 1 and first["failed_by_cause"] == {"decode": 1}
    info = _info(store, capsys)
    assert info["failures"] == 1 and [f["path"] for f in info["failure_list"]] == ["bad.mp4"]

    # fixed: a good file in its place, tried again, stored as windows
    if (root / "bad.mp4").exists():
        os.remove(root / "bad.mp4")
    _video(root / "bad.mp4", seed=3)
    code, fixed = _extract(manifest, store, capsys, "--retry-failed")
    assert code == 0 and fixed["done"] == 2 and fixed["failed"] == 0
    info = _info(store, capsys)
    assert info["failures"] == 0 and info["failures_by_stage"] == {} and info["failure_list"] == []
    capsys.readouterr()
    assert main(["info", str(store)]) == 0
    assert "retries them" not in capsys.readouterr().out

    # nothing left to retry, and compaction drops the record
    code, again = _extract(manifest, store, capsys, "--retry-failed")
    assert code == 0 and (again["done"], again["failed"], again["skipped_failed"]) == (0, 0, 0)
    assert main(["compact", str(store)]) == 0
    (shard,) = open_store(store).shard_paths()
    with h5py.File(shard, "r") as f:
        assert len(f["failures/path"]) == 0 and len(f["clips/video"]) == 4
    assert main(["verify", str(store)]) == 0


def test_summary_and_info_count_failed_videos_alike(tmp_path, capsys):
    root, store = tmp_path / "videos", tmp_path / "store"
    _video(root / "good.mp4", seed=1)
    (root / "text.mp4").write_text("not a video\n" * 50)
    # two bad rows of one video (same clip: one key), two windows of another that is not a video
    rows = ["x.mp4,a,holdout,,", "x.mp4,a,later,,", "text.mp4,a,,0,0.5", "text.mp4,a,,0.5,1", "good.mp4,a,,,"]
    manifest = root / "m.csv"
    manifest.write_text("path,label,split,start,end\n" + "\n".join(rows) + "\n")
    capsys.readouterr()
    assert main(["extract", str(manifest), "-o", str(store), *OPTS]) == 3
    assert "failed: 2 videos (decode 1, manifest 1)" in capsys.readouterr().out
    info = _info(store, capsys)
    assert info["failures"] == 2 and info["failures_by_stage"] == {"decode": 1, "manifest": 1}
    assert len(info["failure_list"]) == 3  # the records: one per clip key
    assert main(["info", str(store)]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("failures"))
    assert "2 videos (decode 1, manifest 1); `vidprobe extract ... --retry-failed` retries them" in line
    runs = json.loads(next((store / "runs").glob("*.json")).read_text())
    assert runs["failed"] == 2 and runs["failed_by_cause"] == {"decode": 1, "manifest": 1}
