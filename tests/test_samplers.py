"""QHMC and NUTS through the sampling driver, on targets with known moments.

Every statistical test runs both samplers on 2 seeds (4 chains x 500 warm-up x 1000 draws).
The runs are cached per (target, sampler, seed) and the targets are module-level functions, so
the jitted warm-up / sampling code is compiled once per target and sampler (the driver takes
``logdensity_fn`` as a static argument).
"""

from __future__ import annotations

import jax


jax.config.update("jax_enable_x64", True)

import functools  # noqa: E402

import blackjax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from blackjax.adaptation.window_adaptation import build_schedule  # noqa: E402

from pkpd_jax.inference import (  # noqa: E402
    MCMCResult,
    adaptation,
    chains,
    check,
    ess,
    mcse_mean,
    nuts,
    qhmc,
    rhat,
    sample,
    samplers,
    step_size,
    summarize,
)
from pkpd_jax.inference.metrics import inverse_mass_times  # noqa: E402
from pkpd_jax.inference.samplers import laplace_inverse_mass  # noqa: E402


# ------------------------------------------------------------------------------------ targets
MU = np.array([1.0, -2.0, 0.5, 3.0])
SD = np.array([1.0, 2.0, 0.5, 10.0])
CORR = np.eye(4)
CORR[0, 1] = CORR[1, 0] = 0.9
COV = CORR * np.outer(SD, SD)
_MU, _PREC = jnp.asarray(MU), jnp.asarray(np.linalg.inv(COV))


def gaussian_logdensity(x):
    """N(MU, COV): scales 0.5 to 10, correlation 0.9 between the first two coordinates."""
    d = x - _MU
    return -0.5 * d @ _PREC @ d


def funnel_logdensity(z):
    """Mild Neal funnel: v ~ N(0, 1), x_i | v ~ N(0, e^v), i = 1..3 (centred, as written).
    Marginals: E[x_i] = 0, Var[x_i] = E[e^v] = e^{1/2}; E[v] = 0, Var[v] = 1."""
    v, x = z[0], z[1:]
    return -0.5 * v**2 - 0.5 * jnp.sum(x**2) * jnp.exp(-v) - 0.5 * x.shape[0] * v


FUNNEL_VAR = np.array([1.0, np.exp(0.5), np.exp(0.5), np.exp(0.5)])
TARGETS = {"gaussian": gaussian_logdensity, "funnel": funnel_logdensity}
X0 = 0.5 * np.random.default_rng(0).standard_normal((4, 4))  # dispersed starts, 4 chains
# seed 0 in the default suite; seed 1 repeats each check with other draws (nox -s slow)
SAMPLER_SEEDS = [pytest.param(s, seed, marks=[pytest.mark.slow] if seed else [])
                 for s in samplers.SAMPLERS for seed in (0, 1)]
RUN = dict(num_warmup=500, num_samples=1000, progress=False)


@functools.cache
def _run(target: str, sampler: str, seed: int) -> MCMCResult:
    return sample(TARGETS[target], X0, sampler=sampler, seed=seed, **RUN)


# ------------------------------------------------------------------------- statistical tests
def _final_slow_window(num_warmup: int) -> int:
    """Length of the last slow window of Stan's warm-up schedule (the draws the final diagonal
    metric is estimated from, by blackjax's window adaptation and by the QHMC warm-up alike)."""
    ends = np.flatnonzero(np.asarray(build_schedule(num_warmup))[:, 1])
    return int(ends[-1] - ends[-2])


def _mcse(stat, sd, draws_per_chain=None):
    """MCSE of the mean of ``stat`` (chains, draws, ...) whose posterior sd is known exactly:
    ``sd / sqrt(ESS)``, the ESS estimated from the draws (scaled to ``draws_per_chain`` draws per
    chain when given). Using the exact sd, rather than the sample sd, matters for heavy-tailed
    statistics (e.g. the funnel's squares): a run that under-visits the tails also under-estimates
    their sd, and its estimated MCSE is then too small exactly when its estimate is off."""
    n_eff = ess(stat)
    if draws_per_chain is not None:
        n_eff = n_eff * draws_per_chain / stat.shape[1]
    return sd / np.sqrt(n_eff)


