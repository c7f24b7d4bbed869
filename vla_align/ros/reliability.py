"""`vla-align reliability`: bad input across seeds, faults survived, load held -- as figures.

One command runs the whole reliability campaign and writes ``reliability.json`` and
``reliability.md`` (plus the soak plot) to ``--out``; ``--doc docs/SAFETY.md`` also writes the
project's safety page from the same report, and ``--render REPORT.json`` re-renders a committed
report without running anything (the page is generated, never typed):

1. **fuzz** -- ``fuzz_campaign`` on ``--seeds`` fresh seeds, every subscriber and service;
2. **faults** -- ``faults``: the robot path's scenarios on live processes;
3. **flood** -- ``load_tests.run_flood``: a 200 Hz 640x480 camera into the policy node;
4. **soak** -- ``load_tests.run_soak``: the simulation graph for ``--soak-minutes``.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
from pathlib import Path
import platform
import sys
from typing import Any, Optional

PARTS = ('fuzz', 'faults', 'flood', 'soak')
SAFETY_RULES = 'SAFETY_RULES.md'


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--out', type=Path, default=Path('runs/reliability'),
                        help='folder for reliability.json, reliability.md, soak.png and logs')
    parser.add_argument('--parts', nargs='+', choices=PARTS, default=list(PARTS),
                        help='what to run (default: all)')
    parser.add_argument('--seeds', type=int, default=3, help='fuzz campaigns (fresh seeds)')
    parser.add_argument('--seed', type=int, default=None,
                        help='first fuzz seed (default: a fresh one, printed)')
    parser.add_argument('-n', '--per-subscriber', type=int, default=100,
                        help='fuzz inputs per subscriber and seed (default 100)')
    parser.add_argument('--flood-seconds', type=float, default=30.0)
    parser.add_argument('--flood-rate', type=float, default=200.0, help='flood frames per s')
    parser.add_argument('--soak-minutes', type=float, default=60.0)
    parser.add_argument('--checkpoint', default='checkpoints/default')
    parser.add_argument('--doc', type=Path, default=None,
                        help='also write this safety page (docs/SAFETY.md) from the report')
    parser.add_argument('--render', type=Path, default=None, metavar='REPORT.json',
                        help='only render --doc (and --out/reliability.md) from this report')


def run(args: argparse.Namespace) -> int:
    if args.render is not None:
        report = json.loads(args.render.read_text())
    else:
        report = merge_previous(run_campaign(args), args.out / 'reliability.json')
        (args.out / 'reliability.json').write_text(json.dumps(report, indent=2) + '\n')
        (args.out / 'reliability.md').write_text(render_markdown(report))
        print(f'report: {args.out / "reliability.md"}')
    if args.doc is not None:
        args.doc.write_text(render_markdown(report, for_docs=True))
        print(f'wrote {args.doc}')
    return 0 if report.get('passed') else 1


def run_campaign(args: argparse.Namespace) -> dict[str, Any]:
    from tqdm import tqdm

    from vla_align.ros import fuzz_campaign
    from vla_align.ros.faults import FaultCampaign, FaultConfig
    from vla_align.ros.load_tests import FloodConfig, SoakConfig, run_flood, run_soak

    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {'machine': machine(), 'started': now(), 'parts': {}}
    parts = report['parts']
    if 'fuzz' in args.parts:
        first = fuzz_campaign.fresh_seed() if args.seed is None else args.seed
        print(f'fuzz seeds {first}..{first + args.seeds - 1}', flush=True)
        reports = []
        for seed in range(first, first + args.seeds):
            config = fuzz_campaign.CampaignConfig(
                per_subscriber=args.per_subscriber, seed=seed, checkpoint=args.checkpoint,
                out_dir=out / 'fuzz' / f'seed_{seed}', domain_id=221)
            with tqdm(total=fuzz_campaign.expected_inputs(config), desc=f'fuzz seed {seed}',
                      unit='msg') as bar:
                reports.append(fuzz_campaign.Campaign(config, bar).run())
        parts['fuzz'] = fuzz_campaign.combine_reports(reports)
    if 'faults' in args.parts:
        with tqdm(total=7, desc='faults', unit='scenario') as bar:
            parts['faults'] = FaultCampaign(
                FaultConfig(checkpoint=args.checkpoint, out_dir=out / 'faults'),
                progress=lambda _name: bar.update(1)).run()
    if 'flood' in args.parts:
        print('flood ...', flush=True)
        parts['flood'] = run_flood(FloodConfig(rate_hz=args.flood_rate,
                                               duration_s=args.flood_seconds,
                                               checkpoint=args.checkpoint))
    if 'soak' in args.parts:
        total = args.soak_minutes * 60.0
        with tqdm(total=round(total), desc='soak', unit='s') as bar:
            def advance(done: float) -> None:
                bar.update(max(0, round(done) - bar.n))

            parts['soak'] = run_soak(SoakConfig(minutes=args.soak_minutes,
                                                checkpoint=args.checkpoint), out / 'soak',
                                     progress=advance)
    report['finished'] = now()
    report['passed'] = all(part_passed(name, part) for name, part in parts.items())
    return report


def merge_previous(report: dict[str, Any], previous_path: Path) -> dict[str, Any]:
    """Keep the parts of the report already in ``--out`` that this run did not redo.

    ``--parts soak`` after ``--parts fuzz faults flood`` (or both at once, on separate cores)
    then leaves one report holding all four; the file is read when this run ends, not when it
    starts, so two runs into one folder keep each other's parts.
    """
    if not previous_path.is_file():
        return report
    previous = json.loads(previous_path.read_text())
    kept = {name: part for name, part in previous.get('parts', {}).items()
            if name not in report['parts']}
    if not kept:
        return report
    merged = dict(report, parts={**kept, **report['parts']})
    merged['started'] = min(previous.get('started', report['started']), report['started'])
    merged['passed'] = all(part_passed(name, part) for name, part in merged['parts'].items())
    return merged


def part_passed(name: str, part: dict[str, Any]) -> bool:
    if name == 'fuzz':
        t = part['totals']
        return not (t['crashes'] or t['unsafe_published'] or t['floods']
                    or t['unclean_shutdowns'] or part['notes'])
    return bool(part.get('passed'))


def machine() -> dict[str, Any]:
    return {'cpus': os.cpu_count(), 'platform': platform.platform(),
            'python': sys.version.split()[0], 'processor': _cpu_model()}


def _cpu_model() -> str:
    try:
        for line in Path('/proc/cpuinfo').read_text().splitlines():
            if line.startswith('model name'):
                return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or 'unknown'


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')


# -- rendering ------------------------------------------------------------------------------------
def _ms(value: Optional[float]) -> str:
    return '-' if value is None else f'{value:.1f}'


def _s(value: Optional[float]) -> str:
    return '-' if value is None else f'{value:.3f}'


def render_markdown(report: dict[str, Any], for_docs: bool = False) -> str:
    """The report as Markdown (the safety page when ``for_docs``)."""
    parts = report['parts']
    m = report['machine']
    lines = ['# Safety and reliability, measured' if for_docs else '# Reliability campaign', '']
    if for_docs:
        lines += ['Generated by `vla-align reliability --doc docs/SAFETY.md` from '
                  '`docs/reliability/reliability.json` (re-render with `vla-align reliability '
                  '--render docs/reliability/reliability.json --doc docs/SAFETY.md`); what the '
                  f'nodes check and why is in [{SAFETY_RULES}]({SAFETY_RULES}).', '']
    lines += [f"Machine: {m['cpus']} CPUs ({m['processor']}), {m['platform']}, Python "
              f"{m['python']}; run {report['started']} .. {report.get('finished', '?')}. "
              f"**{'All parts passed.' if report.get('passed') else 'Not every part passed.'}**",
              '']
    if 'fuzz' in parts:
        lines += _render_fuzz(parts['fuzz'])
    if 'faults' in parts:
        lines += _render_faults(parts['faults'])
    if 'flood' in parts:
        lines += _render_flood(parts['flood'])
    if 'soak' in parts:
        lines += _render_soak(parts['soak'], for_docs)
    return '\n'.join(lines) + '\n'


def _render_fuzz(fuzz: dict[str, Any]) -> list[str]:
    t = fuzz['totals']
    seeds = fuzz['config'].get('seeds', [fuzz['config']['seed']])
    lines = ['## Bad input, across seeds', '',
             f"`vla-align fuzz` generators (hypothesis), seeds {', '.join(map(str, seeds))}, "
             f"{fuzz['config']['per_subscriber']} inputs per subscriber and seed: "
             f"**{t['inputs_tried']} inputs, {t['crashes']} crashes, {t['unsafe_published']} "
             f"unsafe commands published, {t['floods']} log floods, {t['unclean_shutdowns']} "
             f"unclean shutdowns**.", '',
             '| node | subscriber / service | inputs | crashes | unsafe | log lines (max per '
             'kind) | counted in diagnostics |', '|---|---|---|---|---|---|---|']
    for s in fuzz['subscribers']:
        lines.append(f"| {s['target']} | `{s['topic']}` | {s['inputs_tried']} | {s['crashes']} "
                     f"| {s['unsafe_published']} | {s['log_lines']} "
                     f"({s['max_log_lines_per_kind']}) | "
                     f"{'-' if s['diagnostics_counted'] is None else s['diagnostics_counted']} |")
    lines += ['', '"unsafe": a command that is non-finite or out of its limits, or that was '
              'derived from the bad input (an answer to a bad frame, a command applied from a '
              'malformed one, motion while disabled), refused text relayed, or the simulated '
              'hand outside its workspace box. Kinds of damage per subscriber are in '
              '`reliability.json`.', '']
    lines += [f'- note: {note}' for note in fuzz['notes']]
    return lines + ([''] if fuzz['notes'] else [])


def _render_faults(faults: dict[str, Any]) -> list[str]:
    lines = ['## Faults survived (the robot path, live processes)', '',
             '| scenario | fault | time to stop (s) | time to resume (s) | figures | rule | '
             'pass |', '|---|---|---|---|---|---|---|']
    for s in faults['scenarios']:
        figures = ', '.join(f'{k} {v}' for k, v in s['figures'].items())
        lines.append(f"| {s['name']} | {s['fault']} | {_s(s['time_to_stop_s'])} | "
                     f"{_s(s['time_to_resume_s'])} | {figures} | {s['rule']} | "
                     f"{'yes' if s['passed'] else '**no**'} |")
    return lines + ['', 'Time to stop: from the fault until MoveIt Servo would halt the arm (the '
                    'first zero twist after the last moving one, or its 0.1 s '
                    '`incoming_command_timeout` after the stream goes silent).', '']


def _render_flood(flood: dict[str, Any]) -> list[str]:
    c, p = flood['config'], flood['probe']
    return ['## Image flood', '',
            f"{c['width']}x{c['height']} frames at {c['rate_hz']:g} Hz asked, "
            f"{flood['camera_rate_hz']:.1f} Hz achieved, for {c['duration_s']:g} s into the "
            f"policy node (shipped checkpoint, control rate {c['control_rate']:g} Hz):", '',
            '| action rate (Hz) | latency p50 (ms) | latency p99 (ms) | frames dropped by the '
            'node | resident memory start -> end (MiB) | pass |', '|---|---|---|---|---|---|',
            f"| {flood['action_rate_hz']:.1f} | {_ms(flood['latency_p50_ms'])} | "
            f"{_ms(flood['latency_p99_ms'])} | "
            f"{p['policy_diagnostics'].get('frames_dropped', '?')} | "
            f"{_ms(p['rss_start_mb'])} -> {_ms(p['rss_end_mb'])} | "
            f"{'yes' if flood['passed'] else '**no**'} |", '', f"Rule: {flood['rule']}. The "
            'flood publisher runs on the same 2 cores as the node.', '']


def _render_soak(soak: dict[str, Any], for_docs: bool) -> list[str]:
    start, end = soak['start'], soak['end']
    plot = 'reliability/soak.png' if for_docs else 'soak/soak.png'
    rows = []
    for name in start['rss_mb']:
        rows.append(f"| resident memory {name} (MiB) | {start['rss_mb'][name]:.1f} | "
                    f"{end['rss_mb'][name]:.1f} |")
    return ['## Soak of the simulation graph', '',
            f"`make demo`'s graph (sim, instruction and policy nodes, the policy commanding "
            f"through the robot path) for {soak['duration_s'] / 60:.1f} min: "
            f"{soak['episodes_finished']} episodes, {soak['successes']} successes. First and "
            f"last {soak['config']['window_min']:g} minutes:", '',
            '| | start | end |', '|---|---|---|', *rows,
            f"| action rate (Hz) | {start['action_rate_hz']:.2f} | {end['action_rate_hz']:.2f} |",
            f"| camera -> action latency p50 (ms) | {_ms(start['latency_p50_ms'])} | "
            f"{_ms(end['latency_p50_ms'])} |",
            f"| camera -> action latency p99 (ms) | {_ms(start['latency_p99_ms'])} | "
            f"{_ms(end['latency_p99_ms'])} |", '',
            f"Pass: {'yes' if soak['passed'] else '**no**'} ({soak['rule']}).", '',
            f'![soak]({plot})', '']
