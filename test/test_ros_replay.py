"""Live replay: bag player -> policy node -> recorder gives the numbers of the offline path."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from test_eval_bag import make_policy, varied_episode
import torch

from vla_align.data.bag_io import write_episode_bag
from vla_align.data.bag_source import read_bag_frames, read_policy_recording
from vla_align.evaluation.bag_eval import EvalBagOptions, evaluate_bags, predict_offline
from vla_align.ros.graph_config import load_graph_config
from vla_align.ros.launcher import GraphRunner, LineSink, graph_environment

pytestmark = pytest.mark.ros
pytest_plugins = ('ros_isolation',)  # fixtures: ros_environment, ros_context, spin

ROOT = Path(__file__).resolve().parents[1]
REPLAY_GRAPH = ROOT / 'config' / 'replay_graph.yaml'


def camera_sized(episode, height: int = 480, width: int = 640):
    """The episode's frames at a robot camera's size (921 KB each: over Fast DDS's default
    shared-memory segment, so the graph's large-message profile must be in force)."""
    from dataclasses import replace

    levels = episode.images[:, :1, :1, :1]
    episode.images = np.broadcast_to(levels, (len(levels), height, width, 3)).copy()
    episode.images[:, ::7, ::5, 1] = 255 - levels[:, 0]  # some structure for the resize
    episode.camera = replace(episode.camera, width=width, height=height)
    return episode


def test_live_replay_matches_offline_scoring(tmp_path, ros_environment):
    torch.set_num_threads(1)
    policy = make_policy()
    policy.save(tmp_path / 'ckpt')
    episode = camera_sized(varied_episode(6))
    bag = tmp_path / 'bag'
    write_episode_bag(episode, bag)
    recording = tmp_path / 'rec'
    config = load_graph_config(REPLAY_GRAPH).with_overrides([
        f'bag_player_node.bag={bag}', 'bag_player_node.rate=2.0',
        'bag_player_node.start_delay_s=1.5', f'record.output={recording}',
        f'policy_node.checkpoint={tmp_path / "ckpt"}', 'policy_node.device=cpu',
        # A random policy's V-L score hovers around the default grounding threshold, so the
        # node flips between grounded and ungrounded here (it once crashed on that).
        'policy_node.pace_rate_hz=50.0'])
    log = io.StringIO()
    graph = GraphRunner(config, graph_environment(config.settings), LineSink(log))
    # The player exits 0 after the bag (exit_when_done), which ends the graph normally.
    outcome = graph.run(timeout=150)
    assert (outcome.status, outcome.reason) == (0, 'bag_player_node finished'), \
        log.getvalue()[-3000:]
    recorder = next(n for n in graph.nodes if n.name == 'record')
    assert recorder.poll() == 0, log.getvalue()[-3000:]
    lines = log.getvalue().splitlines()
    closed = next(i for i, line in enumerate(lines) if 'messages written' in line)
    policy_lines = [i for i, line in enumerate(lines) if line.startswith('[policy_node]')]
    assert policy_lines[-1] < closed, 'the recorder closed its bag before the policy stopped'

    frames = read_bag_frames(bag)
    assert frames.images.shape[1:] == (480, 640, 3)
    recorded = read_bag_frames(recording, instruction='x').images  # what the recorder got
    assert len(recorded) == len(frames), 'camera frames lost in transport'
    options = EvalBagOptions(gripper_state='policy', latency_samples=0)
    offline = predict_offline(policy, frames, options).actions
    live = read_policy_recording(recording, frames)
    assert live.cut_short == 0  # stopped after the policy, the recorder has whole decisions
    answered = np.all(np.isfinite(live.actions), axis=1)
    # The node acts on the newest frame: on a loaded machine it may skip one, rarely more.
    assert answered.sum() >= len(frames) - 2, log.getvalue()[-3000:]
    np.testing.assert_allclose(live.actions[answered], offline[answered], atol=1e-4)
    assert len(live.latencies_ms) == answered.sum() and min(live.latencies_ms) > 0

    offline_report = evaluate_bags([bag], options, policy=policy, progress=False)
    live_report = evaluate_bags([bag], options, recordings=[recording], progress=False)
    off, on = offline_report.overall(), live_report.overall()
    assert on.frames == answered.sum() and off.frames == len(frames)
    assert on.position_error_m == pytest.approx(off.position_error_m, rel=0.25, abs=1e-4)
    assert on.gripper_accuracy == pytest.approx(off.gripper_accuracy, abs=2 / len(frames))
    assert live_report.latency is not None and live_report.latency.count == answered.sum()
