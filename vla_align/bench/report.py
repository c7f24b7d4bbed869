"""bench.json (every figure) and bench.md (the tables a reader wants), plus the DESIGN.md §6
targets each figure is held to."""
from __future__ import annotations

from dataclasses import asdict, dataclass
import json
import math
from pathlib import Path
from typing import Any, Optional

SCHEMA_VERSION = 1
#: DESIGN.md §6 targets.
CPU_STEP_P50_MS = 10.0
CPU_STEP_P99_MS = 20.0
ROS_P99_MS = 30.0
GPU_ACTIONS_PER_S = 1000.0


@dataclass(frozen=True)
class TargetCheck:
    what: str
    target: str
    measured: str
    met: Optional[bool]  # None when not measured in this run


def check_targets(result: dict[str, Any]) -> list[TargetCheck]:
    """The §6 targets for this run's device (CPU targets on CPU, the GPU one on CUDA)."""
    checks: list[TargetCheck] = []
    policy = result.get('policy', {})
    cached = policy.get('step_latency', {}).get('cached_instruction')
    on_cuda = str(result['machine']['device']).startswith('cuda')
    if on_cuda:
        batch1 = [p for p in policy.get('throughput', []) if p['batch_size'] == 1]
        rate = batch1[0]['actions_per_s'] if batch1 else None
        checks.append(TargetCheck('actions/s at batch 1 (GPU)', f'>= {GPU_ACTIONS_PER_S:g}',
                                  _fmt(rate, '{:.0f}'),
                                  None if rate is None else rate >= GPU_ACTIONS_PER_S))
    elif cached:
        checks.append(TargetCheck('policy step p50, cached instruction, batch 1',
                                  f'<= {CPU_STEP_P50_MS:g} ms', f'{cached["p50_ms"]:.2f} ms',
                                  cached['p50_ms'] <= CPU_STEP_P50_MS))
        checks.append(TargetCheck('policy step p99, cached instruction, batch 1',
                                  f'<= {CPU_STEP_P99_MS:g} ms', f'{cached["p99_ms"]:.2f} ms',
                                  cached['p99_ms'] <= CPU_STEP_P99_MS))
    ros = result.get('ros', {})
    if 'latency' in ros:
        p99 = ros['latency']['p99_ms']
        checks.append(TargetCheck('camera -> action through ROS 2 topics, p99',
                                  f'<= {ROS_P99_MS:g} ms', _fmt(p99, '{:.1f} ms'),
                                  None if math.isnan(p99) else p99 <= ROS_P99_MS))
        rate = ros['settings']['rate_hz']
        checks.append(TargetCheck(f'keeps up with a {rate:g} Hz camera',
                                  '>= 95 % of frames answered',
                                  f'{ros["actions_matched"]}/{ros["frames_sent"]}',
                                  bool(ros['kept_up'])))
    return checks


def _fmt(value: Optional[float], pattern: str) -> str:
    return 'not measured' if value is None or math.isnan(value) else pattern.format(value)


