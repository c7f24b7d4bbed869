"""Training frames: episodes decoded ONCE into a compact cache, then served in batches.

Parsing rosbags is slow, so `load_bag_cache` reads each bag one time and writes a `FrameCache`
folder (keyed by a hash of the bag list, their sizes and mtimes, and the image size):

    frames-<key>/images.u8       (N, 3, S, S) uint8, images resized to the model's input size
    frames-<key>/arrays.npz      actions (N, 7), states (N, 8), episode/instruction ids (N,)
    frames-<key>/meta.json       instructions, per-episode records, shapes

Later runs memory-map it. `FrameCache.from_episodes` builds the same thing in memory (tests).
`FrameDataset` serves a set of episodes with ``__getitems__`` so one DataLoader batch is one
vectorised read of the memmap.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, replace
import hashlib
import json
import os
from pathlib import Path
import shutil
import tempfile
from typing import Any, Optional

import numpy as np
import torch
from tqdm import tqdm

from vla_align.actions import ACTION_DIM
from vla_align.data.contract import TopicContract
from vla_align.data.episode import Episode
from vla_align.data.state import STATE_DIM
from vla_align.model.processing import frames_to_uint8_tensor

CACHE_VERSION = 2


class DatasetError(RuntimeError):
    """No usable training data (missing bags, empty selection, unreadable cache)."""


@dataclass(frozen=True)
class EpisodeRecord:
    """Where one episode's frames are in the cache, and what it was."""

    start: int  # first frame row
    length: int
    family: str
    instruction: str
    split: str
    seed: int
    success: bool
    source: str  # bag path, or 'memory'


