"""Digital twin: individual posterior (MAP + Laplace), forecasts, recommendation, active sampling.

Most checks use a one-compartment IV model with a direct inhibitory Emax response (exact
matrix-exponential simulation: quick to compile); the CLI test uses the example study's PK model
in a fit-like directory (population values at the truth, stored as a fit stores them). Numbers
asserted: recovery of a simulated patient's clearance, the Laplace curvature against an
independent finite-difference Hessian of the log posterior, the active-sampling criterion against
a brute-force computation (finite-difference sensitivities, explicit matrix inverses), and the
monotonicity of the recommended dose.
"""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import polars as pl
import pytest
from typer.testing import CliRunner

from pkpd_jax.data import Dataset, read_nonmem, write_nonmem
from pkpd_jax.data.example import example_paths
from pkpd_jax.dosing import Regimen
from pkpd_jax.inference.likelihood import PopulationModel
from pkpd_jax.models import get_model
from pkpd_jax.population import CovariateEffect
from pkpd_jax.solve import SolverConfig, simulate
from pkpd_jax.trials.exposure import steady_state_extremes
from pkpd_jax.twin import PatientRecord, TwinError, TwinPopulation, individual_posterior
from pkpd_jax.twin.active import expected_variance, next_sample_time, sensitivities, target_direction
from pkpd_jax.twin.forecast import suppression_table
from pkpd_jax.twin.posterior import TWIN_CONFIG, neg_log_posterior, predictions


MODEL = get_model("pk_1c_iv", "pd_direct_inhib_emax")
VALUES = {
    "CL": 1.0,
    "V": 50.0,
    "R0": 10.0,
    "Imax": 0.9,
    "IC50": 0.5,
    "BW_CL": 0.75,
    "omega_CL": 0.3,
    "omega_V": 0.2,
    "omega_R0": 0.1,
    "omega_IC50": 0.3,
    "sigma_prop_PK": 0.1,
    "sigma_add_PK": 0.001,
    "sigma_prop_PD": 0.05,
    "sigma_add_PD": 0.05,
}
BW_EFFECT = CovariateEffect("BW_CL", "BW", "power", ("CL",), 70.0, (0.75, 0.25))
REG = Regimen.repeated(20.0, 24.0, 5)


def _population(cl=(1.0, 1.05)):
    """Two population draws (population uncertainty in the typical CL)."""
    vals = {k: np.full(len(cl), v) for k, v in VALUES.items()}
    vals["CL"] = np.asarray(cl, float)
    return TwinPopulation(MODEL, (BW_EFFECT,), ("CL", "V", "R0", "IC50"), vals)


@pytest.fixture(scope="module")
def pop():
    return _population()


def _patient(pop, eta, times_pk, times_pd, *, seed=0, bw=80.0, noise=1.0, slots=0):
    """A simulated patient with random effects `eta` (standardised), seeded residual error."""
    u, om, _ = pop.arrays({"BW": bw})
    theta = np.asarray(pop.theta(u[0], om[0], np.asarray(eta, float)))
    sol_pk = simulate(
        MODEL, theta, REG, jnp.asarray(times_pk), config=SolverConfig(rtol=1e-10, atol=1e-12)
    )
    sol_pd = simulate(
        MODEL, theta, REG, jnp.asarray(times_pd), config=SolverConfig(rtol=1e-10, atol=1e-12)
    )
    rng = np.random.default_rng(seed)
    c, r = np.asarray(sol_pk.conc), np.asarray(sol_pd.resp)
    c = c * (1 + noise * 0.1 * rng.normal(size=c.size)) + noise * 0.001 * rng.normal(size=c.size)
    r = r * (1 + noise * 0.05 * rng.normal(size=r.size)) + noise * 0.05 * rng.normal(size=r.size)
    rec = PatientRecord.from_arrays(
        "p",
        {"BW": bw},
        REG,
        np.r_[times_pk, times_pd],
        np.r_[c, r],
        np.r_[np.ones(c.size, int), np.full(r.size, 2)],
    )
    return (rec.with_slots(slots) if slots else rec), theta


ETA_TRUE = np.array([1.2, -0.5, 0.3, -0.8])


