"""Sources whose manifest or official-split folder is at a URL (issue 27): UCF101 / HMDB51 / Kinetics split
files and videos on S3 (moto's server) or behind HTTP (a Range server), CSV/JSONL manifests at URLs whose
relative rows resolve against the manifest's folder, gs:// against a local GCS emulator, and predict over
URLs. Every server is a real one on 127.0.0.1."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from media import pattern_frames, write_video
from servers import RangeServer, free_port, gcs_emulator, moto_s3

from pipeline.cli import main
from pipeline.config import load_config
from pipeline.data.manifest import load_manifest
from pipeline.data.remote import RemoteOptions, list_under, open_url, remote_source
from pipeline.errors import ManifestError
from pipeline.extract.entry import extract
from pipeline.store import open_store

SETTINGS = ["sampling.num_frames=3", "extract.batch_size=12", "extract.num_workers=0"]
ATOL = 1e-4  # the same frames, packed into encoder batches differently: float summation order only
CLASSES = ("HorizontalStripes", "VerticalStripes")
# UCF101's layout: <class>/v_<class>_g<group>_c<clip>; group 01 is split 1's train, 02 its test
VIDEOS = [f"{c}/v_{c}_g{g:02d}_c01.mp4" for c in CLASSES for g in (1, 2)]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """``UCF101/ucfTrainTestlist`` (split 1) and ``UCF101/UCF-101/<class>/<video>`` (4 small H.264 videos),
    HMDB51-style split files over the same videos, and a Kinetics CSV naming them by id."""
    root = tmp_path_factory.mktemp("remote_roots")
    ucf = root / "UCF101"
    for i, rel in enumerate(VIDEOS):
        kind = int(rel.startswith("Vertical"))
        write_video(ucf / "UCF-101" / rel, pattern_frames(36, height=72, width=96, kind=kind, seed=i), fps=12, gop=12)
    lists = ucf / "ucfTrainTestlist"
    lists.mkdir()
    (lists / "classInd.txt").write_text("".join(f"{i} {c}\n" for i, c in enumerate(CLASSES, start=1)))
    (lists / "trainlist01.txt").write_text("".join(f"{v} {1 + (v[0] == 'V')}\n" for v in VIDEOS if "_g01_" in v))
    (lists / "testlist01.txt").write_text("".join(f"{v}\n" for v in VIDEOS if "_g02_" in v))
    hmdb = root / "hmdb_splits"
    hmdb.mkdir()
    for c in CLASSES:
        (hmdb / f"{c}_test_split1.txt").write_text(f"v_{c}_g01_c01.mp4 1\nv_{c}_g02_c01.mp4 2\nv_{c}_g03_c01.mp4 0\n")
    (root / "kinetics.csv").write_text(
        "label,youtube_id,time_start,time_end,split\n"
        "horizontal,v_HorizontalStripes_g01_c01,0,2,train\n"
        "vertical,v_VerticalStripes_g02_c01,1,3,validate\n"
        "vertical,MISSINGvid01,0,10,test\n"
    )
    return root


@pytest.fixture(scope="module")
def s3(data):
    """The ``data`` tree in the bucket ``data`` of moto's S3 server, one object per file at its relative path."""
    with moto_s3() as client:
        client.create_bucket(Bucket="data")
        for f in sorted(data.rglob("*")):
            if f.is_file():
                client.upload_file(str(f), "data", f.relative_to(data).as_posix())
        yield client


@pytest.fixture
def http(data):
    with RangeServer(data) as server:
        yield server


def _run(source, store: Path, effnet, *extra: str):
    (summary,) = extract(source, store, load_config(None, [*SETTINGS, *extra]), encoders=[effnet], progress=False)
    return summary


@pytest.fixture(scope="module")
def local(data, effnet, tmp_path_factory) -> dict[str, np.ndarray]:
    """Each video's embeddings extracted from the local files, by ``<class>/<name>``."""
    store = tmp_path_factory.mktemp("local_store") / "s"
    assert _run(load_manifest(data / "UCF101" / "UCF-101"), store, effnet).done == len(VIDEOS)
    return _by_name(store)


