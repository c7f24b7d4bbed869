"""The grounding score's evaluation: the ungrounded set, AUC, calibration and verdicts."""
import numpy as np
import pytest

from vla_align.evaluation.grounding import (
    KINDS,
    absent_object_requests,
    auc,
    calibrate,
    judge,
    ungrounded_requests,
)
from vla_align.evaluation.grounding_score import (
    apply_calibration,
    check_block,
    colour_variants,
    contrast_direction,
    grounding_score,
)
from vla_align.sim.suite import load_suite


def test_auc_counts_pairs_and_ties():
    assert auc(np.array([0.9, 0.8]), np.array([0.1, 0.2])) == 1.0
    assert auc(np.array([0.1]), np.array([0.9])) == 0.0
    assert auc(np.array([0.5]), np.array([0.5])) == 0.5
    assert np.isnan(auc(np.array([]), np.array([0.1])))


def test_absent_object_requests_name_nothing_on_the_table():
    suite = load_suite()
    scene = {'red block', 'blue bowl', 'green block'}
    rng = np.random.default_rng(0)
    for family in ('pick', 'put', 'stack', 'reach', 'push'):
        requests = absent_object_requests(suite, family, 'seen', scene, rng, 3)
        assert len(requests) == 3
        for text in requests:
            assert not any(colour in text.split() for colour in ('red', 'blue', 'green')), text


def test_every_scene_gets_every_kind_of_ungrounded_request():
    requests = ungrounded_requests(load_suite(), 'pick', 'paraphrase', {'red block'},
                                   np.random.default_rng(1))
    assert set(requests) == set(KINDS) and all(len(v) == 2 for v in requests.values())


def rows(true_scores, bad_scores, split='seen'):
    return ([{'split': split, 'kind': 'true', 'score': s} for s in true_scores]
            + [{'split': split, 'kind': 'nonsense', 'score': s} for s in bad_scores])


def test_calibration_flags_two_percent_of_true_instructions_and_judges_held_out_scenes():
    rng = np.random.default_rng(2)
    calibration = rows(rng.normal(0.5, 0.1, 1000), rng.normal(-0.3, 0.1, 1000))
    threshold = calibrate(calibration)
    assert np.mean([r['score'] < threshold for r in calibration if r['kind'] == 'true']) == \
        pytest.approx(0.02, abs=0.002)
    test = rows(rng.normal(0.5, 0.1, 500), rng.normal(-0.3, 0.1, 500), 'crowded')
    verdict = judge(test, threshold)
    assert verdict['crowded']['auc'] > 0.99 and verdict['all']['true_flagged'] < 0.05
    assert verdict['crowded']['per_kind']['nonsense']['passed'] < 0.01
    overlapping = judge(rows(rng.normal(0.1, 0.2, 500), rng.normal(0.0, 0.2, 500)), threshold)
    # Scores that shifted since calibration: poor AUC, and most true instructions flagged.
    assert overlapping['seen']['auc'] < 0.7 and overlapping['seen']['true_flagged'] > 0.5


def scored(kind, vl, familiarity, split='seen'):
    return {'split': split, 'kind': kind, 'vl': vl, 'familiarity': familiarity}


def test_a_request_is_flagged_when_either_check_fails():
    """Chat scores like a true instruction on V-L (the V-L head never saw chat) but is
    unfamiliar; an absent object is familiar text but does not match the scene. Each check alone
    passes one of them; the joined score flags both and keeps the true instructions."""
    rng = np.random.default_rng(4)

    def scenes(n, split='seen'):
        def kind(name, vl_mean, familiar_mean):
            return [scored(name, v, f, split) for v, f in zip(
                rng.normal(vl_mean, 0.1, n), rng.normal(familiar_mean, 0.05, n), strict=True)]

        return (kind('true', 0.3, 0.8) + kind('non_manipulation', 0.3, 0.3)
                + kind('absent_object', -0.3, 0.8))

    calibration = scenes(1000)
    block = check_block(calibration, 'familiarity')
    apply_calibration(calibration, {'familiarity': block})
    threshold = calibrate(calibration)
    test = scenes(500, 'crowded')
    apply_calibration(test, {'familiarity': block})
    verdict = judge(test, threshold)['crowded']
    assert verdict['auc'] > 0.99 and verdict['true_flagged'] < 0.05
    assert verdict['auc_vl'] < 0.8 and verdict['auc_familiarity'] < 0.8  # each alone fails
    assert verdict['per_kind']['non_manipulation']['passed'] < 0.01
    assert verdict['per_kind']['absent_object']['passed'] < 0.01
    # The joined score is the two gates: below the threshold exactly when either check is.
    for row in test:
        mapped = block['vl_anchor'] + (row['familiarity'] - block['anchor']) * block['scale']
        assert (row['score'] < threshold) == (row['vl'] < threshold or mapped < threshold)


