"""Streaming reads, the clip-index and pooled-feature caches, and exports (issue 11), on real HDF5 stores."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import warnings
from pathlib import Path

import h5py
import numpy as np
import pytest

from pipeline.cli import main
from pipeline.errors import StoreError
from pipeline.probe.pooling import get_pool
from pipeline.store import ShardWriter, create_or_open, open_store, stream
from pipeline.store.tools import compact_store, verify_store

D = 6
PROV = {"encoder": "test-enc", "weights_id": "w1", "dim": D, "preprocess": {}, "sampling": {"strategy": "fps"}}
REPO = Path(__file__).resolve().parents[1]
POOLS = ["mean", "max", "meanstd", "center", "tdiff", "trend", "seg4"]


def _write(store, start: int, n: int, seed: int, shard_size: int = 4, dup_of: list[int] | None = None):
    """n clips of 1..9 frames; ``dup_of``: also store these earlier clips again (readers keep the first)."""
    rng = np.random.default_rng(seed)
    with ShardWriter(store, shard_size=shard_size) as w:
        for i in [*(dup_of or []), *range(start, start + n)]:
            t = 1 + (i * 7) % 9
            emb = rng.normal(size=(t, D)).astype(np.float32)
            split = ("train", "train", "val", "test")[i % 4]
            w.add(f"dir/v{i:03d}.mp4", None, None, f"c{i % 3}", split, emb, np.arange(t) / 4 + i)
    return w.written


def _reference(path, pool):
    """The pre-streaming read: every frame in memory, one call per clip."""
    t = open_store(path).table()
    return np.stack([pool(t.frames(i)) for i in range(len(t))])


@pytest.fixture
def store_path(tmp_path):
    path = tmp_path / "s"
    store = create_or_open(path, PROV)
    _write(store, 0, 18, seed=1)
    _write(store, 18, 9, seed=2, dup_of=[3, 5])  # clips 3 and 5 again: a shard with rows readers skip
    return path


@pytest.mark.parametrize("name", POOLS)
def test_streamed_pooled_equals_the_whole_store_read(store_path, name):
    pool = get_pool(name)
    store = open_store(store_path)
    X = store.pooled(pool)
    assert store._table is None  # streamed: the frames were never loaded as one matrix
    assert np.allclose(X, _reference(store_path, pool), rtol=1e-5, atol=1e-6)
    # the per-clip function alone (no ``batch``) gives the same, block by block
    assert np.allclose(open_store(store_path).pooled(lambda x: pool(x)), X, rtol=1e-5, atol=1e-6)


def test_blocks_smaller_than_a_compacted_shard_are_hashed_as_they_stream(store_path, monkeypatch):
    ref = _reference(store_path, get_pool("mean"))
    compact_store(store_path)
    monkeypatch.setattr(stream, "BLOCK_FRAMES", 10)  # the one shard is read in many blocks
    store = open_store(store_path)
    store.use_cache = False
    assert np.allclose(store.pooled(get_pool("mean")), ref, rtol=1e-5, atol=1e-6)
    assert np.array_equal(store.frames(7), open_store(store_path).table().frames(7))
    (shard,) = store.shard_paths()
    with h5py.File(shard, "r+") as f:  # an edit after writing, in the last rows
        f["frames/embedding"][-1, 0] += 1.0
    with pytest.raises(StoreError, match="frames/embedding does not match its checksum"):
        open_store(store_path).pooled(get_pool("mean"))


def test_widen_is_numpys_float16_cast_bit_for_bit():
    every = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(np.float16)
    finite = every[np.isfinite(every)]  # zeros of both signs, subnormals, normals up to 65504
    for raw in (finite, np.tile(finite, 3), finite.reshape(-1, 31)[:, ::3], every):
        assert np.array_equal(stream.widen(raw).view(np.uint32), raw.astype(np.float32).view(np.uint32))
    mixed = np.tile(finite, 4)
    mixed[100_000], mixed[3] = np.inf, np.nan  # a step with Inf/NaN falls back; the others do not
    got, want = stream.widen(mixed), mixed.astype(np.float32)
    assert np.array_equal(got.view(np.uint32), want.view(np.uint32))
    out = np.empty((8, 5), np.float32)
    x = np.random.default_rng(0).normal(size=(8, 5)).astype(np.float16)
    assert stream.widen(x, out) is out and np.array_equal(out, x.astype(np.float32))
    y = np.ones((3, 2), np.float32)
    assert stream.widen(y) is y  # float32 is not copied


@pytest.mark.parametrize("compacted", [False, True])
def test_float16_pooled_is_bit_identical_to_pooling_the_widened_frames(tmp_path, monkeypatch, compacted):
    path = tmp_path / "f16"
    store = create_or_open(path, {**PROV, "dtype": "float16"})
    _write(store, 0, 23, seed=3)
    _write(store, 23, 9, seed=4, dup_of=[2])
    if compacted:
        compact_store(path)
        monkeypatch.setattr(stream, "BLOCK_FRAMES", 10)  # many blocks of one shard, through the recycled buffers
    store = open_store(path)
    store.use_cache = False
    idx = store.index()

    def numpy_cast(raw, out=None):  # how blocks were widened before ``widen``
        return raw.astype(np.float32) if out is None else np.copyto(out, raw, casting="unsafe") or out

    for name in POOLS:
        pool = get_pool(name)
        X = store.pooled(pool)  # recycled buffers, ``widen``
        with monkeypatch.context() as m:
            m.setattr(stream, "widen", numpy_cast)
            ref = stream.pool_blocks(stream.iter_blocks(idx.shards, path), len(store), pool)  # fresh arrays
        assert np.array_equal(X.view(np.uint32), ref.view(np.uint32)), name
    parts = []
    for m in idx.shards:
        with h5py.File(m.path, "r") as f:
            parts.append(f["frames/embedding"][()][m.kept_rows()].astype(np.float32))
    frames = np.concatenate(parts)
    batches = list(store.iter_batches(4))  # not recycled: every batch stays valid after the next is read
    assert np.array_equal(np.concatenate([b.frames for b in batches]), frames)
    with h5py.File(idx.shards[0].path, "r+") as f:  # an edit in the first shard: found before a result
        f["frames/embedding"][1, 1] += 1.0
    with pytest.raises(StoreError, match="frames/embedding does not match its checksum"):
        open_store(path).pooled(get_pool("mean"))


@pytest.mark.parametrize("in_memory", [False, True])
def test_pooled_cache_checksum_taken_while_pooling_is_the_matrix_s(store_path, in_memory):
    from pipeline.store.layout import digest

    store = open_store(store_path)
    if in_memory:
        store.table()  # the frames already in memory: pooled from them, not streamed
    X = store.pooled(get_pool("meanmax"))
    with h5py.File(store_path / "cache" / "pooled-meanmax.h5", "r") as f:
        assert json.loads(f.attrs["checksums"])["pooled"] == digest(X) == digest(f["pooled"][()])


def test_frames_of_one_clip_read_one_shard(store_path):
    store = open_store(store_path)
    ref = open_store(store_path).table()
    for i in (0, 25, 4, 24):
        assert np.array_equal(store.frames(i), ref.frames(i))
        assert np.array_equal(store.timestamps(i), ref.timestamp[ref.offset[i] : ref.offset[i + 1]])
    assert store._table is None
    with pytest.raises(IndexError):
        store.frames(len(store))


def test_iter_batches_visit_each_clip_once_in_shard_order(store_path):
    store = open_store(store_path)
    pool = get_pool("meanstd")
    X = store.pooled(pool)
    seen = []
    for b in store.iter_batches(3, pool=pool, timestamps=True):
        assert len(b) <= 3 and len(set(store.clip_shards()[b.indices])) == 1  # never spans two shards
        assert b.pooled is not None and np.allclose(b.pooled, X[b.indices], rtol=1e-5, atol=1e-6)
        for k, i in enumerate(b.indices):
            assert np.array_equal(b.frames[b.offsets[k] : b.offsets[k + 1]], store.frames(i))
        assert b.labels == [store.labels[i] for i in b.indices]
        seen += b.indices.tolist()
    assert seen == list(range(len(store)))
    val = [i for b in store.iter_batches(2, split="val") for i in b.indices]
    assert val == [i for i, s in enumerate(store.splits) if s == "val"]


def test_cache_is_reused_until_a_shard_is_added_or_compacted(store_path):
    pool = get_pool("mean")
    X = open_store(store_path).pooled(pool)
    files = sorted(p.name for p in (store_path / "cache").iterdir())
    assert files == ["index.h5", "pooled-mean.h5"]
    assert [c["state"] for c in open_store(store_path).info()["caches"]] == ["current", "current"]
    assert np.array_equal(open_store(store_path).pooled(pool), X)  # served from the cache: bit for bit

    _write(open_store(store_path), 27, 3, seed=3)  # a new shard: the cache must not be served
    store = open_store(store_path)
    Y = store.pooled(pool)
    assert len(Y) == len(X) + 3 and np.array_equal(Y[: len(X)], X)
    assert np.allclose(Y, _reference(store_path, pool), rtol=1e-5, atol=1e-6)

    compact_store(store_path)
    assert not (store_path / "cache").exists() or not list((store_path / "cache").glob("*.h5"))
    assert np.allclose(open_store(store_path).pooled(pool), Y, rtol=1e-5, atol=1e-6)
    assert verify_store(store_path).ok


def test_removed_shard_invalidates_the_cache(store_path):
    pool = get_pool("max")
    open_store(store_path).pooled(pool)
    store = open_store(store_path)
    store.shard_paths()[0].unlink()  # a shard removed by hand
    store = open_store(store_path)
    assert np.array_equal(store.pooled(pool), _reference(store_path, pool))
    assert len(store) == 27 - 4 + 1  # its clips 0..3 are gone but 3, stored again in a later shard


def test_damaged_or_foreign_cache_is_never_trusted(store_path, tmp_path, capsys):
    pool = get_pool("mean")
    X = open_store(store_path).pooled(pool)
    cached = store_path / "cache" / "pooled-mean.h5"
    with h5py.File(cached, "r+") as f:
        f["pooled"][0, 0] += 1.0
    with pytest.warns(RuntimeWarning, match="pooled-mean.h5: cache ignored and rebuilt .*checksum"):
        assert np.array_equal(open_store(store_path).pooled(pool), X)
    with h5py.File(cached, "r") as f:  # rebuilt in place
        assert np.array_equal(f["pooled"][()], X)

    other = tmp_path / "other"  # same identity, other clips: its cache is keyed by its own shards
    _write(create_or_open(other, PROV), 100, 10, seed=9)
    open_store(other).pooled(pool)
    shutil.copy(other / "cache" / "pooled-mean.h5", cached)
    shutil.copy(other / "cache" / "index.h5", store_path / "cache" / "index.h5")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a foreign cache is stale, not damage: silently rebuilt
        store = open_store(store_path)
        assert np.array_equal(store.pooled(pool), X)
        assert store.videos[0] == "dir/v000.mp4"

    with h5py.File(cached, "r+") as f:
        f.attrs["kind"] = "pooled"
        del f["pooled"]
        f["pooled"] = np.zeros((3, 2), np.float32)  # a cache that lies about its data
    report = verify_store(store_path)
    assert not report.ok and any("cache/pooled-mean.h5: damaged cache" in p for p in report.problems)
    code = main(["verify", str(store_path)])
    assert code == 1 and "damaged cache" in capsys.readouterr().err
    compact_store(store_path)  # drops the caches; everything else is fine
    assert verify_store(store_path).ok


def test_cache_not_written_when_a_writer_adds_a_shard_meanwhile(store_path):
    base = get_pool("mean")
    wrote = []

    class Racing:
        name = "mean"

        def __call__(self, x):
            return base(x)

        def batch(self, frames, offsets):
            if not wrote:  # a concurrent extraction finishes a shard while we read
                wrote.append(_write(open_store(store_path), 200, 2, seed=5))
            return base.batch(frames, offsets)

    store = open_store(store_path)
    X = store.pooled(Racing())
    assert len(X) == 27  # what the index saw
    assert not (store_path / "cache" / "pooled-mean.h5").exists()
    assert len(open_store(store_path).pooled(base)) == 29


def test_pooled_cache_streamed_while_pooling_is_a_plain_hdf5_file(store_path):
    X = open_store(store_path).pooled(get_pool("seg4"))
    with h5py.File(store_path / "cache" / "pooled-seg4.h5", "r") as f:
        ds = f["pooled"]
        assert ds.dtype == np.float32 and ds.chunks is None and ds.shape == X.shape
        assert np.array_equal(ds[()], X)
    assert [p.name for p in (store_path / "cache").iterdir() if p.suffix == ".tmp"] == []
    assert not [p for p in verify_store(store_path).problems if "cache" in p]  # verify re-pools and compares


def test_a_cache_write_failing_midway_leaves_no_file_and_the_read_goes_on(store_path, monkeypatch):
    import errno
    import os

    from pipeline.store import cache

    real = os.pwrite
    calls = []

    def full_disk(fd, data, offset):  # the second block's write finds the disk full
        calls.append(offset)
        if len(calls) > 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd, data, offset)

    monkeypatch.setattr(cache.os, "pwrite", full_disk)
    store = open_store(store_path)
    with pytest.warns(RuntimeWarning, match=r"pooled-mean\.h5 \(no space left on the device\).*cache is skipped"):
        X = store.pooled(get_pool("mean"), progress=False)
    assert len(calls) > 1
    assert np.allclose(X, _reference(store_path, get_pool("mean")), rtol=1e-5, atol=1e-6)
    assert sorted(p.name for p in (store_path / "cache").iterdir()) == ["index.h5"]  # no cache, no tmp file
    monkeypatch.setattr(cache.os, "pwrite", real)
    assert np.array_equal(open_store(store_path).pooled(get_pool("mean")), X)  # written now, and right
    assert (store_path / "cache" / "pooled-mean.h5").exists()
    assert not [p for p in verify_store(store_path).problems if "cache" in p]


def test_prefault_keeps_the_values(monkeypatch):
    a = np.arange(3 << 20, dtype=np.float32).reshape(-1, 256)
    monkeypatch.setattr(stream, "_PREFAULT_STEP", 1 << 16)  # several madvise steps, the last one partial
    before = a.copy()
    assert stream.prefault(a[1:]) in (True, False)  # False only where the kernel lacks MADV_POPULATE_WRITE
    assert np.array_equal(a, before)


def test_read_only_store_is_read_without_a_cache(store_path):
    (store_path / "cache").mkdir()
    (store_path / "cache").chmod(0o500)
    try:
        if (store_path / "cache" / "probe").exists() or _writable(store_path / "cache"):
            pytest.skip("running as a user who can write to read-only folders")
        with pytest.warns(RuntimeWarning, match="cache is skipped"):
            X = open_store(store_path).pooled(get_pool("mean"))
        assert np.allclose(X, _reference(store_path, get_pool("mean")), rtol=1e-5, atol=1e-6)
    finally:
        (store_path / "cache").chmod(0o700)


def _writable(folder):
    try:
        (folder / "probe").write_text("x")
        (folder / "probe").unlink()
        return True
    except OSError:
        return False


def test_info_lists_caches(store_path, capsys):
    open_store(store_path).pooled(get_pool("seg4"))
    assert main(["info", str(store_path)]) == 0
    out = capsys.readouterr().out
    assert "pooled seg4 27x24" in out and "current" in out and "clip index (27 clips)" in out


def test_torch_dataset_in_shard_order_reads_each_shard_once(store_path, monkeypatch):
    from pipeline.store.torch_dataset import ShardOrderSampler

    ref = open_store(store_path).table()
    store = open_store(store_path)
    ds = store.torch_dataset(split=None)
    store.index()
    opened = []
    real = h5py.File

    def counting(path, *a, **k):
        opened.append(str(path))
        return real(path, *a, **k)

    monkeypatch.setattr(h5py, "File", counting)
    order = list(ShardOrderSampler(ds, seed=0))
    assert sorted(order) == list(range(len(ds))) and order != sorted(order)  # shuffled, every clip once
    for k in order:
        x, y = ds[k]
        assert np.array_equal(x.numpy(), ref.frames(int(ds.indices[k])))
    assert sorted(opened) == sorted(str(m.path) for m in store.index().shards)  # each shard opened once


# -- exports -------------------------------------------------------------------------------------------------
def test_parquet_export_opens_with_pandas_and_datasets(store_path, tmp_path, monkeypatch):
    pd = pytest.importorskip("pandas")
    datasets = pytest.importorskip("datasets")
    out = tmp_path / "clips.parquet"
    assert main(["export", str(store_path), "-o", str(out), "--row-group", "5"]) == 0
    store = open_store(store_path)
    X = store.pooled(get_pool("mean"))

    df = pd.read_parquet(out)
    assert list(df.columns) == ["video", "start", "end", "label", "split", "embedding"]
    assert df["video"].tolist() == store.videos and df["label"].tolist() == store.labels
    assert df["start"].isna().all()  # open ends are null
    assert np.array_equal(np.stack(df["embedding"].to_numpy()).astype(np.float32), X)

    import pyarrow.parquet as pq

    pf = pq.ParquetFile(out)
    assert pf.metadata.num_row_groups == 6  # 27 rows in groups of 5
    meta = json.loads(pf.schema_arrow.metadata[b"vidprobe"])
    assert meta["pool"] == "mean" and meta["provenance"]["encoder"] == "test-enc"

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    ds = datasets.load_dataset(
        "parquet", data_files=str(out), split="train", cache_dir=str(tmp_path / "hf-cache")
    ).with_format("numpy")
    assert np.array_equal(np.asarray(ds["embedding"], dtype=np.float32), X)
    assert list(ds["split"]) == store.splits


def test_parquet_export_of_frames(store_path, tmp_path):
    pd = pytest.importorskip("pandas")
    out = tmp_path / "frames.parquet"
    assert main(["export", str(store_path), "-o", str(out), "--frames"]) == 0
    df = pd.read_parquet(out)
    store = open_store(store_path)
    for i in (0, 8, 26):
        assert np.array_equal(np.stack(df["embedding"][i]).astype(np.float32), store.frames(i))
        assert np.array_equal(df["timestamps"][i], store.timestamps(i))
        assert df["num_frames"][i] == len(store.frames(i))


def test_npy_export_one_file_per_video(store_path, tmp_path):
    out = tmp_path / "npy"
    assert main(["export", str(store_path), "-o", str(out), "--format", "npy", "--pool", "max"]) == 0
    index = json.loads((out / "index.json").read_text())
    store = open_store(store_path)
    X = store.pooled(get_pool("max"))
    assert len(index["videos"]) == len(store) and index["pool"] == "max"
    for v in index["videos"]:
        arr = np.load(out / v["file"], allow_pickle=False)
        i = store.videos.index(v["video"])
        assert np.array_equal(arr[v["clips"][0]["rows"][0]], X[i])
        assert v["clips"][0]["label"] == store.labels[i]
    out2 = tmp_path / "npy-frames"
    assert main(["export", str(store_path), "-o", str(out2), "--format", "npy", "--frames"]) == 0
    index = json.loads((out2 / "index.json").read_text())
    v = index["videos"][3]
    i = store.videos.index(v["video"])
    a, b = v["clips"][0]["rows"]
    assert np.array_equal(np.load(out2 / v["file"])[a:b], store.frames(i))
    assert v["clips"][0]["timestamps"] == store.timestamps(i).tolist()


def test_export_refusals_are_one_line(store_path, tmp_path, capsys):
    out = tmp_path / "x.parquet"
    out.write_text("keep me")
    assert main(["export", str(store_path), "-o", str(out)]) != 0
    err = capsys.readouterr().err
    assert "exists" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert out.read_text() == "keep me"
    assert main(["export", str(store_path), "-o", str(tmp_path / "y.csv")]) != 0
    assert "--format npy" in capsys.readouterr().err
    assert main(["export", str(store_path), "-o", str(tmp_path / "z.parquet"), "--pool", "median"]) != 0
    assert "pool='median'" in capsys.readouterr().err
    assert not (tmp_path / "z.parquet").exists()


def test_verify_and_info_agree_that_a_fresh_pooled_cache_is_current(store_path, capsys):
    open_store(store_path).pooled(get_pool("seg4"))
    assert [c["state"] for c in open_store(store_path).info()["caches"]] == ["current", "current"]
    main(["verify", "--json", str(store_path)])  # (the store holds duplicates, a problem of its own)
    report = json.loads(capsys.readouterr().out)
    assert not [n for n in report["notes"] + report["problems"] if "cache" in n], report


def _edit_pooled_rows(path, edit):
    """Change a pooled cache's rows and write the checksum of the new rows: the file is intact, its rows lie."""
    from pipeline.store.layout import digest

    with h5py.File(path, "r+") as f:
        X = edit(f["pooled"][()])
        f["pooled"][...] = X
        f.attrs["checksums"] = json.dumps({"pooled": digest(X)})


