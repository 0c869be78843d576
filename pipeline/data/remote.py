"""Videos behind URLs (``http(s)://``, ``s3://``, ``gs://``, whatever fsspec serves), read in byte ranges.

Why a file object of our own: sparse sampling decodes a few GOPs of a file, so the decoder must fetch
only the ranges it reads. ``RangeFile`` is a seekable raw file read in aligned blocks, one ranged
request (``fs.cat_file(url, start, end)``) per block of ``remote_block_size`` bytes (the read-ahead), a
few blocks kept; a read that fails transiently (timeout, reset, truncated body, 5xx)
is retried with exponential backoff (``remote_retries``), a 404/403 is not. Every failure is a
``DecodeError`` naming the URL, redacted, and the cause.

Credentials come from each protocol's own environment (``AWS_*`` and ``AWS_ENDPOINT_URL`` for S3 through
botocore, ``GOOGLE_APPLICATION_CREDENTIALS`` for GCS, ``~/.netrc`` for HTTP through aiohttp); a URL's
own secrets (``user:pass@``, a presigned query) are used to fetch and never shown: ``redact`` is the
URL as the store, the run record and every message name it.

A remote video's fingerprint (``pipeline.store.sources``) is its size and ETag (else its last-modified
time) from ``info()``: an object replaced at the same URL is extracted again.
"""

from __future__ import annotations

import functools
import glob
import io
import re
import time
import zlib
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlsplit, urlunsplit

from ..config import ExtractConfig
from ..errors import DecodeError

__all__ = [
    "RemoteOptions",
    "is_url",
    "redact",
    "open_url",
    "remote_source",
    "read_bytes",
    "exists",
    "can_list",
    "list_under",
    "canonical",
]

# query parameters that are secrets (presigned S3/GCS/Azure URLs, API tokens): a query holding one is dropped
_SECRET_PARAMS = ("signature", "credential", "token", "sig", "key", "secret", "password", "auth", "expires")
_ALIASES = {"s3a": "s3", "gcs": "gs"}  # other names fsspec's S3 and GCS filesystems answer to


@dataclass(frozen=True)
class RemoteOptions:
    """How remote reads behave (``extract.remote_*`` settings)."""

    retries: int = 3  # further tries of a read that failed transiently
    timeout: float = 30.0  # seconds a connection or a read may wait for the server
    block_size: int = 1 << 18  # bytes fetched per request: the read-ahead
    backoff: float = 0.25  # seconds before the first retry, doubled at each

    @classmethod
    def of(cls, extract: ExtractConfig) -> RemoteOptions:
        """The options the ``extract.remote_*`` settings ask for."""
        return cls(extract.remote_retries, extract.remote_timeout, extract.remote_block_size)


def is_url(text: str) -> bool:
    """Whether ``text`` names a remote object (``scheme://``; ``file://`` and Windows drives are local)."""
    scheme, sep, _ = str(text).partition("://")
    return bool(sep) and len(scheme) > 1 and scheme.isascii() and scheme.replace("+", "").isalnum() and scheme != "file"


def redact(url: str) -> str:
    """``url`` without its secrets: no ``user:pass@``, and no query where a parameter is a signature or a
    token (a presigned URL's key is then its object: presigning it again names the same video)."""
    if not is_url(url):
        return url
    parts = urlsplit(url)
    netloc = parts.netloc.rpartition("@")[2]
    names = [k.lower() for k, _ in parse_qsl(parts.query, keep_blank_values=True)]
    query = "" if any(s in k for k in names for s in _SECRET_PARAMS) else parts.query
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))


def _filesystem(url: str, opts: RemoteOptions) -> tuple[Any, str]:
    """(the fsspec filesystem for ``url``, the path it names there), timeouts set per protocol and the
    protocol's own retries off (``RangeFile`` retries, bounded, and says why it gave up)."""
    protocol = url.partition("://")[0].lower()
    try:  # every import in here: a protocol's package missing is "install vidprobe[...]", not a traceback
        from fsspec.core import url_to_fs

        storage: dict[str, Any] = {}
        if protocol in ("http", "https", "gs", "gcs"):
            import aiohttp

            timeout = aiohttp.ClientTimeout(total=None, sock_connect=opts.timeout, sock_read=opts.timeout)
            if protocol in ("gs", "gcs"):
                return _gcs(url, {"requests_timeout": timeout, "use_listings_cache": False})
            storage = {"client_kwargs": {"timeout": timeout}}
        elif protocol in ("s3", "s3a"):
            storage = {
                "use_listings_cache": False,  # a listing kept would hide an object added or replaced since
                "config_kwargs": {
                    "connect_timeout": opts.timeout,
                    "read_timeout": opts.timeout,
                    "retries": {"max_attempts": 1},
                },
            }
        return url_to_fs(url, **storage)
    except (ImportError, ValueError) as exc:
        extra = {"s3": "s3", "s3a": "s3", "gs": "gcs", "gcs": "gcs", "http": "http", "https": "http"}.get(protocol)
        hint = f"; install vidprobe[{extra}]" if extra else ""
        raise DecodeError(f"{redact(url)}: cannot read {protocol}:// URLs ({_first_line(exc)}{hint})") from None


