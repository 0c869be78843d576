import json
from pathlib import Path

import h5py
import numpy as np
import pytest

from pipeline.errors import StoreError
from pipeline.store import ShardWriter, create_or_open, open_store

PROV = {
    "encoder": "test-enc",
    "weights_id": "w1",
    "dim": 4,
    "preprocess": {"size": 8},
    "sampling": {"strategy": "uniform", "num_frames": 3},
}


def _fill(store, n, shard_size=2, offset=0):
    rng = np.random.default_rng(offset)
    with ShardWriter(store, shard_size=shard_size) as w:
        for i in range(offset, offset + n):
            w.add(
                f"v{i}.mp4",
                None,
                None,
                f"l{i % 2}",
                "train",
                rng.normal(size=(3, 4)).astype(np.float32),
                np.array([0.1, 0.2, 0.3]),
            )
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


# --- dtype, compression, provenance ------------------------------------------------------------


def _clip(i, t=3, d=4):
    return np.random.default_rng(i).normal(size=(t, d)).astype(np.float32) * (i + 1)


@pytest.mark.parametrize(
    "dtype, compression", [("float32", "gzip"), ("float32", "lzf"), ("float16", "none"), ("float16", "gzip")]
)
def test_dtype_and_compression_roundtrip(tmp_path, dtype, compression):
    store = create_or_open(tmp_path / "s", {**PROV, "dtype": dtype})
    with ShardWriter(store, shard_size=3, compression=compression) as w:
        for i in range(7):
            w.add(f"v{i}.mp4", None, None, "", "", _clip(i), np.arange(3.0))
    s = open_store(tmp_path / "s")
    assert len(s) == 7 and s.embeddings.dtype == np.float32  # readers always get float32
    tol = 0 if dtype == "float32" else 2.0**-11  # float16: relative rounding error of at most half an ulp
    for i in range(7):
        assert np.allclose(s.frames(i), _clip(i), rtol=tol, atol=0)
    with h5py.File(w.written[0], "r") as f:
        assert f["frames/embedding"].dtype == np.dtype(dtype)
        assert (f["frames/embedding"].compression or "none") == compression
    assert s.info()["dtype"] == dtype and s.info()["compression"] == [compression]


def test_dtype_is_identity_compression_is_not(tmp_path):
    store = create_or_open(tmp_path / "s", PROV)
    assert store.provenance["dtype"] == "float32"  # default recorded
    with pytest.raises(StoreError, match="dtype"):
        create_or_open(tmp_path / "s", {**PROV, "dtype": "float16"})
    _fill(store, 2)
    with ShardWriter(store, compression="gzip") as w:  # another run may compress; the store stays one table
        w.add("z.mp4", None, None, "", "", _clip(9), np.arange(3.0))
    assert len(open_store(tmp_path / "s")) == 3


def test_store_without_dtype_key_is_float32(tmp_path):
    store = create_or_open(tmp_path / "s", PROV)
    _fill(store, 2)
    prov = json.loads((tmp_path / "s" / "store.json").read_text())
    del prov["dtype"]  # a store written before dtype existed
    (tmp_path / "s" / "store.json").write_text(json.dumps(prov))
    assert len(create_or_open(tmp_path / "s", {**PROV, "dtype": "float32"})) == 2


def test_float16_overflow_is_refused(tmp_path):
    store = create_or_open(tmp_path / "s", {**PROV, "dtype": "float16"})
    with pytest.raises(StoreError, match="float16"):
        ShardWriter(store).add("v.mp4", None, None, "", "", np.full((3, 4), 1e6, np.float32), np.zeros(3))


# --- read API -----------------------------------------------------------------------------------


