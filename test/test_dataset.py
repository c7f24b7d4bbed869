"""Frame cache, batching, episode split, bag decoding once, augmentation and normalisation."""
from collections import Counter
import os

import matplotlib.colors
import numpy as np
import pytest
import torch

from vla_align.data.dataset import (
    DatasetError,
    FrameCache,
    FrameDataset,
    load_bag_cache,
    split_episodes,
)
from vla_align.data.episode import Episode, TaskInfo
from vla_align.data.normalization import NormalizationStats
from vla_align.data.state import STATE_DIM
from vla_align.data.transforms import brightness_contrast, random_shift
from vla_align.model.processing import frames_to_uint8_tensor


def make_episode(index: int, family: str = 'reach', length: int = 6,
                 success: bool = True) -> Episode:
    """Frames whose pixels, actions and states all encode (episode, step), so rows can be
    traced through the cache."""
    rng = np.random.default_rng(index)
    steps = np.arange(length, dtype=np.float32)
    actions = np.zeros((length, 7), np.float32)
    actions[:, 0] = index + steps / 100.0
    actions[:, 6] = steps % 2
    return Episode(
        task=TaskInfo(instruction=f'{family} the block number {index % 3}', family=family,
                      split='seen'),
        seed=index, images=rng.integers(0, 256, (length, 40, 40, 3), dtype=np.uint8),
        actions=actions, ee_positions=np.tile(steps[:, None], (1, 3)),
        ee_orientations=np.tile([0.0, 0.0, 0.0, 1.0], (length, 1)).astype(np.float32),
        grippers=np.zeros(length, np.float32),
        success=success, control_hz=10.0)


@pytest.fixture
def episodes() -> list[Episode]:
    families = ['reach', 'pick', 'push']
    return [make_episode(i, families[i % 3], length=4 + i % 3, success=i != 4)
            for i in range(9)]


def test_cache_holds_every_frame_resized_once(episodes):
    cache = FrameCache.from_episodes(episodes, image_size=32)
    assert len(cache) == sum(len(e) for e in episodes)
    assert cache.images.shape == (len(cache), 3, 32, 32) and cache.images.dtype == np.uint8
    record = cache.episodes[5]
    rows = slice(record.start, record.start + record.length)
    np.testing.assert_array_equal(cache.images[rows],
                                  frames_to_uint8_tensor(episodes[5].images, 32).numpy())
    np.testing.assert_array_equal(cache.actions[rows], episodes[5].actions)
    np.testing.assert_array_equal(cache.states[rows], episodes[5].states())
    # Instructions are deduplicated: equal texts share one id.
    assert len(cache.instructions) == len({e.task.instruction for e in episodes})
    for record, episode in zip(cache.episodes, episodes, strict=True):
        ids = cache.instruction_ids[record.start:record.start + record.length]
        assert {cache.instructions[i] for i in ids} == {episode.task.instruction}


def test_cache_save_and_load_round_trip(episodes, tmp_path):
    cache = FrameCache.from_episodes(episodes, image_size=24)
    cache.save(tmp_path / 'c')
    loaded = FrameCache.load(tmp_path / 'c')
    assert isinstance(loaded.images, np.memmap)
    np.testing.assert_array_equal(loaded.images, cache.images)
    for name in ('actions', 'states', 'episode_ids', 'instruction_ids'):
        np.testing.assert_array_equal(getattr(loaded, name), getattr(cache, name))
    assert loaded.episodes == cache.episodes and loaded.instructions == cache.instructions


def test_dataset_gives_action_chunks_that_stop_at_the_episode_end(episodes):
    cache = FrameCache.from_episodes(episodes, image_size=16)
    dataset = FrameDataset(cache, [2], chunk_size=3)  # episode 2 has 6 frames
    batch = dataset.__getitems__([0, 4, 5])
    assert batch.images.shape == (3, 3, 16, 16) and batch.states.shape == (3, STATE_DIM)
    np.testing.assert_allclose(batch.actions[0, :, 0].numpy(), [2.00, 2.01, 2.02])
    np.testing.assert_allclose(batch.actions[1, :, 0].numpy(), [2.04, 2.05, 2.05])
    np.testing.assert_allclose(batch.actions[2, :, 0].numpy(), [2.05, 2.05, 2.05])
    assert batch.valid.tolist() == [[True, True, True], [True, True, False],
                                    [True, False, False]]
    assert set(batch.episode_ids.tolist()) == {2}


def test_split_is_by_episode_and_covers_every_family(episodes):
    cache = FrameCache.from_episodes(episodes, image_size=16)
    chosen = cache.select_episodes(only_successful=True)
    assert 4 not in chosen  # the failed episode is left out
    train, val = split_episodes(cache, chosen, val_fraction=0.3, seed=3)
    assert not set(train) & set(val) and sorted(train + val) == sorted(chosen)
    assert {cache.episodes[i].family for i in val} == {'reach', 'pick', 'push'}
    assert split_episodes(cache, chosen, 0.3, seed=3) == (train, val)
    train_rows = set(FrameDataset(cache, train).rows.tolist())
    assert not train_rows & set(FrameDataset(cache, val).rows.tolist())


