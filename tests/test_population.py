"""Numerical tests of the hierarchical population model (`pkpd_jax.inference.population`).

- the log-density at a given position equals an independent numpy/scipy computation (priors with
  their log-Jacobians, normal likelihood with proportional + additive error, M3 for BLQ rows,
  predictions from the closed-form oracles of ``tests/oracles.py``);
- gradients: the default forward-mode custom VJP against central finite differences and against
  diffrax's reverse-mode adjoint;
- the covariate equation ``CL_i = CL·(BW/70)^BW_CL·COMED_CL^COMED·exp(ω·η)`` and the resolution
  of ``CovariateSpec`` strings;
- parameter recovery by `fit_map` on data simulated from known population values;
- failed subjects (solver gives up, overflowing parameters, absurd ω / σ) give ``-inf`` with a
  finite gradient, in forward and reverse mode;
- bad input raises named errors before anything is simulated; data that cannot support a
  parameter (constant covariates, no PD sample after a dose) gives a `PopulationDataWarning`;
- messy data (samples at dose times, a positive pre-dose concentration, which is warned about and
  not fitted, single-sample and placebo subjects) gives the hand-computed, finite log-density;
- `simulate_predictive` without variability reproduces the typical predictions.

float64 throughout (``tests/conftest.py``). Data sets are a handful of subjects built in code.
"""

from __future__ import annotations

import math
import warnings

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import polars as pl
import pytest
from scipy import stats

from pkpd_jax.data import Dataset
from pkpd_jax.inference.population import (
    CovariateSpec,
    CovariateSpecError,
    PopulationDataError,
    PopulationDataWarning,
    PopulationModel,
    curvature_diagonal,
    curvature_matrix,
    fit_map,
)
from pkpd_jax.models import get_model
from pkpd_jax.solve import SolverConfig


try:
    from tests import oracles
except ImportError:  # ``tests`` not importable as a package: pytest puts tests/ on sys.path
    import oracles


# ------------------------------------------------------------------------------ tolerances
# Log-density vs the hand computation: the expm path is exact to rounding; the oracle is a
# closed form, so agreement is ~1e-12 relative on the predictions.
LOGDENSITY_RTOL = 1e-9
# Tight ODE settings for finite differences (solver noise ~1e-10 relative on predictions).
TIGHT = SolverConfig(method="ode", rtol=1e-10, atol=1e-12)
FD_STEP = 1e-5
FD_RTOL = 1e-5
# Forward-mode and reverse-mode AD differentiate the same discretisation: rounding-level
# agreement, up to the adaptive solver's step-size control (not differentiated identically).
FWD_REV_RTOL = 1e-7


# ------------------------------------------------------------------------------ data helpers
def subject(sid, doses=(), obs=(), **cov):
    """One subject: `doses` = [(time, amount[, duration])], `obs` = [(time, dv[, dvid[, extra]])]
    where `extra` is a dict of BLQ / LLOQ / MDV overrides; `cov` = baseline covariates."""
    return {"id": str(sid), "doses": list(doses), "obs": list(obs), "cov": cov}


def frame(subjects) -> pl.DataFrame:
    """A NONMEM-style table (observations before doses at equal times: pre-dose samples)."""
    rows = []
    cov_names = sorted({k for s in subjects for k in s["cov"]})
    for s in subjects:
        events = []
        for o in s["obs"]:
            t, dv = o[0], o[1]
            dvid = o[2] if len(o) > 2 else 1
            extra = o[3] if len(o) > 3 else {}
            events.append(
                (
                    t,
                    0,
                    {
                        "AMT": 0.0,
                        "DV": dv,
                        "EVID": 0,
                        "DVID": dvid,
                        "MDV": extra.get("MDV", 0),
                        "BLQ": extra.get("BLQ", 0),
                        "LLOQ": extra.get("LLOQ"),
                    },
                )
            )
        for d in s["doses"]:
            t, amt = d[0], d[1]
            dur = d[2] if len(d) > 2 else 0.0
            events.append(
                (
                    t,
                    1,
                    {
                        "AMT": amt,
                        "DV": None,
                        "EVID": 1,
                        "DVID": 1,
                        "MDV": 1,
                        "BLQ": 0,
                        "LLOQ": None,
                        "DUR": dur,
                    },
                )
            )
        events.sort(key=lambda e: (e[0], e[1]))
        for t, _, r in events:
            rows.append(
                {
                    "ID": s["id"],
                    "TIME": float(t),
                    "DUR": r.pop("DUR", 0.0),
                    **r,
                    **{c: float(s["cov"][c]) for c in cov_names},
                }
            )
    schema = {
        "ID": pl.String,
        "TIME": pl.Float64,
        "DUR": pl.Float64,
        "AMT": pl.Float64,
        "DV": pl.Float64,
        "EVID": pl.Int64,
        "DVID": pl.Int64,
        "MDV": pl.Int64,
        "BLQ": pl.Int64,
        "LLOQ": pl.Float64,
        **{c: pl.Float64 for c in cov_names},
    }
    return pl.DataFrame(rows, schema=schema)


def dataset(subjects) -> Dataset:
    return Dataset.from_frame(frame(subjects))


def values_for(pm: PopulationModel, **vals) -> dict[str, float]:
    """Population values for every name of `pm`: the given ones, omegas 0.3 and sigmas 0.1."""
    out = {}
    for n in pm.names:
        if n in vals:
            out[n] = float(vals[n])
        elif n.startswith("omega_"):
            out[n] = 0.3
        elif n.startswith("sigma_"):
            out[n] = 0.1
        else:
            raise KeyError(n)
    return out


# A tiny PK + direct-Emax PD study. Subject 1 covers: a trough sampled at the second dose time
# (pre-dose rule), a BLQ row with a known LLOQ, an ignored row (MDV 1); subject 2: a BLQ row
# without LLOQ (DV holds the LLOQ), a 1 h infusion; subject 3: COMED 1, few samples.
TINY = [
    subject(
        1,
        doses=[(0, 100.0), (12, 100.0)],
        obs=[
            (1, 1.6),
            (4, 1.05),
            (12, 0.32),
            (13, 1.9),
            (30, 0.0, 1, {"BLQ": 1, "LLOQ": 0.05}),
            (6, 99.0, 1, {"MDV": 1}),
            (0, 10.5, 2),
            (2, 14.2, 2),
            (8, 12.0, 2),
        ],
        BW=60.0,
        COMED=0,
    ),
    subject(
        2,
        doses=[(0, 200.0, 1.0)],
        obs=[(0.5, 1.1), (2, 2.9), (8, 1.4), (48, 0.02, 1, {"BLQ": 1}), (0, 9.1, 2), (3, 13.0, 2)],
        BW=85.0,
        COMED=0,
    ),
    subject(3, doses=[(0, 100.0)], obs=[(2, 2.4), (24, 0.9), (4, 15.5, 2)], BW=72.0, COMED=1),
]
TINY_MODEL = ("pk_1c_iv", "pd_direct_emax")
TINY_VALUES = dict(
    CL=3.5,
    V=45.0,
    R0=9.5,
    Emax=6.0,
    EC50=0.8,
    BW_CL=0.7,
    BW_V=1.1,
    COMED_CL=0.55,
    omega_CL=0.25,
    omega_V=0.15,
    omega_R0=0.1,
    omega_Emax=0.4,
    omega_EC50=0.5,
    sigma_prop_PK=0.12,
    sigma_add_PK=0.03,
    sigma_prop_PD=0.06,
    sigma_add_PD=0.4,
)


@pytest.fixture(scope="module")
def tiny():
    pm = PopulationModel(get_model(*TINY_MODEL), dataset(TINY))
    eta = np.random.default_rng(1).standard_normal((3, 5))
    return pm, pm.to_position(TINY_VALUES, eta), eta


