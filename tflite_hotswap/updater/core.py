"""The Updater: a device follows a model repository by itself.

One round: conditions -> conditional GET of the manifest -> ``choose_version``
(experiment arm, rollout, channel; skipping versions marked bad here and
versions needing a newer client) -> fetch into the store (resumable,
verified) -> validation in a separate process -> swap -> probation ->
promote, or roll back to last-known-good.  Rounds run on a background thread
every ``interval`` seconds (with jitter; exponential backoff after failures)
and on demand with :meth:`Updater.check_now`.  One round at a time per store,
across processes.
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ..delivery.manifest import ModelEntry, Version, assigned_arm, choose_version
from ..delivery.sources import FetchConfig, Source, open_source, with_retries
from ..delivery.store import Store
from ..errors import (
    DeliveryError,
    HashMismatchError,
    HotswapError,
    IncompatibleModelError,
    InvalidModelError,
    MisuseError,
    SizeExceededError,
    UpdaterBusyError,
    ValidationError,
)
from ..serving.runtime import Runtime, VersionStats
from . import events as ev
from .boot import MAX_DEATHS
from .clock import Clock
from .conditions import Condition, describe
from .probation import Probation, Verdict, judge
from .state import UpdaterState, recover
from .validation import GoldenSample, validate

logger = logging.getLogger(__name__)

#: Every outcome a round can have.
OUTCOMES = ("up_to_date", "promoted", "switched", "refused", "rolled_back", "interrupted", "deferred",
            "busy", "failed")


@dataclass(frozen=True)
class UpdateResult:
    """The outcome of one round.

    Attributes:
        outcome: one of ``OUTCOMES``: ``up_to_date`` (nothing to do),
            ``promoted`` (validated, swapped, passed probation), ``switched``
            (swapped straight to a version already proven good in this
            store), ``refused`` (failed validation, never swapped),
            ``rolled_back`` (failed probation), ``interrupted`` (the updater
            stopped during probation; swapped back, not marked bad),
            ``deferred`` (a condition was false), ``busy`` (another process's
            round held the store), ``failed`` (an error; retried with backoff).
        version: the candidate version (or the serving one when up to date).
        serving: the version serving after the round.
        reason: why, for refused / rolled_back / deferred / failed / up_to_date.
        timings: seconds spent in ``poll``, ``download``, ``validation``,
            ``swap``, ``probation``, ``rollback`` (those that happened).
        downloaded_bytes: bytes downloaded in this round.
    """

    outcome: str
    version: str | None
    serving: str | None
    reason: str | None = None
    timings: dict[str, float] = field(default_factory=dict)
    downloaded_bytes: int = 0


@dataclass(frozen=True)
class ProbationProgress:
    """A probation in progress (in ``UpdaterStatus.probation``)."""

    version: str
    calls: int
    calls_needed: int
    seconds: float
    seconds_needed: float
    waiting_for: str


@dataclass(frozen=True)
class UpdaterStatus:
    """A snapshot of the updater.

    Attributes:
        model, device_id, channel: what it follows.
        state: ``idle``, ``checking``, ``downloading``, ``validating``,
            ``probation``, ``rolling_back`` or ``stopped``.
        serving: the version the runtime serves.
        current, last_known_good: as recorded in the store.
        candidate: the version being downloaded, validated or watched.
        probation: progress of the probation in progress (None otherwise).
        bad: versions marked bad on this device, with the reason.
        last_check, next_check: wall-clock times (None: not yet / not scheduled).
        last_result: the last round's result.
        last_error: the last failed round's error.
        failures: failed rounds in a row (drives the backoff).
        conditions: each condition's name and whether it held at the last check.
        experiment_arm: ``"experiment:version"`` this device is assigned, if any.
        rounds: rounds so far by outcome.
        downloaded_bytes: bytes downloaded by this updater.
    """

    model: str
    device_id: str
    channel: str
    state: str
    serving: str | None
    current: str | None
    last_known_good: str | None
    candidate: str | None
    probation: ProbationProgress | None
    bad: dict[str, str]
    last_check: float | None
    next_check: float | None
    last_result: UpdateResult | None
    last_error: str | None
    failures: int
    conditions: tuple[tuple[str, bool], ...]
    experiment_arm: str | None
    rounds: dict[str, int]
    downloaded_bytes: int


class _Stopped(Exception):
    """The updater was stopped during a probation."""


class Updater:
    """Follows a model repository: downloads, validates, swaps, watches and rolls back.

    Args:
        runtime: the serving Runtime (best opened with ``Runtime.from_store``).
        source: the repository: a URL (``https://``, ``http://``, ``file://``) or a Source.
        store: the store folder (or a Store) shared with ``Runtime.from_store``.
        model: the model name in the manifest.
        device_id: this device's id (rollouts and experiments hash it).
        channel: the channel followed.
        interval: seconds between rounds.
        jitter: each wait is ``interval`` times a random factor in
            [1 - jitter, 1 + jitter]; the first round comes after a random
            share of ``jitter * interval`` (a fleet must not poll in lockstep).
        conditions: callables that must all be true for a round to run
            (see ``tflite_hotswap.updater.conditions``).
        probation: how a swapped-in version is watched (default: ``Probation()``).
        on_event: called with every :class:`~tflite_hotswap.updater.events.Event`.
        backoff: (first, cap) seconds between rounds after failures: doubles
            per failure in a row, up to the cap.
        condition_retry: seconds between looks while a condition is false
            (at most ``interval``).
        allow_contract_change: accept candidates whose I/O contract differs
            from the serving model's (the calling code copes).
        validation_timeout: seconds the validation process may take.
        config: download limits and timeouts (default: the store's).
        client_version: this client's version for ``min_client_version``
            (``"auto"``: this library's version; None: ignore the requirement).
        max_deaths: deaths during one probation that mark a version bad.
        clock: the time source (tests inject a ManualClock).
        rng: random source for jitter (tests inject a seeded one).

    Raises:
        MisuseError: for invalid arguments, or a store without a
            last-known-good version of ``model`` to roll back to.
    """

    def __init__(self, runtime: Runtime, source: str | Source, store: str | Store, model: str,
                 device_id: str, channel: str = "stable", *, interval: float = 300.0, jitter: float = 0.2,
                 conditions: Sequence[Condition] = (), probation: Probation | None = None,
                 on_event: ev.EventHandler | None = None, backoff: tuple[float, float] = (10.0, 3600.0),
                 condition_retry: float = 60.0, allow_contract_change: bool = False,
                 validation_timeout: float = 60.0, config: FetchConfig | None = None,
                 client_version: str | None = "auto", max_deaths: int = MAX_DEATHS,
                 clock: Clock | None = None, rng: random.Random | None = None) -> None:
        if not interval > 0 or not 0 <= jitter < 1:
            raise MisuseError(f"interval, jitter: expected seconds > 0 and 0 <= jitter < 1, got {interval!r}, "
                              f"{jitter!r}")
        if not 0 < backoff[0] <= backoff[1]:
            raise MisuseError(f"backoff: expected (first, cap) with 0 < first <= cap, got {backoff!r}")
        for c in conditions:
            if not callable(c):
                raise MisuseError(f"conditions: expected callables returning bool, got {c!r}")
        self.runtime = runtime
        self.source = open_source(source) if isinstance(source, str) else source
        self.store = store if isinstance(store, Store) else Store(store, config=config or FetchConfig())
        self.config = config or self.store.config
        self.model, self.device_id, self.channel = model, device_id, channel
        self.interval, self.jitter = float(interval), float(jitter)
        self.conditions = list(conditions)
        self.probation = probation or Probation()
        self.on_event = on_event
        self.backoff = (float(backoff[0]), float(backoff[1]))
        self.condition_retry = float(condition_retry)
        self.allow_contract_change = allow_contract_change
        self.validation_timeout = validation_timeout
        if client_version == "auto":
            from .. import __version__ as client_version
        self.client_version = client_version
        self.max_deaths = max_deaths
        self.clock = clock or Clock()
        self.rng = rng or random.Random()
        self.state = UpdaterState(self.store.root, self.config.lock_timeout)
        if self.store.state(model).last_known_good is None:
            raise MisuseError(f"{self.store.root}: expected a last-known-good version of {model!r} to roll "
                              f"back to, found none (open the runtime with Runtime.from_store(..., "
                              f"default=...), which records the shipped model)")
        self._round_lock = threading.Lock()   # one round at a time in this process
        self._info_lock = threading.Lock()    # guards the fields below
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._state = "idle"
        self._candidate: str | None = None
        self._progress: ProbationProgress | None = None
        self._last_check: float | None = None
        self._next_check: float | None = None
        self._last_result: UpdateResult | None = None
        self._last_error: str | None = None
        self._failures = 0
        self._conditions: tuple[tuple[str, bool], ...] = tuple((describe(c), True) for c in self.conditions)
        self._arm: str | None = None
        self._rounds = {o: 0 for o in OUTCOMES}
        self._downloaded = 0

    # ------------------------------------------------------------ public API

    def start(self) -> Updater:
        """Start the background thread (idempotent); returns self.

        Raises:
            MisuseError: if the updater was stopped (make a new one).
        """
        with self._info_lock:
            if self._thread is not None:
                if self._stop.is_set():
                    raise MisuseError("start(): this updater was stopped; expected a new Updater")
                return self
            self._thread = threading.Thread(target=self._loop, name=f"tflite-hotswap-updater-{self.model}",
                                            daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float | None = None) -> bool:
        """Stop the background thread; a probation in progress is ended by swapping back.

        Returns:
            True if the thread ended within ``timeout`` seconds (None: wait).
        """
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
            return not thread.is_alive()
        return True

    def __enter__(self) -> Updater:  # noqa: PYI034 (Python 3.9: no typing.Self)
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def check_now(self, timeout: float | None = None) -> UpdateResult:
        """Run one round now, on this thread, probation included.

        Returns once the candidate is promoted, rolled back or refused, or
        there was nothing to do.  Waits for a round already running (in this
        or another process sharing the store) to finish first.

        Args:
            timeout: seconds to wait for another round (None: as long as it takes).

        Raises:
            UpdaterBusyError: if another round held the store longer than ``timeout``.
        """
        result = self._round(manual=True, lock_timeout=timeout)
        if result.outcome == "busy":
            raise UpdaterBusyError(f"{self.store.root}: expected the update round within {timeout:g} s, "
                                   f"another round held it")
        return result

    def status(self) -> UpdaterStatus:
        """A snapshot: versions, state, probation progress, bad versions, schedule, conditions."""
        st = self.store.state(self.model)
        try:
            serving: str | None = self.runtime.info.version
        except HotswapError:
            serving = None
        with self._info_lock:
            return UpdaterStatus(
                self.model, self.device_id, self.channel, "stopped" if self._stop.is_set() and
                self._state == "idle" else self._state, serving, st.current, st.last_known_good,
                self._candidate, self._progress, dict(st.bad), self._last_check, self._next_check,
                self._last_result, self._last_error, self._failures, self._conditions, self._arm,
                dict(self._rounds), self._downloaded)

    # --------------------------------------------------------------- schedule

    def _loop(self) -> None:
        delay = self.rng.uniform(0.0, self.jitter * self.interval)
        while True:
            with self._info_lock:
                self._next_check = self.clock.time() + delay
            if self.clock.wait(self._stop, delay):
                break
            result = self._round(manual=False, lock_timeout=0.0)
            delay = self._next_delay(result)
        with self._info_lock:
            self._next_check = None

    def _next_delay(self, result: UpdateResult) -> float:
        if result.outcome == "failed":
            first, cap = self.backoff
            base = min(cap, first * 2.0 ** (self._failures - 1))
            return base * self.rng.uniform(1.0 - self.jitter, 1.0)
        base = min(self.condition_retry, self.interval) if result.outcome == "deferred" else self.interval
        return base * self.rng.uniform(1.0 - self.jitter, 1.0 + self.jitter)

    # ------------------------------------------------------------------ round

    def _emit(self, event_type: type, **fields: Any) -> None:
        ev.emit(event_type(model=self.model, at=self.clock.time(), **fields), self.on_event)

    def _set(self, **fields: Any) -> None:
        with self._info_lock:
            for k, v in fields.items():
                setattr(self, f"_{k}", v)

    def _round(self, manual: bool, lock_timeout: float | None) -> UpdateResult:
        with self._round_lock:
            self._set(last_check=self.clock.time())
            self._emit(ev.CheckStarted, manual=manual)
            timings: dict[str, float] = {}
            try:
                result = self._conditional_round(timings, lock_timeout)
                self._set(failures=0)
            except Exception as e:
                if not isinstance(e, HotswapError):
                    logger.exception("%s: unexpected error in an update round", self.model)
                with self._info_lock:
                    self._failures += 1
                    self._last_error = f"{type(e).__name__}: {e}"
                    failures = self._failures
                result = UpdateResult("failed", self._candidate, self._serving(), f"{type(e).__name__}: {e}",
                                      timings)
                retry = None if manual else self._next_delay(result)
                self._emit(ev.CheckFailed, error=result.reason or "", failures=failures, retry_in=retry)
            with self._info_lock:
                self._rounds[result.outcome] += 1
                self._downloaded += result.downloaded_bytes
                self._last_result = result
                self._state, self._candidate, self._progress = "idle", None, None
            return result

    def _serving(self) -> str | None:
        try:
            return self.runtime.info.version
        except HotswapError:
            return None

    def _conditional_round(self, timings: dict[str, float], lock_timeout: float | None) -> UpdateResult:
        checked = tuple((describe(c), _holds(c)) for c in self.conditions)
        self._set(conditions=checked)
        failing = tuple(name for name, ok in checked if not ok)
        if failing:
            self._emit(ev.ConditionsNotMet, failing=failing)
            return UpdateResult("deferred", None, self._serving(), "conditions not met: " + ", ".join(failing))
        with self.state.round_lock(lock_timeout) as held:
            if not held:
                return UpdateResult("busy", None, self._serving(), "another process's round holds the store")
            self._set(state="checking")
            return self._locked_round(timings)

    def _locked_round(self, timings: dict[str, float]) -> UpdateResult:
        recover(self.store, self.state, self.model, self.max_deaths)  # a dead process's probation
        started = time.perf_counter()
        manifest, changed = self.store.refresh_manifest(self.source)
        timings["poll"] = time.perf_counter() - started
        entry = manifest.models.get(self.model)
        if entry is None:
            raise DeliveryError(f"manifest: expected model {self.model!r}, listed are {sorted(manifest.models)}")
        st = self.store.state(self.model)
        deaths = self.state.model(self.model)["deaths"]
        exclude = set(st.bad) | {v for v, n in deaths.items() if n >= self.max_deaths}
        self._note_arm(entry)
        serving = self._serving()
        try:
            target = choose_version(entry, self.device_id, self.channel, self.client_version, exclude=exclude)
        except DeliveryError as e:  # every candidate is bad here or needs a newer client
            self._emit(ev.ManifestChecked, serial=manifest.serial, changed=changed, target=None)
            self._emit(ev.UpToDate, version=serving, reason=str(e))
            return UpdateResult("up_to_date", serving, serving, str(e), timings)
        self._emit(ev.ManifestChecked, serial=manifest.serial, changed=changed, target=target)
        if target == serving:
            if st.current != target and target in st.versions:
                self.store.mark_current(self.model, target, good=st.last_known_good == target)
            self._emit(ev.UpToDate, version=serving)
            return UpdateResult("up_to_date", serving, serving, None, timings)
        version = manifest.version(self.model, target)
        if version.sha256 == self.runtime.info.sha256 and serving == st.last_known_good:
            # The same bytes as the proven serving model under another name: rename, no probation.
            path = self.store.fetch(self.source, self.model, version)
            self.runtime.swap(path, version=target, allow_contract_change=True)
            self.store.mark_current(self.model, target)
            self._emit(ev.Switched, version=target, previous=serving)
            return UpdateResult("switched", target, target, "same bytes as the serving version", timings)
        self._set(candidate=target, state="downloading")
        downloaded = [0]
        path = self._download(version, downloaded, timings)
        if target == st.last_known_good:  # proven good in this store (e.g. by another process)
            started = time.perf_counter()
            self.runtime.swap(path, version=target, allow_contract_change=True)
            timings["swap"] = time.perf_counter() - started
            self.store.mark_current(self.model, target)
            self._emit(ev.Switched, version=target, previous=serving)
            return UpdateResult("switched", target, target, None, timings, downloaded[0])
        self._set(state="validating")
        started = time.perf_counter()
        try:
            report = validate(path, version=target, backend=self.runtime.backend, golden=self._golden(version),
                              serving=self.runtime.info.contract,
                              allow_contract_change=self.allow_contract_change,
                              signature=self.runtime.info.signature, timeout=self.validation_timeout,
                              checkpoints=self.runtime.checkpoints)
        except ValidationError as e:
            timings["validation"] = time.perf_counter() - started
            return self._refuse(target, e.reason, timings, downloaded[0])
        timings["validation"] = report.seconds
        self._emit(ev.Validated, version=target, seconds=report.seconds, golden=report.golden,
                   checkpoint=report.checkpoint)
        return self._swap_and_watch(target, path, st.last_known_good, timings, downloaded[0])

    def _download(self, version: Version, downloaded: list[int], timings: dict[str, float]) -> str:
        """Fetch into the store; ``downloaded[0]`` gets the bytes that came over the wire."""
        started = time.perf_counter()
        stored = os.path.exists(self.store.object_path(version.sha256))
        partial = os.path.join(self.store.root, "partial", version.sha256 + ".part")  # the store's layout
        have = os.path.getsize(partial) if not stored and os.path.exists(partial) else 0

        def progress(done: int, total: int) -> None:
            downloaded[0] = max(0, done - have)

        path = self.store.fetch(self.source, self.model, version, progress=progress)
        timings["download"] = time.perf_counter() - started
        if not stored:
            self._emit(ev.Downloaded, version=version.id, bytes=downloaded[0], seconds=timings["download"])
        return path

    def _golden(self, version: Version) -> GoldenSample | None:
        golden = version.golden
        if golden is None:
            return None
        deadline = time.monotonic() + self.config.deadline

        def fetch() -> bytes:
            stream = self.source.open(golden.url, 0, None, self.config)
            try:
                data = bytearray()
                for chunk in stream.chunks:
                    data += chunk
                    if len(data) > golden.size:
                        raise SizeExceededError(f"{golden.url}: expected {golden.size} bytes, got more")
                return bytes(data)
            finally:
                stream.close()

        data = with_retries(fetch, self.config, deadline)
        assert isinstance(data, bytes)
        found = hashlib.sha256(data).hexdigest()
        if found != golden.sha256:
            raise HashMismatchError(f"{golden.url}: expected sha256 {golden.sha256}, got {found}")
        return GoldenSample(data, golden.tolerance)

    def _refuse(self, target: str, reason: str, timings: dict[str, float], downloaded: int) -> UpdateResult:
        self.store.mark_bad(self.model, target, reason)
        self._emit(ev.Refused, version=target, reason=reason)
        self._emit(ev.MarkedBad, version=target, reason=reason)
        return UpdateResult("refused", target, self._serving(), reason, timings, downloaded)

    def _swap_and_watch(self, target: str, path: str, lkg: str | None, timings: dict[str, float],
                        downloaded: int) -> UpdateResult:
        previous = self._serving()
        baseline = self.runtime.stats().get(previous) if previous else None
        before = self.runtime.stats().get(target)
        self.state.start_probation(self.model, target, lkg, self.clock.time())  # durable before the swap
        started = time.perf_counter()
        try:
            info = self.runtime.swap(path, version=target, allow_contract_change=self.allow_contract_change)
        except (InvalidModelError, IncompatibleModelError) as e:
            self.state.end_probation(self.model, passed=False)
            timings["swap"] = time.perf_counter() - started
            return self._refuse(target, f"swap refused it: {e}", timings, downloaded)
        except BaseException:
            self.state.end_probation(self.model, passed=False)
            raise
        timings["swap"] = time.perf_counter() - started
        self.store.mark_current(self.model, target, good=False)
        self._emit(ev.Swapped, version=target, previous=previous, seconds=timings["swap"])
        self._set(state="probation")
        self._emit(ev.ProbationStarted, version=target, calls=self.probation.calls,
                   seconds=self.probation.seconds)
        t0 = self.clock.monotonic()
        watch_started = time.perf_counter()
        try:
            verdict = self._watch(info, before, baseline, t0)
        except _Stopped:
            verdict = None
        timings["probation"] = time.perf_counter() - watch_started
        if verdict is not None and verdict.state == "passed":
            self.store.mark_current(self.model, target, good=True)
            self.state.end_probation(self.model, passed=True)
            self._emit(ev.Promoted, version=target, calls=verdict.calls, seconds=verdict.seconds,
                       latency_us=verdict.latency_us, baseline_us=verdict.baseline_us)
            try:
                self.store.prune()
            except DeliveryError as e:
                logger.warning("%s: pruning the store failed (%s)", self.model, e)
            return UpdateResult("promoted", target, target, verdict.reason, timings, downloaded)
        reason = verdict.reason if verdict is not None else "the updater stopped during probation"
        return self._roll_back(target, lkg, reason, verdict is not None, timings, downloaded)

    def _watch(self, info: Any, before: VersionStats | None, baseline: VersionStats | None,
               t0: float) -> Verdict:
        rule = self.probation
        while True:
            now = self.runtime.stats().get(info.version)
            if now is None:
                raise DeliveryError(f"{info.version}: expected statistics for the version on probation, found none")
            verdict = judge(rule, info, before, now, baseline, self.clock.monotonic() - t0)
            self._set(progress=ProbationProgress(info.version, verdict.calls, rule.calls, verdict.seconds,
                                                 rule.seconds, verdict.reason))
            if verdict.state != "pending":
                return verdict
            if self.clock.wait(self._stop, rule.check_every):
                raise _Stopped()

    def _roll_back(self, target: str, lkg: str | None, reason: str, mark_bad: bool,
                   timings: dict[str, float], downloaded: int) -> UpdateResult:
        self._set(state="rolling_back", progress=None)
        started = time.perf_counter()
        if lkg is None:
            raise DeliveryError(f"{self.model} {target}: failed probation ({reason}) and there is no "
                                f"last-known-good version to roll back to")
        self.runtime.swap(self.store.path_of(self.model, lkg), version=lkg, allow_contract_change=True)
        timings["rollback"] = time.perf_counter() - started
        if mark_bad:
            self.store.mark_bad(self.model, target, f"failed probation: {reason}")
        self.store.mark_current(self.model, lkg)
        self.state.end_probation(self.model, passed=False)
        self._emit(ev.RolledBack, version=target, to=lkg, reason=reason)
        if mark_bad:
            self._emit(ev.MarkedBad, version=target, reason=f"failed probation: {reason}")
        return UpdateResult("rolled_back" if mark_bad else "interrupted", target, lkg, reason, timings,
                            downloaded)

    def _note_arm(self, entry: ModelEntry) -> None:
        arm = experiment_arm(entry, self.device_id)
        self._set(arm=arm)
        self.state.set_arm(self.model, arm)


def experiment_arm(entry: ModelEntry, device_id: str) -> str | None:
    """``"experiment:version"`` of the device's arm in the first experiment, or None."""
    if not entry.experiments:
        return None
    e = entry.experiments[0]
    return f"{e.name}:{assigned_arm(e, device_id).version}"


def _holds(condition: Condition) -> bool:
    try:
        return bool(condition())
    except Exception as e:  # noqa: BLE001 -- a user's condition: logged, counted as false
        logger.warning("condition %s raised %s: %s; counted as false", describe(condition), type(e).__name__, e)
        return False


__all__ = ["OUTCOMES", "ProbationProgress", "UpdateResult", "Updater", "UpdaterStatus", "experiment_arm"]