def _by_name(store: Path) -> dict[str, np.ndarray]:
    t = open_store(store).table()
    return {"/".join(k[0].split("/")[-2:]): t.frames(i) for i, k in enumerate(t.keys())}


def _assert_equal_embeddings(got: dict[str, np.ndarray], want: dict[str, np.ndarray], names) -> None:
    assert sorted(got) == sorted(names)
    for name in names:
        np.testing.assert_allclose(got[name], want[name], atol=ATOL, rtol=1e-4, err_msg=name)


def _summary(args: list[str], capsys) -> tuple[int, dict, str]:
    code = main([*args, "--json", "--device", "cpu", *SETTINGS])
    out = capsys.readouterr()
    assert "Traceback" not in out.err + out.out
    return code, json.loads(out.out) if out.out.strip() else {}, out.err


# -- official splits at a URL ------------------------------------------------------------------------


def test_ucf101_split_folder_and_videos_on_s3_read_like_local(data, s3):
    """``s3://data/UCF101/ucfTrainTestlist``: detected by its classInd.txt, the default root
    ``UCF101/UCF-101`` found by listing, each video an s3:// URL with the label and split the lists give."""
    here = load_manifest(data / "UCF101" / "ucfTrainTestlist")
    there = load_manifest("s3://data/UCF101/ucfTrainTestlist")
    assert not here.problems and not there.problems and there.root == "s3://data/UCF101/UCF-101"
    want = {f"s3://data/UCF101/UCF-101/{it.path}": (it.label, it.split) for it in here.items}
    got = {it.path: (it.label, it.split) for it in there.items}
    assert got == want and len(got) == len(VIDEOS) and {split for _, split in got.values()} == {"train", "test"}
    assert all(it.url == it.path for it in there.items)
    s3.delete_object(Bucket="data", Key=f"UCF101/UCF-101/{VIDEOS[1]}")
    try:  # a listed video missing from the bucket: a problem naming it, the others kept
        gone = load_manifest("s3://data/UCF101/ucfTrainTestlist")
    finally:
        s3.upload_file(str(data / "UCF101" / "UCF-101" / VIDEOS[1]), "data", f"UCF101/UCF-101/{VIDEOS[1]}")
    (problem,) = gone.problems
    assert problem.path == f"s3://data/UCF101/UCF-101/{VIDEOS[1]}" and "listed in" in problem.error
    assert len(gone.items) == len(VIDEOS) - 1
    with pytest.raises(ManifestError, match="none of the 4 videos .* is under s3://data/UCF101/ucfTrainTestlist"):
        load_manifest("s3://data/UCF101/ucfTrainTestlist", root="s3://data/UCF101/ucfTrainTestlist")


def test_ucf101_at_an_http_root_extracts_like_local_and_a_404_is_a_failure(data, http, local, tmp_path, capsys):
    """HTTP cannot list: the split files name the videos under ``--root URL``; a listed video the server does not
    have is a recorded failure with its cause, the others stored with the local files' embeddings."""
    http.fail[f"UCF101/UCF-101/{VIDEOS[3]}"] = "404"
    store = tmp_path / "store"
    root = http.url("UCF101/UCF-101")
    code, summary, err = _summary(
        ["extract", http.url("UCF101/ucfTrainTestlist"), "--root", root, "-o", str(store)], capsys
    )
    assert code == 3 and summary["done"] == 3 and summary["failed"] == 1, err
    (failure,) = open_store(store).failures()
    assert failure["path"] == f"{root}/{VIDEOS[3]}" and "404" in failure["error"]
    t = open_store(store).table()
    assert sorted(k[0] for k in t.keys()) == sorted(f"{root}/{v}" for v in VIDEOS[:3])  # noqa: SIM118
    assert sorted(zip(t.label, t.split)) == [("HorizontalStripes", "test"), ("HorizontalStripes", "train"),
                                             ("VerticalStripes", "train")]  # fmt: skip
    _assert_equal_embeddings(_by_name(store), local, VIDEOS[:3])
    # the split files here, the videos there: a local split folder with a root URL
    mixed = load_manifest(data / "UCF101" / "ucfTrainTestlist", root=root)
    assert sorted(it.url for it in mixed.items) == sorted(f"{root}/{v}" for v in VIDEOS)


