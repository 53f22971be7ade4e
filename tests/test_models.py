"""Numerical tests of the model library (10 PK and 10 PD classes) through the simulator.

- every linear PK class against the independent closed-form / matrix-exponential oracles of
  ``tests/oracles.py``: multiple mixed bolus/infusion doses, both integration methods, several
  seeded prior draws each;
- Michaelis-Menten elimination: its linear limit (Km >> C) and the saturated regime against
  ``scipy.integrate.solve_ivp``;
- every PD class (driven by a linear and a non-linear PK class): baseline without drug,
  direction of the drug effect, the algebraic formulas of the direct models, the
  effect-compartment closed form, an indirect-response model against ``solve_ivp`` on the joint
  system, and PK x PD combinations;
- mass balance (closed systems, and open ones with the eliminated amount CL * AUC);
- parameter validation and model lookup errors.

All in float64 (``tests/conftest.py``). Compilation dominates the run time (~1-2 s per model
and path), so the models of one kind are simulated together in a single jitted function with
fixed input shapes (cached below, padded inputs) and every test reads from it.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pkpd_jax.dosing import Regimen
from pkpd_jax.models import (
    PD_MODELS,
    PK_MODELS,
    ParameterError,
    UnknownModelError,
    get_model,
    get_pd,
    get_pk,
    list_models,
)
from pkpd_jax.solve import Solution, SolverConfig, simulate


try:
    from tests import oracles
except ImportError:  # ``tests`` not importable as a package: pytest puts tests/ on sys.path
    import oracles


# ------------------------------------------------------------------------------ tolerances
# Simulator vs closed-form oracle (float64, ODE at rtol 1e-10 / atol 1e-12, or exact expm).
ORACLE_RTOL = 1e-6
# Absolute floor of the relative checks, as a fraction of max |reference| (exact zeros, e.g.
# C(0) before the first dose, have no relative error).
FLOOR = 1e-9
# Solver settings of the reference-accuracy tests.
TIGHT_ODE = SolverConfig(method="ode", rtol=1e-10, atol=1e-12)
EXPM = SolverConfig(method="expm")
# Baseline of the PD models without drug must be kept to this absolute accuracy.
BASELINE_ATOL = 1e-10
# Simulator (ODE, rtol 1e-10) vs scipy Radau/LSODA (rtol 1e-11) on non-linear systems.
SCIPY_RTOL = 1e-6
# Direct PD models: response vs their formula at the simulated concentration (the same float
# operations up to rounding).
FORMULA_RTOL = 1e-12
# Mass balance: amounts + eliminated = dosed. The Gauss-Legendre AUC is exact to ~1e-13 on the
# smooth pieces; the ODE path adds ~1e-10 relative.
MASS_RTOL = 1e-8

PK_NAMES = [cls.name for cls in PK_MODELS]
LINEAR_PK = [cls.name for cls in PK_MODELS if cls.linear]
PD_NAMES = [cls.name for cls in PD_MODELS]


def assert_rel(actual, desired, rtol, floor=FLOOR, err_msg=""):
    """Relative agreement with an absolute floor of ``floor * max|desired|``."""
    actual, desired = np.asarray(actual), np.asarray(desired)
    np.testing.assert_allclose(
        actual, desired, rtol=rtol, atol=floor * np.max(np.abs(desired)), err_msg=err_msg
    )


def as_dict(model, theta) -> dict[str, float]:
    return {n: float(v) for n, v in zip(model.param_names, np.asarray(theta))}


def theta_of(model, **overrides) -> np.ndarray:
    return np.asarray(model.pack({**model.prior_medians(), **overrides}))


def to_numpy(sol: Solution) -> Solution:
    return jax.tree.map(np.asarray, sol)


# ====================================================================== PK-only model group
# Every PK-only simulation in this module runs through one jitted function per solver config
# that simulates all PK classes at once (N_SUBJ subjects each, OBS_LEN times, N_DOSES doses).
# Smaller inputs are padded: subjects / times by repeating the last one, doses with zero-amount
# rows (which the simulator must ignore).
N_SUBJ = 4  # subjects per model and call = seeded prior draws per linear PK class
N_DOSES = 4
OBS_LEN = 64


@functools.cache
def _pk_group(config: SolverConfig):
    names = LINEAR_PK + (["pk_1c_iv_mm"] if config.method == "ode" else [])
    models = {n: get_model(n) for n in names}

    def run(thetas, regimen, obs):
        return {
            n: jax.vmap(lambda th, ts, m=models[n]: simulate(m, th, regimen, ts, config=config))(
                thetas[n], obs[n]
            )
            for n in names
        }

    return models, jax.jit(run)


def run_pk(config: SolverConfig, regimen: Regimen, inputs: dict) -> dict[str, Solution]:
    """``inputs[name] = (theta[k, p], obs[k, m])`` with k <= N_SUBJ, m <= OBS_LEN -> Solutions.

    Models not in `inputs` run at their prior medians (results discarded).
    """
    models, run = _pk_group(config)
    thetas, obs, shape = {}, {}, {}
    for n, m in models.items():
        th, ts = inputs.get(n, (theta_of(m), np.zeros(1)))
        th, ts = np.atleast_2d(np.asarray(th, float)), np.atleast_2d(np.asarray(ts, float))
        k, t = ts.shape
        assert th.shape[0] == k <= N_SUBJ and t <= OBS_LEN, (n, th.shape, ts.shape)
        ts = np.concatenate([ts, np.repeat(ts[:, -1:], OBS_LEN - t, axis=1)], axis=1)
        thetas[n] = jnp.asarray(np.concatenate([th, np.repeat(th[-1:], N_SUBJ - k, axis=0)]))
        obs[n] = jnp.asarray(np.concatenate([ts, np.repeat(ts[-1:], N_SUBJ - k, axis=0)]))
        shape[n] = (k, t)
    assert regimen.n_doses <= N_DOSES
    sols = run(thetas, regimen.pad_to(N_DOSES), obs)
    out = {}
    for n in inputs:
        k, t = shape[n]
        s = to_numpy(sols[n])
        out[n] = Solution(s.ts[:k, :t], s.states[:k, :t], s.conc[:k, :t], s.resp[:k, :t],
                          s.status[:k])
    return out


# ================================================================================ linear PK
# Four doses: bolus, 2.5 h infusion, bolus, 1.5 h infusion (pk_2c_iv_infusion turns the boluses
# into 1 h infusions, its `default_duration`).
DOSE_T = np.array([0.0, 8.0, 20.0, 30.0])
DOSE_A = np.array([100.0, 50.0, 80.0, 40.0])
DOSE_D = np.array([0.0, 2.5, 0.0, 1.5])
# Unsorted, with duplicates, 0, every dose time and the infusion ends (10.5, 31.5), then seeded
# random times; the four lagged dose times are appended per draw (without lag they repeat the
# dose times).
OBS_BASE = np.array(
    [36.0, 0.0, 0.5, 1.0, 2.0, 8.0, 9.0, 10.5, 12.0, 20.0, 20.0, 24.0, 30.0, 31.5, 33.0, 48.0]
    + [72.0, 3.0, 0.0, 21.0]
    + np.random.default_rng(0).uniform(0.0, 72.0, OBS_LEN - 24).round(3).tolist()
)


def _oracle_durations(name: str) -> np.ndarray:
    return np.where(DOSE_D > 0, DOSE_D, get_pk(name).default_duration)


def _oracle_inputs(name: str, draw):
    """Seeded prior draws and observation times (with the lagged dose times) of one class."""
    model = get_model(name)
    theta = draw(model, N_SUBJ, 1000 + LINEAR_PK.index(name))
    lag = theta[:, model.param_names.index("tlag")] if model.pk.lag else np.zeros(N_SUBJ)
    return theta, np.concatenate([np.tile(OBS_BASE, (N_SUBJ, 1)), DOSE_T + lag[:, None]], 1)


@functools.cache
def _oracle_case(method: str, draw):
    """Every linear PK class at its draws, simulated with one method (one compiled call)."""
    inputs = {n: _oracle_inputs(n, draw) for n in LINEAR_PK}
    config = TIGHT_ODE if method == "ode" else EXPM
    return inputs, run_pk(config, Regimen.make(DOSE_T, DOSE_A, DOSE_D), inputs)


@functools.cache
def _oracle_refs(name: str, draw):
    """Per draw: closed-form concentrations and (second, independent route) expm amounts."""
    theta, obs = _oracle_inputs(name, draw)
    model, durations = get_model(name), _oracle_durations(name)
    out = []
    for th, ts in zip(theta, obs):
        p = as_dict(model, th)
        out.append((oracles.concentration(name, p, DOSE_T, DOSE_A, durations, ts),
                    oracles.amounts_expm(name, p, DOSE_T, DOSE_A, durations, ts)))
    return out


@pytest.mark.parametrize("method", ["ode", "expm"])
@pytest.mark.parametrize("name", LINEAR_PK)
def test_linear_pk_matches_oracle(name, method, draw_params):
    """Multiple doses, prior draws, unsorted/duplicated observations: rel. error <= 1e-6."""
    inputs, sols = _oracle_case(method, draw_params)
    theta, obs = inputs[name]
    sol = sols[name]
    model = get_model(name)
    np.testing.assert_array_equal(sol.status, 0)
    np.testing.assert_array_equal(sol.ts, obs)
    durations = _oracle_durations(name)
    for i, (conc, amounts) in enumerate(_oracle_refs(name, draw_params)):
        p = as_dict(model, theta[i])
        assert_rel(sol.conc[i], conc, ORACLE_RTOL, err_msg=f"{name} draw {i}: {p}")
        assert_rel(sol.states[i], amounts, ORACLE_RTOL, err_msg=f"{name} draw {i}: {p}")
        assert np.all(sol.conc[i][obs[i] == 0.0] == 0.0)  # pre-dose sample at t = 0
    if name == "pk_2c_iv_infusion":  # its boluses became 1 h infusions: C(0.5) far below bolus
        assert model.pk.default_duration == 1.0 and list(durations) == [1.0, 2.5, 1.0, 1.5]
        bolus = oracles.concentration(
            "pk_2c_iv", as_dict(model, theta[0]), DOSE_T, DOSE_A, DOSE_D, [0.5]
        )
        assert sol.conc[0, np.flatnonzero(obs[0] == 0.5)[0]] < 0.8 * bolus[0]
    if model.pk.lag:  # observations at the lagged dose times see the gut before the dose
        gut = sol.states[:, -4:, 0]
        assert np.all(gut[:, 0] == 0.0)
        ref = [oracles.amounts_expm(name, as_dict(model, th), DOSE_T, DOSE_A, DOSE_D, o[-4:])
               for th, o in zip(theta, obs)]
        assert_rel(gut, np.array(ref)[:, :, 0], ORACLE_RTOL)


# ============================================================================== Michaelis-Menten
def test_michaelis_menten_linear_limit():
    """Km >> C: Vmax C / (Km + C) ~ (Vmax / Km) C, i.e. pk_1c_iv with CL' = CL + Vmax / Km."""
    cl, v, cl_mm, km = 3.0, 40.0, 2.0, 1e8  # C <= ~10 mg/L: nonlinearity C/Km <= 1e-7
    model = get_model("pk_1c_iv_mm")
    theta = model.pack(dict(CL=cl, V=v, Vmax=cl_mm * km, Km=km))
    times, amounts, durs = np.array([0.0, 12.0, 24.0]), np.array([300.0, 200.0, 100.0]), [0, 3, 0]
    obs = np.array([0.0, 1.0, 12.0, 13.5, 15.0, 24.0, 30.0, 48.0, 12.0])
    reg = Regimen.make(times, amounts, durs)
    sol = run_pk(TIGHT_ODE, reg, {"pk_1c_iv_mm": (theta, obs)})["pk_1c_iv_mm"]
    assert int(sol.status[0]) == 0
    ref = oracles.concentration("pk_1c_iv", dict(CL=cl + cl_mm, V=v), times, amounts, durs, obs)
    assert_rel(sol.conc[0], ref, ORACLE_RTOL)


