"""The extraction engine end to end: real videos, the real offline encoder, real HDF5 stores."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from media import index_frames, pattern_frames, write_video

from pipeline.config import load_config
from pipeline.data.manifest import Manifest, load_manifest
from pipeline.errors import StoreError
from pipeline.extract.entry import extract
from pipeline.extract.local import resolve_runtime
from pipeline.extract.workers import ClipTask, DecodePool, Done, Failed
from pipeline.store import open_store

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    """Three short real videos in two containers, with B-frames and short GOPs (so decoding seeks)."""
    root = tmp_path_factory.mktemp("engine")
    write_video(root / "a" / "v0.mp4", pattern_frames(48, kind=0, seed=1), fps=12, gop=6, bframes=2)
    write_video(root / "a" / "v1.mkv", pattern_frames(40, kind=1, seed=2), fps=10, gop=5, bframes=2)
    write_video(root / "b" / "v2.mp4", pattern_frames(30, kind=2, seed=3), fps=15, gop=15)
    return root


def _table(store: Path) -> dict:
    t = open_store(store).table()
    return {k: (t.frames(i), t.timestamp[t.offset[i] : t.offset[i + 1]]) for i, k in enumerate(t.keys())}


def _run(manifest: Manifest, store: Path, encoder, *overrides: str):
    shutil.rmtree(store, ignore_errors=True)
    (summary,) = extract(manifest, store, load_config(None, list(overrides)), encoders=[encoder], progress=False)
    return summary


def test_embeddings_identical_with_0_or_n_workers_and_any_batch_size(videos, tmp_path, effnet):
    manifest = load_manifest(videos)
    runs = [
        ("extract.num_workers=0", "extract.batch_size=3"),
        ("extract.num_workers=2", "extract.batch_size=32"),
        ("extract.num_workers=1", "extract.batch_size=7"),
    ]
    tables = []
    for i, run in enumerate(runs):
        summary = _run(manifest, tmp_path / f"s{i}", effnet, "sampling.num_frames=5", *run)
        assert summary.done == 3 and summary.failed == 0 and summary.frames == 15
        tables.append(_table(tmp_path / f"s{i}"))
    ref = tables[0]
    for other in tables[1:]:
        assert other.keys() == ref.keys()
        for key, (emb, ts) in ref.items():
            np.testing.assert_array_equal(other[key][1], ts)
            np.testing.assert_allclose(other[key][0], emb, rtol=1e-4, atol=1e-4)
    # and they are the encoder's embeddings of the frames the decoder shows at those times
    from pipeline.extract.decode import decode_at

    key = ("a/v0.mp4", -1.0, -1.0)
    clip = decode_at(
        videos / "a" / "v0.mp4",
        lambda _: ref[key][1],
        size=effnet.preprocess_cfg.frame_size,
        crop=effnet.preprocess_cfg.center_crop,
    )
    np.testing.assert_allclose(effnet.encode(clip.frames), ref[key][0], rtol=1e-4, atol=1e-4)


def test_sliding_windows_resume_only_the_missing_windows(videos, tmp_path, effnet):
    manifest = load_manifest(videos)
    opts = (
        "sampling.strategy=sliding",
        "sampling.clip_length=1.5",
        "sampling.stride=1",
        "sampling.num_frames=3",
        "extract.num_workers=1",
        "extract.shard_size=1",
    )
    full = _run(manifest, tmp_path / "full", effnet, *opts)
    # 4 s, 4 s and 2 s videos -> windows start at 0, 1, 2 (, 3 won't fit before 4.0 - 1.5 = 2.5): 3 + 3 + 1
    assert full.done == 7 and full.frames == 21
    table = _table(tmp_path / "full")
    assert ("a/v0.mp4", 1.0, 2.5) in table and ("b/v2.mp4", 0.0, 1.5) in table
    for (_video, start, end), (_, ts) in table.items():
        assert start <= ts.min() and ts.max() < end  # every frame lies inside its window
    # simulate a killed job: only some shards (one clip each) survived
    store = tmp_path / "partial"
    shutil.copytree(tmp_path / "full", store)
    shards = sorted((store / "shards").glob("*.h5"))
    for shard in shards[::2]:
        shard.unlink()
    kept = len(shards) - len(shards[::2])
    (resumed,) = extract(manifest, store, load_config(None, list(opts)), encoders=[effnet], progress=False)
    assert resumed.skipped == kept and resumed.done == 7 - kept
    again = _table(store)
    assert again.keys() == table.keys()
    for key, (emb, _ts) in table.items():
        np.testing.assert_allclose(again[key][0], emb, rtol=1e-4, atol=1e-4)
    # a third run decodes nothing
    assert extract(manifest, store, load_config(None, list(opts)), encoders=[effnet], progress=False)[0].done == 0


def test_sliding_windows_embed_whole_windows_only(tmp_path, effnet):
    """As docs/extraction.md promises, a tail shorter than a window is dropped, so a video shorter than one
    window makes no clip: it is recorded as failed in one line naming it and the setting, not stored as a
    shorter clip, and a re-run does not try it again."""
    root = tmp_path / "v"
    write_video(root / "long.mp4", pattern_frames(30, kind=0, seed=1), fps=10)  # 3 s: [0, 2], tail [2, 3]
    write_video(root / "short.mp4", pattern_frames(10, kind=1, seed=2), fps=10)  # 1 s: shorter than a window
    opts = ("sampling.strategy=sliding", "sampling.clip_length=2", "sampling.num_frames=2", "extract.num_workers=0")
    manifest, store = load_manifest(root), tmp_path / "s"
    summary = _run(manifest, store, effnet, *opts)
    assert summary.done == 1 and open_store(store).index().keys() == [("long.mp4", 0.0, 2.0)]
    ((path, message),) = summary.failures
    assert path == "short.mp4" and "short.mp4" in message and "sampling.clip_length=2" in message
    assert "shorter than one window" in message and "\n" not in message
    (again,) = extract(manifest, store, load_config(None, list(opts)), encoders=[effnet], progress=False)
    assert (again.done, again.failed, again.skipped_failed) == (0, 0, 1)


def test_multiclip_every_n_keyframes_and_keyframe_seeking(tmp_path, effnet):
    root = tmp_path / "v"
    write_video(root / "ramp.mp4", index_frames(96), fps=24, gop=12, bframes=2)  # 4 s, keyframes every 0.5 s
    manifest = load_manifest(root)
    multi = _run(
        manifest,
        tmp_path / "m",
        effnet,
        "sampling.strategy=multiclip",
        "sampling.num_clips=3",
        "sampling.clip_length=1",
        "sampling.num_frames=2",
        "extract.num_workers=0",
    )
    assert multi.done == 3 and sorted(k[1:] for k in _table(tmp_path / "m")) == [(0.0, 1.0), (1.5, 2.5), (3.0, 4.0)]
    every = _run(
        manifest, tmp_path / "e", effnet, "sampling.strategy=every_n", "sampling.every_n=10", "extract.num_workers=1"
    )
    ((_, ts),) = _table(tmp_path / "e").values()
    np.testing.assert_allclose(ts, np.arange(0, 96, 10) / 24, atol=1e-9)
    assert every.frames == 10
    keys = _run(manifest, tmp_path / "k", effnet, "sampling.strategy=keyframes", "extract.num_workers=1")
    ((_, ts),) = _table(tmp_path / "k").values()
    np.testing.assert_allclose(ts, np.arange(8) * 0.5, atol=1e-9)
    assert keys.frames == 8
    snapped = _run(
        manifest,
        tmp_path / "s",
        effnet,
        "sampling.num_frames=4",
        "sampling.seek_mode=keyframe",
        "extract.num_workers=1",
    )
    ((_, ts),) = _table(tmp_path / "s").values()
    np.testing.assert_allclose(ts, [0.5, 1.5, 2.5, 3.5], atol=1e-9)  # centres 0.5, 1.5, .. are keyframes
    assert snapped.frames == 4
    with pytest.raises(StoreError, match="seek_mode"):  # the approximate mode never mixes into an exact store
        extract(
            manifest, tmp_path / "s", load_config(None, ["sampling.num_frames=4"]), encoders=[effnet], progress=False
        )


def test_stuck_decoder_times_out_and_the_job_goes_on(videos, tmp_path, effnet):
    root = tmp_path / "mixed"
    shutil.copytree(videos, root)
    os.mkfifo(root / "a" / "stuck.mp4")  # opening a FIFO nobody writes to blocks forever: a real hang
    summary = _run(
        load_manifest(root),
        tmp_path / "s",
        effnet,
        "sampling.num_frames=2",
        "extract.num_workers=1",
        "extract.decode_timeout=2",
    )
    assert summary.done == 3 and summary.failed == 1 and summary.workers_replaced == 1
    (failure,) = open_store(tmp_path / "s").failures()
    assert failure["path"] == "a/stuck.mp4" and failure["stage"] == "decode" and "timeout after 2 s" in failure["error"]


def test_crashed_decoder_process_fails_only_its_clip(videos, tmp_path, effnet):
    """A decoder killed by SIGSEGV (as FFmpeg would be on a bad file) costs that clip; the rest go on."""
    fifo = tmp_path / "hang.mp4"
    os.mkfifo(fifo)
    good = [str(p) for p in sorted(videos.rglob("v*.*"))]
    tasks = [ClipTask(0, good[0]), ClipTask(1, str(fifo)), ClipTask(2, good[1]), ClipTask(3, good[2])]
    sampling = load_config(None, ["sampling.num_frames=2"]).sampling
    with DecodePool(sampling, effnet.preprocess_cfg, num_workers=2, timeout=60, tasks_per_worker=1) as pool:

        def segfault_the_stuck_worker():
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                for w in list(pool.workers):
                    if w.ready and w.assigned and w.assigned[0].task == 1:
                        time.sleep(0.3)
                        os.kill(w.proc.pid, signal.SIGSEGV)
                        return
                time.sleep(0.05)

        threading.Thread(target=segfault_the_stuck_worker, daemon=True).start()
        messages = list(pool.messages(tasks))
        assert pool.replaced == 1
    ends = {m.task: m for m in messages if isinstance(m, (Done, Failed))}
    assert sorted(ends) == [0, 1, 2, 3]
    assert isinstance(ends[1], Failed) and "SIGSEGV" in ends[1].error and str(fifo) in ends[1].error
    assert all(isinstance(ends[i], Done) for i in (0, 2, 3))


def test_runtime_defaults_for_the_machine():
    cfg = load_config(None, []).extract
    cpu = resolve_runtime(cfg, "cpu", cpus=2)
    gpu = resolve_runtime(cfg, "cuda", cpus=16)
    assert cpu.num_workers == 2 and cpu.batch_size == 16 and cpu.decode_threads == 1 and cpu.torch_threads == 2
    assert gpu.num_workers == 15 and gpu.batch_size == 128
    set_ = resolve_runtime(load_config(None, ["extract.num_workers=3", "extract.batch_size=5"]).extract, "cpu", cpus=2)
    assert (set_.num_workers, set_.batch_size) == (3, 5)


def test_benchmark_cuda_path_fails_clearly_without_a_gpu():
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present: the CUDA path runs instead")
    out = subprocess.run(
        [sys.executable, "benchmarks/extract_throughput.py", "--device", "cuda"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2 and "CUDA is not available" in out.stderr and len(out.stderr.strip().splitlines()) == 1