def _gcs(url: str, storage: dict[str, Any]) -> tuple[Any, str]:
    """gcsfs's JSON-API filesystem with one try per request (``_retrying`` retries). Not the class fsspec
    registers for ``gs://``: gcsfs 2026's default subclass asks the gRPC storage-control API for the bucket's
    layout before every read (``ExtendedGcsFileSystem``, for zonal buckets) and, where that API does not
    answer (an anonymous reader, an emulator), waits out its own retries each time. Settings from fsspec's
    config (``FSSPEC_GS_TOKEN``, ``~/.config/fsspec/gs.json``) apply as through ``url_to_fs``."""
    from fsspec.config import apply_config

    cls = _one_try_gcs()
    fs = cls(**apply_config(cls, storage))
    return fs, fs._strip_protocol(url)


@functools.cache
def _one_try_gcs() -> type:
    """gcsfs's filesystem with its request unwrapped from ``retry_request``: one try needs no retry loop,
    and that loop logs each failure it gives up on with its traceback (``logger.exception``) on stderr."""
    from gcsfs.core import GCSFileSystem

    request = getattr(GCSFileSystem._request, "__wrapped__", None)
    if request is None:  # another gcsfs layout: keep its own retries
        return GCSFileSystem
    body = {"_request": request, "__module__": __name__}
    return type("OneTryGCSFileSystem", (GCSFileSystem,), body)


def __getattr__(name: str) -> Any:
    """``OneTryGCSFileSystem`` by name, so a pickled filesystem (fsspec pickles its class) loads elsewhere."""
    if name == "OneTryGCSFileSystem":
        return _one_try_gcs()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:200]


def _cause(exc: BaseException) -> tuple[bool, str]:
    """(whether trying again may help, the cause in words) of a failed remote call."""
    if isinstance(exc, FileNotFoundError) and exc.__cause__ is not None:
        return _cause(exc.__cause__)  # fsspec's HTTP info() says "not found" whatever its GET met
    if isinstance(exc, FileNotFoundError):
        return False, "not found (404)"
    if isinstance(exc, PermissionError) or (type(exc) is OSError and str(exc).startswith("Forbidden")):  # gcsfs
        return False, "access denied (403)"
    status = getattr(exc, "status", None) or getattr(exc, "code", None)  # aiohttp's ClientResponseError; gcsfs
    if isinstance(status, int) and status >= 400:
        return status >= 500 or status == 429, f"HTTP {status} {getattr(exc, 'message', '')}".strip()
    if isinstance(exc, TimeoutError) or "timeout" in type(exc).__name__.lower():
        return True, f"timed out (no data for remote_timeout seconds: {_first_line(exc)})"
    if isinstance(exc, _Truncated):
        return True, str(exc)
    if "payload" in type(exc).__name__.lower():  # aiohttp: fewer bytes than the Content-Length said
        got = re.search(r"received \d+ of \d+ bytes", str(exc))
        return True, f"the body ended early (connection reset or object truncated{'; ' + got[0] if got else ''})"
    if isinstance(exc, (IsADirectoryError, NotADirectoryError, ValueError, TypeError)):
        return False, _first_line(exc)
    return True, f"network error ({type(exc).__name__}: {_first_line(exc)})"


class _Truncated(IOError):
    """The server sent fewer bytes than the object's size says are there."""


def _retrying(url: str, opts: RemoteOptions, call: Any) -> Any:
    """``call()``, tried again after transient failures (at most ``opts.retries`` times, backing off);
    a ``DecodeError`` naming the URL and the cause when it gives up."""
    for attempt in range(opts.retries + 1):
        try:
            return call()
        except Exception as exc:  # noqa: BLE001 - every fault of a remote read is classified here
            transient, cause = _cause(exc)
            if not transient or attempt == opts.retries:
                tries = f" after {attempt + 1} tries" if transient and attempt else ""
                raise DecodeError(f"{redact(url)}: {cause}{tries}") from None
            time.sleep(opts.backoff * 2**attempt)
    raise AssertionError("unreachable")  # pragma: no cover


