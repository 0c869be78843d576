"""WebDataset ``.tar`` shards as a source, written with the ``webdataset`` package in video2dataset's layout
(keys ``00000000``..., members ``.mp4``, ``.json`` with caption and label, ``.txt`` caption) from real
encoded videos, and extracted as they are (nothing unpacked)."""

from __future__ import annotations

import json
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


@pytest.mark.slow
def test_the_ray_engine_extracts_shards_like_the_local_engine(videos, tmp_path, effnet):
    pytest.importorskip("ray")
    import ray

    from pipeline.extract.ray_engine import init_ray

    write_shards(videos, tmp_path / "shards", corrupt="00000001")
    spec = str(tmp_path / "shards" / "{00000..00001}.tar")
    local = _run(spec, tmp_path / "local", effnet)
    assert init_ray(num_cpus=2)
    try:
        cfg = load_config(None, list(OPTS))
        (summary,) = extract(load_manifest(spec), tmp_path / "ray", cfg, engine="ray", progress=False)
    finally:
        ray.shutdown()
    assert (summary.engine, summary.done, summary.failed) == ("ray", 5, 1) and (local.done, local.failed) == (5, 1)
    want, got = _embeddings(tmp_path / "local"), _embeddings(tmp_path / "ray")
    assert sorted(got) == sorted(want)
    for key, (emb, stamps, label) in got.items():
        np.testing.assert_array_equal(stamps, want[key][1])
        np.testing.assert_allclose(emb, want[key][0], rtol=1e-4, atol=1e-4)  # batch packing differs, nothing else
        assert label == want[key][2]
    assert "00000.tar/00000001" in open_store(tmp_path / "ray").failures()[0]["error"]


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
        served = sum(server.bytes.values())
        # a re-run lists the shards again (their headers; a whole small shard is one 256 KiB block) but
        # opens no sample: the first run read each shard once more per sample it decoded
        again = _run(spec, tmp_path / "http", effnet)
        assert again.done == 0 and sum(server.bytes.values()) - served < served / 3


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