def test_michaelis_menten_saturated_matches_solve_ivp(solve_ivp_piecewise):
    """Saturated elimination (C up to ~60 x Km) against scipy Radau on the same equations."""
    p = dict(CL=1.0, V=20.0, Vmax=30.0, Km=0.5)
    model = get_model("pk_1c_iv_mm")
    times, amounts, durs = np.array([0.0, 12.0, 24.0]), np.array([600.0, 300.0, 500.0]), [0, 2, 0]
    obs = np.array([0.0, 0.5, 2.0, 6.0, 12.0, 13.0, 14.0, 18.0, 24.0, 25.0, 30.0, 40.0, 60.0])
    reg = Regimen.make(times, amounts, durs)
    sol = run_pk(TIGHT_ODE, reg, {"pk_1c_iv_mm": (model.pack(p), obs)})["pk_1c_iv_mm"]
    assert int(sol.status[0]) == 0

    def rhs(t, a, u):
        c = a[0] / p["V"]
        return u - p["CL"] * c - p["Vmax"] * c / (p["Km"] + c)

    ref = solve_ivp_piecewise(rhs, [0.0], times, amounts, durs, 0, obs)[:, 0] / p["V"]
    assert_rel(sol.conc[0], ref, SCIPY_RTOL)
    assert ref.max() > 50 * p["Km"]  # the test is in the saturated regime ...
    linear = oracles.concentration(
        "pk_1c_iv", dict(CL=p["CL"] + p["Vmax"] / p["Km"], V=p["V"]), times, amounts, durs, obs
    )
    assert np.max(np.abs(ref - linear) / ref.max()) > 0.5  # ... far from the linear model


