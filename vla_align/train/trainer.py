"""Behaviour cloning + three-way alignment training loop.

One `Trainer` runs single-process (CPU or one GPU) or under ``torchrun`` with
DistributedDataParallel, unchanged: the world comes from the environment (`DistContext`), data
is sharded by a DistributedSampler, and rank 0 alone validates, saves and reports.

Length: training stops at ``optim.max_steps`` or ``optim.max_minutes`` of wall time, whichever
comes first, and the cosine learning-rate schedule follows the same progress measure, so a time
budget still ends with a decayed learning rate. Resuming (``resume=<checkpoint>/last``) restores
weights, optimizer, step, elapsed time, history and RNG states; the interrupted epoch is not
replayed.
"""
from __future__ import annotations

from collections.abc import Iterator
import contextlib
from dataclasses import asdict, dataclass
import math
import os
from pathlib import Path
import time
from typing import Any, Optional

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler
from tqdm import tqdm

from vla_align.data.dataset import (
    DatasetError,
    FrameBatch,
    FrameCache,
    FrameDataset,
    collate_batch,
    split_episodes,
)
from vla_align.data.normalization import NormalizationStats
from vla_align.data.state import STATE_LABELS
from vla_align.data.transforms import TrainAugmentation
from vla_align.evaluation.alignment_metrics import (
    action_errors,
    alignment_metrics,
    identical_action_ids,
)
from vla_align.model.checkpoint import (
    TRANSFERABLE_FIELDS,
    CheckpointError,
    load_checkpoint,
    read_trainer_state,
    save_checkpoint,
    start_from_checkpoint,
)
from vla_align.model.deployment import DeploymentInfo, git_state, language_model_identity
from vla_align.model.device import autocast, autocast_dtype
from vla_align.model.language import TextEmbedding
from vla_align.model.processing import uint8_to_float
from vla_align.model.vla import ActionTargets, VLAModel
from vla_align.train.config import TrainConfig
from vla_align.train.distributed import DistContext
from vla_align.train.instructions import InstructionVariants, build_variants, load_wordings
from vla_align.train.report import write_report

EVAL_BATCH = 256
#: Deployment defaults for caches built in memory (no contract): the simulator's, as in
#: config/contracts/sim_panda.yaml.
DEFAULT_CONTROL_RATE_HZ = 10.0
DEFAULT_ACTION_FRAME = 'panda_link0'
DEFAULT_STATE_SOURCE = 'pose'


@dataclass
class TrainResult:
    out_dir: Path
    best_checkpoint: Path
    last_checkpoint: Path
    report: dict[str, Any]


