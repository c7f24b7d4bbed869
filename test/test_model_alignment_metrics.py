"""Retrieval metrics, their chance levels, modality gap and action error."""
from itertools import combinations

import numpy as np
import pytest

from vla_align.evaluation.alignment_metrics import (
    action_errors,
    alignment_metrics,
    identical_action_ids,
    modality_gap,
    retrieval_scores,
)


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_rank_counts_better_irrelevant_candidates():
    query = unit(np.array([[1.0, 0.0]]))
    angles = np.deg2rad([10.0, 20.0, 30.0, 40.0])  # candidate 2 is the third most similar
    candidates = np.stack([np.cos(angles), np.sin(angles)], 1)
    relevant = np.array([[False, False, True, False]])
    scores = retrieval_scores(query, candidates, relevant)
    assert scores.mean_rank == 3 and scores.recall_at_1 == 0 and scores.recall_at_5 == 1


def test_chance_levels_match_enumeration():
    """Chance for 10 candidates with 2 relevant, against all placements of the relevant two."""
    n, p = 10, 2
    placements = list(combinations(range(1, n + 1), p))
    first = np.array([min(c) for c in placements])
    relevant = np.zeros((1, n), bool)
    relevant[0, :p] = True
    scores = retrieval_scores(unit(np.ones((1, 3))), unit(np.random.default_rng(0)
                                                           .normal(size=(n, 3))), relevant)
    assert scores.chance_recall_at_1 == pytest.approx(np.mean(first <= 1))
    assert scores.chance_recall_at_5 == pytest.approx(np.mean(first <= 5))
    assert scores.chance_mean_rank == pytest.approx(first.mean())


def test_language_retrieval_deduplicates_instructions():
    rng = np.random.default_rng(0)
    lang_of = unit(rng.normal(size=(2, 8)))
    ids = np.array([0, 0, 0, 1, 1, 1])
    language = lang_of[ids]
    vision = unit(language + 0.05 * rng.normal(size=language.shape))  # well aligned
    action = unit(rng.normal(size=(6, 8)))
    metrics = alignment_metrics(vision, language, action, ids)
    v2l, l2v = metrics['retrieval']['V->L'], metrics['retrieval']['L->V']
    assert v2l['num_candidates'] == 2 and v2l['chance_recall_at_1'] == pytest.approx(0.5)
    assert v2l['recall_at_1'] == 1.0 and l2v['num_queries'] == 2 and l2v['recall_at_1'] == 1.0
    assert metrics['retrieval']['V->A']['num_candidates'] == 6


def test_random_embeddings_score_near_chance():
    rng = np.random.default_rng(1)
    n = 400
    vision, action = unit(rng.normal(size=(n, 16))), unit(rng.normal(size=(n, 16)))
    scores = alignment_metrics(vision, vision, action, np.arange(n))['retrieval']['V->A']
    assert scores['recall_at_5'] < 0.05 and abs(scores['mean_rank'] - (n + 1) / 2) < 0.1 * n


def test_modality_gap_is_the_centroid_distance():
    a = np.array([[1.0, 0.0], [0.0, 1.0]])
    assert modality_gap(a, a) == 0.0
    assert modality_gap(a, -a) == pytest.approx(np.sqrt(2.0))


def test_identical_actions_share_an_id():
    actions = np.array([[0.03, 0.0], [0.03, 0.0], [0.01, 0.0]])
    ids = identical_action_ids(actions)
    assert ids[0] == ids[1] != ids[2]


def test_action_error_against_the_mean_action_baseline():
    true = np.zeros((4, 7))
    true[:, 0] = [0.01, -0.01, 0.03, -0.03]
    true[:, 6] = [1, 1, 0, 0]
    errors = action_errors(true.copy(), true, true.mean(0))
    assert errors['mae']['dx'] == 0 and errors['baseline_mae']['dx'] == pytest.approx(0.02)
    assert errors['gripper_accuracy'] == 1.0 and errors['baseline_gripper_accuracy'] == 0.5
