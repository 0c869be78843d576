"""Writer locks of a feature store: one job at a time, or the declared shards of one job side by side.

A lock is a file ``STORE/locks/SCOPE.lock`` that says who holds it (pid, host, start time, command)
plus a POSIX record lock (``fcntl.lockf``) kept for the job's life. The kernel — or the NFS lock
manager — drops that record lock when its process dies, even on ``kill -9``, so a lock file left by a
dead job is recognised as stale and taken over; nobody has to delete files after a crash. POSIX
locks belong to a process and are not inherited across ``fork``, so decoder workers forked by a job
never keep the store locked after the job itself is gone.

Scopes: the whole store (an unsharded extraction, ``compact``) or shard ``i`` of ``n`` of one job
split into ``n`` shards (``--shard-id/--num-shards``, issue 6). Different shards of one ``n`` may hold
locks together; anything else that overlaps is refused with a message naming the live holder.

Where the filesystem has no record locks (ENOLCK/ENOSYS/EOPNOTSUPP, e.g. Lustre mounted without
``flock``) the lock file alone is the lock: one written on this host whose process is gone is
stale; one from another host is trusted, and the message names the file to remove if that job died.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import re
import shutil
import socket
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from ..data.remote import redact
from ..errors import ConfigError, StoreBusyError, StoreError

LOCK_DIR = "locks"
GUARD_FILE = "guard"
_UNSUPPORTED = {errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL}
_BUSY = {errno.EACCES, errno.EAGAIN}
_MUTEX = threading.Lock()
_READ_ONLY = (errno.EACCES, errno.EPERM, errno.EROFS)  # the guard cannot be created or opened for writing
# Lock files this process holds, by resolved path. Never opened a second time: closing *any* fd of a
# file drops this process's POSIX locks on it.
_HELD: dict[str, WriterLock] = {}


def scope_name(job_shard: tuple[int, int] | None) -> str:
    """The one job-shard label: ``all`` or ``0003of0008``. It names the lock file, tags the shard files
    a writer makes, and prefixed with ``shard`` is the writer prefix (``runs.writer_prefix``)."""
    if job_shard is None:
        return "all"
    i, n = job_shard
    return f"{i:04d}of{n:04d}"


def parse_scope(name: str) -> tuple[int, int] | None:
    """Inverse of ``scope_name``; also reads the five-digit spelling older versions wrote."""
    if name == "all":
        return None
    i, _, n = name.partition("of")
    return int(i), int(n)


def validate_job_shard(job_shard: tuple[int, int] | None) -> None:
    if job_shard is None:
        return
    try:
        i, n = (int(x) for x in job_shard)
    except (TypeError, ValueError):
        raise ConfigError(f"job shard {job_shard!r}: expected (shard_id, num_shards)") from None
    if n < 1 or not 0 <= i < n:
        raise ConfigError(f"shard id {i} of {n} shards: need num_shards >= 1 and 0 <= shard_id < num_shards")


def _proc_start(pid: int) -> str | None:
    """Start time of ``pid`` in clock ticks since boot (Linux), to tell a reused pid from the holder."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s,;'\"]+")


def _scrubbed(arg: str) -> str:
    """A command-line argument as the lock file may show it: each URL in it (``--root=https://u:p@h/x``
    too) without its secrets (``data.remote.redact``); the lock file is readable by whoever shares the store."""
    return _URL.sub(lambda m: redact(m.group()), arg)


@dataclass
class Holder:
    """Who holds a lock; written into the lock file as JSON."""

    pid: int
    host: str
    started: float
    command: str
    purpose: str
    scope: str
    proc_start: str | None = None

    @classmethod
    def me(cls, purpose: str, scope: str) -> Holder:
        pid = os.getpid()
        command = " ".join(map(_scrubbed, sys.argv))[:300]
        return cls(pid, socket.gethostname(), time.time(), command, purpose, scope, _proc_start(pid))

    def describe(self) -> str:
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.started))
        shard = parse_scope(self.scope)  # None only for the whole-store scope "all"
        what = "the whole store" if shard is None else "shard {} of {}".format(*shard)
        return f"{self.purpose} of {what} by pid {self.pid} on {self.host} since {since}"

    def alive_by_pid(self) -> bool:
        """Liveness without record locks: only decidable on this host."""
        if self.host != socket.gethostname():
            return True
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass
        return self.proc_start is None or _proc_start(self.pid) in (None, self.proc_start)


