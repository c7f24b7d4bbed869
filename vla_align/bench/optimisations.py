"""Before/after ratios of each inference optimisation, every pair timed interleaved in one run.

Each comparison times the same work done without and with one optimisation (see
`timing.time_interleaved`), on the policy being benchmarked, and where the outputs can differ
records the largest difference, so a speed-up that changes the actions is visible.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
import contextlib
import copy
from dataclasses import dataclass
import logging
import time
from typing import Any, Optional

import numpy as np
import torch
from tqdm import tqdm

from vla_align.bench.machine import available_cpus
from vla_align.bench.policy_speed import BenchInputs, new_instructions
from vla_align.bench.timing import Comparison, Variant, time_interleaved
from vla_align.model.policy import Policy, PolicyStep
from vla_align.model.processing import check_images

LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class ComparisonSettings:
    rounds: int = 20  # alternations of the two variants
    block: int = 5  # timed calls per variant per round
    compile: bool = True  # include torch.compile vs eager (tens of seconds to compile)
    threads: tuple[int, int] = (1, 2)  # CPU intra-op thread counts compared


@contextlib.contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """torch's intra-op CPU thread count set to ``count`` inside the block."""
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def compare_optimisations(policy: Policy, inputs: BenchInputs,
                          settings: ComparisonSettings = ComparisonSettings(),
                          progress: bool = True) -> list[Comparison]:
    """Every comparison that applies to ``policy``'s device and precision."""
    bench = _Comparisons(policy, inputs, settings)
    builders: list[Callable[[], Optional[Comparison]]] = [
        bench.grad_mode, bench.channels_last, bench.instruction_cache, bench.autocast_scope,
        bench.mixed_precision, bench.threads, bench.image_copy, bench.pinned_memory]
    if settings.compile:
        builders.append(bench.compile)
    results = []
    for build in tqdm(builders, desc='optimisations', disable=not progress, leave=False):
        comparison = build()
        if comparison is not None:
            results.append(comparison)
    return results


def _step_diff(a: PolicyStep, b: PolicyStep) -> tuple[float, dict[str, float]]:
    """Largest arm-action difference (metres / radians) and the gripper-probability one."""
    arm = float(np.abs(a.action[:6] - b.action[:6]).max())
    return arm, {'gripper_prob_diff': abs(a.gripper_prob - b.gripper_prob)}


