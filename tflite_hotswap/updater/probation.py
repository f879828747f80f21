"""Probation: watching a just-swapped version on live traffic before trusting it.

A version stays on probation until it has served ``calls`` calls *and*
``seconds`` seconds have passed.  It passes if its model errors (the backend
failing -- not caller mistakes or timeouts) are at most ``max_error_rate`` of
its calls, its p99 latency is at most ``max_p99_ratio`` times the previous
version's p99 on the same runtime (and its median at most ``max_p50_ratio``
times the previous median, if set), and ``health(info, stats)`` (if given) is
true.  It fails early once the error budget is certainly exceeded.

Why a median too: a short probation's p99 is its worst call or two, which a
busy machine sets as much as the model does (a 2 us model showed a 3.7 ms p99
over 60 calls beside an emulated ARM build); a model that is really slower
moves the median, which a few delayed calls do not.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

from ..errors import MisuseError
from ..serving.runtime import ModelInfo, VersionStats

Health = Callable[[ModelInfo, VersionStats], bool]


@dataclass(frozen=True)
class Probation:
    """How a new version is watched after the swap.

    Attributes:
        calls: calls the version must serve (successful or not).
        seconds: seconds that must pass (both must be reached).
        max_error_rate: highest share of calls that may fail with a model error.
        max_p99_ratio: highest p99 latency as a multiple of the previous
            version's (None: not judged).
        max_p50_ratio: highest median latency as a multiple of the previous
            version's (None, the default: not judged).
        health: optional ``health(info, stats) -> bool`` asked at the end.
        min_baseline_calls: the latency ratios are judged only if the
            previous version served at least this many calls on this runtime.
        check_every: seconds between looks at the statistics.

    Raises:
        MisuseError: for a negative or non-finite setting.
    """

    calls: int = 1000
    seconds: float = 60.0
    max_error_rate: float = 0.01
    max_p99_ratio: float | None = 2.0
    max_p50_ratio: float | None = None
    health: Health | None = None
    min_baseline_calls: int = 100
    check_every: float = 0.25

    def __post_init__(self) -> None:
        for name in ("calls", "seconds", "max_error_rate", "max_p99_ratio", "max_p50_ratio", "min_baseline_calls",
                     "check_every"):
            value = getattr(self, name)
            if value is None and name in ("max_p99_ratio", "max_p50_ratio"):
                continue
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) \
                    or value < 0:
                raise MisuseError(f"Probation.{name}: expected a finite number >= 0, got {value!r}")
        if self.check_every <= 0:
            raise MisuseError(f"Probation.check_every: expected seconds > 0, got {self.check_every!r}")


@dataclass(frozen=True)
class Verdict:
    """Where a probation stands.

    Attributes:
        state: ``"pending"``, ``"passed"`` or ``"failed"``.
        reason: why it failed, or what it still waits for.
        calls: calls served during the probation so far.
        model_errors: model errors during the probation so far.
        seconds: seconds elapsed.
        latency_us: the version's (p50, p99) latency when judged (zeros while
            pending, or when the error budget failed it first).
        baseline_us: the previous version's (p50, p99) it was compared with
            (None: not compared -- no baseline, or too few baseline calls).
    """

    state: str
    reason: str
    calls: int
    model_errors: int
    seconds: float
    latency_us: tuple[float, float] = (0.0, 0.0)
    baseline_us: tuple[float, float] | None = None


def judge(rule: Probation, info: ModelInfo, before: VersionStats | None, now: VersionStats,
          baseline: VersionStats | None, elapsed: float) -> Verdict:
    """Judge a probation from the version's statistics.

    Args:
        rule: the probation settings.
        info: the version's ModelInfo.
        before: its statistics when the probation started (None: it had none),
            subtracted so only calls made during the probation count.
        now: its statistics now.
        baseline: the previous version's statistics (for the p99 ratio).
        elapsed: seconds since the probation started.
    """
    calls = now.calls - (before.calls if before else 0)
    errors = now.model_errors - (before.model_errors if before else 0)
    budget = rule.max_error_rate * max(calls, rule.calls)
    if errors > budget:
        return Verdict("failed", f"model errors: expected at most {rule.max_error_rate:.2%} of calls, found "
                                 f"{errors} in {calls} calls", calls, errors, elapsed)
    if calls < rule.calls or elapsed < rule.seconds:
        waiting = []
        if calls < rule.calls:
            waiting.append(f"{calls}/{rule.calls} calls" + (" (no traffic)" if calls == 0 else ""))
        if elapsed < rule.seconds:
            waiting.append(f"{elapsed:.1f}/{rule.seconds:g} s")
        return Verdict("pending", "waiting for " + " and ".join(waiting), calls, errors, elapsed)
    latency = (now.p50_us, now.p99_us)
    compared = baseline is not None and baseline.calls >= rule.min_baseline_calls and baseline.p99_us > 0
    base = (baseline.p50_us, baseline.p99_us) if baseline is not None and compared else None
    ratios = [("p99", rule.max_p99_ratio, now.p99_us, base[1]),
              ("median", rule.max_p50_ratio, now.p50_us, base[0])] if base else []
    for name, limit, found, previous in ratios:
        if limit is not None and previous > 0 and found / previous > limit:
            return Verdict("failed", f"{name} latency: expected at most {limit:g}x the previous version's "
                                     f"{previous:.0f} us, found {found:.0f} us ({found / previous:.1f}x)",
                           calls, errors, elapsed, latency, base)
    if rule.health is not None:
        try:
            healthy = bool(rule.health(info, now))
        except Exception as e:  # noqa: BLE001 -- a user callback: its failure fails the probation
            return Verdict("failed", f"health check: expected True, it raised {type(e).__name__}: {e}",
                           calls, errors, elapsed, latency, base)
        if not healthy:
            return Verdict("failed", "health check: expected True, found False", calls, errors, elapsed,
                           latency, base)
    return Verdict("passed", f"{calls} calls, {errors} model errors in {elapsed:.1f} s", calls, errors, elapsed,
                   latency, base)
