"""Numerical tests of the simulator: dosing semantics, gradients, batching, steady state, errors.

- hand-computed cases of the pre-dose rule, infusions and lag times; `Regimen` parsing;
- gradients (reverse `jax.grad` and forward `jax.jacfwd`) against central finite differences;
- `jax.vmap` over 100 subjects = a Python loop over `simulate` = `simulate_population`, and
  zero-amount padding rows change nothing;
- steady state against the analytic superposition limit and long repeated-dose runs;
- failure statuses, `SimulationError`, input validation;
- no recompilation of `simulate_population` for repeated calls with the same shapes.

float64 throughout (``tests/conftest.py``).
"""

from __future__ import annotations

import functools
import math

import diffrax as dfx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.linalg import expm

import pkpd_jax.solve as sim_mod
import pkpd_jax.solve._population as population_module
from pkpd_jax.dosing import DosingError, Regimen, stack_regimens
from pkpd_jax.models import get_model
from pkpd_jax.solve import (
    SimulationError,
    SolverConfig,
    simulate,
    simulate_population,
    simulate_steady_state,
    steady_state,
)


try:
    from tests import oracles
except ImportError:  # ``tests`` not importable as a package: pytest puts tests/ on sys.path
    import oracles


# ------------------------------------------------------------------------------ tolerances
TIGHT_ODE = SolverConfig(method="ode", rtol=1e-10, atol=1e-12)
# Forward-mode differentiable ODE path (diffrax's default adjoint is reverse-mode only).
TIGHT_ODE_FWD = SolverConfig(method="ode", rtol=1e-10, atol=1e-12, adjoint=dfx.ForwardMode())
EXPM = SolverConfig(method="expm")
# Hand-computed values: exact propagation reaches rounding level, the ODE path ~1e-10.
EXACT_RTOL = 1e-12
ODE_RTOL = 1e-8
# Central finite differences: relative step, and the agreement asked of AD vs FD (the FD error
# is ~h^2 + solver noise rtol / h ~ 1e-5 relative at worst with the ODE at rtol 1e-10).
FD_REL_STEP = 1e-5
GRAD_RTOL = 1e-4
# Absolute floor of the gradient checks, as a fraction of the largest log-sensitivity
# |dy/dlog(theta)| of the same output (entries that are zero by structure).
GRAD_FLOOR = 1e-6
# Batched vs single-subject runs do the same float operations: agreement to rounding.
BATCH_RTOL = 1e-12
# Steady state: analytic limits vs iteration to tol 1e-12 (ODE adds ~1e-10); long-run
# repeated dosing vs the steady-state interval.
SS_RTOL = 1e-8
SS_LONG_RTOL = 1e-6


def theta_of(model, **overrides):
    return jnp.asarray(model.pack({**model.prior_medians(), **overrides}))


# =================================================================== hand-computed semantics
@functools.cache
def _single(pk: str, config: SolverConfig):
    """One jitted single-subject simulator per (model, config), regimen and times as arguments."""
    model = get_model(pk)
    return model, jax.jit(lambda th, reg, ts: simulate(model, th, reg, ts, config=config))


@pytest.mark.parametrize("config, rtol", [(EXPM, EXACT_RTOL), (TIGHT_ODE, ODE_RTOL)],
                         ids=["expm", "ode"])
def test_pre_dose_rule_and_infusion_by_hand(config, rtol):
    """1c IV, CL = 1 L/h, V = 10 L (k = 0.1 /h)."""
    model, run = _single("pk_1c_iv", config)
    th = model.pack(dict(CL=1.0, V=10.0))
    eps = 1e-6
    # 100 mg boluses at 0 and 12: an observation at a dose time does not see that dose.
    ts = jnp.array([12.0, 0.0, 6.0, 12.0 + eps, 13.0, 24.0])
    sol = run(th, Regimen.make([0.0, 12.0], [100.0, 100.0]), ts)
    e = math.exp
    expected = [
        10 * e(-1.2),
        0.0,
        10 * e(-0.6),
        10 * e(-1.2 - 0.1 * eps) + 10 * e(-0.1 * eps),
        10 * (e(-1.3) + e(-0.1)),
        10 * (e(-2.4) + e(-1.2)),
    ]
    assert int(sol.status) == 0
    np.testing.assert_allclose(sol.conc, expected, rtol=rtol, atol=0)
    assert float(sol.conc[1]) == 0.0
    # 10 mg over 2 h (R = 5 mg/h): C = R/CL (1 - e^{-kt}) while infusing, then decays; the
    # zero-amount second row is padding.
    ts = jnp.array([0.0, 1.0, 2.0, 3.0, 2.0, 0.5])
    sol = run(th, Regimen.make([0.0, 5.0], [10.0, 0.0], [2.0, 0.0]), ts)
    c_end = 5.0 * (1 - e(-0.2))
    expected = [0.0, 5.0 * (1 - e(-0.1)), c_end, c_end * e(-0.1), c_end, 5.0 * (1 - e(-0.05))]
    np.testing.assert_allclose(sol.conc, expected, rtol=rtol, atol=0)
    # A dose before the first observation: integration starts at the dose.
    sol = run(th, Regimen.make([-4.0, 50.0], [100.0, 0.0]), jnp.array([0.0, 1.0] * 3))
    np.testing.assert_allclose(sol.conc, [10 * e(-0.4), 10 * e(-0.5)] * 3, rtol=rtol)


