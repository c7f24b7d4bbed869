"""What produces the policy node's actions: the ``ActionSource`` protocol and its three kinds.

* ``checkpoint`` — the trained ``vla_align.model.policy.Policy`` loaded from a checkpoint.
* ``random`` — the same Policy class from ``PolicyConfig.tiny()`` with random weights: real
  model cost, meaningless actions; for latency measurements and wiring tests.
* ``expert`` — relays the scripted expert's suggestion that the sim node publishes on
  /vla/expert_action. Simulation only (the expert reads privileged simulator state); it makes
  the full node graph demonstrable before a trained checkpoint exists, and every relayed action
  still passes the policy node's safety gate like a model output would.

The node only needs ``step`` and ``encode_instruction``, so tests can pass any object with them.
"""
from __future__ import annotations

from dataclasses import dataclass
import math
from pathlib import Path
from typing import Optional, Protocol

import numpy as np

from vla_align.evaluation.grounding import checkpoint_grounding
from vla_align.evaluation.grounding_score import (
    colour_contrast,
    contrast_direction,
    grounding_score,
)
from vla_align.model.chunking import DEFAULT_EXECUTION, ChunkExecution, ChunkRunner
from vla_align.paths import share_path
from vla_align.ros.params import StartupError

SOURCE_KINDS: tuple[str, ...] = ('checkpoint', 'random', 'expert')


class SourceNotReady(RuntimeError):
    """The source has nothing to say yet (e.g. no expert suggestion has arrived)."""


@dataclass(frozen=True)
class SourceStep:
    """One output: a raw 7-DoF action (unclamped), the V-L alignment and the grounding score
    the safety gate judges (`vla_align.evaluation.grounding_score`), None when
    unknown; a source without a grounding score is judged by its alignment."""

    action: np.ndarray
    alignment: Optional[float] = None
    grounding: Optional[float] = None


class ActionSource(Protocol):
    """Anything that maps (image, instruction, state) to an action, like ``Policy``.

    A source may also have ``needs_state = True``: the node then holds until it has the robot
    state instead of calling ``step`` without it.
    """

    def encode_instruction(self, text: str) -> None:
        """Prepare for a new instruction (the node calls this once per change)."""

    def step(self, image: np.ndarray, instruction: str,
             state: Optional[np.ndarray]) -> SourceStep:
        """One action for an (H, W, 3) uint8 RGB image; may raise ``SourceNotReady``."""


class PolicySource:
    """Adapts ``vla_align.model.policy.Policy`` (or anything with its ``step``) to the node.

    A checkpoint with action chunks runs through a `ChunkRunner` (temporal ensembling). Its
    chunks are placed in time by ``frame_time``, the stamp of the frame each step sees (the
    node sets it), so a skipped frame leaves a gap as it should. With ``lockstep`` (the node
    paces faster than its control rate: a lockstep simulator, a replay faster than recorded)
    every step is one control period after the last, whatever the clock says.

    With a checkpoint's grounding calibration (``grounding``, its grounding.json) each step
    also carries the grounding score: the V-L alignment joined with the instruction's
    familiarity and its colour contrast in this frame. Familiarity and the contrast direction
    are computed once per instruction; each step adds one dot product.
    """

    def __init__(self, policy: object, control_hz: float = 10.0,
                 execution: ChunkExecution = DEFAULT_EXECUTION, lockstep: bool = False,
                 grounding: Optional[dict] = None) -> None:
        self.policy = policy
        familiar = getattr(policy, 'instruction_familiarity', None)
        self.grounding = grounding if familiar is not None and grounding and \
            grounding.get('familiarity') else None
        if self.grounding is not None:
            policy.reference_embeddings()  # encoded now, not when the first instruction comes
        self._familiarity: Optional[float] = None
        self._contrast_direction: Optional[np.ndarray] = None
        #: The model was trained with proprioception and cannot act without the state vector.
        self.needs_state = bool(getattr(getattr(policy, 'config', None), 'use_proprio', False))
        chunk = getattr(getattr(policy, 'config', None), 'chunk_size', 1)
        self.runner = ChunkRunner(policy, control_hz, execution) if chunk > 1 else None
        self.lockstep = lockstep
        self.frame_time = 0.0  # seconds; set by the node before each step
        self._steps = 0
        self._restart = False

    def encode_instruction(self, text: str) -> None:
        self._steps, self._restart = 0, False
        self._familiarity = (None if self.grounding is None
                             else self.policy.instruction_familiarity(text))
        self._contrast_direction = (
            contrast_direction(self.policy, text, self.grounding.get('colours'))
            if self.grounding is not None and self.grounding.get('contrast') else None)
        if self.runner is not None:
            self.runner.encode_instruction(text)
            return
        encode = getattr(self.policy, 'encode_instruction', None)
        if encode is not None:
            encode(text)

    def restart_task(self) -> None:
        """Forget earlier chunks before the next step (safe to call from another thread)."""
        self._restart = True

    def step(self, image: np.ndarray, instruction: str,
             state: Optional[np.ndarray]) -> SourceStep:
        if self.runner is None:
            out = self.policy.step(image, instruction, state=state)
        else:
            if self._restart:
                self._restart, self._steps = False, 0
                self.runner.reset()
            time_s = (self._steps * self.runner.ensembler.period_s if self.lockstep
                      else self.frame_time)
            self._steps += 1
            out = self.runner.step(image, instruction, state, time_s)
        alignment = getattr(out, 'alignment', None)
        alignment = None if alignment is None else float(alignment)
        grounding = None
        if alignment is not None and self.grounding is not None:
            contrast = colour_contrast(getattr(out, 'vision_embedding', None),
                                       self._contrast_direction)
            grounding = grounding_score(alignment, self.grounding, self._familiarity, contrast)
        return SourceStep(action=np.asarray(out.action, dtype=np.float32),
                          alignment=alignment, grounding=grounding)