def _host_id() -> str:
    return hashlib.sha1(socket.gethostname().encode("utf-8")).hexdigest()[:8]


def writer_tag() -> str:
    """``HOST-PID-START`` naming this process (HOST: 8 hex digits of the host name; START: ``_proc_start``),
    for temporary files that a later run must be able to call a dead writer's leftovers (``tag_is_dead``)."""
    return f"{_host_id()}-{os.getpid()}-{_proc_start(os.getpid()) or 0}"


def tag_is_dead(tag: str) -> bool:
    """True only when the process ``writer_tag`` named is certainly gone: it ran on this host, and its pid is
    free or now another process's. Another host's (a shared filesystem) is never judged."""
    host, pid, start = tag.split("-")
    if host != _host_id():
        return False
    holder = Holder(int(pid), socket.gethostname(), 0.0, "", "", "", None if start == "0" else start)
    return not holder.alive_by_pid()


TAG_PATTERN = r"(?P<tag>[0-9a-f]{8}-\d+-\d+)"  # a ``writer_tag`` inside a temporary file's name


def remove_dead_temporaries(folder: Path, names: re.Pattern[str]) -> int:
    """Remove the entries of ``folder`` whose name matches ``names`` (with a ``TAG_PATTERN`` group) and whose
    writer is dead (``tag_is_dead``): what a killed run left. Returns how many; one that cannot be removed
    stays."""
    removed = 0
    for p in folder.iterdir() if folder.is_dir() else []:
        m = names.match(p.name)
        if m and tag_is_dead(m["tag"]):
            try:
                shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink(missing_ok=True)
                removed += 1
            except OSError:
                pass
    return removed


def _read_holder(path: Path) -> Holder | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return Holder(**{k: data.get(k) for k in Holder.__dataclass_fields__})
    except (OSError, ValueError, TypeError):
        return None  # being written, or garbage from a crash in the middle of writing it


def _try_lockf(fd: int) -> bool | None:
    """True: locked now; False: another process holds it; None: the filesystem has no record locks."""
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError as exc:
        if exc.errno in _BUSY:
            return False
        if exc.errno in _UNSUPPORTED:
            return None
        raise