def test_lag_time_semantics_by_hand():
    """pk_1c_oral_lag, tlag = 2: C = 0 up to 2 h, then the Bateman function shifted by 2 h."""
    model, run = _single("pk_1c_oral_lag", EXPM)
    ka, cl, v, tlag = 1.0, 2.0, 20.0, 2.0
    k = cl / v
    th = model.pack(dict(ka=ka, CL=cl, V=v, tlag=tlag))
    ts = jnp.array([0.0, 1.0, 2.0, 2.5, 5.0, 10.0])
    # The second dose (9 h) lands at 11 h, past the last observation: dropped.
    sol = run(th, Regimen.make([0.0, 9.0], [100.0, 100.0]), ts)
    without = run(th, Regimen.make([0.0, 9.0], [100.0, 0.0]), ts)
    assert int(sol.status) == 0
    s = np.clip(np.asarray(ts) - tlag, 0.0, None)
    bateman = 100 * ka / (v * (ka - k)) * (np.exp(-k * s) - np.exp(-ka * s))
    np.testing.assert_allclose(sol.conc, bateman, rtol=EXACT_RTOL, atol=1e-15)
    np.testing.assert_array_equal(sol.conc[:3], 0.0)
    np.testing.assert_array_equal(sol.states, without.states)
    # Gut amount: an observation exactly at the lagged dose time (2 h) is pre-dose.
    np.testing.assert_allclose(sol.states[:, 0], 100 * np.exp(-ka * s) * (ts > tlag),
                               rtol=EXACT_RTOL, atol=0)
    assert float(sol.states[2, 0]) == 0.0
    # Observed later (12 h), the same dose does count.
    ts12 = ts.at[-1].set(12.0)
    later = run(th, Regimen.make([0.0, 9.0], [100.0, 100.0]), ts12)
    alone = run(th, Regimen.make([0.0, 9.0], [100.0, 0.0]), ts12)
    assert float(later.conc[-1]) > float(alone.conc[-1]) * 1.5
    # An observation exactly at the second lagged dose (11 h) is still pre-dose.
    at_11 = run(th, Regimen.make([0.0, 9.0], [100.0, 100.0]), ts.at[-1].set(11.0))
    alone_11 = run(th, Regimen.make([0.0, 9.0], [100.0, 0.0]), ts.at[-1].set(11.0))
    np.testing.assert_array_equal(at_11.states, alone_11.states)


