"""Projection heads mapping vision, language and action into one L2-normalised space.

The vision embedding is computed from the image tokens BEFORE fusion, so it never sees the
instruction: the V-L cosine then measures whether the scene matches the instruction instead of
echoing it. The action embedding encodes a (normalised) action chunk; it exists for training
(V-A and L-A objectives) and for retrieval metrics.
"""
from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F

from vla_align.model.config import PolicyConfig
from vla_align.model.fusion import AttentionPool


class ProjectionHead(nn.Module):
    """(B, d_in) -> (B, align_dim), unit length."""

    def __init__(self, d_in: int, d_out: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.LayerNorm(d_in), nn.Linear(d_in, d_in), nn.GELU(),
                                 nn.Linear(d_in, d_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.net(x).float(), dim=-1)


class AlignmentHeads(nn.Module):
    def __init__(self, config: PolicyConfig, language_dim: int) -> None:
        super().__init__()
        d = config.d_model
        self.vision_pool = AttentionPool(d, config.fusion_heads)
        self.vision = ProjectionHead(d, config.align_dim)
        self.language = ProjectionHead(language_dim, config.align_dim)
        action_in = config.chunk_size * 7
        self.action_encoder = nn.Sequential(nn.Linear(action_in, d), nn.GELU(), nn.Linear(d, d))
        self.action = ProjectionHead(d, config.align_dim)

    def embed_vision(self, vision_tokens: torch.Tensor) -> torch.Tensor:
        """Image-only tokens (B, N, D) -> (B, A)."""
        pooled, _ = self.vision_pool(vision_tokens)
        return self.vision(pooled)

    def embed_language(self, sentence: torch.Tensor) -> torch.Tensor:
        """Sentence embeddings (B, E) from the language model -> (B, A)."""
        return self.language(sentence)

    def embed_action(self, actions: torch.Tensor) -> torch.Tensor:
        """Normalised action chunks (B, K, 7) -> (B, A)."""
        return self.action(self.action_encoder(actions.flatten(1).float()))
