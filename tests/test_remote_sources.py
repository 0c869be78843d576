"""Videos at URLs (issue 27): real servers on localhost -- an HTTP server honouring Range requests that
counts what it serves and fails on demand, and moto's S3 server with a bucket the test fills."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from media import pattern_frames, write_video
from servers import RangeServer, moto_s3

from pipeline.cli import main
from pipeline.config import load_config
from pipeline.data.manifest import load_manifest
from pipeline.data.remote import redact
from pipeline.extract.entry import extract
from pipeline.extract.job import ExtractionJob
from pipeline.extract.local import extract_locally
from pipeline.extract.targets import ExtractionJobs
from pipeline.store import open_store

REPO = Path(__file__).resolve().parents[1]
SETTINGS = ["sampling.num_frames=3", "extract.batch_size=12", "extract.num_workers=0"]
FAST_FAIL = ["extract.remote_retries=1", "extract.remote_timeout=1"]  # a stall fails in ~2 s, not 2 min
ATOL = 1e-4  # the same frames, packed into encoder batches differently: float summation order only
NAMES = [f"{label}/v{j}.mp4" for label in ("stripes_h", "stripes_v") for j in range(2)]
TINY_CLIP = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 64, "layers": 1, "width": 48, "head_width": 16, "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    """2 labels x 2 small H.264 videos under a folder (GOP of 12: a sampled frame needs one GOP)."""
    root = tmp_path_factory.mktemp("remote_videos")
    for rel in NAMES:
        kind, seed = int("_v" in rel), int(rel[-5])
        write_video(root / rel, pattern_frames(36, height=72, width=96, kind=kind, seed=seed), fps=12, gop=12)
    return root


@pytest.fixture
def http(videos):
    with RangeServer(videos, stall_s=4.0) as server:
        yield server


@pytest.fixture(scope="module")
def s3(videos):
    """moto's S3 server (``servers.moto_s3``) with the videos under ``s3://videos/clips/``."""
    with moto_s3() as client:
        client.create_bucket(Bucket="videos")
        for rel in NAMES:
            client.upload_file(str(videos / rel), "videos", f"clips/{rel}")
        yield client


def _csv(path: Path, rows: list[tuple[str, str]]) -> Path:
    path.write_text("path,label\n" + "".join(f"{u},{label}\n" for u, label in rows))
    return path


def _by_name(store: Path) -> dict[str, np.ndarray]:
    """Each stored clip's embeddings under its video's last two path parts (label/name)."""
    t = open_store(store).table()
    return {"/".join(k[0].split("/")[-2:]): t.frames(i) for i, k in enumerate(t.keys())}


def _run(source, store: Path, effnet, *extra: str):
    (summary,) = extract(source, store, load_config(None, [*SETTINGS, *extra]), encoders=[effnet], progress=False)
    return summary


def test_local_http_and_s3_sources_make_equal_stores(videos, http, s3, effnet, tmp_path):
    local = _run(load_manifest(str(videos)), tmp_path / "local", effnet)
    rows = [(http.url(rel), rel.split("/")[0]) for rel in NAMES]
    over_http = _run(load_manifest(_csv(tmp_path / "urls.csv", rows)), tmp_path / "http", effnet)
    over_s3 = _run(load_manifest("s3://videos/clips/*/*.mp4"), tmp_path / "s3", effnet)
    assert local.done == over_http.done == over_s3.done == len(NAMES)
    want = _by_name(tmp_path / "local")
    for store in ("http", "s3"):
        got = _by_name(tmp_path / store)
        assert sorted(got) == sorted(want) == sorted(NAMES)
        for name in NAMES:
            np.testing.assert_allclose(got[name], want[name], atol=ATOL, rtol=1e-4, err_msg=f"{store}: {name}")
    t = open_store(tmp_path / "http").table()
    keys, s3_keys = t.keys(), open_store(tmp_path / "s3").table().keys()
    assert sorted(k[0] for k in keys) == sorted(http.url(rel) for rel in NAMES)  # the clip key is the URL
    assert sorted(t.label) == sorted(r[1] for r in rows)
    assert {k[0] for k in s3_keys} == {f"s3://videos/clips/{n}" for n in NAMES}


