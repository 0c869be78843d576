"""kill -9 at many points, then resume: the store ends up equal to an uninterrupted run's.

Two levels, both with real processes and real files:
- the store writer alone (cheap, so killed many times at random instants, and whenever a shard is
  mid-write): every finished shard survives, nothing half-written is ever read, nothing duplicated;
- the real ``vidprobe extract`` over real videos with the real encoder, killed while a shard is being
  written, right after a rename, and while the next clips are decoded/encoded (with a decoder worker).
  Each run is its own process running ``pipeline.cli.main`` (what ``python -m pipeline`` runs), forked
  from a helper that imported torch/timm once, so a run costs a second instead of a fresh interpreter's
  import time; the final resume runs through the same CLI in this process.
"""

import hashlib
import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from media import pattern_frames, write_video

from pipeline.cli import main
from pipeline.config import load_config
from pipeline.data.manifest import load_manifest
from pipeline.errors import StoreBusyError
from pipeline.extract.entry import extract
from pipeline.store import open_store
from pipeline.store.tools import verify_store

REPO = Path(__file__).resolve().parents[1]


def shard_hashes(store: Path) -> dict[str, str]:
    d = store / "shards"
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.glob("*.h5"))} if d.is_dir() else {}


def run_and_kill(start, store: Path, trigger, timeout: float = 180.0, on_trigger=None) -> tuple[bool, bool, int]:
    """Start a process (``start()`` returns a Popen-like object); SIGKILL it once ``trigger(new_names, seconds)``.

    Returns (killed, a *.tmp shard of this run was on disk at the kill, exit code). ``new_names`` are entries of
    ``shards/`` that appeared since the start, polled every ~0.2 ms.
    """
    shards = store / "shards"
    before = set(os.listdir(shards)) if shards.is_dir() else set()
    proc = start()
    t0 = time.monotonic()
    try:
        while proc.poll() is None:
            try:
                new = set(os.listdir(shards)) - before
            except FileNotFoundError:
                new = set()
            if trigger(new, time.monotonic() - t0):
                if on_trigger:
                    on_trigger(proc)
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)
                # on a loaded machine a timed kill can land before the store (and shards/) exists
                tmp = shards.is_dir() and any(n.endswith(".tmp") for n in set(os.listdir(shards)) - before)
                return True, tmp, proc.returncode
            assert time.monotonic() - t0 < timeout, "extraction hung"
            time.sleep(0.0002)
        return False, False, proc.returncode
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)