def test_a_split_file_missing_at_a_url_is_one_line_naming_it(data, http, tmp_path, capsys):
    http.fail["UCF101/ucfTrainTestlist/testlist01.txt"] = "404"
    split_dir = http.url("UCF101/ucfTrainTestlist").replace("http://", "http://user:secret@")
    code, _, err = _summary(["extract", split_dir, "--root", http.url("UCF101/UCF-101"), "-o", str(tmp_path / "s")],
                            capsys)  # fmt: skip
    want = f"{http.url('UCF101/ucfTrainTestlist/testlist01.txt')}: cannot read split file (not found (404))"
    assert code != 0 and len(err.strip().splitlines()) == 1 and want in err and "secret" not in err, err
    http.fail.clear()
    with pytest.raises(ManifestError, match=r"none of the 4 videos .*\(the first 3 asked for\).*--root"):
        load_manifest(http.url("UCF101/ucfTrainTestlist"), root=http.url("elsewhere"))
    with pytest.raises(ManifestError, match="found by listing the folder, which http:// cannot"):
        load_manifest(http.url("hmdb_splits"), format="hmdb51")


def test_hmdb51_and_kinetics_on_s3(data, s3):
    hmdb = load_manifest("s3://data/hmdb_splits", root="s3://data/UCF101/UCF-101")  # detected by listing
    assert not hmdb.problems
    assert sorted((it.path, it.label, it.split) for it in hmdb.items) == sorted(
        (f"s3://data/UCF101/UCF-101/{v}", v.split("/")[0], "train" if "_g01_" in v else "test") for v in VIDEOS
    )  # code 0 (g03) left out
    kinetics = load_manifest("s3://data/kinetics.csv", root="s3://data/UCF101/UCF-101")
    got = {it.path: (it.label, it.split, it.start, it.end) for it in kinetics.items}
    assert got == {
        f"s3://data/UCF101/UCF-101/{VIDEOS[0]}": ("horizontal", "train", 0.0, 2.0),
        f"s3://data/UCF101/UCF-101/{VIDEOS[3]}": ("vertical", "val", 1.0, 3.0),
    }
    (problem,) = kinetics.problems
    assert "s3://data/kinetics.csv:4" in problem.error and "MISSINGvid01" in problem.error


# -- a manifest at a URL --------------------------------------------------------------------------------


def test_a_manifest_at_a_url_resolves_its_rows_against_its_folder(data, http, local, tmp_path, capsys):
    """``vidprobe extract https://host/list.csv``: relative rows are videos beside the manifest, as a local
    manifest's are files beside it; a row leaving that folder is refused naming --root; a URL row stands."""
    ucf = data / "UCF101" / "UCF-101"
    rows = [f"{VIDEOS[0]},a", f"/UCF101/UCF-101/{VIDEOS[1]},a", f"{http.url('UCF101/UCF-101/' + VIDEOS[2])},b",
            "../ucfTrainTestlist/classInd.txt,x", "%2e%2e/kinetics.csv,x", "/etc/passwd,x"]  # fmt: skip
    (ucf / "list.csv").write_text("path,label\n" + "\n".join(rows) + "\n")
    try:
        url = http.url("UCF101/UCF-101/list.csv").replace("http://", "http://user:secret@") + "?token=SECRET"
        store = tmp_path / "store"
        code, summary, err = _summary(["extract", url, "-o", str(store)], capsys)
    finally:
        (ucf / "list.csv").unlink()
    assert code == 3 and summary["done"] == 3 and summary["failed"] == 3, err
    base = http.url("UCF101/UCF-101")
    keys = sorted(k[0] for k in open_store(store).table().keys())  # noqa: SIM118
    assert keys == sorted(f"{base}/{v}" for v in VIDEOS[:3])
    errors = sorted(f["error"] for f in open_store(store).failures())
    assert all("escapes the manifest root" in e and base in e and "--root URL" in e for e in errors), errors
    assert not any("secret" in e.lower() for e in errors)
    _assert_equal_embeddings(_by_name(store), local, VIDEOS[:3])
    # each row fetched with the manifest's credentials; no request left the manifest's folder
    assert not {p for p in http.requests if not p.startswith("UCF101/UCF-101/")}
    missing = http.url("nowhere/list.jsonl")
    with pytest.raises(ManifestError, match=f"^{missing}: cannot read manifest \\(not found \\(404\\)\\)$"):
        load_manifest(missing.replace("http://", "http://u:p@"))


