"""Success rates with Wilson score intervals, and latency percentiles.

The Wilson interval (Wilson 1927; "method 3" in Newcombe, Statistics in Medicine 17:857, 1998)
is used rather than the normal approximation because evaluation cells are small (50 episodes)
and rates sit near 0 or 1, where the normal interval collapses to zero width or leaves [0, 1].
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
import math
from typing import Any, Optional

import numpy as np

#: Two-sided 95 % standard-normal quantile.
Z_95 = 1.959963984540054


@dataclass(frozen=True)
class Interval:
    """A closed interval [low, high]."""

    low: float
    high: float

    def to_list(self) -> list[float]:
        return [self.low, self.high]


def wilson_interval(successes: int, trials: int, z: float = Z_95) -> Interval:
    """Wilson score interval for a binomial proportion ``successes / trials``.

    centre = (p + z²/2n) / (1 + z²/n),  half-width = z / (1 + z²/n) · sqrt(p(1-p)/n + z²/4n²).
    """
    if isinstance(successes, bool) or isinstance(trials, bool):
        raise ValueError('successes and trials must be integers, not booleans')
    if int(trials) != trials or int(successes) != successes:
        raise ValueError(f'successes and trials must be integers, got {successes!r}/{trials!r}')
    if trials < 1:
        raise ValueError(f'a success rate needs at least one trial, got {trials}')
    if not 0 <= successes <= trials:
        raise ValueError(f'successes must be in 0..{trials}, got {successes}')
    if not z > 0:
        raise ValueError(f'z must be positive, got {z}')
    n, p = float(trials), successes / trials
    z2 = z * z
    denominator = 1.0 + z2 / n
    centre = (p + z2 / (2.0 * n)) / denominator
    half = z / denominator * math.sqrt(p * (1.0 - p) / n + z2 / (4.0 * n * n))
    # At k = 0 and k = n one bound is exactly 0 or 1; rounding must not push it outside.
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == trials else min(1.0, centre + half)
    return Interval(low, high)


@dataclass(frozen=True)
class SuccessRate:
    """k successes in n episodes, with the 95 % Wilson interval."""

    episodes: int
    successes: int

    def __post_init__(self) -> None:
        wilson_interval(self.successes, self.episodes)  # validates the counts

    @property
    def rate(self) -> float:
        return self.successes / self.episodes

    @property
    def ci95(self) -> Interval:
        return wilson_interval(self.successes, self.episodes)

    @classmethod
    def from_outcomes(cls, outcomes: Iterable[bool]) -> SuccessRate:
        flags = [bool(o) for o in outcomes]
        return cls(episodes=len(flags), successes=sum(flags))

    def __add__(self, other: SuccessRate) -> SuccessRate:
        return SuccessRate(self.episodes + other.episodes, self.successes + other.successes)

    def to_dict(self) -> dict[str, Any]:
        return {'episodes': self.episodes, 'successes': self.successes,
                'success_rate': self.rate, 'ci95': self.ci95.to_list()}


def mcnemar_exact_p(only_first: int, only_second: int) -> float:
    """Two-sided exact McNemar p-value for paired outcomes (the same seeded episodes run two
    ways): ``only_first`` episodes succeeded only the first way, ``only_second`` only the
    second. Under "neither way is better" each discordant pair is a fair coin, so this is the
    binomial test of ``min(b, c)`` in ``b + c`` tosses; 1.0 when nothing is discordant."""
    if only_first < 0 or only_second < 0:
        raise ValueError('counts must be >= 0')
    n = only_first + only_second
    if n == 0:
        return 1.0
    k = min(only_first, only_second)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2.0 ** n
    return min(1.0, 2.0 * tail)


def pooled(rates: Iterable[SuccessRate]) -> Optional[SuccessRate]:
    """All episodes of several cells counted together (None when there are none)."""
    total: Optional[SuccessRate] = None
    for rate in rates:
        total = rate if total is None else total + rate
    return total


@dataclass(frozen=True)
class LatencySummary:
    """Percentiles of per-step latencies in milliseconds."""

    count: int
    mean: float
    p50: float
    p90: float
    p99: float
    max: float

    def to_dict(self) -> dict[str, Any]:
        return {'count': self.count, 'mean': self.mean, 'p50': self.p50, 'p90': self.p90,
                'p99': self.p99, 'max': self.max}


def summarize_latency(samples_ms: Sequence[float]) -> Optional[LatencySummary]:
    """Mean and p50/p90/p99/max of ``samples_ms``; None when there are no samples."""
    values = np.asarray(samples_ms, dtype=np.float64)
    if values.size == 0:
        return None
    if not np.all(np.isfinite(values)) or np.any(values < 0):
        raise ValueError('latencies must be finite and non-negative')
    p50, p90, p99 = np.percentile(values, [50, 90, 99])
    return LatencySummary(count=int(values.size), mean=float(values.mean()), p50=float(p50),
                          p90=float(p90), p99=float(p99), max=float(values.max()))