# =================================================================== log-density by hand
def _hand_logdensity(model, subjects, vals, eta, priors=None):
    """Independent computation of the population log-density (numpy/scipy + oracles) for
    ``pk_1c_iv`` (+ ``pd_direct_emax``) with the BW / COMED covariate model.

    Quantified concentrations at or before a subject's first dose are not fitted (documented
    rule: the model predicts exactly 0 there)."""
    priors = priors or {}
    names = [p.name for p in model.params]
    kinds = ("PK", "PD") if model.pd is not None else ("PK",)

    def fitted_obs(s):
        t_first = min((d[0] for d in s["doses"]), default=np.inf)
        for o in s["obs"]:
            t, dv = o[0], o[1]
            dvid = o[2] if len(o) > 2 else 1
            extra = o[3] if len(o) > 3 else {}
            if extra.get("MDV") or dvid > len(kinds):
                continue
            if dvid == 1 and not extra.get("BLQ") and t <= t_first:
                continue
            yield t, dv, dvid, extra

    lp = 0.0
    # typical values: log theta ~ N(log median, (2 log_sd)^2) on the unconstrained (log) scale;
    # the density is over log theta (the position), so no Jacobian
    for p in model.params:
        med, sd = priors.get(p.name, (p.median, 2.0 * p.log_sd))
        lp += stats.norm.logpdf(math.log(vals[p.name]), math.log(med), sd)
    lp += stats.norm.logpdf(vals["BW_CL"], *priors.get("BW_CL", (0.75, 0.25)))
    lp += stats.norm.logpdf(vals["BW_V"], *priors.get("BW_V", (1.0, 0.25)))
    med, sd = priors.get("COMED_CL", (1.0, 0.5))
    lp += stats.norm.logpdf(math.log(vals["COMED_CL"]), math.log(med), sd)
    # omegas and sigmas: half-normal on the natural scale, sampled as logs (+ log x Jacobian)
    for n in names:
        w = vals[f"omega_{n}"]
        lp += stats.halfnorm.logpdf(w, scale=0.5) + math.log(w)
    for t, kind in enumerate(kinds, start=1):
        quant = [
            dv for s in subjects for _, dv, dvid, extra in fitted_obs(s) if dvid == t and not extra.get("BLQ")
        ]
        sp, sa = vals[f"sigma_prop_{kind}"], vals[f"sigma_add_{kind}"]
        lp += stats.halfnorm.logpdf(sp, scale=0.3) + math.log(sp)
        lp += stats.halfnorm.logpdf(sa, scale=0.1 * np.median(np.abs(quant))) + math.log(sa)
    lp += stats.norm.logpdf(eta).sum()

    ll = 0.0
    for i, s in enumerate(subjects):
        cov = s["cov"]
        th = {}
        for k, n in enumerate(names):
            th[n] = vals[n] * math.exp(vals[f"omega_{n}"] * eta[i, k])
        th["CL"] *= (cov["BW"] / 70.0) ** vals["BW_CL"] * vals["COMED_CL"] ** cov["COMED"]
        th["V"] *= (cov["BW"] / 70.0) ** vals["BW_V"]
        t_d = [d[0] for d in s["doses"]] or [0.0]
        a_d = [d[1] for d in s["doses"]] or [0.0]
        dur = [d[2] if len(d) > 2 else 0.0 for d in s["doses"]] or [0.0]
        for t, dv, dvid, extra in fitted_obs(s):
            c = oracles.concentration("pk_1c_iv", {"CL": th["CL"], "V": th["V"]}, t_d, a_d, dur, [t])[0]
            f = c if dvid == 1 else th["R0"] + th["Emax"] * c / (th["EC50"] + c)
            kind = kinds[dvid - 1]
            sd = math.hypot(vals[f"sigma_prop_{kind}"] * f, vals[f"sigma_add_{kind}"])
            if extra.get("BLQ"):
                lloq = extra.get("LLOQ") or dv
                ll += stats.norm.logcdf((lloq - f) / sd)
            else:
                ll += stats.norm.logpdf(dv, f, sd)
    return lp, ll


def test_logdensity_equals_hand_computation(tiny):
    pm, x, eta = tiny
    assert pm.names == (
        "CL",
        "V",
        "R0",
        "Emax",
        "EC50",
        "BW_CL",
        "BW_V",
        "COMED_CL",
        "omega_CL",
        "omega_V",
        "omega_R0",
        "omega_Emax",
        "omega_EC50",
        "sigma_prop_PK",
        "sigma_add_PK",
        "sigma_prop_PD",
        "sigma_add_PD",
    )
    assert pm.dim == 5 + 3 + 5 + 4 + 3 * 5
    lp, ll = _hand_logdensity(pm.model, TINY, TINY_VALUES, eta)
    # the prior alone (cheap, eager), then the jitted total
    np.testing.assert_allclose(float(pm.log_prior(x)), lp, rtol=LOGDENSITY_RTOL)
    np.testing.assert_allclose(float(pm.logdensity(x)), lp + ll, rtol=LOGDENSITY_RTOL)
    val, grad = pm.value_and_grad(x)
    np.testing.assert_allclose(float(val), lp + ll, rtol=LOGDENSITY_RTOL)
    assert np.all(np.isfinite(np.asarray(grad)))


def test_prior_overrides_by_hand(tiny):
    pm0, x, eta = tiny
    overrides = {"CL": (4.0, 0.3), "BW_CL": (0.8, 0.1), "COMED_CL": (0.7, 0.2)}
    pm = PopulationModel(get_model(*TINY_MODEL), pm0.dataset, priors=overrides)
    lp, _ = _hand_logdensity(pm.model, TINY, TINY_VALUES, eta, priors=overrides)
    np.testing.assert_allclose(float(pm.log_prior(x)), lp, rtol=LOGDENSITY_RTOL)
    table = {r["name"]: r for r in pm.prior_table()}
    assert table["CL"]["median"] == pytest.approx(4.0)
    assert table["CL"]["scale"] == pytest.approx(0.3)
    assert table["V"]["scale"] == pytest.approx(2 * 0.6)  # model default log_sd, inflated x2
    assert table["COMED_CL"]["median"] == pytest.approx(0.7)
    assert table["omega_CL"]["median"] == pytest.approx(0.6745 * 0.5)


# =================================================================== covariates
def test_individual_parameters_follow_the_covariate_equation(tiny):
    pm, x, eta = tiny
    theta = np.asarray(pm.individual_parameters(x))
    v = TINY_VALUES
    bw = np.array([s["cov"]["BW"] for s in TINY])
    comed = np.array([s["cov"]["COMED"] for s in TINY])
    expect = {
        "CL": v["CL"] * (bw / 70) ** v["BW_CL"] * v["COMED_CL"] ** comed * np.exp(v["omega_CL"] * eta[:, 0]),
        "V": v["V"] * (bw / 70) ** v["BW_V"] * np.exp(v["omega_V"] * eta[:, 1]),
        "R0": v["R0"] * np.exp(v["omega_R0"] * eta[:, 2]),
        "Emax": v["Emax"] * np.exp(v["omega_Emax"] * eta[:, 3]),
        "EC50": v["EC50"] * np.exp(v["omega_EC50"] * eta[:, 4]),
    }
    np.testing.assert_allclose(theta, np.stack([expect[n] for n in pm.param_names], -1), rtol=1e-13)
    # round trips: unflatten / eta / etas_from_individual invert to_position
    back = pm.unflatten(x)
    for n, val in TINY_VALUES.items():
        assert float(back[n]) == pytest.approx(val, rel=1e-13)
    np.testing.assert_allclose(np.asarray(pm.eta(x)), eta, atol=1e-13)
    np.testing.assert_allclose(np.asarray(pm.etas_from_individual(TINY_VALUES, theta)), eta, atol=1e-12)
    # batched positions keep their leading axes
    xs = jnp.stack([x, x])
    assert pm.individual_parameters(xs).shape == (2, 3, 5)
    assert pm.unflatten(xs)["CL"].shape == (2,)


