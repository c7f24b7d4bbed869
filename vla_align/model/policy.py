"""`Policy`: the inference API used by the ROS nodes, evaluation and benchmarks.

Takes raw camera frames (any size, uint8 RGB) and instruction strings, returns de-normalised
7-DoF actions plus the V-L alignment score. Imports no training code.

Speed (figures and how they were measured: ``vla-align bench``, docs/BENCHMARKS.md):
- ``torch.inference_mode`` and a channels-last vision trunk;
- mixed precision where the hardware has it natively (``precision='auto'``): bf16 autocast of
  the convolutional trunk only, on CUDA (fp16 where bf16 is unsupported) and on CPUs with
  AVX512-BF16/AMX, since the small fusion matmuls lose more to per-call weight casts than bf16
  gains them (measured on both). ``precision='fp32'`` turns it off;
- instructions encoded once and cached (`encode_instruction`);
- on CUDA, frames cross to the GPU from pinned memory without blocking;
- ``compile=True``: ``torch.compile`` of the model (CPU: inductor with weight freezing, which
  folds batch norms and pre-packs weights; CUDA: CUDA graphs via mode 'reduce-overhead'). It
  costs tens of seconds on the first step and again per new batch size; the instruction length
  is compiled as a dynamic dimension so a new instruction does not recompile.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
import logging
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from vla_align.actions import GRIPPER
from vla_align.data.normalization import NormalizationStats
from vla_align.data.state import STATE_DIM
from vla_align.model.checkpoint import load_checkpoint, save_checkpoint
from vla_align.model.config import PolicyConfig
from vla_align.model.deployment import DeploymentInfo, deployment_from_metadata
from vla_align.model.device import autocast, autocast_dtype, resolve_device
from vla_align.model.language import TextEmbedding
from vla_align.model.processing import ImageBatch, check_images, resize_uint8
from vla_align.model.vla import VLAModel, VLAOutput

PRECISIONS = ('auto', 'fp32')
#: Where mixed precision applies: the whole model, or the convolutional trunk alone.
AUTOCAST_SCOPES = ('model', 'vision')

LOG = logging.getLogger(__name__)


@dataclass
class PolicyStep:
    action: np.ndarray  # (7,) float32, de-normalised, gripper in [0, 1]
    alignment: float  # V-L cosine of this image with this instruction, in [-1, 1]
    gripper_prob: float = float('nan')  # P(gripper closed) before any snapping to 0/1
    #: (K, 7) float32: the whole predicted chunk, de-normalised, gripper as P(closed);
    #: row 0 is ``action`` before snapping. `ChunkRunner` executes the rest.
    chunk: Optional[np.ndarray] = None
    #: (A,) float32 unit vision embedding of the frame in the shared space; ``alignment`` is
    #: its dot product with the instruction's (the grounding checks reuse it).
    vision_embedding: Optional[np.ndarray] = None


@dataclass
class AlignedEmbeddings:
    """Unit-length embeddings of N (image, instruction, action) triples in the shared space."""

    vision: np.ndarray  # (N, A) float32
    language: np.ndarray  # (N, A) float32
    action: np.ndarray  # (N, A) float32


class Policy:
    """A loaded model plus its normalisation statistics, ready for per-frame inference."""

    def __init__(self, model: VLAModel, stats: NormalizationStats,
                 device: str | torch.device = 'auto',
                 metadata: Optional[dict[str, Any]] = None, precision: str = 'auto',
                 compile: bool = False) -> None:
        if precision not in PRECISIONS:
            raise ValueError(f'precision must be one of {PRECISIONS}, got {precision!r}')
        self.device = resolve_device(device)
        self.config: PolicyConfig = model.config
        self.stats = stats
        self.metadata = dict(metadata or {})
        self.model = model.to(self.device).eval()
        # oneDNN (CPU) and cuDNN (GPU) both run these convolutions faster in NHWC.
        self.model.vision.trunk.to(memory_format=torch.channels_last)
        self.autocast_dtype = autocast_dtype(self.device, enabled=precision == 'auto')
        # One of AUTOCAST_SCOPES. bf16 pays for the convolutions only, on CPU and on GPU alike:
        # on an H200 a batch-1 step took 5.5 ms (p50) with the conv trunk in bf16, 5.8 ms in
        # fp32 and 7.1 ms with the whole model under autocast, whose casts around the small
        # matrix products cost more than they save (docs/BENCHMARKS.md, GPU section).
        self.autocast_scope = 'vision'
        self._compiled: Optional[torch.nn.Module] = self._compile() if compile else None
        self._reference_text: Optional[torch.Tensor] = None  # see instruction_familiarity

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str = 'auto',
                        precision: str = 'auto', compile: bool = False) -> Policy:
        """Load a checkpoint folder; raises `CheckpointError` with a one-line reason."""
        checkpoint = load_checkpoint(path, device='cpu')
        return cls(checkpoint.model, checkpoint.stats, device, checkpoint.metadata, precision,
                   compile)

    @classmethod
    def from_config(cls, config: PolicyConfig, device: str = 'auto',
                    precision: str = 'auto', compile: bool = False) -> Policy:
        """A randomly initialised policy with identity normalisation (tests, smoke runs)."""
        return cls(VLAModel(config), NormalizationStats.identity(), device, precision=precision,
                   compile=compile)

    @property
    def deployment(self) -> Optional[DeploymentInfo]:
        """The training conditions of the checkpoint (`compare_deployment`); None when it has
        none. Malformed metadata raises ValueError rather than passing a check."""
        return deployment_from_metadata(self.metadata)

    @property
    def compiled(self) -> bool:
        """True while steps run through ``torch.compile`` (False after a fallback to eager)."""
        return self._compiled is not None

    # ----------------------------------------------------------------------------------------
    def step(self, image: np.ndarray, instruction: str,
             state: Optional[np.ndarray] = None) -> PolicyStep:
        """One (H, W, 3) uint8 RGB frame + instruction [+ (STATE_DIM,) state] -> PolicyStep."""
        if not isinstance(image, np.ndarray) or image.ndim != 3:
            raise ValueError(f'step takes one (H, W, 3) uint8 RGB image, got '
                             f'{_describe(image)}')
        states = None if state is None else np.asarray(state)[None]
        return self.step_batch(image[None], [instruction], states)[0]

    def act(self, image: np.ndarray, instruction: str,
            state: Optional[np.ndarray] = None) -> np.ndarray:
        return self.step(image, instruction, state).action

    def step_batch(self, images: ImageBatch, instructions: Sequence[str],
                   states: Optional[np.ndarray] = None) -> list[PolicyStep]:
        """(B, H, W, 3) uint8 frames (or a list of them) + B instructions -> B PolicySteps."""
        frames = check_images(images)
        instructions = _check_instructions(instructions, len(frames))
        with torch.inference_mode():
            out = self._forward(frames, instructions, self.prepare_state(states, len(frames)),
                                allow_compiled=True)
            arm = out.arm.float().cpu().numpy()  # (B, K, 6) normalised
            prob = out.gripper_prob.float().cpu().numpy()  # (B, K)
            alignment = out.alignment.float().cpu().numpy()  # (B,)
            vision = out.vision_embedding.float().cpu().numpy()  # (B, A)
        chunks = np.concatenate([arm, np.zeros((*arm.shape[:2], 1), np.float32)], axis=-1)
        chunks = self.stats.denormalize_actions(chunks).astype(np.float32)
        chunks[..., GRIPPER] = prob
        actions = chunks[:, 0].copy()
        actions[:, GRIPPER] = self.gripper_command(prob[:, 0])
        return [PolicyStep(action=actions[i], alignment=float(alignment[i]),
                           gripper_prob=float(prob[i, 0]), chunk=chunks[i],
                           vision_embedding=vision[i])
                for i in range(len(frames))]

    def gripper_command(self, prob: np.ndarray | float) -> np.ndarray | float:
        """P(gripper closed) -> the published gripper value (snapped to 0/1 when the
        checkpoint was trained with a binary gripper)."""
        if self.config.binary_gripper:
            return (np.asarray(prob) >= 0.5).astype(np.float32) if np.ndim(prob) \
                else float(prob >= 0.5)
        return prob

    def encode_instruction(self, instruction: str) -> None:
        """Encode ``instruction`` now so the next `step` only runs vision + fusion."""
        _check_instructions([instruction], 1)
        with torch.inference_mode():
            self.model.encode_text([instruction])

    @property
    def training_instructions(self) -> list[str]:
        """The distinct instructions of the training data (checkpoint metadata); empty for
        checkpoints written before the trainer recorded them."""
        texts = self.metadata.get('training_instructions') or []
        return [t for t in texts if isinstance(t, str) and t.strip()]

    def instruction_familiarity(self, instruction: str) -> Optional[float]:
        """Cosine of ``instruction``'s sentence embedding (the policy's own language model)
        to the nearest training instruction; None when the checkpoint lists none.

        Re-wordings of trained tasks score high, chat, nonsense and requests of another kind
        low: the text half of the grounding check (`vla_align.evaluation.grounding`), which
        the V-L score alone judges badly. One encoder pass per new instruction."""
        references = self.reference_embeddings()
        if references is None:
            return None
        _check_instructions([instruction], 1)
        with torch.inference_mode():
            query = torch.nn.functional.normalize(
                self.model.encode_text([instruction]).pooled.float(), dim=-1)
            return float((query @ references.T).max())

    def language_embeddings(self, texts: Sequence[str]) -> np.ndarray:
        """(N, A) float32 unit embeddings of ``texts`` in the shared V-L-A space."""
        texts = _check_instructions(texts, len(texts))
        with torch.inference_mode():
            pooled = self.model.encode_text(texts).pooled
            return self.model.align.embed_language(pooled).float().cpu().numpy()

    def reference_embeddings(self) -> Optional[torch.Tensor]:
        """(N, E) unit sentence embeddings of the training instructions, encoded on the first
        call (a node calls it at start-up, so the first instruction does not wait for them)."""
        references = self.training_instructions
        if not references:
            return None
        if self._reference_text is None:
            with torch.inference_mode():
                pooled = [self.model.language(references[i:i + 64]).pooled
                          for i in range(0, len(references), 64)]
                self._reference_text = torch.nn.functional.normalize(
                    torch.cat(pooled).float(), dim=-1)
        return self._reference_text

    def embed(self, images: ImageBatch, instructions: Sequence[str], actions: np.ndarray,
              states: Optional[np.ndarray] = None) -> AlignedEmbeddings:
        """Vision, language and action embeddings of N frames, their instructions and the
        (N, 7) actions taken there (de-normalised, as published), for alignment plots."""
        frames = check_images(images)
        instructions = _check_instructions(instructions, len(frames))
        chunk = self.config.chunk_size
        arr = np.asarray(actions, dtype=np.float32)
        if arr.shape != (len(frames), 7) or not np.all(np.isfinite(arr)):
            raise ValueError(f'actions must be finite and of shape ({len(frames)}, 7), got '
                             f'{_describe(actions)}')
        normalised = torch.from_numpy(self.stats.normalize_actions(arr)).to(self.device)
        # A chunked model embeds K steps: repeat the one known action (a held command).
        normalised = normalised[:, None].expand(-1, chunk, -1)  # (N, K, 7)
        with torch.inference_mode():
            out = self._forward(frames, instructions,
                                self.prepare_state(states, len(frames)))
            action = self.model.align.embed_action(normalised)
        return AlignedEmbeddings(vision=out.vision_embedding.float().cpu().numpy(),
                                 language=out.language_embedding.float().cpu().numpy(),
                                 action=action.float().cpu().numpy())

    def attention_maps(self, image: np.ndarray, instruction: str,
                       state: Optional[np.ndarray] = None) -> np.ndarray:
        """(h, w) float32 map summing to 1: where the instruction's words attend in the image.

        Words->vision cross-attention averaged over fusion blocks and real words (the readout
        attention over vision tokens when there are no fusion blocks); upsample it to overlay.
        """
        frames = check_images(image)[:1]
        _check_instructions([instruction], 1)
        if state is None and self.config.use_proprio:
            state = self.stats.state_mean  # the state only enters the readout, not the fusion
        states = None if state is None else np.asarray(state)[None]
        with torch.inference_mode():
            out = self._forward(frames, [instruction], self.prepare_state(states, 1),
                                need_attention=True)
        grid_h, grid_w = out.attention['grid']
        blocks = out.attention['fusion']
        if blocks:
            # (L, N) per block; mean over blocks, then over the real words.
            w2v = torch.stack([b['words_to_vision'][0] for b in blocks]).float().mean(0)
            text = self.model.encode_text([instruction])
            real = torch.cat([text.mask.new_ones(1), text.mask[0]]).to(w2v.device)
            heat = w2v[real].mean(0)
        else:
            heat = out.attention['readout'][0, :grid_h * grid_w].float()
        heat = heat / heat.sum().clamp_min(1e-12)
        return heat.reshape(grid_h, grid_w).cpu().numpy().astype(np.float32)

    def save(self, path: str | Path, metadata: Optional[dict[str, Any]] = None) -> None:
        save_checkpoint(path, self.model, self.stats, {**self.metadata, **(metadata or {})})

    # ----------------------------------------------------------------------------------------
    def _forward(self, frames: np.ndarray, instructions: list[str],
                 state: Optional[torch.Tensor], need_attention: bool = False,
                 allow_compiled: bool = False) -> VLAOutput:
        pixels = self.prepare_pixels(frames)
        text = self.model.encode_text(instructions)
        if allow_compiled and self._compiled is not None and not need_attention:
            out = self._run_compiled(pixels, text, state)
            if out is not None:
                return out
        return self.run_model(pixels, text, state, need_attention)

    # -- the parts of a step (and prepare_state), public for benchmarks ----------------------
    def prepare_pixels(self, frames: np.ndarray) -> torch.Tensor:
        """Checked (B, H, W, 3) uint8 frames -> (B, 3, S, S) float model input on the device,
        channels-last."""
        pixels = torch.from_numpy(frames)  # shares the array's memory
        if self.device.type == 'cuda':
            # From pinned (page-locked) memory the copy is a true asynchronous DMA.
            pixels = pixels.pin_memory().to(self.device, non_blocking=True)
        pixels = resize_uint8(pixels.permute(0, 3, 1, 2), self.config.image_size,
                              self.config.image_crop)
        return pixels.float().div_(255.0).contiguous(memory_format=torch.channels_last)

    def run_model(self, pixels: torch.Tensor, text: TextEmbedding,
                  state: Optional[torch.Tensor], need_attention: bool = False,
                  model: Optional[torch.nn.Module] = None) -> VLAOutput:
        """The eager (or given) model on prepared inputs, in this policy's precision. The
        caller picks the grad mode (`step_batch` uses ``torch.inference_mode``)."""
        model = self.model if model is None else model
        if self.autocast_scope == 'vision':
            return model(pixels, text, state, need_attention=need_attention,
                         vision_autocast=self.autocast_dtype)
        with autocast(self.device, self.autocast_dtype):
            return model(pixels, text, state, need_attention=need_attention)

    def _compile(self) -> torch.nn.Module:
        if self.device.type == 'cuda':
            return torch.compile(self.model, mode='reduce-overhead')
        # Freezing treats the (never changing) weights as constants: batch norms fold into
        # the convolutions and weights are pre-packed for oneDNN.
        return torch.compile(self.model, options={'freezing': True})

    def _run_compiled(self, pixels: torch.Tensor, text: TextEmbedding,
                      state: Optional[torch.Tensor]) -> Optional[VLAOutput]:
        """The compiled model's output, or None after falling back to eager for good."""
        # Instructions differ in length: compile that dimension as dynamic, not once per length.
        torch._dynamo.mark_dynamic(text.tokens, 1)
        torch._dynamo.mark_dynamic(text.mask, 1)
        try:
            return self.run_model(pixels, text, state, model=self._compiled)
        except torch._dynamo.exc.TorchDynamoException as exc:
            LOG.warning('torch.compile failed (%s: %s); running the policy eagerly',
                        type(exc).__name__, str(exc).splitlines()[0] if str(exc) else '')
            self._compiled = None
            return None

    def prepare_state(self, states: Optional[np.ndarray], batch: int) -> Optional[torch.Tensor]:
        """(batch, STATE_DIM) raw states -> normalised tensor on the device (None when the
        model takes no proprioception); raises ValueError for missing or malformed states."""
        if not self.config.use_proprio:
            return None
        if states is None:
            raise ValueError(f'this policy was trained with proprioception: pass state '
                             f'({STATE_DIM} floats: ee xyz, ee quaternion xyzw, gripper)')
        try:
            arr = np.asarray(states, dtype=np.float32).reshape(batch, STATE_DIM)
        except (TypeError, ValueError) as exc:
            raise ValueError(f'state must be {STATE_DIM} floats per image, got '
                             f'{_describe(states)}') from exc
        if not np.all(np.isfinite(arr)):
            raise ValueError(f'state has non-finite values: {arr.tolist()}')
        # q and -q are one orientation: normalize_states canonicalises, the model sees one.
        return torch.from_numpy(self.stats.normalize_states(arr)).to(self.device)


def _check_instructions(instructions: Sequence[str], batch: int) -> list[str]:
    if isinstance(instructions, str):
        instructions = [instructions]
    instructions = list(instructions)
    if len(instructions) != batch:
        raise ValueError(f'{batch} images but {len(instructions)} instructions')
    for text in instructions:
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f'an instruction must be a non-empty string, got {text!r}')
    return instructions


def _describe(value: Any) -> str:
    if isinstance(value, np.ndarray):
        return f'array of shape {value.shape} and dtype {value.dtype}'
    return f'{type(value).__name__}'

