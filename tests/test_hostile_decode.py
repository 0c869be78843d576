"""Hostile inputs at decode time, with real files and real processes: a container header that lies about
its length, a dangling link whose target outside the root appears after planning, a FIFO given to
``predict``, and SIGTERM (what Slurm sends) to a real extraction."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from media import index_frames, patch_avi_frame_count, pattern_frames, write_video

from pipeline.cli import main
from pipeline.config import load_config
from pipeline.data.manifest import load_manifest
from pipeline.extract.decode import probe
from pipeline.extract.local import embed_clips, extract
from pipeline.store import open_store
from pipeline.store.tools import verify_store

REPO = Path(__file__).resolve().parents[1]
FPS, FRAMES = 25, 100  # the real video: 100 frames, 4.0 s


@pytest.fixture(scope="module")
def lying_avis(tmp_path_factory) -> Path:
    """root/honest/v.avi (the truth), root/long/v.avi (header says 1000x), root/short/v.avi (1/50)."""
    root = tmp_path_factory.mktemp("lying")
    real = write_video(root / "honest" / "v.avi", index_frames(FRAMES), fps=FPS, gop=10)
    for name, factor in (("long", 1000.0), ("short", 1 / 50)):
        (root / name).mkdir()
        (root / name / "v.avi").write_bytes(patch_avi_frame_count(real.read_bytes(), factor))
    return root


def test_patched_header_really_lies(lying_avis):
    assert probe(lying_avis / "honest" / "v.avi").duration == pytest.approx(4.0)
    import av

    for name, claimed in (("long", 4000.0), ("short", 0.08)):
        with av.open(str(lying_avis / name / "v.avi")) as c:
            s = c.streams.video[0]
            assert float(s.duration * s.time_base) == pytest.approx(claimed)  # what FFmpeg reads from the header
        assert probe(lying_avis / name / "v.avi").duration == pytest.approx(4.0)  # what the frames say


@pytest.mark.parametrize("sampling", [["sampling.num_frames=8"], ["sampling.strategy=fps", "sampling.fps=2"]])
def test_lying_header_is_sampled_within_the_real_duration(lying_avis, tmp_path, effnet, capsys, sampling):
    cfg = load_config(None, [*sampling, "extract.num_workers=0"])
    summary = extract(load_manifest(lying_avis), tmp_path / "s", cfg, encoder=effnet, progress=False)
    assert summary.done == 3 and summary.failed == 0
    store = open_store(tmp_path / "s")
    by_video = {v: i for i, v in enumerate(store.videos)}
    honest = store.timestamps(by_video["honest/v.avi"])
    for name in ("long", "short"):
        ts = store.timestamps(by_video[f"{name}/v.avi"])
        assert len(ts) == 8
        assert np.unique(ts).size == len(ts), (name, ts)  # never one frame for several sampled times
        assert ts.min() >= 0 and ts.max() < FRAMES / FPS, (name, ts)
        assert ts.min() < 0.5 and ts.max() > 3.4, (name, ts)  # spread over the whole clip
        np.testing.assert_array_equal(ts, honest)  # sampled as if the header told the truth
    said = [m for p, m in summary.warnings]
    assert sorted(p for p, _ in summary.warnings) == ["long/v.avi", "short/v.avi"], said
    assert all("header says" in m and "4.000 s" in m for m in said), said
    capsys.readouterr()
    assert main(["info", str(tmp_path / "s")]) == 0
    out = capsys.readouterr().out
    assert "long/v.avi: the header says the video lasts 4000.000 s" in out
    assert "short/v.avi: the header says the video lasts 0.080 s" in out


def test_one_frame_for_several_sampled_times_is_said(tmp_path, effnet):
    root = tmp_path / "v"
    write_video(root / "few.mp4", pattern_frames(3, height=48, width=64), fps=12)  # 3 frames, 8 sampled
    cfg = load_config(None, ["sampling.num_frames=8", "extract.num_workers=0"])
    summary = extract(load_manifest(root), tmp_path / "s", cfg, encoder=effnet, progress=False)
    assert summary.done == 1
    assert len(summary.warnings) == 1 and "5 of 8 sampled times share a decoded frame" in summary.warnings[0][1]
    record = json.loads(next((tmp_path / "s" / "runs").glob("*.json")).read_text())
    assert record["warnings_total"] == 1 and "share a decoded frame" in record["warnings"][0]


@pytest.mark.parametrize("workers", ["0", "1"])
def test_link_target_outside_root_appearing_after_planning_is_not_followed(tmp_path, effnet, workers):
    outside, root = tmp_path / "outside", tmp_path / "root"
    (root / "a").mkdir(parents=True)
    write_video(root / "a" / "inside.mp4", pattern_frames(12, height=48, width=64), fps=12)
    (root / "a" / "sneaky.mp4").symlink_to(outside / "secret.mp4")  # dangling when the manifest is read
    manifest = load_manifest(root)
    assert sorted(it.path for it in manifest.items) == ["a/inside.mp4", "a/sneaky.mp4"]  # nothing to see yet
    write_video(outside / "secret.mp4", pattern_frames(12, height=48, width=64, seed=5), fps=12)  # the race
    cfg = load_config(None, ["sampling.num_frames=2", f"extract.num_workers={workers}"])
    summary = extract(manifest, tmp_path / "s", cfg, encoder=effnet, progress=False)
    assert summary.done == 1 and summary.failed == 1
    assert open_store(tmp_path / "s").videos == ["a/inside.mp4"]
    ((path, message),) = summary.failures
    assert path == "a/sneaky.mp4" and "outside the manifest root" in message


def test_predict_on_a_fifo_times_out_instead_of_hanging(labeled_folder, tmp_path, capsys):
    store, head = tmp_path / "store", tmp_path / "h.skops"
    assert main(["extract", str(labeled_folder), "-o", str(store), "-q", "sampling.num_frames=2"]) == 3
    assert main(["train", str(store), "-o", str(head), "--test-fraction", "0.25"]) == 0
    fifo = tmp_path / "stuck.mp4"
    os.mkfifo(fifo)  # opening it for reading blocks until a writer comes: none ever does
    good = write_video(tmp_path / "new.mp4", pattern_frames(24, kind=1, seed=9), fps=12)
    capsys.readouterr()
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline", "predict", str(head), str(fifo), str(good), "--decode-timeout", "3"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,  # a hang fails here instead of blocking the suite
    )
    assert proc.returncode == 3, proc.stderr
    assert f"error: {fifo}: " in proc.stderr and "timeout after 3 s" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert str(good) in proc.stdout  # the next video is still labeled


def test_embed_clips_timeout_is_a_decode_error(tmp_path, effnet):
    from pipeline.config import SamplingConfig
    from pipeline.errors import DecodeError

    fifo = tmp_path / "f.mp4"
    os.mkfifo(fifo)
    with pytest.raises(DecodeError, match="timeout after 2 s"):
        embed_clips(effnet, fifo, SamplingConfig(num_frames=2), timeout=2)


# --- SIGTERM ----------------------------------------------------------------------------------------

SETTINGS = ["sampling.num_frames=2", "extract.shard_size=3", "extract.batch_size=2"]


@pytest.mark.slow
def test_sigterm_keeps_finished_clips_and_resume_equals_an_uninterrupted_run(tmp_path, effnet, capsys):
    videos = tmp_path / "videos"
    for i in range(24):
        write_video(videos / f"c{i % 2}" / f"v{i:02d}.mp4", pattern_frames(12, 48, 64, kind=i % 2, seed=i), fps=12)
    cfg = load_config(None, [*SETTINGS, "extract.num_workers=0"])
    ref = extract(load_manifest(videos), tmp_path / "ref", cfg, encoder=effnet, progress=False)
    assert ref.done == 24

    store = tmp_path / "s"
    cmd = ["extract", str(videos), "-o", str(store), "-q", *SETTINGS, "extract.num_workers=1"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline", *cmd], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    shards, t0 = store / "shards", time.monotonic()
    while proc.poll() is None and not (shards.is_dir() and any(p.suffix == ".h5" for p in shards.iterdir())):
        assert time.monotonic() - t0 < 240, "extraction hung"
        time.sleep(0.001)
    assert proc.poll() is None, "finished before the first shard was seen: nothing to interrupt"
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert err.strip().splitlines() == [
        "vidprobe extract: terminated (SIGTERM); finished work is kept, re-run to resume"
    ], err
    record = json.loads((store / "runs" / "shard.json").read_text())
    kept = len(open_store(store))
    assert record["state"] == "stopped" and 0 < kept < 24
    assert kept == record["done"]  # every clip it finished is stored, the open shard's buffered ones too
    assert not list(shards.glob("*.tmp"))
    capsys.readouterr()

    assert main([*cmd, "--json"]) == 0  # the lock was released: the re-run is not refused
    summary = json.loads(capsys.readouterr().out)
    assert summary["skipped"] == kept and summary["done"] == 24 - kept
    a, b = open_store(tmp_path / "ref"), open_store(store)
    assert sorted(a.keys()) == sorted(b.keys()) and b.index().duplicates == 0
    rows = {k: i for i, k in enumerate(b.keys())}
    for i, key in enumerate(a.keys()):
        j = rows[key]
        assert a.labels[i] == b.labels[j]
        np.testing.assert_array_equal(a.timestamps(i), b.timestamps(j))
        np.testing.assert_allclose(a.frames(i), b.frames(j), rtol=1e-4, atol=1e-5)
    assert verify_store(store).ok
    shutil.rmtree(videos)