def _covariate_data(n=4, **extra_cov):
    rng = np.random.default_rng(0)
    subs = []
    for i in range(n):
        cov = {"BW": 55.0 + 10 * i, "COMED": i % 2}
        cov.update({k: v[i] for k, v in extra_cov.items()})
        subs.append(
            subject(
                i + 1,
                doses=[(0, 100.0, 1.0)],
                obs=[(2, 2.0 + rng.random()), (12, 1.0), (2, 9.0, 2), (12, 8.0, 2)],
                **cov,
            )
        )
    return dataset(subs)


def test_covariate_spec_resolution():
    ds = _covariate_data(AGE=[30.0, 40.0, 50.0, 60.0], SEX=[0.0, 1.0, 1.0, 0.0])
    m2 = get_model("pk_2c_iv_infusion", "pd_indirect_inhib_kin")
    m1 = get_model("pk_1c_iv")

    def effects(spec, model=m2):
        return {e.name: (e.covariate, e.kind, e.params) for e in CovariateSpec.parse(spec).resolve(model, ds)}

    # auto: one BW exponent on every clearance (CL, Q), one on every volume (V1, V2), COMED on CL
    assert effects("auto") == {
        "BW_CL": ("BW", "power", ("CL", "Q")),
        "BW_V": ("BW", "power", ("V1", "V2")),
        "COMED_CL": ("COMED", "factor", ("CL",)),
    }
    assert effects(None) == effects("auto") == effects(CovariateSpec.auto())
    assert effects("none") == effects("") == effects(CovariateSpec.none()) == {}
    assert effects("BW:CL,V;COMED:CL", m1) == {
        "BW_CL": ("BW", "power", ("CL",)),
        "BW_V": ("BW", "power", ("V",)),
        "COMED_CL": ("COMED", "factor", ("CL",)),
    }
    # explicit: only the listed parameters; BW on a PD parameter gets its own exponent; a
    # positive covariate is a power effect about its median; a 0/1 covariate is a factor
    assert effects(" bw : CL , V1 ; comed:CL ; BW:IC50; AGE:V2; SEX:kout") == {
        "BW_CL": ("BW", "power", ("CL",)),
        "BW_V": ("BW", "power", ("V1",)),
        "COMED_CL": ("COMED", "factor", ("CL",)),
        "BW_IC50": ("BW", "power", ("IC50",)),
        "AGE_V2": ("AGE", "power", ("V2",)),
        "SEX_kout": ("SEX", "factor", ("kout",)),
    }
    age = next(e for e in CovariateSpec.parse("AGE:V2").resolve(m2, ds))
    assert age.reference == 45.0
    np.testing.assert_allclose(age.design(np.array([45.0, 90.0])), [0.0, math.log(2.0)])
    assert str(CovariateSpec.parse("BW:CL,V1;COMED:CL")) == "BW:CL,V1;COMED:CL"
    assert CovariateSpec.parse("BW:CL,Q").effects == (("BW", ("CL", "Q")),)

    # the auto model in the population: Q shares BW_CL, V2 shares BW_V (natural units)
    pm = PopulationModel(m2, ds)
    vals = values_for(
        pm,
        CL=3.0,
        V1=20.0,
        Q=4.0,
        V2=150.0,
        R0=10.0,
        kout=0.05,
        IC50=0.01,
        BW_CL=0.75,
        BW_V=1.0,
        COMED_CL=0.6,
    )
    theta = np.asarray(pm.individual_parameters(pm.to_position(vals)))
    bw = np.asarray(ds.covariate("BW"))
    comed = np.asarray(ds.covariate("COMED"))
    np.testing.assert_allclose(
        theta[:, pm.param_names.index("CL")], 3.0 * (bw / 70) ** 0.75 * 0.6**comed, rtol=1e-13
    )
    np.testing.assert_allclose(theta[:, pm.param_names.index("Q")], 4.0 * (bw / 70) ** 0.75, rtol=1e-13)
    np.testing.assert_allclose(theta[:, pm.param_names.index("V2")], 150.0 * bw / 70, rtol=1e-13)
    np.testing.assert_allclose(theta[:, pm.param_names.index("IC50")], 0.01, rtol=1e-13)

    # bsv restricted to CL and V1: the others are the same for every subject
    pm_b = PopulationModel(m2, ds, "none", bsv=["V1", "CL"])
    assert pm_b.bsv_params == ("CL", "V1")
    assert [n for n in pm_b.names if n.startswith("omega_")] == ["omega_CL", "omega_V1"]
    vals_b = values_for(pm_b, CL=3.0, V1=20.0, Q=4.0, V2=150.0, R0=10.0, kout=0.05, IC50=0.01)
    eta = np.array([[1.0, -1.0], [0.5, 0.0], [0.0, 2.0], [-1.0, 1.0]])
    th = np.asarray(pm_b.individual_parameters(pm_b.to_position(vals_b, eta)))
    np.testing.assert_allclose(th[:, 0], 3.0 * np.exp(0.3 * eta[:, 0]), rtol=1e-13)
    np.testing.assert_allclose(th[:, 1], 20.0 * np.exp(0.3 * eta[:, 1]), rtol=1e-13)
    np.testing.assert_allclose(th[:, 2:], np.broadcast_to([4.0, 150.0, 10.0, 0.05, 0.01], (4, 5)), rtol=1e-13)


# =================================================================== gradients
DEFAULT_MODEL = ("pk_2c_iv_infusion", "pd_indirect_inhib_kin")
DEFAULT_VALUES = dict(
    CL=3.0, V1=20.0, Q=4.0, V2=150.0, R0=10.0, kout=0.05, IC50=0.5, BW_CL=0.75, BW_V=1.0, COMED_CL=0.6
)


@pytest.fixture(scope="module")
def ode_pair():
    """The default model on the tiny data with tight ODE settings, forward and reverse AD."""
    ds = dataset(TINY)
    model = get_model(*DEFAULT_MODEL)
    fwd = PopulationModel(model, ds, config=TIGHT)
    rev = PopulationModel(model, ds, config=TIGHT, gradient="reverse")
    eta = np.random.default_rng(2).standard_normal((3, 7))
    x = fwd.to_position(values_for(fwd, **DEFAULT_VALUES), eta)
    return fwd, rev, x


def test_gradient_matches_finite_differences_and_reverse_mode(ode_pair):
    fwd, rev, x = ode_pair
    val, g = fwd.value_and_grad(x)
    val_r, g_r = rev.value_and_grad(x)
    g, g_r = np.asarray(g), np.asarray(g_r)
    assert np.isfinite(float(val)) and np.all(np.isfinite(g))
    assert float(val_r) == pytest.approx(float(val), rel=1e-14)
    # every coordinate matters (no structurally zero gradient hides a disconnected parameter)
    assert np.all(np.abs(g) > 0)
    np.testing.assert_allclose(g, g_r, rtol=FWD_REV_RTOL, atol=FWD_REV_RTOL * np.abs(g).max())

    # central differences along one coordinate of each block and random directions (every
    # coordinate enters those; the per-coordinate check is the reverse-mode one above)
    ld = fwd.logdensity
    rng = np.random.default_rng(7)
    dirs = [np.eye(fwd.dim)[int(np.flatnonzero(fwd.block_mask(b))[0])]
            for b in ("mu", "cov", "log_omega", "log_sigma", "eta")]
    dirs += [v / np.linalg.norm(v) for v in rng.standard_normal((6, fwd.dim))]
    for v in dirs:
        fd = (float(ld(x + FD_STEP * v)) - float(ld(x - FD_STEP * v))) / (2 * FD_STEP)
        assert g @ v == pytest.approx(fd, rel=FD_RTOL, abs=FD_RTOL * np.abs(g).max())


