"""Sources of a model repository (file://, http://, https://) behind one small interface.

A :class:`Source` can do two things: get the manifest (conditionally, by
ETag) and stream one file from a byte offset (resuming).  Everything above it
-- verification, retries, the store -- is source-agnostic, so a TUF-backed
source can replace these without touching the rest.
"""

from __future__ import annotations

import contextlib
import http.client
import io
import logging
import os
import random
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO, Callable, TypeVar
from urllib.parse import quote, unquote, urljoin, urlsplit

from ..errors import DownloadTimeoutError, HTTPStatusError, MisuseError, TransportError

MANIFEST_NAME = "manifest.json"
logger = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class FetchConfig:
    """Limits and timeouts for talking to a repository.

    Attributes:
        connect_timeout: seconds to open a connection.
        read_timeout: seconds one read may wait for data.
        deadline: seconds a whole download (all attempts) may take.
        max_attempts: attempts per download or manifest fetch.
        backoff_base: first retry delay in seconds (doubles, with jitter).
        backoff_max: longest retry delay in seconds.
        chunk_bytes: bytes per read while streaming.
        manifest_max_bytes: a larger manifest is refused.
        disk_margin_bytes: free space to leave on the store's disk.
        lock_timeout: seconds to wait for another process's download.
    """

    connect_timeout: float = 10.0
    read_timeout: float = 30.0
    deadline: float = 3600.0
    max_attempts: int = 5
    backoff_base: float = 0.25
    backoff_max: float = 30.0
    chunk_bytes: int = 1024 * 1024
    manifest_max_bytes: int = 16 * 1024 * 1024
    disk_margin_bytes: int = 64 * 1024 * 1024
    lock_timeout: float = 600.0


DEFAULT_CONFIG = FetchConfig()


@dataclass
class Stream:
    """An open download.

    Attributes:
        start: the byte offset the body starts at (0 when the source could
            not or would not resume).
        total: the file's full size if the source said so, else None.
        etag: validator for resuming later (None if the source has none).
        chunks: the body.
    """

    start: int
    total: int | None
    etag: str | None
    chunks: Iterator[bytes]
    close: Callable[[], None]


class RangeNotSatisfiable(Exception):
    """The source has no bytes at the requested offset (HTTP 416)."""


class Source:
    """Where a repository's files come from."""

    def manifest(self, etag: str | None, config: FetchConfig,
                 deadline: float | None = None) -> tuple[bytes | None, str | None]:
        """Return (manifest bytes, ETag), or (None, etag) if unchanged since ``etag``.

        Args:
            etag: the ETag of the manifest already held, or None to ask unconditionally.
            config: timeouts and limits.
            deadline: ``time.monotonic()`` value by which the whole answer must
                have arrived (default: ``config.deadline`` from now).

        Raises:
            TransportError: on any transport failure (``retryable`` says if a
                retry may help); DownloadTimeoutError when time ran out.
        """
        raise NotImplementedError

    def open(self, url: str, offset: int, etag: str | None, config: FetchConfig,
             deadline: float | None = None) -> Stream:
        """Stream file ``url`` (relative to the repository) from ``offset``.

        ``etag`` guards the resume: if the file changed, the stream restarts at 0.
        Every read of the stream ends by ``deadline`` (a ``time.monotonic()``
        value; default: ``config.deadline`` from now).

        Raises:
            RangeNotSatisfiable: if there is nothing at ``offset``.
            TransportError: on any transport failure (``retryable`` says if a
                retry may help); DownloadTimeoutError when time ran out.
        """
        raise NotImplementedError


def open_source(url: str, *, headers: dict[str, str] | None = None,
                sign: Callable[[str], str] | None = None) -> Source:
    """A source for a repository: ``file:///abs/path/``, ``http://...``, ``https://...`` or a folder.

    A ``file:`` URL must name an absolute path (``file:///srv/repo``, three
    slashes).  ``file://srv/repo`` would name the host ``srv``, so it is refused
    rather than read from ``/repo``; a relative folder is given as a plain
    path, without ``file:``, and is resolved against the current directory.

    Args:
        url: the repository (the folder holding ``manifest.json``).
        headers: extra HTTP headers (e.g. authorization).
        sign: maps each absolute file URL to the URL to request, e.g. to
            presign it for a private S3-compatible bucket.

    Raises:
        MisuseError: for another scheme, a ``file:`` URL that is not absolute,
            or a plain path that is not a folder.
    """
    parts = urlsplit(url)
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost") or not parts.path.startswith("/"):
            raise MisuseError(f"repository URL: expected file:///absolute/path (three slashes), got {url!r}; "
                              f"give a relative folder as a plain path, without file:")
        return FileSource(unquote(parts.path))
    if parts.scheme in ("http", "https"):
        return HTTPSource(url, headers=headers, sign=sign)
    if not parts.scheme and os.path.isdir(url):
        return FileSource(url)
    if not parts.scheme and os.path.exists(url):
        raise MisuseError(f"repository: expected a folder, got a file: {url!r}")
    raise MisuseError(f"repository URL: expected file://, http://, https:// or an existing folder, got {url!r}")