def test_expm_refuses_nonlinear_models():
    model = get_model("pk_1c_iv_mm")
    reg, ts = Regimen.make([0.0], [1.0]), jnp.array([1.0])
    with pytest.raises(ValueError, match="linear"):  # traced abstractly: no compilation
        jax.eval_shape(lambda th: simulate(model, th, reg, ts, config=EXPM), theta_of(model))


# ============================================================================== mass balance
@pytest.mark.parametrize("config", [TIGHT_ODE, EXPM], ids=["ode", "expm"])
def test_mass_balance_closed_systems(config):
    """No elimination (CL, Vmax -> 1e-12): the amounts sum to what has been dosed so far."""
    models, _ = _pk_group(config)
    inputs, dosed = {}, {}
    for name, model in models.items():
        over = {"CL": 1e-12} | ({"Vmax": 1e-12} if name == "pk_1c_iv_mm" else {})
        theta = theta_of(model, **over)
        lag = float(model.lag_time(jnp.asarray(theta)))
        obs = np.array([0.0, 5.0, 9.0, 10.5, 25.0, 31.0, 33.0, 72.0]) + lag
        start = DOSE_T + lag
        dur = np.where(DOSE_D > 0, DOSE_D, model.pk.default_duration)
        frac = np.where(
            dur > 0,
            np.clip((obs[:, None] - start) / np.where(dur > 0, dur, 1.0), 0.0, 1.0),
            obs[:, None] > start,  # a bolus is not in an observation at its own time
        )
        inputs[name], dosed[name] = (theta, obs), frac @ DOSE_A
    sols = run_pk(config, Regimen.make(DOSE_T, DOSE_A, DOSE_D), inputs)
    for name, sol in sols.items():
        assert int(sol.status[0]) == 0
        total = sol.states[0].sum(axis=1)
        np.testing.assert_allclose(total, dosed[name], rtol=MASS_RTOL, atol=1e-9, err_msg=name)
        assert np.all(sol.states >= -1e-9), name


