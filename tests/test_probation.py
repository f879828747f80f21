"""Probation's judgment from statistics: the p99 and median latency ratios, and what a verdict reports."""

from __future__ import annotations

import pytest

from tflite_hotswap import Probation
from tflite_hotswap.errors import MisuseError
from tflite_hotswap.serving.runtime import ModelInfo, VersionStats
from tflite_hotswap.updater import events as ev
from tflite_hotswap.updater.probation import judge

INFO = ModelInfo.__new__(ModelInfo)  # judge only hands it to health(); no model needed


def stats(calls: int, p50: float, p99: float) -> VersionStats:
    return VersionStats(calls=calls, model_errors=0, caller_errors=0, timeouts=0, p50_us=p50, p99_us=p99,
                        p999_us=p99, max_us=p99, mean_us=p50)


# The demo's failure in CI: the previous version's short-window p99 swollen by a busy machine.
BUSY_BASELINE = stats(170, p50=12.0, p99=400.0)
SLOW = stats(60, p50=1900.0, p99=3400.0)    # a model 100x slower: its median moves
JITTERY = stats(60, p50=11.0, p99=3700.0)   # an equal model with one call delayed by the machine


def test_the_p99_ratio_alone_misses_a_slow_version_when_the_baseline_tail_is_noisy():
    rule = Probation(calls=45, seconds=0, max_p99_ratio=10.0, min_baseline_calls=30)
    assert judge(rule, INFO, None, SLOW, BUSY_BASELINE, 2.0).state == "passed"


def test_the_median_ratio_fails_a_slow_version_and_says_why():
    rule = Probation(calls=45, seconds=0, max_p99_ratio=None, max_p50_ratio=10.0, min_baseline_calls=30)
    verdict = judge(rule, INFO, None, SLOW, BUSY_BASELINE, 2.0)
    assert verdict.state == "failed"
    assert verdict.reason == "median latency: expected at most 10x the previous version's 12 us, found 1900 us " \
                             "(158.3x)"
    assert (verdict.latency_us, verdict.baseline_us) == ((1900.0, 3400.0), (12.0, 400.0))


def test_the_median_ratio_passes_an_equal_version_with_a_delayed_call_the_p99_ratio_fails():
    median_only = Probation(calls=45, seconds=0, max_p99_ratio=None, max_p50_ratio=10.0, min_baseline_calls=30)
    both = Probation(calls=45, seconds=0, max_p99_ratio=2.0, max_p50_ratio=10.0, min_baseline_calls=30)
    baseline = stats(170, p50=12.0, p99=150.0)
    assert judge(median_only, INFO, None, JITTERY, baseline, 2.0).state == "passed"
    verdict = judge(both, INFO, None, JITTERY, baseline, 2.0)
    assert verdict.state == "failed" and verdict.reason.startswith("p99 latency: expected at most 2x"), verdict


def test_no_ratio_is_judged_without_enough_baseline_calls():
    rule = Probation(calls=45, seconds=0, max_p50_ratio=2.0, min_baseline_calls=100)
    verdict = judge(rule, INFO, None, SLOW, stats(99, p50=12.0, p99=150.0), 2.0)
    assert (verdict.state, verdict.baseline_us) == ("passed", None)


def test_the_median_ratio_is_off_by_default():
    assert Probation().max_p50_ratio is None
    rule = Probation(calls=45, seconds=0, max_p99_ratio=None, min_baseline_calls=30)
    assert judge(rule, INFO, None, SLOW, BUSY_BASELINE, 2.0).state == "passed"


@pytest.mark.parametrize("bad", [-1.0, float("nan"), float("inf"), "2", True])
def test_a_bad_median_ratio_is_refused(bad):
    with pytest.raises(MisuseError, match=r"Probation.max_p50_ratio: expected a finite number >= 0"):
        Probation(max_p50_ratio=bad)


def test_promoted_reports_the_latency_it_was_judged_on():
    compared = ev.Promoted(model="demo", version="v6", calls=60, seconds=2.0, latency_us=(11.0, 92.0),
                           baseline_us=(12.0, 150.0))
    assert compared.message() == ("demo v6: promoted after 60 calls and 2.0 s of probation (p50 11 us, p99 92 us; "
                                  "the previous version's 12 and 150 us)")
    alone = ev.Promoted(model="demo", version="v2", calls=60, seconds=2.0, latency_us=(11.0, 92.0))
    assert alone.message().endswith("(p50 11 us, p99 92 us)")
