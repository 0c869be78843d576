"""A video file replaced at the same path is extracted again, and its old features are never served.

Real videos (PyAV-encoded), the real offline encoder, real HDF5 stores: each clip and failure carries its
video file's fingerprint (size, modification time, crc of the first and last 64 KiB), so a resume notices a
re-encoded or swapped file, while a copied or touched one (same bytes) is not extracted again.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
from media import pattern_frames, write_video

from pipeline.cli import main
from pipeline.config import load_config
from pipeline.data.manifest import load_manifest
from pipeline.extract.entry import extract
from pipeline.store import ShardWriter, create_or_open, open_store
from pipeline.store.layout import CACHE_DIR, CHECKSUMS_ATTR, SOURCE_COLUMNS, UNKNOWN_SOURCE
from pipeline.store.sources import fingerprint, same_file
from pipeline.store.tools import compact_store, verify_store

OPTS = ("sampling.num_frames=4", "extract.num_workers=0")


def _videos(root: Path) -> Path:
    write_video(root / "v0.mp4", pattern_frames(24, kind=0, seed=1), fps=12)
    write_video(root / "v1.mp4", pattern_frames(24, kind=1, seed=2), fps=12)
    return root


def _replace(path: Path, kind: int, seed: int, n: int = 30) -> None:
    """Swap in another real video at the same path (as a re-download or re-encode would)."""
    before = path.stat()
    tmp = path.with_name("new-" + path.name)
    write_video(tmp, pattern_frames(n, kind=kind, seed=seed), fps=10)
    os.replace(tmp, path)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns + 5_000_000_000))  # a later time, whatever the clock


def _frames(store: Path) -> dict:
    t = open_store(store).table()
    return {k: t.frames(i) for i, k in enumerate(t.keys())}


def _run(root: Path, store: Path, effnet, *opts: str):
    (summary,) = extract(
        load_manifest(root), store, load_config(None, [*OPTS, *opts]), encoders=[effnet], progress=False
    )
    return summary


def test_a_replaced_video_is_extracted_again_and_its_old_features_left_out(tmp_path, effnet, capsys):
    root, store = _videos(tmp_path / "videos"), tmp_path / "store"
    first = _run(root, store, effnet)
    assert first.done == 2 and first.changed == []
    old = _frames(store)
    _replace(root / "v0.mp4", kind=2, seed=7)

    again = _run(root, store, effnet)
    assert again.changed == ["v0.mp4"] and again.done == 1 and again.skipped == 1
    now = _frames(store)
    assert sorted(now) == sorted(old)  # one clip per video, not the old one beside the new
    fresh = tmp_path / "fresh"
    _run(root, fresh, effnet)
    want = _frames(fresh)
    key0 = ("v0.mp4", -1.0, -1.0)
    np.testing.assert_allclose(now[key0], want[key0], rtol=1e-4, atol=1e-4)  # the new file's features
    assert not np.allclose(now[key0], old[key0], atol=1e-2)
    np.testing.assert_array_equal(now[("v1.mp4", -1.0, -1.0)], old[("v1.mp4", -1.0, -1.0)])

    # the index says what it left out, from a fresh read and from its cache alike
    for _ in range(2):
        s = open_store(store)
        assert s.index().replaced == 1 and s.info()["replaced"] == 1
    report = verify_store(store)
    assert report.ok and any("changed and were extracted again" in n for n in report.notes)
    assert _run(root, store, effnet).done == 0  # nothing left to do, nothing taken for changed

    out = compact_store(store)
    assert out["replaced_dropped"] == 1 and out["clips"] == 2
    assert verify_store(store).ok and open_store(store).index().replaced == 0
    after = _frames(store)
    assert sorted(after) == sorted(now)
    np.testing.assert_array_equal(after[key0], now[key0])
    with h5py.File(next((store / "shards").glob("*.h5")), "r") as f:  # the compacted shard keeps fingerprints
        assert all(f[f"clips/{c}"].shape == (2,) and (f[f"clips/{c}"][()] >= 0).all() for c in SOURCE_COLUMNS)
    assert _run(root, store, effnet).done == 0

    # the CLI says so in one line, and `info` counts what compaction would drop
    _replace(root / "v1.mp4", kind=3, seed=9)
    assert main(["extract", str(root), *OPTS, "-o", str(store), "-q"]) == 0
    err = capsys.readouterr().err
    assert "1 video file(s) changed since they were extracted" in err and "v1.mp4" in err
    assert main(["info", str(store), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["replaced"] == 1


def test_a_copied_or_touched_video_is_not_extracted_again(tmp_path, effnet):
    root, store = _videos(tmp_path / "videos"), tmp_path / "store"
    _run(root, store, effnet)
    st = (root / "v0.mp4").stat()
    os.utime(root / "v0.mp4", ns=(st.st_atime_ns, st.st_mtime_ns + 7_000_000_000))  # touched: same bytes
    copy = tmp_path / "copy"
    shutil.copytree(root, copy, copy_function=shutil.copy)  # copied without the modification times
    for where in (root, copy):
        again = _run(where, store, effnet)
        assert again.done == 0 and again.changed == [], where
    # the rule itself: a time alone never makes another file; a size or sampled bytes do
    rec = fingerprint(root / "v1.mp4")
    assert rec is not None and same_file(fingerprint(copy / "v1.mp4", rec), rec)
    assert not same_file((rec[0] + 1, rec[1], rec[2]), rec)
    assert not same_file((rec[0], rec[1] + 1, rec[2] ^ 1), rec)


def test_a_replaced_video_that_fails_is_a_failure_and_a_fixed_one_is_retried(tmp_path, effnet):
    root, store = _videos(tmp_path / "videos"), tmp_path / "store"
    _run(root, store, effnet)
    (root / "v0.mp4").write_bytes(b"not a video any more\n" * 40)

    broken = _run(root, store, effnet)
    assert broken.changed == ["v0.mp4"] and broken.failed == 1 and broken.done == 0
    s = open_store(store)
    assert list(s.index().video) == ["v1.mp4"]  # the old features are not served for the new file
    assert [f["path"] for f in s.failures()] == ["v0.mp4"]

    _replace(root / "v0.mp4", kind=3, seed=4)  # fixed (downloaded again): tried again without --retry-failed
    fixed = _run(root, store, effnet)
    assert fixed.changed == ["v0.mp4"] and fixed.done == 1 and fixed.failed == 0
    s = open_store(store)
    assert sorted(s.index().video) == ["v0.mp4", "v1.mp4"] and s.failures() == []
    assert verify_store(store).ok


def test_windows_of_a_replaced_video_are_all_redone(tmp_path, effnet):
    root, store = _videos(tmp_path / "videos"), tmp_path / "store"
    opts = ("sampling.strategy=sliding", "sampling.clip_length=0.5", "sampling.stride=0.5", "sampling.num_frames=2")
    first = _run(root, store, effnet, *opts)
    assert first.done == 8  # 2 s each: windows at 0, 0.5, 1, 1.5
    _replace(root / "v0.mp4", kind=2, seed=5, n=10)  # 1 s now: windows at 0 and 0.5
    again = _run(root, store, effnet, *opts)
    assert again.changed == ["v0.mp4"] and again.done == 2
    keys = open_store(store).index().keys()
    assert sorted(k[1] for k in keys if k[0] == "v0.mp4") == [0.0, 0.5]
    assert open_store(store).index().replaced == 4 and verify_store(store).ok


def test_shards_written_before_fingerprints_are_read_and_never_taken_for_replaced(tmp_path, effnet):
    root, store = _videos(tmp_path / "videos"), tmp_path / "store"
    _run(root, store, effnet)
    for shard in (store / "shards").glob("*.h5"):  # as an older vidprobe wrote it: no fingerprint columns
        with h5py.File(shard, "r+") as f:
            sums = json.loads(f.attrs[CHECKSUMS_ATTR])
            for group in ("clips", "failures"):
                for c in SOURCE_COLUMNS:
                    if c in f[group]:
                        del f[f"{group}/{c}"]
                        sums.pop(f"{group}/{c}", None)
            f.attrs[CHECKSUMS_ATTR] = json.dumps(sums, sort_keys=True)
    shutil.rmtree(store / CACHE_DIR, ignore_errors=True)
    before = _frames(store)
    _replace(root / "v0.mp4", kind=2, seed=7)
    again = _run(root, store, effnet)
    assert again.done == 0 and again.changed == []  # unknown: kept, as before fingerprints existed
    assert sorted(_frames(store)) == sorted(before) and verify_store(store).ok


def test_a_failure_without_crc_does_not_make_a_copied_videos_windows_replaced(tmp_path):
    """A run's failed window records no crc (its file may hang); after a copy (new times, same bytes) a later
    run's windows of that video must still sit beside the first run's clips, none taken for replaced."""
    prov = {"encoder": "e", "weights_id": "w", "dim": 2, "preprocess": {}, "sampling": {"strategy": "sliding"}}
    store = create_or_open(tmp_path / "s", prov)
    emb, ts = np.ones((1, 2), np.float32), np.array([0.5])
    size, mtime, crc = 1000, 10**18, 1234
    with ShardWriter(store) as w:  # the first run: window 0 stored, window 1 failed
        w.add("v.mp4", 0.0, 1.0, "a", "train", emb, ts, (size, mtime, crc))
        w.add_failure("v.mp4", 1.0, 2.0, "decode", "v.mp4: broken window", (size, mtime, UNKNOWN_SOURCE))
    with ShardWriter(store) as w:  # after the copy: window 2, the same bytes at a new time
        w.add("v.mp4", 2.0, 3.0, "a", "train", emb, ts + 2, (size, mtime + 7, crc))
    idx = open_store(tmp_path / "s").index()
    assert idx.replaced == 0 and sorted(idx.start.tolist()) == [0.0, 2.0]
    assert [(f["start"], f["stage"]) for f in idx.failures] == [(1.0, "decode")]
    report = verify_store(tmp_path / "s")
    assert report.ok and not any("extracted again" in n for n in report.notes)


# -- a video replaced while it is being extracted --------------------------------------------------------
# The engine encodes a clip's frames as they arrive, batch by batch, while the decoder is at most a bounded
# queue ahead (batch 2, prefetch 4 frames: a queue of two 2-frame chunks). ``_Replacing`` is the real encoder
# handing each batch on, which renames another real video over a file once it has been given ``after``
# frames: a real ``os.replace`` at a known point of the decode, with the real decoder and the real store.

DURING = (
    "sampling.num_frames=16",
    "extract.batch_size=2",
    "extract.prefetch_frames=4",
)


class _Replacing:
    """``encoder``, which runs ``replace()`` once it has encoded ``after`` frames."""

    def __init__(self, encoder, after: int, replace) -> None:
        self._encoder, self.after, self.replace, self.seen, self.replaced = encoder, after, replace, 0, False

    def __getattr__(self, name: str):
        return getattr(self._encoder, name)

    def encode(self, frames):
        out = self._encoder.encode(frames)
        before, self.seen = self.seen, self.seen + len(frames)
        if before < self.after <= self.seen:
            self.replace()
            self.replaced = True
        return out


def _shard_clips(store: Path) -> list[tuple[str, tuple[int, ...], np.ndarray]]:
    """Every clip every shard holds (those readers leave out included): (video, fingerprint, embeddings)."""
    out = []
    for shard in sorted((store / "shards").glob("*.h5")):
        with h5py.File(shard, "r") as f:
            offset, emb = f["clips/offset"][()], f["frames/embedding"][()]
            src = np.stack([f[f"clips/{c}"][()] for c in SOURCE_COLUMNS], axis=1)
            for i, video in enumerate(f["clips/video"].asstr()[()]):
                out.append((video, tuple(int(x) for x in src[i]), emb[offset[i] : offset[i + 1]]))
    return out


def _assert_true_to_the_files(store: Path, root: Path, fresh: dict) -> None:
    """No clip is stored under the fingerprint of a file other than the one it was computed from: each
    clip carrying a file's fingerprint as the path holds it now equals a fresh extraction of that file."""
    for video, src, emb in _shard_clips(store):
        now = fingerprint(root / video)
        assert now is not None and same_file(src, now), f"{video}: a clip of a file no longer there"
        np.testing.assert_allclose(emb, fresh[(video, -1.0, -1.0)], rtol=1e-4, atol=1e-4, err_msg=video)


