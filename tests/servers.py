"""Real servers on loopback for the delivery tests: nginx, and a fault-injecting one."""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import pathlib
import shutil
import socket
import subprocess
import threading
import time
from typing import Iterator

HERE = pathlib.Path(__file__).resolve().parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_port(port: int, proc: subprocess.Popen | None = None, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with status {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return
        time.sleep(0.02)
    raise RuntimeError(f"nothing listening on 127.0.0.1:{port} after {timeout} s")


class Nginx:
    """A running nginx; ``transfers()`` reads its access log (uri, status, body bytes)."""

    def __init__(self, url: str, log: pathlib.Path) -> None:
        self.url = url
        self.log = log

    def transfers(self) -> list[tuple[str, int, int]]:
        if not self.log.exists():
            return []
        rows = [line.split() for line in self.log.read_text().splitlines() if line.strip()]
        return [(r[0], int(r[1]), int(r[2])) for r in rows]


@contextlib.contextmanager
def nginx(root: str, tmp: pathlib.Path) -> Iterator[Nginx]:
    """Serve ``root`` with nginx (installed by tools/test.sh) on a free loopback port."""
    binary = shutil.which("nginx") or "/usr/sbin/nginx"
    port = free_port()
    tmp.mkdir(parents=True, exist_ok=True)
    conf = tmp / "nginx.conf"
    conf.write_text((HERE / "nginx.conf.template").read_text()
                    .replace("{tmp}", str(tmp)).replace("{root}", str(root)).replace("{port}", str(port)))
    proc = subprocess.Popen([binary, "-c", str(conf), "-p", str(tmp)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    try:
        _wait_for_port(port, proc)
        yield Nginx(f"http://127.0.0.1:{port}/", tmp / "access.log")
    finally:
        proc.terminate()
        proc.wait(timeout=10)


class FaultServer(http.server.ThreadingHTTPServer):
    """Serves files from memory, misbehaving on request as each path's script says.

    ``script(path, [behaviour, ...])``: one behaviour per request, the last
    one repeating.  Behaviours: ok, cut (half the body, then close), stall
    (part of the body, then silence), 500, 404, 416, 429, no-range (ignores
    Range: always 200 with the whole file), wrong (other bytes of the same
    size), larger (more bytes than the file), larger-unannounced (the same,
    with no Content-Length), trickle (one byte every 50 ms), slow (32 KiB
    every 10 ms), slow-headers (status line and headers one byte every 50
    ms, padded to last over a minute), bad-range (206 from byte 1 whatever
    was asked), 304 (not modified, whatever was asked).
    """

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _FaultHandler)
        self.files: dict[str, bytes] = {}
        self.scripts: dict[str, list[str]] = {}
        self.requests: list[tuple[str, str, dict]] = []
        self.body_bytes: dict[str, int] = {}
        self.url = f"http://127.0.0.1:{self.server_address[1]}/"

    def put(self, path: str, data: bytes) -> None:
        self.files[path] = data

    def script(self, path: str, behaviours: list[str]) -> None:
        self.scripts[path] = list(behaviours)

    def next_behaviour(self, path: str) -> str:
        steps = self.scripts.get(path)
        if not steps:
            return "ok"
        return steps.pop(0) if len(steps) > 1 else steps[0]


class _FaultHandler(http.server.BaseHTTPRequestHandler):
    server: FaultServer
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        path = self.path.lstrip("/")
        behaviour = self.server.next_behaviour(path)
        self.server.requests.append((path, behaviour, dict(self.headers)))
        if path not in self.server.files or behaviour == "404":
            return self._status(404)
        if behaviour in ("500", "416", "429"):
            return self._status(int(behaviour), {"Retry-After": "0"} if behaviour == "429" else {})
        if behaviour == "304":
            return self._status(304, {"ETag": '"always-unchanged"'})
        data = self.server.files[path]
        if behaviour == "slow-headers":
            return self._trickle_headers(path, data)
        if behaviour == "wrong":
            data = bytes(b ^ 0x5A for b in data)
        etag = '"%s"' % hashlib.sha256(data).hexdigest()[:16]
        if path == "manifest.json" and self.headers.get("If-None-Match") == etag:
            return self._status(304, {"ETag": etag})
        start = 0
        wanted = self.headers.get("Range")
        if_range = self.headers.get("If-Range")
        if wanted and behaviour != "no-range" and (if_range is None or if_range == etag):
            start = int(wanted.split("=")[1].split("-")[0])
            if start >= len(data):
                return self._status(416, {"Content-Range": f"bytes */{len(data)}"})
        if behaviour == "larger":
            data = data + b"\0" * 1000
        if behaviour == "bad-range":
            start = 1
        body = data[start:]
        self.send_response(206 if start else 200)
        self.send_header("ETag", etag)
        self.send_header("Accept-Ranges", "bytes")
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        if behaviour == "larger-unannounced":
            body = body + b"\0" * 1000
            self.send_header("Connection", "close")
        else:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self._send_body(path, body, behaviour)

    def _send_body(self, path: str, body: bytes, behaviour: str) -> None:
        try:
            if behaviour == "cut":
                self._write(path, body[: len(body) // 2])
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
            elif behaviour == "stall":
                self._write(path, body[: len(body) // 2])
                time.sleep(3)
                self.close_connection = True
            elif behaviour == "slow":
                for i in range(0, len(body), 32768):
                    self._write(path, body[i:i + 32768])
                    time.sleep(0.01)
            elif behaviour == "trickle":
                for i in range(len(body)):
                    self._write(path, body[i:i + 1])
                    time.sleep(0.05)
            else:
                self._write(path, body)
                if behaviour == "larger-unannounced":
                    self.close_connection = True
        except (BrokenPipeError, ConnectionResetError, OSError):
            self.close_connection = True

    def _trickle_headers(self, path: str, data: bytes) -> None:
        head = (f"HTTP/1.1 200 OK\r\nX-Padding: {'x' * 1500}\r\nContent-Length: {len(data)}\r\n\r\n"
                .encode())
        try:
            for i in range(len(head)):
                self._write(path, head[i:i + 1])
                time.sleep(0.05)
            self._write(path, data)
        except OSError:
            pass
        self.close_connection = True

    def _write(self, path: str, data: bytes) -> None:
        self.wfile.write(data)
        self.wfile.flush()
        self.server.body_bytes[path] = self.server.body_bytes.get(path, 0) + len(data)

    def _status(self, code: int, headers: dict | None = None) -> None:
        self.send_response(code)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", "0")
        self.end_headers()


@contextlib.contextmanager
def fault_server() -> Iterator[FaultServer]:
    server = FaultServer()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
