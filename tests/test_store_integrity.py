"""Integrity of a finished store with real HDF5 files: checksums, per-shard identity, verify/compact refusals,
full disks and read-only stores (issue 13)."""

from __future__ import annotations

import errno
import json
import os
import shutil

import h5py
import numpy as np
import pytest

from pipeline.cli import main
from pipeline.errors import StoreError
from pipeline.store import ShardWriter, create_or_open, open_store
from pipeline.store.tools import compact_store, verify_store

T = 3
PROV = {
    "encoder": "test-enc",
    "weights_id": "w1",
    "dim": 4,
    "preprocess": {"size": 8},
    "sampling": {"strategy": "uniform", "num_frames": T},
}


def _store(path, n=6, shard_size=2, prov=PROV, frames=T, seed=0):
    store = create_or_open(path, prov)
    rng = np.random.default_rng(seed)
    with ShardWriter(store, shard_size=shard_size) as w:
        for i in range(n):
            emb = rng.normal(size=(frames, prov["dim"])).astype(np.float32)
            w.add(f"v{seed}_{i}.mp4", None, None, f"l{i % 2}", "train" if i % 3 else "test", emb, np.arange(frames) / 2)
    return store, w.written


def _flip_raw_mantissa_bit(shard, row=1, col=2):
    """Flip the lowest mantissa bit of one float32 in the file's bytes (the value stays finite)."""
    with h5py.File(shard, "r") as f:
        ds = f["frames/embedding"]
        where = ds.id.get_offset() + (row * ds.shape[1] + col) * ds.dtype.itemsize
        before = float(ds[row, col])
    with open(shard, "r+b") as fh:
        fh.seek(where)
        b = fh.read(1)
        fh.seek(where)
        fh.write(bytes([b[0] ^ 1]))
    with h5py.File(shard, "r") as f:
        after = float(f["frames/embedding"][row, col])
    assert after != before and np.isfinite(after)


def _verify_cli(path, capsys):
    code = main(["verify", str(path)])
    return code, capsys.readouterr()


def test_every_dataset_of_a_finished_shard_carries_a_checksum(tmp_path):
    _, shards = _store(tmp_path / "s")
    with h5py.File(shards[0], "r") as f:
        sums = json.loads(f.attrs["checksums"])
    assert {"frames/embedding", "frames/timestamp", "clips/offset", "clips/video", "failures/path"} <= set(sums)
    assert all(v.startswith("crc32:") for v in sums.values())
    report = verify_store(tmp_path / "s")
    assert report.ok and not report.notes


def test_shards_with_the_older_sha256_checksums_still_check(tmp_path, capsys):
    """A shard written before CRC-32 (its checksums "sha256:HEX") reads and verifies, and damage still shows."""
    from pipeline.store.layout import Digest

    store, shards = _store(tmp_path / "s")
    for shard in shards:
        with h5py.File(shard, "r+") as f:
            old = {}
            f.visititems(lambda name, obj: old.__setitem__(name, obj[()]) if hasattr(obj, "shape") else None)
            f.attrs["checksums"] = json.dumps({k: Digest("sha256").update(v).hexdigest() for k, v in old.items()})
    with h5py.File(shards[0], "r") as f:
        assert json.loads(f.attrs["checksums"])["frames/embedding"].startswith("sha256:")
    assert verify_store(store.path).ok
    reopened = open_store(store.path)
    want = np.stack([reopened.frames(i).mean(0) for i in range(len(reopened))])
    np.testing.assert_array_equal(open_store(store.path).pooled(lambda x: x.mean(0)), want)
    _flip_raw_mantissa_bit(shards[1])
    code, out = _verify_cli(store.path, capsys)
    assert code == 1 and shards[1].name in out.err and "frames/embedding" in out.err
    with pytest.raises(StoreError, match=f"{shards[1].name}: frames/embedding does not match its checksum"):
        open_store(store.path).pooled(lambda x: x.mean(0))