def test_regimen_parse_and_constructors():
    r = Regimen.parse("100@0,50@24:2")
    np.testing.assert_array_equal(r.amount, [100.0, 50.0])
    np.testing.assert_array_equal(r.time, [0.0, 24.0])
    np.testing.assert_array_equal(r.duration, [0.0, 2.0])
    np.testing.assert_array_equal(r.cmt, [-1, -1])
    r = Regimen.parse(" 100@0 , 50@24:2 ", size=4)
    np.testing.assert_array_equal(r.amount, [100.0, 50.0, 0.0, 0.0])
    np.testing.assert_array_equal(r.time, [0.0, 24.0, 24.0, 24.0])
    r = Regimen.repeated(25.0, 12.0, 3, duration=0.5, start=1.0)
    np.testing.assert_array_equal(r.time, [1.0, 13.0, 25.0])
    np.testing.assert_array_equal(r.duration, [0.5] * 3)
    pop = stack_regimens([Regimen.make([0.0], [1.0]), Regimen.make([0.0, 5.0], [2.0, 3.0])])
    assert pop.time.shape == (2, 2)
    np.testing.assert_array_equal(pop.amount, [[1.0, 0.0], [2.0, 3.0]])
    np.testing.assert_array_equal(pop.cmt, [[-1, -1], [-1, -1]])
    np.testing.assert_array_equal(pop.scaled(2.0).amount, [[2.0, 0.0], [4.0, 6.0]])


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: Regimen.make([0.0, 1.0], [100.0, -1.0]), r"amount.*non-negative.*-1\.0"),
        (lambda: Regimen.make([0.0], [1.0], [-2.0]), r"duration.*non-negative"),
        (lambda: Regimen.make([0.0, 1.0], [100.0]), r"same length.*2 and 1"),
        (lambda: Regimen.make([0.0, 1.0], [1.0, 2.0], [0.0]), r"one entry per dose"),
        (lambda: Regimen.make([float("nan")], [1.0]), r"time.*finite"),
        (lambda: Regimen.make([0.0, 1.0], [1.0, 2.0], size=1), r"size=1"),
        (lambda: Regimen(jnp.zeros(2), jnp.ones(3), jnp.zeros(2), jnp.zeros(2, int)), "shape"),
        (lambda: Regimen.parse("100@"), r"dose 1 \('100@'\)"),
        (lambda: Regimen.parse("100@0,fifty@24"), r"dose 2 \('fifty@24'\)"),
        (lambda: Regimen.parse("100 at 0"), r"AMT@TIME"),
        (lambda: Regimen.parse("100@24:2:3"), r"dose 1 \('100@24:2:3'\)"),
        (lambda: Regimen.parse("100@0@1"), r"AMT@TIME"),
        (lambda: Regimen.parse(" , "), "no doses"),
        (lambda: Regimen.repeated(1.0, 0.0, 3), "interval"),
        (lambda: Regimen.repeated(1.0, 12.0, 0), "n_doses"),
        (lambda: Regimen.make([0.0, 1.0], [1.0, 1.0]).pad_to(1), "cannot pad"),
        (lambda: stack_regimens([]), "at least one"),
    ],
)
def test_bad_regimens_raise_dosing_error(make, match):
    with pytest.raises(DosingError, match=match):
        make()


def test_bad_solver_and_population_inputs():
    with pytest.raises(ValueError, match="method"):
        SolverConfig(method="rk4")
    with pytest.raises(ValueError, match="rtol"):
        SolverConfig(rtol=0.0)
    with pytest.raises(ValueError, match="max_steps"):
        SolverConfig(max_steps=0)
    model = get_model("pk_1c_oral")
    reg, ts = Regimen.make([0.0], [1.0]), jnp.array([1.0, 2.0])
    with pytest.raises(ValueError, match=r"\(subjects, 3\).*ka"):
        simulate_population(model, jnp.ones((4, 2)), reg, ts)
    with pytest.raises(ValueError, match="3 subjects but `theta` has 4"):
        simulate_population(model, jnp.ones((4, 3)), stack_regimens([reg] * 3), ts)
    with pytest.raises(ValueError, match="`ts` has 2 rows"):
        simulate_population(model, jnp.ones((4, 3)), reg, jnp.ones((2, 2)))


# ================================================================================ gradients
GRAD_REG = Regimen.make([0.0, 12.0, 24.0], [100.0, 50.0, 80.0], [0.0, 2.0, 0.0])
GRAD_TS = jnp.array([0.5, 1.0, 2.0, 6.0, 12.0, 12.5, 13.0, 18.0, 24.5, 30.0, 48.0])


def _fd_jacobian(f, theta):
    """Central differences with relative steps, all 2P evaluations in one vmapped call."""
    h = FD_REL_STEP * jnp.abs(theta)
    steps = jnp.diag(h)
    ys = jax.jit(jax.vmap(f))(jnp.concatenate([theta + steps, theta - steps]))
    p = theta.shape[0]
    return np.asarray((ys[:p] - ys[p:]) / (2 * h[:, None])).T


def _assert_jac(jac, ref, theta, what):
    """Compare log-sensitivities dy/dlog(theta) entrywise, floor relative to each output row."""
    a, b = np.asarray(jac) * np.asarray(theta), np.asarray(ref) * np.asarray(theta)
    floor = GRAD_FLOOR * np.max(np.abs(b), axis=1, keepdims=True)
    bad = np.abs(a - b) > GRAD_RTOL * np.abs(b) + floor
    assert not bad.any(), f"{what}: AD vs FD mismatch at {np.argwhere(bad)[:5].tolist()}"


