"""Training past one process: DDP on CPU (gloo), contrastive negatives gathered across ranks,
and one rank's failure ending every rank."""
import os
from pathlib import Path
import socket
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch

from vla_align.model.config import PolicyConfig
from vla_align.model.loss import ThreeWayAlignmentLoss

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def run_ranks(script: str, tmp_path: Path, world: int = 2, timeout: float = 240.0,
              extra_env: dict | None = None) -> list[subprocess.CompletedProcess]:
    """``script`` in ``world`` processes with the environment torchrun sets."""
    path = tmp_path / 'rank_script.py'
    path.write_text(textwrap.dedent(script))
    port = free_port()
    procs = []
    for rank in range(world):
        env = {**os.environ, 'RANK': str(rank), 'LOCAL_RANK': str(rank),
               'WORLD_SIZE': str(world), 'MASTER_ADDR': '127.0.0.1', 'MASTER_PORT': str(port),
               'OMP_NUM_THREADS': '1', 'PYTHONPATH': f'{ROOT}{os.pathsep}{ROOT / "test"}',
               'OUT': str(tmp_path), **(extra_env or {})}
        procs.append(subprocess.Popen([sys.executable, str(path)], env=env, cwd=ROOT,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    results = []
    deadline = time.monotonic() + timeout
    for proc in procs:
        try:
            out, _ = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
            out += '\n<killed: timeout>'
        results.append(subprocess.CompletedProcess(proc.args, proc.returncode, out))
    return results


def embeddings(seed: int = 0, batch: int = 8) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    unit = [torch.nn.functional.normalize(torch.randn(batch, 16, generator=g), dim=1)
            for _ in range(3)]
    return {'vision': unit[0], 'language': unit[1], 'action': unit[2],
            'instruction_ids': torch.tensor([0, 1, 2, 0, 3, 1, 4, 5]),
            'episode_ids': torch.arange(batch)}


def test_negatives_come_from_the_global_batch_and_gradients_reach_each_ranks_rows(tmp_path):
    results = run_ranks("""
        import os, torch
        from vla_align.model.config import PolicyConfig
        from vla_align.model.loss import ThreeWayAlignmentLoss
        from vla_align.train.distributed import DistContext
        import test_distributed as t
        ctx = DistContext.from_env('cpu')
        full = t.embeddings()
        half = slice(4 * ctx.rank, 4 * ctx.rank + 4)
        parts = {k: (v[half].clone().requires_grad_(v.dtype.is_floating_point))
                 for k, v in full.items()}
        torch.manual_seed(0)
        loss = ThreeWayAlignmentLoss(PolicyConfig.tiny()).train()
        out = loss(**parts)['align']
        out.backward()
        torch.save({'loss': out.item(), **{k: parts[k].grad for k in ('vision', 'language',
                    'action')}}, os.path.join(os.environ['OUT'], f'rank{ctx.rank}.pt'))
        ctx.close()
    """, tmp_path)
    assert all(r.returncode == 0 for r in results), [r.stdout[-2000:] for r in results]
    full = {k: (v.clone().requires_grad_(v.dtype.is_floating_point))
            for k, v in embeddings().items()}
    torch.manual_seed(0)
    reference = ThreeWayAlignmentLoss(PolicyConfig.tiny()).train()(**full)['align']
    reference.backward()
    for rank in range(2):
        got = torch.load(tmp_path / f'rank{rank}.pt')
        assert got['loss'] == pytest.approx(reference.item(), rel=1e-5)  # the global batch
        for name in ('vision', 'language', 'action'):
            np.testing.assert_allclose(got[name].numpy(),
                                       full[name].grad[4 * rank:4 * rank + 4].numpy(),
                                       atol=1e-6)


def test_evaluation_mode_never_waits_for_other_ranks():
    """Held-out metrics run on rank 0 alone: no gather there (it would wait forever)."""
    loss = ThreeWayAlignmentLoss(PolicyConfig.tiny()).eval()
    parts = embeddings()
    assert torch.isfinite(loss(**parts)['align'])


def test_two_processes_train_with_ddp_on_cpu_and_agree_on_the_weights(tmp_path):
    results = run_ranks("""
        import os, torch
        import test_train_trainer as t
        from vla_align.data.dataset import FrameCache
        from vla_align.train.trainer import Trainer
        from vla_align.train.distributed import DistContext
        texts = list(t.MOTIONS)
        cache = FrameCache.from_episodes(
            [t.instruction_episode(i, texts[i % 2]) for i in range(12)], image_size=32)
        ctx = DistContext.from_env('cpu')
        trainer = Trainer(t.train_config(12, batch_size=8, eval_every=6), cache,
                          os.path.join(os.environ['OUT'], 'run'), progress=False, dist=ctx)
        trainer.fit()
        torch.save({k: v.detach() for k, v in trainer.model.named_parameters()},
                   os.path.join(os.environ['OUT'], f'weights{ctx.rank}.pt'))
        print('world', ctx.world_size, 'steps', trainer.step)
        ctx.close()
    """, tmp_path)
    assert all(r.returncode == 0 for r in results), [r.stdout[-3000:] for r in results]
    assert all('world 2 steps 12' in r.stdout for r in results)
    first, second = (torch.load(tmp_path / f'weights{rank}.pt') for rank in range(2))
    # DDP kept the replicas' parameters identical (batch-norm running statistics are each
    # rank's own between DDP's broadcasts; the checkpoint holds rank 0's).
    for name, value in first.items():
        torch.testing.assert_close(value, second[name], msg=name)
    assert (tmp_path / 'run' / 'checkpoint' / 'last' / 'model.safetensors').is_file()


def test_a_rank_that_fails_ends_the_others_instead_of_leaving_them_waiting(tmp_path):
    started = time.monotonic()
    results = run_ranks("""
        import torch
        from vla_align.model.loss import gather_rows
        from vla_align.train.distributed import DistContext
        ctx = DistContext.from_env('cpu')
        if ctx.rank == 1:
            raise RuntimeError('rank 1 failed before the collective')
        gather_rows(torch.ones(4, 3))  # rank 0 waits for rank 1 here
        print('rank 0 gathered')
    """, tmp_path, timeout=120.0, extra_env={'VLA_ALIGN_DIST_TIMEOUT_S': '20'})
    assert results[1].returncode != 0 and 'rank 1 failed' in results[1].stdout
    assert results[0].returncode != 0, results[0].stdout[-2000:]
    assert 'rank 0 gathered' not in results[0].stdout
    assert '<killed: timeout>' not in results[0].stdout
    assert time.monotonic() - started < 100