ORAL_PK = ["pk_1c_oral", "pk_1c_oral_lag", "pk_2c_oral", "pk_1c_transit_abs"]


@pytest.mark.parametrize("config", [TIGHT_ODE, EXPM], ids=["ode", "expm"])
def test_mass_balance_with_elimination(config, draw_params):
    """Absorption models: amounts in all compartments + CL * AUC(0, T) = dose given by T.

    AUC from the simulator's own concentrations at Gauss-Legendre nodes of every smooth piece
    (between dose events), so the identity checks the simulator alone. The nodes of one subject
    are spread over the N_SUBJ x OBS_LEN observation slots (the same subject N_SUBJ times).
    """
    t_end = 50.0
    x, w = np.polynomial.legendre.leggauss(24)  # 24 nodes x <= 8 pieces + t_end <= 4 x 64
    inputs, quad, params = {}, {}, {}
    for name in ORAL_PK:
        model = get_model(name)
        theta = draw_params(model, 1, seed=11)[0]
        p = params[name] = as_dict(model, theta)
        lag = p.get("tlag", 0.0)
        events = np.concatenate([[0.0], DOSE_T + lag, DOSE_T + lag + DOSE_D, [t_end]])
        events = np.unique(events[events <= t_end])
        a, b = events[:-1, None], events[1:, None]
        nodes = ((b - a) / 2 * x + (a + b) / 2).ravel()
        quad[name] = ((b - a) / 2 * w).ravel()
        obs = np.concatenate([nodes, np.full(N_SUBJ * OBS_LEN - nodes.size, t_end)])
        inputs[name] = (np.tile(theta, (N_SUBJ, 1)), obs.reshape(N_SUBJ, OBS_LEN))
    sols = run_pk(config, Regimen.make(DOSE_T, DOSE_A, DOSE_D), inputs)
    for name, sol in sols.items():
        p = params[name]
        np.testing.assert_array_equal(sol.status, 0)
        auc = np.dot(quad[name], sol.conc.ravel()[: quad[name].size])
        total = sol.states[-1, -1].sum() + p["CL"] * auc
        assert total == pytest.approx(DOSE_A.sum(), rel=MASS_RTOL), name
        # And the amounts themselves agree with the oracle.
        ref = oracles.amounts_expm(name, p, DOSE_T, DOSE_A, DOSE_D, [t_end])[0]
        assert_rel(sol.states[-1, -1], ref, ORACLE_RTOL, err_msg=name)


