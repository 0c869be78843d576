"""WebDataset ``.tar`` shards as a source, written with the ``webdataset`` package in video2dataset's layout
(keys ``00000000``..., members ``.mp4``, ``.json`` with caption and label, ``.txt`` caption) from real
encoded videos, and extracted as they are (nothing unpacked)."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds
from media import pattern_frames, write_video

from pipeline.cli import main
from pipeline.config import load_config
from pipeline.data.manifest import load_manifest
from pipeline.extract.entry import extract
from pipeline.extract.sharding import shard_of
from pipeline.store import open_store

OPTS = ("sampling.num_frames=4", "extract.num_workers=0")
SUFFIXES = (".mp4", ".webm", ".mkv", ".mp4", ".avi", ".mov")


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    """6 real videos in 2 classes (several containers), as local files ``<label>/clip<j><suffix>``."""
    root = tmp_path_factory.mktemp("wds_videos")
    for j, suffix in enumerate(SUFFIXES):
        label = ("stripes_h", "stripes_v")[j % 2]
        write_video(root / label / f"clip{j}{suffix}", pattern_frames(24, kind=j % 2, seed=j), fps=12)
    return root


def write_shards(videos: Path, out: Path, per_shard: int = 3, corrupt: str | None = None) -> dict[str, str]:
    """The videos as shards ``out/{00000..}.tar`` in video2dataset's layout; returns sample path -> file path.
    ``corrupt``: a sample key whose video member is replaced by bytes that are no video."""
    out.mkdir(parents=True)
    files = sorted(videos.rglob("clip*"))
    where = {}
    for s in range(0, len(files), per_shard):
        shard = f"{s // per_shard:05d}.tar"
        with wds.TarWriter(str(out / shard)) as sink:
            for i, f in enumerate(files[s : s + per_shard], start=s):
                key = f"{i:08d}"
                data = b"not a video at all\n" * 50 if key == corrupt else f.read_bytes()
                label = f.parent.name
                sink.write(
                    {
                        "__key__": key,
                        f.suffix[1:]: data,
                        "json": json.dumps({"caption": f"a clip of {label}", "label": label}).encode(),
                        "txt": f"a clip of {label}".encode(),
                    }
                )
                where[f"{shard}/{key}"] = f.relative_to(videos).as_posix()
    return where


def _run(source, store: Path, effnet, *, label_from: str = "auto"):
    manifest = load_manifest(str(source), label_from=label_from)
    (summary,) = extract(manifest, store, load_config(None, list(OPTS)), encoders=[effnet], progress=False)
    return summary


def _embeddings(store: Path) -> dict[str, tuple[np.ndarray, np.ndarray, str]]:
    s = open_store(store)
    labels = s.labels
    return {video: (s.frames(i), s.timestamps(i), labels[i]) for i, (video, _, _) in enumerate(s.keys())}


def test_shards_give_the_embeddings_of_the_same_videos_as_local_files(videos, tmp_path, effnet):
    where = write_shards(videos, tmp_path / "shards")
    local = _run(videos, tmp_path / "local", effnet)
    shards = _run(tmp_path / "shards" / "{00000..00001}.tar", tmp_path / "wds", effnet)
    assert local.done == shards.done == 6 and shards.failed == 0
    want, got = _embeddings(tmp_path / "local"), _embeddings(tmp_path / "wds")
    assert sorted(got) == sorted(where) == [f"0000{s}.tar/0000000{i}" for s, i in zip((0, 0, 0, 1, 1, 1), range(6))]
    for key, (emb, stamps, label) in got.items():
        file = where[key]
        np.testing.assert_array_equal(stamps, want[file][1])
        np.testing.assert_allclose(emb, want[file][0], rtol=1e-5, atol=1e-5)  # the same bytes, the same decoder
        assert label == want[file][2] == file.split("/")[0]  # auto: no .cls, so json:label

    again = _run(tmp_path / "shards" / "{00000..00001}.tar", tmp_path / "wds", effnet)
    assert again.done == 0 and again.skipped == 6  # a re-run skips stored samples


def test_the_label_comes_from_the_member_chosen(videos, tmp_path):
    write_shards(videos, tmp_path / "shards")
    spec = str(tmp_path / "shards" / "{00000..00001}.tar")
    assert {it.label for it in load_manifest(spec, label_from="json:label").items} == {"stripes_h", "stripes_v"}
    assert {it.label for it in load_manifest(spec, label_from="txt").items} == {
        "a clip of stripes_h",
        "a clip of stripes_v",
    }
    assert {it.label for it in load_manifest(spec, label_from="none").items} == {""}
    with pytest.raises(Exception, match="label-from"):
        load_manifest(spec, label_from="xml")


def test_a_corrupt_member_is_a_failure_naming_shard_and_key_and_the_rest_are_stored(videos, tmp_path, effnet, capsys):
    write_shards(videos, tmp_path / "shards", corrupt="00000004")
    store = tmp_path / "wds"
    spec = str(tmp_path / "shards" / "{00000..00001}.tar")
    assert main(["extract", spec, "--label-from", "json:label", *OPTS, "-o", str(store), "-q"]) == 3  # some failed
    err = capsys.readouterr().err
    assert "Traceback" not in err
    s = open_store(store)
    assert len(s.keys()) == 5 and set(s.labels) == {"stripes_h", "stripes_v"}
    (failure,) = s.failures()
    assert failure["path"] == "00001.tar/00000004" and "00001.tar/00000004" in failure["error"]
    main(["extract", spec, *OPTS, "-o", str(store), "-q"])  # resumed: nothing done again
    assert len(open_store(store).keys()) == 5


def test_a_rewritten_shard_is_extracted_again_and_a_copied_one_is_not(videos, tmp_path, effnet):
    write_shards(videos, tmp_path / "shards")
    spec = tmp_path / "shards" / "00000.tar"
    store = tmp_path / "wds"
    assert _run(spec, store, effnet).done == 3
    data = spec.read_bytes()
    spec.unlink()
    spec.write_bytes(data)  # copied: another time, the same bytes
    assert _run(spec, store, effnet).done == 0
    (tmp_path / "other").mkdir()
    write_shards(videos / "stripes_v", tmp_path / "other" / "shards")  # other videos under the same keys
    (tmp_path / "other" / "shards" / "00000.tar").replace(spec)
    again = _run(spec, store, effnet)
    assert again.done == 3 and sorted(again.changed) == [
        "00000.tar/00000000",
        "00000.tar/00000001",
        "00000.tar/00000002",
    ]


def test_a_shard_is_one_unit_of_work_for_job_sharding():
    keys = [(f"shards/{s:05d}.tar/{i:08d}", -1.0, -1.0) for s in range(20) for i in range(5)]
    for n in (2, 3, 7):
        by_shard: dict[str, set[int]] = {}
        for key in keys:
            by_shard.setdefault(key[0].rsplit("/", 1)[0], set()).add(shard_of(key, n))
        assert all(len(owners) == 1 for owners in by_shard.values())
        assert len(set().union(*by_shard.values())) > 1  # and the shards spread over the jobs


@pytest.fixture(scope="module")
def ray_cluster():
    pytest.importorskip("ray")
    import ray

    from pipeline.extract.ray_engine import init_ray

    assert init_ray(num_cpus=2)
    yield ray
    ray.shutdown()


def _assert_same_stores(got: dict, want: dict, prefix: str = "") -> None:
    assert sorted(k.removeprefix(prefix) for k in got) == sorted(want)
    for key, (emb, stamps, label) in got.items():
        np.testing.assert_array_equal(stamps, want[key.removeprefix(prefix)][1])
        np.testing.assert_allclose(emb, want[key.removeprefix(prefix)][0], rtol=1e-4, atol=1e-4)  # batch packing only
        assert label == want[key.removeprefix(prefix)][2]


@pytest.mark.slow
def test_the_ray_engine_extracts_shards_local_and_over_http_like_the_local_engine(
    ray_cluster, videos, tmp_path, effnet
):
    """A small shard is one Ray unit of work (``_units``): one decode task reads its samples through one open
    shard, so over HTTP a shard costs one metadata request and its blocks once in the decoder (the driver's
    check before storing adds one request per sample), where a task per sample opened it per sample."""
    from servers import RangeServer

    from pipeline.data.remote import RemoteOptions

    write_shards(videos, tmp_path / "shards", corrupt="00000001")
    spec = str(tmp_path / "shards" / "{00000..00001}.tar")
    local = _run(spec, tmp_path / "local", effnet)
    cfg = load_config(None, list(OPTS))
    (summary,) = extract(load_manifest(spec), tmp_path / "ray", cfg, engine="ray", progress=False)
    assert (summary.engine, summary.done, summary.failed) == ("ray", 5, 1) and (local.done, local.failed) == (5, 1)
    want = _embeddings(tmp_path / "local")
    _assert_same_stores(_embeddings(tmp_path / "ray"), want)
    assert "00000.tar/00000001" in open_store(tmp_path / "ray").failures()[0]["error"]

    with RangeServer(tmp_path) as server:
        manifest = load_manifest(server.url("shards/{00000..00001}.tar"))
        server.requests.clear()
        (remote,) = extract(manifest, tmp_path / "http", cfg, engine="ray", progress=False)
        assert (remote.done, remote.failed) == (5, 1)
        _assert_same_stores(_embeddings(tmp_path / "http"), want, server.url("shards") + "/")
        for shard, opens in (("00000.tar", 2), ("00001.tar", 1)):  # a failed sample reopens its shard (00000001)
            blocks = math.ceil((tmp_path / "shards" / shard).stat().st_size / RemoteOptions().block_size)
            assert server.requests[f"shards/{shard}"] <= opens * (1 + blocks) + 3, server.requests  # 3 samples a shard


def test_the_ray_engine_cuts_a_big_shard_into_units_of_consecutive_samples():
    """A shard of many samples is several decode units (every CPU busy, a dead worker redoes one chunk), each
    of one shard's consecutive samples; every planned clip is in one unit, in plan order."""
    from pipeline.data.manifest import VideoItem
    from pipeline.data.webdataset import shard_of_sample
    from pipeline.extract.ray_engine import ROWS_PER_BLOCK, SHARD_UNIT_MAX, _units
    from pipeline.extract.targets import UnionTask
    from pipeline.extract.workers import ClipTask

    items = [VideoItem(f"shards/{s:05d}.tar/{i:08d}", "/data") for s in range(2) for i in range(1000)]
    items.append(VideoItem("a.mp4", "/data"))
    todo = [UnionTask(it, ClipTask(i, it.location), (0,), (frozenset(),)) for i, it in enumerate(items)]
    for cpus, chunk in ((1, SHARD_UNIT_MAX), (16, 32), (1000, ROWS_PER_BLOCK)):  # 2001 clips / (4 x cpus)
        units = [json.loads(u) for u in _units(todo, cpus)]
        assert [c["index"] for u in units for c in u] == list(range(len(todo)))
        assert all(len({shard_of_sample(c["path"]) for c in u}) == 1 for u in units)
        assert max(len(u) for u in units) == chunk and len(units) == 2 * math.ceil(1000 / chunk) + 1