def write_report(result: dict[str, Any], out_dir: str | Path) -> tuple[Path, Path]:
    """Write ``bench.json`` and ``bench.md`` into ``out_dir``; returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    result = {'schema': SCHEMA_VERSION, **result,
              'targets': [asdict(check) for check in check_targets(result)]}
    json_path, md_path = out / 'bench.json', out / 'bench.md'
    json_path.write_text(json.dumps(result, indent=2, default=_json_default) + '\n')
    md_path.write_text(render_markdown(result))
    return json_path, md_path


def _json_default(value: Any) -> Any:
    if hasattr(value, 'tolist'):
        return value.tolist()
    return str(value)


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
    lines += ['| ' + ' | '.join(str(cell) for cell in row) + ' |' for row in rows]
    return lines + ['']


def _ms(stats: dict[str, Any]) -> list[str]:
    return [f'{stats["p50_ms"]:.2f}', f'{stats["p99_ms"]:.2f}', f'{stats["mean_ms"]:.2f}',
            str(stats['count'])]


def render_markdown(result: dict[str, Any]) -> str:
    machine = result['machine']
    settings = result.get('settings', {})
    lines = ['# vla-align bench', '',
             f'{machine["started_at"]} on **{machine["device_name"]}** ({machine["device"]}, '
             f'{machine["cpu_count"]} CPUs, {machine["torch_threads"]} torch thread(s)); torch '
             f'{machine["torch_version"]}, Python {machine["python_version"]}; load average at '
             f'start {", ".join(str(v) for v in machine["load_average_at_start"])}.', '']
    lines += [f'> {note}' for note in result.get('notes', [])]
    if result.get('notes'):
        lines.append('')
    lines += [f'Model: `{settings.get("model", "?")}`; precision {settings.get("precision")}, '
              f'autocast {settings.get("autocast_dtype")} over the '
              f'{settings.get("autocast_scope")}; frames {settings.get("frame_size")}.', '']
    if result.get('targets'):
        lines += ['## Targets (DESIGN.md §6)', '']
        lines += _table(['what', 'target', 'measured', 'met'],
                        [[t['what'], t['target'], t['measured'],
                          {True: 'yes', False: '**no**', None: '-'}[t['met']]]
                         for t in result['targets']])
    policy = result.get('policy', {})
    if 'step_latency' in policy:
        step = policy['step_latency']
        lines += ['## Policy step, batch 1 (ms)', '']
        rows = [['cached', *_ms(step['cached_instruction'])],
                ['new every step', *_ms(step['new_instruction'])]]
        if step.get('executed_action'):
            rows.append([f'cached, one executed action (chunks of {step["chunk_size"]}, '
                         f'temporal ensembling)', *_ms(step['executed_action'])])
        lines += _table(['instruction', 'p50', 'p99', 'mean', 'n'], rows)
    if policy.get('throughput'):
        lines += ['## Batched throughput', '']
        lines += _table(['batch', 'actions/s', 'ms per batch (p50)'],
                        [[p['batch_size'], f'{p["actions_per_s"]:.0f}',
                          f'{p["batch_ms"]["p50_ms"]:.2f}'] for p in policy['throughput']])
    lines += _section_ros(result.get('ros', {}))
    lines += _section_simple('Training', result.get('training', {}),
                             lambda t: [['samples/s', f'{t["samples_per_s"]:.1f}'],
                                        ['batch size', t['batch_size']],
                                        ['step p50 (ms)', f'{t["step_ms"]["p50_ms"]:.1f}'],
                                        ['autocast', t['amp_dtype']],
                                        ['threads', t['threads']]])
    lines += _section_simple('Simulation', result.get('simulation', {}),
                             lambda s: [['rendered frames/s', f'{s["frames_per_s"]:.1f}'],
                                        ['control steps/s (render included)',
                                         f'{s["control_steps_per_s"]:.1f}'],
                                        ['image', 'x'.join(map(str, s['image_shape']))]])
    if result.get('optimisations'):
        lines += ['## Optimisations: before/after, timed interleaved in this run', '',
                  'speed-up = baseline p50 / optimised p50 (> 1: faster). max diff: largest '
                  'change of an output (arm action in m or rad, or vision token).', '']
        lines += _table(['optimisation', 'timed', 'baseline', 'p50 ms', 'optimised', 'p50 ms',
                         'speed-up', 'max diff', 'notes'],
                        [[c['name'], c['scope'], c['baseline'],
                          f'{c["baseline_ms"]["p50_ms"]:.3f}', c['optimised'],
                          f'{c["optimised_ms"]["p50_ms"]:.3f}', f'{c["speedup_p50"]:.2f}x',
                          '-' if c['max_abs_diff'] is None else f'{c["max_abs_diff"]:.2g}',
                          c['notes']] for c in result['optimisations']])
    return '\n'.join(lines).rstrip() + '\n'


def _section_ros(ros: dict[str, Any]) -> list[str]:
    lines = ['## Camera -> action through ROS 2 topics', '']
    if 'skipped' in ros or 'error' in ros or not ros:
        return lines + [f'Not measured: {ros.get("skipped") or ros.get("error") or "-"}', '']
    latency = ros['latency']
    return lines + _table(['camera', 'frames answered', 'p50 ms', 'p99 ms', 'max ms',
                           'kept up'],
                          [[f'{ros["settings"]["rate_hz"]:g} Hz, {ros["settings"]["width"]}x'
                            f'{ros["settings"]["height"]}',
                            f'{ros["actions_matched"]}/{ros["frames_sent"]}',
                            f'{latency["p50_ms"]:.1f}', f'{latency["p99_ms"]:.1f}',
                            f'{latency["max_ms"]:.1f}', 'yes' if ros['kept_up'] else '**no**']])


def _section_simple(title: str, data: dict[str, Any], rows) -> list[str]:
    lines = [f'## {title}', '']
    if 'skipped' in data or 'error' in data or not data:
        return lines + [f'Not measured: {data.get("skipped") or data.get("error") or "-"}', '']
    return lines + _table(['', ''], rows(data))
