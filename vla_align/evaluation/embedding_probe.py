"""Where vision, language and action land in the shared embedding space, on evaluation tasks.

For every (split, family) cell one scripted-expert episode is run on the cell's first eval
seed; a few evenly spaced frames give (image, instruction, expert action, state) triples that
the policy embeds. The expert's action (not the policy's) is the action of a triple, so the
V-A and L-A pairs are the ones the alignment loss was trained to match. The sample feeds the
2-D projection figure of report.md and the retrieval/modality-gap numbers of report.json.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

from vla_align.evaluation.alignment_metrics import alignment_metrics
from vla_align.sim.env import ManipulationEnv
from vla_align.sim.rollout import run_expert_episode
from vla_align.sim.suite import TaskSuite

#: Frames taken from each cell's expert episode.
FRAMES_PER_EPISODE = 6


@dataclass
class EmbeddingSample:
    """N triples embedded by the policy, with what each triple came from."""

    vision: np.ndarray  # (N, A)
    language: np.ndarray  # (N, A)
    action: np.ndarray  # (N, A)
    splits: list[str]
    families: list[str]
    instructions: list[str]

    def __len__(self) -> int:
        return len(self.vision)

    def metrics(self) -> dict[str, Any]:
        """Retrieval R@k / mean rank in four directions and modality gaps on this sample."""
        _, instruction_ids = np.unique(np.array(self.instructions), return_inverse=True)
        return alignment_metrics(self.vision, self.language, self.action, instruction_ids)


def project_2d(sample: EmbeddingSample) -> dict[str, np.ndarray]:
    """PCA of the three modalities together: one shared 2-D basis, so gaps stay visible."""
    stacked = np.concatenate([sample.vision, sample.language, sample.action]).astype(np.float64)
    centred = stacked - stacked.mean(0)
    _, _, components = np.linalg.svd(centred, full_matrices=False)
    points = centred @ components[:2].T  # (3N, 2)
    n = len(sample)
    return {'vision': points[:n], 'language': points[n:2 * n], 'action': points[2 * n:]}


def collect_embedding_sample(agent: Any, suite: TaskSuite, splits: Sequence[str],
                             families: Sequence[str], env: ManipulationEnv,
                             frames_per_episode: int = FRAMES_PER_EPISODE
                             ) -> Optional[EmbeddingSample]:
    """Embed expert frames of one episode per cell; None when the agent exposes no embeddings.

    ``agent.embeddings(images, instructions, actions, states)`` returns an object with
    ``vision``, ``language`` and ``action`` arrays, or None.
    """
    images, instructions, actions, states = [], [], [], []
    cell_splits, cell_families = [], []
    for split in splits:
        seed = suite.seeds(split, 'eval', 1)[0]
        for family in families:
            task = suite.sample_task(family, split, seed)
            episode = run_expert_episode(env, task, seed)
            picks = np.unique(np.linspace(0, len(episode) - 1, frames_per_episode).round()
                              .astype(int))
            images.append(episode.images[picks])
            actions.append(episode.actions[picks])
            states.append(episode.states()[picks])
            instructions += [task.instruction] * len(picks)
            cell_splits += [split] * len(picks)
            cell_families += [family] * len(picks)
    if not images:
        return None
    embedded = agent.embeddings(np.concatenate(images), instructions, np.concatenate(actions),
                                np.concatenate(states))
    if embedded is None:
        return None
    return EmbeddingSample(vision=embedded.vision, language=embedded.language,
                           action=embedded.action, splits=cell_splits, families=cell_families,
                           instructions=instructions)