def test_without_training_instructions_the_score_is_the_vl_score():
    rows_ = [scored('true', 0.3, None), scored('nonsense', 0.1, None)]
    assert check_block(rows_, 'familiarity') is None
    apply_calibration(rows_, {'familiarity': None})
    assert [r['score'] for r in rows_] == [0.3, 0.1]
    assert grounding_score(0.3, None, familiarity=0.9, contrast=-5.0) == 0.3
    assert judge(rows_, 0.2)['seen']['auc_familiarity'] is None


def test_a_low_colour_contrast_flags_a_request_the_vl_score_passes():
    """An absent colour can have a raw V-L score like a true instruction's (a scene offset);
    its colour contrast is low, and with a contrast block the joined score flags it. A check
    the calibration has no block for changes nothing (older grounding.json files)."""
    rng = np.random.default_rng(5)
    true = [{'split': 'seen', 'kind': 'true', 'vl': v, 'familiarity': 0.9, 'contrast': c}
            for v, c in zip(rng.normal(0.3, 0.1, 1000), rng.normal(0.2, 0.05, 1000),
                            strict=True)]
    absent = [{'split': 'seen', 'kind': 'absent_object', 'vl': v, 'familiarity': 0.9,
               'contrast': c} for v, c in zip(rng.normal(0.3, 0.1, 1000),
                                              rng.normal(-0.1, 0.05, 1000), strict=True)]
    blocks = {'familiarity': check_block(true, 'familiarity'),
              'contrast': check_block(true, 'contrast')}
    apply_calibration(true + absent, blocks)
    threshold = calibrate(true)
    verdict = judge(true + absent, threshold)['seen']
    assert verdict['auc_vl'] < 0.6 and verdict['auc_contrast'] > 0.99 and verdict['auc'] > 0.99
    assert verdict['per_kind']['absent_object']['passed'] < 0.01
    assert grounding_score(0.3, {'familiarity': blocks['familiarity']}, 0.9, -1.0) == \
        grounding_score(0.3, {'familiarity': blocks['familiarity']}, 0.9, None)
    no_colour = {**absent[0], 'contrast': None}  # chat names no colour: judged without it
    apply_calibration([no_colour], blocks)
    assert no_colour['score'] == grounding_score(no_colour['vl'], blocks, 0.9)


def test_colour_variants_swap_each_colour_phrase_at_its_synonym_position():
    colours = {'red': ['red', 'crimson'], 'green': ['green', 'emerald'], 'blue': ['blue']}
    assert sorted(colour_variants('pick up the red block', colours)) == [
        'pick up the blue block', 'pick up the green block']
    assert sorted(colour_variants('grab the Crimson block', colours)) == [
        'grab the blue block', 'grab the emerald block']  # blue has no synonym: its canonical
    two = colour_variants('put the red block in the green bowl', colours)
    assert len(two) == 4 and 'put the red block in the red bowl' in two
    assert colour_variants('what time is it', colours) == []
    assert colour_variants('the redder one', colours) == []  # whole words only


def test_contrast_direction_scores_a_frame_by_one_dot_product(familiar_policy):
    colours = {'red': ['red'], 'green': ['green'], 'blue': ['blue']}
    text = 'pick up the red block'
    direction = contrast_direction(familiar_policy, text, colours)
    image = np.random.default_rng(6).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    state = np.array([0.4, 0.0, 0.3, 0.0, 0.0, 0.0, 1.0, 0.0], np.float32)
    step = familiar_policy.step(image, text, state)
    swapped = familiar_policy.step_batch(np.stack([image, image]), [
        'pick up the green block', 'pick up the blue block'], np.stack([state, state]))
    expected = step.alignment - np.mean([s.alignment for s in swapped])
    assert float(step.vision_embedding @ direction) == pytest.approx(expected, abs=1e-5)
    assert contrast_direction(familiar_policy, 'tell me a joke', colours) is None


@pytest.fixture(scope='module')
def familiar_policy():
    from vla_align.model.config import PolicyConfig
    from vla_align.model.policy import Policy

    policy = Policy.from_config(PolicyConfig.tiny(), device='cpu')
    policy.metadata['training_instructions'] = ['pick up the red block',
                                                'push the blue block to the left']
    return policy


def test_familiarity_is_highest_for_the_training_instructions_themselves(familiar_policy):
    assert familiar_policy.instruction_familiarity('pick up the red block') == \
        pytest.approx(1.0, abs=1e-4)
    rewording = familiar_policy.instruction_familiarity('lift the red block')
    chat = familiar_policy.instruction_familiarity('what time is it')
    assert chat < rewording < 1.0
    familiar_policy.metadata['training_instructions'] = []
    familiar_policy._reference_text = None
    assert familiar_policy.instruction_familiarity('pick up the red block') is None
