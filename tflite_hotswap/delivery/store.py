"""The on-device model store: content-addressed, crash-safe, shared between processes.

Layout of the store folder::

    objects/<sha256>          verified model files, named by their hash
    partial/<sha256>.part     a download in progress (resumable)
    partial/<sha256>.json     what the partial file is: URL and ETag
    locks/<sha256>.lock       held by the one process downloading that file
    state.json                current / last-known-good / bad versions, highest serial
    manifest.json             the last manifest accepted
    .lock                     serialises read-modify-write of state.json

Every file that matters is replaced atomically (temporary file, fsync, rename,
fsync of the folder), so a power cut at any moment leaves either the old or the
new version.  Opening the store finishes what a crash interrupted: stray
temporary files are removed, partial downloads without a description are
discarded, and objects whose hash does not match their name are deleted.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Any, Callable

from ..errors import (
    DeliveryError,
    DiskFullError,
    DownloadTimeoutError,
    HashMismatchError,
    LockTimeoutError,
    SizeExceededError,
    StorageError,
    TransportError,
)
from .manifest import MAX_INT, SHA256, Manifest, Version, parse_manifest
from .sources import (
    DEFAULT_CONFIG,
    FetchConfig,
    RangeNotSatisfiable,
    Source,
    with_retries,
)

Progress = Callable[[int, int], None]
ModelRecord = dict[str, Any]
_STATE_FORMAT = 1
logger = logging.getLogger(__name__)


@contextlib.contextmanager
def storage_errors(what: str) -> Iterator[None]:
    """Turn file system errors into StorageError (the one place); delivery errors pass through."""
    try:
        yield
    except DeliveryError:
        raise
    except OSError as e:
        raise StorageError(f"{what}: {type(e).__name__}: {e}") from e


@contextlib.contextmanager
def file_lock(path: str, timeout: float | None) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (created if missing) for the ``with`` block.

    Args:
        path: the lock file.
        timeout: seconds to wait for another holder; None waits as long as it takes.

    Raises:
        LockTimeoutError: if another process held it longer than ``timeout``.
        StorageError: if the lock file cannot be opened.
    """
    with contextlib.ExitStack() as stack:
        with storage_errors(f"{path}: expected a lock file"):
            f = stack.enter_context(open(path, "a+b"))
        if timeout is None:
            fcntl.flock(f, fcntl.LOCK_EX)
        deadline = time.monotonic() + (timeout or 0.0)
        while timeout is not None:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise LockTimeoutError(f"{path}: another process held the lock for more "
                                           f"than {timeout:g} s") from None
                time.sleep(0.01)
        yield


def atomic_write(path: str, data: bytes) -> None:
    """Replace ``path`` with ``data`` so that a crash leaves the old or the new file, whole.

    Raises:
        StorageError: if writing fails (the old file is untouched).
    """
    folder = os.path.dirname(os.path.abspath(path))
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(folder)
    except OSError as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise StorageError(f"{path}: could not write ({e})") from e


def fsync_dir(folder: str) -> None:
    """Make a rename or unlink in ``folder`` durable."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sha256_file(path: str) -> str:
    """The sha256 of a file's content, as hex."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@dataclass(frozen=True)
class ModelState:
    """Where one model stands on this device."""

    current: str | None
    last_known_good: str | None
    bad: dict[str, str]
    versions: dict[str, dict[str, Any]]


