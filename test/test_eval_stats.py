"""Wilson intervals against published and hand-computed values; rate and latency summaries."""
import math

import numpy as np
import pytest

from vla_align.evaluation.stats import (
    Z_95,
    SuccessRate,
    mcnemar_exact_p,
    pooled,
    summarize_latency,
    wilson_interval,
)


def test_no_successes_gives_zero_and_the_closed_form_upper_bound():
    # k = 0: low = 0, high = z^2 / (n + z^2); 3.8415 / 23.8415 = 0.1611 for n = 20.
    interval = wilson_interval(0, 20)
    assert interval.low == 0.0
    assert interval.high == pytest.approx(Z_95 ** 2 / (20 + Z_95 ** 2))
    assert interval.high == pytest.approx(0.1611, abs=5e-5)


def test_all_successes_mirror_the_no_success_case():
    # k = n: low = n / (n + z^2), high = 1.
    interval = wilson_interval(20, 20)
    assert interval.high == 1.0
    assert interval.low == pytest.approx(20 / (20 + Z_95 ** 2))
    assert interval.low == pytest.approx(0.8389, abs=5e-5)


@pytest.mark.parametrize(('k', 'n', 'low', 'high'), [
    # Newcombe (1998), Statistics in Medicine 17:857, Table I, method 3 (Wilson score).
    (81, 263, 0.2553, 0.3662),
    (15, 148, 0.0624, 0.1605),
    (1, 29, 0.0061, 0.1718),
])
def test_mid_values_match_newcombes_table(k, n, low, high):
    interval = wilson_interval(k, n)
    assert interval.low == pytest.approx(low, abs=5e-5)
    assert interval.high == pytest.approx(high, abs=5e-5)


def test_half_successes_is_symmetric_about_one_half():
    # p = 0.5, n = 10: centre 0.5, half-width z / (1 + z^2/10) * sqrt(0.025 + z^2/400).
    half = Z_95 / (1 + Z_95 ** 2 / 10) * math.sqrt(0.025 + Z_95 ** 2 / 400)
    interval = wilson_interval(5, 10)
    assert interval.low == pytest.approx(0.5 - half)
    assert interval.high == pytest.approx(0.5 + half)
    assert interval.low == pytest.approx(0.2366, abs=5e-5)


def test_interval_contains_the_rate_and_narrows_with_more_episodes():
    for n in (1, 7, 50, 400):
        for k in range(0, n + 1, max(1, n // 7)):
            interval = wilson_interval(k, n)
            assert 0.0 <= interval.low <= k / n <= interval.high <= 1.0
    assert (wilson_interval(500, 1000).high - wilson_interval(500, 1000).low
            < wilson_interval(5, 10).high - wilson_interval(5, 10).low)


@pytest.mark.parametrize(('k', 'n'), [(3, 2), (-1, 5), (0, 0), (True, 3), (1.5, 3)])
def test_impossible_counts_are_refused(k, n):
    with pytest.raises(ValueError):
        wilson_interval(k, n)


def test_success_rate_counts_outcomes_and_pools_cells():
    a = SuccessRate.from_outcomes([True, False, True, True])
    b = SuccessRate(episodes=6, successes=0)
    assert (a.episodes, a.successes, a.rate) == (4, 3, 0.75)
    total = pooled([a, b])
    assert (total.episodes, total.successes) == (10, 3)
    assert total.to_dict() == {'episodes': 10, 'successes': 3, 'success_rate': 0.3,
                               'ci95': wilson_interval(3, 10).to_list()}
    assert pooled([]) is None
    with pytest.raises(ValueError):
        SuccessRate(episodes=2, successes=3)


def test_latency_percentiles():
    summary = summarize_latency(np.arange(1.0, 101.0))  # 1 .. 100 ms
    assert summary.count == 100 and summary.mean == pytest.approx(50.5)
    assert summary.p50 == pytest.approx(50.5)  # linear interpolation between 50 and 51
    assert summary.p99 == pytest.approx(99.01)
    assert summary.max == 100.0
    assert summarize_latency([]) is None
    with pytest.raises(ValueError):
        summarize_latency([1.0, float('nan')])


def test_mcnemar_exact_p_is_the_two_sided_binomial_test_of_the_discordant_pairs():
    assert mcnemar_exact_p(0, 0) == 1.0
    assert mcnemar_exact_p(5, 0) == pytest.approx(2 / 32)  # 5 of 5 one way: 0.0625
    assert mcnemar_exact_p(0, 6) == pytest.approx(2 / 64)
    assert mcnemar_exact_p(3, 3) == 1.0
    assert mcnemar_exact_p(7, 1) == mcnemar_exact_p(1, 7) == pytest.approx(2 * 9 / 256)
    with pytest.raises(ValueError):
        mcnemar_exact_p(-1, 2)