class ExpertRelaySource:
    """The newest expert suggestion from the simulator, if it is recent enough.

    The node feeds ``offer`` from its /vla/expert_action subscription; ``step`` ignores the
    image: the expert already saw the simulator state that produced it.
    """

    def __init__(self, max_age_s: float) -> None:
        self.max_age_s = max_age_s
        self._action: Optional[np.ndarray] = None
        self._received_at = -math.inf
        self.now = 0.0  # set by the node before each step (monotonic seconds)

    def offer(self, action: np.ndarray, received_at: float) -> None:
        self._action = np.asarray(action, dtype=np.float32)
        self._received_at = received_at

    def encode_instruction(self, text: str) -> None:
        """The expert knows its task from the simulator; nothing to encode."""

    def step(self, image: np.ndarray, instruction: str,
             state: Optional[np.ndarray]) -> SourceStep:
        if self._action is None:
            raise SourceNotReady('no expert suggestion received on /vla/expert_action yet '
                                 '(is the sim node running with publish_expert_action: true?)')
        if self.now - self._received_at > self.max_age_s:
            raise SourceNotReady(f'the newest expert suggestion is older than '
                                 f'{self.max_age_s:g} s')
        return SourceStep(action=self._action.copy(), alignment=None)


#: Architectures for ``random``: tiny (fast tests) or the default PolicyConfig (real cost).
RANDOM_CONFIGS: tuple[str, ...] = ('tiny', 'default')


def resolve_checkpoint_path(checkpoint: str) -> Path:
    """``checkpoint`` as given, or, when it is relative and absent from the working directory,
    the same path under the package share directory (so configs can name the shipped
    ``checkpoints/default`` wherever the package is installed)."""
    path = Path(checkpoint).expanduser()
    if checkpoint and not path.is_absolute() and not path.exists():
        shipped = share_path(*path.parts)
        if shipped.exists():
            return shipped
    return path


def load_policy_source(kind: str, checkpoint: str = '', device: str = 'auto',
                       random_config: str = 'tiny', torch_threads: int = 1,
                       control_hz: float = 10.0, execution: ChunkExecution = DEFAULT_EXECUTION,
                       lockstep: bool = False) -> PolicySource:
    """The model-backed source for ``kind`` 'checkpoint' or 'random' (``control_hz``,
    ``execution`` and ``lockstep``: how a checkpoint with action chunks runs, `PolicySource`).

    ``torch_threads`` sets torch's intra-op CPU threads (0 keeps torch's default). One thread
    is the default: at batch 1 the convolutions gain little from more, and OpenMP workers that
    spin between operations starve the DDS threads of a small machine (measured on the 2-core
    development machine: 2 threads made the default model's p99 step time 60x worse under load).

    Raises ``StartupError`` with the reason when the model package or the checkpoint is not
    usable, so the node can say so instead of printing a traceback.
    """
    if kind not in ('checkpoint', 'random'):
        raise StartupError(f'unknown model source {kind!r}; expected checkpoint or random')
    path = resolve_checkpoint_path(checkpoint)
    if kind == 'checkpoint' and not checkpoint:
        raise StartupError("source 'checkpoint' needs the 'checkpoint' parameter: the path "
                           'of a trained checkpoint (or use source: random / expert)')
    if kind == 'checkpoint' and not path.exists():
        raise StartupError(f'checkpoint {str(path)!r} does not exist')
    if kind == 'random' and random_config not in RANDOM_CONFIGS:
        raise StartupError(f'unknown random_config {random_config!r}; expected one of '
                           f'{", ".join(RANDOM_CONFIGS)}')
    try:
        import torch

        from vla_align.model.checkpoint import CheckpointError
        from vla_align.model.config import PolicyConfig
        from vla_align.model.policy import Policy
    except ImportError as exc:
        raise StartupError(f'the policy model cannot be imported ({exc}); use source: expert '
                           f'with the simulator until it is installed') from None
    if torch_threads > 0:
        torch.set_num_threads(torch_threads)
    if kind == 'checkpoint':
        try:
            return PolicySource(Policy.from_checkpoint(path, device=device), control_hz,
                                execution, lockstep, grounding=calibration_of(path))
        except CheckpointError as exc:  # its message already names the checkpoint
            raise StartupError(one_line(f'cannot load checkpoint: {exc}')) from None
        except Exception as exc:  # noqa: BLE001 - any loading failure is a start-up error
            raise StartupError(one_line(f'cannot load checkpoint {str(path)!r}: '
                                        f'{type(exc).__name__}: {exc}')) from None
    config = PolicyConfig.tiny() if random_config == 'tiny' else PolicyConfig()
    try:
        return PolicySource(Policy.from_config(config, device=device), control_hz,
                            execution, lockstep)
    except Exception as exc:  # noqa: BLE001 - e.g. the language model folder is missing
        raise StartupError(one_line(f'cannot build a random {random_config} policy: '
                                    f'{exc}')) from None


def calibration_of(checkpoint: Path) -> Optional[dict]:
    """The checkpoint's grounding calibration; None when it has none or it is unreadable (the
    node's deployment checks log why)."""
    try:
        return checkpoint_grounding(checkpoint)
    except (OSError, ValueError):
        return None


def one_line(message: str) -> str:
    """``message`` with its line breaks folded: a start-up error is one log line."""
    return ' '.join(message.split())