# ================================================================================ PD models
# PD suite: every PD class driven by pk_1c_iv (linear; C = A / V) and pk_1c_iv_mm (non-linear),
# three 24-hourly boluses (amounts are an argument, so "no drug" and "drug" share one
# compilation), observed every 2 h over 0-200 h. Two subjects per pair: prior medians and a
# seeded prior draw. All 20 pairs are one jitted function.
PD_PK = ("pk_1c_iv", "pk_1c_iv_mm")
PD_DOSE_T = np.array([0.0, 24.0, 48.0])
PD_OBS = np.linspace(0.0, 200.0, 101)
PD_CONFIG = SolverConfig(method="auto", rtol=1e-10, atol=1e-12)
PD_PAIRS = [(pk, pd) for pk in PD_PK for pd in PD_NAMES]


@functools.cache
def _pd_group():
    models = {f"{pk}+{pd}": get_model(pk, pd) for pk, pd in PD_PAIRS}

    def run(thetas, amounts):
        reg = Regimen(PD_DOSE_T, amounts, jnp.zeros(3), -jnp.ones(3, int))
        return {
            k: jax.vmap(lambda th, m=m: simulate(m, th, reg, PD_OBS, config=PD_CONFIG))(thetas[k])
            for k, m in models.items()
        }

    return models, jax.jit(run)


def run_pd(amounts, draw, **overrides) -> dict[str, tuple]:
    """``{"pk+pd": (model, theta[2, p], Solution)}``.

    Two subjects per pair: the prior medians and a seeded prior draw (`draw` is the
    `draw_params` fixture), unless `overrides` gives a pair's thetas.
    """
    models, run = _pd_group()
    thetas = {
        k: overrides.get(k, np.stack([theta_of(m), draw(m, 1, seed=7)[0]]))
        for k, m in models.items()
    }
    sols = run({k: jnp.asarray(v) for k, v in thetas.items()}, jnp.asarray(amounts, float))
    out = {}
    for k, m in models.items():
        sol = to_numpy(sols[k])
        np.testing.assert_array_equal(sol.status, 0, err_msg=k)
        assert np.all(np.isfinite(sol.states)) and np.all(np.isfinite(sol.resp)), k
        out[k] = (m, thetas[k], sol)
    return out


@functools.cache
def _pd_standard(amounts: tuple, draw):
    return run_pd(amounts, draw)