def _retryable(error: TransportError, flag: bool) -> TransportError:
    error.retryable = flag  # type: ignore[attr-defined]
    return error


def _until(deadline: float | None, config: FetchConfig) -> float:
    return deadline if deadline is not None else time.monotonic() + config.deadline


@contextlib.contextmanager
def _transport_errors(what: str, config: FetchConfig) -> Iterator[None]:
    """Turn the socket's and http.client's errors into retryable TransportErrors (the one place)."""
    try:
        yield
    except TransportError:
        raise
    except socket.timeout as e:
        raise _retryable(DownloadTimeoutError(f"{what}: expected data within {config.read_timeout:g} s, "
                                              f"got none"), True) from e
    except (OSError, http.client.HTTPException) as e:
        raise _retryable(TransportError(f"{what}: {type(e).__name__}: {e}"), True) from e


class FileSource(Source):
    """A repository folder on a local or mounted file system."""

    def __init__(self, root: str) -> None:
        self.root = os.path.abspath(root)

    def _open(self, url: str) -> tuple[BinaryIO, str, int]:
        """The open file, its validator and its size."""
        path = os.path.join(self.root, *urlsplit(url).path.split("/"))
        try:
            f = open(path, "rb")  # noqa: SIM115 (returned to the caller, who closes it)
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError) as e:
            raise _retryable(TransportError(f"{path}: expected a file, found none"), False) from e
        except OSError as e:
            raise _retryable(TransportError(f"{path}: {e}"), True) from e
        st = os.fstat(f.fileno())
        return f, f"{st.st_mtime_ns:x}-{st.st_size:x}", st.st_size

    def manifest(self, etag: str | None, config: FetchConfig,
                 deadline: float | None = None) -> tuple[bytes | None, str | None]:
        f, current, size = self._open(MANIFEST_NAME)
        with f, _transport_errors(f.name, config):
            if etag == current:
                return None, etag
            if size > config.manifest_max_bytes:
                raise _retryable(TransportError(f"{f.name}: expected at most {config.manifest_max_bytes} "
                                                f"bytes, got {size}"), False)
            return f.read(), current

    def open(self, url: str, offset: int, etag: str | None, config: FetchConfig,
             deadline: float | None = None) -> Stream:
        f, current, size = self._open(url)
        if etag != current:
            offset = 0
        if offset > size:
            f.close()
            raise RangeNotSatisfiable()
        f.seek(offset)
        return Stream(offset, size, current, iter(lambda: f.read(config.chunk_bytes), b""), f.close)


class _DeadlineReader(io.RawIOBase):
    """A socket's input where every read ends by the read timeout and by the deadline.

    http.client reads the status line, the headers and the body through this,
    so a server trickling any of them cannot hold a request past the deadline.
    """

    def __init__(self, sock: socket.socket, what: str, config: FetchConfig, deadline: float) -> None:
        super().__init__()
        self._sock = sock
        self._raw = sock.makefile("rb", buffering=0)  # keeps the socket open while this is
        self._what = what
        self._config = config
        self._deadline = deadline

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int | None:
        left = self._deadline - time.monotonic()
        if left > 0:
            self._sock.settimeout(min(self._config.read_timeout, left))
            try:
                return self._raw.readinto(buffer)
            except socket.timeout:
                if time.monotonic() < self._deadline:
                    raise  # the read timeout: retryable
        raise _retryable(DownloadTimeoutError(f"{self._what}: expected the answer within the "
                                              f"{self._config.deadline:g} s deadline, it was still "
                                              f"arriving"), False)

    def close(self) -> None:
        self._raw.close()
        super().close()


class _DeadlineSocket:
    """The connection's socket, handing http.client a :class:`_DeadlineReader` to read from."""

    def __init__(self, sock: socket.socket, what: str, config: FetchConfig, deadline: float) -> None:
        self._sock = sock
        self._reader = (what, config, deadline)

    def makefile(self, mode: str) -> io.BufferedReader:
        return io.BufferedReader(_DeadlineReader(self._sock, *self._reader))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


