"""Alignment metrics on held-out samples: cross-modal retrieval, modality gap, action error.

Retrieval is scored against chance so the numbers mean something:
- V->L ranks the DISTINCT instructions of the evaluation set for each image (many frames share
  an instruction; deduplicating makes the candidate set, and so chance, well defined:
  R@1 chance = 1/M for M distinct instructions).
- L->V ranks all N images for each distinct instruction; a hit is any frame of that
  instruction. With p relevant frames, chance R@k = 1 - C(N-p, k)/C(N, k) and chance mean rank
  (of the first relevant frame) = (N+1)/(p+1), averaged over queries.
- V->A and A->V rank the N samples of the other modality; relevant = samples whose action is
  identical to the query's (scripted experts repeat saturated actions), chance as above.
Ranks are 1-based; ties are broken in the query's favour. Embeddings are expected L2-normalised.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from math import comb
from typing import Any, Optional

import numpy as np

from vla_align.actions import ACTION_LABELS, GRIPPER


@dataclass(frozen=True)
class RetrievalScores:
    recall_at_1: float
    recall_at_5: float
    mean_rank: float
    chance_recall_at_1: float
    chance_recall_at_5: float
    chance_mean_rank: float
    num_queries: int
    num_candidates: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _chance_hit(num_candidates: int, num_relevant: int, k: int) -> float:
    k = min(k, num_candidates)
    return 1.0 - comb(num_candidates - num_relevant, k) / comb(num_candidates, k)


def retrieval_scores(queries: np.ndarray, candidates: np.ndarray,
                     relevant: np.ndarray) -> RetrievalScores:
    """queries (Q, D), candidates (C, D), relevant (Q, C) bool with >= 1 True per row."""
    relevant = np.asarray(relevant, dtype=bool)
    if relevant.shape != (len(queries), len(candidates)) or not relevant.any(1).all():
        raise ValueError('relevant must be (Q, C) with at least one relevant candidate per query')
    sims = np.asarray(queries, np.float64) @ np.asarray(candidates, np.float64).T  # (Q, C)
    best_relevant = np.where(relevant, sims, -np.inf).max(1, keepdims=True)  # (Q, 1)
    ranks = 1 + ((sims > best_relevant) & ~relevant).sum(1)  # (Q,)
    n_rel = relevant.sum(1)
    c = len(candidates)
    return RetrievalScores(
        recall_at_1=float(np.mean(ranks <= 1)), recall_at_5=float(np.mean(ranks <= 5)),
        mean_rank=float(ranks.mean()),
        chance_recall_at_1=float(np.mean([_chance_hit(c, p, 1) for p in n_rel])),
        chance_recall_at_5=float(np.mean([_chance_hit(c, p, 5) for p in n_rel])),
        chance_mean_rank=float(np.mean((c + 1) / (n_rel + 1))),
        num_queries=len(queries), num_candidates=c)


def modality_gap(a: np.ndarray, b: np.ndarray) -> float:
    """Distance between the centroids of two sets of unit embeddings (Liang et al. 2022)."""
    return float(np.linalg.norm(np.mean(a, 0) - np.mean(b, 0)))


def alignment_metrics(vision: np.ndarray, language: np.ndarray, action: np.ndarray,
                      instruction_ids: np.ndarray,
                      action_ids: Optional[np.ndarray] = None) -> dict[str, Any]:
    """Retrieval in four directions and modality gaps for N paired (V, L, A) embeddings.

    ``instruction_ids`` (N,) marks samples sharing an instruction; ``action_ids`` (N,) marks
    samples with identical actions (default: every sample distinct).
    """
    instruction_ids = np.asarray(instruction_ids)
    unique_ids, first = np.unique(instruction_ids, return_index=True)
    lang_unique = language[first]  # (M, A), one row per distinct instruction
    v_to_l = instruction_ids[:, None] == unique_ids[None, :]  # (N, M)
    if action_ids is None:
        action_ids = np.arange(len(action))
    action_ids = np.asarray(action_ids)
    same_action = action_ids[:, None] == action_ids[None, :]  # (N, N)
    return {
        'num_samples': int(len(vision)), 'num_instructions': int(len(unique_ids)),
        'retrieval': {
            'V->L': retrieval_scores(vision, lang_unique, v_to_l).to_dict(),
            'L->V': retrieval_scores(lang_unique, vision, v_to_l.T).to_dict(),
            'V->A': retrieval_scores(vision, action, same_action).to_dict(),
            'A->V': retrieval_scores(action, vision, same_action).to_dict(),
        },
        'modality_gap': {'V-L': modality_gap(vision, language),
                         'V-A': modality_gap(vision, action),
                         'L-A': modality_gap(language, action)},
        'matched_cosine': {'V-L': float(np.mean(np.sum(vision * language, 1))),
                           'V-A': float(np.mean(np.sum(vision * action, 1))),
                           'L-A': float(np.mean(np.sum(language * action, 1)))},
    }


def identical_action_ids(actions: np.ndarray, decimals: int = 6) -> np.ndarray:
    """(N, ...) actions -> (N,) ids, equal for samples whose actions are equal when rounded."""
    flat = np.round(np.asarray(actions, np.float64).reshape(len(actions), -1), decimals)
    _, ids = np.unique(flat, axis=0, return_inverse=True)
    return ids.reshape(-1)


def action_errors(predicted: np.ndarray, true: np.ndarray,
                  baseline: np.ndarray) -> dict[str, Any]:
    """Per-dimension mean absolute error of (N, 7) predictions vs a constant ``baseline``
    action (the training mean), plus gripper accuracy at 0.5 for both."""
    predicted, true = np.asarray(predicted, np.float64), np.asarray(true, np.float64)
    baseline = np.broadcast_to(np.asarray(baseline, np.float64), true.shape)
    arm = [i for i in range(len(ACTION_LABELS)) if i != GRIPPER]
    closed = true[:, GRIPPER] >= 0.5
    return {
        'mae': {ACTION_LABELS[i]: float(np.mean(np.abs(predicted[:, i] - true[:, i])))
                for i in arm},
        'baseline_mae': {ACTION_LABELS[i]: float(np.mean(np.abs(baseline[:, i] - true[:, i])))
                         for i in arm},
        'gripper_accuracy': float(np.mean((predicted[:, GRIPPER] >= 0.5) == closed)),
        'baseline_gripper_accuracy': float(np.mean((baseline[:, GRIPPER] >= 0.5) == closed)),
        'num_samples': int(len(true)),
    }