# All z-scores below are held to 4. Their calibration was checked over 60 seeds per sampler
# (same settings): sd 0.75-1.3 for every statistic, no |z| above 4 (largest 3.9).
@pytest.mark.parametrize("sampler,seed", SAMPLER_SEEDS)
def test_correlated_gaussian_moments(sampler, seed):
    r = _run("gaussian", sampler, seed)
    assert r.draws.shape == (4, 1000, 4) and r.sampler == sampler and not r.interrupted
    for a in (r.logdensity, r.divergent, r.acceptance, r.energy, r.num_integration_steps):
        assert a.shape == (4, 1000)
    assert r.step_size.shape == (4,) and r.inverse_mass_matrix.shape == (4, 4)
    assert 0 < r.warmup_s < r.wall_s
    summary = summarize(r.draws)
    mean, mcse = summary["mean"].to_numpy(), summary["mcse_mean"].to_numpy()
    assert np.all(np.abs(mean - MU) < 4 * mcse), (mean, mcse)
    # variances and the correlation as means of statistics with known mean and sd:
    # Var[(x - mu)^2] = 2 sd^4, Var[z0 z1] = 1 + rho^2 (z standardised)
    sq = (r.draws - MU) ** 2
    var, var_mcse = sq.reshape(-1, 4).mean(axis=0), _mcse(sq, np.sqrt(2) * SD**2)
    assert np.all(np.abs(var - SD**2) < 4 * var_mcse), (var / SD**2, var_mcse / SD**2)
    zz = (r.draws[..., 0] - MU[0]) * (r.draws[..., 1] - MU[1]) / (SD[0] * SD[1])
    zz_mcse = float(_mcse(zz, np.sqrt(1 + 0.9**2)))
    assert abs(zz.mean() - 0.9) < 4 * zz_mcse, (zz.mean(), zz_mcse)
    # The adapted diagonal metric finds the marginal variances. It is the Welford variance of
    # the w draws of the last slow warm-up window (one chain's for NUTS, pooled over the chains
    # for QHMC), shrunk as in Stan: E = w/(w+5) var + 1e-3 * 5/(w+5). Its MCSE is that of the
    # mean of (x - MU)^2 over as many draws of the same chain(s) in the sampling phase.
    w = _final_slow_window(RUN["num_warmup"])
    expected = w / (w + 5) * SD**2 + 1e-3 * 5 / (w + 5)
    if sampler == "nuts":  # adapted per chain
        se = np.stack([_mcse(sq[c : c + 1], np.sqrt(2) * SD**2, w) for c in range(4)])
    else:  # one metric shared by the chains
        np.testing.assert_array_equal(r.inverse_mass_matrix, r.inverse_mass_matrix[[0, 0, 0, 0]])
        se = _mcse(sq, np.sqrt(2) * SD**2, w)[None, :]
    z = (r.inverse_mass_matrix - expected) / se
    assert np.all(np.abs(z) < 4), z
    if sampler == "nuts":  # and the average of the 4 independent per-chain estimates
        z_avg = (r.inverse_mass_matrix.mean(0) - expected) / (np.sqrt(np.sum(se**2, 0)) / 4)
        assert np.all(np.abs(z_avg) < 4), z_avg
    assert r.divergent.sum() == 0
    assert 0.6 < r.acceptance.mean() <= 1.0
    assert check(r, summary) == []


@pytest.mark.parametrize("sampler,seed", SAMPLER_SEEDS)
def test_funnel_marginals(sampler, seed):
    r = _run("funnel", sampler, seed)
    x = r.draws
    flat = x.reshape(-1, 4)
    mcse = mcse_mean(x)
    assert np.all(np.abs(flat.mean(axis=0)) < 4 * mcse), (flat.mean(axis=0), mcse)
    # Var = E[z^2] (the means are 0), within 4 MCSE; the sd of z^2 is known:
    # Var[v^2] = 2, Var[x_i^2] = E[3 e^{2v}] - e = 3e^2 - e (x_i^2 has kurtosis ~ 8)
    second = x**2
    m2 = second.reshape(-1, 4).mean(axis=0)
    m2_mcse = _mcse(second, np.sqrt([2.0] + [3 * np.e**2 - np.e] * 3))
    assert np.all(np.abs(m2 - FUNNEL_VAR) < 4 * m2_mcse), (m2 / FUNNEL_VAR, m2_mcse)
    assert rhat(x).max() < 1.05
    assert r.divergent.mean() < 0.01  # a few divergences in the neck are expected


