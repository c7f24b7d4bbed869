"""The reliability report: combining fuzz seeds, judging the soak, rendering the safety page."""
import json
from pathlib import Path

import pytest

from vla_align.ros.fuzz_campaign import combine_reports
from vla_align.ros.load_tests import SoakConfig, summarize_soak
from vla_align.ros.reliability import merge_previous, part_passed, render_markdown

ROOT = Path(__file__).resolve().parents[1]


def fuzz_report(seed: int, unsafe: int = 0) -> dict:
    row = {'target': 'policy_node', 'subscriber': 'image', 'topic': '/camera/image_raw',
           'inputs_tried': 10, 'crashes': 0, 'unsafe_published': unsafe, 'log_lines': 2,
           'max_log_lines_per_kind': 1, 'floods': 0, 'diagnostics_counted': 10,
           'derived_check': 'yes', 'kinds': [{'kind': 'huge', 'sent': 10}]}
    return {'config': {'per_subscriber': 10, 'seed': seed},
            'totals': {'inputs_tried': 10, 'crashes': 0, 'unsafe_published': unsafe,
                       'floods': 0, 'unclean_shutdowns': 0},
            'subscribers': [row], 'shutdown_exit_status': {'policy_node': 0}, 'notes': []}


def test_seeds_are_combined_and_one_unsafe_command_fails_the_fuzz_part():
    combined = combine_reports([fuzz_report(5), fuzz_report(6, unsafe=1)])
    assert combined['config']['seeds'] == [5, 6]
    assert combined['totals']['inputs_tried'] == 20 and combined['totals']['unsafe_published'] == 1
    (row,) = combined['subscribers']
    assert row['inputs_tried'] == 20 and row['diagnostics_counted'] == 20
    assert len(row['kinds']) == 2
    assert not part_passed('fuzz', combined)
    assert part_passed('fuzz', combine_reports([fuzz_report(5), fuzz_report(6)]))


def test_a_run_of_some_parts_keeps_the_other_parts_already_in_the_folder(tmp_path):
    previous = {'started': '2026-01-01T00:00:00', 'passed': True,
                'parts': {'fuzz': combine_reports([fuzz_report(5)]), 'soak': {'passed': True}}}
    (tmp_path / 'reliability.json').write_text(json.dumps(previous))
    new = {'started': '2026-01-02T00:00:00', 'passed': False,
           'parts': {'soak': {'passed': False}}}
    merged = merge_previous(new, tmp_path / 'reliability.json')
    assert set(merged['parts']) == {'fuzz', 'soak'}
    assert merged['parts']['soak'] == {'passed': False}  # the new run wins for what it redid
    assert merged['started'] == '2026-01-01T00:00:00' and merged['passed'] is False
    assert merge_previous(new, tmp_path / 'absent.json') is new