@pytest.mark.parametrize(
    "pk, pd, config, config_fwd",
    [
        ("pk_2c_iv_infusion", "pd_indirect_inhib_kin", TIGHT_ODE, TIGHT_ODE_FWD),
        ("pk_1c_oral_lag", None, EXPM, EXPM),
    ],
    ids=["2c_infusion+inhib_kin-ode", "1c_oral_lag-expm"],
)
def test_gradients_match_finite_differences(pk, pd, config, config_fwd):
    """d(conc, resp)/d(theta) by jax.grad (reverse), jax.jacfwd (forward) and central FD."""
    model = get_model(pk, pd)
    theta = theta_of(model) * jnp.asarray(np.random.default_rng(3).uniform(0.7, 1.3, 
                                                                              len(model.params)))

    def outputs(th, cfg=config):
        sol = simulate(model, th, GRAD_REG, GRAD_TS, config=cfg)
        return jnp.concatenate([sol.conc, sol.resp]) if pd else sol.conc

    ref = _fd_jacobian(outputs, theta)
    assert np.abs(ref).max() > 0
    jac_fwd = jax.jit(jax.jacfwd(functools.partial(outputs, cfg=config_fwd)))(theta)
    _assert_jac(jac_fwd, ref, theta, "jacfwd")
    # Reverse mode on a weighted sum of all outputs (one gradient = one row of J^T w).
    w = jnp.asarray(np.random.default_rng(4).uniform(0.5, 1.5, ref.shape[0]))
    grad = jax.jit(jax.grad(lambda th: jnp.dot(w, outputs(th))))(theta)
    _assert_jac(grad[None], (np.asarray(w) @ ref)[None], theta, "grad")
    if pk == "pk_1c_oral_lag":  # the lag time shifts the curve: a non-zero derivative
        assert abs(float(jac_fwd[3, model.param_names.index("tlag")])) > 1e-3


# ==================================================================== batching / population
N_POP = 100
POP_MODEL = ("pk_1c_oral_lag", "pd_effect_comp_emax")


@functools.cache
def _population(draw):
    """100 subjects: prior draws, 1-4 doses each (random bolus / infusion), own obs times."""
    model = get_model(*POP_MODEL)
    rng = np.random.default_rng(2024)
    theta = draw(model, N_POP, seed=5)
    regs = []
    for _ in range(N_POP):
        n = rng.integers(1, 5)
        times = np.cumsum(rng.uniform(0.0, 16.0, n)) - rng.uniform(0.0, 4.0)
        durs = np.where(rng.random(n) < 0.5, 0.0, rng.uniform(0.5, 3.0, n))
        regs.append(Regimen.make(times, rng.uniform(10.0, 200.0, n), durs))
    regimen = stack_regimens(regs)
    ts = rng.uniform(0.0, 60.0, (N_POP, 12))
    ts[:, -1] = ts[:, 3]  # a duplicate in every row
    ts[:, 0] = np.asarray(regimen.time[:, 0])  # observed exactly at the first dose
    return model, jnp.asarray(theta), regimen, jnp.asarray(ts)


def _assert_same(a, b, what):
    for field in ("states", "conc", "resp"):
        x, y = np.asarray(getattr(a, field)), np.asarray(getattr(b, field))
        np.testing.assert_allclose(x, y, rtol=BATCH_RTOL, atol=1e-14 * np.abs(y).max(),
                                   err_msg=f"{what}: {field}")
    np.testing.assert_array_equal(a.status, b.status)


def test_vmap_equals_loop_equals_population(draw_params):
    model, theta, regimen, ts = _population(draw_params)
    one = jax.jit(lambda th, reg, t: simulate(model, th, reg, t))
    batched = jax.jit(jax.vmap(lambda th, reg, t: simulate(model, th, reg, t)))(theta, regimen, ts)
    np.testing.assert_array_equal(batched.status, 0)
    loop = [one(theta[i], jax.tree.map(lambda a: a[i], regimen), ts[i]) for i in range(N_POP)]
    stacked = jax.tree.map(lambda *a: jnp.stack(a), *loop)
    _assert_same(batched, stacked, "vmap vs loop")
    # simulate_population on the same subjects, with the regimens padded by zero-amount rows
    # (`pad_to` 7 doses, one padding row moved to 7.5 h as a 3 h "infusion" of nothing):
    # padding changes nothing.
    padded = regimen.pad_to(7)
    padded = Regimen(padded.time.at[:, 5].set(7.5), padded.amount,
                     padded.duration.at[:, 5].set(3.0), padded.cmt)
    np.testing.assert_array_equal(padded.amount[:, 4:], 0.0)
    pop = simulate_population(model, theta, padded, ts)
    _assert_same(pop, batched, "population (padded) vs vmap")
    np.testing.assert_array_equal(pop.ts, ts)
    # Drug reached every subject; the first dose time is observed pre-dose (C = 0 there).
    assert np.all(np.asarray(pop.conc).max(axis=1) > 0)
    np.testing.assert_array_equal(pop.conc[:, 0], 0.0)
    # One regimen and one time grid for everybody broadcast over subjects (same shapes as
    # above: no new compilation).
    reg0 = jax.tree.map(lambda a: a[0], padded)
    shared = simulate_population(model, theta, reg0, ts[0])
    reg0_short = jax.tree.map(lambda a: a[0], regimen)
    for i in (0, 1, 99):
        _assert_same(jax.tree.map(lambda a: a[i], shared), one(theta[i], reg0_short, ts[0]),
                     "shared")


