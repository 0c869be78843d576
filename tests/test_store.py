import h5py
import numpy as np
import pytest

from pipeline.errors import StoreError
from pipeline.store import ShardWriter, create_or_open, open_store

PROV = {"encoder": "test-enc", "weights_id": "w1", "dim": 4, "preprocess": {"size": 8}, "sampling": {"strategy": "uniform", "num_frames": 3}}


def _fill(store, n, shard_size=2, offset=0):
    rng = np.random.default_rng(offset)
    with ShardWriter(store, shard_size=shard_size) as w:
        for i in range(offset, offset + n):
            w.add(f"v{i}.mp4", None, None, f"l{i % 2}", "train", rng.normal(size=(3, 4)).astype(np.float32), np.array([0.1, 0.2, 0.3]))
        w.add_failure("bad.mp4", None, None, "decode", "bad.mp4: cannot open")
    return w


def test_roundtrip_with_plain_h5py(tmp_path):
    store = create_or_open(tmp_path / "s", PROV)
    w = _fill(store, 5)
    assert len(w.written) == 3  # 2 + 2 + (1 clip + 1 failure)
    s = open_store(tmp_path / "s")
    t = s.table()
    assert len(t) == 5 and t.embedding.shape == (15, 4)
    assert t.video == [f"v{i}.mp4" for i in range(5)]
    assert s.failures()[0]["stage"] == "decode"
    assert s.pooled(lambda x: x.mean(0)).shape == (5, 4)
    # documented layout, read without vidprobe
    with h5py.File(w.written[0], "r") as f:
        off = f["clips/offset"][()]
        assert list(off) == [0, 3, 6]
        assert f["frames/embedding"].shape == (6, 4)
        assert f["clips/video"][0].decode() == "v0.mp4"


def test_unfinished_tmp_shards_are_ignored(tmp_path):
    store = create_or_open(tmp_path / "s", PROV)
    _fill(store, 2)
    (tmp_path / "s" / "shards" / "shard-x.h5.tmp").write_bytes(b"\0" * 100)
    s = open_store(tmp_path / "s")
    assert len(s.table()) == 2
    assert s.info()["unfinished_shards"] == 1


def test_duplicates_across_shards_are_read_once_and_resume_keys(tmp_path):
    store = create_or_open(tmp_path / "s", PROV)
    _fill(store, 3)
    _fill(store, 3)  # same keys again
    s = open_store(tmp_path / "s")
    assert len(s.table()) == 3
    assert ("v1.mp4", -1.0, -1.0) in s.done_keys()
    assert ("bad.mp4", -1.0, -1.0) in s.done_keys(include_failed=True)
    assert ("bad.mp4", -1.0, -1.0) not in s.done_keys(include_failed=False)


def test_mismatched_provenance_is_refused_naming_the_difference(tmp_path):
    create_or_open(tmp_path / "s", PROV)
    other = {**PROV, "sampling": {"strategy": "uniform", "num_frames": 16}}
    with pytest.raises(StoreError, match="sampling"):
        create_or_open(tmp_path / "s", other)


def test_nan_embeddings_are_refused(tmp_path):
    store = create_or_open(tmp_path / "s", PROV)
    w = ShardWriter(store)
    with pytest.raises(StoreError, match="NaN"):
        w.add("v.mp4", None, None, "", "", np.full((3, 4), np.nan, np.float32), np.zeros(3))


def test_open_missing_store_says_how_to_make_one(tmp_path):
    with pytest.raises(StoreError, match="vidprobe extract"):
        open_store(tmp_path / "nothing")
