"""Contrastive alignment objectives, one class per objective (open_clip style).

Several processes (DDP): each rank's embeddings are gathered from every rank before the loss, so
a sample's negatives are the whole global batch, not only its rank's share (``gather_rows``, as
open_clip's ``gather_features`` without ``local_loss``): every rank computes the loss of the
global batch, and the gradient reaches only its own rows -- the other ranks' rows are
constants there -- which DDP then averages. Only in training mode: evaluation runs on one rank.

False negatives. A demonstration dataset has many frames per instruction, so a batch often holds
two samples with the same instruction; their off-diagonal pair is a true match, not a negative.
Every objective takes optional ``groups`` (B,): an off-diagonal pair (i, j) with
``groups[i] == groups[j]`` is EXCLUDED from the loss: it is removed from the InfoNCE softmax
denominator and given zero weight in the SigLIP sum. It is not counted as a positive either,
because with several frames per group that would reward collapsing all frames of a group.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn
import torch.distributed as dist
import torch.nn.functional as F

from vla_align.model.config import PolicyConfig

MAX_LOGIT_SCALE = math.log(100.0)


def gather_rows(x: torch.Tensor) -> torch.Tensor:
    """(B, ...) on each rank -> (world * B, ...) in rank order; this rank's rows keep their
    gradient. The identity outside a multi-process group."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.detach().contiguous())
    parts[dist.get_rank()] = x
    return torch.cat(parts)


def same_group_pairs(groups: torch.Tensor) -> torch.Tensor:
    """(B,) group ids -> (B, B) bool, True for off-diagonal pairs in one group."""
    same = groups.unsqueeze(0) == groups.unsqueeze(1)
    return same & ~torch.eye(len(groups), dtype=torch.bool, device=groups.device)


class InfoNCELoss(nn.Module):
    """Symmetric CLIP loss with a learnable temperature (logit scale init log(1/0.07))."""

    def __init__(self, init_temperature: float = 0.07) -> None:
        super().__init__()
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / init_temperature)))

    def forward(self, a: torch.Tensor, b: torch.Tensor,
                groups: Optional[torch.Tensor] = None) -> torch.Tensor:
        """a, b (B, D) L2-normalised, row i of a matches row i of b -> scalar loss."""
        scale = self.logit_scale.clamp(max=MAX_LOGIT_SCALE).exp()
        logits = scale * a.float() @ b.float().T  # (B, B)
        if groups is not None:
            logits = logits.masked_fill(same_group_pairs(groups), float('-inf'))
        labels = torch.arange(len(a), device=a.device)
        return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels))


class SigLipLoss(nn.Module):
    """Pairwise sigmoid loss (Zhai et al. 2023): scale init log(10), bias init -10."""

    def __init__(self, init_scale: float = 10.0, init_bias: float = -10.0) -> None:
        super().__init__()
        self.logit_scale = nn.Parameter(torch.tensor(math.log(init_scale)))
        self.logit_bias = nn.Parameter(torch.tensor(init_bias))

    def forward(self, a: torch.Tensor, b: torch.Tensor,
                groups: Optional[torch.Tensor] = None) -> torch.Tensor:
        scale = self.logit_scale.clamp(max=MAX_LOGIT_SCALE).exp()
        logits = scale * a.float() @ b.float().T + self.logit_bias  # (B, B)
        signs = 2.0 * torch.eye(len(a), device=a.device) - 1.0  # +1 matches, -1 others
        weights = torch.ones_like(logits)
        if groups is not None:
            weights = weights.masked_fill(same_group_pairs(groups), 0.0)
        return -(F.logsigmoid(signs * logits) * weights).sum() / len(a)


def make_contrastive_loss(kind: str) -> nn.Module:
    return SigLipLoss() if kind == 'siglip' else InfoNCELoss()


class ThreeWayAlignmentLoss(nn.Module):
    """``alpha·L_VL + beta·L_VA + gamma·L_LA``, each pair with its own temperature.

    Groups: V-L and L-A pairs are grouped by instruction (same text = same L embedding, so the
    other sample is indistinguishable); V-A pairs by episode (neighbouring frames of one episode
    look and act alike).
    """

    def __init__(self, config: PolicyConfig) -> None:
        super().__init__()
        self.weights = {'vl': config.alpha_vl, 'va': config.beta_va, 'la': config.gamma_la}
        self.vl = make_contrastive_loss(config.alignment_loss)
        self.va = make_contrastive_loss(config.alignment_loss)
        self.la = make_contrastive_loss(config.alignment_loss)

    def forward(self, vision: torch.Tensor, language: torch.Tensor, action: torch.Tensor,
                instruction_ids: Optional[torch.Tensor] = None,
                episode_ids: Optional[torch.Tensor] = None) -> dict[str, torch.Tensor]:
        if self.training:  # the global batch's negatives under DDP (module docstring)
            vision, language, action = (gather_rows(x) for x in (vision, language, action))
            instruction_ids, episode_ids = (None if ids is None else gather_rows(ids)
                                            for ids in (instruction_ids, episode_ids))
        pairs = {'vl': (vision, language, instruction_ids), 'va': (vision, action, episode_ids),
                 'la': (language, action, instruction_ids)}
        losses = {}
        total = vision.new_zeros((), dtype=torch.float32)
        for name, (a, b, groups) in pairs.items():
            if self.weights[name] > 0:
                losses[f'align_{name}'] = getattr(self, name)(a, b, groups)
                total = total + self.weights[name] * losses[f'align_{name}']
        losses['align'] = total
        return losses
