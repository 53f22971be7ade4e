"""MCMC diagnostics against numpyro's implementations and hand-checked synthetic chains.

numpyro's ``split_gelman_rubin`` is the classic (not rank-normalised) split R-hat, and its
``effective_sample_size`` is Geyer's initial monotone sequence on whole chains: on Gaussian draws
the rank-normalised versions agree with them up to Monte Carlo noise, and the plain versions up to
rounding (R-hat) or the truncation details (ESS).
"""

from __future__ import annotations

import jax


jax.config.update("jax_enable_x64", True)

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from numpyro.diagnostics import effective_sample_size, split_gelman_rubin  # noqa: E402
from rich.console import Console  # noqa: E402
from scipy import stats  # noqa: E402

from pkpd_jax.inference import diagnostics as dg  # noqa: E402
from pkpd_jax.inference.samplers import MCMCResult  # noqa: E402


def _ar1(rng, rho: float, chains: int, n: int, dim: int = 1) -> np.ndarray:
    """Stationary AR(1) chains with unit marginal variance, shape ``(chains, n, dim)``."""
    x = np.empty((chains, n, dim))
    x[:, 0] = rng.standard_normal((chains, dim))
    eps = rng.standard_normal((chains, n, dim)) * np.sqrt(1 - rho**2)
    for t in range(1, n):
        x[:, t] = rho * x[:, t - 1] + eps[:, t]
    return x


def _fake_result(draws, *, divergent=None, energy=None, interrupted=False) -> MCMCResult:
    c, n = draws.shape[:2]
    rng = np.random.default_rng(0)
    return MCMCResult(
        draws=draws,
        logdensity=np.zeros((c, n)),
        divergent=np.zeros((c, n), bool) if divergent is None else divergent,
        acceptance=np.full((c, n), 0.8),
        energy=rng.standard_normal((c, n)) if energy is None else energy,
        step_size=np.full(c, 0.1),
        num_integration_steps=np.full((c, n), 10),
        inverse_mass_matrix=np.ones((c, draws.shape[2])),
        trajectory_length=np.full(c, 1.0),
        sampler="qhmc",
        num_warmup=100,
        thin=1,
        seed=0,
        wall_s=1.0,
        warmup_s=0.5,
        interrupted=interrupted,
    )


@pytest.mark.parametrize("seed", [0, 1])
def test_against_numpyro_on_gaussian_draws(seed):
    rng = np.random.default_rng(seed)
    iid = rng.standard_normal((4, 1000, 3)) * np.array([1.0, 5.0, 0.1]) + np.array([0.0, 3.0, -1.0])
    ar = _ar1(rng, 0.6, 4, 1000, 3)
    for x in (iid, ar):
        np.testing.assert_allclose(dg.split_rhat(x), split_gelman_rubin(x), rtol=1e-12)
        # rank-normalised R-hat equals the classic one up to the normal-scores transform
        np.testing.assert_allclose(dg.rhat(x), split_gelman_rubin(x), atol=0.01)
        np.testing.assert_allclose(dg.ess(x, split=False), effective_sample_size(x), rtol=0.05)
        np.testing.assert_allclose(dg.ess(x), effective_sample_size(x), rtol=0.10)
        np.testing.assert_allclose(dg.ess_bulk(x), effective_sample_size(x), rtol=0.10)


def test_independent_chains_have_rhat_one_and_ess_near_n():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((4, 2000, 2))
    assert np.all(np.abs(dg.rhat(x) - 1) < 0.01)
    assert np.all(np.abs(dg.split_rhat(x) - 1) < 0.01)
    n = x.shape[0] * x.shape[1]
    # the ESS estimator of white noise scatters by up to ~20% around n (30 seeds checked)
    for ess in (dg.ess(x), dg.ess_bulk(x), dg.ess_tail(x)):
        assert np.all(np.abs(ess / n - 1) < 0.25), ess
    sd_of_mean = 1 / np.sqrt(n)
    np.testing.assert_allclose(dg.mcse_mean(x), sd_of_mean, rtol=0.15)


def test_shifted_chains_have_large_rhat():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((4, 500, 1))
    x[3] += 3.0
    # by hand: 8 half-chain means (0 x 6, 3 x 2) -> B = 250 * 1.93, W = 1, R = sqrt((B + 249) / 250)
    assert dg.split_rhat(x)[0] == pytest.approx(1.71, abs=0.05)
    assert dg.rhat(x)[0] > 1.3  # rank normalisation bounds the scale of the shift
    # a drift within each chain is caught by splitting even when chains agree
    drift = rng.standard_normal((4, 500)) + np.linspace(0, 4, 500)
    assert dg.rhat(drift) > 1.3
    # scale difference only: the folded (tail) R-hat catches it, the bulk one hardly
    y = rng.standard_normal((4, 1000))
    y[0] *= 4.0
    assert dg.rhat(y) > 1.05


