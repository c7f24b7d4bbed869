"""When the policy node runs the model: on each new frame, at most at the control rate.

Running on frame arrival (instead of on a free-running timer) removes up to one control period
of waiting from the camera -> action latency; the pacer keeps the output on a fixed grid so a
30 Hz camera drives a 10 Hz policy at 10 Hz, not at whatever rate frames happen to arrive.
"""
from __future__ import annotations

import math
from typing import Optional


class FramePacer:
    """Accepts a frame when its slot on the control grid has (almost) come.

    The grid advances by whole periods from the previous accepted slot, so jitter does not
    drift the rate; a frame up to ``tolerance`` of a period early counts for its slot (camera
    and controller clocks are never exactly aligned). After a gap longer than a period the grid
    restarts at the next accepted frame.
    """

    def __init__(self, rate_hz: float, tolerance: float = 0.25) -> None:
        if not (rate_hz > 0 and math.isfinite(rate_hz)):
            raise ValueError(f'rate must be positive, got {rate_hz!r}')
        if not 0 <= tolerance < 1:
            raise ValueError(f'tolerance is a fraction of a period in [0, 1), got {tolerance!r}')
        self.period = 1.0 / rate_hz
        self.tolerance = tolerance
        self._next_slot: Optional[float] = None

    def ready(self, now: float) -> bool:
        """True when a frame arriving at ``now`` should be processed (and books the slot)."""
        if self._next_slot is None or now >= self._next_slot + self.period:
            self._next_slot = now + self.period
            return True
        if now >= self._next_slot - self.tolerance * self.period:
            self._next_slot += self.period
            return True
        return False