def test_decoder_processes_open_a_remote_shard_once_each_and_store_what_one_process_stores(videos, tmp_path, effnet):
    """The multi-process scheduler (``workers._Feed``) over HTTP shards: a shard's samples go to one decoder
    process one after another (the other joins in only when nothing else is left), so a shard costs one
    ``HEAD`` per decoder process that reads it (1 or 2 here) and one per sample from the driver's check
    before storing (``changed_since``; planning a fresh store sends none); the store is the in-process one's."""
    from servers import RangeServer

    write_shards(videos, tmp_path / "shards")  # 2 shards of 3 samples
    with RangeServer(tmp_path) as server:
        manifest = load_manifest(server.url("shards/{00000..00001}.tar"))  # the listing: not counted
        stores = {}
        for workers in (0, 2):
            server.heads.clear()
            cfg = load_config(None, [*OPTS, f"extract.num_workers={workers}"])
            (summary,) = extract(manifest, tmp_path / f"w{workers}", cfg, encoders=[effnet], progress=False)
            assert (summary.done, summary.failed) == (6, 0)
            stores[workers] = _embeddings(tmp_path / f"w{workers}")
            for shard in ("00000.tar", "00001.tar"):
                heads = server.heads[f"shards/{shard}"]
                assert 3 + 1 <= heads <= 3 + max(1, workers), (workers, server.heads)
    _assert_same_stores(stores[2], stores[0])