def test_a_jsonl_manifest_on_s3_and_a_local_manifest_under_a_root_url(data, s3, http, tmp_path):
    lines = [json.dumps({"path": v, "label": v.split("/")[0], "split": "train"}) for v in VIDEOS] + ["{not json"]
    s3.put_object(Bucket="data", Key="UCF101/UCF-101/list.jsonl", Body="\n".join(lines).encode())
    m = load_manifest("s3://data/UCF101/UCF-101/list.jsonl")
    assert sorted(it.url for it in m.items) == sorted(f"s3://data/UCF101/UCF-101/{v}" for v in VIDEOS)
    assert [p.path for p in m.problems] == [f"s3://data/UCF101/UCF-101/list.jsonl:{len(VIDEOS) + 1}"]
    local_csv = tmp_path / "list.csv"
    local_csv.write_text("path,label\n" + "".join(f"{v},x\n" for v in VIDEOS) + "../../escape.mp4,x\n")
    under = load_manifest(local_csv, root=http.url("UCF101/UCF-101"))
    assert sorted(it.url for it in under.items) == sorted(http.url(f"UCF101/UCF-101/{v}") for v in VIDEOS)
    (problem,) = under.problems
    assert "escapes the manifest root" in problem.error


# -- gs:// through gcsfs, against a GCS emulator ---------------------------------------------------------


@pytest.fixture(scope="module")
def gcs(data):
    with gcs_emulator("videos") as fs:
        for v in VIDEOS:
            fs.put_file(str(data / "UCF101" / "UCF-101" / v), f"videos/ucf/{v}")
        yield fs


def test_the_gcs_emulator_answers_ranges_listings_and_fingerprints(data, gcs):
    """What extraction relies on: a ranged GET returns those bytes only, a glob lists, ``info`` gives size + ETag."""
    raw = (data / "UCF101" / "UCF-101" / VIDEOS[0]).read_bytes()
    fs = open_url(f"gs://videos/ucf/{VIDEOS[0]}")[0].fs
    assert fs.cat_file(f"videos/ucf/{VIDEOS[0]}", start=100, end=300) == raw[100:300]
    assert list_under("gs://videos/ucf/*/*.mp4") == sorted(f"gs://videos/ucf/{v}" for v in VIDEOS)
    # gcsfs's JSON-API filesystem, as the S3 one: reads wait remote_timeout at most, and no gRPC lookup of the
    # bucket's layout precedes each (gcsfs's default for gs:// does one, which an emulator or an anonymous
    # reader answers only when its retries time out: a minute a read)
    assert not hasattr(fs, "_lookup_bucket_type") and fs.requests_timeout.sock_read == RemoteOptions().timeout
    info = fs.info(f"videos/ucf/{VIDEOS[0]}")
    size, tag, _ = remote_source(info)
    assert size == len(raw) and tag != -1 and info.get("etag")


def test_gs_extraction_equals_local_and_a_missing_object_is_a_failure(gcs, local, effnet, tmp_path):
    urls = [f"gs://videos/ucf/{v}" for v in VIDEOS] + ["gs://videos/ucf/gone.mp4"]
    (tmp_path / "m.csv").write_text("path,label\n" + "".join(f"{u},x\n" for u in urls))
    summary = _run(load_manifest(tmp_path / "m.csv"), tmp_path / "s", effnet, "extract.remote_retries=1")
    assert summary.done == len(VIDEOS) and summary.failed == 1
    (failure,) = open_store(tmp_path / "s").failures()
    assert failure["path"] == "gs://videos/ucf/gone.mp4" and "not found (404)" in failure["error"]
    _assert_equal_embeddings(_by_name(tmp_path / "s"), local, VIDEOS)
    csv_url = "gs://videos/ucf/list.csv"  # a manifest on GCS: its rows beside it
    gcs.pipe(csv_url.removeprefix("gs://"), ("path,label\n" + "".join(f"{v},x\n" for v in VIDEOS)).encode())
    assert sorted(it.url for it in load_manifest(csv_url).items) == sorted(urls[:-1])