def test_a_flipped_mantissa_bit_on_disk_fails_verify_and_the_reader(tmp_path, capsys):
    store, shards = _store(tmp_path / "s")
    _flip_raw_mantissa_bit(shards[1])
    code, out = _verify_cli(store.path, capsys)
    assert code == 1
    assert shards[1].name in out.err and "frames/embedding" in out.err and "checksum" in out.err
    assert len(out.err.strip().splitlines()) == 1
    with pytest.raises(StoreError, match=f"{shards[1].name}: frames/embedding does not match its checksum"):
        open_store(store.path).pooled(lambda x: x.mean(0))


def test_a_value_rewritten_through_h5py_fails_verify(tmp_path, capsys):
    store, shards = _store(tmp_path / "s")
    with h5py.File(shards[0], "r+") as f:
        v = f["frames/embedding"][0:1, 0:1].copy()
        f["frames/embedding"][0, 0] = (v.view(np.uint32) ^ np.uint32(1)).view(np.float32)[0, 0]
    code, out = _verify_cli(store.path, capsys)
    assert code == 1 and shards[0].name in out.err and "frames/embedding" in out.err


def test_a_shifted_offset_fails_verify_and_the_reader(tmp_path, capsys):
    store, shards = _store(tmp_path / "s", n=6, shard_size=3)
    with h5py.File(shards[0], "r+") as f:
        f["clips/offset"][2] += 1  # clip 1 takes clip 2's first frame
    code, out = _verify_cli(store.path, capsys)
    assert code == 1
    assert shards[0].name in out.err and "clips/offset" in out.err and "num_frames=3" in out.err
    with pytest.raises(StoreError, match="clips/offset does not match its checksum"):
        len(open_store(store.path))


def test_shards_without_checksums_still_read_and_verify_notes_it(tmp_path, capsys):
    store, shards = _store(tmp_path / "s")
    for shard in shards:
        with h5py.File(shard, "r+") as f:
            del f.attrs["checksums"]
    s = open_store(store.path)
    assert s.pooled(lambda x: x.mean(0)).shape == (6, 4)
    code, out = _verify_cli(store.path, capsys)
    assert code == 0 and "carries no checksums" in out.out
    # without checksums the sampling identity and the timestamps still catch a shifted offset
    with h5py.File(shards[0], "r+") as f:
        f["clips/offset"][1] += 1
    code, out = _verify_cli(store.path, capsys)
    assert code == 1 and "clips/offset" in out.err and shards[0].name in out.err


def test_offsets_that_disagree_with_the_timestamps_are_found_when_clip_lengths_vary(tmp_path):
    prov = {**PROV, "sampling": {"strategy": "fps", "fps": 2.0, "max_frames": 0}}
    store = create_or_open(tmp_path / "s", prov)
    with ShardWriter(store) as w:
        for i, n in enumerate((3, 4, 5)):
            w.add(f"v{i}.mp4", None, None, "a", "", np.ones((n, 4), np.float32), np.arange(n) / 2.0)
    assert verify_store(store.path).ok
    with h5py.File(w.written[0], "r+") as f:
        f["clips/offset"][1] += 1
        del f.attrs["checksums"]  # an old shard: only the frame table can tell
    problems = verify_store(store.path).problems
    assert len(problems) == 1 and "clip 0 has timestamps out of order" in problems[0]


def _foreign_store(tmp_path):
    store, _ = _store(tmp_path / "s", n=4)
    other_prov = {**PROV, "sampling": {"strategy": "uniform", "num_frames": 24}}
    _, other = _store(tmp_path / "other", n=2, prov=other_prov, frames=24, seed=7)
    shutil.copy(other[0], store.path / "shards" / other[0].name)  # the README's merge recipe, misapplied
    return store, other[0].name


def test_readers_refuse_a_foreign_shard_naming_it_and_what_differs(tmp_path):
    store, foreign = _foreign_store(tmp_path)
    with pytest.raises(StoreError) as exc:
        open_store(store.path).pooled(lambda x: x.mean(0))
    msg = str(exc.value)
    assert foreign in msg and "sampling" in msg and "24" in msg and "\n" not in msg
    assert not verify_store(store.path).ok


