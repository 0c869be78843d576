"""Writer locks between real processes: refusal with a clear message, shards of one job side by side,
stale locks after kill -9 taken over, forked workers never keeping a store locked."""

import json
import os
import signal
import subprocess
import sys

import pytest

import pipeline.store.lock as store_lock
from pipeline.cli import main
from pipeline.errors import StoreBusyError
from pipeline.store import create_or_open
from pipeline.store.lock import WriterLock, live_holders

PROV = {
    "encoder": "test-enc",
    "weights_id": "w1",
    "dim": 4,
    "preprocess": {},
    "sampling": {"strategy": "uniform", "num_frames": 3},
}

HOLD = """
import os, sys, time
from pipeline.store.lock import WriterLock
shard = None if sys.argv[2] == "all" else tuple(int(x) for x in sys.argv[2].split("/"))
WriterLock(sys.argv[1], shard).acquire()
if len(sys.argv) > 3:  # fork a 'decoder worker' that outlives us, then die without cleanup
    child = os.fork()
    if child == 0:
        time.sleep(60)
        os._exit(0)
    print(child, flush=True)
    os.kill(os.getpid(), 9)
print("held", flush=True)
time.sleep(60)
"""


def hold(store, scope="all", fork_and_die=False):
    """A separate process holding a lock; returns once it is held."""
    args = [sys.executable, "-c", HOLD, str(store), scope] + (["fork"] if fork_and_die else [])
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline().strip()
    assert line, "holder process failed"
    return proc, line


def kill(proc):
    proc.kill()
    proc.wait(timeout=10)


def test_second_job_is_refused_naming_the_holder_until_it_dies(tmp_path):
    store = create_or_open(tmp_path / "s", PROV)
    proc, _ = hold(store.path)
    try:
        with pytest.raises(StoreBusyError) as err:
            store.writer_lock().acquire()
        msg = str(err.value)
        assert f"pid {proc.pid}" in msg and "another job is writing" in msg and str(store.path) in msg
        assert [h.pid for h in live_holders(store.path)] == [proc.pid]
        assert store.info()["writers"] and f"pid {proc.pid}" in store.info()["writers"][0]
    finally:
        os.kill(proc.pid, signal.SIGKILL)  # kill -9: no cleanup, the lock file stays behind
        proc.wait(timeout=10)
    assert (store.path / "locks" / "all.lock").exists()
    with store.writer_lock() as lock:  # stale: taken over without anyone deleting files
        assert lock.held and json.loads(lock.path.read_text())["pid"] == os.getpid()
    assert not (store.path / "locks" / "all.lock").exists() and live_holders(store.path) == []


def test_declared_shards_of_one_job_run_side_by_side(tmp_path):
    store = create_or_open(tmp_path / "s", PROV)
    proc, _ = hold(store.path, "0/4")
    try:
        with store.writer_lock((1, 4)), store.writer_lock((3, 4)):  # other shards of the same job
            pass
        for shard, needle in [
            ((0, 4), "shard 0 of 4 is already being written"),
            (None, "another job"),
            ((1, 2), "split into 4 shards"),
        ]:
            with pytest.raises(StoreBusyError, match=needle):
                store.writer_lock(shard).acquire()
    finally:
        kill(proc)
    with store.writer_lock(None):
        with pytest.raises(StoreBusyError, match="another job"):
            store.writer_lock((2, 4)).acquire()  # a whole-store job excludes every shard
        with pytest.raises(StoreBusyError):
            store.writer_lock().acquire()  # the same process twice is refused too


def test_bad_shard_ids_are_usage_errors(tmp_path):
    from pipeline.errors import ConfigError

    with pytest.raises(ConfigError, match="shard id 4 of 4"):
        WriterLock(tmp_path, (4, 4))


def test_a_forked_worker_outliving_its_job_does_not_hold_the_lock(tmp_path):
    store = create_or_open(tmp_path / "s", PROV)
    proc, child = hold(store.path, fork_and_die=True)
    proc.wait(timeout=10)
    try:
        os.kill(int(child), 0)  # the orphan is alive ...
        with store.writer_lock():  # ... and the store is free
            pass
    finally:
        os.kill(int(child), signal.SIGKILL)


def test_stale_tmp_shards_are_removed_by_the_next_whole_store_writer_only_in_scope(tmp_path):
    store = create_or_open(tmp_path / "s", PROV)
    shards = store.path / "shards"
    dead = [
        shards / "shard-1-all-aa.h5.tmp",
        shards / "shard-2-00001of00004-bb.h5.tmp",
        shards / "shard-3-00002of00004-cc.h5.tmp",
    ]
    for p in dead:
        p.write_bytes(b"\0")
    with store.writer_lock((1, 4)):
        assert sorted(p.exists() for p in dead) == [False, True, True] and not dead[1].exists()
    with store.writer_lock():
        assert not any(p.exists() for p in dead)


def test_cli_says_busy_with_exit_75(tmp_path, capsys):
    store = create_or_open(tmp_path / "s", PROV)
    proc, _ = hold(store.path)
    try:
        code = main(["compact", str(store.path)])
        err = capsys.readouterr().err
        assert code == 75 and f"pid {proc.pid}" in err and len(err.strip().splitlines()) == 1
    finally:
        kill(proc)
    assert main(["compact", str(store.path)]) == 0


def test_without_record_locks_the_pid_decides(tmp_path, monkeypatch):
    """Filesystems without fcntl locks (e.g. Lustre without -o flock): the lock file's pid/host decide."""
    monkeypatch.setattr(store_lock, "_try_lockf", lambda fd: None)
    store = create_or_open(tmp_path / "s", PROV)
    lock_file = store.path / "locks" / "all.lock"
    lock_file.parent.mkdir(exist_ok=True)
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        me = store_lock.Holder.me("extract", "all")
        for pid, host, _busy in [(sleeper.pid, me.host, True), (sleeper.pid, "other-node", True)]:
            lock_file.write_text(
                json.dumps({**me.__dict__, "pid": pid, "host": host, "proc_start": store_lock._proc_start(pid)})
            )
            with pytest.raises(StoreBusyError, match="delete .*all.lock"):
                store.writer_lock().acquire()
    finally:
        kill(sleeper)
    # same host, process gone: stale
    lock_file.write_text(json.dumps({**me.__dict__, "pid": sleeper.pid}))
    with store.writer_lock(), pytest.raises(StoreBusyError):
        store.writer_lock().acquire()


def test_a_forked_copy_of_the_lock_never_releases_it(tmp_path):
    store = create_or_open(tmp_path / "s", PROV)
    with store.writer_lock() as lock:
        pid = os.fork()
        if pid == 0:  # a decoder worker forked by the job, dropping its copy of the lock object
            lock.release()
            del lock
            os._exit(0)
        os.waitpid(pid, 0)
        assert lock.path.exists()
        with pytest.raises(StoreBusyError):
            store.writer_lock().acquire()