def test_read_api_labels_splits_frames_pooled_without_loading_for_metadata(tmp_path):
    store = create_or_open(tmp_path / "s", PROV)
    with ShardWriter(store, shard_size=2) as w:
        for i in range(5):
            t = 2 + i % 2  # variable T per clip
            w.add(
                f"v{i}.mp4",
                float(i),
                float(i + 1),
                f"l{i % 2}",
                ["train", "val", "test"][i % 3],
                _clip(i, t=t),
                np.arange(t) * 0.5,
            )
    s = open_store(tmp_path / "s")
    assert s.labels == ["l0", "l1", "l0", "l1", "l0"]
    assert s.splits == ["train", "val", "test", "train", "val"]
    assert list(s.starts) == [0, 1, 2, 3, 4] and list(s.ends) == [1, 2, 3, 4, 5]
    assert s._table is None  # metadata came from the index alone
    assert s.frames(1).shape == (3, 4) and np.array_equal(s.frames(1), _clip(1, t=3))
    assert np.array_equal(s.timestamps(1), [0.0, 0.5, 1.0])
    pooled = s.pooled(lambda x: x.mean(0))
    assert pooled.shape == (5, 4) and np.allclose(pooled[3], _clip(3, t=3).mean(0))
    assert list(s.offsets) == [0, 2, 5, 7, 10, 12]


def test_single_shard_file_opens_read_only(tmp_path):
    store = create_or_open(tmp_path / "s", PROV)
    w = _fill(store, 2, shard_size=10)
    s = open_store(w.written[0])
    assert len(s) == 2 and s.failures()[0]["path"] == "bad.mp4"
    with pytest.raises(StoreError, match="read-only"):
        s.writer_lock()


def test_torch_dataset_items_and_padding(tmp_path):
    torch = pytest.importorskip("torch")
    from pipeline.store.torch_dataset import pad_collate

    store = create_or_open(tmp_path / "s", PROV)
    with ShardWriter(store) as w:
        for i in range(4):
            w.add(
                f"v{i}.mp4",
                None,
                None,
                ["b", "a", "", "a"][i],
                "train" if i < 3 else "test",
                _clip(i, t=2 + i),
                np.arange(2.0 + i),
            )
    ds = open_store(tmp_path / "s").torch_dataset(split="train")
    assert len(ds) == 3 and ds.classes == ["a", "b"]
    x, y = ds[0]
    assert isinstance(x, torch.Tensor) and x.shape == (2, 4) and x.dtype == torch.float32 and y == 1
    assert ds[2][1] == -1  # unlabeled
    frames, lengths, labels = pad_collate([ds[k] for k in range(3)])
    assert frames.shape == (3, 4, 4) and lengths.tolist() == [2, 3, 4] and labels.tolist() == [1, 0, -1]
    assert torch.equal(frames[0, 2:], torch.zeros(2, 4))
    pooled = open_store(tmp_path / "s").torch_dataset(pool=lambda a: a.mean(0))
    assert pooled[3][0].shape == (4,)


# --- failures -----------------------------------------------------------------------------------


def test_failures_latest_record_counts_and_fixed_ones_disappear(tmp_path):
    store = create_or_open(tmp_path / "s", PROV)
    with ShardWriter(store) as w:
        w.add_failure("a.mp4", None, None, "decode", "a.mp4: first")
        w.add_failure("b.mp4", None, None, "decode", "b.mp4: broken")
    with ShardWriter(store) as w:
        w.add_failure("a.mp4", None, None, "decode", "a.mp4: second")
    s = open_store(tmp_path / "s")
    assert [(f["path"], f["error"]) for f in s.failures()] == [("b.mp4", "b.mp4: broken"), ("a.mp4", "a.mp4: second")]
    with ShardWriter(store) as w:
        w.add("b.mp4", None, None, "", "", _clip(0), np.arange(3.0))  # fixed and re-extracted
    s = open_store(tmp_path / "s")
    assert [f["path"] for f in s.failures()] == ["a.mp4"] and s.info()["failures_by_stage"] == {"decode": 1}


# --- verify and compact -------------------------------------------------------------------------


