"""Hostile inputs at decode time, with real files and real processes: a container header that lies about
its length (AVI frame counts; Matroska/WebM durations) and the warnings kept for it across runs, a dangling
manifest link whose target outside the root appears after planning, a FIFO given to ``predict``, and SIGTERM (what
Slurm sends) to a real extraction."""

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
from media import index_frames, patch_avi_frame_count, patch_mkv_duration, pattern_frames, write_video

from pipeline.cli import main
from pipeline.config import load_config
from pipeline.data.manifest import load_manifest
from pipeline.extract.clips import embed_clips
from pipeline.extract.decode import probe
from pipeline.extract.entry import extract
from pipeline.store import open_store
from pipeline.store.tools import verify_store

REPO = Path(__file__).resolve().parents[1]
FPS, FRAMES = 25, 100  # the real video: 100 frames, 4.0 s


SUFFIXES = (".avi", ".mkv", ".webm")  # AVI: a complete index; Matroska/WebM: cues list keyframes only


@pytest.fixture(scope="module")
def lying_videos(tmp_path_factory) -> Path:
    """Per container suffix: root/honest/v.SUF (the truth), root/long/v.SUF (header says 1000x the real
    length), root/short/v.SUF (1/50): AVI frame counts or the Matroska Segment Duration patched."""
    root = tmp_path_factory.mktemp("lying")
    for suffix in SUFFIXES:
        real = write_video(root / "honest" / f"v{suffix}", index_frames(FRAMES), fps=FPS, gop=10)
        patch = patch_avi_frame_count if suffix == ".avi" else patch_mkv_duration
        for name, factor in (("long", 1000.0), ("short", 1 / 50)):
            (root / name).mkdir(exist_ok=True)
            (root / name / f"v{suffix}").write_bytes(patch(real.read_bytes(), factor))
    return root


def lying_manifest(root: Path, suffix: str, names=("honest", "long", "short")):
    manifest = load_manifest(root)
    manifest.items = [it for it in manifest.items if it.path.endswith(suffix) and it.path.split("/")[0] in names]
    return manifest


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_patched_header_really_lies(lying_videos, suffix):
    assert probe(lying_videos / "honest" / f"v{suffix}").duration == pytest.approx(4.0)
    import av

    for name, claimed in (("long", 4000.0), ("short", 0.08)):
        with av.open(str(lying_videos / name / f"v{suffix}")) as c:
            s = c.streams.video[0]
            said = float(s.duration * s.time_base) if s.duration else c.duration / 1e6  # Matroska: the segment's
            assert said == pytest.approx(claimed)  # what FFmpeg reads from the header
        assert probe(lying_videos / name / f"v{suffix}").duration == pytest.approx(4.0)  # what the frames say


@pytest.mark.parametrize("suffix", SUFFIXES)
@pytest.mark.parametrize("sampling", [["sampling.num_frames=8"], ["sampling.strategy=fps", "sampling.fps=2"]])
def test_lying_header_is_sampled_within_the_real_duration(lying_videos, tmp_path, effnet, capsys, sampling, suffix):
    cfg = load_config(None, [*sampling, "extract.num_workers=0"])
    (summary,) = extract(lying_manifest(lying_videos, suffix), tmp_path / "s", cfg, encoders=[effnet], progress=False)
    assert summary.done == 3 and summary.failed == 0
    store = open_store(tmp_path / "s")
    by_video = {v: i for i, v in enumerate(store.videos)}
    honest = store.timestamps(by_video[f"honest/v{suffix}"])
    for name in ("long", "short"):
        ts = store.timestamps(by_video[f"{name}/v{suffix}"])
        assert len(ts) == 8
        assert np.unique(ts).size == len(ts), (name, ts)  # never one frame for several sampled times
        assert ts.min() >= 0 and ts.max() < FRAMES / FPS, (name, ts)
        assert ts.min() < 0.5 and ts.max() > 3.4, (name, ts)  # spread over the whole clip
        np.testing.assert_array_equal(ts, honest)  # sampled as if the header told the truth
    said = [m for p, m in summary.warnings]
    assert sorted(p for p, _ in summary.warnings) == [f"long/v{suffix}", f"short/v{suffix}"], said  # honest: none
    assert all("header says" in m and "4.000 s" in m for m in said), said
    capsys.readouterr()
    assert main(["info", str(tmp_path / "s")]) == 0
    out = capsys.readouterr().out
    assert "warnings     2 " in out
    assert f"long/v{suffix}: the header says the video lasts 4000.000 s" in out
    assert f"short/v{suffix}: the header says the video lasts 0.080 s" in out


