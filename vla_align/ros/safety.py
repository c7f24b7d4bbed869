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
    BAD_INSTRUCTION = 'instruction refused (too long or not printable text)'
    NO_STATE = 'no valid robot state; the policy needs proprioception'
    STALE_STATE = 'robot state is stale'
    DISABLED = 'motion is disabled (dry run)'
    DEPLOYMENT = 'the camera does not match the checkpoint (deployment_checks: refuse)'
    SOURCE_NOT_READY = 'action source has no output yet'
    SOURCE_ERROR = 'action source failed'
    NON_FINITE = 'model output is not finite'
    UNGROUNDED = ('instruction is not grounded: an unfamiliar request or one the scene does not '
                  'match (grounding score below threshold)')


@dataclass(frozen=True)
class Workspace:
    """The box the commanded end-effector position must stay in (base frame, metres)."""

    low: tuple[float, float, float]
    high: tuple[float, float, float]

    def __post_init__(self) -> None:
        low, high = np.asarray(self.low, float), np.asarray(self.high, float)
        if low.shape != (3,) or high.shape != (3,) or not np.all(np.isfinite(low)) \
                or not np.all(np.isfinite(high)) or np.any(low >= high):
            raise ValueError(f'workspace needs 3 finite low < high values, got {self.low} '
                             f'and {self.high}')

    def limit(self, position: np.ndarray, delta: np.ndarray) -> np.ndarray:
        """``delta`` (3,) cut so that ``position + delta`` stays in the box; from outside the box
        only motion towards it is allowed (the arm is never driven further out)."""
        position = np.asarray(position, np.float64)
        low = np.minimum(np.asarray(self.low), position)
        high = np.maximum(np.asarray(self.high), position)
        target = np.clip(position + np.asarray(delta, np.float64), low, high)
        return (target - position).astype(np.float32)

    def contains(self, position: np.ndarray, atol: float = 1e-6) -> bool:
        p = np.asarray(position, float)
        return bool(np.all(p >= np.asarray(self.low) - atol)
                    and np.all(p <= np.asarray(self.high) + atol))


@dataclass(frozen=True)
class SafetyConfig:
    limits: ActionLimits = ActionLimits()
    max_image_age_s: float = 0.5
    #: Largest change of a translation/rotation component between consecutive published
    #: actions (metres / radians per step); 0 disables the rate limit.
    max_translation_change: float = 0.03
    max_rotation_change: float = 0.15
    #: A grounding score (V-L units) below this is flagged as ungrounded.
    alignment_threshold: float = 0.1
    refuse_ungrounded: bool = False
    #: Where the commanded end effector may go (None: no box).
    workspace: Optional[Workspace] = None
    #: Hold when the newest robot state is older than this (s).
    max_state_age_s: float = 0.5

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
    ungrounded: bool = False  # grounding below threshold (published anyway unless refused)
    workspace_limited: bool = False  # the motion was cut at the workspace box

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

    def input_problem(self, image_age_s: Optional[float], instruction: str,
                      instruction_refused: bool = False) -> Optional[HoldReason]:
        """The reason to hold before running the model, or None when the inputs are usable.

        ``image_age_s`` is the time since the newest frame arrived (None: no frame yet);
        ``instruction_refused`` says the newest instruction message was unusable (the node
        then holds rather than carry on with an older task).
        """
        if image_age_s is None:
            return HoldReason.NO_IMAGE
        if image_age_s > self.config.max_image_age_s:
            return HoldReason.STALE_IMAGE
        if instruction_refused:
            return HoldReason.BAD_INSTRUCTION
        if not instruction.strip():
            return HoldReason.NO_INSTRUCTION
        return None

    def hold(self, reason: HoldReason, detail: str = '') -> Decision:
        """Zero motion, gripper unchanged. The rate limiter restarts from standstill."""
        self._last = hold_action(self.gripper)
        return Decision(action=self._last.copy(), reason=reason, detail=detail)

    def accept(self, raw_action: np.ndarray, alignment: Optional[float] = None,
               position: Optional[np.ndarray] = None) -> Decision:
        """Clamp and rate-limit a model output, or hold when it is unusable; with the measured
        end-effector ``position`` the translation is also kept inside the workspace box."""
        try:
            clamped = self.config.limits.clamp(raw_action)
        except UnsafeActionError as exc:
            return self.hold(HoldReason.NON_FINITE, str(exc))
        ungrounded = (alignment is not None and math.isfinite(alignment)
                      and alignment < self.config.alignment_threshold)
        if ungrounded and self.config.refuse_ungrounded:
            return self.hold(HoldReason.UNGROUNDED, f'grounding score {alignment:.3f} < '
                                                    f'{self.config.alignment_threshold:.3f}')
        raw = np.asarray(raw_action, dtype=np.float32).reshape(-1)
        limited = limit_change(self._last, clamped, self.config.max_translation_change,
                               self.config.max_rotation_change)
        boxed = limited
        if self.config.workspace is not None and position is not None:
            boxed = limited.copy()
            boxed[TRANSLATION] = self.config.workspace.limit(position, limited[TRANSLATION])
        self._last = boxed
        return Decision(action=boxed.copy(), reason=None,
                        clamped=not np.array_equal(clamped, raw),
                        rate_limited=not np.array_equal(limited, clamped),
                        ungrounded=ungrounded,
                        workspace_limited=not np.array_equal(boxed, limited))