@dataclass
class FrameCache:
    images: np.ndarray  # (N, 3, S, S) uint8
    actions: np.ndarray  # (N, 7) float32, raw (metres, radians, gripper 0..1)
    states: np.ndarray  # (N, STATE_DIM) float32, raw
    episode_ids: np.ndarray  # (N,) int64 index into ``episodes``
    instruction_ids: np.ndarray  # (N,) int64 index into ``instructions``
    instructions: list[str]
    episodes: list[EpisodeRecord]
    report: Optional[CacheReport] = None  # how the bags were read (None: built in memory)
    contract: Optional[dict[str, Any]] = None  # TopicContract.to_dict() of the bags

    @property
    def image_size(self) -> int:
        return int(self.images.shape[-1])

    def __len__(self) -> int:
        return len(self.actions)

    @classmethod
    def from_episodes(cls, episodes: Iterable[Episode], image_size: int,
                      sources: Optional[Sequence[str]] = None,
                      crop: str = 'center') -> FrameCache:
        """In-memory cache of ``episodes`` with images cropped and resized to ``image_size``."""
        builder = _CacheBuilder(image_size, images_file=None, crop=crop)
        for i, episode in enumerate(episodes):
            builder.add(episode, sources[i] if sources else 'memory')
        return builder.finish()

    def save(self, folder: str | Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.images.tofile(folder / 'images.u8')
        self._save_rest(folder, images_shape=self.images.shape)

    def _save_rest(self, folder: Path, images_shape: Sequence[int],
                   report: Optional[CacheReport] = None,
                   contract: Optional[dict[str, Any]] = None) -> None:
        np.savez(folder / 'arrays.npz', actions=self.actions, states=self.states,
                 episode_ids=self.episode_ids, instruction_ids=self.instruction_ids)
        meta = {'version': CACHE_VERSION, 'images_shape': list(images_shape),
                'instructions': self.instructions,
                'episodes': [asdict(record) for record in self.episodes],
                'report': None if report is None else asdict(report),
                'contract': contract or self.contract}
        (folder / 'meta.json').write_text(json.dumps(meta) + '\n')

    @classmethod
    def load(cls, folder: str | Path) -> FrameCache:
        """Open a saved cache; images stay on disk (read-only memmap)."""
        folder = Path(folder)
        try:
            meta = json.loads((folder / 'meta.json').read_text())
            if meta.get('version') != CACHE_VERSION:
                raise DatasetError(f'frame cache {folder} has version {meta.get("version")}, '
                                   f'expected {CACHE_VERSION}; delete it to rebuild')
            images = np.memmap(folder / 'images.u8', dtype=np.uint8, mode='r',
                               shape=tuple(meta['images_shape']))
            with np.load(folder / 'arrays.npz') as arrays:
                parts = {k: arrays[k] for k in ('actions', 'states', 'episode_ids',
                                                'instruction_ids')}
        except (OSError, ValueError, KeyError) as exc:
            raise DatasetError(f'frame cache {folder} is unreadable ({exc}); delete it to '
                               f'rebuild') from exc
        report = meta.get('report')
        return cls(images=images, instructions=list(meta['instructions']),
                   episodes=[EpisodeRecord(**r) for r in meta['episodes']],
                   report=None if report is None else CacheReport(**report),
                   contract=meta.get('contract'), **parts)

    def select_episodes(self, *, splits: Optional[Sequence[str]] = None,
                        only_successful: bool = True,
                        families: Optional[Sequence[str]] = None) -> list[int]:
        """Indices of episodes matching the filters."""
        # A robot's episodes often have no split or family: those filters apply only where
        # the episode has one.
        return [i for i, r in enumerate(self.episodes)
                if (not only_successful or r.success)
                and (splits is None or not r.split or r.split in splits)
                and (families is None or not r.family or r.family in families) and r.length > 0]


class _CacheBuilder:
    """Accumulates episodes; images go to a raw file (bags) or a list (memory)."""

    def __init__(self, image_size: int, images_file: Optional[Path],
                 crop: str = 'center') -> None:
        self.image_size = image_size
        self.crop = crop
        self.file = open(images_file, 'wb') if images_file else None
        self.images: list[np.ndarray] = []
        self.actions: list[np.ndarray] = []
        self.states: list[np.ndarray] = []
        self.episode_ids: list[np.ndarray] = []
        self.instruction_ids: list[np.ndarray] = []
        self.instructions: dict[str, int] = {}
        self.records: list[EpisodeRecord] = []
        self.rows = 0

    def add(self, episode: Episode, source: str) -> None:
        n = len(episode)
        if episode.actions.shape != (n, ACTION_DIM):
            raise DatasetError(f'episode from {source}: actions have shape '
                               f'{episode.actions.shape}, expected ({n}, {ACTION_DIM})')
        images = frames_to_uint8_tensor(episode.images, self.image_size, self.crop).numpy() \
            if n else \
            np.zeros((0, 3, self.image_size, self.image_size), np.uint8)
        if self.file is not None:
            self.file.write(np.ascontiguousarray(images).tobytes())
        else:
            self.images.append(images)
        instruction = episode.task.instruction
        iid = self.instructions.setdefault(instruction, len(self.instructions))
        self.actions.append(np.asarray(episode.actions, np.float32))
        self.states.append(episode.states().reshape(n, STATE_DIM))
        self.episode_ids.append(np.full(n, len(self.records), np.int64))
        self.instruction_ids.append(np.full(n, iid, np.int64))
        self.records.append(EpisodeRecord(
            start=self.rows, length=n, family=episode.task.family, instruction=instruction,
            split=episode.task.split, seed=int(episode.seed), success=bool(episode.success),
            source=source))
        self.rows += n

    @property
    def images_shape(self) -> tuple[int, int, int, int]:
        return (self.rows, 3, self.image_size, self.image_size)

    def finish(self) -> FrameCache:
        """The accumulated cache; with an images file, ``images`` is an empty placeholder
        (the caller saves the rest next to the file and memory-maps it)."""
        s = self.image_size
        if self.file is not None:
            self.file.close()
            images = np.zeros((0, 3, s, s), np.uint8)
        else:
            images = (np.concatenate(self.images) if self.images
                      else np.zeros((0, 3, s, s), np.uint8))

        def cat(parts: list[np.ndarray], shape: tuple[int, ...], dtype: Any) -> np.ndarray:
            return np.concatenate(parts) if parts else np.zeros(shape, dtype)

        return FrameCache(images=images,
                          actions=cat(self.actions, (0, ACTION_DIM), np.float32),
                          states=cat(self.states, (0, STATE_DIM), np.float32),
                          episode_ids=cat(self.episode_ids, (0,), np.int64),
                          instruction_ids=cat(self.instruction_ids, (0,), np.int64),
                          instructions=list(self.instructions), episodes=self.records)


def cache_key(bags: Sequence[Path], image_size: int, contract: Optional[TopicContract] = None,
              crop: str = 'center', instruction: Optional[str] = None) -> str:
    """Hash of the bag list (paths, file sizes, mtimes), the contract, image size and crop."""
    digest = hashlib.sha256(f'v{CACHE_VERSION}|{image_size}|{crop}|{instruction}'.encode())
    if contract is not None:
        digest.update(repr(replace(contract, path=None)).encode())
    for bag in sorted(Path(b).resolve() for b in bags):
        digest.update(str(bag).encode())
        files = sorted(bag.rglob('*')) if bag.is_dir() else [bag]
        for file in files:
            if file.is_file():
                stat = file.stat()
                digest.update(f'|{file.name}:{stat.st_size}:{stat.st_mtime_ns}'.encode())
    return digest.hexdigest()[:16]


def find_bags(paths: Sequence[str | Path]) -> list[Path]:
    """Every episode bag under ``paths`` (each a bag or a folder of bags), sorted."""
    from vla_align.data import bag_io  # lazy: rosbags only when needed

    roots = [Path(path).expanduser() for path in paths]
    for root in roots:
        if not root.exists():
            raise DatasetError(f'data path {root} does not exist')
    bags = bag_io.find_bags(roots)
    if not bags:
        raise DatasetError(f'no episode bags found under {", ".join(map(str, paths))}; '
                           f'collect some with `vla-align collect --out DIR` or record them '
                           f'with `vla-align record --episodes DIR`')
    return sorted(set(bags))


@dataclass
class CacheReport:
    """How the bags of a cache were used: what training reports and the checkpoint keeps."""

    contract: str
    bags: int
    bags_used: int
    episodes: int
    frames_read: int
    frames_used: int
    dropped: dict[str, int]  # reason -> frames (or episodes' frames) left out
    refused: list[str]  # one line per bag that does not meet the contract

    def describe(self) -> str:
        lines = [f'{self.bags_used} of {self.bags} bags used (contract {self.contract}): '
                 f'{self.episodes} episodes, {self.frames_used} of {self.frames_read} frames']
        lines += [f'  left out: {count} {reason}' for reason, count in
                  sorted(self.dropped.items(), key=lambda item: -item[1])]
        lines += [f'  refused: {line}' for line in self.refused]
        return '\n'.join(lines)


def load_bag_cache(bags: Sequence[Path], cache_root: str | Path, image_size: int,
                   contract: Optional[TopicContract] = None, crop: str = 'center',
                   instruction: Optional[str] = None,
                   progress: bool = True) -> FrameCache:
    """The frame cache of ``bags`` read through ``contract`` (default: the simulator's
    ``sim_panda``): opened if built before, else built. A bag that does not meet the contract
    is reported in one line (``cache.report.refused``) and left out; the others are used.
    Raises ``DatasetError`` when no bag gives a frame."""
    from vla_align.data.contract import load_contract
    from vla_align.data.contract_reader import ContractBagError, read_contract_episodes

    contract = contract if contract is not None else load_contract('sim_panda')
    cache_root = Path(cache_root).expanduser()
    folder = cache_root / f'frames-{cache_key(bags, image_size, contract, crop, instruction)}'
    if (folder / 'meta.json').is_file():
        return FrameCache.load(folder)
    cache_root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f'.{folder.name}.tmp-', dir=cache_root))
    dropped: Counter = Counter()
    refused: list[str] = []
    frames_read = used_bags = 0
    camera = None
    try:
        builder = _CacheBuilder(image_size, images_file=tmp / 'images.u8', crop=crop)
        bar = tqdm(bags, desc='decoding bags', unit='bag', disable=not progress)
        for bag in bar:
            try:
                result = read_contract_episodes(bag, contract, instruction)
            except ContractBagError as exc:
                refused.append(' '.join(str(exc).split()))
                if progress:
                    bar.write(f'left out: {refused[-1]}')
                continue
            frames_read += result.frames_read
            dropped.update(result.dropped)
            used_bags += bool(result.episodes)
            for episode in result.episodes:
                builder.add(episode, str(bag))
                camera = camera or episode.camera
        if builder.rows == 0:
            raise DatasetError(f'the {len(bags)} bags hold no usable frames under contract '
                               f'{contract.name!r}: ' + ('; '.join(refused[:3]) or
                                                        ', '.join(f'{v} {k}' for k, v in
                                                                  dropped.items())))
        report = CacheReport(contract=contract.name, bags=len(bags), bags_used=used_bags,
                             episodes=len(builder.records), frames_read=frames_read,
                             frames_used=builder.rows, dropped=dict(dropped), refused=refused)
        info = contract.to_dict()
        if camera is not None:  # what deployment's camera must match (checkpoint metadata)
            info.update(camera_width=camera.width, camera_height=camera.height,
                        camera_intrinsics=list(camera.intrinsics()) if camera.fx else None)
        builder.finish()._save_rest(tmp, images_shape=builder.images_shape, report=report,
                                    contract=info)
        os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return FrameCache.load(folder)


