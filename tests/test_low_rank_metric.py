"""QHMC with a low-rank-modified mass centre (``metric="low_rank"``): the metric algebra, the
random mass draw, invariance of the kernel, and the warm-up on a target with a few strongly
correlated directions (where a diagonal mass cannot help)."""

from __future__ import annotations

import jax


jax.config.update("jax_enable_x64", True)

import functools  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import blackjax.mcmc.metrics as metrics  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from blackjax.adaptation.window_adaptation import build_schedule  # noqa: E402
from blackjax.mcmc.metrics import LowRankInverseMassMatrix  # noqa: E402

from pkpd_jax.inference import (  # noqa: E402
    adaptation,
    ess,
    metrics as mass_metrics,  # noqa: E402
    qhmc,
    sample,
    samplers,
)


ROOT = Path(__file__).resolve().parents[1]


def _random_low_rank(d=7, k=3, seed=0):
    rng = np.random.default_rng(seed)
    sigma = np.exp(rng.uniform(-1, 1, d))
    U, _ = np.linalg.qr(rng.standard_normal((d, k)))
    lam = np.array([9.0, 0.2, 1.0])[:k]
    dense = np.diag(sigma) @ (np.eye(d) + U @ np.diag(lam - 1) @ U.T) @ np.diag(sigma)
    return LowRankInverseMassMatrix(jnp.asarray(sigma), jnp.asarray(U), jnp.asarray(lam)), dense


def test_metric_algebra_matches_the_dense_matrix():
    metric, dense = _random_low_rank()
    v = np.random.default_rng(1).standard_normal((5, 7))
    np.testing.assert_allclose(mass_metrics.inverse_mass_times(metric, jnp.asarray(v)), v @ dense, rtol=1e-12)
    np.testing.assert_allclose(
        mass_metrics.mass_times(metric, jnp.asarray(v)), v @ np.linalg.inv(dense), rtol=1e-10
    )
    np.testing.assert_allclose(mass_metrics.metric_diagonal(metric), np.diag(dense), rtol=1e-12)
    diag = jnp.asarray(np.diag(dense))  # the diagonal case is plain elementwise arithmetic
    np.testing.assert_allclose(mass_metrics.inverse_mass_times(diag, jnp.asarray(v)), v * np.diag(dense))


def test_low_rank_mass_draw_scales_the_diagonal_part():
    metric, dense = _random_low_rank()
    same, log_mass = qhmc.draw_inverse_mass(jax.random.PRNGKey(0), metric, 0.0)
    assert isinstance(same, LowRankInverseMassMatrix)
    np.testing.assert_array_equal(same.sigma, metric.sigma)
    np.testing.assert_allclose(log_mass, -2 * np.log(np.asarray(metric.sigma)))
    drawn, log_mass = qhmc.draw_inverse_mass(jax.random.PRNGKey(1), metric, 0.5, xi_clip=2.0)
    scale = np.asarray(drawn.sigma / metric.sigma)  # e^{-s xi / 2}, |xi| <= 2
    assert np.all((scale >= np.exp(-0.5)) & (scale <= np.exp(0.5))) and np.ptp(scale) > 0
    np.testing.assert_allclose(log_mass, -2 * np.log(np.asarray(drawn.sigma)), rtol=1e-12)
    np.testing.assert_array_equal(drawn.U, metric.U)  # the correction's directions are kept
    with pytest.raises(ValueError, match="raveled position"):
        kernel = qhmc.build_kernel()
        state = qhmc.init(jnp.zeros(3), lambda x: -0.5 * x @ x)
        kernel(jax.random.PRNGKey(0), state, lambda x: -0.5 * x @ x, 0.1, metric, 0.5, 3)


# A 4-D correlated Gaussian, as in test_samplers (scales 0.5-10, correlation 0.9).
MU = np.array([1.0, -2.0, 0.5, 3.0])
SD = np.array([1.0, 2.0, 0.5, 10.0])
CORR = np.eye(4)
CORR[0, 1] = CORR[1, 0] = 0.9
COV = CORR * np.outer(SD, SD)