class Store:
    """An on-device folder of verified model files.

    Args:
        root: the folder (created if missing).
        keep: besides the current and last-known-good versions, how many of
            the newest versions to keep when pruning.
        config: timeouts and limits for downloads.

    Raises:
        StorageError: if the folder cannot be created or read.
    """

    def __init__(self, root: str, *, keep: int = 2, config: FetchConfig = DEFAULT_CONFIG) -> None:
        self.root = os.path.abspath(root)
        self.keep = keep
        self.config = config
        self._manifest: tuple[str | None, Manifest] | None = None  # (ETag, parsed)
        with storage_errors(f"{self.root}: could not open the store"):
            for sub in ("objects", "partial", "locks"):
                os.makedirs(os.path.join(self.root, sub), exist_ok=True)
            with self._state_lock():
                self._recover()

    # -------------------------------------------------------------- paths

    def object_path(self, sha256: str) -> str:
        """Where the verified file with this sha256 lives (whether or not it is stored)."""
        return os.path.join(self.root, "objects", sha256)

    def _partial(self, sha256: str) -> tuple[str, str]:
        base = os.path.join(self.root, "partial", sha256)
        return base + ".part", base + ".json"

    # ------------------------------------------------------------ recovery

    def _recover(self) -> None:
        """Finish or undo whatever a crash interrupted; remove what does not belong."""
        for folder in (self.root, os.path.join(self.root, "objects"), os.path.join(self.root, "partial")):
            for name in os.listdir(folder):
                if name.endswith(".tmp") and not _writer_alive(name):
                    _remove(os.path.join(folder, name), "a temporary file left by a crash")
        for sub in ("objects", "partial", "locks"):  # these hold regular files only
            for entry in os.scandir(os.path.join(self.root, sub)):
                if not entry.is_file(follow_symlinks=False):
                    _remove(entry.path, "expected a regular file")
        partial = os.path.join(self.root, "partial")
        for name in os.listdir(partial):
            sha256, _, ext = name.partition(".")
            if ext not in ("part", "json"):
                continue  # another process's temporary file (handled above)
            other = os.path.join(partial, f"{sha256}.{'json' if ext == 'part' else 'part'}")
            if not os.path.exists(other) and not self._locked_by_other(sha256):
                _remove(os.path.join(partial, name), "a partial download without its description")
        for name in os.listdir(os.path.join(self.root, "objects")):
            if not SHA256.fullmatch(name) or sha256_file(self.object_path(name)) != name:
                _remove(self.object_path(name), "content does not match the name")

    def _locked_by_other(self, sha256: str) -> bool:
        path = os.path.join(self.root, "locks", sha256 + ".lock")
        if not os.path.exists(path):
            return False
        with open(path, "a+b") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            fcntl.flock(f, fcntl.LOCK_UN)
        return False

    # --------------------------------------------------------------- state

    def _state_lock(self) -> contextlib.AbstractContextManager[None]:
        """Serialises read-modify-write of the state record (and entry into ``objects/``)."""
        return file_lock(os.path.join(self.root, ".lock"), self.config.lock_timeout)

    def _read_state(self) -> dict[str, Any]:
        """The state record, checked.

        Raises:
            StorageError: if it cannot be read or is not a state record.
        """
        path = os.path.join(self.root, "state.json")
        try:
            with open(path, "rb") as f:
                state = json.load(f)
        except FileNotFoundError:
            return {"format": _STATE_FORMAT, "max_serial": None, "manifest_etag": None, "models": {}}
        except (OSError, ValueError, RecursionError) as e:
            raise StorageError(f"{path}: expected the store's state record, could not read it ({e})") from e
        if not isinstance(state, dict) or state.get("format") != _STATE_FORMAT:
            found = state.get("format") if isinstance(state, dict) else type(state).__name__
            raise StorageError(f"{path}: expected state format {_STATE_FORMAT}, got {found!r}")
        problem = _state_problem(state)
        if problem:
            raise StorageError(f"{path}: expected the store's state record, {problem} (damaged)")
        return state

    def _write_state(self, state: dict[str, Any]) -> None:
        atomic_write(os.path.join(self.root, "state.json"), json.dumps(state, indent=1, sort_keys=True).encode())

    def state(self, model: str) -> ModelState:
        """The recorded state of ``model`` (all None/empty if never seen).

        Raises:
            StorageError: if the state record is unreadable or damaged.
        """
        m = self._read_state()["models"].get(model, {})
        return ModelState(m.get("current"), m.get("last_known_good"), dict(m.get("bad", {})),
                          dict(m.get("versions", {})))

    def _update_model(self, model: str, change: Callable[[ModelRecord], None]) -> None:
        with self._state_lock():
            self._change_model(model, change)

    def _change_model(self, model: str, change: Callable[[ModelRecord], None]) -> None:
        """Read, change and write one model's record; the caller holds the state lock."""
        state = self._read_state()
        m = state["models"].setdefault(model, {"current": None, "last_known_good": None,
                                               "bad": {}, "versions": {}})
        change(m)
        self._write_state(state)

    def record(self, model: str, version: Version) -> None:
        """Remember that ``version`` of ``model`` is stored (its sha256 and when).

        Raises:
            StorageError: if its file is not stored here, or the state record
                cannot be read or written.
        """
        if not self._record_if_stored(model, version):
            raise StorageError(f"{model} {version.id}: expected its file {version.sha256} in the store, "
                               f"found none")

    def mark_current(self, model: str, version: str, *, good: bool = True) -> None:
        """Record ``version`` as serving; ``good`` also makes it the last-known-good.

        Raises:
            StorageError: if the version was never stored here (or was
                pruned), or the state record cannot be read or written.
        """
        def change(m: ModelRecord) -> None:
            if version not in m["versions"]:
                raise StorageError(f"{model} {version}: expected a stored version, got an unknown one "
                                   f"(stored: {sorted(m['versions'])})")
            m["current"] = version
            if good:
                m["last_known_good"] = version
        self._update_model(model, change)

    def mark_bad(self, model: str, version: str, reason: str) -> None:
        """Record ``version`` as bad (with why); it is never chosen again by ``usable``.

        Raises:
            StorageError: if the state record cannot be read or written.
        """
        def change(m: ModelRecord) -> None:
            m["bad"][version] = reason
            if m["current"] == version:
                m["current"] = m["last_known_good"] if m["last_known_good"] != version else None
        self._update_model(model, change)

    def path_of(self, model: str, version: str) -> str:
        """The verified file of a stored version.

        Raises:
            StorageError: if it is not stored (or was pruned).
        """
        entry = self.state(model).versions.get(version)
        path = self.object_path(entry["sha256"]) if entry else None
        if path is None or not os.path.exists(path):
            raise StorageError(f"{model} {version}: expected a stored file, found none")
        return path

    # ------------------------------------------------------------ manifest

    def refresh_manifest(self, source: Source) -> tuple[Manifest, bool]:
        """Fetch the manifest (conditional GET) and accept it if its serial did not go back.

        Returns:
            (manifest, changed): ``changed`` is False when the source answered
            "not modified" and the stored manifest was reused.

        Raises:
            SerialRollbackError: if the serial is lower than one accepted before.
            ManifestError: if the manifest is malformed.
            TransportError: if the source cannot be reached, or answers "not
                modified" to an unconditional request.
            DownloadTimeoutError: if the answer is not complete within ``config.deadline``.
            StorageError: if the store's state or stored manifest cannot be read.
        """
        state = self._read_state()
        stored = os.path.join(self.root, "manifest.json")
        etag = state["manifest_etag"] if os.path.exists(stored) else None
        deadline = time.monotonic() + self.config.deadline
        data, new_etag = with_retries(lambda: source.manifest(etag, self.config, deadline), self.config, deadline)
        if data is None:
            if etag is None:
                raise TransportError("manifest: expected the manifest, the source answered 'not modified' "
                                     "to a request that named no ETag")
            if self._manifest is not None and self._manifest[0] == etag:
                logger.debug("manifest not modified (ETag %s)", etag)
                return self._manifest[1], False  # not modified: nothing re-parsed
            with storage_errors(f"{stored}: expected the stored manifest"), open(stored, "rb") as f:
                manifest = parse_manifest(f.read())
            self._manifest = (etag, manifest)
            return manifest, False
        with self._state_lock():
            state = self._read_state()
            manifest = parse_manifest(data, min_serial=state["max_serial"])
            atomic_write(stored, data)
            state["max_serial"] = manifest.serial
            state["manifest_etag"] = new_etag
            self._write_state(state)
        logger.info("manifest serial %d accepted (%d model(s), ETag %s)", manifest.serial,
                    len(manifest.models), new_etag)
        self._manifest = (new_etag, manifest)
        return manifest, True

    # ------------------------------------------------------------ download

    def fetch(self, source: Source, model: str, version: Version,
              progress: Progress | None = None) -> str:
        """Make sure ``version`` is stored, downloading it if needed; return its path.

        Exactly one process downloads a given file; others wait for it and
        reuse it.  Downloads resume after interruptions (HTTP Range guarded
        by If-Range), hash while streaming, and stop at the first byte over
        the announced size.  The file enters ``objects/`` and the state
        record in one critical section under the state lock, so
        :meth:`prune` in another process never sees it unrecorded.

        Raises:
            DiskFullError: if free space is below the size plus the margin.
            HashMismatchError, SizeExceededError: the bytes are not what the
                manifest promised (the partial file is discarded).
            TransportError, HTTPStatusError, DownloadTimeoutError: the source
                failed after retries (the partial file is kept for resuming).
            LockTimeoutError: another process held the download too long.
            StorageError: if the store cannot be read or written.
        """
        if not self._record_if_stored(model, version):
            lock = os.path.join(self.root, "locks", version.sha256 + ".lock")
            with file_lock(lock, self.config.lock_timeout):
                if not self._record_if_stored(model, version):  # nobody finished it meanwhile
                    with storage_errors(f"{version.url}: download into {self.root}"):
                        self._download(source, model, version, progress)
        return self.object_path(version.sha256)

    def _record_if_stored(self, model: str, version: Version) -> bool:
        """Record ``version`` if its file is stored; whether it is."""
        with self._state_lock():
            if not os.path.isfile(self.object_path(version.sha256)):
                return False
            self._change_model(model, _recorder(version))
        return True

    def _download(self, source: Source, model: str, version: Version, progress: Progress | None) -> None:
        part, meta = self._partial(version.sha256)
        description: dict[str, Any] = {"url": version.url, "etag": None, "size": version.size}
        have = 0
        if os.path.exists(part) and os.path.exists(meta):
            with contextlib.suppress(OSError, ValueError, AttributeError, RecursionError):
                with open(meta) as f:
                    old = json.load(f)
                if old.get("url") == version.url and old.get("size") == version.size:
                    description["etag"] = old.get("etag")
                    have = os.path.getsize(part)
        if have > version.size:
            have = 0
        free = shutil.disk_usage(self.root).free
        needed = version.size - have + self.config.disk_margin_bytes
        if free < needed:
            raise DiskFullError(f"{self.root}: expected {needed} bytes free for {version.url} "
                                f"(size {version.size} + margin {self.config.disk_margin_bytes}), "
                                f"found {free}")
        if have:
            logger.info("resuming %s at byte %d of %d", version.url, have, version.size)
        else:
            logger.info("downloading %s (%d bytes)", version.url, version.size)
        atomic_write(meta, json.dumps(description).encode())
        hasher = hashlib.sha256()
        with open(part, "a+b") as f:
            f.truncate(have)
            f.seek(0)
            for block in iter(lambda: f.read(1 << 20), b""):  # resuming: hash what is already here
                hasher.update(block)
            f.seek(have)
            writer = _Writer(f, hasher, version, progress, have)
            deadline = time.monotonic() + self.config.deadline
            try:
                with_retries(lambda: self._attempt(source, version, writer, description, meta, deadline),
                             self.config, deadline)
            finally:
                writer.pool.shutdown()
            f.flush()
            os.fsync(f.fileno())
        if writer.hasher.hexdigest() != version.sha256:
            self._discard(version.sha256)
            raise HashMismatchError(f"{version.url}: expected sha256 {version.sha256}, got "
                                    f"{writer.hasher.hexdigest()}")
        with self._state_lock():  # into objects/ and into the record at once (see prune)
            os.replace(part, self.object_path(version.sha256))
            fsync_dir(os.path.join(self.root, "objects"))
            self._change_model(model, _recorder(version))
        with contextlib.suppress(OSError):
            os.unlink(meta)
        logger.info("downloaded %s: %d bytes, sha256 verified", version.url, version.size)

    def _attempt(self, source: Source, version: Version, writer: _Writer, description: dict[str, Any],
                 meta: str, deadline: float) -> None:
        if writer.done == version.size:
            return
        try:
            stream = source.open(version.url, writer.done, description["etag"], self.config, deadline)
        except RangeNotSatisfiable:
            logger.info("%s: nothing at byte %d (the file changed); starting over", version.url, writer.done)
            writer.restart()
            stream = source.open(version.url, 0, None, self.config, deadline)
        try:
            if stream.start != writer.done:
                logger.info("%s: the source sent the file from byte %d, not %d; starting over",
                            version.url, stream.start, writer.done)
                writer.restart()
            if stream.etag != description["etag"]:
                description["etag"] = stream.etag
                atomic_write(meta, json.dumps(description).encode())
            if stream.total is not None and stream.total > version.size:
                self._discard(version.sha256)
                raise SizeExceededError(f"{version.url}: expected {version.size} bytes, the source "
                                        f"announces {stream.total}")
            for chunk in stream.chunks:
                writer.write(chunk, self._discard)
                if time.monotonic() > deadline:
                    raise DownloadTimeoutError(f"{version.url}: not finished within the "
                                               f"{self.config.deadline:g} s deadline "
                                               f"({writer.done} of {version.size} bytes)")
        finally:
            stream.close()
        if writer.done < version.size:
            error = TransportError(f"{version.url}: the source ended after {writer.done} of "
                                   f"{version.size} bytes")
            error.retryable = True  # type: ignore[attr-defined]
            raise error

    def _discard(self, sha256: str) -> None:
        for path in self._partial(sha256):
            with contextlib.suppress(OSError):
                os.unlink(path)

    # ------------------------------------------------------------ retention

    def prune(self) -> list[str]:
        """Delete stored files except current, last-known-good and the ``keep`` newest per model.

        The state record is written before any file is deleted, so a crash
        leaves at most unrecorded files, which the next prune deletes.

        Returns:
            The sha256 of every file deleted.

        Raises:
            StorageError: if the store cannot be read or written.
        """
        with self._state_lock(), storage_errors(f"{self.root}: prune"):
            state = self._read_state()
            wanted, forgotten = set(), 0
            for m in state["models"].values():
                newest = sorted(m["versions"].items(), key=lambda kv: kv[1]["stored_at"], reverse=True)
                keepers = {m["current"], m["last_known_good"]} | {v for v, _ in newest[:self.keep]}
                for version in list(m["versions"]):
                    if version in keepers:
                        wanted.add(m["versions"][version]["sha256"])
                    else:
                        del m["versions"][version]
                        forgotten += 1
            if forgotten:
                self._write_state(state)
            removed = []
            for name in os.listdir(os.path.join(self.root, "objects")):
                if name not in wanted:
                    os.unlink(self.object_path(name))
                    removed.append(name)
                    logger.info("pruned %s", name)
        return removed