class StateChangeReporter:
    """Says something only when a state changes, so a stale camera is logged once, not at 30 Hz.

    ``update`` returns the sentence to log, or None when there is nothing new to say. With
    ``repeat_period_s`` (and ``now`` passed to ``update``) a state that comes back within that
    period of its last log line is not logged again, so inputs that flip between good and bad
    at the frame rate cannot flood the log; the next line for that state says how often it
    recurred meanwhile.
    """

    def __init__(self, ok_message: str, repeat_period_s: float = 0.0) -> None:
        self._ok_message = ok_message
        self._state: object = 'initial'
        self._repeat_period_s = repeat_period_s
        self._logged_at: dict[object, float] = {}
        self._suppressed: dict[object, int] = {}

    def update(self, state: Optional[HoldReason], now: Optional[float] = None) -> Optional[str]:
        if state == self._state:
            return None
        first = self._state == 'initial'
        self._state = state
        if state is None and first:
            return None
        if now is not None and self._repeat_period_s > 0:
            last = self._logged_at.get(state)
            if last is not None and now - last < self._repeat_period_s:
                self._suppressed[state] = self._suppressed.get(state, 0) + 1
                return None
            self._logged_at[state] = now
        message = self._ok_message if state is None else f'holding still: {state.value}'
        repeats = self._suppressed.pop(state, 0)
        if repeats:
            message += f' (entered {repeats} more times since this was last logged)'
        return message


class BadInputLog:
    """Counts malformed messages per kind and decides which of them to log.

    The first bad message of a kind is logged with its reason; later ones of that kind at most
    once per ``period_s``, with the number seen since. ``counts`` is what diagnostics show.
    """

    def __init__(self, period_s: float = 10.0) -> None:
        self.period_s = period_s
        self.counts: dict[str, int] = {}
        self._logged_at: dict[str, float] = {}
        self._since_log: dict[str, int] = {}

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def report(self, kind: str, reason: str, now: float) -> Optional[str]:
        """Count one bad ``kind`` message; returns the line to log, or None to stay quiet."""
        self.counts[kind] = self.counts.get(kind, 0) + 1
        self._since_log[kind] = self._since_log.get(kind, 0) + 1
        last = self._logged_at.get(kind)
        if last is not None and now - last < self.period_s:
            return None
        count = self._since_log.pop(kind)
        self._logged_at[kind] = now
        if last is None:
            return f'ignoring bad {kind} message: {reason}'
        return (f'ignoring bad {kind} messages: {count} in the last {now - last:.0f} s, '
                f'newest: {reason}')

    def summary(self) -> str:
        """``kind:count`` pairs for diagnostics, e.g. ``image:3,pose:1``."""
        return ','.join(f'{k}:{v}' for k, v in sorted(self.counts.items()))