@pytest.fixture(scope="module")
def rich(pop):
    t_pk = np.r_[np.linspace(0.5, 23.5, 8), np.linspace(96.5, 119.5, 8)]
    t_pd = np.r_[0.0, np.linspace(1, 23, 6), np.linspace(97, 119, 6)]
    rec, theta = _patient(pop, ETA_TRUE, t_pk, t_pd, seed=1)
    return rec, theta, individual_posterior(pop, rec)


@pytest.fixture(scope="module")
def sparse(pop):
    # padded to the rich patient's number of rows: one compiled shape for both
    rec, theta = _patient(
        pop, ETA_TRUE, np.array([2.0, 23.0]), np.array([0.0, 24.0, 48.0]), seed=2, slots=24
    )
    return rec, theta, individual_posterior(pop, rec)


# ---------------------------------------------------------------------------- posterior
def test_map_recovers_individual_clearance_from_rich_data(rich):
    rec, theta, post = rich
    assert post.converged.all() and post.hessian_kind[0] == "fd"
    cl_true = theta[0]
    m, sd = post.log_param_moments("CL")
    assert abs(post.map_theta[0] / cl_true - 1) < 0.05  # rich data: MAP CL within 5 %
    assert abs(m - np.log(cl_true)) < 3 * sd
    assert sd < 0.06  # rich data: CV of CL far below the 30 % between-subject SD
    s = post.summary()
    assert s["CL"]["interval"][0] < cl_true < s["CL"]["interval"][1]
    assert s["Imax"]["individual"] is False and s["Imax"]["cv"] == 0.0  # no random effect: fixed


def test_laplace_curvature_matches_finite_difference_hessian(pop, sparse):
    """The Laplace precision (central differences of the forward-mode gradient) equals the
    Hessian of the negative log posterior from second differences of its *value*; the gradient
    vanishes at the MAP."""
    rec, _, post = sparse
    u, om, sg = (jnp.asarray(x[0]) for x in (post.u_typ, post.omega, post.sigma))
    data = rec.arrays
    L = jax.jit(lambda e: neg_log_posterior(pop, e, u, om, sg, data, TWIN_CONFIG))
    e0 = np.asarray(post.eta[0])
    b, h = e0.size, 1e-3
    H = np.empty((b, b))
    for i in range(b):
        for j in range(b):
            ei, ej = np.eye(b)[i] * h, np.eye(b)[j] * h
            H[i, j] = (
                float(L(e0 + ei + ej))
                - float(L(e0 + ei - ej))
                - float(L(e0 - ei + ej))
                + float(L(e0 - ei - ej))
            ) / (4 * h * h)
    prec = np.linalg.inv(post.cov[0])
    np.testing.assert_allclose(prec, H, rtol=2e-3, atol=2e-3 * np.abs(H).max())
    g = np.array(
        [float(L(e0 + h * np.eye(b)[i])) - float(L(e0 - h * np.eye(b)[i])) for i in range(b)]
    ) / (2 * h)
    assert np.max(np.abs(g)) < 1e-4  # the MAP is a stationary point


def test_mixture_over_population_draws(pop, sparse):
    """Two draws, one far from the data: the Laplace evidence puts the weight on the near one,
    and the mixture moments are the weighted component moments."""
    rec, _, _ = sparse
    two = _population((1.0, 4.0))  # the second draw's typical CL is four times too high
    post = individual_posterior(two, rec)
    assert post.weights[0] > 0.9
    b = 0
    means = post.u_typ[:, 0] + post.omega[:, b] * post.eta[:, b]
    var = post.omega[:, b] ** 2 * post.cov[:, b, b]
    m = np.sum(post.weights * means)
    sd = np.sqrt(np.sum(post.weights * (var + (means - m) ** 2)))
    assert post.log_param_moments("CL") == pytest.approx((m, sd))
    draws = post.sample(20000, seed=3)
    assert np.std(np.log(draws[:, 0])) == pytest.approx(sd, rel=0.05)


