"""Cross-modal fusion: vision tokens and word tokens attend to each other, block by block.

Every attention honours the word padding mask, so padding never changes an output. Attention
weights come back on request (``need_weights=True``) for visualisation.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn


class MLP(nn.Module):
    def __init__(self, dim: int, ratio: float, dropout: float) -> None:
        super().__init__()
        hidden = int(dim * ratio)
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout),
                                 nn.Linear(hidden, dim), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class ResidualAttention(nn.Module):
    """Pre-LN multi-head attention with a residual: ``q + Attn(LN(q), LN(kv))``."""

    def __init__(self, dim: int, heads: int, dropout: float, self_attention: bool = False) -> None:
        super().__init__()
        self.self_attention = self_attention
        self.norm_q = nn.LayerNorm(dim)
        self.norm_kv = nn.Identity() if self_attention else nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)

    def forward(self, q: torch.Tensor, kv: Optional[torch.Tensor] = None,
                kv_padding: Optional[torch.Tensor] = None, need_weights: bool = False,
                ) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """q (B, Lq, D), kv (B, Lk, D), kv_padding (B, Lk) True = ignore -> (B, Lq, D)."""
        query = self.norm_q(q)
        memory = query if self.self_attention else self.norm_kv(kv)
        out, weights = self.attn(query, memory, memory, key_padding_mask=kv_padding,
                                 need_weights=need_weights)  # weights (B, Lq, Lk), head mean
        return q + out, weights


class FusionBlock(nn.Module):
    """Vision self-attention, vision->words and words->vision cross-attention, then MLPs.

    The vision self-attention lets object tokens relate to each other (needed for "put X in Y");
    the two cross-attentions are the language conditioning.
    """

    def __init__(self, dim: int, heads: int, mlp_ratio: float, dropout: float) -> None:
        super().__init__()
        self.vision_self = ResidualAttention(dim, heads, dropout, self_attention=True)
        self.vision_to_words = ResidualAttention(dim, heads, dropout)
        self.words_to_vision = ResidualAttention(dim, heads, dropout)
        self.norm_v = nn.LayerNorm(dim)
        self.norm_w = nn.LayerNorm(dim)
        self.mlp_v = MLP(dim, mlp_ratio, dropout)
        self.mlp_w = MLP(dim, mlp_ratio, dropout)

    def forward(self, vision: torch.Tensor, words: torch.Tensor, word_padding: torch.Tensor,
                need_weights: bool = False,
                ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        v, _ = self.vision_self(vision, need_weights=False)  # (B, N, D)
        v, v2w = self.vision_to_words(v, words, word_padding, need_weights)  # (B, N, D)
        w, w2v = self.words_to_vision(words, v, None, need_weights)  # (B, L, D)
        v = v + self.mlp_v(self.norm_v(v))
        w = w + self.mlp_w(self.norm_w(w))
        weights = {'vision_to_words': v2w, 'words_to_vision': w2v} if need_weights else {}
        return v, w, weights


@dataclass
class FusionOutput:
    vision: torch.Tensor  # (B, N, D) language-conditioned vision tokens
    words: torch.Tensor  # (B, L, D) vision-conditioned word tokens (padding rows meaningless)
    #: per block: 'vision_to_words' (B, N, L) and 'words_to_vision' (B, L, N), when requested
    attention: Optional[list[dict[str, torch.Tensor]]] = None


class CrossModalFusion(nn.Module):
    def __init__(self, dim: int, heads: int, layers: int, mlp_ratio: float,
                 dropout: float) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(FusionBlock(dim, heads, mlp_ratio, dropout)
                                    for _ in range(layers))
        self.norm_v = nn.LayerNorm(dim)
        self.norm_w = nn.LayerNorm(dim)

    def forward(self, vision: torch.Tensor, words: torch.Tensor, word_mask: torch.Tensor,
                need_weights: bool = False) -> FusionOutput:
        """vision (B, N, D), words (B, L, D), word_mask (B, L) True for real tokens."""
        padding = ~word_mask
        attention = [] if need_weights else None
        for block in self.blocks:
            vision, words, weights = block(vision, words, padding, need_weights)
            if attention is not None:
                attention.append(weights)
        return FusionOutput(self.norm_v(vision), self.norm_w(words), attention)


class AttentionPool(nn.Module):
    """A learned query attends over a token set (honouring padding) -> one vector (B, D)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.query = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.norm = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.out = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim))

    def forward(self, tokens: torch.Tensor, padding: Optional[torch.Tensor] = None,
                need_weights: bool = False) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """tokens (B, M, D), padding (B, M) True = ignore -> (B, D), weights (B, M) or None."""
        memory = self.norm(tokens)
        query = self.query.expand(tokens.shape[0], -1, -1)  # (B, 1, D)
        pooled, weights = self.attn(query, memory, memory, key_padding_mask=padding,
                                    need_weights=need_weights)  # (B, 1, D)
        pooled = self.out(pooled.squeeze(1))  # (B, D)
        return pooled, (weights.squeeze(1) if weights is not None else None)