@pytest.mark.slow
def test_the_ray_engine_records_the_fingerprint_of_the_file_whose_decode_failed(ray_cluster, videos, tmp_path, effnet):
    """A clip that fails after its file was opened (a window past the video's end) is recorded with the
    fingerprint the decoder took through that file (its crc read), by the Ray engine as by the local one."""
    from pipeline.store.layout import UNKNOWN_SOURCE
    from pipeline.store.sources import fingerprint

    root = tmp_path / "v"
    root.mkdir()
    shutil.copy(videos / "stripes_h" / "clip0.mp4", root / "a.mp4")
    (root / "m.csv").write_text("path,label,start,end\na.mp4,x,100,200\n")
    cfg = load_config(None, list(OPTS))
    (local,) = extract(load_manifest(str(root / "m.csv")), tmp_path / "local", cfg, encoders=[effnet], progress=False)
    (ray,) = extract(load_manifest(str(root / "m.csv")), tmp_path / "ray", cfg, engine="ray", progress=False)
    assert local.failed == ray.failed == 1 and "empty" in ray.failures[0][1]
    want = fingerprint(root / "a.mp4")
    assert want is not None and want[2] != UNKNOWN_SOURCE
    for store in ("local", "ray"):
        assert open_store(tmp_path / store).index().current_sources()["a.mp4"] == want, store


