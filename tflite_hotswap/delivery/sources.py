"""Sources of a model repository (file://, http://, https://) behind one small interface.

A :class:`Source` can do two things: get the manifest (conditionally, by
ETag) and stream one file from a byte offset (resuming).  Everything above it
-- verification, retries, the store -- is source-agnostic, so a TUF-backed
source can replace these without touching the rest.
"""

from __future__ import annotations

import http.client
import os
import random
import socket
import time
from dataclasses import dataclass
from typing import Callable, Iterator, Optional
from urllib.parse import quote, urljoin, urlsplit

from ..errors import DownloadTimeoutError, HTTPStatusError, MisuseError, TransportError

MANIFEST_NAME = "manifest.json"


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
    total: Optional[int]
    etag: Optional[str]
    chunks: Iterator[bytes]
    close: Callable[[], None]


class RangeNotSatisfiable(Exception):
    """The source has no bytes at the requested offset (HTTP 416)."""


class Source:
    """Where a repository's files come from."""

    def manifest(self, etag: Optional[str], config: FetchConfig) -> tuple[Optional[bytes], Optional[str]]:
        """Return (manifest bytes, ETag), or (None, etag) if unchanged since ``etag``."""
        raise NotImplementedError

    def open(self, url: str, offset: int, etag: Optional[str], config: FetchConfig) -> Stream:
        """Stream file ``url`` (relative to the repository) from ``offset``.

        ``etag`` guards the resume: if the file changed, the stream restarts at 0.

        Raises:
            RangeNotSatisfiable: if there is nothing at ``offset``.
            TransportError: on any transport failure (``retryable`` says if a
                retry may help).
        """
        raise NotImplementedError


def open_source(url: str, *, headers: Optional[dict] = None,
                sign: Optional[Callable[[str], str]] = None) -> Source:
    """A source for a repository URL: ``file:///path/``, ``http://...`` or ``https://...``.

    Args:
        url: the repository (the folder holding ``manifest.json``).
        headers: extra HTTP headers (e.g. authorization).
        sign: maps each absolute file URL to the URL to request, e.g. to
            presign it for a private S3-compatible bucket.

    Raises:
        MisuseError: for another scheme.
    """
    scheme = urlsplit(url).scheme
    if scheme == "file":
        return FileSource(urlsplit(url).path)
    if scheme in ("http", "https"):
        return HTTPSource(url, headers=headers, sign=sign)
    if not scheme and os.path.isdir(url):
        return FileSource(url)
    raise MisuseError(f"repository URL: expected file://, http:// or https://, got {url!r}")


def _retryable(error: TransportError, flag: bool) -> TransportError:
    error.retryable = flag  # type: ignore[attr-defined]
    return error


class FileSource(Source):
    """A repository folder on a local or mounted file system."""

    def __init__(self, root: str) -> None:
        self.root = os.path.abspath(root)

    def _path(self, url: str) -> str:
        return os.path.join(self.root, *urlsplit(url).path.split("/"))

    def manifest(self, etag, config):
        path = self._path(MANIFEST_NAME)
        try:
            st = os.stat(path)
            current = f"{st.st_mtime_ns:x}-{st.st_size:x}"
            if etag == current:
                return None, etag
            if st.st_size > config.manifest_max_bytes:
                raise _retryable(TransportError(f"{path}: expected at most {config.manifest_max_bytes} "
                                                f"bytes, got {st.st_size}"), False)
            with open(path, "rb") as f:
                return f.read(), current
        except FileNotFoundError as e:
            raise _retryable(TransportError(f"{path}: expected a manifest, not found"), False) from e
        except OSError as e:
            raise _retryable(TransportError(f"{path}: {e}"), True) from e

    def open(self, url, offset, etag, config):
        path = self._path(url)
        try:
            f = open(path, "rb")
        except FileNotFoundError as e:
            raise _retryable(TransportError(f"{path}: expected a file, not found"), False) from e
        except OSError as e:
            raise _retryable(TransportError(f"{path}: {e}"), True) from e
        st = os.fstat(f.fileno())
        current = f"{st.st_mtime_ns:x}-{st.st_size:x}"
        if etag != current:
            offset = 0
        if offset > st.st_size:
            f.close()
            raise RangeNotSatisfiable()
        f.seek(offset)
        return Stream(offset, st.st_size, current, iter(lambda: f.read(config.chunk_bytes), b""), f.close)


