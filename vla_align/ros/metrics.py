"""Rolling latency percentiles and event rates for diagnostics and the latency probe."""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class LatencySummary:
    count: int
    p50_ms: float
    p99_ms: float
    max_ms: float
    mean_ms: float


def summarize_latencies(seconds: list[float] | np.ndarray) -> LatencySummary:
    """p50/p99/max/mean in milliseconds (NaN when there are no samples)."""
    values = np.asarray(seconds, dtype=np.float64) * 1e3
    if values.size == 0:
        return LatencySummary(0, float('nan'), float('nan'), float('nan'), float('nan'))
    return LatencySummary(count=int(values.size), p50_ms=float(np.percentile(values, 50)),
                          p99_ms=float(np.percentile(values, 99)), max_ms=float(values.max()),
                          mean_ms=float(values.mean()))


class LatencyWindow:
    """The last ``size`` latency samples (seconds)."""

    def __init__(self, size: int = 300) -> None:
        self._samples: deque[float] = deque(maxlen=size)

    def add(self, seconds: float) -> None:
        self._samples.append(seconds)

    def summary(self) -> LatencySummary:
        return summarize_latencies(list(self._samples))


class RateMeter:
    """Events per second over a sliding time window (timestamps in seconds, monotonic)."""

    def __init__(self, window_s: float = 5.0) -> None:
        if window_s <= 0:
            raise ValueError(f'window must be positive, got {window_s!r}')
        self.window_s = window_s
        self._times: deque[float] = deque()

    def tick(self, now: float) -> None:
        self._times.append(now)
        self._trim(now)

    def rate(self, now: float) -> float:
        self._trim(now)
        if len(self._times) < 2:
            return 0.0
        span = now - self._times[0]
        return (len(self._times) - 1) / span if span > 0 else 0.0

    def _trim(self, now: float) -> None:
        while self._times and self._times[0] < now - self.window_s:
            self._times.popleft()