# ---------------------------------------------------------------------------- active sampling
def test_active_criterion_matches_brute_force(pop, sparse):
    """Expected posterior variance of log CL after one more concentration, against sensitivities
    by central finite differences of the simulator and the updated covariance by explicit inverse;
    a pre-dose time carries no information."""
    rec, _, post = sparse
    cand = np.array([0.0, 1.0, 6.0, 12.0, 30.0, 47.0, 100.0])
    f, J, status = sensitivities([post], cand)
    assert np.all(status == 0)
    assert np.all(J[0, :, 0] == 0)  # t = 0 is pre-dose: concentration 0 whatever η
    data = PatientRecord.from_arrays(
        "c", {"BW": 80.0}, REG, cand, np.zeros(cand.size), np.ones(cand.size, int)
    ).arrays
    c, q = target_direction(post, "CL")
    before, after = expected_variance(post, f[0], J[0], c, q)
    sp, sa = VALUES["sigma_prop_PK"], VALUES["sigma_add_PK"]
    w_k = post.weights
    brute = np.zeros(cand.size)
    for k in range(2):
        u, om = post.u_typ[k], post.omega[k]
        pred = jax.jit(
            lambda e: predictions(
                MODEL,
                pop.theta(u, om, e),
                data,  # noqa: B023
                SolverConfig(rtol=1e-11, atol=1e-13),
            )[0]
        )
        h = 1e-5
        J_fd = np.stack(
            [
                (
                    np.asarray(pred(post.eta[k] + h * np.eye(4)[i]))
                    - np.asarray(pred(post.eta[k] - h * np.eye(4)[i]))
                )
                / (2 * h)
                for i in range(4)
            ],
            -1,
        )
        np.testing.assert_allclose(J[0, k], J_fd, rtol=1e-5, atol=1e-9)
        for t in range(cand.size):
            v = (sp * f[0, k, t]) ** 2 + sa**2
            w = 1 / v + 2 * sp**4 * f[0, k, t] ** 2 / v**2
            cov_new = np.linalg.inv(np.linalg.inv(post.cov[k]) + w * np.outer(J_fd[t], J_fd[t]))
            brute[t] += w_k[k] * (c[k] @ cov_new @ c[k])
    q = post.u_typ[:, 0] + np.einsum("ka,ka->k", c, post.eta)  # the mean log CL of each draw
    spread = np.sum(w_k * (q - np.sum(w_k * q)) ** 2)
    brute += spread
    assert before == pytest.approx(sum(w_k[k] * c[k] @ post.cov[k] @ c[k] for k in range(2)) + spread)
    np.testing.assert_allclose(after, brute, rtol=1e-5)
    assert np.all(after <= before) and after[0] == pytest.approx(before)
    ns = next_sample_time(post, candidates=cand, refine=False, regimen=REG)
    assert ns["time"] == cand[int(np.argmin(brute))] and ns["time"] > 0
    assert ns["sd_after"] == pytest.approx(np.sqrt(min(brute)), rel=1e-5)
    assert ns["sd_before"] == pytest.approx(post.log_param_moments("CL")[1], rel=1e-9)


# ---------------------------------------------------------------------------- recommendation
def test_recommended_dose_monotone_in_probability_and_threshold(sparse):
    rec, theta, post = sparse
    tab = suppression_table(post, "daily", threshold=4.0, probability=0.95, n_samples=300, seed=0)
    p = tab.probability(5.0)
    assert np.all(np.diff(p) >= 0)  # the same draws face every dose
    probs = [0.5, 0.6, 0.75, 0.9, 0.95]
    doses = [tab.recommend(q, 5.0) for q in probs]
    assert None not in doses and doses == sorted(doses) and doses[0] < doses[-1]
    by_thr = [tab.recommend(0.9, t) for t in (4.0, 5.0, 6.0)]
    assert None not in by_thr and by_thr == sorted(by_thr, reverse=True) and by_thr[0] > by_thr[-1]
    # the table agrees with a direct steady-state computation of the same draws
    th = post.sample(300, seed=0)
    mx = np.asarray(steady_state_extremes(MODEL, th, 24.0, tab.doses[:5]).max_resp)
    np.testing.assert_allclose(tab.max_resp[:, :5], mx, rtol=1e-10)
    with pytest.raises(TwinError, match="strictly between 0 and 1"):
        tab.recommend(1.0, 5.0)


def test_rich_data_recommendation_matches_the_true_patient(rich):
    """With a tight posterior the recommended dose is close to the true patient's smallest
    suppressing grid dose (within the posterior's CL uncertainty), and above it."""
    rec, theta, post = rich
    tab = suppression_table(post, "daily", threshold=5.0, probability=0.9, n_samples=200)
    dose = tab.recommend(0.9, 5.0)
    true_mx = np.asarray(steady_state_extremes(MODEL, theta[None], 24.0, tab.doses).max_resp)[0]
    need = tab.doses[np.argmax(true_mx < 5.0)]
    sd = post.log_param_moments("CL")[1]
    assert need <= dose <= need * np.exp(3 * sd) + 0.5


