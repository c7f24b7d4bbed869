"""`vla-align eval-sim --via-ros`: the same seeded episodes through the ROS 2 graph.

The sim node's episode list and lockstep mode are tested in-process with a stand-in policy;
one end-to-end run drives the scripted expert through real node processes (the main job's graph,
the policy node relaying /vla/expert_action) and compares it with the in-process expert on the
same seeds, and one runs the shipped policy through the free-running graph against in-process
evaluation.
"""
import argparse
import json

import pytest
from rclpy.parameter import Parameter
from std_msgs.msg import Float32MultiArray, String

from vla_align.actions import hold_action
from vla_align.evaluation import sim_eval
from vla_align.evaluation.ros_eval import (
    AGREEMENT_JSON,
    IN_PROCESS_DIR,
    Agreement,
    RosTiming,
    evaluate_via_ros,
)
from vla_align.evaluation.sim_eval import EvalError, ExpertAgent
from vla_align.evaluation.sim_report import EpisodeRecord
from vla_align.evaluation.stats import SuccessRate
from vla_align.ros import qos, topics
from vla_align.ros.conversions import action_to_multiarray
from vla_align.ros.episode_status import EpisodeStatus
from vla_align.ros.params import StartupError
from vla_align.ros.sim_node import PlannedEpisode, SimNode, parse_episode_list
from vla_align.sim.suite import load_suite

pytest_plugins = ('ros_isolation',)  # fixtures: ros_environment, ros_context, spin


@pytest.fixture(scope='module')
def reach_seeds() -> list[int]:
    return load_suite().seeds('seen', 'eval', 2)


# -- the episode list ----------------------------------------------------------------------------
def test_episode_list_entries_parse_in_order():
    episodes = parse_episode_list(['seen:reach:7', ' paraphrase : pick : 12 '])
    assert episodes == [PlannedEpisode('seen', 'reach', 7),
                        PlannedEpisode('paraphrase', 'pick', 12)]
    assert [e.entry() for e in episodes] == ['seen:reach:7', 'paraphrase:pick:12']


@pytest.mark.parametrize('entry, words', [('seen:reach', 'split:family:seed'),
                                          ('seen:fly:3', 'family one of'),
                                          ('unseen:reach:3', 'split must be'),
                                          ('seen:reach:x', 'not an integer'),
                                          ('seen:reach:-1', '>= 0')])
def test_malformed_episode_list_entries_are_refused_with_the_entry_named(entry, words):
    with pytest.raises(ValueError, match=words) as info:
        parse_episode_list(['seen:reach:1', entry])
    assert repr(entry) in str(info.value)


def test_sim_node_refuses_an_episode_list_it_cannot_run(ros_context):
    with pytest.raises(StartupError, match='seen:fly:1'):
        SimNode(context=ros_context, parameter_overrides=[
            Parameter('episode_list', value=['seen:reach:1100000', 'seen:fly:1'])])


# -- lockstep ------------------------------------------------------------------------------------
class _Probe:
    """Records the sim node's statuses and frames; publishes actions on demand."""

    def __init__(self, context) -> None:
        from rclpy.node import Node
        from sensor_msgs.msg import Image

        self.node = Node('probe', context=context)
        self.frames = 0
        self.instructions: list[str] = []
        self.statuses: list[EpisodeStatus] = []
        self.node.create_subscription(Image, topics.IMAGE, self._on_image, qos.SENSOR_DATA)
        # Plays the instruction node: the sim waits for its instruction to come back.
        relay = self.node.create_publisher(String, topics.INSTRUCTION, qos.LATCHED)

        def on_instruction(msg) -> None:
            self.instructions.append(msg.data)
            relay.publish(msg)

        self.node.create_subscription(String, topics.INSTRUCTION_IN, on_instruction,
                                      qos.INSTRUCTION_INPUT)
        self.node.create_subscription(String, topics.EPISODE_STATUS, self._on_status,
                                      qos.EPISODE_STATUS)
        self.actions = self.node.create_publisher(Float32MultiArray, topics.ACTION, qos.COMMANDS)

    def _on_image(self, msg) -> None:
        self.frames += 1

    def _on_status(self, msg) -> None:
        self.statuses.append(EpisodeStatus.from_json(msg.data))

    @property
    def step(self) -> int:
        return self.statuses[-1].step if self.statuses else -1