@pytest.mark.parametrize("rho", [0.5, 0.9])
def test_ar1_ess_matches_theory(rho):
    rng = np.random.default_rng(int(rho * 10))
    x = _ar1(rng, rho, 4, 10_000)
    n = x.shape[0] * x.shape[1]
    expected = n * (1 - rho) / (1 + rho)
    for ess in (dg.ess(x), dg.ess_bulk(x)):
        assert abs(float(ess[0]) / expected - 1) < 0.15, (float(ess[0]), expected)
    # MCSE of the mean: sd * sqrt((1 + rho) / (1 - rho) / n)
    expected_mcse = np.sqrt((1 + rho) / (1 - rho) / n)
    np.testing.assert_allclose(dg.mcse_mean(x)[0], expected_mcse, rtol=0.1)
    # tail ESS: the indicator I(x <= q_0.05) has lag-k autocorrelation
    # (Phi2(q, q; rho^k) - p^2) / (p (1 - p)), p = 0.05 (the q_0.95 one is the same by symmetry)
    p = 0.05
    q = stats.norm.ppf(p)
    tau, k = 1.0, 1
    while rho**k > 1e-5:
        r = rho**k
        joint = stats.multivariate_normal([0.0, 0.0], [[1.0, r], [r, 1.0]]).cdf([q, q])
        tau += 2 * (joint - p**2) / (p * (1 - p))
        k += 1
    assert abs(float(dg.ess_tail(x)[0]) / (n / tau) - 1) < 0.2, (float(dg.ess_tail(x)[0]), n / tau)


def test_shapes_odd_draws_and_edge_cases():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((3, 101, 2, 3))  # trailing dims kept in the output shape
    for f in (dg.rhat, dg.split_rhat, dg.ess, dg.ess_bulk, dg.ess_tail, dg.mcse_mean):
        assert f(x).shape == (2, 3)
    # odd number of draws: the middle draw is dropped, as numpyro does
    np.testing.assert_allclose(dg.split_rhat(x[..., 0, 0]), split_gelman_rubin(x[..., 0, 0]))
    assert dg.rhat(x[..., 0, 0]).shape == ()
    # too few draws -> NaN; constant draws -> ESS = number of draws
    assert np.isnan(dg.rhat(x[:, :3, 0, 0]))
    const = np.ones((2, 50))
    assert float(dg.ess(const)) == 100.0
    with pytest.raises(ValueError, match=r"\(chains, draws, \.\.\.\)"):
        dg.rhat(np.ones(10))


def test_ebfmi():
    rng = np.random.default_rng(5)
    iid = rng.standard_normal((2, 4000))
    np.testing.assert_allclose(dg.ebfmi(iid), 2.0, rtol=0.1)  # E[(E_n - E_{n-1})^2] = 2 Var
    walk = _ar1(rng, 0.98, 2, 4000)[..., 0]  # sticky energies: poor momentum resampling
    assert np.all(dg.ebfmi(walk) < 0.1)
    with pytest.raises(ValueError, match="chains, draws"):
        dg.ebfmi(np.ones(5))


def test_summarize_columns_and_values():
    rng = np.random.default_rng(6)
    x = rng.standard_normal((4, 1000, 2)) * np.array([1.0, 2.0]) + np.array([1.0, -1.0])
    df = dg.summarize(x, ["a", "b"])
    assert df.columns == [
        "name",
        "mean",
        "sd",
        "q2.5",
        "q50",
        "q97.5",
        "mcse_mean",
        "rhat",
        "ess_bulk",
        "ess_tail",
    ]
    assert df["name"].to_list() == ["a", "b"]
    np.testing.assert_allclose(df["mean"].to_numpy(), [1.0, -1.0], atol=0.1)
    np.testing.assert_allclose(df["sd"].to_numpy(), [1.0, 2.0], rtol=0.05)
    np.testing.assert_allclose(df["q97.5"].to_numpy(), [1.0 + 1.96, -1.0 + 3.92], atol=0.15)
    np.testing.assert_allclose(df["rhat"].to_numpy(), dg.rhat(x))
    assert dg.summarize(_fake_result(x))["name"].to_list() == ["x[0]", "x[1]"]
    with pytest.raises(ValueError, match="expected 2 names"):
        dg.summarize(x, ["a"])


def _render(table) -> str:
    console = Console(record=True, width=200)
    console.print(table)
    return console.export_text()


def test_check_and_warning_table():
    rng = np.random.default_rng(7)
    good = rng.standard_normal((4, 1000, 2))
    result = _fake_result(good)
    assert dg.check(result, dg.summarize(good, ["a", "b"])) == []
    assert "all diagnostics OK" in _render(dg.warning_table([]))

    bad = good.copy()
    bad[0, :, 0] += 5.0  # one chain elsewhere
    divergent = np.zeros((4, 1000), bool)
    divergent[1, :7] = True
    energy = _ar1(rng, 0.99, 4, 1000)[..., 0]  # low E-BFMI
    result = _fake_result(bad, divergent=divergent, energy=energy, interrupted=True)
    warnings = dg.check(result, dg.summarize(bad, ["a", "b"]))
    text = "\n".join(warnings)
    assert "interrupted" in text
    assert "7 of 4000" in text
    assert "E-BFMI below 0.3" in text
    assert "R-hat > 1.01 for 1 of 2" in text and "a (" in text
    assert "bulk ESS < 400" in text
    rendered = _render(dg.warning_table(warnings))
    assert "E-BFMI" in rendered and "all diagnostics OK" not in rendered
    assert dg.divergences(result) == 7
    assert dg.mean_acceptance(result) == pytest.approx(0.8)
    # the ESS threshold scales with the number of chains: 100 per chain below 4 chains
    two = _fake_result(good[:2, :150])
    low = dg.check(two, dg.summarize(good[:2, :150]))
    assert not any("ESS" in w for w in low)