# ---------------------------------------------------------------------------- bad input
def _example_patient_csv(tmp_path, ids=(30,), drop=()):
    df = pl.read_csv(example_paths()[0]).filter(pl.col("ID").is_in(list(ids)))
    if drop:
        df = df.drop(list(drop))
    path = tmp_path / f"patient_{'_'.join(map(str, ids))}_{len(drop)}.csv"
    df.write_csv(path)
    return path


def test_clear_errors_for_bad_patient_input(tmp_path, pop):
    with pytest.raises(TwinError, match="holds 2 subjects"):
        PatientRecord.from_csv(_example_patient_csv(tmp_path, ids=(30, 31)))
    df = pl.read_csv(example_paths()[0]).filter((pl.col("ID") == 30) & (pl.col("EVID") == 1))
    path = tmp_path / "doses_only.csv"
    df.write_csv(path)
    with pytest.raises(ValueError, match="no observation rows"):  # the data reader's own check
        PatientRecord.from_csv(path)
    ignored = pl.read_csv(example_paths()[0]).filter(pl.col("ID") == 30).with_columns(MDV=pl.lit(1))
    ignored.write_csv(tmp_path / "ignored.csv")
    with pytest.raises(TwinError, match="no observation rows"):  # every observation MDV 1
        PatientRecord.from_csv(tmp_path / "ignored.csv")
    truth_pop = TwinPopulation.from_truth(json.loads(example_paths()[1].read_text()))
    rec = PatientRecord.from_csv(_example_patient_csv(tmp_path, drop=("COMED",)))
    with pytest.raises(TwinError, match="no COMED column"):
        truth_pop.check_patient(rec)
    ok = PatientRecord.from_csv(_example_patient_csv(tmp_path))
    bad_cmt = PatientRecord(
        ok.id,
        ok.covariates,
        ok.arrays._replace(
            regimen=Regimen(
                ok.regimen.time, ok.regimen.amount, ok.regimen.duration, ok.regimen.cmt * 0 + 4
            )
        ),
    )
    with pytest.raises(TwinError, match="compartment 5"):
        truth_pop.check_patient(bad_cmt)
    with pytest.raises(TwinError, match="no BW column"):
        pop.check_patient(PatientRecord("x", {}, ok.arrays))


def _fit_like_dir(out, pd="pd_direct_inhib_emax"):
    """A fit directory (as `save_fit` writes it) with population draws around chosen values."""
    truth = json.loads(example_paths()[1].read_text())
    out.mkdir(parents=True, exist_ok=True)
    write_nonmem(read_nonmem(example_paths()[0]), out / "data.csv")
    model = get_model(truth["pk_model"], pd)
    pm = PopulationModel(model, Dataset.load(out / "data.csv"), "auto")
    base = {
        **truth["population"],
        **truth["omega"],
        "Imax": 0.95,
        "omega_Imax": 0.1,
        **{k: truth["covariates"][k] for k in ("BW_CL", "BW_V", "COMED_CL")},
        **{k: v for k, v in truth["residual"].items() if k.startswith("sigma")},
    }
    base = {k: v for k, v in base.items() if k in pm.names}
    rng = np.random.default_rng(0)
    pos = [
        np.asarray(pm.to_position({k: v * np.exp(rng.normal(0, 0.03)) for k, v in base.items()}))
        for _ in range(4)
    ]
    np.save(out / "positions.npy", np.stack(pos).reshape(2, 2, -1))
    (out / "fit.json").write_text(
        json.dumps(
            {"pk": truth["pk_model"], "pd": pd, "covariates": "auto", "priors": None, "data": "data.csv"}
        )
    )
    (out / "summary.json").write_text(
        json.dumps({"params": {}, "sampler": "synthetic", "model": model.name})
    )
    return out


