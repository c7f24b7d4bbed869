"""Single-process or `torchrun` (DistributedDataParallel) training context, from the environment.

``torchrun --nproc_per_node N -m vla_align.cli train ...`` sets WORLD_SIZE/RANK/LOCAL_RANK;
without them training runs in one process. Rank 0 alone writes files and shows progress.
"""
from __future__ import annotations

from dataclasses import dataclass
import datetime
import os

import torch
import torch.distributed as dist

from vla_align.model.device import resolve_device

#: Longest wait in one collective before a rank gives up (s; VLA_ALIGN_DIST_TIMEOUT_S).
COLLECTIVE_TIMEOUT_S = 600.0


@dataclass
class DistContext:
    rank: int
    local_rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @classmethod
    def from_env(cls, device: str = 'auto') -> DistContext:
        world = int(os.environ.get('WORLD_SIZE', '1'))
        rank = int(os.environ.get('RANK', '0'))
        local_rank = int(os.environ.get('LOCAL_RANK', '0'))
        resolved = resolve_device(device)
        if world > 1:
            if resolved.type == 'cuda':
                resolved = torch.device('cuda', local_rank)
                torch.cuda.set_device(resolved)
            if not dist.is_initialized():
                # A rank that dies leaves the others in a collective: bounded, they fail too
                # (torchrun's agent also stops the group when one worker exits with an error).
                dist.init_process_group('nccl' if resolved.type == 'cuda' else 'gloo',
                                        timeout=datetime.timedelta(seconds=float(os.environ.get(
                                            'VLA_ALIGN_DIST_TIMEOUT_S', COLLECTIVE_TIMEOUT_S))))
        return cls(rank, local_rank, world, resolved)

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def max_across_ranks(self, value: float) -> float:
        """The largest ``value`` over all ranks (keeps time-based stopping in lock-step)."""
        if not self.distributed:
            return value
        tensor = torch.tensor([value], dtype=torch.float64, device=self.device)
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
        return float(tensor.item())

    def broadcast_flag(self, flag: bool) -> bool:
        """Rank 0's ``flag`` on every rank."""
        if not self.distributed:
            return flag
        tensor = torch.tensor([int(flag)], device=self.device)
        dist.broadcast(tensor, src=0)
        return bool(tensor.item())

    def close(self) -> None:
        if self.distributed and dist.is_initialized():
            dist.destroy_process_group()