# -- predict over URLs ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def head(data, effnet, tmp_path_factory) -> Path:
    """A logistic-regression head fitted on the local videos' mean embeddings, with extraction's sidecar."""
    import dataclasses

    from pipeline.config import SamplingConfig
    from pipeline.extract.clips import embed_clips
    from pipeline.probe.heads.files import save_head
    from pipeline.probe.heads.fitting import fit_head
    from pipeline.probe.heads.settings import HeadConfig

    sampling = SamplingConfig(num_frames=3)
    X = np.stack([embed_clips(effnet, data / "UCF101" / "UCF-101" / v, sampling)[0][2].frames.mean(0) for v in VIDEOS])
    result = fit_head(HeadConfig(kind="logreg"), X, [v.split("/")[0] for v in VIDEOS])
    meta = {
        "encoder": "effnet-lite0",
        "weights_id": effnet.weights_id,
        "sampling": dataclasses.asdict(sampling),
        "preprocess": effnet.preprocess_cfg.to_dict(),
        "pool": "mean",
    }
    path = tmp_path_factory.mktemp("head") / "h.npz"
    save_head(path, result, meta)
    return path


def _probs(row: dict) -> dict[str, float]:
    return {t["label"]: t["prob"] for t in row["top"]}


def test_predict_over_urls_gives_the_local_probabilities_and_a_404_row(data, http, head, effnet, tmp_path):
    from pipeline.probe.predict import predict_sources

    ucf = data / "UCF101" / "UCF-101"
    here = predict_sources(head, [str(ucf / v) for v in VIDEOS], encoder=effnet)["rows"]
    http.fail[f"UCF101/UCF-101/{VIDEOS[1]}"] = "404"
    (tmp_path / "list.csv").write_text("path\n" + "".join(f"{http.url('UCF101/UCF-101/' + v)}\n" for v in VIDEOS))
    secret = http.url(f"UCF101/UCF-101/{VIDEOS[0]}") + "?X-Amz-Signature=SECRET"
    out = predict_sources(head, [secret, tmp_path / "list.csv"], encoder=effnet)
    rows = {r["path"]: r for r in out["rows"]}
    assert out["failed"] == 1 and out["predicted"] == len(VIDEOS) - 1  # the single URL is the manifest's first row
    bad = http.url(f"UCF101/UCF-101/{VIDEOS[1]}")
    assert rows[bad]["error"].startswith(f"{bad}: ") and "404" in rows[bad]["error"]
    for v, want in zip(VIDEOS, here):
        if v != VIDEOS[1]:
            got, ref = _probs(rows[http.url(f"UCF101/UCF-101/{v}")]), _probs(want)
            assert got.keys() == ref.keys()
            np.testing.assert_allclose([got[c] for c in ref], [ref[c] for c in ref], rtol=1e-4, atol=1e-5)
    assert "SECRET" not in json.dumps(out["rows"])


def test_the_predict_command_reads_a_url(http, head, effnet, monkeypatch, capsys):
    import pipeline.encoders as encoders

    monkeypatch.setattr(encoders, "create_encoder", lambda spec, device="auto": effnet)
    url = http.url(f"UCF101/UCF-101/{VIDEOS[2]}")
    code = main(["predict", str(head), url, "--json", "--device", "cpu"])
    out = capsys.readouterr()
    assert code == 0 and "Traceback" not in out.err, out.err
    (row,) = json.loads(out.out)
    assert row["path"] == url and row["top"][0]["label"] == "VerticalStripes"


