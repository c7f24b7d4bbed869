"""Safety gate, pacing and metrics of the policy node, tested without DDS."""
import math

from hypothesis import given, settings
from hypothesis import strategies as st
import numpy as np
import pytest

from vla_align.actions import ActionLimits
from vla_align.ros.metrics import RateMeter, summarize_latencies
from vla_align.ros.pacing import FramePacer
from vla_align.ros.safety import (
    BadInputLog,
    HoldReason,
    SafetyConfig,
    SafetyGate,
    StateChangeReporter,
    limit_change,
)

LIMITS = ActionLimits(max_translation=0.03, max_rotation=0.15)


def gate(**overrides) -> SafetyGate:
    config = dict(limits=LIMITS, max_image_age_s=0.5, max_translation_change=0.01,
                  max_rotation_change=0.05, alignment_threshold=0.2)
    config.update(overrides)
    return SafetyGate(SafetyConfig(**config))


def test_input_problems_in_order_of_precedence():
    g = gate()
    assert g.input_problem(None, 'pick') is HoldReason.NO_IMAGE
    assert g.input_problem(0.51, 'pick') is HoldReason.STALE_IMAGE
    assert g.input_problem(0.1, '   ') is HoldReason.NO_INSTRUCTION
    assert g.input_problem(0.1, 'pick up the cube') is None


def test_out_of_limit_outputs_are_clamped_and_flagged():
    g = gate(max_translation_change=0.0, max_rotation_change=0.0)
    decision = g.accept(np.array([1.0, -1.0, 0.01, 2.0, -2.0, 0.1, 3.0]))
    assert not decision.hold and decision.clamped
    assert np.allclose(decision.action, [0.03, -0.03, 0.01, 0.15, -0.15, 0.1, 1.0])
    assert LIMITS.contains(decision.action)


@pytest.mark.parametrize('bad', [math.nan, math.inf, -math.inf])
def test_non_finite_output_holds_still_with_the_gripper_unchanged(bad):
    g = gate(max_translation_change=0.0)
    g.accept(np.array([0.01, 0, 0, 0, 0, 0, 1.0]))
    decision = g.accept(np.array([0.01, bad, 0, 0, 0, 0, 0.0]))
    assert decision.hold and decision.reason is HoldReason.NON_FINITE
    assert np.array_equal(decision.action, [0, 0, 0, 0, 0, 0, 1.0])


def test_wrong_length_output_holds():
    assert gate().accept(np.zeros(6)).reason is HoldReason.NON_FINITE


def test_rate_limit_bounds_the_change_between_consecutive_actions():
    g = gate()
    first = g.accept(np.array([0.03, -0.03, 0, 0.15, 0, 0, 0]))
    assert first.rate_limited
    assert np.allclose(first.action[:6], [0.01, -0.01, 0, 0.05, 0, 0])
    second = g.accept(np.array([0.03, 0.03, 0, 0.15, 0, 0, 0]))
    assert np.allclose(second.action[:6], [0.02, 0.0, 0, 0.1, 0, 0])  # sign flip is ramped


def test_rate_limit_restarts_from_standstill_after_a_hold():
    g = gate()
    for _ in range(5):
        g.accept(np.array([0.03, 0, 0, 0, 0, 0, 0]))
    g.hold(HoldReason.STALE_IMAGE)
    assert g.accept(np.array([0.03, 0, 0, 0, 0, 0, 0])).action[0] == pytest.approx(0.01)


def test_gripper_is_not_rate_limited_and_holds_keep_it():
    g = gate()
    assert g.accept(np.array([0, 0, 0, 0, 0, 0, 1.0])).action[6] == 1.0
    hold = g.hold(HoldReason.NO_INSTRUCTION)
    assert np.array_equal(hold.action, [0, 0, 0, 0, 0, 0, 1.0]) and g.gripper == 1.0


def test_limit_change_with_zero_steps_is_disabled():
    out = limit_change(np.zeros(7), np.array([1, 1, 1, 1, 1, 1, 1.0]), 0.0, 0.0)
    assert np.array_equal(out, np.ones(7))


def test_ungrounded_instruction_is_flagged_and_refused_only_on_request():
    action = np.array([0.01, 0, 0, 0, 0, 0, 0])
    flagged = gate().accept(action, alignment=0.05)
    assert flagged.ungrounded and not flagged.hold
    assert not gate().accept(action, alignment=0.5).ungrounded
    assert not gate().accept(action, alignment=None).ungrounded
    assert not gate().accept(action, alignment=math.nan).ungrounded
    refused = gate(refuse_ungrounded=True).accept(action, alignment=0.05)
    assert refused.hold and refused.reason is HoldReason.UNGROUNDED


def test_config_refuses_meaningless_values():
    with pytest.raises(ValueError, match='max_image_age_s'):
        SafetyConfig(max_image_age_s=0.0)
    with pytest.raises(ValueError, match='max_rotation_change'):
        SafetyConfig(max_rotation_change=-1.0)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.floats(allow_nan=True, allow_infinity=True, width=32), min_size=0,
                max_size=9), st.one_of(st.none(), st.floats(allow_nan=True)))
