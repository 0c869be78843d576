"""Scale-out: job shards (in-process, and as concurrent processes killed and re-run) and the Ray engine
must all give the store a single process gives — same clips, same embeddings, same failures."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from media import index_frames, patch_avi_frame_count, pattern_frames, write_video

from pipeline.cli import main
from pipeline.config import load_config
from pipeline.data.manifest import load_manifest
from pipeline.encoders import create_encoder
from pipeline.extract.entry import extract
from pipeline.extract.sharding import JobShard, shard_of
from pipeline.store import clip_key, open_store, writer_progress

REPO = Path(__file__).resolve().parents[1]
SETTINGS = ["sampling.num_frames=3", "extract.batch_size=12", "extract.num_workers=0"]
ATOL = 1e-4  # different batch packing / thread counts change float summation order, nothing more


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    """2 labels x 8 small H.264 videos listed with splits in a CSV, plus a corrupt file."""
    root = tmp_path_factory.mktemp("scale_videos")
    rows = ["path,label,split"]
    for kind, label in enumerate(["stripes_h", "stripes_v"]):
        for j in range(8):
            rel = f"{label}/v{j:02d}.mp4"
            write_video(root / rel, pattern_frames(24, height=72, width=96, kind=kind, seed=j), fps=12)
            rows.append(f"{rel},{label},{'test' if j % 4 == 0 else 'train'}")
    (root / "stripes_h" / "broken.mp4").write_bytes(b"not a video\n" * 30)
    rows.append("stripes_h/broken.mp4,stripes_h,train")
    (root / "manifest.csv").write_text("\n".join(rows) + "\n")
    return root / "manifest.csv"


@pytest.fixture(scope="module")
def encoder():
    return create_encoder("effnet-lite0", device="cpu")


@pytest.fixture(scope="module")
def reference(videos, encoder, tmp_path_factory) -> Path:
    """The store one process makes."""
    store = tmp_path_factory.mktemp("ref") / "store"
    (summary,) = extract(
        load_manifest(str(videos)), store, load_config(None, SETTINGS), encoders=[encoder], progress=False
    )
    assert summary.done == 16 and summary.failed == 1
    return store


def check_store(path: Path) -> None:
    """What ``vidprobe verify`` checks (issue 4), done here by hand: every finished shard opens, offsets
    are consistent, no clip is stored twice, every embedding is finite."""
    seen: set = set()
    for shard in sorted((path / "shards").glob("*.h5")):
        with h5py.File(shard, "r") as f:
            off, emb, ts = f["clips/offset"][()], f["frames/embedding"][()], f["frames/timestamp"][()]
            videos = [v.decode() for v in f["clips/video"][()]]
            keys = [clip_key(v, s, e) for v, s, e in zip(videos, f["clips/start"][()], f["clips/end"][()])]
        assert (
            off[0] == 0 and np.all(np.diff(off) >= 0) and off[-1] == len(emb) == len(ts) and len(off) == len(keys) + 1
        ), shard
        assert np.isfinite(emb).all(), shard
        assert not seen & set(keys), f"{shard}: clips stored twice"
        seen |= set(keys)


def contents(path: Path) -> tuple[dict, list]:
    store = open_store(path)
    t = store.table()
    clips = {
        k: (t.frames(i), t.timestamp[t.offset[i] : t.offset[i + 1]], t.label[i], t.split[i])
        for i, k in enumerate(t.keys())
    }
    failures = sorted((f["path"], f["stage"]) for f in store.failures())
    return clips, failures


def assert_same_store(path: Path, reference: Path) -> None:
    check_store(path)
    got, got_fail = contents(path)
    want, want_fail = contents(reference)
    assert sorted(got) == sorted(want)
    assert got_fail == want_fail == [("stripes_h/broken.mp4", "decode")]
    for key, (emb, ts, label, split) in want.items():
        g = got[key]
        np.testing.assert_allclose(g[0], emb, atol=ATOL, rtol=1e-4, err_msg=str(key))
        np.testing.assert_array_equal(g[1], ts)
        assert (g[2], g[3]) == (label, split)


def shard_files(store: Path) -> list[str]:
    return sorted(p.name for p in (store / "shards").glob("*.h5"))


# -- job shards in one process ------------------------------------------------------------------------


def test_three_shards_make_the_single_process_store_and_rerunning_is_idempotent(
    videos, encoder, reference, tmp_path, capsys
):
    store, cfg, manifest = tmp_path / "store", load_config(None, SETTINGS), load_manifest(str(videos))
    summaries = [
        extract(manifest, store, cfg, encoders=[encoder], progress=False, shard=JobShard(i, 3))[0] for i in range(3)
    ]
    assert sum(s.total for s in summaries) == 17 and sum(s.done for s in summaries) == 16
    assert sum(s.failed for s in summaries) == 1  # the corrupt file is recorded once, by the shard that owns it
    assert [s.shard for s in summaries] == ["0/3", "1/3", "2/3"]
    assert_same_store(store, reference)
    assert {name.split("-")[0] for name in shard_files(store)} == {
        "shard0000of0003",
        "shard0001of0003",
        "shard0002of0003",
    }

    before = shard_files(store)
    for i in (2, 0, 1):
        (again,) = extract(manifest, store, cfg, encoders=[encoder], progress=False, shard=JobShard(i, 3))
        assert again.done == again.failed == 0 and again.skipped == summaries[i].total
    assert shard_files(store) == before  # nothing new written

    progress = writer_progress(open_store(store))
    assert sum(w["clips"] for w in progress.values()) == 16 and sum(w["failures"] for w in progress.values()) == 1
    assert all(w["last_run"]["state"] == "finished" for w in progress.values())
    assert [w["last_run"]["assigned"] for w in progress.values()] == [s.total for s in summaries]
    assert main(["info", str(store)]) == 0
    out = capsys.readouterr().out
    for i, s in enumerate(summaries):
        line = next(x for x in out.splitlines() if f"shard000{i}of0003" in x)
        assert f"{s.done} clips" in line and "finished" in line and f"{s.total} clips assigned" in line


def test_shard_flags_and_env_reach_extract_through_the_cli(videos, tmp_path, capsys, monkeypatch):
    store = tmp_path / "store"
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "1")
    monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "6")
    code = main(["extract", str(videos), "-o", str(store), "--json", "--device", "cpu", *SETTINGS])
    out = capsys.readouterr()
    summary = json.loads(out.out)
    assert "job shard 1/6 (from SLURM_ARRAY_TASK_ID/SLURM_ARRAY_TASK_COUNT)" in out.err
    assert summary["shard"] == "1/6" and 0 < summary["total"] < 17 and code in (0, 3)
    assert all(name.startswith("shard0001of0006-") for name in shard_files(store))
    assert main(["extract", str(videos), "-o", str(store), "--shard-id", "1", *SETTINGS]) == 2
    assert "--shard-id and --num-shards go together" in capsys.readouterr().err


# -- job shards as concurrent processes, one killed -----------------------------------------------------


def _shard_cmd(videos: Path, store: Path, i: int) -> list[str]:
    # one clip per encoder batch and per store shard file, so clips finish one by one and a kill lands mid-shard
    return [
        sys.executable,
        "-m",
        "pipeline",
        "extract",
        str(videos),
        "-o",
        str(store),
        "-q",
        "--json",
        "--shard-id",
        str(i),
        "--num-shards",
        "4",
        *SETTINGS,
        "extract.batch_size=3",
        "extract.shard_size=1",
    ]


@pytest.mark.slow
def test_four_concurrent_shard_processes_one_killed_and_rerun_equal_one_process(videos, reference, tmp_path):
    store = tmp_path / "store"
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE") and not k.startswith("SLURM_")}
    keys = [item.key for item in load_manifest(str(videos)).items]
    victim = max(range(4), key=lambda i: sum(shard_of(k, 4) == i for k in keys))  # the shard with the most clips
    procs = [
        subprocess.Popen(
            _shard_cmd(videos, store, i), cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for i in range(4)
    ]
    deadline = time.monotonic() + 240
    while not list((store / "shards").glob(f"shard{victim:04d}of0004-*.h5")):  # the victim has finished some work
        assert procs[victim].poll() is None, "victim finished before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.01)
    procs[victim].send_signal(signal.SIGKILL)
    results = [p.communicate(timeout=300) for p in procs]
    assert procs[victim].returncode == -signal.SIGKILL
    for i, p in enumerate(procs):
        if i != victim:
            assert p.returncode in (0, 3), results[i][1]
    killed = writer_progress(open_store(store))[f"shard{victim:04d}of0004"]
    assert killed["last_run"]["state"] == "running" and 0 < killed["clips"] < killed["last_run"]["assigned"]
    check_store(store)  # what the kill left is consistent: only whole shard files are visible

    rerun = subprocess.run(
        _shard_cmd(videos, store, victim), cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )
    assert rerun.returncode in (0, 3), rerun.stderr
    summary = json.loads(rerun.stdout)
    finished_before = killed["clips"] + killed["failures"]
    assert (
        summary["skipped"] == finished_before
        and summary["done"] + summary["failed"] == summary["total"] - finished_before
    )
    assert_same_store(store, reference)
    assert writer_progress(open_store(store))[f"shard{victim:04d}of0004"]["last_run"]["state"] == "finished"


# -- the Ray engine ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ray_cluster():
    pytest.importorskip("ray")
    import ray

    from pipeline.extract.ray_engine import init_ray

    assert init_ray(num_cpus=2)
    yield ray
    ray.shutdown()


@pytest.mark.slow
def test_ray_engine_store_equals_the_single_process_store(ray_cluster, videos, reference, tmp_path, capsys):
    store = tmp_path / "store"
    (summary,) = extract(load_manifest(str(videos)), store, load_config(None, SETTINGS), engine="ray", progress=False)
    assert (summary.engine, summary.done, summary.failed, summary.total) == ("ray", 16, 1, 17)
    assert "broken.mp4" in summary.failures[0][1]
    assert_same_store(store, reference)
    assert writer_progress(open_store(store))["shard"]["last_run"]["engine"] == "ray"

    # the CLI reaches the same engine; a re-run does nothing and says so
    before = shard_files(store)
    code = main(["extract", str(videos), "-o", str(store), "--engine", "ray", "--json", *SETTINGS])
    again = json.loads(capsys.readouterr().out)
    assert code == 0 and again["done"] == 0 and again["skipped"] == 17 and again["engine"] == "ray"
    assert shard_files(store) == before


@pytest.mark.slow
def test_ray_engine_samples_a_lying_header_within_the_real_duration_and_says_so(ray_cluster, tmp_path):
    real = write_video(tmp_path / "v" / "honest.avi", index_frames(100), fps=25, gop=10)  # 4.0 s
    (tmp_path / "v" / "long.avi").write_bytes(patch_avi_frame_count(real.read_bytes(), 1000.0))
    manifest, cfg = load_manifest(str(tmp_path / "v")), load_config(None, SETTINGS)
    (summary,) = extract(manifest, tmp_path / "s", cfg, engine="ray", progress=False)
    assert summary.done == 2 and [p for p, _ in summary.warnings] == ["long.avi"]
    store = open_store(tmp_path / "s")
    ts = {v: store.timestamps(i) for i, v in enumerate(store.videos)}
    np.testing.assert_array_equal(ts["long.avi"], ts["honest.avi"])
    assert np.unique(ts["long.avi"]).size == 3 and ts["long.avi"].max() < 4.0


@pytest.mark.slow
def test_ray_and_local_engines_share_one_store_as_shards(ray_cluster, videos, encoder, reference, tmp_path):
    store, cfg, manifest = tmp_path / "store", load_config(None, SETTINGS), load_manifest(str(videos))
    (ray_part,) = extract(manifest, store, cfg, engine="ray", progress=False, shard=JobShard(0, 2))
    (local_part,) = extract(manifest, store, cfg, encoders=[encoder], progress=False, shard=JobShard(1, 2))
    assert ray_part.total + local_part.total == 17 and ray_part.done + local_part.done == 16
    assert_same_store(store, reference)