def test_lockstep_sim_steps_once_per_action_and_waits_without_one(ros_context, spin,
                                                                  reach_seeds):
    sim = SimNode(context=ros_context, parameter_overrides=[
        Parameter('episode_list', value=[f'seen:reach:{reach_seeds[1]}']),
        Parameter('lockstep', value=True), Parameter('tick_rate', value=100.0),
        Parameter('action_timeout_s', value=60.0), Parameter('wait_for_policy', value=False)])
    probe = _Probe(ros_context)
    try:
        # Warm-up frame (no instruction yet), then the episode's instruction and first frame.
        assert spin([sim, probe.node], 5.0, until=lambda: probe.frames >= 2)
        assert probe.instructions and probe.statuses[-1].seed == reach_seeds[1]
        spin([sim, probe.node], 0.4)
        assert (probe.step, probe.frames) == (0, 2)  # no action: no step, no new frame
        for expected in (1, 2):
            probe.actions.publish(action_to_multiarray(hold_action(0.0)))
            assert spin([sim, probe.node], 3.0,
                        until=lambda e=expected: probe.step == e and probe.frames == e + 2)
            spin([sim, probe.node], 0.2)
            assert (probe.step, probe.frames) == (expected, expected + 2)
    finally:
        probe.node.destroy_node()
        sim.destroy_node()


def test_lockstep_sim_with_servo_input_steps_once_per_first_twist(ros_context, spin,
                                                                  reach_seeds):
    """Servo input in lockstep: the first twist after an observation answers it (a second one
    before the next observation is not applied), with the gripper command in force. At 2 ticks
    per second a twist waits up to 0.5 s for its step: in lockstep its age is judged at its
    arrival, so it is not stale (Servo's 0.1 s timeout)."""
    from geometry_msgs.msg import PoseStamped, TwistStamped
    from rclpy.qos import QoSProfile
    from std_msgs.msg import Float64MultiArray, Header

    sim = SimNode(context=ros_context, parameter_overrides=[
        Parameter('episode_list', value=[f'seen:reach:{reach_seeds[1]}']),
        Parameter('command_input', value='servo'), Parameter('lockstep', value=True),
        Parameter('tick_rate', value=2.0), Parameter('action_timeout_s', value=60.0),
        Parameter('wait_for_policy', value=False)])
    probe = _Probe(ros_context)
    twists = probe.node.create_publisher(TwistStamped, topics.SERVO_TWIST, QoSProfile(depth=1))
    gripper = probe.node.create_publisher(Float64MultiArray, topics.GRIPPER_COMMAND,
                                          QoSProfile(depth=1))
    poses = []
    probe.node.create_subscription(PoseStamped, topics.EE_POSE, poses.append, qos.DEFAULT)
    nodes = [sim, probe.node]

    def twist(vx):
        msg = TwistStamped(header=Header(stamp=probe.node.get_clock().now().to_msg(),
                                         frame_id='panda_link0'))
        msg.twist.linear.x = vx
        return msg

    try:
        assert spin(nodes, 8.0, until=lambda: probe.frames >= 2)
        gripper.publish(Float64MultiArray(data=[0.0]))  # close, held from now on
        spin(nodes, 1.2)
        assert (probe.step, probe.frames, len(poses)) == (0, 2, 2)  # no twist: no step
        for expected in (1, 2, 3):
            start_x = poses[-1].pose.position.x
            twists.publish(twist(0.2))  # the answer: +2 cm at 10 Hz
            spin(nodes, 0.1)
            twists.publish(twist(-0.2))  # after the answer: not applied
            assert spin(nodes, 3.0, until=lambda e=expected: probe.step == e
                        and probe.frames == len(poses) == e + 2)  # each frame with its pose
            assert poses[-1].pose.position.x > start_x + 0.002  # the first twist moved it
        spin(nodes, 1.2)
        assert (probe.step, probe.frames) == (3, 5)  # the late twists answered nothing
        assert sim._env.controller.gripper == 1.0  # the gripper command in force was applied
        assert sim._stats['twists_applied'] == 3 and sim._stats['stale_commands'] == 0
    finally:
        probe.node.destroy_node()
        sim.destroy_node()


# -- agreement -----------------------------------------------------------------------------------
def _record(seed: int, success: bool, steps: int, error=None) -> EpisodeRecord:
    return EpisodeRecord('seen', 'reach', seed, seed, success=success, steps=steps, error=error)


def test_agreement_counts_equal_outcomes_and_leaves_out_crashed_episodes():
    in_process = [_record(1, True, 10), _record(2, True, 12), _record(3, False, 40),
                  _record(4, True, 9)]
    ros = [_record(1, True, 10), _record(2, False, 40), _record(3, False, 40),
           _record(4, False, 0, error='did not finish')]
    agreement = Agreement.compare(in_process, ros)
    data = agreement.to_dict()
    assert (data['episodes_compared'], data['agreed']) == (3, 2)
    assert agreement.rate == pytest.approx(2 / 3)
    assert agreement.same_steps == pytest.approx(2 / 3)
    assert [(d['seed'], d['in_process_success'], d['ros_success'])
            for d in data['disagreements']] == [(2, True, False)]
    assert len(agreement.not_compared) == 1 and 'did not finish' in agreement.not_compared[0]