def _two_videos(root: Path) -> Path:
    write_video(root / "a.mp4", pattern_frames(24, kind=0, seed=1), fps=12)
    write_video(root / "b.mp4", pattern_frames(24, kind=1, seed=2), fps=12)
    return root


@pytest.mark.parametrize(
    ("moment", "victim", "after", "workers"),
    [
        ("before its first frame", "b.mp4", 2, 0),  # b is replaced while a is decoded: b not opened yet
        ("mid-way", "a.mp4", 2, 0),  # 2 of a's 16 frames encoded, at most 8 decoded (10 by a process)
        ("mid-way, in a decoder process", "a.mp4", 2, 1),
        ("after its last frame", "a.mp4", 16, 0),  # every frame decoded and encoded, not yet stored
    ],
)
def test_a_video_replaced_while_it_is_extracted_is_never_stored_under_the_new_file(
    tmp_path, effnet, moment, victim, after, workers
):
    root, store = _two_videos(tmp_path / "videos"), tmp_path / "store"
    opts = (*DURING, f"extract.num_workers={workers}")
    keys = [(v, -1.0, -1.0) for v in ("a.mp4", "b.mp4")]
    encoder = _Replacing(effnet, after, lambda: _replace(root / victim, kind=2, seed=7, n=24))
    cfg = load_config(None, [*OPTS, *opts])
    (summary,) = extract(load_manifest(root), store, cfg, encoders=[encoder], progress=False)
    assert encoder.replaced, moment

    fresh_store = tmp_path / "fresh"
    _run(root, fresh_store, effnet, *opts, "extract.batch_size=16")  # the batch size changes no embedding
    fresh = _frames(fresh_store)
    _assert_true_to_the_files(store, root, fresh)
    stored = sorted(v for v, _, _ in _shard_clips(store))
    if moment == "before its first frame":  # the decoder opened the new file: its features, nothing failed
        assert stored == ["a.mp4", "b.mp4"] and summary.failed == 0
    else:  # frames of the old file were decoded: dropped, recorded as changed, named in one line
        assert stored == ["b.mp4"] and summary.failed == 1
        ((path, message),) = summary.failures
        assert path == "a.mp4" and "changed during extraction" in message and "\n" not in message
        assert [(f["path"], f["stage"]) for f in open_store(store).failures()] == [("a.mp4", "changed")]
        assert verify_store(store).ok

    again = _run(root, store, effnet, *opts)  # a re-run stores the new file's features, without --retry-failed
    assert again.done == (0 if moment == "before its first frame" else 1) and again.failed == 0
    _assert_true_to_the_files(store, root, fresh)
    assert sorted(_frames(store)) == keys and open_store(store).failures() == []
    assert verify_store(store).ok and _run(root, store, effnet, *opts).done == 0