# ------------------------------------------------------------------------- driver behaviour
@pytest.mark.parametrize("sampler", samplers.SAMPLERS)
def test_same_seed_same_draws_other_seed_differs(sampler):
    a = _run("gaussian", sampler, 0)
    b = sample(gaussian_logdensity, X0, sampler=sampler, seed=0, **RUN)
    for field in (
        "draws",
        "logdensity",
        "divergent",
        "acceptance",
        "energy",
        "step_size",
        "num_integration_steps",
        "inverse_mass_matrix",
    ):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field), err_msg=field)
    short = dict(RUN, num_warmup=100, num_samples=100)
    a2, c = (sample(gaussian_logdensity, X0, sampler=sampler, seed=s, **short) for s in (0, 1))
    assert not np.allclose(a2.draws, c.draws)
    assert not np.allclose(a2.step_size, c.step_size)


@pytest.mark.parametrize("sampler", samplers.SAMPLERS)
def test_thinning_keeps_every_thin_th_iteration(sampler, capsys):
    full = sample(
        gaussian_logdensity,
        X0,
        sampler=sampler,
        seed=3,
        chunk=100,
        num_warmup=500,
        num_samples=300,
        progress=False,
    )
    thin = sample(
        gaussian_logdensity,
        X0,
        sampler=sampler,
        seed=3,
        chunk=300,
        thin=3,
        num_warmup=500,
        num_samples=100,
        progress=True,
    )
    assert thin.draws.shape == (4, 100, 4) and thin.thin == 3
    bars = capsys.readouterr().out  # the progress bars' final state (counts of iterations)
    assert "100/100" in bars and ("500/500" in bars) == (sampler == "qhmc"), bars
    for a in (thin.logdensity, thin.divergent, thin.acceptance, thin.energy):
        assert a.shape == (4, 100)
    # iteration i uses the i-th sampling key whatever the thinning: the kept draws are 2, 5, 8, ...
    np.testing.assert_array_equal(thin.draws, full.draws[:, 2::3])
    np.testing.assert_array_equal(thin.energy, full.energy[:, 2::3])
    blocks = (4, 100, 3)
    np.testing.assert_array_equal(
        thin.num_integration_steps, full.num_integration_steps.reshape(blocks).sum(-1)
    )
    np.testing.assert_array_equal(thin.divergent, full.divergent.reshape(blocks).any(-1))
    np.testing.assert_allclose(thin.acceptance, full.acceptance.reshape(blocks).mean(-1))