def test_whatever_the_model_returns_the_published_action_is_finite_and_in_limits(raw, align):
    g = gate(refuse_ungrounded=True)
    decision = g.accept(np.array(raw, dtype=np.float64), alignment=align)
    assert decision.action.shape == (7,) and np.all(np.isfinite(decision.action))
    assert LIMITS.contains(decision.action)


def test_state_changes_are_reported_once():
    reporter = StateChangeReporter('acting again')
    assert reporter.update(None) is None  # starting fine is not news
    assert reporter.update(HoldReason.STALE_IMAGE) == 'holding still: camera image is stale'
    assert reporter.update(HoldReason.STALE_IMAGE) is None
    assert reporter.update(HoldReason.NO_INSTRUCTION) is not None
    assert reporter.update(None) == 'acting again'
    assert reporter.update(None) is None


def test_pacer_turns_a_30_hz_camera_into_an_even_10_hz_policy():
    pacer = FramePacer(10.0)
    times = np.arange(90) / 30.0  # 3 s of frames
    accepted = times[[pacer.ready(t) for t in times]]
    assert len(accepted) == 30
    assert np.allclose(np.diff(accepted), 0.1, atol=1e-9)


def test_pacer_at_the_camera_rate_accepts_every_jittered_frame():
    rng = np.random.default_rng(0)
    pacer = FramePacer(30.0)
    times = np.arange(300) / 30.0 + rng.uniform(-0.006, 0.006, 300)
    assert all(pacer.ready(t) for t in times)


def test_pacer_restarts_its_grid_after_a_gap():
    pacer = FramePacer(10.0)
    assert pacer.ready(0.0) and not pacer.ready(0.05)
    assert pacer.ready(5.0) and not pacer.ready(5.05) and pacer.ready(5.1)


def test_latency_summary_and_rate_meter():
    summary = summarize_latencies(np.arange(1, 101) / 1000.0)
    assert summary.count == 100 and summary.p50_ms == pytest.approx(50.5)
    assert summary.p99_ms == pytest.approx(99.01) and summary.max_ms == pytest.approx(100.0)
    assert math.isnan(summarize_latencies([]).p50_ms)
    meter = RateMeter(window_s=2.0)
    for t in np.arange(0, 4, 0.1):
        meter.tick(t)
    assert meter.rate(3.9) == pytest.approx(10.0, rel=0.06)
    assert meter.rate(10.0) == 0.0


def test_a_refused_instruction_holds_even_when_text_is_left():
    g = gate()
    assert g.input_problem(0.1, 'pick', instruction_refused=True) is HoldReason.BAD_INSTRUCTION
    assert g.input_problem(0.6, 'pick', instruction_refused=True) is HoldReason.STALE_IMAGE


def test_a_state_flapping_at_the_frame_rate_is_logged_once_per_period_with_a_count():
    reporter = StateChangeReporter('acting again', repeat_period_s=10.0)
    lines = []
    for i in range(200):  # good/bad frames alternating at 20 Hz for 10 s
        now = i * 0.05
        lines.append(reporter.update(HoldReason.BAD_IMAGE if i % 2 else None, now))
    said = [line for line in lines if line]
    assert said == ['holding still: camera image could not be decoded', 'acting again']
    assert reporter.update(None, 10.3) == ('acting again (entered 98 more times since this '
                                           'was last logged)')
    assert '99 more times' in reporter.update(HoldReason.BAD_IMAGE, 10.5)


def test_bad_input_log_counts_every_message_but_logs_each_kind_once_per_period():
    log = BadInputLog(period_s=5.0)
    lines = [log.report('image', f'reason {i}', i * 0.01) for i in range(1001)]  # 10 s
    pose = log.report('ee_pose', 'nan', 3.0)
    said = [line for line in lines if line]
    assert said[0] == 'ignoring bad image message: reason 0'
    assert len(said) == 3  # at 0 s, 5 s and 10 s
    assert said[1].startswith('ignoring bad image messages: 500 in the last 5 s')
    assert pose == 'ignoring bad ee_pose message: nan'  # kinds are throttled separately
    assert log.counts == {'image': 1001, 'ee_pose': 1} and log.total == 1002
    assert log.summary() == 'ee_pose:1,image:1001'


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(['image', 'pose', 'instruction']),
                          st.floats(min_value=0.0, max_value=0.5)), max_size=300))
def test_bad_input_log_lines_are_bounded_by_the_duration(events):
    log = BadInputLog(period_s=2.0)
    now, lines = 0.0, 0
    for kind, gap in events:
        now += gap
        lines += log.report(kind, 'x', now) is not None
    assert log.total == len(events)
    assert lines <= 3 * (1 + now / 2.0)