def test_sparse_sampling_fetches_ranges_not_whole_files(videos, http, effnet, tmp_path):
    # small blocks so a 72x96 test video spans many: 1 frame of 36 needs its GOP, not the file
    url = http.url(NAMES[0])
    _run(load_manifest(url), tmp_path / "s", effnet, "sampling.num_frames=1", "extract.remote_block_size=4096")
    size = (videos / NAMES[0]).stat().st_size
    assert 0 < http.bytes[NAMES[0]] < 0.75 * size, (http.bytes, size)


def test_network_failures_are_recorded_with_their_cause_and_the_job_goes_on(http, tmp_path, capsys):
    faults = {NAMES[0]: "404", NAMES[1]: "reset", NAMES[2]: "stall"}
    http.fail.update(faults)
    http.fail["stripes_v/missing_too.mp4"] = "403"
    rows = [(http.url(rel), "x") for rel in [*NAMES, "stripes_v/missing_too.mp4"]]
    store = tmp_path / "store"
    manifest = _csv(tmp_path / "m.csv", rows)
    code = main(["extract", str(manifest), "-o", str(store), "--json", "--device", "cpu", *SETTINGS, *FAST_FAIL])
    out = capsys.readouterr()
    assert code == 3 and "Traceback" not in out.err + out.out  # 3: some videos failed, the rest stored
    summary = json.loads(out.out)
    assert summary["done"] == 1 and summary["failed"] == 4
    errors = {f["path"]: f["error"] for f in open_store(store).failures()}
    cause = {"404": "404", "403": "HTTP 403", "reset": "the body ended early", "stall": "timed out"}
    for rel, fault in {**faults, "stripes_v/missing_too.mp4": "403"}.items():
        assert errors[http.url(rel)].startswith(f"{http.url(rel)}: ") and cause[fault] in errors[http.url(rel)]
    assert list(_by_name(store)) == [NAMES[3]]


def test_a_truncated_object_is_a_recorded_failure(http, effnet, tmp_path):
    http.fail[NAMES[1]] = "truncate"
    rows = [(http.url(rel), "x") for rel in NAMES[:2]]
    summary = _run(load_manifest(_csv(tmp_path / "m.csv", rows)), tmp_path / "s", effnet, *FAST_FAIL)
    assert summary.done == 1 and summary.failed == 1
    (failure,) = open_store(tmp_path / "s").failures()
    assert failure["path"] == http.url(NAMES[1]) and "ended early" in failure["error"]
    assert http.requests[NAMES[1]] >= 3  # retried (remote_retries=1) before it was recorded


def test_a_stall_past_decode_timeout_is_a_recorded_failure(http, effnet, tmp_path):
    """A server slower than ``decode_timeout`` (its reads within ``remote_timeout``): the worker is replaced."""
    http.fail[NAMES[0]] = "stall"
    rows = [(http.url(rel), "x") for rel in NAMES[:2]]
    extra = ("extract.num_workers=1", "extract.decode_timeout=2", "extract.remote_timeout=30")
    summary = _run(load_manifest(_csv(tmp_path / "m.csv", rows)), tmp_path / "s", effnet, *extra)
    assert summary.done == 1 and summary.failed == 1
    (failure,) = open_store(tmp_path / "s").failures()
    assert failure["path"] == http.url(NAMES[0]) and "timeout" in failure["error"].lower()


def test_a_rerun_after_a_finished_run_checks_each_stored_url_once_and_extracts_a_replaced_object_again(
    videos, tmp_path, effnet
):
    """After a finished run nothing is taken as recorded (``store.runs.resumed_records``): one ``HEAD`` per
    stored URL (its size + ETag), no byte of it; an object replaced at its URL is extracted again."""
    served = _copy(videos, tmp_path / "served")
    with RangeServer(served) as http:
        rows = [(http.url(rel), rel.split("/")[0]) for rel in NAMES]
        store = tmp_path / "store"
        first = _run(load_manifest(_csv(tmp_path / "half.csv", rows[:2])), store, effnet)
        assert first.done == 2
        _clear(http)
        again = _run(load_manifest(_csv(tmp_path / "all.csv", rows)), store, effnet)
        assert again.done == 2 and again.skipped == 2
        for rel in NAMES[:2]:  # stored: one HEAD for its fingerprint (size + ETag), not a byte of it
            assert http.requests[rel] == http.heads[rel] == 1 and http.bytes[rel] == 0, (rel, http.requests)
        assert all(http.bytes[rel] > 0 for rel in NAMES[2:])
        # the object at a URL replaced (new bytes, new ETag): extracted again; each other one: one HEAD
        write_video(served / NAMES[0], pattern_frames(36, height=72, width=96, kind=1, seed=9), fps=12, gop=12)
        _clear(http)
        third = _run(load_manifest(_csv(tmp_path / "all.csv", rows)), store, effnet)
        assert third.done == 1 and third.changed == [http.url(NAMES[0])]
        for rel in NAMES[1:]:
            assert http.requests[rel] == http.heads[rel] == 1 and http.bytes[rel] == 0, (rel, http.requests)
        assert http.bytes[NAMES[0]] > 0