def test_train_refuses_a_store_holding_a_foreign_shard(tmp_path, capsys):
    store, foreign = _foreign_store(tmp_path)
    code = main(["train", str(store.path), "-o", str(tmp_path / "h.skops")])
    err = capsys.readouterr().err
    assert code == 1 and foreign in err and "sampling" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "h.skops").exists()


def test_readers_refuse_every_shard_after_store_json_is_edited(tmp_path, capsys):
    store, shards = _store(tmp_path / "s")
    pj = store.path / "store.json"
    pj.write_text(json.dumps({**json.loads(pj.read_text()), "encoder": "someone-else"}))
    with pytest.raises(StoreError, match="encoder"):
        open_store(store.path).index()
    code = main(["train", str(store.path), "-o", str(tmp_path / "h.skops")])
    err = capsys.readouterr().err
    assert code == 1 and "encoder" in err and shards[0].name in err


def test_compact_refuses_a_store_that_fails_verify_and_keeps_the_originals(tmp_path, capsys):
    store, shards = _store(tmp_path / "s")
    _flip_raw_mantissa_bit(shards[2])
    with pytest.raises(StoreError, match="refusing to compact"):
        compact_store(store.path)
    code = main(["compact", str(store.path)])
    err = capsys.readouterr().err
    assert code == 1 and shards[2].name in err and "frames/embedding" in err
    assert sorted(store.path.glob("shards/*.h5")) == sorted(shards)
    code, out = _verify_cli(store.path, capsys)
    assert code == 1  # nothing was laundered


def test_compact_of_a_foreign_shard_store_is_refused(tmp_path):
    store, _ = _foreign_store(tmp_path)
    with pytest.raises(StoreError, match="refusing to compact"):
        compact_store(store.path)


def test_a_compacted_store_carries_checksums_and_verifies(tmp_path):
    store, _ = _store(tmp_path / "s")
    out = compact_store(store.path)
    assert out["changed"]
    report = verify_store(store.path)
    assert report.ok and not report.notes
    _flip_raw_mantissa_bit(open_store(store.path).shard_paths()[0])
    assert not verify_store(store.path).ok


# --- full disks and read-only stores ----------------------------------------------------------------


def _enospc_on_fsync(monkeypatch, suffix, after=0):
    """os.fsync raises ENOSPC for files whose name ends with ``suffix``, once ``after`` of them succeeded."""
    real = os.fsync
    seen = {"n": 0}

    def fsync(fd):
        try:
            name = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            name = ""
        if name.endswith(suffix):
            seen["n"] += 1
            if seen["n"] > after:
                raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd)

    monkeypatch.setattr(os, "fsync", fsync)


def test_full_disk_while_writing_a_shard_is_one_error_and_leaves_no_tmp(tmp_path, monkeypatch):
    store, _ = _store(tmp_path / "s", n=2)
    _enospc_on_fsync(monkeypatch, ".h5.tmp")
    w = ShardWriter(store, shard_size=10)
    w.add("x.mp4", None, None, "a", "", np.ones((T, 4), np.float32), np.arange(T) / 2)
    with pytest.raises(StoreError) as exc:
        w.flush()
    msg = str(exc.value)
    assert "no space left" in msg and str(store.path / "shards") in msg and "\n" not in msg
    assert exc.value.__cause__ is None and exc.value.__suppress_context__
    assert not list(store.path.glob("shards/*.tmp"))
    assert w.stored_clips == 0 and len(open_store(store.path)) == 2


def test_full_disk_at_store_creation_is_one_error_and_leaves_no_tmp(tmp_path, monkeypatch):
    _enospc_on_fsync(monkeypatch, ".tmp")
    with pytest.raises(StoreError, match="store.json: cannot write \\(no space left"):
        create_or_open(tmp_path / "s", PROV)
    assert not [p.name for p in (tmp_path / "s").iterdir() if p.name.startswith(".")]


