"""Checkpoints: crash-safe, per base model, in the safetensors format.

Layout of a checkpoint folder::

    state/ckpt/
      .lock                                  # flock'ed while saving or deleting
      <base model sha256>/00000007.safetensors
      <base model sha256>/00000009.safetensors
      <other base sha256>/00000008.safetensors

Each file is a plain safetensors file (see ``_safetensors``): one tensor per
model variable (weights, optimizer state, the step counter ``train_step`` when
the model exposes them), named as in the model's ``get_weights`` signature,
and string metadata:

=================  ==========================================================
``format``         ``tflite_hotswap.checkpoint/1``
``base_sha256``    sha256 of the base ``.tflite`` model the weights belong to
``step``           training steps taken (decimal)
``metrics``        JSON object of metric name to number, e.g. ``{"val_accuracy": 0.93}``
``created``        ISO 8601 UTC time
=================  ==========================================================

Ids are decimal sequence numbers, unique across the folder (a newer save has
a larger id).  A save writes a temporary file, fsyncs it, renames it into
place and fsyncs the folder, so a crash or power loss at any point leaves
either the old set of checkpoints or the new one, never a partial file under
a checkpoint name.
"""

from __future__ import annotations

import builtins
import contextlib
import errno
import fcntl
import json
import logging
import math
import os
import re
import secrets
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import numpy as np

from ..errors import CheckpointError, CheckpointMismatchError, MisuseError
from . import _safetensors
from .forms import SignatureNames, VariableSpecs, weights_call

logger = logging.getLogger(__name__)

FORMAT = "tflite_hotswap.checkpoint/1"
NEW_BASE_POLICIES = ("carry", "reset", "refuse")
_NAME = re.compile(r"^(\d{8,})\.safetensors$")
_SHA = re.compile(r"^[0-9a-f]{64}$")
_TMP_PREFIX = ".tmp-"


@dataclass(frozen=True)
class CheckpointInfo:
    """One saved checkpoint (read from its header; the tensors stay on disk).

    Attributes:
        id: its id (a decimal sequence number as a string, e.g. ``"00000042"``).
        path: the file.
        base_sha256: the base model it was trained from.
        step: training steps taken.
        metrics: what ``save(metrics=...)`` stored.
        created: when it was saved (UTC).
        variables: name -> (dtype name, shape) of every tensor.
    """

    id: str
    path: str
    base_sha256: str
    step: int
    metrics: dict[str, float]
    created: datetime
    variables: VariableSpecs = field(default_factory=dict)