@pytest.mark.parametrize("factor", [1000.0, 1 / 50])
def test_a_lying_matroska_header_without_cues_is_corrected_too(lying_videos, tmp_path, factor):
    """No cues: the packets are demuxed from the last keyframe the demuxer has seen (while probing) to the end."""
    from pipeline.extract.decode import VideoReader

    path = tmp_path / "v.mkv"
    path.write_bytes(patch_mkv_duration((lying_videos / "honest" / "v.mkv").read_bytes(), factor, drop_cues=True))
    with VideoReader(path) as reader:
        assert reader.info.duration == pytest.approx(4.0)
        assert len(reader.warnings) == 1 and "but its frames end at 4.000 s" in reader.warnings[0]
        ts = np.concatenate([c.timestamps for c in reader.iter_frames(np.linspace(0, 4.0, 8, endpoint=False))])
    assert np.unique(ts).size == 8 and ts.max() < 4.0 and reader.ended_at is None


def test_an_honest_matroska_file_is_read_as_before(lying_videos):
    """The check reads the packets after the last cued keyframe: an honest file keeps its header's duration,
    no warning, and exactly the frames a front-to-back decode has at the sampled times."""
    from media import reference_decode

    from pipeline.extract.decode import VideoReader, assign_frames

    for suffix in (".mkv", ".webm"):
        path = lying_videos / "honest" / f"v{suffix}"
        times, frames = reference_decode(path)
        with VideoReader(path) as reader:
            assert reader.info.duration == pytest.approx(4.0) and reader.warnings == []
            wanted = np.linspace(0, 4.0, 8, endpoint=False)
            chunks = list(reader.iter_frames(wanted))
        got = np.concatenate([c.timestamps for c in chunks])
        np.testing.assert_array_equal(got, times[assign_frames(times, wanted)])
        np.testing.assert_array_equal(np.concatenate([c.frames for c in chunks]), frames[assign_frames(times, wanted)])


def test_warnings_outlive_the_run_record_a_resumed_run_replaces(lying_videos, tmp_path, capsys):
    """Warnings are kept in the shards with their clips: a second run adding clips (and replacing the run
    record) and a compaction keep the first run's; `info` shows them, `info --json` lists them all."""
    store = tmp_path / "s"
    settings = ["-q", "sampling.num_frames=4", "extract.num_workers=0", "extract.shard_size=2"]
    first = tmp_path / "first.csv"
    first.write_text("path,label\nlong/v.mkv,a\nhonest/v.mkv,b\n")
    both = tmp_path / "both.csv"
    both.write_text("path,label\nlong/v.mkv,a\nhonest/v.mkv,b\nshort/v.webm,a\nhonest/v.webm,b\n")
    assert main(["extract", str(first), "--root", str(lying_videos), "-o", str(store), *settings]) == 0
    capsys.readouterr()
    assert main(["extract", str(both), "--root", str(lying_videos), "-o", str(store), *settings, "--json"]) == 0
    run = json.loads(capsys.readouterr().out)
    assert run["skipped"] == 2 and run["done"] == 2
    record = json.loads((store / "runs" / "shard.json").read_text())
    assert [m for m in record["warnings"] if "long/v.mkv" in m] == []  # the record holds the last run's only
    for compacted in (False, True):
        if compacted:
            assert main(["compact", str(store)]) == 0
        capsys.readouterr()
        assert main(["info", str(store)]) == 0
        out = capsys.readouterr().out
        assert "warnings     2 " in out, out
        assert "long/v.mkv: the header says the video lasts 4000.000 s" in out
        assert "short/v.webm: the header says the video lasts 0.080 s" in out
        assert main(["info", str(store), "--json"]) == 0
        said = json.loads(capsys.readouterr().out)["warnings"]
        assert len(said) == 2 and all("header says" in m for m in said), said
    assert verify_store(store).ok  # the warnings are checksummed like every other dataset


