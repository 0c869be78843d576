"""Deterministic job sharding: the assignment, where the shard comes from, and a race-free store creation."""

import json
import multiprocessing
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from pipeline.errors import ConfigError, StoreError
from pipeline.extract.sharding import JobShard, resolve_shard, shard_of
from pipeline.store import PROVENANCE_FILE, create_or_open, open_store

REPO = Path(__file__).resolve().parents[1]
KEYS = [(f"class{i % 7}/video {i:05d}.mp4", -1.0, -1.0) for i in range(2000)] + [
    ("long.mp4", float(s), float(s + 10)) for s in range(0, 500, 10)
]


def test_every_clip_has_exactly_one_shard_and_shards_are_balanced():
    for n in (1, 2, 4, 7):
        owners = [[s for s in range(n) if JobShard(s, n).owns(k)] if n > 1 else [0] for k in KEYS]
        assert all(len(o) == 1 for o in owners)
        counts = Counter(o[0] for o in owners)
        assert len(counts) == n and max(counts.values()) < 1.25 * len(KEYS) / n  # no shard far above its share


def test_assignment_is_the_same_in_every_process_and_ignores_manifest_order():
    here = [shard_of(k, 5) for k in KEYS[:300]]
    code = (
        "import json, sys; from pipeline.extract.sharding import shard_of; keys = json.load(sys.stdin); "
        "print(json.dumps([shard_of(tuple(k), 5) for k in keys]))"
    )
    for seed in ("1", "2"):  # salted str hash differs between these processes; our assignment must not
        proc = subprocess.run(
            [sys.executable, "-c", code],
            input=json.dumps(KEYS[:300]),
            capture_output=True,
            text=True,
            cwd=REPO,
            env={**os.environ, "PYTHONHASHSEED": seed},
            check=True,
        )
        assert json.loads(proc.stdout) == here
    assert [shard_of(k, 5) for k in reversed(KEYS[:300])] == here[::-1]  # depends on the clip, not its position


def test_windows_of_one_video_are_distinct_clips():
    assert len({shard_of(k, 4) for k in KEYS if k[0] == "long.mp4"}) == 4


def test_resolve_precedence_flags_then_rank_then_slurm_array_then_procid():
    env = {
        "RANK": "3",
        "WORLD_SIZE": "8",
        "SLURM_ARRAY_TASK_ID": "5",
        "SLURM_ARRAY_TASK_COUNT": "10",
        "SLURM_PROCID": "1",
        "SLURM_NTASKS": "2",
    }
    assert resolve_shard(1, 4, env=env) == JobShard(1, 4, "--shard-id/--num-shards")
    assert resolve_shard(env=env).as_tuple() == (3, 8)
    del env["RANK"]
    # an array task that runs 2 srun tasks: array index 5 of 10, task 1 of 2 -> 11 of 20
    assert resolve_shard(env=env).as_tuple() == (11, 20)
    env["SLURM_NTASKS"] = "1"
    assert resolve_shard(env=env).as_tuple() == (5, 10)
    assert resolve_shard(env={"SLURM_PROCID": "2", "SLURM_NTASKS": "4"}).as_tuple() == (2, 4)
    assert resolve_shard(env={}) is None
    assert resolve_shard(env={"SLURM_PROCID": "0", "SLURM_NTASKS": "1"}) is None  # one task = not sharded
    assert resolve_shard(0, 1, env={"RANK": "1", "WORLD_SIZE": "2"}) is None  # explicit flags override env


def test_slurm_array_ranges_that_do_not_start_at_zero():
    env = {
        "SLURM_ARRAY_TASK_ID": "7",
        "SLURM_ARRAY_TASK_COUNT": "4",
        "SLURM_ARRAY_TASK_MIN": "1",
        "SLURM_ARRAY_TASK_STEP": "2",
    }
    assert resolve_shard(env=env).as_tuple() == (3, 4)  # --array=1-7:2 -> 1,3,5,7
    with pytest.raises(ConfigError, match="SLURM_ARRAY_TASK_ID=6"):
        resolve_shard(env={**env, "SLURM_ARRAY_TASK_ID": "6"})


@pytest.mark.parametrize(
    "args, env, match",
    [
        ((2, None), {}, "go together"),
        ((4, 4), {}, "must be in 0..3"),
        ((0, 0), {}, ">= 1"),
        ((None, None), {"RANK": "x", "WORLD_SIZE": "2"}, "RANK='x'"),
        ((None, None), {"RANK": "2", "WORLD_SIZE": "2"}, "RANK/WORLD_SIZE"),
    ],
)
def test_bad_shard_settings_are_named(args, env, match):
    with pytest.raises(ConfigError, match=match):
        resolve_shard(*args, env=env)


def test_prefix_names_the_writer():
    assert JobShard(3, 12).prefix == "shard0003of0012" and str(JobShard(3, 12)) == "3/12"


# -- several processes creating one new store at the same moment ------------------------------------

PROV = {
    "encoder": "e",
    "weights_id": "w",
    "dim": 4,
    "preprocess": {"size": 8},
    "sampling": {"strategy": "uniform", "num_frames": 3},
}


def _create(path: str, num_frames: int, barrier, results) -> None:
    barrier.wait()
    try:
        store = create_or_open(path, {**PROV, "sampling": {"strategy": "uniform", "num_frames": num_frames}})
        results.put(("ok", store.provenance["sampling"]["num_frames"]))
    except StoreError as exc:
        results.put(("refused", str(exc)))


def _race(path: Path, frames_per_process: list[int]) -> list[tuple[str, object]]:
    ctx = multiprocessing.get_context("fork")
    barrier, results = ctx.Barrier(len(frames_per_process)), ctx.Queue()
    procs = [ctx.Process(target=_create, args=(str(path), f, barrier, results)) for f in frames_per_process]
    for p in procs:
        p.start()
    out = [results.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    return out


def test_four_processes_creating_one_store_all_open_it(tmp_path):
    for round_ in range(5):
        path = tmp_path / f"s{round_}" / "store"
        out = _race(path, [3, 3, 3, 3])
        assert out == [("ok", 3)] * 4
        assert sorted(p.name for p in path.iterdir()) == ["shards", PROVENANCE_FILE]  # no temporary files left
        assert open_store(path).provenance["sampling"]["num_frames"] == 3


def test_racing_creators_with_different_settings_one_wins_the_others_are_refused(tmp_path):
    for round_ in range(5):
        path = tmp_path / f"s{round_}"
        out = _race(path, [3, 16, 16, 16])
        winner = open_store(path).provenance["sampling"]["num_frames"]
        for status, detail in out:
            if status == "ok":
                assert detail == winner
            else:
                assert "num_frames" in detail and "refusing" in detail
        assert sum(status == "ok" for status, _ in out) == (1 if winner == 3 else 3)


def test_a_folder_with_other_files_is_still_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(StoreError, match="not a vidprobe store"):
        create_or_open(tmp_path, PROV)