def split_episodes(cache: FrameCache, episode_ids: Sequence[int], val_fraction: float,
                   seed: int) -> tuple[list[int], list[int]]:
    """Train/val split BY EPISODE, stratified by task family (each family keeps >= 1 train
    episode and, when it has >= 2, >= 1 val episode)."""
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f'val_fraction must be in [0, 1), got {val_fraction}')
    rng = np.random.default_rng(seed)
    by_family: dict[str, list[int]] = {}
    for i in episode_ids:
        by_family.setdefault(cache.episodes[i].family, []).append(i)
    train, val = [], []
    for family in sorted(by_family):
        ids = rng.permutation(by_family[family]).tolist()
        n_val = 0
        if val_fraction > 0 and len(ids) >= 2:
            n_val = min(max(1, round(val_fraction * len(ids))), len(ids) - 1)
        val.extend(ids[:n_val])
        train.extend(ids[n_val:])
    return sorted(train), sorted(val)


@dataclass
class FrameBatch:
    """One batch of raw (un-normalised) frames, as the DataLoader yields it."""

    images: torch.Tensor  # (B, 3, S, S) uint8
    actions: torch.Tensor  # (B, K, 7) raw actions t..t+K-1 (repeating the last past the end)
    valid: torch.Tensor  # (B, K) bool, False past the episode end
    states: torch.Tensor  # (B, STATE_DIM) raw
    instruction_ids: torch.Tensor  # (B,) int64
    episode_ids: torch.Tensor  # (B,) int64

    def __len__(self) -> int:
        return len(self.actions)

    def pin_memory(self) -> FrameBatch:
        return FrameBatch(*(t.pin_memory() for t in self._tensors()))

    def to(self, device: torch.device, non_blocking: bool = False) -> FrameBatch:
        return FrameBatch(*(t.to(device, non_blocking=non_blocking) for t in self._tensors()))

    def _tensors(self) -> tuple[torch.Tensor, ...]:
        return (self.images, self.actions, self.valid, self.states, self.instruction_ids,
                self.episode_ids)