def test_one_loop_likelihood_integrator_matches_diffrax_path(ode_pair):
    """The likelihood's own one-loop Runge-Kutta path (method="auto" on a nonlinear model) gives
    the same log-density and gradient as the per-interval diffrax path at tight tolerance, also
    when the log-density is vmapped over several positions (chains), and matches finite
    differences of itself."""
    fwd_ode, _, x = ode_pair
    model = fwd_ode.model
    tight_auto = SolverConfig(rtol=1e-10, atol=1e-12)
    one = PopulationModel(model, fwd_ode.dataset, config=tight_auto)
    val_ode, g_ode = fwd_ode.value_and_grad(x)
    val, g = one.value_and_grad(x)
    assert float(val) == pytest.approx(float(val_ode), rel=1e-9)
    np.testing.assert_allclose(np.asarray(g), np.asarray(g_ode), rtol=1e-6,
                               atol=1e-6 * float(np.abs(np.asarray(g_ode)).max()))
    assert float(one.logdensity(x)) == pytest.approx(float(val), rel=1e-12)
    X = jnp.stack([x, x + 0.01, x - 0.02])
    vals, grads = jax.vmap(one.value_and_grad)(X)
    for i in range(3):
        v_i, g_i = fwd_ode.value_and_grad(X[i])
        assert float(vals[i]) == pytest.approx(float(v_i), rel=1e-9)
        np.testing.assert_allclose(np.asarray(grads[i]), np.asarray(g_i), rtol=1e-6,
                                   atol=1e-6 * float(np.abs(np.asarray(g_i)).max()))
    ld = one.logdensity
    for k in np.random.default_rng(5).choice(one.dim, 6, replace=False):
        e = np.zeros(one.dim)
        e[k] = FD_STEP
        fd = (float(ld(x + e)) - float(ld(x - e))) / (2 * FD_STEP)
        assert float(g[k]) == pytest.approx(fd, rel=1e-4, abs=1e-5 * float(np.abs(g).max()))


# =================================================================== failures
@pytest.mark.parametrize("gradient", ["forward", "reverse"])
def test_failed_subject_gives_minus_inf_and_finite_gradient(ode_pair, gradient):
    fwd, rev, x = ode_pair
    pm = fwd if gradient == "forward" else rev
    vals = values_for(pm, **DEFAULT_VALUES)
    names = pm.bsv_params
    # (a) the solver gives up: subject 1's clearance ~e^12 times typical makes the system so
    # stiff that the explicit solver needs more than max_steps steps in a segment
    eta = np.zeros((3, len(names)))
    eta[0, names.index("CL")] = 12.0 / vals["omega_CL"]
    x_stiff = pm.to_position(vals, eta)
    theta = pm.individual_parameters(x_stiff)
    assert np.all(np.isfinite(np.asarray(theta)))
    if gradient == "forward":
        _, ok = jax.jit(pm.predictions)(theta)
        assert np.asarray(ok).tolist() == [False, True, True]
    # (b) parameters overflow to inf (exp of a huge eta): flagged, never simulated as NaN
    eta_inf = np.zeros((3, len(names)))
    eta_inf[1, names.index("V1")] = 1e4
    x_inf = pm.to_position(vals, eta_inf)
    assert not np.all(np.isfinite(np.asarray(pm.individual_parameters(x_inf))[1]))

    # (c) absurd scales: ω or σ beyond e^±200 are outside the support
    x_omega = pm.to_position({**vals, "omega_CL": math.exp(250.0)})
    x_sigma = pm.to_position({**vals, "sigma_add_PK": math.exp(-250.0)})

    for bad in (x_stiff, x_inf, x_omega, x_sigma):
        assert float(pm.logdensity(bad)) == -np.inf
        val, g = pm.value_and_grad(bad)
        assert float(val) == -np.inf
        assert np.all(np.isfinite(np.asarray(g)))
    # the same position with the failing subject reset is fine again
    assert np.isfinite(float(pm.logdensity(x)))


# =================================================================== messy data
MESSY = [
    # pre-dose sample at the first dose (exact 0: not fitted), a trough at the second dose time
    # (pre-dose rule: excludes that dose) and a sample right after it
    subject(
        1,
        doses=[(0, 100.0), (24, 100.0)],
        obs=[(0, 0.0), (2, 1.7), (24, 0.35), (24.5, 2.1)],
        BW=64.0,
        COMED=0,
    ),
    # a positive concentration before the first dose (carry-over?): warned about, not fitted
    subject(2, doses=[(2, 100.0)], obs=[(0, 0.3), (4, 1.6), (10, 1.2), (26, 0.5)], BW=80.0, COMED=1),
    # a single sample
    subject(3, doses=[(0, 150.0)], obs=[(6, 2.2)], BW=70.0, COMED=0),
    # a BLQ sample at the dose time (kept: M3 with a prediction of 0) and a sample at 1 h
    subject(4, doses=[(0, 100.0)], obs=[(0, 0.01, 1, {"BLQ": 1, "LLOQ": 0.01}), (1, 2.0)], BW=55.0, COMED=1),
    # placebo subject with a concentration of 0 (nothing to fit for it)
    subject(5, obs=[(1, 0.0), (8, 0.0)], BW=90.0, COMED=0),
]
MESSY_VALUES = dict(
    CL=4.0,
    V=40.0,
    BW_CL=0.75,
    BW_V=1.0,
    COMED_CL=0.6,
    omega_CL=0.3,
    omega_V=0.2,
    sigma_prop_PK=0.15,
    sigma_add_PK=0.02,
)


@pytest.fixture(scope="module")
def messy():
    with pytest.warns(
        PopulationDataWarning,
        match=r"1 concentration\(s\) > 0 at or before the first dose .* not fitted; subject\(s\) 2\. ",
    ):
        pm = PopulationModel(get_model("pk_1c_iv"), dataset(MESSY))
    return pm


def test_messy_data_has_a_finite_log_density_by_hand(messy):
    pm = messy
    assert pm.n_subjects == 5
    eta = np.random.default_rng(4).standard_normal((5, 2))
    x = pm.to_position(MESSY_VALUES, eta)
    lp, ll = _hand_logdensity(pm.model, MESSY, MESSY_VALUES, eta)
    assert np.isfinite(lp + ll)
    np.testing.assert_allclose(float(pm.log_prior(x)), lp, rtol=LOGDENSITY_RTOL)
    val, g = pm.value_and_grad(x)
    np.testing.assert_allclose(float(val), lp + ll, rtol=LOGDENSITY_RTOL)
    assert np.all(np.isfinite(np.asarray(g)))
    # the excluded rows really carry no weight: the log-density is bounded as sigma_add -> 0
    # (each exact-zero pre-dose row fitted with a prediction of 0 would add -log(sigma_add))
    small = pm.to_position({**MESSY_VALUES, "sigma_add_PK": 1e-8}, eta)
    assert float(pm.value_and_grad(small)[0]) < float(val)
    # the placebo subject's eta only meets its prior: its gradient is -eta
    np.testing.assert_allclose(np.asarray(pm.eta(g))[4], -eta[4], rtol=1e-12)


def test_messy_data_starting_points_are_finite(messy):
    x0 = messy.initial_positions(jax.random.key(0), 3, map_steps=0)
    assert x0.shape == (3, messy.dim)
    assert len({tuple(np.asarray(x)) for x in x0}) == 3  # jittered apart
    for x in x0:
        assert np.isfinite(float(messy.value_and_grad(x)[0]))


# =================================================================== bad input
def _pk_subjects(n=3, pd=False, doses=True, **cov):
    subs = []
    for i in range(n):
        obs = [(1, 2.0 + 0.1 * i), (8, 1.0)] + ([(1, 9.0, 2), (8, 8.0, 2)] if pd else [])
        c = {"BW": 60.0 + 10 * i, "COMED": i % 2}
        c.update({k: v[i] for k, v in cov.items()})
        subs.append(subject(i + 1, doses=[(0, 100.0)] if doses else [], obs=obs, **c))
    return subs