def _copy(videos: Path, to: Path) -> Path:
    """The test videos in a folder of their own: a test may replace one without touching the others' tests."""
    for rel in NAMES:
        (to / rel).parent.mkdir(parents=True, exist_ok=True)
        (to / rel).write_bytes((videos / rel).read_bytes())
    return to


def _clear(http: RangeServer) -> None:
    http.requests.clear()
    http.bytes.clear()
    http.heads.clear()


def _kill_when_stored(cmd: list[str], store: Path, shards: int) -> None:
    """Run ``cmd`` (a CLI job) and SIGKILL it as soon as ``store`` holds ``shards`` shard files."""
    job = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    while len(list((store / "shards").glob("*.h5"))) < shards:
        assert job.poll() is None and time.monotonic() < deadline, job.stderr.read() if job.stderr else ""
        time.sleep(0.05)
    job.send_signal(signal.SIGKILL)
    job.communicate(timeout=60)


def _cli(manifest: Path, store: Path) -> list[str]:
    return [sys.executable, "-m", "pipeline", "extract", str(manifest), "-o", str(store), "-q", "--device", "cpu",
            *SETTINGS, "extract.shard_size=1"]  # fmt: skip


def _assert_equal_stores(store: Path, want: Path) -> None:
    got, expected = _by_name(store), _by_name(want)
    assert sorted(got) == sorted(expected) == sorted(NAMES) and open_store(store).failures() == []
    for name in NAMES:
        np.testing.assert_allclose(got[name], expected[name], atol=ATOL, rtol=1e-4, err_msg=name)


@pytest.mark.slow
def test_after_kill_9_a_resumed_job_sends_no_request_for_stored_videos(videos, http, effnet, tmp_path):
    """A CLI job killed (SIGKILL) while the server is slow on the last videos; the resume continues it: no
    request at all for the videos it stored, the rest extracted, the store equal to an uninterrupted one."""
    http.stall_s = 3.0  # "stall" below the timeout: each request of these answers, 3 s late
    http.fail.update({NAMES[2]: "stall", NAMES[3]: "stall"})
    manifest = _csv(tmp_path / "m.csv", [(http.url(rel), rel.split("/")[0]) for rel in NAMES])
    store = tmp_path / "store"
    _kill_when_stored(_cli(manifest, store), store, 2)  # the two fast videos stored, one shard file each
    assert sorted(_by_name(store)) == NAMES[:2]
    assert json.loads((store / "runs" / "shard.json").read_text())["state"] == "running"
    http.fail.clear()
    _clear(http)
    summary = _run(load_manifest(manifest), store, effnet)
    assert summary.done == 2 and summary.skipped == 2
    assert [http.requests[rel] for rel in NAMES[:2]] == [0, 0], http.requests
    assert all(http.bytes[rel] > 0 for rel in NAMES[2:])
    _assert_equal_stores(store, _uninterrupted(manifest, tmp_path / "whole", effnet))


def _uninterrupted(manifest: Path, store: Path, effnet) -> Path:
    assert _run(load_manifest(manifest), store, effnet).done == len(NAMES)
    return store