def test_a_decoder_opens_a_remote_shard_once_for_all_its_samples(videos, tmp_path):
    """Samples of one shard read as a decoder process reads them (one after another, inside
    ``shards_kept_open``): over HTTP one metadata request for the shard and each of its blocks once, where
    every sample opened the shard again (~4 metadata requests each). Each sample's fingerprint, taken
    through the handle decoded, is the one the driver computes before storing; a kept local shard that is
    rewritten meanwhile is opened again."""
    from servers import RangeServer

    from pipeline.data.remote import RemoteOptions
    from pipeline.data.webdataset import member_fingerprint, shards_kept_open
    from pipeline.extract.readers import open_reader

    write_shards(videos, tmp_path / "shards", per_shard=6)
    shard = tmp_path / "shards" / "00000.tar"
    size = shard.stat().st_size
    keys = [f"{i:08d}" for i in range(6)]
    with RangeServer(tmp_path) as server:
        url = server.url("shards/00000.tar")
        sources = []
        with shards_kept_open():
            for key in keys:
                with open_reader(f"{url}/{key}") as reader:
                    assert sum(len(c.timestamps) for c in reader.iter_frames(np.array([0.1, 1.0]))) == 2
                    sources.append(reader.source)
        blocks = math.ceil(size / RemoteOptions().block_size)
        assert server.requests["shards/00000.tar"] == 1 + blocks and server.bytes["shards/00000.tar"] == size
        assert sources == [member_fingerprint(url, key) for key in keys]
        assert len(set(sources)) == len(keys)

    write_shards(videos / "stripes_v", tmp_path / "other")  # other videos under the same keys
    local = tmp_path / "shards" / "00000.tar"
    before = member_fingerprint(local, keys[1])
    with shards_kept_open():
        with open_reader(f"{local}/{keys[0]}") as reader:
            assert reader.source == member_fingerprint(local, keys[0])
        (tmp_path / "other" / "00000.tar").replace(local)
        with open_reader(f"{local}/{keys[1]}") as reader:
            assert reader.source == member_fingerprint(local, keys[1]) != before


def test_shards_served_over_http_give_the_embeddings_of_the_local_shards(videos, tmp_path, effnet):
    from servers import RangeServer

    write_shards(videos, tmp_path / "shards", corrupt="00000004")
    local = _run(tmp_path / "shards" / "{00000..00001}.tar", tmp_path / "local", effnet)
    with RangeServer(tmp_path) as server:
        spec = server.url("shards/{00000..00001}.tar")
        remote = _run(spec, tmp_path / "http", effnet)
        assert (remote.done, remote.failed) == (local.done, local.failed) == (5, 1)
        want, got = _embeddings(tmp_path / "local"), _embeddings(tmp_path / "http")
        prefix = server.url("shards") + "/"
        assert sorted(k.removeprefix(prefix) for k in got) == sorted(want)
        for key, (emb, stamps, label) in got.items():
            np.testing.assert_array_equal(stamps, want[key.removeprefix(prefix)][1])
            np.testing.assert_allclose(emb, want[key.removeprefix(prefix)][0], rtol=1e-5, atol=1e-5)
            assert label == want[key.removeprefix(prefix)][2]
        (failure,) = open_store(tmp_path / "http").failures()
        assert failure["path"] == prefix + "00001.tar/00000004"
        served, size = sum(server.bytes.values()), sum(f.stat().st_size for f in (tmp_path / "shards").glob("*.tar"))
        # the listing reads each shard's headers (every block of these small shards) once, and the decoder
        # each shard's bytes once more, for all its samples (not once per sample); after a sample fails
        # (00000004) its shard is reopened for the next one (it may have been re-uploaded), read once more
        assert served <= 2 * size + (tmp_path / "shards" / "00001.tar").stat().st_size
        again = _run(spec, tmp_path / "http", effnet)  # a re-run lists the shards again but opens no sample
        assert again.done == 0 and sum(server.bytes.values()) - served <= size