@pytest.fixture
def no_simulation(monkeypatch):
    """Fail the test if anything is simulated (errors must come before any compilation)."""
    def boom(*args, **kwargs):
        raise AssertionError("simulated before the input error was raised")

    # the population likelihood's predictions simulate there
    monkeypatch.setattr("pkpd_jax.population._predict.simulate", boom)


def test_bad_input_raises_named_errors_before_anything_runs(no_simulation):
    pk_only = dataset(_pk_subjects())
    pkpd = get_model("pk_1c_iv", "pd_direct_emax")
    pk = get_model("pk_1c_iv")

    # a PD model on data without PD observations
    with pytest.raises(
        PopulationDataError,
        match=r"no PD observations \(DVID 2\), so the PD model pd_direct_emax cannot be fitted",
    ):
        PopulationModel(pkpd, pk_only)
    # covariates that are not columns, or parameters the model does not have
    with pytest.raises(
        CovariateSpecError,
        match=r"covariate 'AGE' is not a column of the data; available covariates: BW, COMED",
    ):
        PopulationModel(pk, pk_only, "BW:CL;AGE:V")
    with pytest.raises(
        CovariateSpecError,
        match=r"unknown parameter\(s\) \['V1'\] in covariate effect BW:CL,V1; model pk_1c_iv has parameters",
    ):
        PopulationModel(pk, pk_only, "BW:CL,V1")
    with pytest.raises(CovariateSpecError, match="cannot parse covariate effect 'BW=CL'"):
        PopulationModel(pk, pk_only, "BW=CL")
    with pytest.raises(CovariateSpecError, match="covariate effect BW_CL is specified twice"):
        PopulationModel(pk, pk_only, "BW:CL;BW:CL")
    # no dose > 0: placebo-only data with concentrations, and dose rows with amount 0
    with pytest.raises(PopulationDataError, match=r"no subject has a dose amount > 0"):
        PopulationModel(pk, dataset(_pk_subjects(doses=False)))
    zero = eqx.tree_at(lambda d: d.regimen.amount, pk_only, jnp.zeros_like(pk_only.regimen.amount))
    with pytest.raises(PopulationDataError, match=r"no subject has a dose amount > 0"):
        PopulationModel(pk, zero)
    # every concentration before the first dose
    late = [subject(i, doses=[(10, 100.0)], obs=[(1, 0.0), (10, 0.0)], BW=70.0, COMED=0) for i in (1, 2)]
    with pytest.raises(
        PopulationDataError,
        match=r"every drug concentration \(DVID 1\) is at or before the subject's first dose",
    ):
        PopulationModel(pk, dataset(late))
    # a population needs 2 subjects
    with pytest.raises(PopulationDataError, match=r"at least 2 subjects with observations; the data has 1"):
        PopulationModel(pk, dataset(_pk_subjects(n=1)))
    # PK model on biomarker-only data
    pd_only = dataset([subject(i, doses=[(0, 1.0)], obs=[(1, 9.0, 2)], BW=70.0, COMED=0) for i in (1, 2)])
    with pytest.raises(PopulationDataError, match=r"no drug concentrations \(DVID 1"):
        PopulationModel(pkpd, pd_only)

    # COMED must be 0/1 for a factor (the reader checks the file; a Dataset built otherwise is
    # checked again here, for the automatic and the explicit specification)
    cov = np.asarray(pk_only.covariates).copy()
    cov[1, pk_only.covariate_names.index("COMED")] = 2.0
    bad_comed = eqx.tree_at(lambda d: d.covariates, pk_only, jnp.asarray(cov))
    for spec in ("auto", "COMED:CL"):
        with pytest.raises(
            CovariateSpecError,
            match=r"covariate COMED must be binary \(0/1\) for a factor effect; found values \[2\.0\]",
        ):
            PopulationModel(pk, bad_comed, spec)
    # a covariate that is neither 0/1 nor positive cannot have any effect
    crcl = dataset(_pk_subjects(CRCL=[0.0, 2.0, 90.0]))
    with pytest.raises(
        CovariateSpecError,
        match=r"CRCL must be positive for a power effect \(or 0/1 for a factor effect\); found values \[0",
    ):
        PopulationModel(pk, crcl, "CRCL:CL")

    # options
    with pytest.raises(ValueError, match=r"`bsv` names \['KA'\] are not parameters of pk_1c_iv"):
        PopulationModel(pk, pk_only, bsv=["CL", "KA"])
    with pytest.raises(ValueError, match=r"prior overrides for unknown names \['EC50'\]"):
        PopulationModel(pk, pk_only, priors={"EC50": (1.0, 0.5)})
    with pytest.raises(ValueError, match=r"prior median for CL must be > 0; got -1\.0"):
        PopulationModel(pk, pk_only, priors={"CL": (-1.0, 0.5)})
    with pytest.raises(ValueError, match=r"prior median for COMED_CL must be > 0"):
        PopulationModel(pk, pk_only, priors={"COMED_CL": (0.0, 0.5)})
    with pytest.raises(ValueError, match=r"`gradient` must be 'forward' or 'reverse'"):
        PopulationModel(pk, pk_only, gradient="sideways")
    with pytest.raises(CovariateSpecError, match="covariate mode must be"):
        CovariateSpec("sometimes")
    pm = PopulationModel(pk, pk_only)
    vals = values_for(pm, CL=1, V=1, BW_CL=1, BW_V=1, COMED_CL=1)
    vals["sigma_add"] = vals.pop("sigma_add_PK")
    with pytest.raises(ValueError, match=r"missing \['sigma_add_PK'\]\. unknown \['sigma_add'\]"):
        pm.to_position(vals)


def test_unsupported_parameters_are_reported():
    pk = get_model("pk_1c_iv")
    # COMED is 0 for everyone, BW the same for everyone: "auto" leaves both effects out
    flat = dataset(
        [subject(i, doses=[(0, 100.0)], obs=[(1, 2.0 + i), (8, 1.0)], BW=70.0, COMED=0) for i in (1, 2, 3)]
    )
    with pytest.warns(PopulationDataWarning) as record:
        pm = PopulationModel(pk, flat)
    messages = " | ".join(str(w.message) for w in record)
    assert "covariate BW has the same value (70) for every subject" in messages
    assert "covariate COMED has the same value (0) for every subject" in messages
    assert "left out of the automatic covariate model" in messages
    assert pm.effects == ()
    assert pm.names == ("CL", "V", "omega_CL", "omega_V", "sigma_prop_PK", "sigma_add_PK")
    # an explicit effect is kept, with the warning
    with pytest.warns(PopulationDataWarning, match="informed by the prior only"):
        pm = PopulationModel(pk, flat, "COMED:CL")
    assert [e.name for e in pm.effects] == ["COMED_CL"]
    # biomarker samples only before dosing: the exposure-response cannot be estimated
    pre_pd = dataset(
        [
            subject(i, doses=[(2, 100.0)], obs=[(0, 9.0, 2), (3, 2.0), (8, 1.0)], BW=60.0 + i, COMED=i % 2)
            for i in (1, 2, 3)
        ]
    )
    with pytest.warns(
        PopulationDataWarning,
        match=r"no PD observation \(DVID 2\) is after a dose: the data cannot inform the concentration",
    ):
        PopulationModel(get_model("pk_1c_iv", "pd_direct_emax"), pre_pd)
    # a PK-only model ignores biomarker rows, and says so
    with pytest.warns(
        PopulationDataWarning, match=r"3 PD observations \(DVID 2\) that a PK-only model ignores"
    ):
        PopulationModel(pk, pre_pd)
    # clean data: no warning at all
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        PopulationModel(pk, dataset(_pk_subjects()))