@pytest.fixture
def fake_bags(tmp_path, monkeypatch, episodes):
    """Bag folders plus a stand-in contract reader that counts how often it parses a bag."""
    from vla_align.data import contract_reader

    bags = []
    for i in range(3):
        bag = tmp_path / 'bags' / f'ep{i}'
        bag.mkdir(parents=True)
        (bag / 'metadata.yaml').write_text(f'episode: {i}\n')
        bags.append(bag)
    reads = []

    def read_contract_episodes(path, contract, instruction=None):
        reads.append(path.name)
        if path.name == 'broken':
            raise contract_reader.ContractBagError(f'rosbag2 {path}: truncated mcap')
        episode = episodes[int(path.name[2:])]
        return contract_reader.BagEpisodes(path, [episode], len(episode) + 1,
                                           Counter({'frame without action': 1}))

    monkeypatch.setattr(contract_reader, 'read_contract_episodes', read_contract_episodes)
    return bags, reads


def test_bags_are_decoded_once_then_served_from_the_cache(fake_bags, tmp_path, episodes):
    bags, reads = fake_bags
    first = load_bag_cache(bags, tmp_path / 'cache', 32, progress=False)
    second = load_bag_cache(bags, tmp_path / 'cache', 32, progress=False)
    assert reads == ['ep0', 'ep1', 'ep2']
    np.testing.assert_array_equal(first.images, second.images)
    assert first.episodes[1].source == str(bags[1])
    # Another image size, or a bag that changed, is a different cache.
    load_bag_cache(bags, tmp_path / 'cache', 24, progress=False)
    (bags[0] / 'metadata.yaml').write_text('episode: 0 re-recorded\n')
    os.utime(bags[0] / 'metadata.yaml', ns=(1, 1))
    load_bag_cache(bags, tmp_path / 'cache', 32, progress=False)
    assert len(reads) == 9


def test_a_bag_that_does_not_meet_the_contract_is_named_and_training_goes_on(fake_bags,
                                                                            tmp_path):
    bags, _ = fake_bags
    broken = bags[0].parent / 'broken'
    broken.mkdir()
    cache = load_bag_cache([bags[0], broken], tmp_path / 'cache', 32, progress=False)
    assert [r.source for r in cache.episodes] == [str(bags[0])]
    report = cache.report
    assert (report.bags, report.bags_used, report.episodes) == (2, 1, 1)
    assert len(report.refused) == 1 and 'broken' in report.refused[0] \
        and 'truncated mcap' in report.refused[0]
    assert report.frames_used == len(cache) and report.frames_read == len(cache) + 1
    assert report.dropped == {'frame without action': 1}
    assert 'refused: rosbag2' in report.describe()
    assert cache.contract['name'] == 'sim_panda'


def test_no_usable_bag_is_an_error_naming_them_and_leaves_no_cache(fake_bags, tmp_path):
    broken = fake_bags[0][0].parent / 'broken'
    broken.mkdir()
    with pytest.raises(DatasetError, match='broken.*truncated mcap'):
        load_bag_cache([broken], tmp_path / 'cache', 32, progress=False)
    assert not list((tmp_path / 'cache').iterdir())


# -- augmentation ---------------------------------------------------------------------------------

def test_random_shift_translates_each_image_by_whole_pixels():
    images = torch.rand(8, 3, 20, 20)
    shifted = random_shift(images, 3, torch.Generator().manual_seed(0))
    padded = torch.nn.functional.pad(images, (3, 3, 3, 3), mode='replicate')
    offsets = set()
    for b in range(8):
        matches = [(dy, dx) for dy in range(7) for dx in range(7)
                   if torch.equal(padded[b, :, dy:dy + 20, dx:dx + 20], shifted[b])]
        assert matches, f'image {b} is not a crop of its padded self'
        offsets.add(matches[0])
    assert len(offsets) > 1  # per-sample offsets, not one per batch
    again = random_shift(images, 3, torch.Generator().manual_seed(0))
    assert torch.equal(shifted, again)


def test_photometric_jitter_keeps_every_hue():
    gen = torch.Generator().manual_seed(0)
    images = 0.3 + 0.3 * torch.rand(6, 3, 8, 8, generator=gen)  # mid-range: no clipping
    out = brightness_contrast(images, 0.2, 0.2, gen)
    assert not torch.allclose(out, images)

    def hue(x):
        return matplotlib.colors.rgb_to_hsv(x.permute(0, 2, 3, 1).numpy())[..., 0]

    np.testing.assert_allclose(hue(out), hue(images), atol=1e-4)


# -- normalisation --------------------------------------------------------------------------------