def _recorder(version: Version) -> Callable[[ModelRecord], None]:
    """The change to a model's record that notes ``version`` as stored now."""
    def change(m: ModelRecord) -> None:
        m["versions"][version.id] = {"sha256": version.sha256, "stored_at": time.time()}
    return change


def _remove(path: str, why: str) -> None:
    """Delete a file (or a folder that has no business in the store), logging why."""
    logger.warning("store recovery: deleting %s (%s)", path, why)
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    else:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def _state_problem(state: dict[str, Any]) -> str | None:
    """What is wrong with a state record's structure, or None."""
    def optional(value: Any, kind: type) -> bool:
        return value is None or isinstance(value, kind)

    serial = state.get("max_serial")
    if not (serial is None or (type(serial) is int and 0 <= serial <= MAX_INT)):
        return f"max_serial: expected an integer from 0 to {MAX_INT} or null, got {serial!r:.40}"
    if not optional(state.get("manifest_etag"), str) or not isinstance(state.get("models"), dict):
        return "expected 'manifest_etag' (string or null) and 'models' (object)"
    for name, m in state["models"].items():
        if not (isinstance(m, dict) and optional(m.get("current"), str) and optional(m.get("last_known_good"), str)
                and isinstance(m.get("bad"), dict) and isinstance(m.get("versions"), dict)):
            return f"models[{name!r}]: expected current, last_known_good, bad and versions"
        for vid, entry in m["versions"].items():
            if not (isinstance(entry, dict) and isinstance(entry.get("sha256"), str)
                    and SHA256.fullmatch(entry["sha256"]) and isinstance(entry.get("stored_at"), (int, float))):
                return f"models[{name!r}].versions[{vid!r}]: expected sha256 and stored_at"
    return None


