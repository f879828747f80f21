"""Prometheus metrics for a runtime and its updater (optional extra: ``pip install tflite_hotswap[metrics]``).

``register(runtime, updater)`` adds a collector that reads ``runtime.stats()``
and ``updater.status()`` at scrape time (nothing is counted on the hot path):

* ``tflite_hotswap_calls_total{model,version}``, ``..._model_errors_total``,
  ``..._caller_errors_total``, ``..._timeouts_total``
* ``tflite_hotswap_latency_microseconds{model,version,quantile}`` (0.5, 0.99,
  0.999 and 1 = max), from the runtime's log-linear histogram, as a summary
* ``tflite_hotswap_serving_info{model,version}`` (1 for the serving version)
* ``tflite_hotswap_updater_last_check_timestamp_seconds{model}``,
  ``..._updater_rounds_total{model,outcome}``,
  ``..._updater_downloaded_bytes_total{model}``,
  ``..._updater_failures{model}`` (in a row),
  ``..._updater_experiment_arm_info{model,arm}``
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from .errors import BackendNotFoundError, HotswapError
from .serving.runtime import Runtime

try:
    from prometheus_client.core import (
        REGISTRY,
        CollectorRegistry,
        CounterMetricFamily,
        GaugeMetricFamily,
        SummaryMetricFamily,
    )
    from prometheus_client.registry import Collector
except ImportError as e:  # pragma: no cover - depends on the environment
    raise BackendNotFoundError("tflite_hotswap.metrics: expected prometheus-client "
                               "(pip install 'tflite_hotswap[metrics]'), it is not installed") from e


class HotswapCollector(Collector):
    """Reads a runtime (and optionally an updater) when Prometheus scrapes.

    Args:
        runtime: the serving Runtime.
        updater: its Updater, if any.
        model: the ``model`` label (default: the updater's model, else "model").
    """

    def __init__(self, runtime: Runtime, updater: Any | None = None, model: str | None = None) -> None:
        self.runtime = runtime
        self.updater = updater
        self.model = model or (updater.model if updater is not None else "model")

    def collect(self) -> Iterator[Any]:
        m = self.model
        counters = {name: CounterMetricFamily(f"tflite_hotswap_{name}", f"{name.replace('_', ' ')} per version",
                                              labels=["model", "version"])
                    for name in ("calls", "model_errors", "caller_errors", "timeouts")}
        latency = SummaryMetricFamily("tflite_hotswap_latency_microseconds",
                                      "successful call latency per version", labels=["model", "version"])
        quantiles = GaugeMetricFamily("tflite_hotswap_latency_quantile_microseconds",
                                      "latency quantiles per version (1 = max)",
                                      labels=["model", "version", "quantile"])
        for version, s in self.runtime.stats().items():
            for name, family in counters.items():
                family.add_metric([m, version], getattr(s, name))
            ok = s.calls - s.errors
            latency.add_metric([m, version], count_value=ok, sum_value=s.mean_us * ok)
            for q, value in (("0.5", s.p50_us), ("0.99", s.p99_us), ("0.999", s.p999_us), ("1", s.max_us)):
                quantiles.add_metric([m, version, q], value)
        yield from counters.values()
        yield latency
        yield quantiles
        serving = GaugeMetricFamily("tflite_hotswap_serving_info", "the serving version", labels=["model", "version"])
        try:
            serving.add_metric([m, self.runtime.info.version], 1)
        except HotswapError:
            pass
        yield serving
        if self.updater is None:
            return
        st = self.updater.status()
        last = GaugeMetricFamily("tflite_hotswap_updater_last_check_timestamp_seconds", "last check",
                                 labels=["model"])
        if st.last_check is not None:
            last.add_metric([m], st.last_check)
        yield last
        rounds = CounterMetricFamily("tflite_hotswap_updater_rounds", "update rounds by outcome",
                                     labels=["model", "outcome"])
        for outcome, n in st.rounds.items():
            rounds.add_metric([m, outcome], n)
        yield rounds
        downloaded = CounterMetricFamily("tflite_hotswap_updater_downloaded_bytes", "bytes downloaded",
                                         labels=["model"])
        downloaded.add_metric([m], st.downloaded_bytes)
        yield downloaded
        failures = GaugeMetricFamily("tflite_hotswap_updater_failures", "failed rounds in a row", labels=["model"])
        failures.add_metric([m], st.failures)
        yield failures
        arm = GaugeMetricFamily("tflite_hotswap_updater_experiment_arm_info", "experiment arm",
                                labels=["model", "arm"])
        if st.experiment_arm:
            arm.add_metric([m, st.experiment_arm], 1)
        yield arm


def register(runtime: Runtime, updater: Any | None = None, *, model: str | None = None,
             registry: CollectorRegistry = REGISTRY) -> HotswapCollector:
    """Expose ``runtime`` (and ``updater``) to Prometheus through ``registry``; return the collector.

    Serve it with ``prometheus_client.start_http_server(port)`` as usual.
    """
    collector = HotswapCollector(runtime, updater, model)
    registry.register(collector)
    return collector