def test_verify_passes_on_a_good_store_and_finds_each_kind_of_damage(tmp_path):
    from pipeline.store.tools import verify_store

    store = create_or_open(tmp_path / "s", PROV)
    w = _fill(store, 6)
    report = verify_store(tmp_path / "s")
    assert report.ok and report.clips == 6 and report.shards == 4 and report.failures == 1
    a, b, c = w.written[:3]
    with h5py.File(a, "r+") as f:  # NaN in the middle of a shard
        f["frames/embedding"][1, 2] = np.nan
    with h5py.File(b, "r+") as f:  # offsets that do not add up
        f["clips/offset"][2] = 99
    data = c.read_bytes()
    c.write_bytes(data[: len(data) // 2])  # a truncated finished shard (not our writer's doing)
    _fill(store, 2)  # clips v0, v1 stored again: duplicates across shards
    problems = " | ".join(verify_store(tmp_path / "s").problems)
    assert "NaN" in problems and a.name in problems
    assert "offset" in problems and b.name in problems
    assert "cannot be read" in problems and c.name in problems
    assert "more than one shard" in problems


def test_verify_reports_foreign_provenance_in_a_shard(tmp_path):
    from pipeline.store.tools import verify_store

    store = create_or_open(tmp_path / "s", PROV)
    w = _fill(store, 2)
    with h5py.File(w.written[0], "r+") as f:
        f.attrs["provenance"] = json.dumps({**PROV, "weights_id": "w2", "schema_version": 1})
    problems = verify_store(tmp_path / "s").problems
    assert len(problems) == 1 and "weights_id" in problems[0]


def test_compact_merges_dedups_keeps_current_failures_and_is_idempotent(tmp_path):
    from pipeline.store.tools import compact_store, verify_store

    store = create_or_open(tmp_path / "s", PROV)
    _fill(store, 5)
    _fill(store, 2, offset=3)  # v3, v4 again (with other values): duplicates; the first stored wins
    with ShardWriter(store) as w:
        w.add("bad.mp4", None, None, "", "", _clip(1), np.arange(3.0))  # the failure got fixed
        w.add_failure("worse.mp4", None, None, "decode", "worse.mp4: nope")
    before = open_store(tmp_path / "s")
    emb_before = {k: before.frames(i).copy() for i, k in enumerate(before.keys())}
    (tmp_path / "s" / "shards" / "shard-0-all-dead.h5.tmp").write_bytes(b"\0" * 10)
    out = compact_store(tmp_path / "s", compression="gzip")
    assert out["changed"] and out["shards_after"] == 1 and out["duplicates_dropped"] == 2
    assert [p.name for p in (tmp_path / "s" / "shards").iterdir()] == [Path(out["shard"]).name]
    after = open_store(tmp_path / "s")
    assert after.keys() == before.keys()
    for i, k in enumerate(after.keys()):
        assert np.array_equal(after.frames(i), emb_before[k])
    assert [f["path"] for f in after.failures()] == ["worse.mp4"]
    assert verify_store(tmp_path / "s").ok
    assert not compact_store(tmp_path / "s")["changed"]  # already one shard with that compression


KILL_AT_FIRST_DELETE = """
import os, pathlib, signal, sys
real = pathlib.Path.unlink
def unlink(self, missing_ok=False):
    if self.suffix == ".h5":  # compaction committed its merged shard and starts deleting the old ones
        os.kill(os.getpid(), signal.SIGKILL)
    return real(self, missing_ok=missing_ok)
pathlib.Path.unlink = unlink
from pipeline.store.tools import compact_store
compact_store(sys.argv[1])
"""


def test_kill_during_compaction_cleanup_leaves_a_consistent_store(tmp_path):
    import signal
    import subprocess
    import sys

    from pipeline.store.tools import compact_store, verify_store

    store = create_or_open(tmp_path / "s", PROV)
    _fill(store, 5)
    n_old = len(list((tmp_path / "s" / "shards").glob("*.h5")))
    proc = subprocess.run(
        [sys.executable, "-c", KILL_AT_FIRST_DELETE, str(tmp_path / "s")], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert len(list((tmp_path / "s" / "shards").glob("*.h5"))) == n_old + 1  # merged shard + every old one
    s = open_store(tmp_path / "s")
    assert len(s) == 5 and s.info()["superseded_shards"] == n_old and s.info()["duplicates"] == 0
    assert [f["path"] for f in s.failures()] == ["bad.mp4"]
    report = verify_store(tmp_path / "s")
    assert report.ok and any("replaced by a compacted shard" in n for n in report.notes)
    assert compact_store(tmp_path / "s")["changed"]  # the dead process's lock is stale: no manual cleanup
    assert len(list((tmp_path / "s" / "shards").glob("*.h5"))) == 1 and len(open_store(tmp_path / "s")) == 5


def test_readme_plain_h5py_example_reads_what_open_store_reads(tmp_path):
    """The docs' h5py/numpy snippet, run against a real store (with a duplicate and a compaction leftover)."""
    import re

    from pipeline.store.tools import compact_store

    store = create_or_open(tmp_path / "s", PROV)
    _fill(store, 5)
    _fill(store, 2)  # duplicates: the first stored wins
    readme = (Path(__file__).parents[1] / "docs" / "store-format.md").read_text(encoding="utf-8")
    snippet = re.search(r"With plain h5py and numpy.*?```python\n(.*?)```", readme, re.S).group(1)
    scope: dict = {}
    exec(snippet.replace("features/mine", str(tmp_path / "s")), scope)
    s = open_store(tmp_path / "s")
    assert scope["names"] == s.videos and np.allclose(scope["X"], s.pooled(lambda x: x.mean(0)))
    compact_store(tmp_path / "s")
    exec(snippet.replace("features/mine", str(tmp_path / "s")), scope := {})
    assert scope["names"] == s.videos


def test_cli_verify_and_info_text(tmp_path, capsys):
    from pipeline.cli import main

    store = create_or_open(tmp_path / "s", PROV)
    w = _fill(store, 3)
    assert main(["verify", str(store.path)]) == 0
    assert capsys.readouterr().out.startswith("OK: 2 shards, 3 clips")
    assert main(["info", str(store.path)]) == 0
    out = capsys.readouterr().out
    assert "3 (9 frames, 3 per clip)" in out and "failures     1 video (decode 1)" in out
    assert "bad.mp4: cannot open" in out
    with h5py.File(w.written[0], "r+") as f:
        f["frames/timestamp"][0] = np.inf
    assert main(["verify", str(store.path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("problem: ") and "timestamp" in err and len(err.strip().splitlines()) == 1


def test_old_store_still_loads(tmp_path):
    """A store written before issue 24's store refactor (tests/fixtures/old_store) reads the same values."""
    import shutil

    from pipeline.store.tools import verify_store

    fixtures = Path(__file__).parent / "fixtures"
    shutil.copytree(fixtures / "old_store", tmp_path / "old")  # reading writes cache/ into the store folder
    expected = json.loads((fixtures / "old_store_expected.json").read_text(encoding="utf-8"))
    arrays = np.load(fixtures / "old_store_expected.npz")
    report = verify_store(tmp_path / "old")
    assert report.ok and (report.shards, report.clips, report.frames, report.failures) == (2, 2, 6, 1), report
    for attempt in ("shards", "cache"):  # the first read builds the index cache, the second reads it
        store = open_store(tmp_path / "old")
        assert (tmp_path / "old" / "cache" / "index.h5").is_file() == (attempt == "cache")
        keys = store.keys()
        assert [list(k) for k in keys] == expected["keys"]
        assert (store.videos, store.labels, store.splits) == (
            expected["videos"],
            expected["labels"],
            expected["splits"],
        )
        assert [p.name for p in store.shard_paths()] == expected["shards"]
        assert json.dumps(store.failures(), sort_keys=True) == json.dumps(expected["failures"], sort_keys=True)
        assert store.index().current_sources() == {"v0.mp4": (1000, 1700000000000000000, 12345), "bad.mp4": (7, 8, 9)}
        np.testing.assert_array_equal(store.offsets, arrays["offsets"])
        np.testing.assert_array_equal(store.starts, arrays["starts"])
        np.testing.assert_array_equal(store.ends, arrays["ends"])
        np.testing.assert_array_equal(store.frames(1), arrays["embeddings"][3:6])
        np.testing.assert_array_equal(store.timestamps(0), arrays["timestamps"][:3])
        np.testing.assert_array_equal(store.embeddings, arrays["embeddings"])
    assert verify_store(tmp_path / "old").ok
