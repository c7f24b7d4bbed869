"""What the policy node may publish: clamping, rate limits and the reasons to hold still.

The policy node asks ``SafetyGate`` before every publication. Every path ends in one of two
outcomes: a finite, in-limits action, or an explicit *hold* (zero motion, gripper unchanged).
A hold is published rather than silence so that a controller always receives a well-defined
command at the control rate (a controller that times out on silence behaves the same way).
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
import math
from typing import Optional

import numpy as np

from vla_align.actions import (
    GRIPPER,
    ROTATION,
    TRANSLATION,
    ActionLimits,
    UnsafeActionError,
    hold_action,
)


class HoldReason(str, Enum):
    """Why the node holds still; the value is the sentence written to the log."""

    NO_IMAGE = 'no camera image received yet'
    STALE_IMAGE = 'camera image is stale'
    BAD_IMAGE = 'camera image could not be decoded'
    NO_INSTRUCTION = 'no instruction set'
    NO_STATE = 'no robot state (/vla/ee_pose) received yet; the policy needs proprioception'
    SOURCE_NOT_READY = 'action source has no output yet'
    SOURCE_ERROR = 'action source failed'
    NON_FINITE = 'model output is not finite'
    UNGROUNDED = 'instruction is not grounded in the scene (alignment below threshold)'


@dataclass(frozen=True)
class SafetyConfig:
    limits: ActionLimits = ActionLimits()
    max_image_age_s: float = 0.5
    #: Largest change of a translation/rotation component between consecutive published
    #: actions (metres / radians per step); 0 disables the rate limit.
    max_translation_change: float = 0.03
    max_rotation_change: float = 0.15
    #: V-L alignment below this is flagged as ungrounded.
    alignment_threshold: float = 0.1
    refuse_ungrounded: bool = False

    def __post_init__(self) -> None:
        if not (self.max_image_age_s > 0 and math.isfinite(self.max_image_age_s)):
            raise ValueError(f'max_image_age_s must be positive, got {self.max_image_age_s!r}')
        for name in ('max_translation_change', 'max_rotation_change'):
            value = getattr(self, name)
            if not (value >= 0 and math.isfinite(value)):
                raise ValueError(f'{name} must be >= 0 (0 disables it), got {value!r}')


@dataclass(frozen=True)
class Decision:
    """What to publish for one control step."""

    action: np.ndarray  # (7,) float32, always finite and within limits
    reason: Optional[HoldReason]  # None when acting on the model output
    detail: str = ''
    clamped: bool = False  # the model output was outside the limits
    rate_limited: bool = False  # the change from the previous action was cut
    ungrounded: bool = False  # alignment below threshold (published anyway unless refused)

    @property
    def hold(self) -> bool:
        return self.reason is not None


def limit_change(previous: np.ndarray, target: np.ndarray, max_translation_change: float,
                 max_rotation_change: float) -> np.ndarray:
    """``target`` with each motion component moved at most the given step from ``previous``.

    The gripper is not rate limited: it is a binary open/close command.
    """
    out = np.asarray(target, dtype=np.float32).copy()
    for part, step in ((TRANSLATION, max_translation_change), (ROTATION, max_rotation_change)):
        if step > 0:
            out[part] = np.clip(out[part], previous[part] - step, previous[part] + step)
    return out


class SafetyGate:
    """Turns model outputs into publishable actions and remembers what was published last."""

    def __init__(self, config: SafetyConfig, initial_gripper: float = 0.0) -> None:
        self.config = config
        self._last = hold_action(initial_gripper)

    @property
    def gripper(self) -> float:
        """The last published gripper command (what a hold keeps)."""
        return float(self._last[GRIPPER])

    def set_gripper(self, gripper: float) -> None:
        """Adopt a measured gripper state, e.g. before the first command has been sent."""
        self._last = hold_action(gripper)

    def input_problem(self, image_age_s: Optional[float],
                      instruction: str) -> Optional[HoldReason]:
        """The reason to hold before running the model, or None when the inputs are usable.

        ``image_age_s`` is the time since the newest frame arrived (None: no frame yet).
        """
        if image_age_s is None:
            return HoldReason.NO_IMAGE
        if image_age_s > self.config.max_image_age_s:
            return HoldReason.STALE_IMAGE
        if not instruction.strip():
            return HoldReason.NO_INSTRUCTION
        return None

    def hold(self, reason: HoldReason, detail: str = '') -> Decision:
        """Zero motion, gripper unchanged. The rate limiter restarts from standstill."""
        self._last = hold_action(self.gripper)
        return Decision(action=self._last.copy(), reason=reason, detail=detail)

    def accept(self, raw_action: np.ndarray, alignment: Optional[float] = None) -> Decision:
        """Clamp and rate-limit a model output, or hold when it is unusable."""
        try:
            clamped = self.config.limits.clamp(raw_action)
        except UnsafeActionError as exc:
            return self.hold(HoldReason.NON_FINITE, str(exc))
        ungrounded = (alignment is not None and math.isfinite(alignment)
                      and alignment < self.config.alignment_threshold)
        if ungrounded and self.config.refuse_ungrounded:
            return self.hold(HoldReason.UNGROUNDED, f'alignment {alignment:.3f} < '
                                                    f'{self.config.alignment_threshold:.3f}')
        raw = np.asarray(raw_action, dtype=np.float32).reshape(-1)
        limited = limit_change(self._last, clamped, self.config.max_translation_change,
                               self.config.max_rotation_change)
        self._last = limited
        return Decision(action=limited.copy(), reason=None,
                        clamped=not np.array_equal(clamped, raw),
                        rate_limited=not np.array_equal(limited, clamped),
                        ungrounded=ungrounded)


class StateChangeReporter:
    """Says something only when a state changes, so a stale camera is logged once, not at 30 Hz.

    ``update`` returns the sentence to log, or None when the state is unchanged.
    """

    def __init__(self, ok_message: str) -> None:
        self._ok_message = ok_message
        self._state: object = 'initial'

    def update(self, state: Optional[HoldReason]) -> Optional[str]:
        if state == self._state:
            return None
        first = self._state == 'initial'
        self._state = state
        if state is None:
            return None if first else self._ok_message
        return f'holding still: {state.value}'