def _writer_alive(tmp_name: str) -> bool:
    """Whether the process that is writing ``<name>.<pid>.tmp`` still runs."""
    try:
        pid = int(tmp_name.rsplit(".", 2)[-2])
        os.kill(pid, 0)
    except (ValueError, IndexError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return pid != os.getpid()


class _Writer:
    """Appends verified-as-it-goes bytes to the partial file.

    Each chunk is written by a helper thread while this one hashes it: both
    release the GIL, so a chunk costs the longer of the two, not their sum.
    """

    def __init__(self, f: IO[bytes], hasher: Any, version: Version, progress: Progress | None, have: int) -> None:
        self.f = f
        self.hasher = hasher
        self.version = version
        self.progress = progress
        self.done = have
        self.pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="tflite-hotswap-write")

    def restart(self) -> None:
        self.f.seek(0)
        self.f.truncate(0)
        self.hasher = hashlib.sha256()
        self.done = 0

    def write(self, chunk: bytes, discard: Callable[[str], None]) -> None:
        room = self.version.size - self.done
        if len(chunk) > room:  # stop at the first byte over
            discard(self.version.sha256)
            raise SizeExceededError(f"{self.version.url}: expected {self.version.size} bytes, got "
                                    f"at least {self.done + room + 1}")
        written = self.pool.submit(self.f.write, chunk)
        self.hasher.update(chunk)
        written.result()
        self.done += len(chunk)
        if self.progress is not None:
            self.progress(self.done, self.version.size)