@pytest.mark.slow
def test_under_the_ray_engine_a_video_replaced_before_it_is_stored_is_dropped_then_redone(tmp_path, effnet):
    """The Ray engine end to end: the fingerprint travels through Ray Data's stages to the driver, which
    drops the clip of a file replaced after its decode (``deliver`` runs just after the replacement), and a
    re-run stores the new file's features."""
    pytest.importorskip("ray")
    import ray

    from pipeline.extract.job import ExtractionJob
    from pipeline.extract.ray_engine import extract_on_ray, init_ray
    from pipeline.extract.targets import ExtractionJobs

    root, store = _two_videos(tmp_path / "videos"), tmp_path / "store"
    manifest, cfg = load_manifest(root), load_config(None, list(OPTS))

    class ReplacingFirst(ExtractionJobs):
        def deliver(self, unit, outcomes):
            if unit.item.path == "a.mp4":
                _replace(root / "a.mp4", kind=2, seed=7, n=24)
            super().deliver(unit, outcomes)

    started = init_ray(num_cpus=2)
    try:
        running = extract_on_ray(
            cfg, lambda provs: ReplacingFirst(manifest, [ExtractionJob(manifest, store, cfg, provs[0], engine="ray")])
        )
        (summary,) = [job.summary for job in running.jobs]
        assert summary.done == 1 and [p for p, _ in summary.failures] == ["a.mp4"]
        assert "changed during extraction" in summary.failures[0][1]
        (again,) = extract(load_manifest(root), store, cfg, engine="ray", progress=False)
        assert again.done == 1 and again.changed == ["a.mp4"]
    finally:
        if started:
            ray.shutdown()
    fresh = tmp_path / "fresh"
    _run(root, fresh, effnet)
    _assert_true_to_the_files(store, root, _frames(fresh))
    assert sorted(v for v, _, _ in _shard_clips(store)) == ["a.mp4", "b.mp4"]