class Checkpoints:
    """The on-device checkpoint store: newest ``keep`` per base model, plus the best.

    Args:
        directory: the folder (created if missing).
        keep: how many of the newest checkpoints to keep per base model.
        best: the metric that decides the best checkpoint, kept beyond
            ``keep`` (None: no best is kept).
        best_mode: ``"max"`` (accuracy-like) or ``"min"`` (loss-like).
        new_base: what a model whose sha256 has no checkpoint of its own
            gets (a new base version from the repository):
            ``"carry"`` (default) restores the newest checkpoint of another
            base if its variables have the same names, shapes and dtypes,
            else the model starts from its own weights; ``"reset"`` always
            starts from the model's own weights; ``"refuse"`` raises
            :class:`CheckpointMismatchError` when other bases have
            checkpoints.  Checkpoints stay apart per base model either way.
        names: the signature names of the model form (defaults:
            ``get_weights``/``set_weights``).

    Raises:
        MisuseError: for bad arguments.
        CheckpointError: if the folder cannot be created.
    """

    def __init__(self, directory: str | os.PathLike[str], *, keep: int = 5,
                 best: str | None = "val_accuracy", best_mode: str = "max",
                 new_base: str = "carry", names: SignatureNames | None = None) -> None:
        if not isinstance(keep, int) or keep < 1:
            raise MisuseError(f"keep: expected an int >= 1, got {keep!r}")
        if best_mode not in ("max", "min"):
            raise MisuseError(f"best_mode: expected 'max' or 'min', got {best_mode!r}")
        if new_base not in NEW_BASE_POLICIES:
            raise MisuseError(f"new_base: expected one of {NEW_BASE_POLICIES}, got {new_base!r}")
        self.directory = os.path.abspath(os.fspath(directory))
        self.keep = keep
        self.best_metric = best
        self.best_mode = best_mode
        self.new_base = new_base
        self.names = names or SignatureNames()
        self._served: dict[str, str | None] = {}
        self._cache: dict[str, tuple[tuple[int, int], CheckpointInfo]] = {}
        self._lock = threading.Lock()
        try:
            os.makedirs(self.directory, exist_ok=True)
        except OSError as e:
            raise CheckpointError(f"checkpoints: expected a writable folder at {self.directory!r} "
                                  f"({e})") from e
        self._remove_stale_temp_files()

    def __repr__(self) -> str:
        return f"<Checkpoints {self.directory!r} keep={self.keep} best={self.best_metric!r}>"

    # ---------------------------------------------------------------- reading

    def list(self, base_sha256: str | None = None) -> list[CheckpointInfo]:
        """Complete checkpoints, oldest first; of one base model, or of all.

        Unreadable files are skipped with a warning.
        """
        found = []
        for base in self._bases() if base_sha256 is None else [base_sha256]:
            folder = os.path.join(self.directory, base)
            try:
                names = os.listdir(folder)
            except FileNotFoundError:
                continue
            for name in names:
                if _NAME.match(name):
                    info = self._info(os.path.join(folder, name))
                    if info is not None:
                        found.append(info)
        return sorted(found, key=lambda i: int(i.id))

    def latest(self, base_sha256: str | None = None) -> CheckpointInfo | None:
        """The newest complete checkpoint (of ``base_sha256``, or of any base); None if none."""
        infos = self.list(base_sha256)
        return infos[-1] if infos else None

    def best(self, base_sha256: str | None = None) -> CheckpointInfo | None:
        """The checkpoint with the best ``best`` metric; None if none has it."""
        return _best(self.list(base_sha256), self.best_metric, self.best_mode)

    def get(self, checkpoint_id: str) -> CheckpointInfo:
        """Raises: CheckpointError: if no checkpoint has this id."""
        for info in self.list():
            if info.id == checkpoint_id:
                return info
        raise CheckpointError(f"checkpoint id: expected one of {[i.id for i in self.list()]}, "
                              f"got {checkpoint_id!r}")

    def load(self, checkpoint: str | CheckpointInfo) -> dict[str, np.ndarray]:
        """Read a checkpoint's tensors.

        Raises:
            CheckpointError: if it is missing or damaged.
        """
        info = checkpoint if isinstance(checkpoint, CheckpointInfo) else self.get(checkpoint)
        try:
            with open(info.path, "rb") as f:
                data = f.read()
        except OSError as e:
            raise CheckpointError(f"checkpoint {info.id}: could not read {info.path!r} ({e})") from e
        tensors, _ = _safetensors.loads(data, f"checkpoint {info.path!r}")
        return tensors

    # ---------------------------------------------------------------- writing

    def save(self, weights: Mapping[str, np.ndarray], *, base_sha256: str, step: int = 0,
             metrics: Mapping[str, float] | None = None) -> CheckpointInfo:
        """Write a checkpoint atomically, then drop the ones ``keep`` no longer covers.

        Args:
            weights: every variable of the model by name.
            base_sha256: the base model's sha256.
            step: training steps taken.
            metrics: numbers to store with it (e.g. ``{"val_accuracy": 0.93}``).

        Returns:
            The new checkpoint's :class:`CheckpointInfo`.

        Raises:
            MisuseError: for a bad sha256 or metrics that are not numbers.
            CheckpointError: if it could not be written (disk full, permissions).
        """
        if not isinstance(base_sha256, str) or not _SHA.match(base_sha256):
            raise MisuseError(f"base_sha256: expected 64 lowercase hex digits, got {base_sha256!r}")
        clean = {}
        for k, v in (metrics or {}).items():
            try:
                clean[str(k)] = float(v)
            except (TypeError, ValueError) as e:
                raise MisuseError(f"metrics[{k!r}]: expected a number, got {v!r}") from e
        created = datetime.now(timezone.utc)
        metadata = {"format": FORMAT, "base_sha256": base_sha256, "step": str(int(step)),
                    "metrics": json.dumps(clean, allow_nan=True), "created": created.isoformat()}
        payload = _safetensors.dumps({k: np.asarray(v) for k, v in weights.items()}, metadata)
        folder = os.path.join(self.directory, base_sha256)
        with self._locked():
            checkpoint_id = f"{self._next_id():08d}"
            try:
                new_folder = not os.path.isdir(folder)
                os.makedirs(folder, exist_ok=True)
                if new_folder:
                    _fsync_dir(self.directory)
                path = os.path.join(folder, f"{checkpoint_id}.safetensors")
                _atomic_write(self.directory, path, payload)
            except OSError as e:
                raise CheckpointError(f"checkpoint: could not write it into {folder!r} ({e})") from e
            self._prune(base_sha256)
        info = self._info(path)
        if info is None:
            raise CheckpointError(f"checkpoint {checkpoint_id}: written but unreadable at {path!r}")
        logger.info("saved checkpoint %s (base %s, step %d, %s)", checkpoint_id, base_sha256[:12], step,
                    clean)
        return info

    def rollback(self, base_sha256: str | None = None) -> CheckpointInfo | None:
        """Delete the newest checkpoint (of ``base_sha256``, or of any base); return the new newest.

        Raises:
            CheckpointError: if there is none, or it cannot be deleted.
        """
        with self._locked():
            newest = self.latest(base_sha256)
            if newest is None:
                raise CheckpointError(f"rollback: expected a checkpoint in {self.directory!r}, found none")
            self._delete(newest)
        logger.info("rolled back checkpoint %s", newest.id)
        return self.latest(base_sha256)

    def delete(self, checkpoint_id: str) -> None:
        """Delete one checkpoint.

        Raises:
            CheckpointError: if there is none with this id, or it cannot be deleted.
        """
        with self._locked():
            self._delete(self.get(checkpoint_id))

    def reset(self, base_sha256: str | None = None) -> int:
        """Delete every checkpoint (of ``base_sha256``, or all): models start from their base weights.

        Returns:
            How many were deleted.

        Raises:
            CheckpointError: if one cannot be deleted.
        """
        with self._locked():
            infos = self.list(base_sha256)
            for info in infos:
                self._delete(info)
        logger.info("reset: deleted %d checkpoints", len(infos))
        return len(infos)

    # ------------------------------------------------------- model binding

    def resolve(self, base_sha256: str, variables: VariableSpecs) -> CheckpointInfo | None:
        """Which checkpoint a model with this sha256 and these variables should get (None: its own).

        Its own newest checkpoint if any (variables checked); else, by the
        ``new_base`` policy, another base's newest.

        Raises:
            CheckpointMismatchError: if its own newest checkpoint does not fit
                its variables, or ``new_base="refuse"`` and only other bases
                have checkpoints.
        """
        own = self.latest(base_sha256)
        if own is not None:
            check_variables(own, variables)
            return own
        other = self.latest()
        if other is None or self.new_base == "reset":
            return None
        found = variable_differences(other.variables, variables)
        if self.new_base == "refuse":
            raise CheckpointMismatchError(
                f"checkpoint {other.id}: trained from base model {other.base_sha256[:12]}, expected base "
                f"{base_sha256[:12]} (new_base='refuse'; 'carry' would keep it when the variables match, "
                f"'reset' starts from the new base)", found)
        if found:
            logger.warning("new base model %s: the newest checkpoint (%s, base %s) does not fit its "
                           "variables (%s); starting from the new base's weights", base_sha256[:12],
                           other.id, other.base_sha256[:12], "; ".join(found))
            return None
        logger.info("new base model %s: carrying checkpoint %s over from base %s", base_sha256[:12],
                    other.id, other.base_sha256[:12])
        return other

    def resolve_and_load(self, base_sha256: str, variables: VariableSpecs
                         ) -> tuple[CheckpointInfo | None, dict[str, np.ndarray] | None]:
        """:meth:`resolve`, then :meth:`load` it (again if a concurrent save pruned it meanwhile).

        Raises:
            CheckpointMismatchError: see :meth:`resolve`.
            CheckpointError: if it cannot be read.
        """
        for attempt in range(3):
            info = self.resolve(base_sha256, variables)
            if info is None:
                return None, None
            try:
                return info, self.load(info)
            except CheckpointError:
                if attempt == 2 or os.path.exists(info.path):
                    raise
        raise AssertionError("unreachable")

    def served(self, base_sha256: str) -> str | None:
        """The checkpoint id last restored into a runtime's interpreters for this base.

        None: none was (base weights), or no runtime has loaded this base.
        """
        return self._served.get(base_sha256)

    def restorer(self, model: Any) -> Restorer:
        """The hook a :class:`~tflite_hotswap.Runtime` runs on each new interpreter of one version.

        The checkpoint is chosen at the first interpreter and then pinned, so
        every interpreter of the version holds the same weights; the hook's
        ``checkpoint`` attribute then says which (None: the model's own weights).

        Args:
            model: the runtime's ``LoadedModel`` (its sha256 and signatures).

        Raises:
            NotTrainableError: (from the hook) if the model has no
                ``set_weights`` signature; FlexOpsRequiredError for the Flex form.
            CheckpointMismatchError: (from the hook) see :meth:`resolve`.
        """
        return Restorer(self)

    # -------------------------------------------------------------- helpers

    def _bases(self) -> builtins.list[str]:
        try:
            return [n for n in os.listdir(self.directory) if _SHA.match(n)]
        except FileNotFoundError:
            return []

    def _info(self, path: str) -> CheckpointInfo | None:
        """The checkpoint's header, cached by (mtime, size); None if damaged."""
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return None
        key = (st.st_mtime_ns, st.st_size)
        cached = self._cache.get(path)
        if cached is not None and cached[0] == key:
            return cached[1]
        try:
            info = _read_info(path, st.st_size)
        except FileNotFoundError:
            return None  # pruned by a concurrent save
        except (CheckpointError, OSError, ValueError, KeyError) as e:
            logger.warning("skipping damaged checkpoint %s: %s", path, e)
            return None
        self._cache[path] = (key, info)
        return info

    def _next_id(self) -> int:
        ids = [0]
        for base in self._bases():
            with contextlib.suppress(FileNotFoundError):
                ids += [int(m.group(1)) for n in os.listdir(os.path.join(self.directory, base))
                        if (m := _NAME.match(n))]
        return max(ids) + 1

    def _prune(self, base_sha256: str) -> None:
        infos = self.list(base_sha256)
        keep = {i.id for i in infos[-self.keep:]}
        best = _best(infos, self.best_metric, self.best_mode)
        if best is not None:
            keep.add(best.id)
        for info in infos:
            if info.id not in keep:
                self._delete(info)

    def _delete(self, info: CheckpointInfo) -> None:
        try:
            os.unlink(info.path)
            _fsync_dir(os.path.dirname(info.path))
        except FileNotFoundError:
            pass
        except OSError as e:
            raise CheckpointError(f"checkpoint {info.id}: could not delete {info.path!r} ({e})") from e
        self._cache.pop(info.path, None)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """This process's threads and other processes, one at a time."""
        with self._lock:
            try:
                fd = os.open(os.path.join(self.directory, ".lock"), os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as e:
                raise CheckpointError(f"checkpoints: could not open the lock file in {self.directory!r} "
                                      f"({e})") from e
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                yield
            finally:
                os.close(fd)

    def _remove_stale_temp_files(self) -> None:
        """Temp files of saves that were killed (their process is gone)."""
        try:
            names = os.listdir(self.directory)
        except OSError:
            return
        for name in names:
            if not name.startswith(_TMP_PREFIX):
                continue
            try:
                pid = int(name[len(_TMP_PREFIX):].split("-")[0])
            except ValueError:
                continue
            if pid != os.getpid() and not _alive(pid):
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(self.directory, name))