class _Comparisons:
    """One method per optimisation; each returns a `Comparison` or None where it does not
    apply (e.g. pinned memory without CUDA)."""

    def __init__(self, policy: Policy, inputs: BenchInputs, settings: ComparisonSettings):
        self.policy = policy
        self.inputs = inputs
        self.settings = settings
        self.cuda = policy.device.type == 'cuda'

    # -- helpers -----------------------------------------------------------------------------
    def _synced(self, fn: Callable[[], Any]) -> Callable[[], Any]:
        if not self.cuda:
            return fn
        device = self.policy.device

        def run() -> Any:
            out = fn()
            torch.cuda.synchronize(device)
            return out

        return run

    def _step(self, policy: Policy) -> Callable[[], PolicyStep]:
        inputs = self.inputs
        return lambda: policy.step(inputs.frame, inputs.instruction, inputs.state)

    def _compare(self, name: str, scope: str, baseline: Variant, optimised: Variant,
                 notes: str = '', max_abs_diff: Optional[float] = None,
                 extra: Optional[dict[str, Any]] = None) -> Comparison:
        stats = time_interleaved([baseline, optimised], self.settings.rounds,
                                 self.settings.block)
        return Comparison(name=name, baseline=baseline.name, optimised=optimised.name,
                          scope=scope, baseline_ms=stats[baseline.name],
                          optimised_ms=stats[optimised.name], notes=notes,
                          max_abs_diff=max_abs_diff, extra=dict(extra or {}))

    def _model_inputs(self) -> tuple[torch.Tensor, Any, Optional[torch.Tensor]]:
        policy, inputs = self.policy, self.inputs
        with torch.no_grad():
            pixels = policy.prepare_pixels(check_images(inputs.frame))
            text = policy.model.encode_text([inputs.instruction])
            state = policy.prepare_state(inputs.state[None], 1)
        return pixels, text, state

    def _sibling(self, **changes: Any) -> Policy:
        """Another Policy over the same (shared) model, with other settings."""
        policy = self.policy
        options = {'precision': 'auto', 'compile': False, **changes}
        return Policy(policy.model, policy.stats, policy.device, policy.metadata, **options)

    # -- the comparisons ---------------------------------------------------------------------
    def grad_mode(self) -> Comparison:
        pixels, text, state = self._model_inputs()
        forward = self._synced(lambda: self.policy.run_model(pixels, text, state))
        return self._compare(
            'inference_mode', 'model forward, batch 1',
            Variant('torch.no_grad', forward, torch.no_grad),
            Variant('torch.inference_mode', forward, torch.inference_mode),
            notes='inference_mode also skips version counters and view tracking')

    def channels_last(self) -> Comparison:
        pixels, _, _ = self._model_inputs()
        vision = self.policy.model.vision
        contiguous = copy.deepcopy(vision).to(memory_format=torch.contiguous_format)
        pixels_nchw = pixels.contiguous()
        dtype = self.policy.autocast_dtype

        def nchw() -> torch.Tensor:
            return contiguous(pixels_nchw, trunk_autocast=dtype)

        def nhwc() -> torch.Tensor:
            return vision(pixels, trunk_autocast=dtype)

        with torch.inference_mode():
            diff = float((nhwc() - nchw()).abs().max())
        return self._compare(
            'channels_last', 'vision encoder, batch 1',
            Variant('NCHW (contiguous)', self._synced(nchw), torch.inference_mode),
            Variant('NHWC (channels_last)', self._synced(nhwc), torch.inference_mode),
            notes='vision tokens; oneDNN/cuDNN pick NHWC kernels', max_abs_diff=diff)

    def instruction_cache(self) -> Comparison:
        policy, inputs = self.policy, self.inputs
        fresh = new_instructions(inputs.instruction)
        return self._compare(
            'instruction cache', 'policy step, batch 1',
            Variant('new instruction every step', lambda: policy.step(
                inputs.frame, next(fresh), inputs.state)),
            Variant('cached instruction', self._step(policy)),
            notes='a new instruction runs the language transformer once, then it is cached')

    def autocast_scope(self) -> Optional[Comparison]:
        policy = self.policy
        if policy.autocast_dtype is None:
            return None
        other = 'model' if policy.autocast_scope == 'vision' else 'vision'
        sibling = self._sibling()
        sibling.autocast_scope = other
        diff, extra = _step_diff(self._step(policy)(), self._step(sibling)())
        label = {'model': 'autocast whole model', 'vision': 'autocast conv trunk only'}
        dtype = str(policy.autocast_dtype).replace('torch.', '')
        return self._compare(
            'autocast scope', 'policy step, batch 1',
            Variant(f'{dtype} {label[other]}', self._step(sibling)),
            Variant(f'{dtype} {label[policy.autocast_scope]} (default)', self._step(policy)),
            notes='what mixed precision covers by default on this device',
            max_abs_diff=diff, extra=extra)

    def mixed_precision(self) -> Optional[Comparison]:
        policy = self.policy
        if policy.autocast_dtype is None:
            return None
        exact = self._sibling(precision='fp32')
        diff, extra = _step_diff(self._step(policy)(), self._step(exact)())
        dtype = str(policy.autocast_dtype).replace('torch.', '')
        return self._compare(
            f'{dtype} autocast', 'policy step, batch 1',
            Variant('fp32', self._step(exact)), Variant(f'{dtype} autocast', self._step(policy)),
            notes='precision=auto vs precision=fp32; diff = largest arm-action change',
            max_abs_diff=diff, extra=extra)

    def threads(self) -> Optional[Comparison]:
        low, high = self.settings.threads
        cpus = available_cpus()
        if self.cuda or cpus < high:
            return None
        step = self._step(self.policy)
        return self._compare(
            f'{high} threads', 'policy step, batch 1',
            Variant(f'{low} thread(s)', step, lambda: torch_threads(low)),
            Variant(f'{high} threads', step, lambda: torch_threads(high)),
            notes='torch intra-op threads; the ROS node also needs CPU for DDS',
            extra={'cpus_available': cpus})

    def image_copy(self) -> Comparison:
        frame = self.inputs.frame
        read_only = frame.copy()
        read_only.setflags(write=False)
        height, width, _ = frame.shape
        return self._compare(
            'zero-copy frame', f'check_images, one {width}x{height} frame',
            Variant('read-only frame (copied)', lambda: check_images(read_only)),
            Variant('writable frame (used in place)', lambda: check_images(frame)),
            notes='a read-only or negatively strided frame costs one copy before inference')

    def pinned_memory(self) -> Optional[Comparison]:
        if not self.cuda:
            return None
        device = self.policy.device
        frames = check_images(self.inputs.frame)

        def pageable() -> None:
            torch.from_numpy(frames).to(device)
            torch.cuda.synchronize(device)

        def pinned() -> None:
            torch.from_numpy(frames).pin_memory().to(device, non_blocking=True)
            torch.cuda.synchronize(device)

        return self._compare('pinned memory', 'one frame host -> GPU',
                             Variant('pageable, blocking', pageable),
                             Variant('pinned, non_blocking', pinned),
                             notes='the policy pins frames before the transfer on CUDA')

    def compile(self) -> Optional[Comparison]:
        policy, inputs = self.policy, self.inputs
        compiled = self._sibling(precision='auto', compile=True)
        start = time.perf_counter()
        first = self._step(compiled)()
        compile_s = time.perf_counter() - start
        if not compiled.compiled:
            LOG.warning('torch.compile is not usable here; no compile comparison')
            return None
        start = time.perf_counter()
        compiled.step(inputs.frame, inputs.instruction + ' with a longer wording', inputs.state)
        new_length_s = time.perf_counter() - start
        diff, extra = _step_diff(first, self._step(policy)())
        mode = 'reduce-overhead (CUDA graphs)' if self.cuda else 'inductor, freezing'
        extra.update(compile_s=compile_s, new_instruction_length_s=new_length_s, mode=mode)
        return self._compare(
            'torch.compile', 'policy step, batch 1',
            Variant('eager', self._step(policy)), Variant(f'compiled ({mode})',
                                                          self._step(compiled)),
            notes=f'first compiled step took {compile_s:.1f} s', max_abs_diff=diff,
            extra=extra)