class HTTPSource(Source):
    """A repository served over HTTP(S): any static server, CDN or bucket."""

    def __init__(self, base_url: str, *, headers: Optional[dict] = None,
                 sign: Optional[Callable[[str], str]] = None) -> None:
        self.base_url = base_url if base_url.endswith("/") else base_url + "/"
        self.headers = dict(headers or {})
        self.sign = sign

    def _request(self, url: str, headers: dict, config: FetchConfig) -> http.client.HTTPResponse:
        absolute = urljoin(self.base_url, quote(url, safe="/?&=%:"))
        if self.sign is not None:
            absolute = self.sign(absolute)
        parts = urlsplit(absolute)
        cls = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
        conn = cls(parts.hostname, parts.port, timeout=config.connect_timeout)
        try:
            conn.connect()
            conn.sock.settimeout(config.read_timeout)
            target = parts.path + (f"?{parts.query}" if parts.query else "")
            conn.request("GET", target, headers={**self.headers, **headers})
            response = conn.getresponse()
        except socket.timeout as e:
            conn.close()
            raise _retryable(DownloadTimeoutError(f"GET {absolute}: timed out ({e})"), True) from e
        except (OSError, http.client.HTTPException) as e:
            conn.close()
            raise _retryable(TransportError(f"GET {absolute}: {type(e).__name__}: {e}"), True) from e
        response.conn_to_close = conn  # type: ignore[attr-defined]
        if response.status >= 400:
            body = response.read(200)
            conn.close()
            error = HTTPStatusError(f"GET {absolute}: expected 200/206, got {response.status} "
                                    f"{response.reason} {body[:80]!r}", response.status)
            error.retry_after = _retry_after(response.getheader("Retry-After"))  # type: ignore[attr-defined]
            raise _retryable(error, response.status >= 500 or response.status in (408, 429))
        return response

    def manifest(self, etag, config):
        response = self._request(MANIFEST_NAME, {"If-None-Match": etag} if etag else {}, config)
        try:
            if response.status == 304:
                return None, etag
            data = _read_all(response, config.manifest_max_bytes)
            return data, response.getheader("ETag")
        finally:
            response.conn_to_close.close()  # type: ignore[attr-defined]

    def open(self, url, offset, etag, config):
        headers = {"Accept-Encoding": "identity"}
        if offset:
            headers["Range"] = f"bytes={offset}-"
            if etag:
                headers["If-Range"] = etag
        try:
            response = self._request(url, headers, config)
        except HTTPStatusError as e:
            if e.status == 416:
                raise RangeNotSatisfiable() from e
            raise
        start, total = 0, None
        if response.status == 206:
            start, total = _content_range(response.getheader("Content-Range"), url)
            if start != offset:  # not what was asked: restart cleanly
                response.conn_to_close.close()  # type: ignore[attr-defined]
                return self.open(url, 0, None, config)
        elif response.status == 200:
            length = response.getheader("Content-Length")
            total = int(length) if length and length.isdigit() else None
        else:
            response.conn_to_close.close()  # type: ignore[attr-defined]
            raise _retryable(HTTPStatusError(f"GET {url}: expected 200 or 206, got {response.status}",
                                             response.status), False)

        def chunks() -> Iterator[bytes]:
            while True:
                try:
                    # read1: whatever has arrived (up to chunk_bytes), so a slow
                    # sender cannot hold a read past the deadline check.
                    chunk = response.read1(config.chunk_bytes)
                except socket.timeout as e:
                    raise _retryable(DownloadTimeoutError(f"GET {url}: no data for "
                                                          f"{config.read_timeout:g} s"), True) from e
                except (OSError, http.client.HTTPException) as e:
                    raise _retryable(TransportError(f"GET {url}: {type(e).__name__}: {e}"), True) from e
                if not chunk:
                    if response.length:  # the server promised more than it sent
                        raise _retryable(TransportError(f"GET {url}: connection closed with "
                                                        f"{response.length} bytes missing"), True)
                    return
                yield chunk

        return Stream(start, total, response.getheader("ETag"), chunks(),
                      response.conn_to_close.close)  # type: ignore[attr-defined]


def _read_all(response: http.client.HTTPResponse, limit: int) -> bytes:
    try:
        data = response.read(limit + 1)
    except socket.timeout as e:
        raise _retryable(DownloadTimeoutError(f"manifest: read timed out ({e})"), True) from e
    except (OSError, http.client.HTTPException) as e:
        raise _retryable(TransportError(f"manifest: {type(e).__name__}: {e}"), True) from e
    if len(data) > limit:
        raise _retryable(TransportError(f"manifest: expected at most {limit} bytes, got more"), False)
    return data


def _content_range(value: Optional[str], url: str) -> tuple[int, Optional[int]]:
    try:
        unit, _, rest = (value or "").partition(" ")
        span, _, total = rest.partition("/")
        return int(span.split("-")[0]), (None if total == "*" else int(total))
    except ValueError:
        raise _retryable(TransportError(f"GET {url}: expected a Content-Range, got {value!r}"), False) from None


def _retry_after(value: Optional[str]) -> Optional[float]:
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:
        return None


def with_retries(action: Callable[[], object], config: FetchConfig, deadline: float,
                 sleep: Callable[[float], None] = time.sleep) -> object:
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
            delay = getattr(e, "retry_after", None)
            if delay is None:
                delay = min(config.backoff_max, config.backoff_base * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0)
            if time.monotonic() + delay > deadline:
                raise
            sleep(delay)
    raise AssertionError("unreachable")
