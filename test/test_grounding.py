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