def test_shards_in_s3_give_the_embeddings_of_the_local_shards(videos, tmp_path, effnet, monkeypatch):
    """moto's S3 server on localhost (found by botocore through AWS_ENDPOINT_URL), a bucket the test fills."""
    pytest.importorskip("moto")
    from moto.server import ThreadedMotoServer
    from servers import free_port

    write_shards(videos, tmp_path / "shards")
    local = _run(tmp_path / "shards" / "{00000..00001}.tar", tmp_path / "local", effnet)
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        for k, v in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}.items():
            monkeypatch.setenv(k, v)
        monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
        monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
        import boto3
        import s3fs

        s3fs.S3FileSystem.clear_instance_cache()  # fsspec keeps one per arguments: another test's endpoint
        client = boto3.client("s3")
        client.create_bucket(Bucket="data")
        for shard in ("00000.tar", "00001.tar"):
            client.upload_file(str(tmp_path / "shards" / shard), "data", f"wds/{shard}")
        remote = _run("s3://data/wds/{00000..00001}.tar", tmp_path / "s3", effnet)
    finally:
        server.stop()
        import s3fs

        s3fs.S3FileSystem.clear_instance_cache()  # nor may a later test meet this one's endpoint
    assert remote.done == local.done == 6 and remote.failed == 0
    want, got = _embeddings(tmp_path / "local"), _embeddings(tmp_path / "s3")
    assert sorted(k.removeprefix("s3://data/wds/") for k in got) == sorted(want)
    for key, (emb, _, label) in got.items():
        np.testing.assert_allclose(emb, want[key.removeprefix("s3://data/wds/")][0], rtol=1e-5, atol=1e-5)
        assert label == want[key.removeprefix("s3://data/wds/")][2]


def test_a_missing_or_unreadable_shard_is_a_problem_and_the_other_shards_are_listed(videos, tmp_path):
    write_shards(videos, tmp_path / "shards")
    (tmp_path / "shards" / "00003.tar").write_bytes(b"\x00\x01 not a tar archive " * 40)
    m = load_manifest(str(tmp_path / "shards" / "{00000..00003}.tar"))
    assert len(m.items) == 6
    assert [(p.path, "shard not found" in p.error) for p in m.problems] == [("00002.tar", True), ("00003.tar", False)]
    assert "00003.tar: not a readable tar shard" in m.problems[1].error


def test_the_local_engine_hands_a_shard_s_samples_to_one_decoder_one_after_another():
    """The scheduler's feed (``extract.workers._Feed``) over a plan of 3 shards and 2 videos, two workers
    asking in turn: a shard is read by one worker, in order (it keeps the shard open), until nothing else
    is left to do (then the last shard is shared, so no worker idles); every task is handed out once."""
    from pipeline.data.webdataset import shard_of_sample
    from pipeline.extract.workers import ClipTask, _Feed

    def hand_out(paths: list[str]) -> list[list[str]]:
        feed = _Feed(iter([ClipTask(i, p) for i, p in enumerate(paths)]))
        got: list[list[str]] = [[], []]
        on: list = [None, None]
        w = 0
        while (task := feed.take(on[w], {on[1 - w]})) is not None:
            got[w].append(task.path)
            on[w] = shard_of_sample(task.path)
            w = 1 - w
        assert feed.empty and sorted(got[0] + got[1]) == sorted(paths)
        return got

    shards = [f"/d/{s:05d}.tar/{i:08d}" for s in range(3) for i in range(4)]
    got = hand_out([*shards, "/d/a.mp4", "/d/b.mp4"])
    for s in range(3):
        mine = [[p for p in got[w] if f"/{s:05d}.tar/" in p] for w in (0, 1)]
        assert all(m == sorted(m) for m in mine)  # in order
        if s < 2:  # then the videos, and the last shard shared
            assert sorted([mine[0], mine[1]]) == [[], shards[4 * s : 4 * s + 4]], got
    assert got[0][:4] == shards[:4] and got[1][:4] == shards[4:8]
    one = hand_out(shards[:4])
    assert one[0] and one[1] and sorted(one[0] + one[1]) == shards[:4]