# ============================================================================== steady state
def _ss_reference(name, p, times, amounts, durations, tau):
    """Pre-dose steady state of a linear model: fixed point of y -> e^{K tau} y + y1, where y1 is
    the state at tau after one interval's doses from zero (oracle), i.e. the superposition limit
    y_ss = sum_{j>=0} e^{K j tau} y1 = (I - e^{K tau})^{-1} y1."""
    K, *_ = oracles.rate_matrix(name, p)
    # Observe just after tau too, so that a dose dropped at the horizon is not an issue.
    y1 = oracles.amounts_expm(name, p, times, amounts, durations, [tau, tau + 1e-9])[0]
    return np.linalg.solve(np.eye(K.shape[0]) - expm(K * tau), y1)


@pytest.mark.parametrize(
    "name, over, reg, tau, config",
    [
        ("pk_1c_iv", dict(CL=5.0, V=50.0), ([0.0], [100.0], [0.0]), 12.0, TIGHT_ODE),
        ("pk_2c_oral", {}, ([0.0, 6.0], [100.0, 50.0], [0.0, 0.0]), 24.0, EXPM),
        ("pk_1c_oral_lag", dict(tlag=1.5), ([0.0], [100.0], [2.0]), 8.0, EXPM),
    ],
    ids=["1c_iv-ode", "2c_oral-expm", "1c_oral_lag_infusion-expm"],
)
def test_steady_state_matches_superposition_limit(name, over, reg, tau, config):
    model = get_model(name)
    theta = theta_of(model, **over)
    regimen = Regimen.make(*reg)
    ss = jax.jit(lambda th: steady_state(model, th, regimen, tau, tol=1e-12, config=config))(theta)
    assert bool(ss.converged) and int(ss.status) == 0 and 1 < int(ss.n_intervals) < 1000
    p = {n: float(v) for n, v in zip(model.param_names, theta)}
    ref = _ss_reference(name, p, *reg, tau)
    np.testing.assert_allclose(ss.state, ref, rtol=SS_RTOL, atol=1e-12 * np.abs(ref).max())
    if name == "pk_1c_iv":  # the textbook form: D e^{-k tau} / (1 - e^{-k tau})
        r = math.exp(-p["CL"] / p["V"] * tau)
        assert float(ss.state[0]) == pytest.approx(100.0 * r / (1 - r), rel=SS_RTOL)


SS_TAU = 12.0
SS_TS = jnp.array([0.0, 0.5, 1.0, 2.0, 6.0, 11.0, 12.0])
N_LONG = 60  # repeated doses for the long-run reference


@pytest.mark.parametrize(
    "pd, config",
    [(None, SolverConfig()), ("pd_indirect_inhib_kin", TIGHT_ODE)],
    ids=["2c_infusion-auto", "2c_infusion+inhib_kin-ode"],
)
def test_simulate_steady_state_equals_long_repeated_dosing(pd, config):
    """One 100 mg dose per 12 h (a 1 h infusion: the model's default duration)."""
    model = get_model("pk_2c_iv_infusion", pd)
    theta = theta_of(model)
    one = Regimen.make([0.0], [100.0])

    @jax.jit
    def run(th):
        ss = simulate_steady_state(model, th, one, SS_TAU, SS_TS, tol=1e-12, config=config)
        long = simulate(model, th, Regimen.repeated(100.0, SS_TAU, N_LONG),
                        SS_TS + (N_LONG - 1) * SS_TAU, config=config)
        short = simulate_steady_state(model, th, one, SS_TAU, SS_TS, max_intervals=3,
                                      config=config)
        ss3 = steady_state(model, th, one, SS_TAU, max_intervals=3, config=config)
        return ss, long, short, ss3

    ss, long, short, ss3 = run(theta)
    assert int(ss.status) == 0 and int(long.status) == 0
    for field in ("states", "conc", "resp"):
        np.testing.assert_allclose(getattr(ss, field), getattr(long, field), rtol=SS_LONG_RTOL,
                                   atol=1e-12, err_msg=field)
    # Periodicity: C(0) = C(tau) at steady state, and the infusion raises C during the 1st hour.
    assert float(ss.conc[0]) == pytest.approx(float(ss.conc[-1]), rel=SS_LONG_RTOL)
    assert float(ss.conc[2]) > float(ss.conc[1]) > float(ss.conc[0])
    if pd:
        r0 = float(theta[model.param_names.index("R0")])
        assert np.all(np.asarray(ss.resp) < r0)  # inhibited production at steady state
    # Too few intervals: reported, not hidden.
    assert int(short.status) == sim_mod.NOT_STEADY == 4
    assert not bool(ss3.converged) and int(ss3.n_intervals) == 3 and int(ss3.status) == 4
    assert "max_intervals" in sim_mod.STATUS_MESSAGES[4]