@pytest.mark.slow
def test_a_resume_killed_too_is_resumed_without_requests_and_a_finished_run_ends_the_trust(videos, effnet, tmp_path):
    """kill -9, a resume killed as well, a second resume: no request for what either killed run stored (the
    record keeps the first interrupted run's mark). Once a run finished, the next checks every stored URL
    again (one ``HEAD`` each) and extracts an object replaced meanwhile."""
    served = _copy(videos, tmp_path / "served")
    with RangeServer(served, stall_s=3.0) as http:
        manifest = _csv(tmp_path / "m.csv", [(http.url(rel), rel.split("/")[0]) for rel in NAMES])
        store = tmp_path / "store"
        http.fail.update({NAMES[2]: "stall", NAMES[3]: "stall"})
        _kill_when_stored(_cli(manifest, store), store, 2)
        assert sorted(_by_name(store)) == NAMES[:2]
        del http.fail[NAMES[2]]
        _clear(http)
        _kill_when_stored(_cli(manifest, store), store, 3)  # the resume stores one more, then is killed too
        assert sorted(_by_name(store)) == NAMES[:3]
        assert [http.requests[rel] for rel in NAMES[:2]] == [0, 0], http.requests
        http.fail.clear()
        _clear(http)
        summary = _run(load_manifest(manifest), store, effnet)
        assert summary.done == 1 and summary.skipped == 3
        assert [http.requests[rel] for rel in NAMES[:3]] == [0, 0, 0], http.requests
        assert json.loads((store / "runs" / "shard.json").read_text())["state"] == "finished"
        _assert_equal_stores(store, _uninterrupted(manifest, tmp_path / "whole", effnet))
        write_video(served / NAMES[1], pattern_frames(36, height=72, width=96, kind=0, seed=7), fps=12, gop=12)
        _clear(http)
        again = _run(load_manifest(manifest), store, effnet)
        assert again.done == 1 and again.changed == [http.url(NAMES[1])]
        for rel in (NAMES[0], *NAMES[2:]):
            assert http.requests[rel] == http.heads[rel] == 1 and http.bytes[rel] == 0, (rel, http.requests)


def test_a_resume_checks_an_object_its_interrupted_run_found_replaced(videos, effnet, tmp_path):
    """A run finds one object replaced while it was decoded (a "changed" failure), stores another, and is
    stopped (Ctrl-C): the resume sends no request for the stored one, but checks the replaced one and
    extracts it again, without ``--retry-failed``."""
    served = _copy(videos, tmp_path / "served")
    with RangeServer(served) as http:
        manifest = load_manifest(_csv(tmp_path / "m.csv", [(http.url(rel), "x") for rel in NAMES[:3]]))
        store, cfg = tmp_path / "store", load_config(None, SETTINGS)

        class Interrupted(ExtractionJobs):
            def deliver(self, unit, outcomes):
                if unit.item.path == http.url(NAMES[0]):  # replaced after its decode, before its clips are stored
                    write_video(served / NAMES[0], pattern_frames(36, height=72, width=96, seed=5), fps=12, gop=12)
                super().deliver(unit, outcomes)
                if unit.item.path == http.url(NAMES[1]):
                    raise KeyboardInterrupt

        with pytest.raises(KeyboardInterrupt):
            extract_locally(
                cfg, [store], [effnet], lambda p: Interrupted(manifest, [ExtractionJob(manifest, store, cfg, p[0])])
            )
        assert json.loads((store / "runs" / "shard.json").read_text())["state"] == "stopped"
        assert [(f["path"], f["stage"]) for f in open_store(store).failures()] == [(http.url(NAMES[0]), "changed")]
        assert sorted(_by_name(store)) == [NAMES[1]]
        _clear(http)
        summary = _run(manifest, store, effnet)
        assert summary.done == 2 and summary.changed == [http.url(NAMES[0])] and summary.failed == 0
        assert http.requests[NAMES[1]] == 0 and http.bytes[NAMES[0]] > 0
        assert sorted(_by_name(store)) == NAMES[:3] and open_store(store).failures() == []


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    """A second real encoder, small: an open_clip ViT with random weights (from a model config file)."""
    from pipeline.encoders import create_encoder

    cfg = tmp_path_factory.mktemp("tinyclip") / "tiny-remote-vit.json"
    cfg.write_text(json.dumps(TINY_CLIP))
    return create_encoder(f"openclip:{cfg}", device="cpu")