def test_a_store_of_urls_is_resplit_by_split_files_at_a_url(http, tmp_path):
    """``splits_from`` with the split folder and root at URLs: the store's clips (keyed by URL) take the
    splits the files give; the videos themselves are not asked for (``check_files=False``)."""
    from pipeline.data.splits import SplitsFrom, SplitSpec
    from pipeline.probe.train import store_splits
    from pipeline.store import ShardWriter, create_or_open

    root = http.url("UCF101/UCF-101")
    store = create_or_open(
        tmp_path / "s", {"encoder": "e", "weights_id": "w", "dim": 2, "preprocess": {}, "sampling": {}}
    )
    with ShardWriter(store) as w:
        for v in VIDEOS:
            w.add(f"{root}/{v}", None, None, v.split("/")[0], "", np.zeros((1, 2), np.float32), np.zeros(1))
    http.requests.clear()
    t = open_store(tmp_path / "s").table()
    sp = store_splits(
        open_store(tmp_path / "s"), SplitSpec(splits_from=SplitsFrom(http.url("UCF101/ucfTrainTestlist"), root=root))
    )
    assert sorted(t.video[i] for i in sp.test) == sorted(f"{root}/{v}" for v in VIDEOS if "_g02_" in v)
    assert sorted(t.video[i] for i in [*sp.train, *sp.val]) == sorted(f"{root}/{v}" for v in VIDEOS if "_g01_" in v)
    assert not [p for p in http.requests if p.startswith("UCF101/UCF-101/")]  # no video fetched


# -- URL rows and roots: the top of a bucket, names with # and ?, scheme aliases, confinement --------------------


def test_a_manifest_at_the_top_of_a_bucket_extracts_its_relative_rows(data, s3, local, effnet, tmp_path):
    """A manifest (or --root) at a bucket's top: rows are ``s3://top/a/v.mp4``, never ``s3://top//a/v.mp4``."""
    s3.create_bucket(Bucket="top")
    for v in (VIDEOS[0], VIDEOS[2]):
        s3.upload_file(str(data / "UCF101" / "UCF-101" / v), "top", v)
    s3.put_object(Bucket="top", Key="list.csv", Body=f"path,label\n{VIDEOS[0]},a\n/{VIDEOS[2]},b\n".encode())
    m = load_manifest("s3://top/list.csv")
    assert not m.problems and sorted(it.url for it in m.items) == [f"s3://top/{VIDEOS[0]}", f"s3://top/{VIDEOS[2]}"]
    summary = _run(m, tmp_path / "s", effnet)
    assert summary.done == 2 and summary.failed == 0
    _assert_equal_embeddings(_by_name(tmp_path / "s"), local, [VIDEOS[0], VIDEOS[2]])
    (tmp_path / "l.csv").write_text(f"path\n{VIDEOS[0]}\n")
    assert [it.url for it in load_manifest(tmp_path / "l.csv", root="s3://top").items] == [f"s3://top/{VIDEOS[0]}"]


def test_s3a_roots_list_and_key_as_s3(data, s3):
    """``s3a://`` is S3 by another name: a split folder and a Kinetics root given so find their videos (the
    listing names objects ``s3://``), and every clip is keyed ``s3://`` however the URL was typed."""
    there = load_manifest("s3a://data/UCF101/ucfTrainTestlist")
    assert not there.problems and len(there.items) == len(VIDEOS)
    assert all(it.path.startswith("s3://data/UCF101/UCF-101/") for it in there.items)
    kinetics = load_manifest("s3a://data/kinetics.csv", root="s3a://data/UCF101/UCF-101")
    assert len(kinetics.items) == 2 and all(it.url.startswith("s3://") for it in kinetics.items)


def test_a_url_manifest_names_only_urls_under_its_root_a_local_one_any(data, http, s3, tmp_path):
    """A manifest fetched from a URL must not make vidprobe fetch, with the user's credentials, whatever it
    names: its URL rows must be on its server, under its folder. A local manifest's URL rows stand."""
    ucf = data / "UCF101" / "UCF-101"
    inside = http.url(f"UCF101/UCF-101/{VIDEOS[0]}")
    outside = [http.url("kinetics.csv"), "s3://data/kinetics.csv", f"http://127.0.0.1:1/UCF101/UCF-101/{VIDEOS[0]}"]
    (ucf / "urls.csv").write_text("path\n" + "".join(f"{u}\n" for u in [inside, *outside]))
    try:
        m = load_manifest(http.url("UCF101/UCF-101/urls.csv"))
    finally:
        (ucf / "urls.csv").unlink()
    assert [it.url for it in m.items] == [inside]
    assert sorted(p.path for p in m.problems) == sorted(outside)
    root = http.url("UCF101/UCF-101")
    for p in m.problems:
        assert f"may only name URLs under its root {root}" in p.error and "local manifest" in p.error, p.error
    (tmp_path / "urls.csv").write_text("path\n" + "".join(f"{u}\n" for u in [inside, *outside]))
    for r in (None, root):
        mine = load_manifest(tmp_path / "urls.csv", root=r)
        assert not mine.problems and sorted(it.url for it in mine.items) == sorted([inside, *outside])