def test_normalisation_round_trips_and_leaves_the_gripper_alone(tmp_path):
    rng = np.random.default_rng(0)
    actions = rng.normal(0.01, 0.02, (100, 7)).astype(np.float32)
    actions[:, 3] = 0.0  # a dimension the expert never uses
    actions[:, 6] = rng.integers(0, 2, 100)
    stats = NormalizationStats.from_data(actions, rng.normal(size=(100, STATE_DIM)))
    normalised = stats.normalize_actions(actions)
    np.testing.assert_array_equal(normalised[:, 6], actions[:, 6])
    assert np.all(np.isfinite(normalised)) and np.abs(normalised[:, 3]).max() == 0.0
    np.testing.assert_allclose(stats.denormalize_actions(normalised), actions, atol=1e-6)
    as_tensor = stats.normalize_actions(torch.from_numpy(actions))
    np.testing.assert_allclose(as_tensor.numpy(), normalised, atol=1e-6)
    stats.save(tmp_path / 'n.json')
    loaded = NormalizationStats.load(tmp_path / 'n.json')
    for name in ('action_mean', 'action_std', 'state_mean', 'state_std'):
        np.testing.assert_array_equal(getattr(loaded, name), getattr(stats, name))


def _states(quaternions: np.ndarray) -> np.ndarray:
    out = np.zeros((len(quaternions), STATE_DIM), np.float32)
    out[:, :3] = (0.5, 0.0, 0.1)
    out[:, 3:7] = quaternions
    return out


def test_a_hand_pointing_down_never_flips_sign_where_w_crosses_zero():
    """A Panda hand pointing down is q = (1, 0, 0, ~0): a fixed w >= 0 rule flipped the whole
    quaternion for tiny wrist motions and broke the shipped policy's pick, put and stack. The
    statistics canonicalise against the training data's mean orientation instead."""
    rng = np.random.default_rng(1)
    tilt = rng.normal(0.0, 0.02, (200, 3))
    quaternions = np.concatenate([np.ones((200, 1)), tilt], axis=1)
    quaternions /= np.linalg.norm(quaternions, axis=1, keepdims=True)
    signs = rng.choice([-1.0, 1.0], (200, 1))  # as recorded: either sign
    stats = NormalizationStats.from_data(np.zeros((200, 7)), _states(signs * quaternions))
    np.testing.assert_allclose(np.abs(stats.orientation_reference), [1, 0, 0, 0], atol=0.01)
    assert stats.state_std[3:7].max() < 0.1  # the flips did not inflate the spread
    near = _states(np.array([[1.0, 0.0, 0.0, 1e-3], [1.0, 0.0, 0.0, -1e-3],
                             [-1.0, 0.0, 0.0, 1e-3], [-1.0, 0.0, 0.0, -1e-3]]))
    features = stats.normalize_states(near)
    # w = +-0.001 either side of zero and q vs -q: features at most 0.002 / std apart.
    spread = np.abs(features - features[0]).max(axis=0)
    assert spread[3:7].max() <= 0.0021 / stats.state_std[3:7].min()
    torch_features = stats.normalize_states(torch.from_numpy(near)).numpy()
    np.testing.assert_allclose(torch_features, features, atol=1e-5)


def test_the_mean_orientation_ignores_the_signs_it_is_given():
    from vla_align.data.state import mean_orientation

    rng = np.random.default_rng(2)
    q = rng.normal(size=(50, 4)) * 0.05 + np.array([0.0, 0.7, 0.0, 0.7])
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    flipped = q * rng.choice([-1.0, 1.0], (50, 1))
    np.testing.assert_allclose(mean_orientation(q), mean_orientation(flipped), atol=1e-9)
    assert abs(mean_orientation(q) @ np.array([0.0, 0.7071, 0.0, 0.7071])) > 0.99


def test_checkpoints_from_before_canonicalisation_take_their_reference_from_the_mean():
    """The shipped statistics: quaternion mean (1, 0, 0, -3e-6), std 1e-3. Its policy sees the
    same features whichever sign a robot reports, and no jump where w changes sign."""
    from pathlib import Path

    shipped = NormalizationStats.load(Path(__file__).resolve().parents[1] / 'checkpoints' /
                                      'default' / 'normalization.json')
    close = _states(np.array([[0.9998, 0.0, 0.02, 5e-4], [0.9998, 0.0, 0.02, -5e-4],
                              [-0.9998, 0.0, -0.02, 5e-4]]))
    a, b, c = shipped.normalize_states(close)
    np.testing.assert_allclose(a[:6], b[:6], atol=1e-4)  # only qw moved, by 1e-3 / std
    assert abs(a[6] - b[6]) <= 1.01e-3 / shipped.state_std[6]
    np.testing.assert_allclose(c, b, atol=1e-4)  # -q of the second
    assert np.abs(a[3:7]).max() < 30  # w >= 0 made one of them read as qx z = -2000
