"""Timing primitives: percentiles of repeated calls, and A/B variants timed interleaved.

Interleaving matters on a shared machine: a background job that slows one stretch of the run
slows every variant alike, so the ratio between variants stays meaningful even when the
absolute times do not.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
import contextlib
from dataclasses import asdict, dataclass, field
import time
from typing import Any, Optional

import numpy as np
from tqdm import tqdm


@dataclass(frozen=True)
class LatencyStats:
    """Distribution of ``count`` call durations, in milliseconds."""

    count: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    max_ms: float

    @classmethod
    def from_seconds(cls, seconds: Sequence[float] | np.ndarray) -> LatencyStats:
        values = np.asarray(seconds, dtype=np.float64) * 1e3
        if values.size == 0:
            raise ValueError('no timings to summarise')
        p50, p90, p99 = np.percentile(values, [50, 90, 99])
        return cls(count=int(values.size), p50_ms=float(p50), p90_ms=float(p90),
                   p99_ms=float(p99), mean_ms=float(values.mean()), max_ms=float(values.max()))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def time_calls(fn: Callable[[], Any], calls: int, warmup: int = 3,
               desc: Optional[str] = None, progress: bool = True) -> LatencyStats:
    """Durations of ``calls`` calls of ``fn`` after ``warmup`` untimed ones."""
    if calls < 1:
        raise ValueError(f'calls must be >= 1, got {calls}')
    for _ in range(warmup):
        fn()
    seconds = []
    for _ in tqdm(range(calls), desc=desc, disable=not progress or desc is None, leave=False):
        start = time.perf_counter()
        fn()
        seconds.append(time.perf_counter() - start)
    return LatencyStats.from_seconds(seconds)


@dataclass
class Variant:
    """One way of doing the same work: ``fn`` is timed; ``context`` (if given) is entered
    around each block of calls, e.g. to set a thread count."""

    name: str
    fn: Callable[[], Any]
    context: Optional[Callable[[], contextlib.AbstractContextManager]] = None


@dataclass(frozen=True)
class Comparison:
    """A baseline and an optimised variant timed interleaved in one run."""

    name: str  # what the optimisation is, e.g. 'channels_last'
    baseline: str  # the variant without it
    optimised: str  # the variant with it
    scope: str  # what was timed, e.g. 'policy step, batch 1'
    baseline_ms: LatencyStats
    optimised_ms: LatencyStats
    notes: str = ''
    max_abs_diff: Optional[float] = None  # largest output difference between the two, if known
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def speedup(self) -> float:
        """Baseline p50 / optimised p50: > 1 means the optimisation is faster."""
        return self.baseline_ms.p50_ms / self.optimised_ms.p50_ms

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out['speedup_p50'] = self.speedup
        out['speedup_p99'] = self.baseline_ms.p99_ms / self.optimised_ms.p99_ms
        return out


def time_interleaved(variants: Sequence[Variant], rounds: int, block: int = 5,
                     warmup: int = 2) -> dict[str, LatencyStats]:
    """Per-call durations of each variant, run in alternating blocks of ``block`` calls.

    Each round runs every variant for one block (after ``warmup`` untimed calls inside its
    context), so slow stretches of a busy machine hit all variants.
    """
    if rounds < 1 or block < 1:
        raise ValueError('rounds and block must be >= 1')
    names = [variant.name for variant in variants]
    if len(set(names)) != len(names):
        raise ValueError(f'variant names must be unique, got {names}')
    seconds: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(rounds):
        for variant in variants:
            context = variant.context() if variant.context else contextlib.nullcontext()
            with context:
                for _ in range(warmup):
                    variant.fn()
                for _ in range(block):
                    start = time.perf_counter()
                    variant.fn()
                    seconds[variant.name].append(time.perf_counter() - start)
    return {name: LatencyStats.from_seconds(values) for name, values in seconds.items()}
