"""Real servers on localhost for remote-source tests and benchmarks: an HTTP server honouring Range
requests that counts what it serves and injects failures per path, moto's S3 server and a GCS emulator."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote


class RangeServer:
    """Serves the files under ``root`` at ``http://127.0.0.1:PORT/<relative path>``, with ETag, HEAD and
    single-range GETs. ``requests``/``bytes`` count per path (``heads``: the requests that were HEADs);
    ``fail[path]`` injects a failure: ``404``, ``403``, ``reset`` (the connection closes halfway through a
    body), ``truncate`` (the body ends short of its Content-Length), ``stall`` (the server says nothing for
    ``stall_s`` seconds)."""

    def __init__(self, root: Path, stall_s: float = 30.0):
        self.root, self.stall_s = Path(root), stall_s
        self.requests: Counter[str] = Counter()
        self.bytes: Counter[str] = Counter()
        self.heads: Counter[str] = Counter()
        self.fail: dict[str, str] = {}
        self.lock = threading.Lock()
        self.httpd = _QuietServer(("127.0.0.1", 0), _handler(self))
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def url(self, rel: str | Path) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/{Path(rel).as_posix()}"

    def __enter__(self) -> RangeServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class _QuietServer(ThreadingHTTPServer):
    """A client that hangs up mid-request (a probe done with it, a timeout) is not an error worth a traceback
    on stderr, where the tests look for the CLI's own."""

    def handle_error(self, request, client_address) -> None:
        import sys

        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


def _handler(server: RangeServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:  # quiet
            pass

        def do_HEAD(self) -> None:
            self._serve(body=False)

        def do_GET(self) -> None:
            self._serve(body=True)

        def _serve(self, body: bool) -> None:
            rel = unquote(self.path.split("?")[0]).lstrip("/")  # a file name's escapes (%23: #) decoded
            with server.lock:
                server.requests[rel] += 1
                server.heads[rel] += self.command == "HEAD"
            fault = server.fail.get(rel, "")
            if fault == "stall":
                time.sleep(server.stall_s)
            if fault in ("404", "403"):
                self.send_response(int(fault))
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            path = server.root / rel
            if not path.is_file():
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            st = os.stat(path)
            start, end = 0, st.st_size - 1
            rng = self.headers.get("Range")
            if rng and rng.startswith("bytes="):
                a, _, b = rng[6:].partition("-")
                start, end = int(a or 0), min(int(b) if b else st.st_size - 1, st.st_size - 1)
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{end}/{st.st_size}")
            else:
                self.send_response(200)
            self.send_header("Content-Length", str(end - start + 1))
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("ETag", f'"{st.st_size:x}-{st.st_mtime_ns:x}"')
            self.send_header("Content-Type", "video/mp4")
            self.end_headers()
            if not body:
                return
            with open(path, "rb") as f:  # only the range: a server does not read what it does not send
                f.seek(start)
                chunk = f.read(end - start + 1)
            if fault in ("reset", "truncate") and self.command == "GET":
                chunk = chunk[: len(chunk) // 2]
            try:
                self.wfile.write(chunk)
            except (BrokenPipeError, ConnectionResetError):  # the client gave up (a timeout): nothing to do
                return
            with server.lock:
                server.bytes[rel] += len(chunk)
            if fault == "reset":
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            if fault in ("reset", "truncate"):
                self.close_connection = True
                self.wfile.flush()
                self.connection.close()

    return Handler


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def _environ(env: dict[str, str]) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextmanager
def moto_s3() -> Iterator:
    """moto's S3 server on a free port, found by botocore through ``AWS_ENDPOINT_URL`` with dummy
    credentials; yields a boto3 client (``create_bucket``, ``upload_file``)."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    env = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
    }
    from s3fs import S3FileSystem

    S3FileSystem.clear_instance_cache()  # fsspec keeps filesystems by arguments: one made for another server's port
    try:
        with _environ(env):
            import boto3

            yield boto3.client("s3")
    finally:
        server.stop()
        S3FileSystem.clear_instance_cache()


@contextmanager
def gcs_emulator(bucket: str) -> Iterator:
    """gcp-storage-emulator (a GCS JSON-API server, in memory) on a free port with ``bucket``, found by gcsfs
    through ``STORAGE_EMULATOR_HOST``, read anonymously (fsspec's config: ``token="anon"``); yields a
    filesystem writing to it (``fs.put_file(local, "bucket/key")``)."""
    import fsspec.config
    from gcp_storage_emulator.server import create_server

    port = free_port()
    server = create_server("127.0.0.1", port, in_memory=True, default_bucket=bucket)
    server.start()
    from pipeline.data.remote import _one_try_gcs

    _one_try_gcs().clear_instance_cache()  # as for S3: one made for another server's port is not reused
    saved = fsspec.config.conf.get("gs")
    fsspec.config.conf["gs"] = {"token": "anon"}
    try:
        with _environ({"STORAGE_EMULATOR_HOST": f"http://127.0.0.1:{port}"}):
            from gcsfs.core import GCSFileSystem

            yield GCSFileSystem(token="anon", endpoint_url=f"http://127.0.0.1:{port}")
    finally:
        if saved is None:
            fsspec.config.conf.pop("gs", None)
        else:
            fsspec.config.conf["gs"] = saved
        server.stop()
        _one_try_gcs().clear_instance_cache()


if __name__ == "__main__":  # a server in its own process (benchmarks): ``python tests/servers.py ROOT``
    import sys

    with RangeServer(Path(sys.argv[1])) as srv:
        print(srv.url("x")[:-1], flush=True)  # the base URL
        srv.thread.join()
