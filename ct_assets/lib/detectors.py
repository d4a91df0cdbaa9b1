"""Streaming change detectors over a monitored series (one value per partition).

`PageHinkley` watches the mean of a series — the mean score per partition, or the error rate once
labels arrive — for gradual or concept drift that per-partition distribution tests miss. Its
state serialises to JSON, so a detector can resume from one partition to the next.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any


class PageHinkley:
    """Page-Hinkley test for a change in the mean of a series, as river's `drift.PageHinkley`.

    After each value x: the running mean x̄ includes x; `up = alpha·up + (x - x̄ - δ)` and
    `down = alpha·down + (x - x̄ + δ)`; an increase is detected when `up - min(up) > λ`, a decrease
    when `max(down) - down > λ` (mode "both": either), once at least `min_instances` values were
    seen. After a detection the next `update` starts afresh. River's defaults are kept
    (min_instances 30, delta 0.005, threshold λ 50, alpha 0.9999), which suit raw values; for
    per-partition means use a smaller `min_instances` and a threshold on the series' scale. One
    difference: the running maximum of `down` starts at -inf (river starts it at -1).

    Attributes:
        min_instances: Values needed before a detection.
        delta: Magnitude of change tolerated.
        threshold: Detection threshold λ.
        alpha: Forgetting factor of the cumulative sums.
        mode: "up", "down" or "both".
    """

    MODES = ("up", "down", "both")

    def __init__(self, min_instances: int = 30, delta: float = 0.005, threshold: float = 50.0,
                 alpha: float = 1 - 0.0001, mode: str = "both") -> None:
        if mode not in self.MODES:
            raise ValueError(f"mode must be one of {', '.join(self.MODES)}, got {mode!r}")
        self.min_instances = int(min_instances)
        self.delta = float(delta)
        self.threshold = float(threshold)
        self.alpha = float(alpha)
        self.mode = mode
        self._drift_detected = False
        self.reset()

    def reset(self) -> None:
        """Forget the series (keeps the parameters)."""
        self.n = 0
        self.mean = 0.0
        self.sum_up = 0.0
        self.sum_down = 0.0
        self.min_up = math.inf
        self.max_down = -math.inf
        self._drift_detected = False

    @property
    def drift_detected(self) -> bool:
        """Whether the last `update` detected a change."""
        return self._drift_detected

    @property
    def statistics(self) -> tuple[float, float]:
        """The current increase and decrease test values (`up - min(up)`, `max(down) - down`)."""
        if self.n == 0:
            return 0.0, 0.0
        return self.sum_up - self.min_up, self.max_down - self.sum_down

    def update(self, x: float) -> bool:
        """Add one value; return whether a change is detected now."""
        x = float(x)
        if self._drift_detected:
            self.reset()
        self.n += 1
        self.mean += (x - self.mean) / self.n
        deviation = x - self.mean
        self.sum_up = self.alpha * self.sum_up + deviation - self.delta
        self.sum_down = self.alpha * self.sum_down + deviation + self.delta
        self.min_up = min(self.min_up, self.sum_up)
        self.max_down = max(self.max_down, self.sum_down)
        if self.n >= self.min_instances:
            increase, decrease = self.statistics
            up, down = increase > self.threshold, decrease > self.threshold
            self._drift_detected = bool({"up": up, "down": down, "both": up or down}[self.mode])
        return self._drift_detected

    def to_dict(self) -> dict[str, Any]:
        """Parameters and state as a JSON-compatible dict (infinities as None)."""
        def finite(value: float) -> float | None:
            return value if math.isfinite(value) else None

        return {"min_instances": self.min_instances, "delta": self.delta,
                "threshold": self.threshold, "alpha": self.alpha, "mode": self.mode,
                "n": self.n, "mean": self.mean, "sum_up": self.sum_up,
                "sum_down": self.sum_down, "min_up": finite(self.min_up),
                "max_down": finite(self.max_down), "drift_detected": self._drift_detected}

    @classmethod
    def from_dict(cls, state: Mapping[str, Any]) -> PageHinkley:
        """Rebuild a detector saved with `to_dict`."""
        detector = cls(min_instances=state["min_instances"], delta=state["delta"],
                       threshold=state["threshold"], alpha=state["alpha"], mode=state["mode"])
        detector.n = int(state["n"])
        detector.mean = float(state["mean"])
        detector.sum_up = float(state["sum_up"])
        detector.sum_down = float(state["sum_down"])
        min_up, max_down = state["min_up"], state["max_down"]
        detector.min_up = math.inf if min_up is None else float(min_up)
        detector.max_down = -math.inf if max_down is None else float(max_down)
        detector._drift_detected = bool(state["drift_detected"])
        return detector


def page_hinkley_scan(values: Iterable[float | None], **params: Any) -> list[int]:
    """Indices of `values` at which a `PageHinkley(**params)` detects a change.

    The detector starts afresh after each detection. Missing values (None, NaN) are skipped but
    keep their index.
    """
    detector = PageHinkley(**params)
    alarms = []
    for index, value in enumerate(values):
        if value is None or not math.isfinite(value):
            continue
        if detector.update(value):
            alarms.append(index)
    return alarms