def test_steady_state_forward_mode_derivative():
    """jax.jacfwd through steady_state (a while_loop over ODE solves) vs central FD."""
    model = get_model("pk_2c_iv_infusion", "pd_indirect_inhib_kin")
    theta = theta_of(model)
    one = Regimen.make([0.0], [100.0])

    def f(th):
        return steady_state(model, th, one, SS_TAU, tol=1e-13, config=TIGHT_ODE).state

    jac = jax.jit(jax.jacfwd(f))(theta)
    _assert_jac(jac, _fd_jacobian(f, theta), theta, "steady-state jacfwd")
    # The PK states do not depend on the PD parameters.
    n_pk = len(model.pk_params)
    np.testing.assert_array_equal(jac[: model.n_pk_states, n_pk:], 0.0)


# ========================================================================= failure detection
def test_max_steps_failure_is_reported_per_subject():
    model = get_model("pk_1c_oral")
    reg = Regimen.make([0.0, 12.0], [100.0, 100.0])
    ts = jnp.array([1.0, 6.0, 24.0])
    theta = jnp.tile(theta_of(model), (4, 1))
    # Every subject fails with max_steps = 2 (ODE path: expm has no steps).
    cfg2 = SolverConfig(method="ode", max_steps=2)
    sol = simulate_population(model, theta, reg, ts, config=cfg2, throw=False)
    np.testing.assert_array_equal(sol.status, 1)
    assert not np.asarray(sol.ok).any()
    with pytest.raises(SimulationError, match=r"4 subject\(s\) \[0, 1, 2, 3\]: .*max_steps"):
        simulate_population(model, theta, reg, ts, config=cfg2)
    # Mixed: ka = 1e9 /h makes subjects 1 and 4 stiff beyond 300 explicit steps.
    theta = jnp.tile(theta_of(model), (6, 1)).at[jnp.array([1, 4]), 0].set(1e9)
    cfg = SolverConfig(method="ode", max_steps=300)
    sol = simulate_population(model, theta, reg, ts, config=cfg, throw=False)
    np.testing.assert_array_equal(sol.status, [0, 1, 0, 0, 1, 0])
    np.testing.assert_array_equal(sol.ok, [True, False, True, True, False, True])
    p = dict(zip(model.param_names, np.asarray(theta[0]).tolist()))
    good = oracles.concentration("pk_1c_oral", p, [0.0, 12.0], [100.0, 100.0], [0.0, 0.0], ts)
    np.testing.assert_allclose(np.asarray(sol.conc)[[0, 2, 3, 5]], np.tile(good, (4, 1)), rtol=1e-5)
    with pytest.raises(SimulationError) as err:
        simulate_population(model, theta, reg, ts, config=cfg, throw=True)
    np.testing.assert_array_equal(err.value.subjects, [1, 4])
    np.testing.assert_array_equal(err.value.status, [1, 1])
    assert "2 subject(s) [1, 4]" in str(err.value)


# ====================================================================== recompilation guard
BACKEND_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"


def _count_compiles(fn):
    """Number of XLA backend compilations while running `fn()` (jax.monitoring events)."""
    events = []

    def listener(name, duration, **kwargs):
        if name == BACKEND_COMPILE_EVENT:
            events.append(duration)

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        jax.block_until_ready(fn())
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
    return len(events)


def test_simulate_population_compiles_once_per_shape():
    model = get_model("pk_1c_iv")
    cfg = SolverConfig(method="expm", max_steps=777)  # a configuration no other test compiled
    reg = Regimen.make([0.0, 12.0], [100.0, 100.0])
    ts = jnp.array([1.0, 12.0, 24.0])
    theta = jnp.tile(theta_of(model), (5, 1))
    cache = population_module._simulate_batch._cached
    size0 = cache._cache_size()
    out = {}

    def call(key, th, t):
        out[key] = simulate_population(model, th, reg, t, config=cfg)
        return out[key].conc

    assert _count_compiles(lambda: call("first", theta, ts)) >= 1
    assert cache._cache_size() == size0 + 1
    # Same shapes, other values: no compilation at all (the batch function nor eager helpers).
    theta2, ts2 = jax.block_until_ready((theta * 1.1, ts + 0.5))  # (these ops compile)
    assert _count_compiles(lambda: call("second", theta2, ts2)) == 0
    assert cache._cache_size() == size0 + 1
    assert not np.allclose(out["first"].conc, out["second"].conc)
    # A new number of subjects does compile (the counter works).
    assert _count_compiles(lambda: call("third", theta[:3], ts)) >= 1
    assert cache._cache_size() == size0 + 2