@pytest.mark.parametrize("pd", PD_NAMES)
@pytest.mark.parametrize("pk", PD_PK)
def test_pd_without_drug_stays_at_baseline(pk, pd, draw_params):
    model, theta, sol = _pd_standard((0.0, 0.0, 0.0), draw_params)[f"{pk}+{pd}"]
    r0 = theta[:, model.param_names.index("R0")]
    np.testing.assert_array_equal(sol.conc, 0.0)
    np.testing.assert_allclose(
        sol.resp, np.broadcast_to(r0[:, None], sol.resp.shape), rtol=0, atol=BASELINE_ATOL
    )


# Documented sign of R - R0 under drug for the turnover, transit and effect-site models.
DIRECTION = {
    "pd_indirect_inhib_kin": -1,
    "pd_indirect_stim_kin": +1,
    "pd_indirect_inhib_kout": +1,
    "pd_indirect_stim_kout": -1,
    "pd_transit_delay": +1,
    "pd_effect_comp_emax": +1,
}


@pytest.mark.parametrize("pd", list(DIRECTION))
@pytest.mark.parametrize("pk", PD_PK)
def test_pd_drug_effect_direction(pk, pd, draw_params):
    model, theta, sol = _pd_standard((100.0, 100.0, 100.0), draw_params)[f"{pk}+{pd}"]
    r0 = theta[:, model.param_names.index("R0")][:, None]
    delta = DIRECTION[pd] * (sol.resp - r0) / r0
    assert np.all(delta >= -1e-9), f"{pd} moved against its documented direction"
    assert np.all(delta.max(axis=1) > 1e-3), f"{pd} shows no drug effect"
    assert np.all(sol.resp[:, 0] == r0[:, 0])  # pre-dose sample at t = 0 is the baseline


def _direct_formula(pd: str, p: dict, c: np.ndarray) -> np.ndarray:
    if pd == "pd_direct_linear":
        return np.maximum(p["R0"] + p["slope"] * c, 0.0)
    if pd == "pd_direct_emax":
        return p["R0"] + p["Emax"] * c / (p["EC50"] + c)
    if pd == "pd_direct_sigmoid":
        h = (c / p["EC50"]) ** p["gamma"]
        return p["R0"] + p["Emax"] * h / (1.0 + h)
    if pd == "pd_direct_inhib_emax":
        return p["R0"] * (1.0 - p["Imax"] * c / (p["IC50"] + c))
    raise AssertionError(pd)


@pytest.mark.parametrize("pd", [n for n in PD_NAMES if get_pd(n).direct])
@pytest.mark.parametrize("pk", PD_PK)
def test_direct_pd_equals_formula(pk, pd, draw_params):
    model, theta, sol = _pd_standard((100.0, 100.0, 100.0), draw_params)[f"{pk}+{pd}"]
    assert np.all(sol.conc[:, 1:] > 0)
    for i in range(theta.shape[0]):
        expected = _direct_formula(pd, as_dict(model, theta[i]), sol.conc[i])
        np.testing.assert_allclose(sol.resp[i], expected, rtol=FORMULA_RTOL, atol=0)
        assert np.ptp(expected) > 1e-3  # the drug moves the response


@functools.cache
def _pd_single_dose(draw):
    """One 100 mg bolus at 0; the transit pair with ktr = 0.5 (row 0) and 0.1 (row 1)."""
    key = "pk_1c_iv+pd_transit_delay"
    model = _pd_group()[0][key]
    theta = np.tile(theta_of(model), (2, 1))
    theta[:, model.param_names.index("ktr")] = [0.5, 0.1]
    return run_pd([100.0, 0.0, 0.0], draw, **{key: theta})


def test_transit_delay_grows_with_slower_transit(draw_params):
    model, theta, sol = _pd_single_dose(draw_params)["pk_1c_iv+pd_transit_delay"]
    r0 = theta[0, model.param_names.index("R0")]
    t_peak = PD_OBS[np.argmax(sol.resp, axis=1)]  # C peaks at 0+ (IV bolus)
    assert 0.0 < t_peak[0] < t_peak[1]
    # With 3 transit compartments the mean delay of the signal is 3 / ktr: the faster chain
    # responds more at 10 h, the slower one more at 60 h.
    i10, i60 = np.searchsorted(PD_OBS, [10.0, 60.0])
    assert sol.resp[0, i10] - r0 > sol.resp[1, i10] - r0 > 0
    assert sol.resp[1, i60] - r0 > sol.resp[0, i60] - r0 > 0