def variable_differences(have: VariableSpecs, want: VariableSpecs) -> list[str]:
    """Every way a checkpoint's variables (``have``) differ from a model's (``want``)."""
    found = [f"variable {n!r}: the model has it, the checkpoint does not"
             for n in sorted(want.keys() - have.keys())]
    found += [f"variable {n!r}: in the checkpoint, the model has none"
              for n in sorted(have.keys() - want.keys())]
    for n in sorted(have.keys() & want.keys()):
        (hd, hs), (wd, ws) = have[n], want[n]
        if hd != wd:
            found.append(f"variable {n!r}: expected dtype {wd}, the checkpoint has {hd}")
        if tuple(hs) != tuple(ws):
            found.append(f"variable {n!r}: expected shape {tuple(ws)}, the checkpoint has {tuple(hs)}")
    return found


def check_variables(info: CheckpointInfo, variables: VariableSpecs) -> None:
    """Raises: CheckpointMismatchError: listing each difference, if there is any."""
    found = variable_differences(info.variables, variables)
    if found:
        raise CheckpointMismatchError(
            f"checkpoint {info.id} (base {info.base_sha256[:12]}) does not fit the model's variables: "
            + "; ".join(found), found)


def _best(infos: list[CheckpointInfo], metric: str | None, mode: str) -> CheckpointInfo | None:
    scored = [i for i in infos
              if metric is not None and metric in i.metrics and not math.isnan(i.metrics[metric])]
    if not scored:
        return None
    sign = 1.0 if mode == "max" else -1.0
    # Ties go to the newer one.
    return max(scored, key=lambda i: (sign * i.metrics[metric or ""], int(i.id)))