# =================================================================== engines: method="erk", sensitivities
TIGHT_ERK = SolverConfig(method="erk", rtol=1e-10, atol=1e-12)


def test_erk_method_matches_closed_form_one_compartment_oral():
    """pk_1c_oral, two doses: the Bateman function superposed (observations at 12 h pre-dose)."""
    model = get_model("pk_1c_oral")
    ka, cl, v = 1.2, 2.0, 20.0
    k = cl / v
    th = model.pack(dict(ka=ka, CL=cl, V=v))
    ts = jnp.array([0.0, 0.5, 1.0, 3.0, 12.0, 13.0, 24.0, 48.0])
    reg = Regimen.make([0.0, 12.0], [100.0, 50.0])
    sol = simulate(model, th, reg, ts, config=TIGHT_ERK)

    def bateman(dose, t):
        t = np.maximum(t, 0.0)
        return dose * ka / (v * (ka - k)) * (np.exp(-k * t) - np.exp(-ka * t))

    t = np.asarray(ts)
    expected = bateman(100.0, t) + np.where(t > 12.0, bateman(50.0, t - 12.0), 0.0)
    assert int(sol.status) == 0
    assert sol.dstates is None and sol.dconc is None and sol.dresp is None
    np.testing.assert_allclose(sol.conc, expected, rtol=ODE_RTOL, atol=1e-12)


def test_erk_method_matches_ode_on_a_nonlinear_model():
    model = get_model("pk_2c_iv_infusion", "pd_indirect_inhib_kin")
    rng = np.random.default_rng(3)
    theta = theta_of(model)[None] * jnp.exp(0.3 * jnp.asarray(rng.standard_normal((4, 7))))
    reg = Regimen.make([0.0, 24.0], [100.0, 50.0], [1.0, 2.0])
    ts = jnp.array([0.0, 0.5, 2.0, 8.0, 24.0, 25.0, 48.0, 96.0])
    erk = simulate_population(model, theta, reg, ts, config=TIGHT_ERK)
    ode = simulate_population(model, theta, reg, ts, config=TIGHT_ODE)
    np.testing.assert_allclose(erk.states, ode.states, rtol=1e-7, atol=1e-10)
    np.testing.assert_allclose(erk.resp, ode.resp, rtol=1e-7, atol=1e-10)
    # one subject through `simulate` is the same computation as a row of the population
    one = simulate(model, theta[2], reg, ts, config=TIGHT_ERK)
    np.testing.assert_allclose(one.states, erk.states[2], rtol=BATCH_RTOL, atol=0)


def test_erk_method_refuses_what_it_cannot_do():
    model = get_model("pk_1c_iv")
    th, reg, ts = theta_of(model), Regimen.make([0.0], [100.0]), jnp.array([1.0, 2.0])
    with pytest.raises(ValueError, match="y0"):
        simulate(model, th, reg, ts, y0=jnp.ones(1), t0=0.0, config=SolverConfig(method="erk"))
    with pytest.raises(ValueError, match="error estimate"):
        simulate(model, th, reg, ts, config=SolverConfig(method="erk", solver=dfx.Kvaerno5()))
    with pytest.raises(ValueError, match="'erk'"):
        SolverConfig(method="rk4")


@pytest.mark.parametrize("models", [("pk_1c_oral_lag", "pd_direct_emax"), ("pk_2c_iv_infusion",)],
                         ids=["nonlinear-lag", "linear"])