# =================================================================== parameter recovery
RECOVERY_TRUTH = dict(
    CL=3.0,
    V=20.0,
    BW_CL=0.75,
    BW_V=1.0,
    COMED_CL=0.6,
    omega_CL=0.3,
    omega_V=0.2,
    sigma_prop_PK=0.1,
    sigma_add_PK=0.02,
)


def _recovery_study(n=40, seed=0):
    """`n` subjects, one 100 mg IV bolus, 6 samples each, simulated with the oracle from
    RECOVERY_TRUTH (BW uniform 45-110 kg, every third subject on COMED)."""
    rng = np.random.default_rng(seed)
    t_obs = np.array([0.5, 1.0, 3.0, 6.0, 12.0, 24.0])
    v = RECOVERY_TRUTH
    subs, theta = [], []
    for i in range(n):
        bw, comed = round(rng.uniform(45, 110), 1), int(i % 3 == 0)
        eta = rng.standard_normal(2)
        cl = v["CL"] * (bw / 70) ** v["BW_CL"] * v["COMED_CL"] ** comed * math.exp(v["omega_CL"] * eta[0])
        vol = v["V"] * (bw / 70) ** v["BW_V"] * math.exp(v["omega_V"] * eta[1])
        c = oracles.concentration("pk_1c_iv", {"CL": cl, "V": vol}, [0.0], [100.0], [0.0], t_obs)
        eps = rng.standard_normal((2, c.size))
        dv = c * (1 + v["sigma_prop_PK"] * eps[0]) + v["sigma_add_PK"] * eps[1]
        subs.append(subject(i + 1, doses=[(0, 100.0)], obs=list(zip(t_obs, dv)), BW=bw, COMED=comed))
        theta.append((cl, vol))
    return subs, np.array(theta)


def test_fit_map_recovers_population_values():
    subs, theta_true = _recovery_study()
    pm = PopulationModel(get_model("pk_1c_iv"), dataset(subs))
    x = fit_map(pm, steps=1000)
    est = {k: float(v) for k, v in pm.unflatten(x).items()}
    # Typical values: 40 subjects with omega 0.3 / 0.2 give standard errors of ~5% (CL) and
    # ~3% (V) on the log scale; the joint mode is a little biased (see `fit_map`): 15%.
    assert est["CL"] == pytest.approx(3.0, rel=0.15)
    assert est["V"] == pytest.approx(20.0, rel=0.15)
    # Covariate effects: the exponents have standard errors ~0.2 (priors N(0.75 | 1, 0.25)
    # help); COMED 0.6 has a standard error of ~0.1 on the log scale (this draw of subjects has
    # 0.70 by regression of the true individual CL; the joint mode lands at ~0.78)
    assert est["BW_CL"] == pytest.approx(0.75, abs=0.3)
    assert est["BW_V"] == pytest.approx(1.0, abs=0.3)
    assert 0.45 < est["COMED_CL"] < 0.9
    # Residual error: 6 samples and 2 individual parameters per subject leave ~2/3 of the
    # degrees of freedom, so the joint mode underestimates sigma by ~sqrt(2/3)
    assert 0.07 < est["sigma_prop_PK"] < 0.12
    # Individual parameters (rich data) are close to the simulated ones
    theta = np.asarray(pm.individual_parameters(x))
    err = np.abs(np.log(theta / theta_true))
    assert np.median(err, axis=0).max() < 0.06
    assert err.max() < 0.3
    # the optimum beats the truth (with the true individual parameters) and the prior medians
    x_true = pm.to_position(RECOVERY_TRUTH, pm.etas_from_individual(RECOVERY_TRUTH, theta_true))
    assert float(pm.logdensity(x)) > float(pm.logdensity(x_true))
    assert float(pm.logdensity(x)) > float(pm.logdensity(pm.prior_median_position())) + 100


def test_simulate_predictive_without_variability_reproduces_typical_predictions(messy):
    pm = messy
    vals = {**MESSY_VALUES, "omega_CL": 1e-9, "omega_V": 1e-9, "sigma_prop_PK": 1e-9}
    vals["sigma_add_PK"] = 1e-9
    rep = pm.simulate_predictive(vals, jax.random.key(1), n_replicates=2)
    n, m = pm.dataset.obs_time.shape
    assert rep.dv.shape == rep.ipred.shape == (2, n, m)
    assert rep.params.shape == (2, n, 2)
    assert np.all(np.asarray(rep.status) == 0)
    for i, s in enumerate(MESSY):
        cl = vals["CL"] * (s["cov"]["BW"] / 70) ** 0.75 * 0.6 ** s["cov"]["COMED"]
        vol = vals["V"] * s["cov"]["BW"] / 70
        t = np.asarray(pm.dataset.obs_time[i])
        doses = s["doses"] or [(0.0, 0.0)]
        c = oracles.concentration(
            "pk_1c_iv",
            {"CL": cl, "V": vol},
            [d[0] for d in doses],
            [d[1] for d in doses],
            [0.0] * len(doses),
            t,
        )
        np.testing.assert_allclose(
            np.asarray(rep.ipred)[:, i], np.broadcast_to(c, (2, m)), rtol=1e-6, atol=1e-8
        )
        np.testing.assert_allclose(np.asarray(rep.dv)[:, i], np.broadcast_to(c, (2, m)), rtol=1e-6, atol=1e-7)
    # BLQ flags only for the observation type with BLQ rows, against the data's LLOQ (0.01)
    blq = np.asarray(rep.below_lloq)
    assert blq[:, 3, 0].all()  # subject 4 at its dose time: 0 < 0.01
    assert not blq[:, 0, 1].any()


# =================================================================== parametrisations
def test_centered_parametrisation_is_the_same_model(tiny):
    """Centred and non-centred positions of the same (population, individual) values: equal
    individual parameters, η and predictions; log-densities differ by exactly the Jacobian
    ``-N·Σ_k log ω_k`` of g(θ_i) = typical + ω·η."""
    pm, x, eta = tiny
    pc = PopulationModel(get_model(*TINY_MODEL), dataset(TINY), parametrization="centered")
    xc = pc.to_position(TINY_VALUES, eta)
    np.testing.assert_allclose(pc.individual_parameters(xc), pm.individual_parameters(x), rtol=1e-12)
    np.testing.assert_allclose(pc.eta(xc), eta, rtol=1e-10, atol=1e-12)
    jac = -pm.n_subjects * sum(np.log(TINY_VALUES[f"omega_{b}"]) for b in pm.bsv_params)
    np.testing.assert_allclose(float(pc.logdensity(xc)) - float(pm.logdensity(x)), jac, rtol=1e-10)
    for k, v in pc.unflatten(xc).items():
        np.testing.assert_allclose(float(v), TINY_VALUES[k], rtol=1e-12)
    with pytest.raises(ValueError, match="parametrization"):
        PopulationModel(get_model(*TINY_MODEL), dataset(TINY), parametrization="centred")