def _read_info(path: str, size: int) -> CheckpointInfo:
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise CheckpointError(f"expected an 8-byte header length, got {len(head)} bytes")
        n = int.from_bytes(head, "little")
        if n > _safetensors.MAX_HEADER or 8 + n > size:
            raise CheckpointError(f"header length {n} does not fit the file's {size} bytes")
        header = json.loads(f.read(n))
    meta = header.pop("__metadata__", {}) or {}
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"expected format {FORMAT!r}, got {meta.get('format')!r}")
    end = max((int(e["data_offsets"][1]) for e in header.values()), default=0)
    if 8 + n + end != size:
        raise CheckpointError(f"expected {8 + n + end} bytes, the file has {size}")
    variables = {name: (_safetensors.numpy_dtype(e["dtype"]), tuple(int(d) for d in e["shape"]))
                 for name, e in header.items()}
    name = os.path.basename(path)
    return CheckpointInfo(name.split(".")[0], path, str(meta["base_sha256"]), int(meta.get("step", "0")),
                          {str(k): float(v) for k, v in json.loads(meta.get("metrics", "{}")).items()},
                          datetime.fromisoformat(meta["created"]), variables)


def _atomic_write(temp_dir: str, path: str, payload: bytes) -> None:
    """Temp file, fsync, rename, fsync of the folder: all or nothing, even on power loss."""
    temp = os.path.join(temp_dir, f"{_TMP_PREFIX}{os.getpid()}-{secrets.token_hex(4)}.safetensors")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        view = memoryview(payload)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
    os.close(fd)
    try:
        os.rename(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
    _fsync_dir(os.path.dirname(path))
    if os.path.dirname(path) != temp_dir:
        _fsync_dir(temp_dir)


def _fsync_dir(folder: str) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError as e:
        return e.errno == errno.EPERM
    return True


class Restorer:
    """Restores one checkpoint into every interpreter of one runtime version (see :meth:`Checkpoints.restorer`).

    Attributes:
        checkpoint: the id of the checkpoint restored (None: none, or not yet
            chosen -- it is chosen at the first interpreter).
    """

    def __init__(self, checkpoints: Checkpoints) -> None:
        self._checkpoints = checkpoints
        self._pinned: tuple[Any, dict[str, np.ndarray] | None] | None = None
        self.checkpoint: str | None = None

    def __call__(self, interpreter: Any, loaded: Any) -> None:
        ckpts = self._checkpoints
        if self._pinned is None:
            call = weights_call(interpreter, loaded.signatures, ckpts.names)
            info, weights = ckpts.resolve_and_load(loaded.sha256, call.specs())
            self._pinned = (call, weights)
            self.checkpoint = None if info is None else info.id
            ckpts._served[loaded.sha256] = self.checkpoint
            logger.info("runtime for %s: restoring %s", loaded.sha256[:12],
                        f"checkpoint {info.id}" if info else "nothing (base weights)")
        call, weights = self._pinned
        if weights is not None:
            call.on(interpreter)(weights)