def test_effect_compartment_closed_form(draw_params):
    """1c IV bolus D: Ce(t) = D/V ke0/(ke0 - k) (e^{-kt} - e^{-ke0 t}); Ce lags C."""
    model, theta, sol = _pd_single_dose(draw_params)["pk_1c_iv+pd_effect_comp_emax"]
    for i in range(theta.shape[0]):
        p = as_dict(model, theta[i])
        k, ke0, t = p["CL"] / p["V"], p["ke0"], PD_OBS
        ce = 100.0 / p["V"] * ke0 / (ke0 - k) * (np.exp(-k * t) - np.exp(-ke0 * t))
        assert_rel(sol.states[i, :, 1], ce, SCIPY_RTOL)
        np.testing.assert_allclose(
            sol.resp[i], p["R0"] + p["Emax"] * ce / (p["EC50"] + ce), rtol=SCIPY_RTOL
        )
        # Lag: C is highest right after the bolus, Ce at log(ke0 / k) / (ke0 - k) > 0.
        t_max = np.log(ke0 / k) / (ke0 - k)
        assert np.argmax(sol.conc[i, 1:]) == 0
        assert abs(PD_OBS[np.argmax(sol.states[i, :, 1])] - t_max) <= 1.0 + 1e-12
        assert t_max > 1.0


@pytest.mark.parametrize("pk", PD_PK)
def test_indirect_inhib_kin_matches_solve_ivp(pk, solve_ivp_piecewise, draw_params):
    """The joint PK + turnover system against scipy LSODA, for both driving PK models."""
    amounts = (100.0, 100.0, 100.0)
    model, theta, sol = _pd_standard(amounts, draw_params)[f"{pk}+pd_indirect_inhib_kin"]
    for i in range(theta.shape[0]):
        p = as_dict(model, theta[i])

        def rhs(t, y, u, p=p):
            c = y[0] / p["V"]
            elim = p["CL"] * c + (p["Vmax"] * c / (p["Km"] + c) if "Vmax" in p else 0.0)
            kin = p["R0"] * p["kout"]
            return np.array([u[0] - elim, kin * (1.0 - c / (p["IC50"] + c)) - p["kout"] * y[1]])

        ref = solve_ivp_piecewise(
            rhs, [0.0, p["R0"]], PD_DOSE_T, amounts, np.zeros(3), 0, PD_OBS, method="LSODA"
        )
        assert_rel(sol.states[i], ref, SCIPY_RTOL)
        assert_rel(sol.resp[i], ref[:, 1], SCIPY_RTOL)


# PK x PD combinations. Compilation costs ~1 s per pair, so by default every PD class runs with
# two PK classes (pk_1c_iv and the non-linear pk_1c_iv_mm: the PD suite above) and every PK
# class with two PD classes (pd_transit_delay: stateful, ODE path; pd_direct_sigmoid: direct,
# expm path for linear PK), here. All 100 pairs run under `-m slow`. One jit per group.
def _pairs_ok(pairs):
    reg = Regimen.make([0.0, 12.0, 24.0], [100.0, 50.0, 80.0], [0.0, 2.0, 0.0])
    ts = jnp.array([48.0, 0.0, 0.5, 2.0, 6.0, 12.0, 13.0, 24.0, 30.0, 36.0])
    models = [get_model(pk, pd) for pk, pd in pairs]
    thetas = [m.pack(m.prior_medians()) for m in models]
    run = jax.jit(lambda ths: [simulate(m, th, reg, ts) for m, th in zip(models, ths)])
    for (pk, pd), m, sol in zip(pairs, models, run(thetas)):
        assert int(sol.status) == 0, (pk, pd)
        assert np.all(np.isfinite(sol.states)) and np.all(np.isfinite(sol.resp)), (pk, pd)
        assert sol.states.shape == (10, m.n_states)
        r0 = m.prior_medians()["R0"]
        assert float(sol.resp[1]) == pytest.approx(r0, abs=BASELINE_ATOL), (pk, pd)
        assert np.max(np.abs(np.asarray(sol.resp) - r0)) > 1e-3, (pk, pd)  # drug has an effect


