"""`VLAModel`: image + instruction (+ proprioception) -> actions, alignment embeddings, losses.

Data flow (shapes for the default config, B frames, 96 px, MiniLM):
    image (B, 3, 96, 96) -> VisionEncoder -> vision tokens (B, 36, D)
    instruction -> LanguageEncoder (cached) -> words (B, L, 384) + sentence (B, 384)
        -> [sentence token; word tokens] projected to (B, 1+L, D)
    CrossModalFusion(vision, words) -> fused vision (B, 36, D), fused words (B, 1+L, D)
    AttentionPool over [fused vision; fused words; state token] -> (B, D) -> ActionHead
    AlignmentHeads: image-only tokens -> V, sentence -> L, target actions -> A  (B, A) each
Losses are computed only when ``targets`` are given (nanoGPT style).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Optional, Union

import torch
from torch import nn

from vla_align.data.state import STATE_DIM
from vla_align.model.action_head import ActionHead, ActionPrediction
from vla_align.model.alignment import AlignmentHeads
from vla_align.model.config import PolicyConfig
from vla_align.model.fusion import AttentionPool, CrossModalFusion
from vla_align.model.language import LanguageEncoder, TextEmbedding
from vla_align.model.loss import ThreeWayAlignmentLoss
from vla_align.model.vision import VisionEncoder

TextInput = Union[TextEmbedding, Sequence[str]]


@dataclass
class ActionTargets:
    """Supervision for one batch; arm deltas normalised, gripper raw."""

    actions: torch.Tensor  # (B, K, 7) normalised arm deltas, gripper in [0, 1]
    valid: torch.Tensor  # (B, K) bool, False for chunk steps past the episode end
    instruction_ids: Optional[torch.Tensor] = None  # (B,) same id = same instruction text
    episode_ids: Optional[torch.Tensor] = None  # (B,) source episode of each frame

    def to(self, device: torch.device, non_blocking: bool = False) -> ActionTargets:
        def move(t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
            return None if t is None else t.to(device, non_blocking=non_blocking)

        return ActionTargets(move(self.actions), move(self.valid), move(self.instruction_ids),
                             move(self.episode_ids))


@dataclass
class VLAOutput:
    arm: torch.Tensor  # (B, K, 6) normalised arm deltas
    gripper_logit: torch.Tensor  # (B, K)
    vision_embedding: torch.Tensor  # (B, A) unit length, from the image alone
    language_embedding: torch.Tensor  # (B, A) unit length
    action_embedding: Optional[torch.Tensor] = None  # (B, A), only with targets
    losses: Optional[dict[str, torch.Tensor]] = None  # 'loss' (weighted total) and its parts
    #: 'fusion': per block {'vision_to_words' (B, N, L), 'words_to_vision' (B, L, N)},
    #: 'readout' (B, N + L [+ 1]); only with need_attention=True
    attention: Optional[dict[str, object]] = None

    @property
    def gripper_prob(self) -> torch.Tensor:
        return torch.sigmoid(self.gripper_logit.float())

    @property
    def alignment(self) -> torch.Tensor:
        """(B,) cosine between each image and its instruction."""
        return (self.vision_embedding * self.language_embedding).sum(-1)


class VLAModel(nn.Module):
    def __init__(self, config: PolicyConfig, language: Optional[LanguageEncoder] = None) -> None:
        super().__init__()
        self.config = config
        d = config.d_model
        self.vision = VisionEncoder(config)
        self.language = language or LanguageEncoder(config.language_model, config.max_tokens,
                                                    config.freeze_language)
        e = self.language.hidden_size
        self.word_proj = nn.Linear(e, d)
        self.sentence_proj = nn.Linear(e, d)
        self.state_proj = (nn.Sequential(nn.Linear(STATE_DIM, d), nn.GELU(), nn.Linear(d, d))
                           if config.use_proprio else None)
        self.fusion = CrossModalFusion(d, config.fusion_heads, config.fusion_layers,
                                       config.mlp_ratio, config.dropout)
        self.readout = AttentionPool(d, config.fusion_heads)
        self.action_head = ActionHead(config, d)
        self.align = AlignmentHeads(config, e)
        self.align_loss = ThreeWayAlignmentLoss(config)

    def encode_text(self, texts: Sequence[str]) -> TextEmbedding:
        return self.language.encode(texts)

    def forward(self, images: torch.Tensor, text: TextInput,
                state: Optional[torch.Tensor] = None, targets: Optional[ActionTargets] = None,
                need_attention: bool = False,
                vision_autocast: Optional[torch.dtype] = None) -> VLAOutput:
        """images (B, 3, S, S) float in [0, 1]; text: B instructions or their embedding;
        state (B, STATE_DIM) normalised proprioception (required when use_proprio);
        vision_autocast: mixed precision for the convolutional trunk alone (CPU inference)."""
        if not isinstance(text, TextEmbedding):
            text = self.language.encode(text)
        if len(text) != len(images):
            raise ValueError(f'{len(images)} images but {len(text)} instructions')
        vision = self.vision(images, trunk_autocast=vision_autocast)  # (B, N, D)
        words = torch.cat([self.sentence_proj(text.pooled).unsqueeze(1),
                           self.word_proj(text.tokens)], dim=1)  # (B, 1+L, D)
        word_mask = torch.cat([text.mask.new_ones(len(text), 1), text.mask], dim=1)  # (B, 1+L)
        fused = self.fusion(vision, words, word_mask, need_weights=need_attention)
        memory = [fused.vision, fused.words]
        keep = [word_mask.new_ones(fused.vision.shape[:2]), word_mask]
        if self.state_proj is not None:
            if state is None:
                raise ValueError('this model uses proprioception (use_proprio=True): pass state '
                                 f'({STATE_DIM} values: ee xyz, ee quaternion xyzw, gripper)')
            memory.append(self.state_proj(state.to(vision.dtype)).unsqueeze(1))  # (B, 1, D)
            keep.append(word_mask.new_ones(len(text), 1))
        pooled, readout = self.readout(torch.cat(memory, 1), ~torch.cat(keep, 1),
                                       need_weights=need_attention)  # (B, D)
        pred: ActionPrediction = self.action_head(pooled)
        out = VLAOutput(arm=pred.arm, gripper_logit=pred.gripper_logit,
                        vision_embedding=self.align.embed_vision(vision),
                        language_embedding=self.align.embed_language(text.pooled))
        if need_attention:
            out.attention = {'fusion': fused.attention, 'readout': readout,
                             'grid': (self.vision.grid_h, self.vision.grid_w)}
        if targets is not None:
            out.action_embedding = self.align.embed_action(targets.actions)
            losses = self.action_head.losses(pred, targets.actions, targets.valid)
            losses.update(self.align_loss(out.vision_embedding, out.language_embedding,
                                          out.action_embedding, targets.instruction_ids,
                                          targets.episode_ids))
            losses['loss'] = (self.config.bc_weight * losses['arm']
                              + self.config.gripper_weight * losses['gripper'] + losses['align'])
            out.losses = losses
        return out

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """Everything a checkpoint must store: all weights except a frozen language model,
        which is reloaded from its own folder."""
        skip = 'language.model.' if self.config.freeze_language else None
        return {k: v for k, v in self.state_dict().items()
                if skip is None or not k.startswith(skip)}