def test_keyboard_interrupt_returns_draws_so_far(monkeypatch):
    reference = _run("gaussian", "qhmc", 0)  # (cached) the uninterrupted run, before the patch
    real = adaptation.chunk_jit
    calls = []

    def interrupted_on_third_sampling_chunk(fn, opts, carry, keys, stage, valid):
        calls.append(bool(np.all(np.asarray(stage) == adaptation.SAMPLING_STAGE)))
        if sum(calls) == 3:
            raise KeyboardInterrupt
        return real(fn, opts, carry, keys, stage, valid)

    monkeypatch.setattr(adaptation, "chunk_jit", interrupted_on_third_sampling_chunk)
    r = sample(gaussian_logdensity, X0, sampler="qhmc", seed=0, chunk=100, **RUN)
    assert r.interrupted and r.draws.shape == (4, 200, 4) and r.energy.shape == (4, 200)
    np.testing.assert_array_equal(r.draws, reference.draws[:, :200])
    assert any("interrupted" in w for w in check(r, summarize(r.draws)))

    def interrupted_warmup(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(nuts, "warmup_jit", interrupted_warmup)
    r = sample(gaussian_logdensity, X0, sampler="nuts", **RUN)
    assert r.interrupted and r.draws.shape == (4, 0, 4) and np.all(np.isnan(r.step_size))


def test_sample_rejects_bad_input():
    g = gaussian_logdensity
    with pytest.raises(ValueError, match="sampler must be one of"):
        sample(g, X0, sampler="mala")
    with pytest.raises(ValueError, match=r"shape \(chains, dim\).*got shape \(4,\)"):
        sample(g, X0[0])
    with pytest.raises(TypeError, match=r"unknown option\(s\) \['log_mass_sd'\]"):
        sample(g, X0, sampler="nuts", log_mass_sd=0.5)
    with pytest.raises(ValueError, match="log_mass_sd must be >= 0, got -1"):
        sample(g, X0, log_mass_sd=-1)
    with pytest.raises(ValueError, match="thin must be an integer >= 1, got 0"):
        sample(g, X0, thin=0)
    with pytest.raises(ValueError, match="initial_positions must be finite"):
        sample(g, np.where(np.eye(4, dtype=bool), np.nan, X0))
    with pytest.raises(ValueError, match="inverse_mass_init must be 4 finite positive"):
        sample(g, X0, inverse_mass_init=np.array([1.0, -1.0, 1.0, 1.0]))
    with pytest.raises(ValueError, match="inverse_mass_init is a QHMC option"):
        sample(g, X0, sampler="nuts", inverse_mass_init=np.ones(4))
    bad_start = X0.copy()
    bad_start[2, 0] = -5.0
    with pytest.raises(ValueError, match=r"finite at the initial positions; chains \[2\]"):
        sample(lambda x: jnp.where(x[0] < -4.0, -jnp.inf, -0.5 * x @ x), bad_start)


# --------------------------------------------------------------------------- the QHMC kernel
def test_qhmc_with_zero_spread_is_blackjax_hmc():
    """log_mass_sd = 0: the same chain as blackjax's HMC kernel fed the second half of the key,
    bit for bit.

    The inverse mass is a *runtime* argument of the jitted comparison: QHMC's drawn inverse mass
    ``imm * exp(-0 * xi)`` is always a runtime value, whereas a closed-over constant ``imm``
    lets XLA specialise and constant-fold the arithmetic that involves it, which may round
    differently in the last bit (one ulp in the positions, found on CPU).
    """
    imm = jnp.asarray(1.3 * SD**2)
    q_kernel, h_kernel = qhmc.build_kernel(), blackjax.hmc.build_kernel()

    @jax.jit
    def both(key, sq, sh, imm):
        sq, iq = q_kernel(key, sq, gaussian_logdensity, 0.4, imm, 0.0, 7)
        sh, ih = h_kernel(jax.random.split(key)[1], sh, gaussian_logdensity, 0.4, imm, 7)
        return sq, iq, sh, ih

    alg = qhmc.as_top_level_api(gaussian_logdensity, 0.4, imm, log_mass_sd=0.0, num_integration_steps=7)
    top_step = jax.jit(alg.step)
    sq = sh = st = alg.init(jnp.asarray(MU + 2.0))
    accepted = []
    for key in jax.random.split(jax.random.PRNGKey(42), 30):
        start = sq
        sq, iq, sh, ih = both(key, sq, sh, imm)
        st, it = top_step(key, st)
        for s in (sq, st):
            np.testing.assert_array_equal(s.position, sh.position)
            np.testing.assert_array_equal(s.logdensity, sh.logdensity)
            np.testing.assert_array_equal(s.logdensity_grad, sh.logdensity_grad)
        for i in (iq, it):
            np.testing.assert_array_equal(i.acceptance_rate, ih.acceptance_rate)
            assert i.is_accepted == ih.is_accepted and i.is_divergent == ih.is_divergent
            np.testing.assert_array_equal(i.log_mass, -np.log(imm))
        # QHMC's energy is that of the returned state: the proposal's (blackjax's) if accepted,
        # else the start's with the fresh momentum
        start_energy = -start.logdensity + 0.5 * jnp.sum(imm * ih.momentum**2)
        np.testing.assert_allclose(iq.energy, ih.energy if iq.is_accepted else start_energy, rtol=1e-12)
        accepted.append(bool(iq.is_accepted))
    assert 3 < sum(accepted) < 30  # both branches of the MH step were exercised


@functools.partial(jax.jit, static_argnames="num_transitions")
def _qhmc_chains(keys, positions, log_mass_sd, num_transitions):
    kernel = qhmc.build_kernel()
    imm = jnp.ones(4)  # deliberately not the posterior scales: invariance must not depend on it

    def chain(key, x):
        def step(state, k):
            state, info = kernel(k, state, gaussian_logdensity, 0.3, imm, log_mass_sd, 9)
            return state, (info.acceptance_rate, info.log_mass)

        state, (acc, log_mass) = jax.lax.scan(
            step, qhmc.init(x, gaussian_logdensity), jax.random.split(key, num_transitions)
        )
        return state.position, acc, log_mass

    return jax.vmap(chain)(keys, positions)


@pytest.mark.parametrize("log_mass_sd", [0.0, 1.0])
def test_qhmc_kernel_leaves_target_invariant(log_mass_sd):
    """Start 4000 independent chains at exact N(MU, COV) draws; after QHMC transitions with a
    random mass the chains must still be exact draws (mean and covariance within MC error)."""
    n = 4000
    x0 = np.random.default_rng(11).multivariate_normal(MU, COV, size=n)
    keys = jax.random.split(jax.random.PRNGKey(int(10 * log_mass_sd)), n)
    x, acc, log_mass = _qhmc_chains(keys, jnp.asarray(x0), log_mass_sd, num_transitions=4)
    x = np.asarray(x)
    assert 0.2 < float(acc.mean()) < 0.99  # moves are made and some are rejected
    assert np.mean(np.abs(x - x0) > 1e-12) > 0.5
    np.testing.assert_allclose(np.std(np.asarray(log_mass)), log_mass_sd, atol=0.02)
    assert np.all(np.abs(x.mean(axis=0) - MU) < 4 * SD / np.sqrt(n))
    np.testing.assert_allclose(x.var(axis=0) / SD**2, 1.0, atol=4 * np.sqrt(2 / n))
    assert abs(np.corrcoef(x[:, 0], x[:, 1])[0, 1] - 0.9) < 0.02


def test_qhmc_warmup_in_slices_equals_one_pass_and_caps_the_path_length():
    """The warm-up advances in jitted slices of `chunk` iterations; the result does not depend on
    the slicing. Warm-up iterations never exceed `max_warmup_steps` leapfrog steps, and the
    per-iteration statistics are recorded."""
    run = dict(num_warmup=60, num_samples=20, progress=False, seed=3)
    a = sample(gaussian_logdensity, X0, chunk=7, max_warmup_steps=5, **run)
    b = sample(gaussian_logdensity, X0, chunk=100, max_warmup_steps=5, **run)
    np.testing.assert_array_equal(a.draws, b.draws)
    np.testing.assert_array_equal(a.warmup_steps, b.warmup_steps)
    assert a.warmup_steps.shape == (60,) and a.warmup_step_size.shape == (60,)
    assert 1 <= a.warmup_steps.min() and a.warmup_steps.max() <= 5
    assert np.all((a.warmup_acceptance >= 0) & (a.warmup_acceptance <= 1))
    # a good initial inverse mass (the true variances) changes the run and is accepted
    c = sample(gaussian_logdensity, X0, chunk=100, max_warmup_steps=5, inverse_mass_init=SD**2, **run)
    assert not np.array_equal(c.draws, b.draws)


# ----------------------------------------------------- compiled value_and_grad for the start
_gaussian_vg = jax.jit(jax.value_and_grad(gaussian_logdensity))


def test_qhmc_sampling_reuses_the_warmup_program_and_ignores_the_chunk():
    """QHMC samples with the warm-up's compiled chunk program (the sampling program of NUTS is
    never called), and the draws do not depend on the iterations per call (iteration i uses the
    i-th key of the sampling key's split)."""
    run = dict(sampler="qhmc", seed=4, num_warmup=200, num_samples=150, progress=False)
    real = nuts.sample_chunk

    def not_for_qhmc(*args, **kwargs):
        raise AssertionError("QHMC must not compile a sampling program of its own")

    nuts.sample_chunk = not_for_qhmc
    try:
        before = adaptation.chunk_jit._cache_size()
        a = sample(gaussian_logdensity, X0, chunk=150, **run)
        assert adaptation.chunk_jit._cache_size() == before + 1  # warm-up and sampling
        b = sample(gaussian_logdensity, X0, chunk=100, **run)
        c = sample(gaussian_logdensity, X0, chunk=40, **run)
    finally:
        nuts.sample_chunk = real
    for r in (b, c):
        assert r.draws.shape == (4, 150, 4)
        np.testing.assert_array_equal(r.draws, a.draws)
        np.testing.assert_array_equal(r.num_integration_steps, a.num_integration_steps)
        np.testing.assert_array_equal(r.energy, a.energy)


def test_host_step_size_search_is_scale_free_and_agrees_with_the_compiled_one():
    """The host search (one-position value_and_grad calls) follows the compiled heuristic: for
    N(0, s² I) with inverse mass s² the whitened problem, hence the step size, does not depend
    on s; and it lands within a factor 2 of the compiled search (different momentum draws)."""
    d = 50
    x0 = np.random.default_rng(1).standard_normal((4, d))
    key = jax.random.key(3)
    opts = samplers.QHMCOptions()
    found = []
    for s in (1.0, 7.0):
        ld = lambda x, s=s: -0.5 * jnp.sum((x / s) ** 2)  # noqa: E731
        vg = jax.jit(jax.value_and_grad(ld))
        states = step_size.host_states(vg, jnp.asarray(s * x0))
        found.append(step_size.host_step_size(vg, opts, key, states, np.full(d, s**2)))
    assert found[0] == found[1]
    compiled = step_size.reasonable_step_size(
        chains.StaticFn(lambda x: -0.5 * jnp.sum(x**2)), opts, key, jnp.asarray(x0), jnp.ones(d))
    assert 0.5 <= found[0] / compiled <= 2.0
    assert 0.1 < found[0] < 2.0  # ~d^(-1/4) for a standard Gaussian in 50 dimensions


def test_value_and_grad_fn_gives_the_same_kind_of_run():
    """With a compiled value_and_grad for the start (the population fit's path), the run is
    deterministic, samples the target (moments within 4 MC standard errors) and refuses a
    non-finite starting point by chain."""
    run = dict(sampler="qhmc", num_warmup=500, num_samples=1000, progress=False)
    a = sample(gaussian_logdensity, X0, seed=5, value_and_grad_fn=_gaussian_vg, **run)
    b = sample(gaussian_logdensity, X0, seed=5, value_and_grad_fn=_gaussian_vg, **run)
    np.testing.assert_array_equal(a.draws, b.draws)
    x = a.draws.reshape(-1, 4)
    z = (x.mean(0) - MU) / _mcse(a.draws, SD)
    assert np.all(np.abs(z) < 4), z
    assert np.all(np.abs(x.std(0) / SD - 1) < 0.15)
    bad = X0.copy()
    bad[2] = 1e300
    with pytest.raises(ValueError, match=r"chains \[2\]"):
        sample(lambda x: -0.5 * jnp.sum(x**4), bad, seed=0,
               value_and_grad_fn=jax.jit(jax.value_and_grad(lambda x: -0.5 * jnp.sum(x**4))), **run)


# ------------------------------------------------------------------ Laplace low-rank metric
def _equicorrelated(d: int, rho: float, scales):
    cov = (rho * np.ones((d, d)) + (1 - rho) * np.eye(d)) * np.outer(scales, scales)
    return cov


def test_laplace_inverse_mass_is_the_covariance_of_a_gaussian_and_safe_at_a_saddle():
    """From the exact precision of a Gaussian (full rank, no cutoff) the metric is its
    covariance; with the default rank/cutoff the dominant correlated direction is kept; a
    Hessian with a negative eigenvalue still gives a finite positive-definite metric."""
    inv_m = lambda m, d: np.asarray(inverse_mass_times(m, np.eye(d)))  # noqa: E731
    m = laplace_inverse_mass(np.linalg.inv(COV), 64, cutoff=1.0)
    assert m.U.shape == (4, 4) and m.lam.shape == (4,)
    np.testing.assert_allclose(inv_m(m, 4), COV, rtol=1e-10, atol=1e-12)
    cov = _equicorrelated(30, 0.95, np.logspace(-3, 1, 30))
    m = laplace_inverse_mass(np.linalg.inv(cov), 2)
    assert m.U.shape == (30, 2)
    approx = inv_m(m, 30)
    sd = np.sqrt(np.diag(cov))
    # the rank-2 metric whitens the target far better than its diagonal: the whitened
    # covariance's condition number (1 for a perfect metric) drops from ~570 to < 30
    white = np.linalg.solve(np.linalg.cholesky(approx), np.linalg.cholesky(cov))
    white_diag = np.linalg.cholesky(cov) / sd[:, None]
    cond = lambda a: np.linalg.cond(a @ a.T)  # noqa: E731
    assert cond(white) < 30 < 500 < cond(white_diag), (cond(white), cond(white_diag))
    saddle = np.array([[1.0, 2.0, 0.0], [2.0, 1.0, 0.0], [0.0, 0.0, 4.0]])
    m = laplace_inverse_mass(saddle, 64)
    a = inv_m(m, 3)
    assert np.all(np.isfinite(a)) and np.all(np.linalg.eigvalsh(0.5 * (a + a.T)) > 0)
    np.testing.assert_allclose(a[2, 2], 0.25, rtol=1e-12)  # the regular coordinate: 1/H
    with pytest.raises(ValueError, match="square"):
        laplace_inverse_mass(np.ones((3, 2)))


def test_a_laplace_start_whitens_the_step_size_search_and_the_short_warm_up():
    """On a strongly correlated Gaussian (d = 50, ρ = 0.98, scales over 4 decades): the host
    step-size search with the exact Laplace metric finds the standard-normal step size, the
    diagonal one a far smaller one; a warm-up too short for a low-rank estimate (2 chains x 25
    iterations < 2 d draws) keeps the Laplace correlations and needs under half the leapfrog
    steps per draw of the diagonal start; both sample the target (means within 5 MC SEs)."""
    d = 50
    scales = np.logspace(-2, 2, d)
    cov = _equicorrelated(d, 0.98, scales)
    prec = jnp.asarray(np.linalg.inv(cov))
    ld = lambda x: -0.5 * x @ prec @ x  # noqa: E731
    vg = jax.jit(jax.value_and_grad(ld))
    x0 = np.random.default_rng(2).standard_normal((2, d)) @ np.linalg.cholesky(cov).T
    opts = samplers.QHMCOptions(metric="low_rank")
    key = jax.random.key(4)
    laplace = laplace_inverse_mass(np.linalg.inv(cov), 64)
    states = step_size.host_states(vg, jnp.asarray(x0))
    eps_lap = step_size.host_step_size(vg, opts, key, states, laplace)
    eps_diag = step_size.host_step_size(vg, opts, key, states, np.diag(cov))
    std = lambda x: -0.5 * jnp.sum(x**2)  # noqa: E731
    eps_std = step_size.host_step_size(
        jax.jit(jax.value_and_grad(std)), opts, key,
        step_size.host_states(jax.jit(jax.value_and_grad(std)), jnp.asarray(
            np.random.default_rng(2).standard_normal((2, d)))), np.ones(d))
    assert 0.5 <= eps_lap / eps_std <= 2.0 and eps_diag < 0.3 * eps_lap, (eps_lap, eps_diag, eps_std)
    run = dict(num_warmup=150, num_samples=400, progress=False, seed=3, metric="low_rank", max_rank=64,
               log_mass_sd=0.1,
               value_and_grad_fn=vg)
    a = sample(ld, x0, inverse_mass_init=laplace, **run)
    b = sample(ld, x0, inverse_mass_init=np.diag(cov), **run)
    steps_a, steps_b = a.num_integration_steps.mean(), b.num_integration_steps.mean()
    assert steps_a < 0.5 * steps_b, (steps_a, steps_b)
    for r in (a, b):
        z = r.draws.reshape(-1, d).mean(0) / _mcse(r.draws, scales)
        assert np.all(np.abs(z) < 5), z
    with pytest.raises(ValueError, match="needs metric='low_rank'"):
        sample(ld, x0, inverse_mass_init=laplace, num_warmup=10, num_samples=10, progress=False)