def test_a_file_name_with_hash_and_question_mark_is_read_over_http(data, http, local, effnet, tmp_path):
    """``clap/#20_Rhythm_clap.avi`` (HMDB51 has such names): a row is a file name, percent-encoded in the URL
    fetched; the clip is keyed by that URL, as when the URL is given by itself."""
    ucf = data / "UCF101" / "UCF-101"
    name = "HorizontalStripes/#20 clap?.mp4"
    (ucf / name).write_bytes((ucf / VIDEOS[0]).read_bytes())
    (ucf / "odd.csv").write_text(f"path,label\n{name},a\n")
    try:
        m = load_manifest(http.url("UCF101/UCF-101/odd.csv"))
        summary = _run(m, tmp_path / "s", effnet)
    finally:
        (ucf / name).unlink()
        (ucf / "odd.csv").unlink()
    key = http.url("UCF101/UCF-101/HorizontalStripes/%2320%20clap%3F.mp4")
    assert [it.path for it in m.items] == [key] and summary.done == 1, summary
    got = _by_name(tmp_path / "s")
    np.testing.assert_allclose(got["HorizontalStripes/%2320%20clap%3F.mp4"], local[VIDEOS[0]], atol=ATOL, rtol=1e-4)


# -- one line, no traceback, no secret ------------------------------------------------------------------------


def _cli(args: list[str], tmp_path: Path, env: dict[str, str], first: str = "") -> subprocess.CompletedProcess:
    """The CLI in a process of its own (``first``: Python run before it), as a user runs it."""
    code = f"import sys\n{first}\nfrom pipeline.cli import main\nsys.exit(main(sys.argv[1:]))"
    return subprocess.run(
        [sys.executable, "-c", code, *args, "--device", "cpu", "extract.num_workers=0", "extract.remote_retries=0"],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1]), **env},
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_a_gs_url_whose_server_is_down_fails_in_one_line(tmp_path):
    """gcsfs logs each request it gives up on with its traceback; ours is one try and logs nothing."""
    env = {"STORAGE_EMULATOR_HOST": f"http://127.0.0.1:{free_port()}", "FSSPEC_GS_TOKEN": "anon"}
    done = _cli(["extract", "gs://videos/v.mp4", "-o", "s"], tmp_path, env)
    assert "Traceback" not in done.stderr and "network error" in done.stderr, done.stderr
    done = _cli(["extract", "gs://videos/list.csv", "-o", "s"], tmp_path, env)
    assert "Traceback" not in done.stderr and done.returncode != 0, done.stderr
    assert "gs://videos/list.csv: cannot read manifest" in done.stderr


@pytest.mark.parametrize(("url", "extra"), [("http://127.0.0.1:9/list.csv", "http"), ("gs://b/list.csv", "gcs")])
def test_a_missing_protocol_package_names_the_extra(url, extra, tmp_path):
    done = _cli(["extract", url, "-o", "s"], tmp_path, {"FSSPEC_GS_TOKEN": "anon"}, "sys.modules['aiohttp'] = None")
    assert "Traceback" not in done.stderr and f"install vidprobe[{extra}]" in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_the_lock_file_names_the_command_without_its_secrets(monkeypatch):
    from pipeline.store.lock import Holder

    argv = ["vidprobe", "extract", "https://user:PW1@h/l.csv?X-Amz-Signature=SIG2&a=1", "--root=s3://k:PW3@b/r",
            "-o", "s", "--x", "a,gs://u:PW4@b/v.mp4?token=TOK5"]  # fmt: skip
    monkeypatch.setattr(sys, "argv", argv)
    command = Holder.me("extract", "all").command
    assert not [s for s in ("PW1", "SIG2", "PW3", "PW4", "TOK5", "user") if s in command], command
    assert command == "vidprobe extract https://h/l.csv --root=s3://b/r -o s --x a,gs://b/v.mp4"