def test_full_disk_mid_extraction_counts_only_what_was_stored(labeled_folder, tmp_path, monkeypatch, capsys):
    out = tmp_path / "store"
    _enospc_on_fsync(monkeypatch, ".h5.tmp", after=2)  # two shards fit, then the disk is full
    code = main(
        [
            "extract",
            str(labeled_folder),
            "-o",
            str(out),
            "-q",
            "extract.num_workers=0",
            "extract.shard_size=2",
            "sampling.num_frames=2",
        ]
    )
    err = capsys.readouterr().err
    assert code == 1 and "no space left" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1 and str(out / "shards") in err
    assert not list(out.glob("shards/*.tmp")) and not list(out.glob(".store.json.*"))
    store = open_store(out)
    stored = len(store) + len(store.failures())
    assert len(store.shard_paths()) == 2 and stored == 4
    (record,) = [json.loads(p.read_text()) for p in (out / "runs").glob("*.json")]
    assert record["state"] == "stopped" and record["done"] + record["failed"] == stored
    assert record["done"] == len(store)


def test_info_and_verify_work_on_a_read_only_store(tmp_path, monkeypatch, capsys):
    store, _ = _store(tmp_path / "s")
    with store.writer_lock():  # leaves locks/ with its guard file, as a real run does
        pass
    real_open = os.open

    def read_only_open(path, flags, *args, **kwargs):  # what a read-only mount does (root ignores chmod)
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", read_only_open)
    assert main(["info", str(store.path)]) == 0
    assert main(["verify", str(store.path)]) == 0
    out = capsys.readouterr()
    assert "Traceback" not in out.err and "OK: 3 shards, 6 clips" in out.out


@pytest.mark.parametrize(
    "edit, key",
    [
        (lambda p: {"schema_version": 1}, "encoder"),  # every other key gone
        (lambda p: {k: v for k, v in p.items() if k != "dim"}, "dim"),
        (lambda p: {**p, "dim": "4"}, "dim"),
        (lambda p: {**p, "sampling": [1]}, "sampling"),
        (lambda p: {**p, "preprocess": None}, "preprocess"),
        (lambda p: {**p, "dtype": 16}, "dtype"),
    ],
)
def test_a_damaged_store_json_is_one_line_naming_the_file_and_key(tmp_path, capsys, edit, key):
    store, _ = _store(tmp_path / "s")
    pj = store.path / "store.json"
    pj.write_text(json.dumps(edit(json.loads(pj.read_text()))))
    path = str(store.path)
    for argv in (["info", path], ["verify", path], ["train", path, "-o", str(tmp_path / "h.npz")]):
        code = main(argv)
        err = capsys.readouterr().err
        assert code == 1 and "Traceback" not in err and len(err.strip().splitlines()) == 1, (argv, err)
        assert f"{pj}: provenance" in err and repr(key) in err, (argv, err)
    assert not (tmp_path / "h.npz").exists()


def _strict(text):
    def refuse(token):
        raise AssertionError(f"{token} is not JSON")

    return json.loads(text, parse_constant=refuse)


def test_info_and_verify_json_are_strict_an_open_window_is_null(tmp_path, capsys):
    store, _ = _store(tmp_path / "s")
    with ShardWriter(store) as w:
        w.add_failure("whole.mp4", None, None, "decode", "whole.mp4: broken")  # the whole video
        w.add_failure("tail.mp4", 4.0, None, "decode", "tail.mp4: broken")  # a window open at its end
    assert main(["info", "--json", str(store.path)]) == 0
    info = _strict(capsys.readouterr().out)
    windows = {f["path"]: (f["start"], f["end"]) for f in info["failure_list"]}
    assert windows == {"whole.mp4": (None, None), "tail.mp4": (4.0, None)}
    assert main(["verify", "--json", str(store.path)]) == 0
    assert _strict(capsys.readouterr().out)["failures"] == 2


def test_a_store_is_never_created_with_a_provenance_it_could_not_open(tmp_path):
    with pytest.raises(StoreError, match="store.json: provenance key 'sampling' is \\[1\\], expected an object"):
        create_or_open(tmp_path / "s", {**PROV, "sampling": [1]})
    assert not (tmp_path / "s").exists()