def test_one_frame_for_several_sampled_times_is_said(tmp_path, effnet):
    root = tmp_path / "v"
    write_video(root / "few.mp4", pattern_frames(3, height=48, width=64), fps=12)  # 3 frames, 8 sampled
    cfg = load_config(None, ["sampling.num_frames=8", "extract.num_workers=0"])
    (summary,) = extract(load_manifest(root), tmp_path / "s", cfg, encoders=[effnet], progress=False)
    assert summary.done == 1
    assert len(summary.warnings) == 1 and "5 of 8 sampled times share a decoded frame" in summary.warnings[0][1]
    record = json.loads(next((tmp_path / "s" / "runs").glob("*.json")).read_text())
    assert record["warnings_total"] == 1 and "share a decoded frame" in record["warnings"][0]


@pytest.mark.parametrize("workers", ["0", "1"])
def test_link_target_outside_root_appearing_after_planning_is_not_followed(tmp_path, effnet, workers):
    # A manifest's rows stay inside its root (a folder source follows links: test_symlinks.py)
    outside, root = tmp_path / "outside", tmp_path / "root"
    (root / "a").mkdir(parents=True)
    write_video(root / "a" / "inside.mp4", pattern_frames(12, height=48, width=64), fps=12)
    (root / "a" / "sneaky.mp4").symlink_to(outside / "secret.mp4")  # dangling when the manifest is read
    (root / "m.csv").write_text("path,label\na/inside.mp4,a\na/sneaky.mp4,a\n")
    manifest = load_manifest(root / "m.csv")
    assert sorted(it.path for it in manifest.items) == ["a/inside.mp4", "a/sneaky.mp4"]  # nothing to see yet
    write_video(outside / "secret.mp4", pattern_frames(12, height=48, width=64, seed=5), fps=12)  # the race
    cfg = load_config(None, ["sampling.num_frames=2", f"extract.num_workers={workers}"])
    (summary,) = extract(manifest, tmp_path / "s", cfg, encoders=[effnet], progress=False)
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


def test_predict_samples_a_lying_matroska_header_within_its_frames(labeled_folder, lying_videos, tmp_path, capsys):
    store, head = tmp_path / "store", tmp_path / "h.npz"
    assert main(["extract", str(labeled_folder), "-o", str(store), "-q", "sampling.num_frames=2"]) == 3
    assert main(["train", str(store), "-o", str(head), "--test-fraction", "0.25"]) == 0
    capsys.readouterr()
    lying = lying_videos / "long" / "v.mkv"
    assert main(["predict", str(head), str(lying), "--json"]) == 0
    (result,) = json.loads(capsys.readouterr().out)
    assert result["top"] and len(result["warnings"]) == 1
    assert "the header says the video lasts 4000.000 s but its frames end at 4.000 s" in result["warnings"][0]
    assert main(["predict", str(head), str(lying)]) == 0
    err = capsys.readouterr().err
    assert f"vidprobe predict: warning: {lying}: the header says the video lasts 4000.000 s" in err


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
    (ref,) = extract(load_manifest(videos), tmp_path / "ref", cfg, encoders=[effnet], progress=False)
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