def test_curvature_diagonal_matches_second_differences(tiny):
    pm, x, _ = tiny
    h = curvature_diagonal(pm, x)
    assert h.shape == (pm.dim,)
    f = lambda z: float(pm.logdensity(z))
    step = 1e-3
    for i in (0, 3, pm.dim - 1, pm.dim // 2):
        e = np.zeros(pm.dim)
        e[i] = step
        second = -(f(x + e) - 2 * f(x) + f(x - e)) / step**2
        np.testing.assert_allclose(h[i], second, rtol=2e-3, atol=1e-3)


def test_curvature_matrix_matches_second_differences(tiny):
    """The full negative Hessian: symmetric, its diagonal is `curvature_diagonal`, off-diagonal
    entries match mixed second differences of the log-density."""
    pm, x, _ = tiny
    hess = curvature_matrix(pm, x)
    assert hess.shape == (pm.dim, pm.dim)
    np.testing.assert_array_equal(hess, hess.T)
    np.testing.assert_allclose(np.diag(hess), curvature_diagonal(pm, x), rtol=1e-12)
    f = lambda z: float(pm.logdensity(z))
    step = 1e-3
    eta0 = int(np.flatnonzero(pm.block_mask("eta"))[0])
    for i, j in ((0, eta0), (1, pm.dim - 1), (eta0, eta0 + 1)):
        ei, ej = np.zeros(pm.dim), np.zeros(pm.dim)
        ei[i], ej[j] = step, step
        mixed = -(f(x + ei + ej) - f(x + ei - ej) - f(x - ei + ej) + f(x - ei - ej)) / (4 * step**2)
        np.testing.assert_allclose(hess[i, j], mixed, rtol=5e-3, atol=2e-3)
    assert np.abs(hess[0, eta0]) > 1e-3  # a coupling the diagonal metric ignores
    # the sparse default (one gradient per population coordinate and per random effect) against
    # every coordinate moved on its own; two subjects' random effects do not interact
    dense = curvature_matrix(pm, x, sparse=False)
    eta = np.flatnonzero(pm.block_mask("eta")).reshape(pm.n_subjects, -1)
    np.testing.assert_allclose(hess, dense, rtol=1e-4, atol=1e-4 * np.abs(dense).max())
    other = np.ix_(eta[0], eta[1:].ravel())
    assert np.all(hess[other] == 0) and np.abs(dense[other]).max() < 1e-6 * np.abs(dense).max()


def test_starting_points_scale_the_jitter_by_the_curvature(tiny):
    pm, x, _ = tiny
    start = pm.starting_points(jax.random.key(3), 4, map_steps=0, jitter=0.1)
    pts, inv_mass = start.positions, start.inverse_mass
    x0 = pm.prior_median_position()
    np.testing.assert_array_equal(start.mode, x0)  # no MAP steps: the prior medians
    h = curvature_diagonal(pm, x0)
    np.testing.assert_allclose(start.curvature, h, rtol=1e-12)
    np.testing.assert_allclose(start.hessian, curvature_matrix(pm, x0), rtol=1e-12)
    ok = h > 0
    np.testing.assert_allclose(inv_mass[ok], np.clip(1 / h[ok], 1e-8, 1e2), rtol=1e-12)
    # each coordinate moved by at most ~5 of its own scale min(0.1, 1/sqrt(H_ii))
    scale = np.minimum(0.1, np.sqrt(inv_mass))
    assert np.all(np.abs(np.asarray(pts) - np.asarray(x0)) <= 5 * scale + 1e-15)
    assert len({tuple(np.asarray(p)) for p in pts}) == 4


def test_data_weight_is_the_same_in_both_parametrisations(tiny):
    """The data weight of a random effect (the data's curvature relative to the population
    prior's) is the same number in both parametrisations."""
    pm, x, eta = tiny
    pc = PopulationModel(get_model(*TINY_MODEL), dataset(TINY), parametrization="centered")
    xc = pc.to_position(TINY_VALUES, eta)
    w_nc = pm.data_weight(x, curvature_diagonal(pm, x))
    w_c = pc.data_weight(xc, curvature_diagonal(pc, xc))
    assert w_nc.shape == (3, 5)
    np.testing.assert_allclose(w_c, w_nc, rtol=0.05, atol=0.05)
    assert np.ptp(w_nc) > 1.0  # it differs between subjects and parameters
    with pytest.raises(ValueError, match="unknown block"):
        pm.block_mask("theta")


def test_mixed_parametrisation_is_the_same_model_and_maps_positions(tiny):
    """Centring only some random effects: the same individual parameters and η, a log-density
    off by the Jacobian of the centred ones only; `reparametrized` maps a position (and its
    curvature) between parametrisations exactly."""
    pm, x, eta = tiny
    centred = list(pm.bsv_params[:2])
    pmix = PopulationModel(get_model(*TINY_MODEL), dataset(TINY), parametrization=centred)
    assert pmix.parametrization == "mixed" and pmix.centered_params == tuple(centred)
    xm = pmix.to_position(TINY_VALUES, eta)
    np.testing.assert_allclose(pmix.individual_parameters(xm), pm.individual_parameters(x), rtol=1e-12)
    np.testing.assert_allclose(pmix.eta(xm), eta, rtol=1e-10, atol=1e-12)
    jac = -pm.n_subjects * sum(np.log(TINY_VALUES[f"omega_{b}"]) for b in centred)
    np.testing.assert_allclose(float(pmix.logdensity(xm)) - float(pm.logdensity(x)), jac, rtol=1e-10)
    # ω of the centred effects only are frozen in the MAP
    m = pmix.omega_mask(centred=True)
    assert m.sum() == 2 and pmix.omega_mask(centred=False).sum() == len(pm.bsv_params) - 2
    # the mapping non-centred -> mixed reproduces to_position, and back again
    h = curvature_diagonal(pm, x)
    pm2, x2, h2 = pm.reparametrized(centred, x, h)
    assert pm2.centered_params == tuple(centred)
    np.testing.assert_allclose(x2, xm, rtol=1e-12, atol=1e-12)
    back, x3, _ = pm2.reparametrized("noncentered", x2)
    np.testing.assert_allclose(x3, x, rtol=1e-12, atol=1e-12)
    # the mapped curvature of a switched coordinate is the diagonal curvature in the new
    # coordinates up to the neglected coupling to the typical value: within 20% here
    hm = curvature_diagonal(pmix, xm)
    eta_block = pm.block_mask("eta")
    np.testing.assert_allclose(h2[eta_block], hm[eta_block], rtol=0.2)
    w_mix = pmix.data_weight(xm, hm)
    w_nc = pm.data_weight(x, h)
    np.testing.assert_allclose(w_mix, w_nc, rtol=0.05, atol=0.05)
    with pytest.raises(ValueError, match="no random effect"):
        PopulationModel(get_model(*TINY_MODEL), dataset(TINY), parametrization=["nope"])


# =================================================================== the population package
def test_covariate_map_by_hand():
    """The one covariate map (`pkpd_jax.population.individual_parameters`): a power effect on
    two clearances, a categorical (0/1) factor, a logit parameter and exponential random
    effects, against the equation written out by hand."""
    from pkpd_jax.population import (
        CovariateEffect,
        covariate_design,
        effect_matrix,
        individual_parameters,
    )

    model = get_model("pk_2c_iv", "pd_direct_inhib_emax")
    names = model.param_names
    effects = (
        CovariateEffect("BW_CL", "BW", "power", ("CL", "Q"), 70.0, (0.75, 0.25)),
        CovariateEffect("COMED_CL", "COMED", "factor", ("CL",), 0.0, (0.0, 0.5)),
    )
    bw = np.array([50.0, 70.0, 110.0])
    comed = np.array([1.0, 0.0, 1.0])
    typical = {n: 1.0 + k for k, n in enumerate(names)}
    typical["Imax"] = 0.8  # a fraction: logit link
    mu = np.array([p.to_unconstrained(typical[p.name]) for p in model.params])
    coef = np.array([0.75, math.log(0.6)])
    bsv = ("CL", "V1", "Imax")
    omega = np.array([0.3, 0.2, 0.5])
    eta = np.array([[0.5, -1.0, 0.2], [0.0, 0.3, -0.4], [-1.2, 0.7, 1.1]])
    X = covariate_design(effects, {"BW": bw, "COMED": comed})
    A = effect_matrix(effects, names)
    theta = np.asarray(
        individual_parameters(model.params, mu, coef, X, A, omega, eta, [names.index(b) for b in bsv])
    )
    expect = dict(typical)
    expect = {n: np.full(3, v) for n, v in expect.items()}
    expect["CL"] = typical["CL"] * (bw / 70) ** 0.75 * 0.6**comed * np.exp(0.3 * eta[:, 0])
    expect["Q"] = typical["Q"] * (bw / 70) ** 0.75
    expect["V1"] = typical["V1"] * np.exp(0.2 * eta[:, 1])
    logit = math.log(0.8 / 0.2) + 0.5 * eta[:, 2]
    expect["Imax"] = 1.0 / (1.0 + np.exp(-logit))
    np.testing.assert_allclose(theta, np.stack([expect[n] for n in names], -1), rtol=1e-13)
    # no η: the typical subject of each covariate set
    typ = np.asarray(individual_parameters(model.params, mu, coef, X, A))
    cl_typ = typical["CL"] * (bw / 70) ** 0.75 * 0.6**comed
    np.testing.assert_allclose(typ[:, names.index("CL")], cl_typ, rtol=1e-13)
    with pytest.raises(CovariateSpecError, match="COMED"):
        covariate_design(effects, {"BW": bw})


def test_residual_model_and_m3_against_scipy():
    """The one residual model: the normal log-density with SD ``sqrt((σ_p f)² + σ_a²)`` and the M3
    term ``log Φ((LLOQ − f)/sd)``, against scipy; the simulated residual and the Fisher weight
    against their formulas."""
    from pkpd_jax.population import fisher_weight, observation_loglik, residual_sd, simulate_residual

    f = np.array([0.01, 0.5, 3.0, 40.0, 1e-4])
    dv = np.array([0.02, 0.45, 3.3, 35.0, 0.0])
    lloq = np.array([0.05, 0.1, 0.1, 1.0, 0.001])
    sp, sa = 0.15, 0.02
    sd = np.sqrt((sp * f) ** 2 + sa**2)
    np.testing.assert_allclose(np.asarray(residual_sd(f, sp, sa)), sd, rtol=1e-15)
    quant = np.asarray(observation_loglik(dv, f, sp, sa, np.zeros(5, bool), lloq))
    np.testing.assert_allclose(quant, stats.norm.logpdf(dv, f, sd), rtol=1e-12)
    m3 = np.asarray(observation_loglik(dv, f, sp, sa, np.ones(5, bool), lloq))
    np.testing.assert_allclose(m3, stats.norm.logcdf(lloq, f, sd), rtol=1e-12)
    e1, e2 = np.array([0.3, -1.0, 0.0, 2.0, 1.0]), np.array([-0.5, 0.1, 1.0, 0.0, 0.2])
    np.testing.assert_allclose(np.asarray(simulate_residual(f, sp, sa, e1, e2)), f * (1 + sp * e1) + sa * e2)
    v = sd**2
    w = 1 / v + 2 * sp**4 * f**2 / v**2
    np.testing.assert_allclose(np.asarray(fisher_weight(f, sp, sa)), w, rtol=1e-13)


def test_population_draws_from_the_example_truth():
    """`PopulationDraws.from_truth` on the bundled truth: its typical values, covariate
    coefficients, omegas and sigmas, the automatic covariate effects, and individual parameters
    by the truth's equations."""
    import json

    from pkpd_jax.data.example import example_paths
    from pkpd_jax.population import PopulationDraws

    truth = json.loads(example_paths()[1].read_text())
    draws = PopulationDraws.from_truth(truth, n_study=500)
    assert draws.n_draws == 1 and draws.has_residual
    for block in ("population", "omega"):
        for k, v in truth[block].items():
            assert draws.values[k][0] == v
    for k in ("sigma_prop_PK", "sigma_add_PK", "sigma_prop_PD", "sigma_add_PD"):
        assert draws.values[k][0] == truth["residual"][k]
    assert {e.name: e.params for e in draws.effects} == {
        "BW_CL": ("CL", "Q"),
        "BW_V": ("V1", "V2"),
        "COMED_CL": ("CL",),
    }
    for e in draws.effects:
        assert draws.values[e.name][0] == truth["covariates"][e.name]
    assert draws.study_covariates["BW"].shape == (500,)
    assert 50 <= draws.study_covariates["BW"].min() and draws.study_covariates["BW"].max() <= 100
    # the reference subject has the typical values; the truth's equations otherwise
    names = draws.model.param_names
    cov = {"BW": np.array([70.0, 90.0]), "COMED": np.array([0.0, 1.0])}
    eta = np.array([[0.0] * len(draws.bsv_params), [0.5] * len(draws.bsv_params)])
    theta = np.asarray(draws.individual_parameters(cov, eta[None]))[0]
    pop, c, om = truth["population"], truth["covariates"], truth["omega"]
    np.testing.assert_allclose(theta[0], [pop[n] for n in names], rtol=1e-13)
    expect = {n: pop[n] * math.exp(om[f"omega_{n}"] * 0.5) for n in names if f"omega_{n}" in om}
    expect["CL"] *= (90 / 70) ** c["BW_CL"] * c["COMED_CL"]
    expect["Q"] *= (90 / 70) ** c["BW_CL"]
    expect["V1"] *= (90 / 70) ** c["BW_V"]
    expect["V2"] *= (90 / 70) ** c["BW_V"]
    for n, v in expect.items():
        assert theta[1, names.index(n)] == pytest.approx(v, rel=1e-13)
    # sampled individuals: typical subjects without η, log-normal spread with it
    rng_theta = np.asarray(draws.sample_individuals(np.random.default_rng(0), {"BW": np.full(4000, 70.0),
                                                                               "COMED": np.zeros(4000)}))
    j = names.index("CL")
    assert np.std(np.log(rng_theta[:, j])) == pytest.approx(om["omega_CL"], rel=0.05)
    typ = np.asarray(draws.sample_individuals(jax.random.key(0), {"BW": np.full(3, 70.0),
                                                                  "COMED": np.zeros(3)}, bsv=False))
    np.testing.assert_allclose(typ[0], np.tile([pop[n] for n in names], (3, 1)), rtol=1e-13)


def test_population_draws_from_a_fit_directory(tiny, tmp_path):
    """`inference.fitdir.load_draws` on a small fit directory (positions stored as a fit stores them):
    the population values of every draw, the effects and the study covariates, and the one
    covariate map gives the population model's individual parameters at those positions."""
    import json

    from pkpd_jax.data import write_nonmem
    from pkpd_jax.inference.fitdir import load_draws

    pm, _, _ = tiny
    rng = np.random.default_rng(3)
    vals = [{k: v * math.exp(0.05 * rng.standard_normal()) for k, v in TINY_VALUES.items()} for _ in range(4)]
    etas = rng.standard_normal((4, pm.n_subjects, len(pm.bsv_params)))
    pos = np.stack([np.asarray(pm.to_position(v, e)) for v, e in zip(vals, etas)]).reshape(2, 2, -1)
    np.save(tmp_path / "positions.npy", pos)
    write_nonmem(frame(TINY), tmp_path / "data.csv")
    meta = {"pk": TINY_MODEL[0], "pd": TINY_MODEL[1], "covariates": "auto", "priors": None}
    meta["data"] = "data.csv"
    (tmp_path / "fit.json").write_text(json.dumps(meta))
    (tmp_path / "summary.json").write_text(json.dumps({"params": {}, "sampler": "synthetic"}))

    draws = load_draws(tmp_path)
    assert draws.n_draws == 4 and draws.meta["draws_total"] == 4 and draws.source == str(tmp_path)
    assert [e.name for e in draws.effects] == [e.name for e in pm.effects]
    assert draws.bsv_params == pm.bsv_params
    for s, v in enumerate(vals):
        for k, x in v.items():
            assert draws.values[k][s] == pytest.approx(x, rel=1e-12)
    np.testing.assert_array_equal(draws.study_covariates["BW"], [60.0, 85.0, 72.0])
    theta = np.asarray(draws.individual_parameters(draws.study_covariates, etas))
    np.testing.assert_allclose(theta, np.asarray(pm.individual_parameters(pos.reshape(4, -1))), rtol=1e-12)
    two = load_draws(tmp_path, n_draws=2, seed=1)
    assert two.n_draws == 2 and set(two.values["CL"]) <= set(draws.values["CL"])