def test_every_pk_with_two_pd_classes_simulates():
    assert set(PD_PK) | {pk for pk in PK_NAMES if pk not in PD_PK} == set(PK_NAMES)
    _pairs_ok([(pk, pd) for pk in PK_NAMES if pk not in PD_PK
               for pd in ("pd_transit_delay", "pd_direct_sigmoid")])


@pytest.mark.slow
@pytest.mark.parametrize("pk", PK_NAMES)
def test_all_pk_pd_pairs_simulate(pk):
    _pairs_ok([(pk, pd) for pd in PD_NAMES])


def test_joint_model_renames_clashing_pd_parameter():
    m = get_model("pk_1c_transit_abs", "pd_transit_delay")
    assert m.param_names == ("ktr", "CL", "V", "R0", "Emax", "EC50", "ktr_pd")
    assert m.state_names == ("transit1", "transit2", "transit3", "central", "T1", "T2", "T3")
    th = m.pack({**m.prior_medians(), "ktr": 2.0, "ktr_pd": 0.3})
    pk, pd = m.split_params(th)
    assert float(pk["ktr"]) == 2.0 and float(pd["ktr"]) == 0.3


# ====================================================================== declarations, errors
def test_registry_lists_ten_and_ten():
    assert len(list_models("pk")) == len(list_models("pd")) == 10
    assert set(LINEAR_PK) == set(oracles.MODELS)  # every linear class has an oracle
    with pytest.raises(ValueError, match="family"):
        list_models("xx")


@pytest.mark.parametrize(
    "call, bad, hint",
    [
        (lambda: get_pk("pk_2c_ivv"), "pk_2c_ivv", "pk_2c_iv"),
        (lambda: get_pd("pd_direct_emaxx"), "pd_direct_emaxx", "pd_direct_emax"),
        (lambda: get_model("pk_1c_oral", "pd_indirect_inhib"), "pd_indirect_inhib", "inhib_kin"),
    ],
)
def test_unknown_model_names_suggest_close_matches(call, bad, hint):
    with pytest.raises(UnknownModelError) as err:
        call()
    msg = str(err.value)
    assert bad in msg and "Did you mean" in msg and hint in msg


@pytest.mark.parametrize(
    "name, value",
    [("CL", float("nan")), ("V", -1.0), ("ka", 0.0), ("Imax", 1.5), ("IC50", float("inf"))],
)
def test_pack_rejects_bad_values(name, value):
    model = get_model("pk_1c_oral", "pd_indirect_inhib_kout")
    with pytest.raises(ParameterError, match=rf"parameter {name} of .*got \[{value}\]"):
        model.pack({**model.prior_medians(), name: value})


def test_pack_rejects_unknown_and_missing_names():
    model = get_model("pk_1c_iv")
    with pytest.raises(ParameterError, match=r"unknown: \['Cl'\].*missing: \['CL'\]"):
        model.pack({"Cl": 1.0, "V": 2.0})
    theta = model.pack({"CL": np.array([1.0, 2.0]), "V": np.array([3.0, 4.0])})
    np.testing.assert_array_equal(theta, [[1.0, 3.0], [2.0, 4.0]])
    np.testing.assert_array_equal(model.unpack(theta)["V"], [3.0, 4.0])


@pytest.mark.parametrize("cls", PK_MODELS + PD_MODELS, ids=lambda c: c.name)
def test_prior_medians_round_trip_through_unconstrained_space(cls):
    for p in cls.params:
        u = p.to_unconstrained(np.float64(p.median))
        assert float(u) == pytest.approx(p.prior_loc, rel=1e-12, abs=1e-12)
        assert float(p.to_natural(u)) == pytest.approx(p.median, rel=1e-12)
        lo, hi = p.prior_range()
        assert lo < p.median < hi