# -- end to end ----------------------------------------------------------------------------------
def test_expert_through_the_ros_graph_matches_in_process_on_the_same_seeds(
        ros_environment, tmp_path, reach_seeds):
    out = tmp_path / 'eval'
    result = evaluate_via_ros(ExpertAgent, splits=['seen'], families=['reach'], episodes=2,
                              out=out, timeout_s=120.0, domain_id=ros_environment,
                              progress=False, plots=False)
    assert [(r.seed, r.error) for r in result.ros.records] == [(s, None) for s in reach_seeds]
    assert all(r.success and 0 < r.steps for r in result.ros.records)
    # Lockstep: the same episodes, step for step.
    assert [r.steps for r in result.ros.records] == [r.steps for r in result.in_process.records]
    assert result.agreement.rate == 1.0 and result.agreement.same_steps == 1.0

    report = json.loads((out / 'report.json').read_text())
    cell = report['splits']['seen']['reach']
    assert (cell['episodes'], cell['successes'], cell['errors']) == (2, 2, 0)
    assert cell['ci95'][0] < 1.0 == cell['success_rate']
    assert report['config']['via_ros']['timing'] == 'lockstep'
    assert report['agreement']['agreement_rate'] == 1.0
    assert 'through the ROS 2 graph' in report['policy']
    assert json.loads((out / AGREEMENT_JSON).read_text())['episodes_compared'] == 2
    assert (out / IN_PROCESS_DIR / 'report.json').is_file()
    markdown = (out / 'report.md').read_text()
    assert '## Agreement with in-process evaluation' in markdown and '2/2 = 100 %' in markdown
    lines = (out / 'episodes.jsonl').read_text().splitlines()
    assert [json.loads(line)['seed'] for line in lines] == reach_seeds


@pytest.mark.slow
def test_the_free_running_main_graph_scores_what_in_process_evaluation_scores(
        ros_environment, tmp_path):
    """The main job (config/sim_graph.yaml: sim, instruction and policy nodes, free running at
    the control rate, families one after another) against in-process evaluation of the same
    seeded episodes with the shipped policy. Before the fix it lost every pick and put whose
    previous episode ended with the gripper closed (reach, push): one-sided disagreements that
    the exact McNemar test flags; timing noise alone disagrees rarely and both ways."""
    result = evaluate_via_ros('checkpoints/default', splits=['seen'], episodes=4,
                              timing=RosTiming(tick_rate=10.0), out=tmp_path / 'eval',
                              workers=1, domain_id=ros_environment, device='cpu',
                              progress=False, plots=False)
    families = [r.family for r in result.ros.records]
    assert families[:5] == ['reach', 'pick', 'push', 'put', 'stack']  # interleaved
    assert all(r.error is None for r in result.ros.records), result.agreement.not_compared
    agreement = result.agreement
    assert len(agreement.comparisons) == 20
    summary = (f'{agreement.only_in_process} only in-process, {agreement.only_ros} only via '
               f'ROS: {[c.to_dict() for c in agreement.comparisons if not c.agree]}')
    assert agreement.systematic_p >= 0.05, summary
    ros_rate = SuccessRate.from_outcomes(r.success for r in result.ros.records)
    in_process_rate = SuccessRate.from_outcomes(r.success for r in result.in_process.records)
    assert in_process_rate.ci95.low <= ros_rate.rate <= in_process_rate.ci95.high, summary


def test_bad_requests_are_refused_before_any_node_starts(tmp_path):
    with pytest.raises(EvalError, match='not a folder'):
        evaluate_via_ros(tmp_path / 'missing', families=['reach'], episodes=1, progress=False)
    with pytest.raises(EvalError, match='unknown families'):
        evaluate_via_ros(ExpertAgent, families=['fly'], episodes=1, progress=False)
    (tmp_path / 'done').mkdir()
    (tmp_path / 'done' / 'report.json').write_text('{}')
    with pytest.raises(EvalError, match='already holds'):
        evaluate_via_ros(ExpertAgent, families=['reach'], episodes=1, out=tmp_path / 'done',
                         progress=False)


def test_cli_refuses_via_ros_with_the_zero_policy(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    sim_eval.configure_parser(parser)
    args = parser.parse_args(['--zero-policy', '--via-ros', '--out', str(tmp_path / 'x')])
    assert sim_eval.run(args) == 2
    assert '--via-ros needs --checkpoint' in capsys.readouterr().err
    assert not (tmp_path / 'x').exists()