def test_a_pooled_cache_whose_rows_were_edited_and_rechecksummed_is_neither_served_nor_passed(store_path, capsys):
    pool = get_pool("mean")
    X = open_store(store_path).pooled(pool)
    cached = store_path / "cache" / "pooled-mean.h5"
    _edit_pooled_rows(cached, lambda a: np.roll(a, 1, axis=0))  # every row now another clip's
    with pytest.warns(RuntimeWarning, match="pooled-mean.h5: cache ignored and rebuilt .*rows differ"):
        assert np.array_equal(open_store(store_path).pooled(pool), X)  # a read checks a few rows and rebuilds
    with h5py.File(cached, "r") as f:
        assert np.array_equal(f["pooled"][()], X)

    _edit_pooled_rows(cached, lambda a: a + (np.arange(len(a)) == 11)[:, None])  # one row of 27: verify finds it
    assert main(["verify", str(store_path)]) == 1
    err = capsys.readouterr().err
    assert "cache/pooled-mean.h5: damaged cache (its rows differ from the shards' frames pooled again; removed)" in err
    assert not cached.exists()
    assert np.array_equal(open_store(store_path).pooled(pool), X)
    assert not [p for p in verify_store(store_path, get_pool).problems if "cache" in p]


def _big_store(path, n=3000):
    """n one-frame-pair clips in one shard: an export of it in row groups of one clip takes a while."""
    store = create_or_open(path, PROV)
    rng = np.random.default_rng(0)
    with ShardWriter(store, shard_size=n) as w:
        for j in range(n):
            w.add(f"v{j}.mp4", None, None, "ab"[j % 2], "train", rng.normal(size=(2, D)).astype(np.float32), [0, 1])
    return path