@pytest.mark.filterwarnings("ignore::pkpd_jax.population.PopulationDataWarning")
def test_cli_twin_errors(tmp_path):
    from pkpd_jax.cli import app

    fit_dir = _fit_like_dir(tmp_path / "fit")
    patient = _example_patient_csv(tmp_path)
    runner = CliRunner()
    r = runner.invoke(
        app, ["twin", "--fit", str(fit_dir), "--patient", str(_example_patient_csv(tmp_path, (30, 31)))]
    )
    assert r.exit_code == 1 and "holds 2 subjects" in r.output
    pk_only = _fit_like_dir(tmp_path / "pk_only", pd=None)
    r = runner.invoke(app, ["twin", "--fit", str(pk_only), "--patient", str(patient)])
    assert r.exit_code == 1 and "PK-only" in r.output
    r = runner.invoke(
        app, ["twin", "--fit", str(fit_dir), "--patient", str(patient), "--probability", "1.5"]
    )
    assert r.exit_code == 1 and "strictly between 0 and 1" in r.output
    r = runner.invoke(
        app,
        ["twin", "--fit", str(fit_dir), "--patient", str(_example_patient_csv(tmp_path, drop=("BW",)))],
    )
    assert r.exit_code == 1 and "no BW column" in r.output


@pytest.mark.slow
def test_cli_twin_json_plot(tmp_path):
    """The whole command on one example-study patient: JSON answer and forecast plot (~1 min)."""
    from pkpd_jax.cli import app

    fit_dir = _fit_like_dir(tmp_path / "fit")
    patient = _example_patient_csv(tmp_path)
    runner = CliRunner()
    r = runner.invoke(
        app,
        [
            "twin",
            "--fit",
            str(fit_dir),
            "--patient",
            str(patient),
            "--json",
            "--next-sample",
            "--n-draws",
            "3",
            "--n-samples",
            "100",
            "--horizon",
            "48",
            "--out",
            str(tmp_path / "o"),
        ],
    )
    assert r.exit_code == 0, r.output
    ans = json.loads(r.output)
    assert ans["patient"] == "30" and len(ans["population"]["weights"]) == 3
    assert sum(ans["population"]["weights"]) == pytest.approx(1.0)
    truth = json.loads(example_paths()[1].read_text())["individual"]
    cl_true = truth["CL"][truth["ID"].index(30)]
    # (the fit-like population's PD model differs from the one that made the data: a loose check)
    assert abs(ans["individual"]["CL"]["median"] / cl_true - 1) < 0.25
    probs = [row["probability"] for row in ans["dose_table"]]
    assert probs == sorted(probs)
    dose = ans["recommended_dose"]
    assert dose is not None and ans["recommended_dose_probability"] >= 0.9
    assert all(row["probability"] < 0.9 for row in ans["dose_table"] if row["dose"] < dose)
    ns = ans["next_sample"]
    assert (
        ns["window_h"][0] < ns["time_h"] <= ns["window_h"][1] + 1e-9
        and ns["sd_after_expected"] < ns["sd_before"]
    )
    assert (tmp_path / "o" / "twin.json").exists() and (
        tmp_path / "o" / "forecast.png"
    ).stat().st_size > 10_000


# ---------------------------------------------------------------------------- slow checks
@pytest.mark.slow
def test_laplace_agrees_with_nuts_on_the_example_model(tmp_path):
    """The example study's model (2-compartment infusion, indirect response): for a sparsely
    sampled patient, the Laplace mean and SD of η agree with NUTS (blackjax)."""
    from pkpd_jax.twin.posterior import hmc_check

    truth = json.loads(example_paths()[1].read_text())
    tp = TwinPopulation.from_truth(truth)
    rec = PatientRecord.from_csv(_example_patient_csv(tmp_path, ids=(30,)))
    post = individual_posterior(tp, rec)
    chk = hmc_check(post, num_warmup=200, num_samples=400, seed=0)
    sd_nuts = np.sqrt(np.diag(chk["nuts_cov"]))
    sd_lap = np.sqrt(np.diag(chk["laplace_cov"]))
    z = np.abs(chk["nuts_mean"] - chk["laplace_mean"]) / sd_nuts
    ratio = sd_lap / sd_nuts
    assert chk["divergences"] <= 5
    assert np.all(z < 0.5), (z, ratio)  # the mode is near the mean (Monte-Carlo error ~0.1)
    assert np.all((ratio > 0.6) & (ratio < 1.5)), (z, ratio)