class HTTPSource(Source):
    """A repository served over HTTP(S): any static server, CDN or bucket."""

    def __init__(self, base_url: str, *, headers: dict[str, str] | None = None,
                 sign: Callable[[str], str] | None = None) -> None:
        self.base_url = base_url if base_url.endswith("/") else base_url + "/"
        self.headers = dict(headers or {})
        self.sign = sign

    def _request(self, url: str, headers: dict[str, str], config: FetchConfig,
                 deadline: float) -> http.client.HTTPResponse:
        absolute = urljoin(self.base_url, quote(url, safe="/?&=%:"))
        if self.sign is not None:
            absolute = self.sign(absolute)
        parts = urlsplit(absolute)
        what = f"GET {absolute}"
        cls = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
        left = max(0.001, deadline - time.monotonic())
        conn = cls(parts.hostname or "", parts.port, timeout=min(config.connect_timeout, left))
        try:
            with _transport_errors(what, config):
                conn.connect()
                conn.sock = _DeadlineSocket(conn.sock, what, config, deadline)
                target = parts.path + (f"?{parts.query}" if parts.query else "")
                conn.request("GET", target, headers={**self.headers, **headers})
                response = conn.getresponse()
        except TransportError:
            conn.close()
            raise
        response.conn_to_close = conn  # type: ignore[attr-defined]
        if response.status >= 400:
            conn.close()
            error = HTTPStatusError(f"{what}: expected 200/206, got {response.status} {response.reason}",
                                    response.status)
            error.retry_after = _retry_after(response.getheader("Retry-After"))  # type: ignore[attr-defined]
            raise _retryable(error, response.status >= 500 or response.status in (408, 429))
        return response

    def manifest(self, etag: str | None, config: FetchConfig,
                 deadline: float | None = None) -> tuple[bytes | None, str | None]:
        response = self._request(MANIFEST_NAME, {"If-None-Match": etag} if etag else {}, config,
                                 _until(deadline, config))
        try:
            if response.status == 304:
                return None, etag
            with _transport_errors(f"GET {MANIFEST_NAME}", config):
                data = response.read(config.manifest_max_bytes + 1)
            if len(data) > config.manifest_max_bytes:
                raise _retryable(TransportError(f"{MANIFEST_NAME}: expected at most "
                                                f"{config.manifest_max_bytes} bytes, got more"), False)
            return data, response.getheader("ETag")
        finally:
            response.conn_to_close.close()  # type: ignore[attr-defined]

    def open(self, url: str, offset: int, etag: str | None, config: FetchConfig,
             deadline: float | None = None) -> Stream:
        until = _until(deadline, config)
        # At most two requests: the range asked for, then (if the server
        # answered another range) the whole file.
        for start_wanted in dict.fromkeys((offset, 0)):
            headers = {"Accept-Encoding": "identity"}
            if start_wanted:
                headers["Range"] = f"bytes={start_wanted}-"
                if etag:
                    headers["If-Range"] = etag
            try:
                response = self._request(url, headers, config, until)
            except HTTPStatusError as e:
                if e.status == 416:
                    raise RangeNotSatisfiable() from e
                raise
            start, total = _body_range(response, url)
            if start == start_wanted or response.status == 200:
                return self._stream(url, response, start, total, config)
            response.conn_to_close.close()  # type: ignore[attr-defined]
        raise _retryable(TransportError(f"GET {url}: expected the body from byte 0, got Content-Range "
                                        f"{response.getheader('Content-Range')!r}"), False)

    @staticmethod
    def _stream(url: str, response: http.client.HTTPResponse, start: int, total: int | None,
                config: FetchConfig) -> Stream:
        def chunks() -> Iterator[bytes]:
            while True:
                # read1: whatever has arrived (up to chunk_bytes); each read
                # also ends by the deadline (see _DeadlineReader).
                with _transport_errors(f"GET {url}", config):
                    chunk = response.read1(config.chunk_bytes)
                if not chunk:
                    if response.length:  # the server promised more than it sent
                        raise _retryable(TransportError(f"GET {url}: connection closed with "
                                                        f"{response.length} bytes missing"), True)
                    return
                yield chunk

        return Stream(start, total, response.getheader("ETag"), chunks(),
                      response.conn_to_close.close)  # type: ignore[attr-defined]


def _body_range(response: http.client.HTTPResponse, url: str) -> tuple[int, int | None]:
    """Where the body starts and the file's total size, from a 200 or 206 answer.

    Raises:
        TransportError: for another status or a malformed Content-Range.
    """
    if response.status == 200:
        length = response.getheader("Content-Length")
        return 0, int(length) if length and length.isdigit() else None
    if response.status != 206:
        response.conn_to_close.close()  # type: ignore[attr-defined]
        raise _retryable(HTTPStatusError(f"GET {url}: expected 200 or 206, got {response.status} "
                                         f"{response.reason}", response.status), False)
    value = response.getheader("Content-Range")
    try:
        _unit, _, rest = (value or "").partition(" ")
        span, _, total = rest.partition("/")
        return int(span.split("-")[0]), (None if total == "*" else int(total))
    except ValueError:
        response.conn_to_close.close()  # type: ignore[attr-defined]
        raise _retryable(TransportError(f"GET {url}: expected a Content-Range, got {value!r}"),
                         False) from None


def _retry_after(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:
        return None


def with_retries(action: Callable[[], T], config: FetchConfig, deadline: float,
                 sleep: Callable[[float], None] = time.sleep) -> T:
    """Run ``action``, retrying retryable transport errors with exponential backoff and jitter.

    Raises:
        TransportError: the last error once attempts or the deadline run out,
            or at once for an error that is not retryable.
    """
    for attempt in range(1, config.max_attempts + 1):
        try:
            return action()
        except TransportError as e:
            if not getattr(e, "retryable", False) or attempt == config.max_attempts:
                raise
            delay: float | None = getattr(e, "retry_after", None)
            if delay is None:
                delay = min(config.backoff_max, config.backoff_base * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0)
            if time.monotonic() + delay > deadline:
                raise
            logger.warning("attempt %d of %d failed (%s); retrying in %.2f s", attempt, config.max_attempts,
                           e, delay)
            sleep(delay)
    raise AssertionError("unreachable")
