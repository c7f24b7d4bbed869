"""The policy node's start-up checks of a checkpoint against where it is deployed.

* ``check_deployment``: the checkpoint's training conditions (``model.deployment``: control
  rate, action frame, language model content hash) against the node's settings; with
  ``deployment_checks: refuse`` a mismatch stops the start with one line naming it, ``warn``
  logs it.
* ``camera_mismatches``: the first camera frame against the checkpoint's camera geometry: a
  camera of another aspect ratio sees another field of view through the same crop.
* ``with_grounding``: the alignment threshold the checkpoint was calibrated with
  (``evaluation.grounding``), unless one is set, and a warning when ungrounded instructions are
  refused on a score that missed its targets.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Any, Optional

from vla_align.ros.params import StartupError
from vla_align.ros.policy_settings import (
    DEFAULT_THRESHOLD,
    THRESHOLD_FROM_CHECKPOINT,
    PolicyNodeSettings,
)

NODE_NAME = 'policy_node'


def check_deployment(source: Any, settings: PolicyNodeSettings, logger: Any) -> Any:
    """The checkpoint's ``DeploymentInfo`` (None: nothing to check); raises ``StartupError``."""
    policy = getattr(source, 'policy', None)
    if policy is None or not hasattr(policy, 'metadata'):
        return None  # expert relay, or a test's stand-in
    from vla_align.model.deployment import (
        compare_deployment,
        deployment_from_metadata,
        language_model_identity,
    )

    try:
        info = deployment_from_metadata(policy.metadata)
    except ValueError as exc:
        raise StartupError(f'{NODE_NAME}: the checkpoint has malformed deployment '
                           f'metadata: {exc}') from None
    if info is None:
        logger.warning('the checkpoint predates deployment metadata: its control rate, frame, '
                       'camera and language model cannot be checked')
        return None
    _name, language_hash = language_model_identity(policy.config)
    found = compare_deployment(info, control_rate_hz=settings.control_rate,
                               action_frame=settings.base_frame,
                               language_model_hash=language_hash)
    # The state source is not compared: a PoseStamped, TF or forward kinematics all give the
    # same tool pose in the base frame, in the layout data.state fixes.
    for mismatch in found:
        if settings.deployment_checks == 'refuse':
            raise StartupError(f'{NODE_NAME}: refused: {mismatch.message} (set '
                               f'deployment_checks: warn to start anyway)')
        logger.warning(f'deployment check: {mismatch.message}')
    return info


def camera_mismatches(info: Any, settings: PolicyNodeSettings,
                      shape: tuple[int, ...]) -> tuple[str, list[str]]:
    """(why the camera is refused, '' when it is not; warning lines) for a first frame of
    ``shape`` (H, W, ...)."""
    if info is None:
        return '', []
    from vla_align.model.deployment import compare_deployment

    found = [m for m in compare_deployment(
        info, control_rate_hz=settings.control_rate, action_frame=settings.base_frame,
        camera_width=int(shape[1]), camera_height=int(shape[0])) if m.field.startswith('camera')]
    refusal = ''
    warnings = []
    for mismatch in found:
        if settings.deployment_checks == 'refuse' and mismatch.field == 'camera_aspect_ratio':
            refusal = mismatch.message
        else:
            warnings.append(f'deployment check: {mismatch.message}')
    return refusal, warnings


def with_grounding(settings: PolicyNodeSettings, logger: Any) -> PolicyNodeSettings:
    """``settings`` with the alignment threshold resolved (module docstring)."""
    from vla_align.evaluation.grounding import checkpoint_grounding
    from vla_align.ros.sources import resolve_checkpoint_path

    calibration: Optional[dict[str, Any]] = None
    if settings.source == 'checkpoint' and settings.checkpoint:
        try:
            calibration = checkpoint_grounding(resolve_checkpoint_path(settings.checkpoint))
        except (OSError, ValueError) as exc:
            logger.warning(f"ignoring the checkpoint's grounding calibration: {exc}")
    threshold = settings.safety.alignment_threshold
    if threshold == THRESHOLD_FROM_CHECKPOINT:
        threshold = DEFAULT_THRESHOLD if calibration is None else float(calibration['threshold'])
    if settings.safety.refuse_ungrounded and (calibration is None
                                              or not calibration.get('meets_targets')):
        logger.warning("refuse_ungrounded is on, but this checkpoint's grounding score "
                       + ('was never calibrated' if calibration is None else
                          f"missed its targets (AUC {calibration['test']['all']['auc']:.2f})")
                       + ': grounded instructions may be refused and ungrounded ones acted on')
    return replace(settings, safety=replace(settings.safety, alignment_threshold=threshold))