def test_sensitivities_agree_across_engines_and_with_finite_differences(models):
    """∂/∂θ from the erk engine's forward sensitivities, from jacfwd of the ode engine (and of
    the exact engine for a linear model) and from central finite differences of the ode engine."""
    model = get_model(*models)
    th = theta_of(model)
    if "tlag" in model.param_names:
        th = th.at[model.param_names.index("tlag")].set(0.7)
    reg = Regimen.make([0.0, 12.0], [100.0, 50.0], [0.0, 1.5])
    ts = jnp.array([0.3, 1.0, 2.5, 12.0, 13.0, 20.0, 30.0])
    erk = simulate(model, th, reg, ts, config=TIGHT_ERK, sensitivities=True)
    ode = simulate(model, th, reg, ts, config=TIGHT_ODE, sensitivities=True)
    P = th.shape[0]
    assert erk.dstates.shape == ode.dstates.shape == (ts.shape[0], model.n_states, P)
    assert erk.dconc.shape == erk.dresp.shape == (ts.shape[0], P)
    plain = simulate(model, th, reg, ts, config=TIGHT_ODE)
    np.testing.assert_allclose(ode.states, plain.states, rtol=BATCH_RTOL, atol=0)
    for name in ("dstates", "dconc", "dresp"):
        a, b = np.asarray(getattr(erk, name)), np.asarray(getattr(ode, name))
        floor = GRAD_FLOOR * max(np.max(np.abs(b)), 1e-300)
        np.testing.assert_allclose(a, b, rtol=GRAD_RTOL, atol=floor, err_msg=name)
    if model.linear:
        exact = simulate(model, th, reg, ts, config=EXPM, sensitivities=True)
        np.testing.assert_allclose(exact.dconc, ode.dconc, rtol=GRAD_RTOL,
                                   atol=GRAD_FLOOR * float(jnp.max(jnp.abs(ode.dconc))))
    run = jax.jit(lambda t: simulate(model, t, reg, ts, config=TIGHT_ODE).conc)
    fd = []
    for p in range(P):
        h = FD_REL_STEP * float(th[p])
        fd.append((run(th.at[p].add(h)) - run(th.at[p].add(-h))) / (2 * h))
    fd = np.stack(fd, axis=-1)
    floor = GRAD_FLOOR * np.max(np.abs(fd) * np.asarray(th))
    np.testing.assert_allclose(np.asarray(erk.dconc) * np.asarray(th), fd * np.asarray(th),
                               rtol=GRAD_RTOL, atol=floor)


# =================================================================== regimen helpers
def test_regimen_summaries_and_continuation():
    reg = Regimen.make([0.0, 24.0, 48.0], [100.0, 100.0, 80.0], [1.0, 2.0, 2.0], size=5)
    assert reg.n_doses == 5
    real = reg.real_doses()
    assert real.n_doses == 3
    np.testing.assert_array_equal(real.amount, [100.0, 100.0, 80.0])
    assert reg.median_duration() == 2.0
    assert reg.interval() == 24.0
    assert Regimen.make([5.0], [10.0]).interval() is None
    assert Regimen.make([0.0], [10.0]).median_duration() == 0.0
    # n more doses: every interval after the last, the last amount, the median duration
    more = reg.continued(2)
    np.testing.assert_array_equal(more.time, [0.0, 24.0, 48.0, 72.0, 96.0])
    np.testing.assert_array_equal(more.amount, [100.0, 100.0, 80.0, 80.0, 80.0])
    np.testing.assert_array_equal(more.duration, [1.0, 2.0, 2.0, 2.0, 2.0])
    np.testing.assert_array_equal(more.cmt, [-1] * 5)
    # until a time (exclusive), with an explicit interval, amount, start and compartment
    until = reg.continued(tau=12.0, until=84.0, amount=5.0, duration=0.0, cmt=0)
    np.testing.assert_array_equal(until.time, [0.0, 24.0, 48.0, 60.0, 72.0])
    np.testing.assert_array_equal(until.amount, [100.0, 100.0, 80.0, 5.0, 5.0])
    np.testing.assert_array_equal(until.cmt, [-1, -1, -1, 0, 0])
    started = reg.continued(1, 24.0, start=50.0)
    np.testing.assert_array_equal(started.time, [0.0, 24.0, 48.0, 50.0])
    # simulating the continued regimen is simulating the longer regimen written by hand
    model = get_model("pk_1c_iv")
    ts = jnp.array([10.0, 80.0, 100.0])
    by_hand = Regimen.make([0, 24, 48, 72, 96], [100, 100, 80, 80, 80], [1, 2, 2, 2, 2])
    np.testing.assert_array_equal(simulate(model, theta_of(model), more, ts, config=EXPM).conc,
                                  simulate(model, theta_of(model), by_hand, ts, config=EXPM).conc)
    pop = stack_regimens([reg, Regimen.make([0.0], [10.0])])
    assert pop.subject(1).n_doses == 5 and float(pop.subject(1).amount[0]) == 10.0
    assert pop.median_duration() == 1.5  # over every real dose of every subject: 1, 2, 2 and 0
    with pytest.raises(DosingError, match="subject"):
        pop.interval()
    with pytest.raises(DosingError, match="exactly one"):
        reg.continued(2, until=100.0)
    with pytest.raises(DosingError, match="tau"):
        Regimen.make([0.0], [10.0]).continued(2)
