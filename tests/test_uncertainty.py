"""Uncertainty helpers against numpy / scipy references; the demo's synthetic density against scipy."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats
from scipy.special import logsumexp

from nfkd.demo_data import RingMixture, load_synthetic
from nfkd.metrics.uncertainty import (
    Estimate,
    fmt_diff,
    fmt_estimate,
    gap_share,
    is_loaded,
    load_note,
    mean_2se,
    paired_diff,
    spread,
    within_noise,
)


def test_mean_2se_matches_scipy_sem():
    x = np.random.RandomState(0).standard_normal(257) * 3 + 1
    e = mean_2se(x)
    assert e.n == 257 and e.mean == pytest.approx(x.mean()) and e.se2 == pytest.approx(2 * stats.sem(x))


def test_mean_2se_degenerate_inputs():
    assert math.isnan(mean_2se([1.0]).se2) and mean_2se([1.0]).mean == 1.0
    assert mean_2se([]).n == 0 and math.isnan(mean_2se([]).mean)
    assert math.isnan(mean_2se([1.0, -math.inf, 2.0]).se2)


def test_paired_diff_matches_scipy_paired_t():
    rng = np.random.RandomState(1)
    shared = rng.standard_normal(500) * 5  # a per-row effect both models see: pairing removes it
    a, b = shared + 0.3 + 0.2 * rng.standard_normal(500), shared + 0.2 * rng.standard_normal(500)
    d = paired_diff(a, b)
    t = stats.ttest_rel(a, b).statistic
    assert d.mean == pytest.approx((a - b).mean()) and d.se2 == pytest.approx(2 * d.mean / t)
    assert d.se2 < 0.2 * (mean_2se(a).se2 + mean_2se(b).se2)  # far tighter than the two error bars
    with pytest.raises(ValueError, match="same rows"):
        paired_diff(a, b[:-1])


def test_within_noise_and_gap_share():
    assert within_noise(Estimate(0.1, 0.2, 50)) and not within_noise(Estimate(-0.3, 0.2, 50))
    assert within_noise(Estimate(5.0, math.nan, 1))  # no SE: nothing can be claimed
    assert within_noise(paired_diff([1.0, 2.0, 3.0], [1.0, 2.0, 3.0]))  # identical models: 0 ± 0
    assert gap_share(Estimate(1.0, 0.1, 9), Estimate(4.0, 0.5, 9)) == 0.25
    assert gap_share(Estimate(1.0, 0.1, 9), Estimate(0.4, 0.5, 9)) is None
    assert fmt_diff(Estimate(0.1, 0.2, 50)) == "+0.100 ± 0.200 (within noise)"
    assert fmt_diff(Estimate(-0.3, 0.2, 50)) == "-0.300 ± 0.200"
    assert fmt_estimate(Estimate(-14.4, 0.0781, 3000)) == "-14.400 ± 0.078 (n=3000)"


def test_spread_matches_numpy_and_scipy_iqr():
    t = np.random.RandomState(2).exponential(1e-3, 101)
    s = spread(t)
    assert s["median_s"] == pytest.approx(np.median(t)) and s["iqr_s"] == pytest.approx(stats.iqr(t))
    assert s["q1_s"] == pytest.approx(np.percentile(t, 25)) and s["calls"] == 101
    with pytest.raises(ValueError):
        spread([])


def test_load_flags():
    assert not is_loaded(0.4, 2) and is_loaded(1.5, 2) and not is_loaded(None, 2)
    assert not is_loaded(2.2, 2, own_threads=2)  # at the end the run's own threads count in the average
    assert "loaded" in load_note(1.9, 2.0, 2, 2) and "loaded" not in load_note(0.2, 2.3, 2, 2)
    # right after its own training on 2 threads the average still holds that work: not other work
    assert "loaded" not in load_note(1.8, 2.0, 2, 2, busy_before=2) and "loaded" in load_note(3.5, 2.0, 2, 2, busy_before=2)


def test_ring_mixture_log_prob_against_scipy_gaussian_mixture():
    """Two blocks of 3 components = a 9-component Gaussian mixture in x: means A mu + c, covariance s^2 A A^T."""
    d = RingMixture(blocks=2, k=3, std=0.5, seed=3)
    x = d.sample(50, seed=4)
    cov = d.std ** 2 * d.A @ d.A.T
    comps = [stats.multivariate_normal(d.A @ np.concatenate([d.means[0, i], d.means[1, j]]) + d.c, cov).logpdf(x)
             for i in range(3) for j in range(3)]
    ref = logsumexp(np.stack(comps), axis=0) - math.log(9)
    np.testing.assert_allclose(d.log_prob(x), ref, rtol=1e-10, atol=1e-10)


def test_synthetic_split_is_fixed_and_seeded():
    a, dens = load_synthetic(0)
    b, _ = load_synthetic(0)
    c, _ = load_synthetic(1)
    assert a.sizes == (24300, 2700, 3000) and a.dim == 10
    np.testing.assert_array_equal(a.test, b.test)
    assert not np.array_equal(a.test, c.test)
    # the rows are draws of the density: their mean LL matches a fresh sample's (3 combined SE)
    split, fresh = mean_2se(dens.log_prob(a.test)), mean_2se(dens.log_prob(dens.sample(3000, seed=99)))
    assert abs(split.mean - fresh.mean) < 1.5 * math.hypot(split.se2, fresh.se2)