def soak_samples(minutes: int, rss_growth: float, p99_end: float) -> tuple[list, list]:
    samples, latencies = [], []
    for i in range(1, minutes * 2 + 1):
        t = 30.0 * i
        rss = 1000.0 + rss_growth * t / (60 * minutes)
        samples.append({'t_s': t, 'rss_mb': {'policy_node': rss}, 'action_rate_hz': 10.0,
                        'episodes_finished': i, 'successes': i // 2})
        late = t > 60 * minutes - 300
        latencies += [(100.0 + t - k * 0.1, (p99_end if late and k == 0 else 15.0) / 1000)
                      for k in range(50)]
    return samples, latencies


@pytest.mark.parametrize('growth,p99,passed', [(5.0, 20.0, True), (300.0, 20.0, False),
                                               (5.0, 80.0, False)])
def test_the_soak_compares_its_first_and_last_minutes(growth, p99, passed):
    samples, latencies = soak_samples(60, growth, p99)
    report = summarize_soak(SoakConfig(minutes=60), samples, latencies, 100.0,
                            {'policy_node': True}, {'policy_node': 0}, 3700.0)
    assert report['rss_growth_mb']['policy_node'] == pytest.approx(growth * 55 / 60, rel=0.1)
    assert report['start']['latency_p99_ms'] == pytest.approx(15.0)
    assert report['passed'] is passed


def test_a_soak_cut_short_fails():
    samples, latencies = soak_samples(30, 0.0, 15.0)
    report = summarize_soak(SoakConfig(minutes=60), samples, latencies, 100.0,
                            {'policy_node': False}, {'policy_node': None}, 1800.0)
    assert not report['passed']


def test_the_safety_page_shows_every_part():
    samples, latencies = soak_samples(60, 2.0, 18.0)
    soak = summarize_soak(SoakConfig(minutes=60), samples, latencies, 100.0,
                          {'policy_node': True}, {'policy_node': 0}, 3700.0)
    report = {'machine': {'cpus': 2, 'processor': 'test cpu', 'platform': 'linux',
                          'python': '3.11'}, 'started': 'a', 'finished': 'b', 'passed': True,
              'parts': {'fuzz': combine_reports([fuzz_report(5), fuzz_report(6)]),
                        'faults': {'scenarios': [{
                            'name': 'state_silent', 'fault': 'the pose stops',
                            'time_to_stop_s': 0.25, 'time_to_resume_s': 0.06, 'passed': True,
                            'figures': {'limit_s': 0.36}, 'rule': 'stop in time'}],
                            'passed': True},
                        'soak': soak}}
    page = render_markdown(report, for_docs=True)
    assert 'seeds 5, 6' in page and '**20 inputs, 0 crashes, 0 unsafe' in page
    assert '| state_silent | the pose stops | 0.250 | 0.060 |' in page
    assert '| resident memory policy_node (MiB) |' in page and 'Pass: yes' in page
    assert 'SAFETY_RULES.md' in page and '![soak](reliability/soak.png)' in page


def test_the_committed_safety_page_is_the_committed_report_rendered():
    """docs/SAFETY.md is generated: it cannot drift from the report it shows."""
    report = json.loads((ROOT / 'docs' / 'reliability' / 'reliability.json').read_text())
    assert (ROOT / 'docs' / 'SAFETY.md').read_text() == render_markdown(report, for_docs=True)
    assert (ROOT / 'docs' / 'reliability' / 'soak.png').is_file()


def test_the_comparison_page_shows_each_policy_per_family_with_intervals():
    from vla_align.evaluation.comparison import render, summarize

    def report(successes):
        cells = {family: {'episodes': 50, 'successes': k, 'success_rate': k / 50,
                          'ci95': [max(0.0, k / 50 - 0.1), min(1.0, k / 50 + 0.1)]}
                 for family, k in successes.items()}
        total = sum(successes.values())
        return {'checkpoint': 'c', 'splits': {'seen': cells},
                'pooled': {'seen': {'episodes': 50 * len(cells), 'successes': total,
                                    'success_rate': total / (50 * len(cells)),
                                    'ci95': [0.1, 0.9]}}}

    train = {'training': {'minutes': 25.0, 'steps': 1200}, 'data': {'train_frames': 16000},
             'config': {'model': {'alpha_vl': 1.0, 'beta_va': 0.5, 'gamma_la': 0.5}}}
    page = render({'title': 'Robot path', 'intro': 'Same episodes.', 'policies': [
        summarize('sim bags', report({'pick': 40, 'reach': 50}), train),
        summarize('teleop bags', report({'pick': 35, 'reach': 49}), train, note='noisy')]})
    assert '| pick | 80% (40/50) [70%, 90%] | 70% (35/50) [60%, 80%] |' in page
    assert '| **pooled** | 90% (90/100)' in page and '| steps | 1200 | 1200 |' in page
    assert '- teleop bags: noisy' in page
    assert '## Alignment' not in page  # no retrieval in these reports: no empty table


def test_the_comparison_page_shows_what_the_alignment_buys_beside_success():
    from vla_align.evaluation.comparison import render, summarize

    def train(recall):
        scores = {'recall_at_1': recall, 'chance_recall_at_1': 0.01, 'recall_at_5': 0.5,
                  'mean_rank': 3.0}
        return {'training': {'wall_minutes': 50.0, 'train_samples_per_s': 139.4, 'steps': 9},
                'config': {'model': {'alpha_vl': recall}},
                'final_eval': {'alignment': {'retrieval': {'V->L': scores, 'V->A': scores}}}}

    report = {'splits': {}, 'pooled': {},
              'alignment': {'frames': 2000, 'margin': 0.2, 'true_above_wrong': 0.8265}}
    page = render({'title': 'Ablation', 'policies': [
        summarize('aligned', report, train(0.162)),
        summarize('no alignment', {'splits': {}, 'pooled': {}}, train(0.007))]})
    assert '| held-out V->L recall@1 (chance) | 16.2% (1.0%) | 0.7% (1.0%) |' in page
    assert '| held-out V->A recall@1 (chance) |' in page
    assert '| closed loop: true instruction above another | 82.7% of 2000 frames | - |' in page
    assert '| closed loop: V-L margin (true - other) | +0.200 | - |' in page
    # The trainer's own report names: wall_minutes, train_samples_per_s.
    assert '| minutes | 50.0 | 50.0 |' in page and '| samples_per_s | 139.4 | 139.4 |' in page


@pytest.mark.parametrize('page, folder, links', [
    ('ROBOT_PATH.md', 'robot_path',
     ('robot_path/via_ros/report.md', 'robot_path/evalbag_teleop/report.md')),
    ('INSTRUCTION_AUGMENTATION.md', 'instruction_augmentation',
     ('instruction_augmentation/eval/report.md', 'instruction_augmentation/train_report.md')),
    ('ACTION_CHUNKS.md', 'action_chunks',
     ('action_chunks/eval_chunks/report.md', 'action_chunks/eval_base/report.md',
      'action_chunks/eval_control/report.md', 'action_chunks/eval_ensemble/report.md')),
    ('ALIGNMENT_ABLATION.md', 'alignment_ablation',
     ('action_chunks/eval_chunks/report.md', 'alignment_ablation/eval_off/report.md')),
    ('LANGUAGE_MODEL.md', 'language_model',
     ('../checkpoints/default/eval/sim/report.md', 'language_model/eval_mpnet/report.md',
      'language_model/train_mpnet/report.md')),
])
def test_each_committed_comparison_page_is_its_comparison_rendered(page, folder, links):
    from vla_align.evaluation.comparison import render

    comparison = json.loads((ROOT / 'docs' / folder / 'comparison.json').read_text())
    assert (ROOT / 'docs' / page).read_text() == render(comparison)
    for link in links:
        assert link in comparison['outro'] and (ROOT / 'docs' / link).is_file()


def test_the_model_cards_measured_block_is_its_committed_reports_rendered():
    """checkpoints/default/MODEL_CARD.md is not typed: its measured block is generated from
    eval/sim/report.json and eval/grounding/report.json beside it."""
    from vla_align.evaluation.model_card import (
        BEGIN,
        END,
        GROUNDING_REPORT,
        SIM_REPORT,
        render_measured,
    )

    shipped = ROOT / 'checkpoints' / 'default'
    card = (shipped / 'MODEL_CARD.md').read_text()
    block = card.split(BEGIN, 1)[1].split(END, 1)[0].strip('\n')
    expected = render_measured(json.loads((shipped / SIM_REPORT).read_text()),
                               json.loads((shipped / GROUNDING_REPORT).read_text()))
    assert block == expected
    assert 'Evaluated: checkpoint checkpoints/default ' in block  # evidence of this checkpoint