@contextmanager
def _guard(lock_dir: Path, wait_s: float = 30.0) -> Iterator[None]:
    """Serialises check-then-take between processes (short critical sections only)."""
    fd = os.open(lock_dir / GUARD_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
    try:
        deadline = time.monotonic() + wait_s
        while True:
            got = _try_lockf(fd)
            if got is None or got:
                break  # no record locks here: best effort without a guard
            if time.monotonic() > deadline:
                raise StoreBusyError(
                    f"{lock_dir}: could not take {GUARD_FILE} within {wait_s:.0f} s (a stuck vidprobe process?)"
                )
            time.sleep(0.01)
        yield
    finally:
        os.close(fd)  # drops the record lock


class WriterLock:
    """Exclusive right to add shards to a store (or to one shard of a sharded job). A context manager."""

    def __init__(self, store_path: str | Path, job_shard: tuple[int, int] | None = None, purpose: str = "extract"):
        validate_job_shard(job_shard)
        self.store_path = Path(store_path)
        self.job_shard = None if job_shard is None else (int(job_shard[0]), int(job_shard[1]))
        self.purpose = purpose
        self.scope = scope_name(self.job_shard)
        self.path = self.store_path / LOCK_DIR / f"{self.scope}.lock"
        self.holder: Holder | None = None
        self._fd: int | None = None
        self._pid = 0  # the process that took the lock; a forked child's copy must never release it

    @property
    def tag(self) -> str:
        """Scope tag to pass to ``ShardWriter(tag=...)``: names this writer's shard files."""
        return scope_name(self.job_shard)

    @property
    def held(self) -> bool:
        return self._fd is not None

    def conflict(self, other: Holder) -> str | None:
        """Why ``other`` (a live holder) stops this lock, or None when both may run."""
        theirs = parse_scope(other.scope)
        if self.job_shard is None or theirs is None:
            return "another job is writing to this store"
        if theirs[1] != self.job_shard[1]:
            return (
                f"a job split into {theirs[1]} shards is writing to "
                f"this store (this one is split into {self.job_shard[1]})"
            )
        if theirs[0] == self.job_shard[0]:
            return f"shard {theirs[0]} of {theirs[1]} is already being written"
        return None

    def _refuse_busy(self, holders: list[Holder]) -> None:
        """StoreBusyError naming the first live holder that stops this lock."""
        for other in holders:
            why = self.conflict(other)
            if why:
                raise StoreBusyError(
                    f"{self.store_path}: {why} ({other.describe()}); wait for it to finish, or run declared shards "
                    "of one job with --shard-id/--num-shards. If that process is certainly gone, delete "
                    f"{self.path.parent / (other.scope + '.lock')}"
                )

    def check_free(self) -> None:
        """Refuse now, taking nothing, what ``acquire`` would refuse as busy: a job checks this before it
        builds its model (seconds), and takes the lock itself later."""
        self._refuse_busy(live_holders(self.store_path))

    def acquire(self) -> WriterLock:
        if self.held:
            raise StoreError(f"{self.path}: this lock object is already held")
        lock_dir = self.path.parent
        try:
            lock_dir.mkdir(parents=True, exist_ok=True)
            os.close(os.open(lock_dir / GUARD_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666))
        except OSError as exc:
            raise StoreError(
                f"{self.store_path}: cannot write its lock folder ({exc.strerror or exc}); is the store read-only?"
            ) from None
        with _MUTEX, _guard(lock_dir):
            self._refuse_busy(_live_holders(self.store_path, remove_stale=True))
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
            except FileExistsError:
                raise StoreBusyError(
                    f"{self.store_path}: {self.path.name} was taken at the same moment by another process; retry"
                ) from None
            try:
                if _try_lockf(fd) is False:
                    raise StoreBusyError(
                        f"{self.store_path}: {self.path.name} was taken at the same moment by another process; retry"
                    )
                self.holder = Holder.me(self.purpose, self.scope)
                os.write(fd, json.dumps(asdict(self.holder)).encode())
                os.fsync(fd)
            except BaseException:
                os.close(fd)
                self.path.unlink(missing_ok=True)
                raise
            self._fd, self._pid = fd, os.getpid()
            _HELD[str(self.path.resolve())] = self
        return self

    def release(self) -> None:
        if self._fd is None or self._pid != os.getpid():
            return
        with _MUTEX, _guard(self.path.parent):
            _HELD.pop(str(self.path.resolve()), None)
            self.path.unlink(missing_ok=True)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> WriterLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __del__(self) -> None:  # a forgotten lock must not outlive its object in a long-lived process
        try:
            if self._fd is not None and _HELD.get(str(self.path.resolve())) is self:
                self.release()
        except Exception:
            pass


def live_holders(store_path: str | Path) -> list[Holder]:
    """Holders of the store's lock files whose process is alive (what ``vidprobe info`` shows)."""
    lock_dir = Path(store_path) / LOCK_DIR
    if not lock_dir.is_dir():
        return []
    try:
        with _MUTEX, _guard(lock_dir):
            return _live_holders(store_path, remove_stale=True)
    except OSError as exc:  # a read-only copy of a store: nobody can be writing through it from here
        if exc.errno not in _READ_ONLY:
            raise
        return _live_holders(store_path, remove_stale=False)


def _live_holders(store_path: str | Path, remove_stale: bool) -> list[Holder]:
    """Live holders; stale lock files are removed on the way. Call under the guard to act on the answer."""
    lock_dir = Path(store_path) / LOCK_DIR
    if not lock_dir.is_dir():
        return []
    live: list[Holder] = []
    for path in sorted(lock_dir.glob("*.lock")):
        mine = _HELD.get(str(path.resolve()))
        if mine is not None and mine.holder is not None:
            live.append(mine.holder)
            continue
        holder = _read_holder(path)
        try:
            fd = os.open(path, (os.O_RDWR if remove_stale else os.O_RDONLY) | os.O_CLOEXEC)
        except FileNotFoundError:
            continue
        try:
            got = _try_lockf(fd) if remove_stale else None
            alive = (holder is None or holder.alive_by_pid()) if got is None else not got
            if not alive and remove_stale:
                path.unlink(missing_ok=True)  # while we hold its record lock: nobody can be taking it
        finally:
            os.close(fd)
        if alive:
            scope = path.name[: -len(".lock")]
            live.append(holder or Holder(-1, "?", 0.0, "", "unknown job", scope))
    return live
