"""Demonstrations through the robot path, end to end: the stand-in driven by the teleop node,
fed by the scripted operator, recorded by the episode recorder, read back through a contract."""
import io

import numpy as np
import pytest

from vla_align.data.bag_io import find_bags, open_bag_reader
from vla_align.data.contract import load_contract
from vla_align.data.contract_reader import read_contract_episodes
from vla_align.data.episode_meta import EpisodeMetadata
from vla_align.paths import share_path
from vla_align.ros.graph_config import load_graph_config
from vla_align.ros.launcher import GraphRunner, LineSink, graph_environment

pytestmark = [pytest.mark.ros, pytest.mark.slow]
pytest_plugins = ('ros_isolation',)  # fixtures: ros_environment, ros_context, spin


def test_recorded_teleop_episodes_are_robot_style_and_train_ready(ros_environment, tmp_path):
    out = tmp_path / 'episodes'
    config = load_graph_config(share_path('config', 'teleop_sim_graph.yaml')).with_arguments(
        {'output_dir': str(out), 'episodes': '3', 'action_noise': '0.0'})
    log = io.StringIO()
    outcome = GraphRunner(config, graph_environment(config.settings), LineSink(log)).run(
        timeout=150)
    assert (outcome.status, outcome.reason) == (0, 'scripted_operator finished'), \
        log.getvalue()[-3000:]
    bags = find_bags([out])
    assert [b.name for b in bags] == ['episode_0000', 'episode_0001', 'episode_0002']
    contract = load_contract('panda_servo_teleop')
    for bag, family in zip(bags, ('reach', 'pick', 'push'), strict=True):
        result = read_contract_episodes(bag, contract)
        # No privileged simulator topic in a robot-style bag: only the contract's.
        reader = open_bag_reader(bag)
        topics = set(reader.topics)
        reader.close()
        assert topics == set(contract.topics()), topics
        assert len(result.episodes) == 1, (bag.name, dict(result.dropped))
        (episode,) = result.episodes
        assert result.frames_used == result.frames_read >= 5, result.dropped
        assert episode.success and episode.task.instruction
        assert episode.task.family == ''  # the recorder cannot know the simulator's task
        moved = np.abs(episode.actions[:, :3]).sum(axis=1) > 1e-3
        assert moved.mean() > 0.5, f'{family}: the operator hardly moved the arm'
        assert np.all(np.abs(episode.actions[:, :3]) <= 0.03 + 1e-6)  # teleop full scale
        meta = EpisodeMetadata.from_json(_metadata_text(bag))
        assert (meta.operator, meta.robot, meta.contract) == ('scripted_operator', 'panda',
                                                              'panda_servo_teleop')
    assert '3 episodes saved' in log.getvalue()


def _metadata_text(bag) -> str:
    from vla_align.data import ros_messages as rm

    reader = open_bag_reader(bag)
    try:
        connections = [c for c in reader.connections if c.topic == '/vla/episode']
        return [rm.deserialize(d, rm.STRING).data
                for _c, _t, d in reader.messages(connections=connections)][-1]
    finally:
        reader.close()