def test_whitened_mass_draw_is_the_metric_it_claims():
    """`whitened_low_rank_metric(centre, f)`: M⁻¹ = diag(σ) A diag(f) A diag(σ) with
    A = (I + U(Λ-I)Uᵀ)^{1/2}; with f = 1 it is the centre (blackjax's own low-rank metric);
    kinetic energy, momentum draw and the square-root factors agree with the dense matrices."""
    metric, dense = _random_low_rank()
    d = dense.shape[0]
    sigma, U, lam = (np.asarray(a) for a in metric)
    A = np.eye(d) + U @ np.diag(np.sqrt(lam) - 1) @ U.T
    f = np.exp(np.random.default_rng(4).uniform(-1, 1, d))
    minv = np.diag(sigma) @ A @ np.diag(f) @ A @ np.diag(sigma)
    p = np.random.default_rng(5).standard_normal(d)
    ref = metrics.default_metric(metric)
    same = qhmc.whitened_low_rank_metric(metric, jnp.ones(d))
    pj = jnp.asarray(p)
    np.testing.assert_allclose(same.kinetic_energy(pj), ref.kinetic_energy(pj), rtol=1e-12)
    np.testing.assert_allclose(A @ A, np.diag(1 / sigma) @ dense @ np.diag(1 / sigma), rtol=1e-10, atol=1e-12)
    m = qhmc.whitened_low_rank_metric(metric, jnp.asarray(f))
    np.testing.assert_allclose(m.kinetic_energy(jnp.asarray(p)), 0.5 * p @ minv @ p, rtol=1e-12)
    cols = lambda **kw: np.stack([np.asarray(m.scale(None, jnp.asarray(e), **kw)) for e in np.eye(d)], 1)  # noqa: E731
    half = cols(inv=False, trans=False)  # M^{1/2}
    np.testing.assert_allclose(half @ half.T, np.linalg.inv(minv), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(cols(inv=False, trans=True), half.T, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(cols(inv=True, trans=False) @ half, np.eye(d), atol=1e-10)
    np.testing.assert_allclose(cols(inv=True, trans=True), np.linalg.inv(half).T, rtol=1e-9, atol=1e-12)
    key = jax.random.PRNGKey(6)
    np.testing.assert_allclose(m.sample_momentum(key, jnp.zeros(d)),
                               half @ np.asarray(jax.random.normal(key, (d,))), rtol=1e-12)
    drawn, _ = qhmc.draw_inverse_mass(jax.random.PRNGKey(1), metric, 0.5, 2.0, whitened=True)
    assert isinstance(drawn, metrics.Metric)


@pytest.mark.parametrize("whitened", [False, True])
def test_qhmc_kernel_with_low_rank_centre_leaves_target_invariant(whitened):
    """Exact N(MU, COV) draws stay exact after QHMC transitions with a random low-rank mass
    (any position-independent metric distribution keeps the kernel exact)."""
    n = 4000
    prec = jnp.asarray(np.linalg.inv(COV))
    logdensity = lambda x: -0.5 * (x - MU) @ prec @ (x - MU)  # noqa: E731
    rng = np.random.default_rng(3)
    U, _ = np.linalg.qr(rng.standard_normal((4, 2)))
    metric = LowRankInverseMassMatrix(jnp.asarray(SD * 0.7), jnp.asarray(U), jnp.asarray([4.0, 0.3]))
    kernel = qhmc.build_kernel(xi_clip=2.0, whitened=whitened)

    @jax.jit
    @jax.vmap
    def run(key, x):
        state = qhmc.init(x, logdensity)
        accs = []
        for k in jax.random.split(key, 3):
            state, info = kernel(k, state, logdensity, 0.35, metric, 1.0, 5)
            accs.append(info.acceptance_rate)
        return state.position, jnp.mean(jnp.stack(accs))

    x0 = rng.multivariate_normal(MU, COV, size=n)
    x, acc = run(jax.random.split(jax.random.PRNGKey(5), n), jnp.asarray(x0))
    x = np.asarray(x)
    assert 0.2 < float(acc.mean()) < 0.995 and np.mean(np.abs(x - x0) > 1e-12) > 0.5
    assert np.all(np.abs(x.mean(axis=0) - MU) < 4 * SD / np.sqrt(n))
    np.testing.assert_allclose(x.var(axis=0) / SD**2, 1.0, atol=4 * np.sqrt(2 / n))
    assert abs(np.corrcoef(x[:, 0], x[:, 1])[0, 1] - 0.9) < 0.02


def test_longest_slow_window():
    schedule = np.asarray(build_schedule(1000))
    ends = np.flatnonzero(schedule[:, 1])
    assert adaptation.longest_slow_window(schedule) == int(np.max(np.diff(ends))) == 500
    assert adaptation.longest_slow_window(np.zeros((0, 2), int)) == 0


# A 40-D Gaussian whose correlation is three strong common factors plus 10% idiosyncratic
# variance, on scales from e^-2 to e^2: the whitened covariance (diagonal metric) has three
# eigenvalues far above 1 and many well below, the situation of a hierarchical posterior.
D = 40
_rng = np.random.default_rng(0)
_F, _ = np.linalg.qr(_rng.standard_normal((D, 3)))
_R = 0.1 * np.eye(D) + _F @ np.diag([12.0, 6.0, 3.0]) @ _F.T
_R = _R / np.sqrt(np.outer(np.diag(_R), np.diag(_R)))
FSD = np.exp(_rng.uniform(-2, 2, D))
FCOV = _R * np.outer(FSD, FSD)
FMU = _rng.standard_normal(D)
_FPREC = jnp.asarray(np.linalg.inv(FCOV))


def factor_logdensity(x):
    d = x - FMU
    return -0.5 * d @ _FPREC @ d


@functools.cache
def _factor_run(metric: str, mass_jitter: str = "whitened"):
    x0 = FMU + 0.1 * np.random.default_rng(1).standard_normal((4, D))
    return sample(factor_logdensity, x0, num_warmup=500, num_samples=1000, seed=3, progress=False,
                  metric=metric, max_rank=8, mass_jitter=mass_jitter)


def test_low_rank_warmup_recovers_moments_with_fewer_gradients():
    lr, dg = _factor_run("low_rank"), _factor_run("diag")
    for r in (lr, dg):
        assert r.divergent.sum() == 0
        z = (r.draws - FMU) / FSD
        n_eff = ess(r.draws)
        assert np.all(np.abs(z.mean(axis=(0, 1))) < 4 / np.sqrt(n_eff)), z.mean(axis=(0, 1))
        sq = z**2
        assert np.all(np.abs(sq.mean(axis=(0, 1)) - 1) < 4 * np.sqrt(2 / ess(sq)))
    # the reported diagonal of the low-rank metric approximates the marginal variances
    ratio = lr.inverse_mass_matrix[0] / FSD**2
    assert np.all((ratio > 0.6) & (ratio < 1.6)), ratio
    # and the path is much shorter at a larger step: fewer gradients per effective sample
    assert lr.num_integration_steps.mean() < 0.7 * dg.num_integration_steps.mean()
    per_grad = [np.min(ess(r.draws)) / r.num_integration_steps.sum() for r in (lr, dg)]
    assert per_grad[0] > 1.5 * per_grad[1], per_grad


def test_low_rank_options_are_checked():
    with pytest.raises(ValueError, match="metric"):
        samplers.QHMCOptions(metric="dense")
    with pytest.raises(ValueError, match="max_rank"):
        samplers.QHMCOptions(max_rank=0)
    with pytest.raises(ValueError, match="mass_jitter"):
        samplers.QHMCOptions(mass_jitter="diagonal")


_SHARDED_SCRIPT = r"""
import json
import numpy as np
import jax
import tests.test_low_rank_metric as T
from pkpd_jax.inference.samplers import sample

assert jax.device_count() == 2, jax.devices()
x0 = T.FMU + 0.1 * np.random.default_rng(1).standard_normal((4, T.D))
r = sample(T.factor_logdensity, x0, num_warmup=500, num_samples=300, seed=3, progress=False,
           metric="low_rank", max_rank=8, chain_devices=2)
print(json.dumps({"ratio": (r.inverse_mass_matrix[0] / T.FSD**2).tolist(),
                  "steps": float(r.num_integration_steps.mean()),
                  "divergent": int(r.divergent.sum())}))
"""


@pytest.mark.slow  # a second process compiles everything again (~35 s); test_sharding covers chain splits
def test_low_rank_warmup_with_chains_split_over_two_devices():
    """Split over 2 host devices (each running half of the chains' transitions), the warm-up
    pools the chains' draws into one estimate of the same quality as on one device."""
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
           "JAX_ENABLE_X64": "1", "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", _SHARDED_SCRIPT], env=env, cwd=ROOT,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    ratio = np.asarray(res["ratio"])
    assert np.all(np.isfinite(ratio)) and np.all((ratio > 0.6) & (ratio < 1.6)), ratio
    assert res["divergent"] == 0
    assert res["steps"] < 0.7 * _factor_run("diag").num_integration_steps.mean()


def test_low_rank_estimate_needs_twice_the_dimension_in_draws():
    """Regression: a short first slow window (fewer pooled draws than 2·dim) once went to the
    estimator padded to the buffer's length, and its SVD failed (non-finite factors); fitted on
    the few rows alone it returns eigenvalues fitted to noise. Below 2·dim rows only the
    diagonal scale is estimated; from 2·dim on, a finite low-rank estimate that finds a planted
    strong direction."""
    d = 60
    rng = np.random.default_rng(0)
    opts = samplers.QHMCOptions(metric="low_rank", max_rank=8)
    sd = np.exp(rng.uniform(-1, 1, d))
    u = rng.standard_normal(d)
    u /= np.linalg.norm(u)
    cov = np.diag(sd) @ (np.eye(d) + 15.0 * np.outer(u, u)) @ np.diag(sd)
    prec = np.linalg.inv(cov)
    for n in (30, 2 * d - 1, 2 * d, 2000):
        x = rng.multivariate_normal(np.zeros(d), cov, size=n)
        m = mass_metrics.low_rank_estimate(opts, jnp.asarray(x), jnp.asarray(-x @ prec))
        assert np.all(np.isfinite(m.sigma)) and np.all(np.isfinite(m.U)) and np.all(np.isfinite(m.lam))
        if n < 2 * d:
            np.testing.assert_array_equal(np.asarray(m.lam), 1.0)
            # sigma = (Var x / Var grad)^(1/4) is the marginal scale up to sampling error
            assert np.median(np.asarray(m.sigma) / np.sqrt(np.diag(cov))) == pytest.approx(1.0, abs=0.5)
        else:
            lam = np.asarray(m.lam)
            assert lam.max() > 4.0, lam
            top = np.asarray(m.U)[:, np.argmax(lam)]
            whitened = u * sd / np.asarray(m.sigma)
            assert abs(top @ whitened) / np.linalg.norm(whitened) > 0.9


def test_whitened_mass_jitter_keeps_the_low_rank_decorrelation():
    """On the factor Gaussian: QHMC's mass jitter (s = 0.5) applied per coordinate to σ mixes
    the directions the low-rank metric decorrelates; in the metric's whitened coordinates (the
    default) it does not: measured 169 against 50 effective samples per 1000 gradients (held
    to 2x here). Both sample the target."""
    white, coord = _factor_run("low_rank"), _factor_run("low_rank", "coordinates")
    per_grad = []
    for r in (white, coord):
        n_eff = ess(r.draws)
        z = ((r.draws - FMU) / FSD).mean(axis=(0, 1))
        assert np.all(np.abs(z) < 4 / np.sqrt(n_eff)), z
        per_grad.append(np.min(n_eff) / r.num_integration_steps.sum())
    assert per_grad[0] > 2 * per_grad[1], per_grad