class FrameDataset(torch.utils.data.Dataset):
    """The frames of some episodes of a `FrameCache`, each with its next ``chunk_size`` actions."""

    def __init__(self, cache: FrameCache, episode_ids: Sequence[int], chunk_size: int = 1):
        self.cache = cache
        self.chunk_size = chunk_size
        records = [cache.episodes[i] for i in episode_ids]
        self.rows = (np.concatenate([np.arange(r.start, r.start + r.length) for r in records])
                     if records else np.zeros(0, np.int64))
        self.ends = (np.concatenate([np.full(r.length, r.start + r.length) for r in records])
                     if records else np.zeros(0, np.int64))

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> FrameBatch:
        return self.__getitems__([index])

    def __getitems__(self, indices: Sequence[int]) -> FrameBatch:
        idx = np.asarray(indices, dtype=np.int64)
        rows, ends = self.rows[idx], self.ends[idx]
        steps = rows[:, None] + np.arange(self.chunk_size)  # (B, K)
        valid = steps < ends[:, None]
        steps = np.minimum(steps, ends[:, None] - 1)
        c = self.cache
        return FrameBatch(
            images=torch.from_numpy(np.ascontiguousarray(c.images[rows])),
            actions=torch.from_numpy(c.actions[steps]),
            valid=torch.from_numpy(valid),
            states=torch.from_numpy(c.states[rows]),
            instruction_ids=torch.from_numpy(c.instruction_ids[rows]),
            episode_ids=torch.from_numpy(c.episode_ids[rows]))


def collate_batch(batch: FrameBatch) -> FrameBatch:
    """DataLoader collate_fn: ``FrameDataset.__getitems__`` already returns a whole batch."""
    return batch