def test_several_encoders_ask_once_per_decoded_url_whether_it_was_replaced(http, effnet, tiny_clip, tmp_path):
    """One decode for two stores: the object is checked once after decoding (``changed_since``), not per store."""
    rows = [(http.url(rel), rel.split("/")[0]) for rel in NAMES[:2]]
    manifest = load_manifest(_csv(tmp_path / "m.csv", rows))
    (one,) = extract(manifest, tmp_path / "one", load_config(None, SETTINGS), encoders=[effnet], progress=False)
    heads_one = {rel: http.heads[rel] for rel in NAMES[:2]}
    _clear(http)
    cfg = load_config(None, SETTINGS)
    both = extract(manifest, tmp_path / "both", cfg, encoders=[effnet, tiny_clip], progress=False)
    assert one.done == 2 and [s.done for s in both] == [2, 2]
    # one HEAD when the decoder opens the URL (its size and ETag), one after decoding: as with one store
    assert {rel: http.heads[rel] for rel in NAMES[:2]} == heads_one == {rel: 2 for rel in NAMES[:2]}


def test_a_rerun_with_several_encoders_checks_each_stored_url_once_while_planning(http, effnet, tiny_clip, tmp_path):
    """Two stores re-run after a finished run: their plans share one fingerprint per stored URL (one ``HEAD``,
    not one per store), and nothing else is sent: everything is stored, so nothing is decoded."""
    rows = [(http.url(rel), rel.split("/")[0]) for rel in NAMES[:2]]
    manifest = load_manifest(_csv(tmp_path / "m.csv", rows))
    stores = tmp_path / "both"  # one store per encoder under it
    first = extract(manifest, stores, load_config(None, SETTINGS), encoders=[effnet, tiny_clip], progress=False)
    assert [s.done for s in first] == [2, 2]
    _clear(http)
    again = extract(manifest, stores, load_config(None, SETTINGS), encoders=[effnet, tiny_clip], progress=False)
    assert [(s.done, s.skipped) for s in again] == [(0, 2), (0, 2)]
    for rel in NAMES[:2]:  # one store each: this was 2 HEADs per URL
        assert http.requests[rel] == http.heads[rel] == 1 and http.bytes[rel] == 0, (rel, http.requests)


def test_secrets_in_urls_are_never_stored_or_shown(http, effnet, tmp_path):
    secret = "AKIA-SECRET-SIG"
    url = http.url(NAMES[0]).replace("http://", "http://user:pw@") + f"?X-Amz-Signature={secret}&X-Amz-Expires=60"
    http.fail[NAMES[1]] = "404"
    bad = http.url(NAMES[1]) + f"?token={secret}"
    summary = _run(load_manifest(_csv(tmp_path / "m.csv", [(url, "a"), (bad, "b")])), tmp_path / "s", effnet)
    assert summary.done == 1 and summary.failed == 1
    assert redact(url) == http.url(NAMES[0]) and redact(bad) == http.url(NAMES[1])
    for f in (tmp_path / "s").rglob("*"):
        if f.is_file():
            data = f.read_bytes()
            assert secret.encode() not in data and b"user:pw" not in data, f
    assert all(secret not in e for _, e in summary.failures)


@pytest.fixture(scope="module")
def ray_cluster():
    pytest.importorskip("ray")
    import ray

    from pipeline.extract.ray_engine import init_ray

    assert init_ray(num_cpus=2)
    yield ray
    ray.shutdown()


@pytest.mark.slow
def test_ray_engine_reads_a_url_manifest_like_the_local_engine(ray_cluster, http, effnet, tmp_path):
    http.fail[NAMES[3]] = "404"
    manifest = load_manifest(_csv(tmp_path / "m.csv", [(http.url(rel), rel.split("/")[0]) for rel in NAMES]))
    cfg = load_config(None, SETTINGS)
    (on_ray,) = extract(manifest, tmp_path / "ray", cfg, engine="ray", progress=False)
    local = _run(manifest, tmp_path / "local", effnet)
    assert (on_ray.done, on_ray.failed) == (local.done, local.failed) == (3, 1)
    got, want = _by_name(tmp_path / "ray"), _by_name(tmp_path / "local")
    assert sorted(got) == sorted(want) == sorted(NAMES[:3])
    for name in want:
        np.testing.assert_allclose(got[name], want[name], atol=ATOL, rtol=1e-4, err_msg=name)
    (failure,) = open_store(tmp_path / "ray").failures()
    assert failure["path"] == http.url(NAMES[3]) and "404" in failure["error"]
