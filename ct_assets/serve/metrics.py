"""Prometheus metrics of one server, in a registry of its own (two apps never share counters)."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Histogram, Info
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                   5.0, 10.0)
PROBABILITY_BUCKETS = tuple(round(0.05 * step, 2) for step in range(1, 21))
VALUE_BUCKETS = (-1000.0, -100.0, -10.0, -1.0, 0.0, 1.0, 10.0, 100.0, 1000.0, 10000.0)


class ScoreHistogram(Collector):
    """The distribution of scores per model version, observed a whole batch at a time.

    `prometheus_client.Histogram.observe` costs a lock per value; a batch of 100 scores is
    binned here with one `np.searchsorted`.
    """

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = np.asarray(bounds, dtype=np.float64)
        self._counts: dict[str, np.ndarray] = {}
        self._sums: dict[str, float] = {}
        self._lock = threading.Lock()

    def observe(self, version: str, scores: np.ndarray) -> None:
        """Add a batch of (one-per-row) scores of `version`."""
        counts = np.bincount(np.searchsorted(self.bounds, scores, side="left"),
                             minlength=len(self.bounds) + 1)
        with self._lock:
            if version not in self._counts:
                self._counts[version] = np.zeros(len(self.bounds) + 1, dtype=np.int64)
                self._sums[version] = 0.0
            self._counts[version] += counts
            self._sums[version] += float(scores.sum())

    def collect(self) -> Iterator[HistogramMetricFamily]:
        """The histogram family (`ct_serve_score`), one series per model version."""
        family = HistogramMetricFamily(
            "ct_serve_score", "Scores served (P(positive) for binary, the decided class's "
            "probability for multiclass, the value for regression)", labels=["model_version"])
        with self._lock:
            series = [(v, counts.cumsum(), self._sums[v]) for v, counts in self._counts.items()]
        for version, cumulative, total in series:
            buckets = [(repr(float(b)), int(c)) for b, c in zip(self.bounds, cumulative,
                                                                 strict=False)]
            buckets.append(("+Inf", int(cumulative[-1])))
            family.add_metric([version], buckets, total)
        yield family


class RequestLogCollector(Collector):
    """Request-log figures read at scrape time: rows buffered, rows and files written."""

    def __init__(self, request_log: object) -> None:
        self.request_log = request_log

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        """Buffered rows (gauge), rows logged, files written and failed writes (counters)."""
        log = self.request_log
        yield GaugeMetricFamily("ct_serve_request_log_buffered_rows",
                                "Scored rows waiting to be flushed", value=log.buffered_rows)
        yield CounterMetricFamily("ct_serve_request_log_rows", "Scored rows written to the "
                                  "request log", value=log.flushed_rows)
        yield CounterMetricFamily("ct_serve_request_log_files", "Request-log Parquet files "
                                  "written", value=log.files_written)
        yield CounterMetricFamily("ct_serve_request_log_write_errors", "Request-log flushes "
                                  "that failed (their rows are kept and retried)",
                                  value=log.write_errors)


class ServeMetrics:
    """Every metric of one server and the registry `/metrics` renders."""

    def __init__(self, model_name: str) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.model_name = model_name
        registry = self.registry
        self.requests = Counter("ct_serve_requests", "HTTP requests by route template, method "
                                "and status", ["route", "method", "status"], registry=registry)
        self.errors = Counter("ct_serve_request_errors", "Requests answered with a 4xx or 5xx "
                              "status, by route template and status", ["route", "status"],
                              registry=registry)
        self.latency = Histogram("ct_serve_request_duration_seconds", "Time from the request "
                                 "to its response, by route template", ["route"],
                                 buckets=LATENCY_BUCKETS, registry=registry)
        self.rows = Counter("ct_serve_rows_scored", "Rows scored, by model version",
                            ["model_version"], registry=registry)
        self.model = Info("ct_serve_model", "The model version being served", registry=registry)
        self.swaps = Counter("ct_serve_hot_swaps", "Promotions or rollbacks swapped in",
                             registry=registry)
        self.refused = Counter("ct_serve_hot_swaps_refused", "Deployed versions refused (a "
                               "file, the schema or the canary failed); the old one kept "
                               "serving", registry=registry)
        self.scores: ScoreHistogram | None = None

    def serving(self, version: str, task: str) -> None:
        """Record the version now served (and pick the score buckets for the task once)."""
        self.model.info({"model_name": self.model_name, "model_version": version})
        if self.scores is None:
            bounds = VALUE_BUCKETS if task == "regression" else PROBABILITY_BUCKETS
            self.scores = ScoreHistogram(bounds)
            self.registry.register(self.scores)

    def scored(self, version: str, scores: np.ndarray) -> None:
        """Count a batch of rows scored by `version` and add their scores."""
        self.rows.labels(version).inc(len(scores))
        if self.scores is not None:
            self.scores.observe(version, scores)

    def answered(self, route: str, method: str, status: int, seconds: float) -> None:
        """Count one response and its latency."""
        self.requests.labels(route, method, str(status)).inc()
        self.latency.labels(route).observe(seconds)
        if status >= 400:
            self.errors.labels(route, str(status)).inc()
