import math

import pytest
from scipy import stats as sps

from pgolf.stats import STRICT_MARGIN_NATS, Sample, ci95, min_detectable_improvement, p_less, pooled_std, seeds_needed

RECORD_1769 = [1.06356801, 1.0641313, 1.06466993, 1.06509678, 1.06516558]
RECORD_1736 = [1.0661, 1.06473, 1.06563]


def test_practised_rule_reproduces_published_p_for_record_1769_vs_1736():
    p = p_less(Sample.of(RECORD_1769), Sample.of(RECORD_1736))
    assert round(p, 3) == 0.063


def test_sample_uses_ddof_1():
    s = Sample.of([1.0, 2.0, 3.0])
    assert (s.mean, s.std, s.n) == (2.0, 1.0, 3)


def test_ci95_matches_t_interval_and_contains_mean():
    s = Sample.of(RECORD_1769)
    low, high = ci95(s)
    half = sps.t.ppf(0.975, 4) * s.std / math.sqrt(5)
    assert low == pytest.approx(s.mean - half) and high == pytest.approx(s.mean + half)


def test_strict_margin_makes_the_test_harder():
    better = Sample(2.50, 0.002, 3)
    base = Sample(2.51, 0.002, 3)
    assert p_less(better, base) < 0.01
    assert p_less(better, base, STRICT_MARGIN_NATS) > p_less(better, base)
    # an improvement below the margin can never pass the strict rule
    assert p_less(Sample(2.507, 0.001, 5), base, STRICT_MARGIN_NATS) > 0.5


def test_worse_candidate_gets_large_p():
    assert p_less(Sample(1.10, 0.01, 3), Sample(1.00, 0.01, 3)) > 0.99


def test_p_is_nan_with_one_seed():
    assert math.isnan(p_less(Sample(1.0, math.nan, 1), Sample(1.1, 0.01, 3)))


def test_seeds_needed_is_the_smallest_n_that_passes():
    cand, ref = Sample(2.490, 0.004, 3), Sample(2.500, 0.004, 3)
    n = int(seeds_needed(cand, ref))
    assert p_less(Sample(cand.mean, cand.std, n), Sample(ref.mean, ref.std, n), STRICT_MARGIN_NATS) < 0.01
    assert p_less(Sample(cand.mean, cand.std, n - 1), Sample(ref.mean, ref.std, n - 1), STRICT_MARGIN_NATS) >= 0.01


def test_seeds_needed_nan_when_improvement_below_margin():
    assert math.isnan(seeds_needed(Sample(2.498, 0.001, 3), Sample(2.500, 0.001, 3)))


def test_pooled_std_weights_groups_by_degrees_of_freedom_and_skips_single_values():
    a, b, single = [1.0, 2.0, 4.0, 7.0], [3.0, 5.0], [100.0]
    by_hand = math.sqrt((3 * sps.tstd(a) ** 2 + 1 * sps.tstd(b) ** 2) / 4)
    assert pooled_std([a, b, single]) == pytest.approx(by_hand)
    assert math.isnan(pooled_std([single]))


def test_min_detectable_improvement_needs_two_seeds_and_shrinks_with_more():
    assert math.isnan(min_detectable_improvement(0.001, 1, 0.25))
    three, five = (min_detectable_improvement(0.001, n, 0.25) for n in (3, 5))
    assert 0 < five < three