class RangeFile(io.RawIOBase):
    """A remote object as a seekable raw file read in aligned blocks of ``block_size`` bytes, one ranged
    request each, the last ``cache_blocks`` kept (a decoder returns to a container's index and to the
    GOP it seeked into): memory is bounded, and no byte is fetched twice while its block is kept."""

    cache_blocks = 8

    def __init__(self, url: str, opts: RemoteOptions, fs: Any, path: str, size: int):
        super().__init__()
        self.url, self.opts, self.fs, self.fspath, self.size = url, opts, fs, path, size
        self.pos = 0
        self.blocks: OrderedDict[int, bytes] = OrderedDict()

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.pos, io.SEEK_END: self.size}[whence]
        self.pos = max(0, base + offset)
        return self.pos

    def readinto(self, buffer: Any) -> int:
        if self.pos >= self.size or not len(buffer):
            return 0
        bs = self.opts.block_size
        index, at = divmod(self.pos, bs)
        block = self._block(index)
        n = min(len(buffer), len(block) - at)
        buffer[:n] = block[at : at + n]
        self.pos += n
        return n

    def _block(self, index: int) -> bytes:
        block = self.blocks.pop(index, None)
        if block is None:
            start = index * self.opts.block_size
            end = min(self.size, start + self.opts.block_size)
            block = _retrying(self.url, self.opts, lambda: self._fetch(start, end))
            while len(self.blocks) >= self.cache_blocks:
                self.blocks.popitem(last=False)
        self.blocks[index] = block
        return block

    def _fetch(self, start: int, end: int) -> bytes:
        data = self.fs.cat_file(self.fspath, start=start, end=end)
        if len(data) > end - start and len(data) == self.size:  # a server that ignores Range sends it all
            data = data[start:end]
        if len(data) != end - start:
            raise _Truncated(f"truncated body (bytes {start}-{end - 1} of {self.size}: got {len(data)})")
        return data


def remote_source(info: dict) -> tuple[int, int, int]:
    """A remote object's fingerprint (``pipeline.store.sources.Source``) from ``info()``: its size, and a
    crc32 of its ETag (else its last-modified time) in both other columns, so ``same_file`` holds exactly
    when size and tag do. Without either tag the size alone decides (-1: unknown)."""
    tag = next((info[k] for k in ("ETag", "etag", "LastModified", "Last-Modified", "mtime") if info.get(k)), None)
    digest = -1 if tag is None else zlib.crc32(str(tag).encode())
    return int(info.get("size") or 0), digest, digest


def _info(url: str, opts: RemoteOptions) -> tuple[Any, str, dict]:
    fs, path = _filesystem(url, opts)
    info = _retrying(url, opts, lambda: fs.info(path))
    if info.get("type") == "directory":
        raise DecodeError(f"{redact(url)}: a folder or prefix, not a video")
    if not info.get("size"):
        raise DecodeError(f"{redact(url)}: the server gives no size for it (or it is empty); cannot read ranges")
    return fs, path, info


def open_url(url: str, opts: RemoteOptions | None = None) -> tuple[RangeFile, tuple[int, int, int]]:
    """(a seekable file reading ``url`` in ranges, its fingerprint at opening)."""
    opts = opts or RemoteOptions()
    fs, path, info = _info(url, opts)
    raw = RangeFile(url, opts, fs, path, int(info["size"]))
    return raw, remote_source(info)


def fingerprint_url(url: str) -> tuple[int, int, int] | None:
    """The object's fingerprint now (one ``info()`` request, tried twice), or None if it cannot be had."""
    try:
        return remote_source(_info(url, RemoteOptions(retries=1))[2])
    except DecodeError:
        return None


def read_bytes(url: str, opts: RemoteOptions | None = None) -> bytes:
    """The whole object at ``url`` (a manifest, a split file), retried as a block is; ``DecodeError`` naming
    the redacted URL and the cause."""
    opts = opts or RemoteOptions()
    fs, path = _filesystem(url, opts)
    return bytes(_retrying(url, opts, lambda: fs.cat_file(path)))


def exists(url: str) -> bool:
    """Whether an object is at ``url`` (one metadata request; a failure to ask is False)."""
    opts = RemoteOptions(retries=1)
    try:
        fs, path = _filesystem(url, opts)
        return bool(_retrying(url, opts, lambda: fs.isfile(path)))
    except DecodeError:
        return False


def can_list(url: str) -> bool:
    """Whether the protocol lists a folder's objects (object stores do; an HTTP server answers with a page)."""
    return url.partition("://")[0].lower() not in ("http", "https")


def list_under(url: str) -> list[str]:
    """Every object under the folder or prefix ``url``, or that the glob ``url`` matches
    (``s3://bucket/videos/*.mp4``), as URLs (``can_list`` protocols); ``DecodeError`` naming it when it
    cannot be listed."""
    opts = RemoteOptions()
    fs, path = _filesystem(url, opts)
    pattern = glob.has_magic(url.partition("?")[0])
    found = _retrying(url, opts, lambda: fs.glob(url) if pattern else fs.find(path.rstrip("/")))
    return sorted(fs.unstrip_protocol(p) for p in found)


def canonical(url: str) -> str:
    """``url`` with its scheme's usual name (``s3a://`` is ``s3://``, ``gcs://`` is ``gs://``): what
    ``list_under`` names objects by, and so the one key an object has however it was typed."""
    scheme, sep, rest = url.partition("://")
    return f"{_ALIASES.get(scheme.lower(), scheme)}{sep}{rest}" if sep else url
