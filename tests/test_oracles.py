"""Self-tests of the reference solutions in ``tests/oracles.py``.

Three independent routes must agree on multiple-dose schedules (mixed bolus / infusion, with
observations at 0 and at every dose time): the closed forms, the matrix exponential, and
``scipy.integrate.solve_ivp`` on hand-written vector fields integrated piecewise between doses.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.integrate import quad, solve_ivp


try:
    from tests import oracles as o
except ImportError:  # ``tests`` not importable as a package: pytest puts tests/ on sys.path
    import oracles as o


PARAMS = {
    "pk_1c_iv": dict(CL=2.0, V=20.0),
    "pk_1c_oral": dict(ka=1.2, CL=3.0, V=30.0),
    "pk_1c_oral_lag": dict(ka=1.2, CL=3.0, V=30.0, tlag=0.75),
    "pk_2c_iv": dict(CL=4.0, V1=15.0, Q=6.0, V2=40.0),
    "pk_2c_iv_infusion": dict(CL=4.0, V1=15.0, Q=6.0, V2=40.0),
    "pk_2c_oral": dict(ka=0.9, CL=4.0, V1=15.0, Q=6.0, V2=40.0),
    "pk_1c_transit_abs": dict(ktr=2.0, CL=3.0, V=25.0),
    "pk_3c_iv": dict(CL=3.0, V1=10.0, Q2=5.0, V2=30.0, Q3=1.0, V3=80.0),
    "pk_1c_oral_flipflop": dict(ka=0.05, CL=5.0, V=20.0),
}

# Three doses: bolus, infusion (2.5 h), bolus. Observations include 0, every dose time and the
# infusion end (8 + 2.5), and are deliberately unsorted with a repeat.
TIMES = np.array([0.0, 8.0, 20.0])
AMOUNTS = np.array([100.0, 50.0, 80.0])
DURATIONS = np.array([0.0, 2.5, 0.0])
OBS = np.array(
    [0.0, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 9.0, 10.5, 12.0, 16.0, 20.0, 20.5, 24.0, 36.0, 48.0]
    + [72.0, 3.0, 20.0]
)
ALL_BOLUS = np.zeros(3)


def _vector_field(model: str, p: dict):
    """``dA/dt`` written out from the model equations (not from ``oracles.rate_matrix``)."""
    if model == "pk_1c_iv":
        return lambda A: [-p["CL"] / p["V"] * A[0]]
    if model in ("pk_1c_oral", "pk_1c_oral_lag", "pk_1c_oral_flipflop"):
        return lambda A: [-p["ka"] * A[0], p["ka"] * A[0] - p["CL"] / p["V"] * A[1]]
    if model in ("pk_2c_iv", "pk_2c_iv_infusion"):

        def f(A):
            c1, c2 = A[0] / p["V1"], A[1] / p["V2"]
            return [-p["CL"] * c1 - p["Q"] * (c1 - c2), p["Q"] * (c1 - c2)]

        return f
    if model == "pk_2c_oral":

        def f(A):
            c1, c2 = A[1] / p["V1"], A[2] / p["V2"]
            absorbed = p["ka"] * A[0]
            return [-absorbed, absorbed - p["CL"] * c1 - p["Q"] * (c1 - c2), p["Q"] * (c1 - c2)]

        return f
    if model == "pk_1c_transit_abs":

        def f(A):
            k = p["ktr"]
            ke = p["CL"] / p["V"]
            return [-k * A[0], k * (A[0] - A[1]), k * (A[1] - A[2]), k * A[2] - ke * A[3]]

        return f
    if model == "pk_3c_iv":

        def f(A):
            c1, c2, c3 = A[0] / p["V1"], A[1] / p["V2"], A[2] / p["V3"]
            to2, to3 = p["Q2"] * (c1 - c2), p["Q3"] * (c1 - c3)
            return [-p["CL"] * c1 - to2 - to3, to2, to3]

        return f
    raise AssertionError(model)


def _solve_ivp_amounts(model, p, times, amounts, durations, obs):
    """Piecewise ``solve_ivp`` (LSODA, rtol 1e-11, atol 1e-13) between dose events.

    Observations in ``(t_a, t_b]`` come from the integration over ``[t_a, t_b]``, i.e. before the
    boluses at ``t_b`` are added (pre-dose rule).
    """
    spec = o.MODELS[model]
    n = len(spec.states)
    times = np.asarray(times, float) + (p[spec.lag] if spec.lag else 0.0)
    inf = durations > 0
    f = _vector_field(model, p)
    jac = np.array([f(e) for e in np.eye(n)]).T  # the vector field is linear
    breaks = np.unique(np.concatenate([times, (times + durations)[inf], [obs.max()]]))
    out = np.zeros((obs.size, n))
    x = np.zeros(n)
    for ta, tb in zip(breaks[:-1], breaks[1:]):
        x[spec.dose_state] += amounts[(~inf) & (times == ta)].sum()
        u = np.zeros(n)
        active = inf & (times <= ta) & (times + durations > ta)
        u[spec.dose_state] = (amounts[active] / durations[active]).sum()
        sel = (obs > ta) & (obs <= tb)
        t_eval = np.unique(np.concatenate([obs[sel], [tb]]))
        sol = solve_ivp(
            lambda t, y: np.asarray(f(y)) + u,
            (ta, tb),
            x,
            method="LSODA",
            jac=lambda t, y: jac,
            t_eval=t_eval,
            rtol=1e-11,
            atol=1e-13,
        )
        assert sol.success, sol.message
        for ti, yi in zip(sol.t, sol.y.T):
            out[obs == ti] = yi
        x = sol.y[:, -1].copy()
    return out


def _assert_rel(actual, desired, rtol, floor=1e-12):
    """Relative agreement, with an absolute floor of ``floor * max|desired|`` (for exact zeros)."""
    actual, desired = np.asarray(actual), np.asarray(desired)
    np.testing.assert_allclose(actual, desired, rtol=rtol, atol=floor * np.abs(desired).max())


@pytest.mark.parametrize("model", sorted(o.MODELS))
def test_every_model_has_parameters_and_closed_form(model):
    assert set(PARAMS[model]) == set(o.MODELS[model].params)
    K, dose, central, volume = o.rate_matrix(model, PARAMS[model])
    assert K.shape == (len(o.MODELS[model].states),) * 2
    assert volume in PARAMS[model]
    assert o.MODELS[model].states[central] == "central"
    assert 0 <= dose < K.shape[0]


@pytest.mark.parametrize("model", sorted(o.MODELS))
def test_rate_matrix_conserves_mass_except_elimination(model):
    """Column sums of ``K``: ``-CL/V_central`` for the central state, 0 for all others."""
    p = PARAMS[model]
    K, _, central, volume = o.rate_matrix(model, p)
    expected = np.zeros(K.shape[0])
    expected[central] = -p["CL"] / p[volume]
    np.testing.assert_allclose(K.sum(axis=0), expected, atol=1e-15)
    assert np.all(K - np.diag(np.diag(K)) >= 0)


@pytest.mark.parametrize("model", sorted(o.MODELS))
def test_unit_response_auc_and_initial_value(model):
    """``integral_0^inf h = 1/CL``; ``h(0) = 1/V`` for IV, 0 for extravascular input."""
    p = PARAMS[model]
    c, lam, pw = o.unit_response(model, p)
    auc = sum(ci * math.factorial(k) / li ** (k + 1) for ci, li, k in zip(c, lam, pw))
    assert auc == pytest.approx(1.0 / p["CL"], rel=1e-13)
    h0 = sum(ci for ci, k in zip(c, pw) if k == 0)
    K, dose, central, volume = o.rate_matrix(model, p)
    assert h0 == pytest.approx(1.0 / p[volume] if dose == central else 0.0, abs=1e-15)
    # The exponents are the eigenvalues of -K (transit: ktr three times, CL/V once).
    np.testing.assert_allclose(
        np.sort(np.unique(np.round(lam, 12))),
        np.sort(np.unique(np.round(-np.linalg.eigvals(K).real, 12))),
        rtol=1e-12,
    )


def test_three_compartment_rates_match_eigenvalues():
    rng = np.random.default_rng(0)
    for _ in range(50):
        p = dict(zip(("CL", "V1", "Q2", "V2", "Q3", "V3"), np.exp(rng.normal(0, 1.5, 6))))
        lam = o.three_compartment_rates(**p)
        K, *_ = o.rate_matrix("pk_3c_iv", p)
        np.testing.assert_allclose(lam, np.sort(-np.linalg.eigvals(K).real)[::-1], rtol=1e-10)


@pytest.mark.parametrize("model", sorted(o.MODELS))
@pytest.mark.parametrize("durations", [DURATIONS, ALL_BOLUS], ids=["mixed", "bolus"])
def test_closed_form_matches_expm(model, durations):
    p = PARAMS[model]
    closed = o.concentration_closed_form(model, p, TIMES, AMOUNTS, durations, OBS)
    ref = o.concentration_expm(model, p, TIMES, AMOUNTS, durations, OBS)
    assert closed.shape == OBS.shape
    _assert_rel(closed, ref, rtol=1e-10, floor=1e-14)
    assert np.all(closed[OBS == 0.0] == 0.0)  # pre-dose sample at the first dose time
    public = o.concentration(model, p, TIMES, AMOUNTS, durations, OBS)
    _assert_rel(public, ref, rtol=1e-10, floor=1e-14)


@pytest.mark.parametrize("model", sorted(o.MODELS))
def test_oracles_match_solve_ivp(model):
    p = PARAMS[model]
    ref = _solve_ivp_amounts(model, p, TIMES, AMOUNTS, DURATIONS, OBS)
    A = o.amounts_expm(model, p, TIMES, AMOUNTS, DURATIONS, OBS)
    assert A.shape == (OBS.size, len(o.MODELS[model].states))
    _assert_rel(A, ref, rtol=1e-8, floor=1e-10)
    _, _, central, volume = o.rate_matrix(model, p)
    _assert_rel(
        o.concentration(model, p, TIMES, AMOUNTS, DURATIONS, OBS),
        ref[:, central] / p[volume],
        rtol=1e-8,
        floor=1e-10,
    )


@pytest.mark.parametrize("model", sorted(o.MODELS))
def test_mass_balance(model):
    """State amounts plus the amount eliminated (``CL * AUC``) equal the amount dosed so far."""
    p = PARAMS[model]
    spec = o.MODELS[model]
    lag = p.get("tlag", 0.0)
    t_check = np.array([5.0, 9.0, 30.0])
    A = o.amounts_expm(model, p, TIMES, AMOUNTS, DURATIONS, np.append(t_check, 72.0))[:-1]

    def conc(t):
        return o.concentration(model, p, TIMES, AMOUNTS, DURATIONS, [t, 72.0])[0]

    start = TIMES + lag
    dosed = np.clip((t_check[:, None] - start) / np.where(DURATIONS > 0, DURATIONS, 1.0), 0, 1)
    dosed = np.where(DURATIONS > 0, dosed, t_check[:, None] > start) @ AMOUNTS
    breaks = [float(b) for b in np.concatenate([start, start + DURATIONS])]
    for i, t in enumerate(t_check):
        auc = quad(
            conc, 0.0, t, points=[b for b in breaks if b < t], limit=200, epsabs=0.0, epsrel=1e-12
        )[0]
        assert A[i].sum() + p["CL"] * auc == pytest.approx(dosed[i], rel=1e-9), spec.states


def test_pre_dose_rule_and_bolus_jump():
    p = PARAMS["pk_1c_iv"]
    k, V = p["CL"] / p["V"], p["V"]
    obs = np.array([0.0, 12.0, 12.0 + 1e-9, 13.0])
    c = o.concentration("pk_1c_iv", p, [0.0, 12.0], [100.0, 100.0], [0.0, 0.0], obs)
    expected = [
        0.0,
        100 / V * math.exp(-12 * k),
        100 / V * (math.exp(-12 * k) + 1.0),
        100 / V * (math.exp(-13 * k) + math.exp(-k)),
    ]
    np.testing.assert_allclose(c, expected, rtol=1e-8)
    np.testing.assert_allclose(
        o.concentration_expm("pk_1c_iv", p, [0.0, 12.0], [100.0, 100.0], [0.0, 0.0], obs),
        expected,
        rtol=1e-8,
    )


def test_infusion_textbook_formula():
    """One-compartment infusion: ``R/CL (1 - e^{-kt})`` during, then mono-exponential decay."""
    CL, V, R, T = 2.0, 20.0, 10.0, 3.0
    k = CL / V
    obs = np.array([0.0, 1.0, 3.0, 7.0])
    expected = (
        R / CL * np.where(obs <= T, -np.expm1(-k * obs), -np.expm1(-k * T) * np.exp(-k * (obs - T)))
    )
    for f in (o.concentration, o.concentration_expm):
        np.testing.assert_allclose(
            f("pk_1c_iv", dict(CL=CL, V=V), [0.0], [R * T], [T], obs), expected, rtol=1e-12
        )


def test_lag_shifts_doses_and_drops_late_ones():
    p = PARAMS["pk_1c_oral_lag"]
    lag = p["tlag"]
    plain = {k: v for k, v in p.items() if k != "tlag"}
    obs = np.array([0.0, 0.5, lag, 2.0, 8.0, 8.0 + lag, 30.0])
    with_lag = o.concentration("pk_1c_oral_lag", p, TIMES, AMOUNTS, DURATIONS, obs)
    shifted = o.concentration("pk_1c_oral", plain, TIMES, AMOUNTS, DURATIONS, obs - lag)
    np.testing.assert_allclose(with_lag, shifted, rtol=1e-13, atol=0)
    assert with_lag[0] == with_lag[1] == with_lag[2] == 0.0
    # A dose landing at or beyond the last observation has no effect.
    for t_late in (30.0 - lag, 29.9):
        for f in (o.concentration, o.concentration_expm):
            extra = f(
                "pk_1c_oral_lag",
                p,
                np.append(TIMES, t_late),
                np.append(AMOUNTS, 1e3),
                np.append(DURATIONS, 0.0),
                obs,
            )
            base = f("pk_1c_oral_lag", p, TIMES, AMOUNTS, DURATIONS, obs)
            np.testing.assert_allclose(extra, base, rtol=1e-10)


def test_nearly_equal_rates_fall_back_to_expm():
    p = dict(ka=0.1, CL=2.0, V=20.0)  # ka == CL/V
    with pytest.raises(o.NearlyEqualRatesError):
        o.unit_response("pk_1c_oral", p)
    obs = np.array([0.0, 1.0, 5.0, 10.0, 30.0])
    c = o.concentration("pk_1c_oral", p, [0.0], [100.0], [0.0], obs)
    np.testing.assert_allclose(c, 100 / 20 * 0.1 * obs * np.exp(-0.1 * obs), rtol=1e-12, atol=0)
    # Transit with ktr == CL/V: an Erlang(4) shape, D ktr**3 t**3 / 6 e^{-kt} / V.
    pt = dict(ktr=0.1, CL=2.0, V=20.0)
    with pytest.raises(o.NearlyEqualRatesError):
        o.unit_response("pk_1c_transit_abs", pt)
    c = o.concentration("pk_1c_transit_abs", pt, [0.0], [100.0], [0.0], obs)
    expected = 100 / 20 * 0.1**3 * obs**3 / 6 * np.exp(-0.1 * obs)
    np.testing.assert_allclose(c, expected, rtol=1e-12, atol=0)


def test_transit_is_accurate_at_early_times_with_close_rates():
    """Close ``ktr`` and ``CL/V``: the public oracle keeps full relative accuracy early on."""
    p = dict(ktr=0.51, CL=0.519 * 20.0, V=20.0)
    obs = np.array([0.01, 0.1, 1.0, 10.0])
    ref = (
        _solve_ivp_amounts(
            "pk_1c_transit_abs", p, np.zeros(1), np.full(1, 100.0), np.zeros(1), obs
        )[:, 3]
        / p["V"]
    )
    _assert_rel(
        o.concentration("pk_1c_transit_abs", p, [0.0], [100.0], [0.0], obs),
        ref,
        rtol=1e-8,
        floor=0.0,
    )


def test_padding_and_cmt_and_input_validation():
    p = PARAMS["pk_2c_oral"]
    base = o.concentration("pk_2c_oral", p, TIMES, AMOUNTS, DURATIONS, OBS)
    padded = o.concentration(
        "pk_2c_oral",
        p,
        np.append(TIMES, 0.0),
        np.append(AMOUNTS, 0.0),
        np.append(DURATIONS, 0.0),
        OBS,
    )
    np.testing.assert_array_equal(padded, base)
    # A bolus into central (cmt=1) of the oral model equals a 2c IV bolus.
    iv = {k: v for k, v in p.items() if k != "ka"}
    np.testing.assert_allclose(
        o.concentration_expm("pk_2c_oral", p, TIMES, AMOUNTS, DURATIONS, OBS, cmts=[1, 1, 1]),
        o.concentration("pk_2c_iv", iv, TIMES, AMOUNTS, DURATIONS, OBS),
        rtol=1e-10,
        atol=1e-14,
    )
    with pytest.raises(KeyError):
        o.concentration("pk_2c_oral", iv, TIMES, AMOUNTS, DURATIONS, OBS)
    with pytest.raises(KeyError):
        o.concentration("pk_4c_iv", p, TIMES, AMOUNTS, DURATIONS, OBS)
    with pytest.raises(ValueError):
        o.concentration("pk_2c_oral", p, TIMES, -AMOUNTS, DURATIONS, OBS)
    with pytest.raises(ValueError):
        o.concentration("pk_2c_oral", {**p, "CL": 0.0}, TIMES, AMOUNTS, DURATIONS, OBS)