class Trainer:
    def __init__(self, config: TrainConfig, cache: FrameCache, out_dir: str | Path,
                 resume: Optional[str | Path] = None, progress: bool = True,
                 dist: Optional[DistContext] = None) -> None:
        self.config = config
        self.dist = dist or DistContext.from_env(config.device)
        self.device = self.dist.device
        if self.device.type == 'cpu':
            torch.set_num_threads(config.num_threads or os.cpu_count() or 1)
        self.out_dir = Path(out_dir)
        self.progress = progress and self.dist.is_main
        self.cache = cache
        # The code that trains is the code at start: the tree may change before a save.
        self.git_commit, self.git_dirty = git_state()
        opt = config.optim

        episodes = cache.select_episodes(splits=config.data.splits,
                                         only_successful=config.data.only_successful,
                                         families=config.data.families)
        if not episodes:
            raise DatasetError(f'no episodes match splits={config.data.splits} '
                               f'families={config.data.families} only_successful='
                               f'{config.data.only_successful} among {len(cache.episodes)}')
        self.train_ids, self.val_ids = split_episodes(cache, episodes, config.data.val_fraction,
                                                      config.seed)
        chunk = config.model.chunk_size
        self.train_set = FrameDataset(cache, self.train_ids, chunk)
        self.val_set = FrameDataset(cache, self.val_ids, chunk)
        per_rank = len(self.train_set) // self.dist.world_size
        if per_rank < opt.batch_size:
            raise DatasetError(f'{len(self.train_set)} training frames cannot fill one batch of '
                               f'{opt.batch_size} per process: lower optim.batch_size')
        train_rows = self.train_set.rows
        self.train_action_mean = cache.actions[train_rows].mean(0)

        resume_state = None
        self.fresh_tensors: list[str] = []  # of an init_from checkpoint: what starts fresh
        if resume is not None:
            checkpoint = load_checkpoint(resume)
            if checkpoint.config != config.model:
                raise CheckpointError(f'cannot resume from {resume}: its model config differs '
                                      f'from the requested one')
            model, self.stats = checkpoint.model, checkpoint.stats
            resume_state = read_trainer_state(resume)
            if resume_state is None:
                raise CheckpointError(f'cannot resume from {resume}: it has no trainer state '
                                      f'(resume from the "last" checkpoint)')
        elif config.init_from:
            torch.manual_seed(config.seed)  # the tensors that start fresh, as without init_from
            checkpoint = load_checkpoint(config.init_from)
            model, fresh = start_from_checkpoint(checkpoint, config.model, config.init_from)
            self.stats = checkpoint.stats
            self.fresh_tensors = fresh
            if fresh and self.dist.is_main:
                changed = [name for name in sorted(TRANSFERABLE_FIELDS)
                           if getattr(config.model, name) != getattr(checkpoint.config, name)]
                tqdm.write(f'starting from {config.init_from}; {len(fresh)} tensors start fresh '
                           f'(changed {", ".join(changed)}): {", ".join(fresh)}')
        else:
            torch.manual_seed(config.seed)  # identical initial weights on every rank
            model = VLAModel(config.model)
            self.stats = NormalizationStats.from_data(cache.actions[train_rows],
                                                      cache.states[train_rows])
        self.model = model.to(self.device)
        # What a deployment must match (the language folder hashed now, at training start).
        self.deployment = self._deployment_info() if self.dist.is_main else None
        self.channels_last = True  # faster convolutions on oneDNN (CPU) and cuDNN alike
        self.model.vision.trunk.to(memory_format=torch.channels_last)
        self.variants = self._instruction_variants()
        self.text_table = self._encode_instructions() if config.model.freeze_language else None

        self.optimizer = torch.optim.AdamW(self._param_groups(), lr=opt.lr,
                                           weight_decay=opt.weight_decay)
        weights = (config.model.alpha_vl, config.model.beta_va, config.model.gamma_la)
        self.net = (DistributedDataParallel(
            self.model, device_ids=[self.device.index] if self.device.type == 'cuda' else None,
            find_unused_parameters=min(weights) == 0) if self.dist.distributed else self.model)

        self.sampler_rng = torch.Generator().manual_seed(config.seed)
        self.reword_rng = torch.Generator().manual_seed(config.seed + 2 + self.dist.rank)
        self.aug_rng = torch.Generator(device=self.device).manual_seed(
            config.seed + 1 + self.dist.rank)
        if self.dist.distributed:
            self.sampler = DistributedSampler(self.train_set, self.dist.world_size,
                                              self.dist.rank, shuffle=True, seed=config.seed,
                                              drop_last=True)
        else:
            self.sampler = RandomSampler(self.train_set, generator=self.sampler_rng)
        self.loader = DataLoader(self.train_set, batch_size=opt.batch_size, sampler=self.sampler,
                                 drop_last=True, collate_fn=collate_batch,
                                 num_workers=config.num_workers,
                                 pin_memory=self.device.type == 'cuda',
                                 persistent_workers=config.num_workers > 0)
        self.augment = TrainAugmentation(config.augment)
        self.amp_dtype = autocast_dtype(self.device, enabled=config.amp)
        self.scaler = (torch.amp.GradScaler('cuda') if self.amp_dtype == torch.float16
                       else None)

        self.step = 0
        self.elapsed = 0.0  # wall seconds, including evaluation, summed over resumed runs
        self.train_seconds = 0.0  # seconds spent in training steps only
        self.history: dict[str, list[dict[str, float]]] = {'train': [], 'val': []}
        self.best_val = math.inf
        self.best_step = 0
        self.best_state: Optional[dict[str, torch.Tensor]] = None
        self.stopped_by = 'max_steps'
        if resume_state is not None:
            self._restore(resume_state)

    # ----------------------------------------------------------------------------------------
    def _instruction_variants(self) -> InstructionVariants:
        """The cache's instructions, then their re-wordings when augmentation is on."""
        settings = self.config.instructions
        instructions = list(self.cache.instructions)
        if not settings.enabled:
            return InstructionVariants(texts=instructions,
                                       rows=np.arange(len(instructions))[:, None])
        family_of = {record.instruction: record.family for record in self.cache.episodes}
        families = [family_of.get(text, '') for text in instructions]
        return build_variants(instructions, families, load_wordings(settings),
                              settings.variants, self.config.seed)

    def _encode_instructions(self) -> TextEmbedding:
        """Every instruction (and variant), encoded once by the frozen language model."""
        with torch.no_grad():
            table = self.model.encode_text(self.variants.texts)
        self.model.language.clear_cache()  # the table holds them; the cache is for inference
        return table.to(self.device)

    def _text(self, instruction_ids: torch.Tensor,
              reword: bool = False) -> TextEmbedding | list[str]:
        """Encoded instructions of a batch; with ``reword``, some read a variant instead."""
        rows = instruction_ids
        if reword and self.variants.rows.shape[1] > 1:
            settings = self.config.instructions
            count = self.variants.rows.shape[1] - 1
            n = len(instruction_ids)
            use = torch.rand(n, generator=self.reword_rng) < settings.probability
            column = torch.where(use, 1 + torch.randint(count, (n,), generator=self.reword_rng),
                                 torch.zeros(n, dtype=torch.int64))
            rows = torch.from_numpy(self.variants.rows)[instruction_ids.cpu(), column]
        if self.text_table is not None:
            return self.text_table.select(rows.to(self.text_table.tokens.device))
        return [self.variants.texts[i] for i in rows.tolist()]

    def _param_groups(self) -> list[dict[str, Any]]:
        """AdamW groups: no weight decay on biases, norms, embeddings and temperatures; a
        smaller learning rate for a fine-tuned language model."""
        opt = self.config.optim
        decay, no_decay, language = [], [], []
        for name, param in self.model.named_parameters():
            if not param.requires_grad:
                continue
            if name.startswith('language.'):
                language.append(param)
            elif param.dim() < 2 or 'embed' in name or 'logit_' in name or 'query' in name:
                no_decay.append(param)
            else:
                decay.append(param)
        groups = [{'params': decay, 'lr_scale': 1.0},
                  {'params': no_decay, 'weight_decay': 0.0, 'lr_scale': 1.0}]
        if language:
            groups.append({'params': language, 'lr_scale': opt.language_lr_scale})
        return groups

    def _progress(self) -> float:
        opt = self.config.optim
        progress = self.step / opt.max_steps
        if opt.max_minutes:
            progress = max(progress, self.elapsed / (60.0 * opt.max_minutes))
        return min(progress, 1.0)

    def _set_lr(self, progress: float) -> float:
        opt = self.config.optim
        warmup = min(1.0, (self.step + 1) / max(opt.warmup_steps, 1))
        cosine = opt.min_lr_ratio + (1 - opt.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi
                                                                                  * progress))
        lr = opt.lr * warmup * cosine
        for group in self.optimizer.param_groups:
            group['lr'] = lr * group['lr_scale']
        return lr

    def _autocast(self) -> contextlib.AbstractContextManager:
        return autocast(self.device, self.amp_dtype)

    def _batches(self) -> Iterator[FrameBatch]:
        epoch = 0
        while True:
            if isinstance(self.sampler, DistributedSampler):
                self.sampler.set_epoch(epoch)
            yield from self.loader
            epoch += 1

    def _inputs(self, batch: FrameBatch, augment: bool) -> tuple[torch.Tensor, Any,
                                                                  Optional[torch.Tensor],
                                                                  ActionTargets]:
        batch = batch.to(self.device, non_blocking=True)
        images = uint8_to_float(batch.images)  # (B, 3, S, S)
        if augment:
            images = self.augment(images, self.aug_rng)
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        targets = ActionTargets(actions=self.stats.normalize_actions(batch.actions),
                                valid=batch.valid, instruction_ids=batch.instruction_ids,
                                episode_ids=batch.episode_ids)
        state = (self.stats.normalize_states(batch.states) if self.config.model.use_proprio
                 else None)
        return images, self._text(batch.instruction_ids, reword=augment), state, targets

    # ----------------------------------------------------------------------------------------
    def train_step(self, batch: FrameBatch) -> dict[str, torch.Tensor]:
        images, text, state, targets = self._inputs(batch, augment=True)
        with self._autocast():
            out = self.net(images, text, state, targets)
        loss = out.losses['loss']
        if not torch.isfinite(loss):
            raise FloatingPointError(f'non-finite training loss at step {self.step}: '
                                     f'{ {k: float(v) for k, v in out.losses.items()} }')
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)
        else:
            loss.backward()
        if self.config.optim.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.optim.grad_clip)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        return {k: v.detach() for k, v in out.losses.items()}

    def fit(self) -> TrainResult:
        opt = self.config.optim
        ckpt_dir = self.out_dir / 'checkpoint'
        if self.dist.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
        self.model.train()
        bar = tqdm(total=opt.max_steps, initial=self.step, desc='train', unit='step',
                   disable=not self.progress, dynamic_ncols=True)
        sums: dict[str, torch.Tensor] = {}
        window_start, window_samples = time.perf_counter(), 0
        batches = self._batches()
        last_tick = time.perf_counter()
        while self._progress() < 1.0:
            lr = self._set_lr(self._progress())
            step_start = time.perf_counter()
            losses = self.train_step(next(batches))
            self.step += 1
            self.train_seconds += time.perf_counter() - step_start
            for key, value in losses.items():
                sums[key] = sums.get(key, 0.0) + value
            window_samples += opt.batch_size * self.dist.world_size
            if self.step % opt.log_every == 0:
                rate = window_samples / max(time.perf_counter() - window_start, 1e-9)
                row = {k: float(v) / opt.log_every for k, v in sums.items()}
                row.update(step=self.step, lr=lr, samples_per_s=rate)
                self.history['train'].append(row)
                bar.set_postfix(loss=f'{row["loss"]:.3f}', arm=f'{row["arm"]:.3f}',
                                lr=f'{lr:.1e}', sps=f'{rate:.0f}')
                sums, window_start, window_samples = {}, time.perf_counter(), 0
            if self.step % opt.eval_every == 0:
                self._validate_and_save(ckpt_dir)
            bar.update(1)
            now = time.perf_counter()
            self.elapsed = self.dist.max_across_ranks(self.elapsed + now - last_tick)
            last_tick = now
        bar.close()
        if self.step >= opt.max_steps:
            self.stopped_by = 'max_steps'
        else:
            self.stopped_by = 'max_minutes'
        if self.step % opt.eval_every != 0:
            self._validate_and_save(ckpt_dir)
        result = None
        if self.dist.is_main:
            result = self._finish(ckpt_dir)
        self.dist.barrier()
        return result

    # ----------------------------------------------------------------------------------------
    def _validate_and_save(self, ckpt_dir: Path) -> None:
        if self.dist.is_main:
            metrics = self.evaluate(self.config.optim.eval_samples) if len(self.val_set) else {}
            if metrics:
                row = {'step': self.step, **metrics['loss'],
                       'arm_mae_mean': float(np.mean(list(metrics['actions']['mae'].values()))),
                       'gripper_accuracy': metrics['actions']['gripper_accuracy'],
                       'V->L_R@1': metrics['alignment']['retrieval']['V->L']['recall_at_1']}
                self.history['val'].append(row)
                tqdm.write(f'step {self.step}: val bc {row["bc"]:.4f} arm MAE '
                           f'{row["arm_mae_mean"]:.5f} gripper acc '
                           f'{row["gripper_accuracy"]:.3f} V->L R@1 {row["V->L_R@1"]:.3f}')
            # Without held-out episodes the newest weights count as the best.
            val_bc = metrics['loss']['bc'] if metrics else -float(self.step)
            if val_bc < self.best_val:
                self.best_val, self.best_step = val_bc, self.step
                self.best_state = {k: v.detach().clone()
                                   for k, v in self.model.trainable_state_dict().items()}
                save_checkpoint(ckpt_dir / 'best', self.model, self.stats,
                                self._metadata(metrics))
            save_checkpoint(ckpt_dir / 'last', self.model, self.stats, self._metadata(metrics),
                            trainer_state=self._trainer_state())
        self.dist.barrier()

    @torch.no_grad()
    def evaluate(self, max_samples: int) -> dict[str, Any]:
        """Losses, action errors (real units) and alignment metrics on held-out frames."""
        model = self.model
        was_training = model.training
        model.eval()
        rng = np.random.default_rng(self.config.seed)
        count = min(max_samples, len(self.val_set))
        indices = np.sort(rng.permutation(len(self.val_set))[:count])
        sums: dict[str, float] = {}
        preds, chunks, vis, lang, act, instr = [], [], [], [], [], []
        for start in range(0, count, EVAL_BATCH):
            batch = self.val_set.__getitems__(indices[start:start + EVAL_BATCH])
            images, text, state, targets = self._inputs(batch, augment=False)
            with self._autocast():
                out = model(images, text, state, targets)
            n = len(batch)
            for key, value in out.losses.items():
                sums[key] = sums.get(key, 0.0) + float(value) * n
            # (B, 7): de-normalised first step of the chunk; the gripper entry passes through.
            action = self.stats.denormalize_actions(
                torch.cat([out.arm[:, 0].float(), out.gripper_prob[:, :1]], dim=1))
            preds.append(action.cpu().numpy())
            chunks.append(batch.actions.numpy())  # (B, K, 7) raw
            vis.append(out.vision_embedding.float().cpu().numpy())
            lang.append(out.language_embedding.float().cpu().numpy())
            act.append(out.action_embedding.float().cpu().numpy())
            instr.append(batch.instruction_ids.numpy())
        if was_training:
            model.train()
        loss = {k: v / count for k, v in sums.items()}
        loss['bc'] = loss['arm'] + self.config.model.gripper_weight * loss['gripper']
        chunks = np.concatenate(chunks)
        return {'loss': loss,
                'actions': action_errors(np.concatenate(preds), chunks[:, 0],
                                         self.train_action_mean),
                'alignment': alignment_metrics(np.concatenate(vis), np.concatenate(lang),
                                               np.concatenate(act), np.concatenate(instr),
                                               identical_action_ids(chunks))}

    def _deployment_info(self) -> DeploymentInfo:
        """Training conditions from the cache's contract; the simulator's defaults for caches
        built in memory. The cache format holds no frame resolution or intrinsics: they come
        from the contract dict where it has them (else None: not checked)."""
        contract = self.cache.contract or {}
        model = self.config.model
        language, language_hash = language_model_identity(model)
        intrinsics = contract.get('camera_intrinsics')
        return DeploymentInfo(
            control_rate_hz=float(contract.get('control_rate_hz') or DEFAULT_CONTROL_RATE_HZ),
            action_frame=(contract['base_frame'] if 'base_frame' in contract
                          else DEFAULT_ACTION_FRAME),
            image_size=model.image_size, image_crop=model.image_crop,
            camera_width=contract.get('camera_width'),
            camera_height=contract.get('camera_height'),
            camera_intrinsics=None if intrinsics is None else tuple(intrinsics),
            state_source=contract.get('state_source', DEFAULT_STATE_SOURCE),
            state_layout=STATE_LABELS, language_model=language,
            language_model_hash=language_hash, contract=contract.get('name'),
            git_commit=self.git_commit, git_dirty=self.git_dirty)

    def _metadata(self, metrics: dict[str, Any]) -> dict[str, Any]:
        report = self.cache.report
        return {'seed': self.config.seed, 'step': self.step, 'data': self.data_summary(),
                'metrics': metrics, 'train_config': self.config.to_dict(),
                # The training-start tree, not the one at save time (save_checkpoint's default).
                'git_commit': self.git_commit, 'git_dirty': self.git_dirty,
                'contract': self.cache.contract,
                # What deployment must match (the contract's rate, frame, state source...).
                'deployment': None if self.deployment is None else self.deployment.to_dict(),
                'data_report': None if report is None else asdict(report),
                # What the grounding check compares requests with (Policy.instruction_familiarity).
                'training_instructions': sorted(self.cache.instructions)}

    def data_summary(self) -> dict[str, Any]:
        def families(ids: list[int]) -> dict[str, int]:
            out: dict[str, int] = {}
            for i in ids:  # a robot's own recordings name no task family
                family = self.cache.episodes[i].family or 'unlabelled'
                out[family] = out.get(family, 0) + 1
            return dict(sorted(out.items()))

        return {'episodes_in_cache': len(self.cache.episodes),
                'train_episodes': len(self.train_ids), 'val_episodes': len(self.val_ids),
                'train_frames': len(self.train_set), 'val_frames': len(self.val_set),
                'train_episodes_per_family': families(self.train_ids),
                'val_episodes_per_family': families(self.val_ids),
                'instructions': len(self.cache.instructions),
                'sources': sorted({Path(self.cache.episodes[i].source).parent.as_posix()
                                   for i in self.train_ids})[:10]}

    def _trainer_state(self) -> dict[str, Any]:
        return {'step': self.step, 'elapsed': self.elapsed, 'train_seconds': self.train_seconds,
                'optimizer': self.optimizer.state_dict(), 'history': self.history,
                'best_val': self.best_val, 'best_step': self.best_step,
                'sampler_rng': self.sampler_rng.get_state(),
                'aug_rng': self.aug_rng.get_state(),
                'reword_rng': self.reword_rng.get_state(),
                'scaler': self.scaler.state_dict() if self.scaler is not None else None}

    def _restore(self, state: dict[str, Any]) -> None:
        self.step, self.elapsed = int(state['step']), float(state['elapsed'])
        self.train_seconds = float(state.get('train_seconds', 0.0))
        self.optimizer.load_state_dict(state['optimizer'])
        self.history = state['history']
        self.best_val, self.best_step = float(state['best_val']), int(state['best_step'])
        self.sampler_rng.set_state(state['sampler_rng'])
        self.aug_rng.set_state(state['aug_rng'])
        if 'reword_rng' in state:
            self.reword_rng.set_state(state['reword_rng'])
        if self.scaler is not None and state.get('scaler'):
            self.scaler.load_state_dict(state['scaler'])

    def _finish(self, ckpt_dir: Path) -> TrainResult:
        """Final evaluation of the best weights, then report.json / report.md / plot."""
        if self.best_state is not None:
            self.model.load_state_dict(self.best_state, strict=False)
        elif (ckpt_dir / 'best').is_dir():  # resumed run that found no better weights
            self.model.load_state_dict(load_checkpoint(ckpt_dir / 'best').model
                                       .trainable_state_dict(), strict=False)
        final = (self.evaluate(self.config.optim.final_eval_samples) if len(self.val_set)
                 else {})
        samples = self.step * self.config.optim.batch_size * self.dist.world_size
        training = {
            'steps': self.step, 'samples': samples, 'wall_minutes': self.elapsed / 60.0,
            'train_samples_per_s': samples / max(self.train_seconds, 1e-9),
            'stopped_by': self.stopped_by, 'device': str(self.device),
            'world_size': self.dist.world_size,
            'threads': torch.get_num_threads() if self.device.type == 'cpu' else None,
            'best_step': self.best_step, 'best_val_bc': self.best_val,
            'fresh_tensors': self.fresh_tensors}
        report = write_report(self.out_dir, config=self.config.to_dict(),
                              data=self.data_summary(), training=training, final_eval=final,
                              history=self.history,
                              checkpoints={'best': str(ckpt_dir / 'best'),
                                           'last': str(ckpt_dir / 'last')})
        return TrainResult(self.out_dir, ckpt_dir / 'best', ckpt_dir / 'last', report)