def _export_running(store, out):
    """A real ``vidprobe export`` process, returned once its temporary file exists (it is writing row groups)."""
    cmd = [sys.executable, "-m", "pipeline", "export", str(store), "-o", str(out), "--frames", "--row-group", "1"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        tmp = [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.") and p.suffix == ".tmp"]
        if tmp:
            return proc, tmp[0]
        time.sleep(0.002)
    proc.kill()
    raise AssertionError(f"the export never wrote its temporary: {proc.communicate()}")


def test_a_file_created_at_the_output_while_a_parquet_export_runs_is_kept(tmp_path):
    store = _big_store(tmp_path / "s")
    out = tmp_path / "o" / "x.parquet"
    out.parent.mkdir()
    proc, tmp = _export_running(store, out)
    out.write_text("someone else's file")  # while the export writes its row groups
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 1, err
    line = err.strip().splitlines()[-1]
    assert f"{out}: appeared while the export ran" in line and "Traceback" not in err
    assert out.read_text() == "someone else's file"
    assert sorted(p.name for p in out.parent.iterdir()) == ["x.parquet"]  # the temporary is gone too


def test_the_temporary_of_a_killed_export_is_removed_by_the_next(tmp_path, capsys):
    store = _big_store(tmp_path / "s")
    out = tmp_path / "o" / "x.parquet"
    out.parent.mkdir()
    proc, tmp = _export_running(store, out)
    proc.kill()  # SIGKILL: no cleanup runs
    proc.communicate(timeout=60)
    assert tmp.exists() and not out.exists() and f"-{proc.pid}-" in tmp.name  # named with its writer's pid
    assert main(["export", str(store), "-o", str(tmp_path / "o" / "y.parquet")]) == 0
    assert sorted(p.name for p in out.parent.iterdir()) == ["y.parquet"]  # another export into the folder
    import pyarrow.parquet as pq

    assert pq.read_table(tmp_path / "o" / "y.parquet").num_rows == 3000


def test_a_cache_temporary_left_by_a_dead_writer_is_removed_by_the_next_cache_write(store_path):
    from pipeline.store.lock import writer_tag

    gone = subprocess.run(  # a process that has exited: its tag names a dead writer
        [sys.executable, "-c", "from pipeline.store.lock import writer_tag; print(writer_tag())"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    (store_path / "cache").mkdir()
    dead = store_path / "cache" / f"pooled-mean.h5.{gone}-0badcafe.tmp"
    live = store_path / "cache" / f"pooled-max.h5.{writer_tag()}-0badcafe.tmp"  # a writer still running: kept
    for p in (dead, live):
        p.write_bytes(b"\0" * 4096)
    open_store(store_path).pooled(get_pool("mean"))
    assert not dead.exists() and live.exists()
    assert sorted(p.name for p in (store_path / "cache").glob("*.h5")) == ["index.h5", "pooled-mean.h5"]


def test_verify_recomputing_a_pooled_cache_while_a_writer_adds_a_shard_calls_it_stale_not_wrong(store_path):
    base = get_pool("mean")
    open_store(store_path).pooled(base)
    wrote = []

    class Racing:  # a concurrent extraction finishes a shard while verify pools the store again
        name = "mean"

        def __call__(self, x):
            return base(x)

        def batch(self, frames, offsets):
            if not wrote:
                wrote.append(_write(open_store(store_path), 300, 2, seed=6))
            return base.batch(frames, offsets)

    report = verify_store(store_path, lambda name: Racing())
    assert wrote and not [p for p in report.problems if "cache" in p], report.problems
    assert any("pooled-mean.h5: stale (the shards changed while verifying)" in n for n in report.notes)
    assert (store_path / "cache" / "pooled-mean.h5").exists()
