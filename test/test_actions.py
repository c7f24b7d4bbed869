"""The action contract: limits are enforced and nothing non-finite passes."""
from hypothesis import given
from hypothesis import strategies as st
import numpy as np
import pytest

from vla_align.actions import (
    ACTION_DIM,
    ActionLimits,
    UnsafeActionError,
    hold_action,
    validate_action,
)

LIMITS = ActionLimits(max_translation=0.02, max_rotation=0.1)


@given(st.lists(st.floats(min_value=-1e6, max_value=1e6), min_size=7, max_size=7))
def test_clamped_actions_are_always_within_limits(values):
    out = LIMITS.clamp(np.array(values))
    assert LIMITS.contains(out)
    assert out.dtype == np.float32


def test_clamp_keeps_in_range_values_and_cuts_the_rest():
    action = np.array([0.01, -0.5, 0.0, 0.05, -0.3, 0.0, 1.7])
    out = LIMITS.clamp(action)
    np.testing.assert_allclose(out, [0.01, -0.02, 0.0, 0.05, -0.1, 0.0, 1.0], rtol=1e-6)
    assert not LIMITS.contains(action)


@pytest.mark.parametrize('bad', [np.nan, np.inf, -np.inf])
def test_non_finite_values_are_refused_not_clamped(bad):
    action = np.zeros(ACTION_DIM)
    action[2] = bad
    with pytest.raises(UnsafeActionError, match='non-finite'):
        LIMITS.clamp(action)
    assert not LIMITS.contains(action)


@pytest.mark.parametrize('shape', [(6,), (8,), (2, 7), (0,)])
def test_wrong_shapes_are_refused(shape):
    with pytest.raises(UnsafeActionError, match='7 values'):
        validate_action(np.zeros(shape))


def test_hold_is_zero_motion_with_the_gripper_kept():
    held = hold_action(0.8)
    assert held[:6].tolist() == [0.0] * 6 and held[6] == pytest.approx(0.8)
    assert hold_action(3.0)[6] == 1.0


@pytest.mark.parametrize('kwargs', [{'max_translation': 0.0}, {'max_rotation': -1.0},
                                    {'max_translation': float('nan')}])
def test_limits_refuse_nonsense_configuration(kwargs):
    with pytest.raises(ValueError):
        ActionLimits(**kwargs)