def popen(args):
    return lambda: subprocess.Popen(args, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


ZYGOTE = r"""
import json, os, sys
import av, h5py, timm, torch  # the slow imports, paid once
import pipeline.encoders.effnet_lite, pipeline.extract.local
from pipeline.cli import main
for line in sys.stdin:
    pid = os.fork()
    if pid == 0:
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, 1), os.dup2(null, 2)
        try:
            code = main(json.loads(line))
        except SystemExit as exc:
            code = exc.code
        os._exit(code if isinstance(code, int) else 1)
    print(pid, flush=True)
    print(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]), flush=True)
"""


class Zygote:
    """Forks CLI runs on request; each run is a separate process that can be SIGKILLed."""

    def __init__(self):
        self.proc = subprocess.Popen(
            [sys.executable, "-c", ZYGOTE], cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE
        )
        self.buf = b""

    def line(self, timeout: float) -> str | None:
        fd, deadline = self.proc.stdout.fileno(), time.monotonic() + timeout
        while b"\n" not in self.buf:
            ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                return None
            chunk = os.read(fd, 4096)
            assert chunk, "zygote died"
            self.buf += chunk
        out, self.buf = self.buf.split(b"\n", 1)
        return out.decode()

    def start(self, args: list[str]):
        self.proc.stdin.write((json.dumps(args) + "\n").encode())
        self.proc.stdin.flush()
        return Forked(self, int(self.line(120)))

    def close(self):
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


class Forked:
    def __init__(self, zygote: Zygote, pid: int):
        self.zygote, self.pid, self.returncode = zygote, pid, None

    def poll(self) -> int | None:
        return self.wait(0.0)

    def wait(self, timeout: float) -> int | None:
        if self.returncode is None:
            line = self.zygote.line(timeout)
            self.returncode = None if line is None else int(line)
        return self.returncode


def check_no_shard_lost(store: Path, seen: dict[str, str]) -> None:
    now = shard_hashes(store)
    missing = [n for n in seen if n not in now]
    changed = [n for n in seen if n in now and now[n] != seen[n]]
    assert not missing and not changed, f"lost {missing}, changed {changed}"


# --- the store writer alone, killed many times ---------------------------------------------------

WRITER = """
import sys
import time
import numpy as np
from pipeline.store import ShardWriter, create_or_open
path, n = sys.argv[1], int(sys.argv[2])
prov = {"encoder": "t", "weights_id": "w", "dim": 256, "preprocess": {},
        "sampling": {"strategy": "uniform", "num_frames": 4}}
store = create_or_open(path, prov)
with store.writer_lock() as lock:
    done = store.done_keys()
    with ShardWriter(store, shard_size=40, tag=lock.tag) as w:
        for i in range(n):
            if (f"v{i:05d}.mp4", -1.0, -1.0) not in done:
                time.sleep(0.01)  # paced like a real job, so even a quiet machine sees >= 6 kills before the end
                emb = np.random.default_rng(i).normal(size=(4, 256)).astype(np.float32)
                w.add(f"v{i:05d}.mp4", None, None, f"l{i % 3}", "", emb, np.arange(4) * 0.25)
"""


def test_store_writer_killed_at_random_instants_and_mid_write(tmp_path):
    store, n = tmp_path / "s", 1200
    args = popen([sys.executable, "-c", WRITER, str(store), str(n)])
    rng = np.random.default_rng(0)
    seen: dict[str, str] = {}
    kills = tmp_hits = 0
    for attempt in range(14):
        if attempt % 2:
            trigger = lambda new, t: any(x.endswith(".tmp") for x in new)  # noqa: E731 - mid shard write
        else:
            delay = float(rng.uniform(0.2, 1.0))
            trigger = lambda new, t, d=delay: t >= d  # noqa: E731 - any instant
        killed, tmp, code = run_and_kill(args, store, trigger, timeout=60)
        if not killed:
            assert code == 0
            break
        kills += 1
        tmp_hits += tmp
        if (store / "store.json").exists():
            assert len(open_store(store)) <= n  # readable right after the kill: no half shard is ever seen
        check_no_shard_lost(store, seen)
        seen.update(shard_hashes(store))
    else:
        killed, _, code = run_and_kill(args, store, lambda new, t: False, timeout=60)
        assert not killed and code == 0
    assert kills >= 6 and tmp_hits >= 1, (kills, tmp_hits)
    check_no_shard_lost(store, seen)
    s = open_store(store)
    assert s.index().duplicates == 0 and sum(m.n_clips for m in s.index().shards) == n
    assert s.videos == [f"v{i:05d}.mp4" for i in range(n)]
    for i in (0, 1, n // 2, n - 1):
        assert np.array_equal(s.frames(i), np.random.default_rng(i).normal(size=(4, 256)).astype(np.float32))
    assert not list((store / "shards").glob("*.tmp"))  # the last run's lock cleared dead writers' leftovers
    assert verify_store(store).ok


# --- the real extraction, killed at each stage ----------------------------------------------------

SETTINGS = ["sampling.num_frames=2", "extract.shard_size=2", "extract.batch_size=2"]


@pytest.fixture(scope="module")
def small_videos(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("kill-videos")
    for i in range(10):
        suffix = ".mkv" if i % 3 == 0 else ".mp4"
        write_video(
            root / f"class{i % 2}" / f"v{i:02d}{suffix}",
            pattern_frames(12, height=48, width=64, kind=i % 2, seed=i),
            fps=12,
        )
    return root


@pytest.mark.slow
def test_extraction_killed_at_every_stage_then_resumed_equals_uninterrupted_run(small_videos, tmp_path, capsys):
    from pipeline.encoders import create_encoder

    cfg = load_config(None, [*SETTINGS, "extract.num_workers=0"])
    encoder = create_encoder(cfg.encoder, device="cpu")
    (ref,) = extract(load_manifest(small_videos), tmp_path / "ref", cfg, encoders=[encoder], progress=False)
    assert ref.done == 10 and ref.failed == 0

    store = tmp_path / "killed"
    cmd = ["extract", str(small_videos), "-o", str(store), "-q", *SETTINGS]
    zygote = Zygote()
    busy_seen = []

    def second_job_is_refused(proc):
        with pytest.raises(StoreBusyError, match=f"pid {proc.pid}"):
            extract(load_manifest(small_videos), store, cfg, encoders=[encoder], progress=False)
        busy_seen.append(proc.pid)

    def after_rename(delay):
        first = {}

        def trigger(new, t):
            if "t" not in first and any(x.endswith(".h5") for x in new):
                first["t"] = t
            return "t" in first and t - first["t"] >= delay

        return trigger

    mid_write = lambda new, t: any(x.endswith(".tmp") for x in new)  # noqa: E731
    stages = [
        ("shard write", [], mid_write, None),
        ("building the encoder / first decode", [], lambda new, t: t > 0.3, None),
        ("right after rename", [], lambda new, t: any(x.endswith(".h5") for x in new), None),
        ("decode/encode, with a decoder worker", ["extract.num_workers=1"], after_rename(0.05), None),
        ("shard write, with a decoder worker", ["extract.num_workers=1"], mid_write, None),
        (
            "decode/encode, second job refused first",
            [],
            after_rename(0.0),
            second_job_is_refused,
        ),  # at once: the engine finishes 8 clips in well under a second
    ]
    seen: dict[str, str] = {}
    log = []
    try:
        for name, extra, trigger, hook in stages:
            killed, tmp, code = run_and_kill(
                lambda: zygote.start([*cmd, "extract.num_workers=0", *extra]), store, trigger, on_trigger=hook
            )
            log.append((name, killed, tmp, len(shard_hashes(store))))
            if not killed:  # it finished before the trigger: nothing left to interrupt
                assert code == 0
                break
            check_no_shard_lost(store, seen)
            seen.update(shard_hashes(store))
            if seen:
                assert len(open_store(store)) == 2 * len(seen)  # finished shards only, each whole
    finally:
        zygote.close()
    capsys.readouterr()
    assert sum(x[1] for x in log) >= 5 and any(x[2] for x in log), log
    assert busy_seen, log

    assert main([*cmd, "--json", "extract.num_workers=0"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["done"] + summary["skipped"] == 10 and summary["skipped"] == 2 * len(seen), (summary, log)
    check_no_shard_lost(store, seen)

    a, b = open_store(tmp_path / "ref"), open_store(store)
    assert sorted(a.keys()) == sorted(b.keys()) and len(b) == 10
    assert b.index().duplicates == 0 and sum(m.n_clips for m in b.index().shards) == 10
    rows = {k: i for i, k in enumerate(b.keys())}
    for i, key in enumerate(a.keys()):
        j = rows[key]
        assert a.labels[i] == b.labels[j]
        assert np.array_equal(a.timestamps(i), b.timestamps(j))
        assert np.allclose(a.frames(i), b.frames(j), rtol=1e-4, atol=1e-5), key
    assert not list((store / "shards").glob("*.tmp"))
    report = verify_store(store)
    assert report.ok, report.problems
