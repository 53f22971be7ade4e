"""In-silico trials (`pkpd_jax.trials`): steady state, coverage, dose search, scenarios, CLI.

Numbers are checked against independent computations: the fast steady-state path (exact unit-dose
PK, Newton on the PD interval map, RK4) against the simulator's generic steady state and against
a long simulation with every dose given; the time grid against a four times finer one; the
per-draw optimal dose and its interval on coverage matrices computed by hand; virtual subjects
against the population model's own individual parameters. A fit-like directory (population
values drawn around the example study's truth, saved as `pkpd_jax.inference.fit.save_fit` saves
positions) stands in for a fit, so that the default tests stay fast; `slow` tests run a real fit
and compare its dose intervals with the true optimal doses.

Sizes are chosen so that the compiled shapes repeat (64 or 256 subjects per call, 8 doses).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import polars as pl
import pytest
from typer.testing import CliRunner

from pkpd_jax.cli import app
from pkpd_jax.data import Dataset, read_nonmem, write_nonmem
from pkpd_jax.data.example import example_paths
from pkpd_jax.dosing import Regimen
from pkpd_jax.inference.population import PopulationModel
from pkpd_jax.models import get_model
from pkpd_jax.solve import MAX_STEPS, SUCCESS, SolverConfig, simulate, simulate_steady_state
from pkpd_jax.solve.linalg import affine_propagator, expm_small
from pkpd_jax.solve.periodic import (
    STIFFNESS_LIMIT,
    fast_path_applies,
    periodic_extremes,
    periodic_profile,
    unit_dose_regimen,
)
from pkpd_jax.trials.commands import parse_bw_range
from pkpd_jax.trials.dose_search import (
    REGIMENS,
    DoseSearchResult,
    answer_questions,
    check_trial_inputs,
    coverage_from_extremes,
    optimal_dose_per_draw,
    search_doses,
    true_doses,
)
from pkpd_jax.trials.exposure import (
    interval_grid,
    steady_state_extremes,
    steady_state_profile,
    unit_pk_steady_state,
)
from pkpd_jax.trials.virtual import (
    CovariateDistribution,
    Posterior,
    check_fit_matches_data,
    virtual_parameters,
)


MODEL = get_model("pk_2c_iv_infusion", "pd_indirect_inhib_kin")
TRUTH = json.loads(example_paths()[1].read_text())
TYPICAL = np.array([TRUTH["population"][n] for n in MODEL.param_names])
KEYS = [
    f"{reg}_{t}{sc}" for t in (90, 75) for sc in ("", "_bw70_140", "_nocomed") for reg in ("daily", "weekly")
]


def _subjects(n: int, seed: int, sd: float = 0.3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return TYPICAL * np.exp(rng.normal(0.0, sd, (n, TYPICAL.size)))


def make_fit_dir(
    out: Path,
    *,
    n_draws: int = 8,
    seed: int = 0,
    rel_sd: float = 0.05,
    data=None,
    pd: str | None = "pd_indirect_inhib_kin",
) -> Path:
    """A fit-like directory: population values drawn around the truth, stored like a real fit."""
    out.mkdir(parents=True, exist_ok=True)
    write_nonmem(read_nonmem(example_paths()[0] if data is None else data), out / "data.csv")
    model = get_model(TRUTH["pk_model"], pd)
    pm = PopulationModel(model, Dataset.load(out / "data.csv"), "auto")
    base = {**TRUTH["population"], **TRUTH["omega"]}
    base.update({k: TRUTH["covariates"][k] for k in ("BW_CL", "BW_V", "COMED_CL")})
    base.update({k: v for k, v in TRUTH["residual"].items() if k.startswith("sigma")})
    base = {k: v for k, v in base.items() if k in pm.names}
    rng = np.random.default_rng(seed)
    pos = []
    for _ in range(n_draws):
        v = {
            k: (x + rng.normal(0, 0.05) if k in ("BW_CL", "BW_V") else x * np.exp(rng.normal(0, rel_sd)))
            for k, x in base.items()
        }
        pos.append(np.asarray(pm.to_position(v)))
    np.save(out / "positions.npy", np.stack(pos).reshape(2, n_draws // 2, -1))
    meta = {"pk": TRUTH["pk_model"], "pd": pd, "covariates": "auto", "priors": None, "data": "data.csv"}
    (out / "fit.json").write_text(json.dumps(meta))
    (out / "summary.json").write_text(json.dumps({"params": {}, "sampler": "synthetic", "model": model.name}))
    return out


@pytest.fixture(scope="module")
def fit_dir(tmp_path_factory):
    return make_fit_dir(tmp_path_factory.mktemp("fit"))


# ---------------------------------------------------------------------------- steady state
def test_interval_grid_nodes_and_bad_input():
    g = interval_grid(24.0, 1.0, 96)
    assert g.nodes[0] == 0 and g.nodes[-1] == 24.0 and g.n_steps == 96
    assert np.all(np.diff(g.nodes) > 0)
    assert g.nodes[g.n_infusion] == pytest.approx(1.0)  # the infusion end is a node
    assert np.diff(g.nodes)[0] < np.diff(g.nodes)[g.n_infusion - 1]  # graded towards the dose
    with pytest.raises(ValueError, match="infusion duration"):
        interval_grid(24.0, 30.0)
    with pytest.raises(ValueError, match="interval must be > 0"):
        interval_grid(0.0)


def test_expm_small_matches_scipy():
    A = (
        jnp.asarray(np.random.default_rng(0).normal(size=(20, 3, 3)))
        * jnp.logspace(-3, 1.5, 20)[:, None, None]
    )
    ref = jax.vmap(jax.scipy.linalg.expm)(A)
    np.testing.assert_allclose(
        jax.vmap(expm_small)(A), ref, rtol=1e-12, atol=1e-13 * float(jnp.max(jnp.abs(ref)))
    )


def test_affine_propagator_is_the_exact_flow():
    """dA/dt = K·A + u over dt: e^{K dt}·A0 + K⁻¹(e^{K dt} − I)·u (K invertible), by scipy's expm."""
    rng = np.random.default_rng(1)
    K = -np.diag([0.3, 1.2, 0.05]) + 0.1 * rng.random((3, 3))
    u, a0, dt = np.array([2.0, 0.0, 0.5]), np.array([1.0, 3.0, 0.0]), 7.5
    E = np.asarray(affine_propagator(jnp.asarray(K), jnp.asarray(u), jnp.asarray(dt)))
    eK = np.asarray(jax.scipy.linalg.expm(jnp.asarray(K * dt)))
    ref = eK @ a0 + np.linalg.solve(K, (eK - np.eye(3)) @ u)
    np.testing.assert_allclose(E[:3, :3] @ a0 + E[:3, 3], ref, rtol=1e-12)
    np.testing.assert_array_equal(E[3], [0.0, 0.0, 0.0, 1.0])


def test_unit_pk_steady_state_matches_many_doses():
    """Exact steady state (superposition) = the last interval of 80 daily infusions, scaled by dose."""
    pk = get_model("pk_2c_iv_infusion")
    theta = np.array([3.0, 20.0, 4.0, 150.0])
    grid = interval_grid(24.0, 1.0, 96)
    a_nodes, _ = unit_pk_steady_state(MODEL, jnp.asarray(np.concatenate([theta, [10.0, 0.05, 0.01]])), grid)
    dose, n = 2.5, 80
    reg = Regimen.repeated(dose, 24.0, n, duration=1.0)
    ts = 24.0 * (n - 1) + grid.nodes
    sol = simulate(pk, theta, reg, ts, config=SolverConfig(method="expm"))
    conc = dose * np.asarray(a_nodes[:, 0]) / theta[1]
    np.testing.assert_allclose(np.asarray(sol.conc)[1:], conc[1:], rtol=1e-9)


def test_periodic_engine_matches_simulate_steady_state():
    """The periodic engine's extremes and profile against the simulator's steady state (iterated
    intervals, adaptive solves) on the same nodes, daily and weekly, infusion and bolus."""
    cases = [
        (MODEL, _subjects(2, 4), 24.0, np.array([0.5, 4.0])),
        (MODEL, _subjects(2, 4), 168.0, np.array([20.0])),
        (get_model("pk_1c_iv", "pd_indirect_stim_kout"), None, 24.0, np.array([10.0])),
    ]
    cfg = SolverConfig(rtol=1e-9, atol=1e-12)
    for model, theta, tau, doses in cases:
        if theta is None:
            theta = np.array([[p.median for p in model.params]])
        d = float(model.pk.default_duration)
        grid = interval_grid(tau, d, 96)
        mx, mn, status, stiff = (np.asarray(x) for x in periodic_extremes(model, theta, grid, doses))
        assert mx.shape == (theta.shape[0], doses.size) and np.all(status == SUCCESS)
        assert np.all(stiff <= STIFFNESS_LIMIT)
        for i in range(theta.shape[0]):
            for j, dose in enumerate(doses):
                ref = simulate_steady_state(
                    model, theta[i], unit_dose_regimen(d).scaled(dose), tau, grid.nodes, tol=1e-10, config=cfg
                )
                resp = np.asarray(ref.resp)
                assert int(ref.status) == SUCCESS
                np.testing.assert_allclose(mx[i, j], resp.max(), rtol=2e-5)
                np.testing.assert_allclose(mn[i, j], resp.min(), rtol=2e-5)
                out = periodic_profile(model, theta[i], grid, dose)
                t, conc, prof, converged = (np.asarray(x) for x in out)
                assert bool(converged)
                np.testing.assert_array_equal(t, grid.nodes)
                # node 0 is post-dose on the engine's side (a bolus already given)
                np.testing.assert_allclose(conc[1:], np.asarray(ref.conc)[1:], rtol=1e-7)
                np.testing.assert_allclose(prof[1:], resp[1:], rtol=2e-5)
                assert prof.max() == pytest.approx(mx[i, j], rel=1e-6)


def test_periodic_engine_applies_and_flags_large_steps():
    assert fast_path_applies(MODEL)
    assert not fast_path_applies(get_model("pk_1c_iv_mm", "pd_indirect_inhib_kin"))  # nonlinear PK
    assert not fast_path_applies(get_model("pk_1c_oral_lag", "pd_indirect_inhib_kin"))  # lag time
    assert not fast_path_applies(get_model("pk_2c_iv_infusion"))  # no response
    mm = get_model("pk_1c_iv_mm", "pd_indirect_inhib_kin")
    with pytest.raises(ValueError, match="simulate_steady_state"):
        periodic_extremes(mm, np.array([[p.median for p in mm.params]]), interval_grid(24.0), [1.0])
    with pytest.raises(ValueError, match="infusion"):  # a bolus grid for an infusion model
        periodic_extremes(MODEL, TYPICAL[None], interval_grid(24.0, 0.0), [1.0])
    reg = unit_dose_regimen(1.0)
    assert reg.n_doses == 1 and float(reg.amount[0]) == 1.0 and float(reg.duration[0]) == 1.0
    assert float(reg.time[0]) == 0.0 and int(reg.cmt[0]) == -1  # the model's dose compartment
    # 8 steps over a week: ‖J‖·h beyond the limit for fast turnover, and then not vouched for
    theta = _subjects(16, 5, sd=0.5)
    out = periodic_extremes(MODEL, theta, interval_grid(168.0, 1.0, 8), [10.0])
    _, _, status, stiff = (np.asarray(x) for x in out)
    assert np.any(stiff > STIFFNESS_LIMIT)
    np.testing.assert_array_equal(status == MAX_STEPS, stiff > STIFFNESS_LIMIT)


def test_fast_matches_generic_and_long_simulation():
    theta = _subjects(3, 1)
    doses = np.array([0.5, 2.0, 6.0])
    fast = steady_state_extremes(MODEL, theta, 24.0, doses, method="fast")
    gen = steady_state_extremes(MODEL, theta, 24.0, doses, method="generic")
    assert np.all(np.asarray(fast.status) == 0) and np.all(np.asarray(gen.status) == 0)
    assert np.all(np.asarray(fast.path) == 0) and np.all(np.asarray(gen.path) == 1)
    np.testing.assert_allclose(fast.max_resp, gen.max_resp, rtol=2e-5)
    np.testing.assert_allclose(fast.min_resp, gen.min_resp, rtol=2e-5)
    # every dose given: 40 days (the response settles with kout ≈ 0.05/h, the drug with t½ ≈ 60 h)
    prof = steady_state_profile(MODEL, theta[0], 24.0, 2.0)
    reg = Regimen.repeated(2.0, 24.0, 40, duration=1.0)
    sol = simulate(MODEL, theta[0], reg, 24.0 * 39 + prof["time"], config=SolverConfig(rtol=1e-9, atol=1e-12))
    np.testing.assert_allclose(np.asarray(sol.resp)[1:], prof["resp"][1:], rtol=2e-5)
    assert np.max(prof["resp"]) == pytest.approx(float(fast.max_resp[0, 1]), rel=1e-6)


def test_grid_is_fine_enough():
    """96 steps per interval against 384: interval maxima within 0.05% and the same answers."""
    theta = _subjects(64, 2)
    doses = 0.5 * np.arange(1, 9)
    coarse = np.asarray(steady_state_extremes(MODEL, theta, 24.0, doses).max_resp)
    fine = np.asarray(steady_state_extremes(MODEL, theta, 24.0, doses, n_steps=384).max_resp)
    assert np.max(np.abs(coarse - fine) / fine) < 5e-4
    grid = doses
    for target in (0.5, 0.75):
        assert optimal_dose_per_draw(
            coverage_from_extremes(coarse[None], 3.3), grid, target
        ) == optimal_dose_per_draw(coverage_from_extremes(fine[None], 3.3), grid, target)


def test_failures_are_reported_not_nan():
    theta = _subjects(2, 3)
    theta[1, MODEL.param_names.index("IC50")] = np.nan  # a broken subject
    with pytest.raises(Exception, match="subject"):
        steady_state_extremes(MODEL, theta, 24.0, [1.0, 2.0], method="fast")
    ext = steady_state_extremes(MODEL, theta, 24.0, [1.0, 2.0], method="fast", throw=False)
    assert np.all(np.asarray(ext.status)[0] == 0) and np.all(np.asarray(ext.status)[1] != 0)
    with pytest.raises(ValueError, match="non-finite"):
        coverage_from_extremes(np.asarray(ext.max_resp)[None], 3.3)


# ---------------------------------------------------------------------------- coverage, search
def test_optimal_dose_and_interval_by_hand():
    grid = np.array([1.0, 2.0, 3.0, 4.0])
    cov = np.array(
        [
            [0.1, 0.5, 0.92, 0.99],  # reaches 0.9 at 3
            [0.2, 0.91, 0.95, 1.0],  # at 2
            [0.0, 0.3, 0.6, 0.95],  # at 4
            [0.0, 0.1, 0.2, 0.3],  # never
        ]
    )
    per = optimal_dose_per_draw(cov, grid, 0.9)
    np.testing.assert_array_equal(per, [3.0, 2.0, 4.0, np.inf])
    res = DoseSearchResult(REGIMENS["daily"], "study", "x", 3.3, grid, cov, 10, 4.0)
    a = res.answer(0.9)
    # posterior median per dose: [0.05, 0.4, 0.76, 0.97] -> 4 mg; interval from [2, 3, 4, inf]
    assert a["dose"] == 4.0 and a["coverage_at_dose"] == pytest.approx(0.97)
    assert a["dose_interval"] == [2.0, None] and a["draws_not_reached"] == 1
    assert "above the grid" in a["note"]
    b = res.answer(0.5)  # median [0.05, 0.4, 0.76, 0.97] -> 3 mg; per draw [2, 2, 3, inf]
    assert b["dose"] == 3.0 and b["dose_interval"] == [2.0, None]
    never = res.answer(0.999)
    assert never["dose"] is None and not never["reached"] and "not reached within the grid" in never["note"]
    first = res.answer(0.01)
    assert first["dose"] == 1.0 and "smallest grid dose" in first["note"]
    # coverage from maxima: strict "below"
    mx = np.array([[[3.2, 3.3], [3.4, 1.0]]])  # 1 draw, 2 subjects, 2 doses
    np.testing.assert_array_equal(coverage_from_extremes(mx, 3.3), [[0.5, 0.5]])


def test_virtual_subjects_follow_the_population_model(fit_dir):
    post = Posterior.from_fit(fit_dir, n_draws=1, seed=0)
    values = {k: float(v[0]) for k, v in post.values.items()}
    pm = PopulationModel(MODEL, Dataset.load(fit_dir / "data.csv"), "auto")
    full = {**values, **{s: 0.1 for s in pm.sigma_names}}
    typical = np.asarray(pm.individual_parameters(pm.to_position(full)))  # η = 0, study subjects
    theta, cov = virtual_parameters(post, CovariateDistribution(), 400, jax.random.key(0), bsv=False)
    study = np.stack([post.study_covariates["BW"], post.study_covariates["COMED"]], 1)
    for i in range(0, 400, 37):
        row = np.flatnonzero(np.all(study == [cov["BW"][0, i], cov["COMED"][0, i]], axis=1))[0]
        np.testing.assert_allclose(theta[0, i], typical[row], rtol=1e-12)
    theta_b, _ = virtual_parameters(post, CovariateDistribution(), 4000, jax.random.key(1))
    theta_t, _ = virtual_parameters(post, CovariateDistribution(), 4000, jax.random.key(1), bsv=False)
    z = np.log(theta_b[0] / theta_t[0]) / np.array([values[f"omega_{p}"] for p in MODEL.param_names])
    assert np.all(np.abs(z.mean(0)) < 0.06) and np.all(np.abs(z.std(0) - 1) < 0.05)


def test_coverage_monotone_and_scenarios_shift_doses():
    post = Posterior.from_truth(TRUTH, n_study=5000)
    out = {}
    for name, dist in (
        ("study", CovariateDistribution()),
        ("bw", CovariateDistribution(bw=("uniform", 70.0, 140.0))),
        ("nocomed", CovariateDistribution(comed=0.0)),
    ):
        out[name] = search_doses(post, "daily", covariates=dist, n_virtual=256, seed=4, max_dose=8.0)
    for res in out.values():
        assert np.all(np.diff(res.coverage[0]) >= 0), res.coverage  # same subjects at every dose
    d_study = out["study"].answer(0.9)["dose"]
    k = list(out["study"].grid).index(d_study)
    for name in ("bw", "nocomed"):  # heavier or without the CL inhibitor: higher clearance
        assert out[name].answer(0.9)["dose"] > d_study
        assert out[name].coverage[0, k] < out["study"].coverage[0, k]
    # no co-medication raises every subject's clearance (same subjects and η): never more covered
    n = min(out["nocomed"].grid.size, out["study"].grid.size)
    assert np.all(out["nocomed"].coverage[0, :n] <= out["study"].coverage[0, :n])
    assert out["study"].answer(0.75)["dose"] < d_study



def test_dose_search_curves_do_not_depend_on_call_width():
    """Wide calls (the default) and one 8-dose call at a time give the same grid, cut at the same
    multiple of 8 doses by the stop rule, and the same coverage curves."""
    post = Posterior.from_truth(TRUTH, n_study=2000)
    theta, _ = virtual_parameters(post, CovariateDistribution(), 128, jax.random.key(3))
    theta = np.broadcast_to(np.asarray(theta), (3, *np.asarray(theta).shape[1:]))  # 3 "draws"
    narrow = search_doses(post, "weekly", theta=theta, doses_per_call=8)
    for width in (32, 12):
        wide = search_doses(post, "weekly", theta=theta, doses_per_call=width)
        np.testing.assert_array_equal(wide.grid, narrow.grid)
        np.testing.assert_array_equal(wide.coverage, narrow.coverage)
    assert narrow.grid.size % 8 == 0 and narrow.grid.size > 8  # cut inside a wide call
    assert np.median(narrow.coverage, axis=0)[-1] >= 0.9 > np.median(narrow.coverage, axis=0)[-9]
    with pytest.raises(ValueError, match="`doses_per_call` and `dose_chunk` must be whole numbers >= 1"):
        search_doses(post, "weekly", theta=theta, doses_per_call=0)
    with pytest.raises(ValueError, match="got 2.5 and 8"):  # not silently truncated to 2
        search_doses(post, "weekly", theta=theta, doses_per_call=2.5)


def test_answer_questions_writes_curves(fit_dir, tmp_path):
    answers = answer_questions(fit_dir, n_virtual=64, n_draws=4, seed=0, progress=False, out_dir=tmp_path)
    assert sorted(answers) == sorted(KEYS)
    for key, a in answers.items():
        assert set(a) == {"dose", "dose_interval"}, key
        lo, hi = a["dose_interval"]
        assert a["dose"] is not None and lo is not None and hi is not None
        assert lo <= a["dose"] <= hi, (key, a)
        step = 0.5 if key.startswith("daily") else 5.0
        assert a["dose"] / step == pytest.approx(round(a["dose"] / step))
    for reg in ("daily", "weekly"):
        for sc in ("", "_bw70_140", "_nocomed"):
            assert answers[f"{reg}_75{sc}"]["dose"] <= answers[f"{reg}_90{sc}"]["dose"]
    curves = json.loads((tmp_path / "trial_curves.json").read_text())
    assert len(curves["curves"]) == 6 and curves["threshold"] == 3.3
    for sc in ("study", "bw70_140", "nocomed"):
        assert (tmp_path / f"coverage_{sc}.png").stat().st_size > 10_000


def test_quantum_kernel_covariate_model_reproduces_the_covariate_equations(fit_dir):
    """The optional qkernel stage of `pkpd-jax run`: a regressor trained on a synthetic cohort
    from the fit's posterior predicts the typical parameters of the covariate equations, and the
    trial answers built on it agree with those of the fitted equations."""
    from pkpd_jax.quantum.pipeline import covariate_model_from_fit

    model_fn, info = covariate_model_from_fit(fit_dir, n=400, n_test=100, seed=0, cv_subset=400)
    assert info["n_train"] == 400 and info["features"] == ["BW", "COMED"]
    cov = TRUTH["covariates"]
    bw = np.array([55.0, 70.0, 95.0, 70.0])
    comed = np.array([0.0, 0.0, 0.0, 1.0])
    pred = model_fn({"BW": bw, "COMED": comed})
    assert pred.shape == (4, len(MODEL.param_names))
    cl = MODEL.param_names.index("CL")
    v1 = MODEL.param_names.index("V1")
    want_cl = TRUTH["population"]["CL"] * (bw / 70) ** cov["BW_CL"] * cov["COMED_CL"] ** comed
    want_v1 = TRUTH["population"]["V1"] * (bw / 70) ** cov["BW_V"]
    # The cohort's between-subject SD (omega ~0.3) over 400 subjects and the 5% posterior jitter
    # bound the error of the learned conditional mean to a few percent.
    np.testing.assert_allclose(pred[:, cl], want_cl, rtol=0.08)
    np.testing.assert_allclose(pred[:, v1], want_v1, rtol=0.08)
    assert min(info["r2_noise_free"][p] for p in ("CL", "V1")) > 0.8
    with pytest.raises(ValueError, match="needs covariates"):
        model_fn({"BW": bw})

    plain = answer_questions(fit_dir, n_virtual=64, n_draws=4, seed=0, progress=False)
    quantum = answer_questions(fit_dir, n_virtual=64, n_draws=4, seed=0, progress=False,
                               individual_model=model_fn)
    for key in ("daily_90", "weekly_90", "daily_75_nocomed"):
        step = 0.5 if key.startswith("daily") else 5.0
        assert abs(quantum[key]["dose"] - plain[key]["dose"]) <= 0.15 * plain[key]["dose"] + step, (
            key, plain[key], quantum[key])


# ---------------------------------------------------------------------------- CLI and bad input
def test_cli_json_contract(fit_dir):
    runner = CliRunner()
    base = [
        "trial",
        "--fit",
        str(fit_dir),
        "--regimen",
        "daily",
        "--n-virtual",
        "64",
        "--n-draws",
        "4",
        "--json",
    ]
    r = runner.invoke(app, base)
    assert r.exit_code == 0, r.output
    out = json.loads(r.output.strip().splitlines()[-1])
    assert {"dose", "dose_interval", "coverage_at_dose", "grid", "coverage"} <= set(out)
    assert len(out["grid"]) == len(out["coverage"]) and out["grid"][0] == 0.5
    k = out["grid"].index(out["dose"])
    assert out["coverage_at_dose"] == out["coverage"][k] >= 0.9 > max(out["coverage"][:k], default=0)
    lo, hi = out["dose_interval"]
    assert lo <= out["dose"] <= hi
    r2 = runner.invoke(app, base + ["--bw-range", "70,140", "--no-comed", "--target", "0.75"])
    assert r2.exit_code == 0, r2.output
    out2 = json.loads(r2.output.strip().splitlines()[-1])
    assert out2["coverage_at_dose"] >= 0.75


@pytest.mark.parametrize(
    "args, message",
    [
        (["--threshold", "0"], "threshold must be"),
        (["--threshold", "-3"], "threshold must be"),
        (["--target", "1.0"], "strictly between 0 and 1"),
        (["--target", "0"], "strictly between 0 and 1"),
        (["--bw-range", "140,70"], "empty or reversed"),
        (["--bw-range", "70,70"], "empty or reversed"),
        (["--bw-range", "heavy"], "two weights"),
        (["--regimen", "monthly"], "--regimen must be one of"),
        (["--n-virtual", "0"], "virtual subjects must be >= 1"),
    ],
)
def test_cli_bad_input(fit_dir, args, message):
    r = CliRunner().invoke(app, ["trial", "--fit", str(fit_dir), "--json", *args])
    assert r.exit_code == 1
    assert "error:" in r.output and message in r.output, r.output


@pytest.mark.filterwarnings("ignore::pkpd_jax.inference.population.PopulationDataWarning")
def test_bad_input_python(fit_dir, tmp_path):
    with pytest.raises(ValueError, match="threshold"):
        check_trial_inputs(threshold=0.0, targets=[0.9])
    with pytest.raises(ValueError, match="strictly between"):
        check_trial_inputs(threshold=3.3, targets=[1.2])
    with pytest.raises(ValueError, match="empty or reversed"):
        CovariateDistribution(bw=("uniform", 100.0, 100.0))
    with pytest.raises(ValueError, match="empty or reversed"):
        parse_bw_range("140-70")
    assert parse_bw_range("70-140") == (70.0, 140.0)
    with pytest.raises(FileNotFoundError, match="not a fit directory"):
        answer_questions(tmp_path, n_virtual=8, n_draws=2, progress=False)
    # a fit directory made on another data set
    df = read_nonmem(example_paths()[0])
    other = tmp_path / "other.csv"
    write_nonmem(df.filter(pl.col("ID").cast(pl.Int64) <= 40), other)
    with pytest.raises(ValueError, match="another data set"):
        check_fit_matches_data(fit_dir, other)
    check_fit_matches_data(fit_dir, example_paths()[0])  # the right one passes
    r = CliRunner().invoke(app, ["trial", "--fit", str(fit_dir), "--data", str(other), "--json"])
    assert r.exit_code == 1 and "another data set" in r.output
    # a PK-only fit cannot answer biomarker questions
    pk_only = make_fit_dir(tmp_path / "pk", n_draws=2, pd=None)
    with pytest.raises(ValueError, match="PK-only"):
        Posterior.from_fit(pk_only)
    # a body-weight scenario on data without body weight
    post = Posterior.from_truth(TRUTH, n_study=100)
    post.study_covariates = {"COMED": post.study_covariates["COMED"]}
    with pytest.raises(ValueError, match="BW"):
        virtual_parameters(post, CovariateDistribution(bw=("uniform", 70.0, 140.0)), 4, jax.random.key(0))


# ---------------------------------------------------------------------------- slow
@pytest.mark.slow
@pytest.mark.parametrize(
    "pk, pd, tau",
    [
        ("pk_2c_iv_infusion", "pd_indirect_inhib_kin", 168.0),
        ("pk_1c_oral", "pd_indirect_inhib_kout", 24.0),
        ("pk_1c_iv", "pd_effect_comp_emax", 24.0),
        ("pk_2c_oral", "pd_transit_delay", 24.0),
        ("pk_1c_oral", "pd_direct_inhib_emax", 24.0),
    ],
)
def test_fast_matches_generic_other_models(pk, pd, tau, draw_params):
    model = get_model(pk, pd)
    theta = draw_params(model, 4, 7)
    doses = np.array([1.0, 10.0, 100.0])
    fast = steady_state_extremes(model, theta, tau, doses, method="fast", throw=False)
    gen = steady_state_extremes(model, theta, tau, doses, method="generic", throw=False)
    ok = (np.asarray(fast.status) == 0) & (np.asarray(gen.status) == 0)
    assert ok.mean() > 0.8
    np.testing.assert_allclose(np.asarray(fast.max_resp)[ok], np.asarray(gen.max_resp)[ok], rtol=1e-3)
    np.testing.assert_allclose(np.asarray(fast.min_resp)[ok], np.asarray(gen.min_resp)[ok], rtol=1e-3)


@pytest.fixture(scope="module")
def true_answers():
    return true_doses(n_virtual=int(os.environ.get("PKPD_TRIAL_TRUTH_N", 50_000)), seed=1)


@pytest.mark.slow
def test_fit_intervals_contain_true_doses(true_answers, tmp_path_factory):
    """A real fit of the example study: every 90% dose interval contains the true optimal dose.

    The true doses use the same covariate distribution as the fit-based answers (the study's
    subjects resampled), so the comparison isolates parameter uncertainty. ``PKPD_TRIAL_FIT_DIR``
    reuses a fit directory; otherwise the study is fitted here with ``PKPD_STUDY_CHAINS`` (4),
    ``PKPD_STUDY_WARMUP`` (500), ``PKPD_STUDY_SAMPLES`` (500).
    """
    fit_dir = os.environ.get("PKPD_TRIAL_FIT_DIR")
    if not fit_dir:
        from pkpd_jax.inference.fit import fit

        fit_dir = tmp_path_factory.mktemp("real_fit")
        fit(
            example_paths()[0],
            pk="pk_2c_iv_infusion",
            pd="pd_indirect_inhib_kin",
            seed=11,
            chains=int(os.environ.get("PKPD_STUDY_CHAINS", 4)),
            warmup=int(os.environ.get("PKPD_STUDY_WARMUP", 500)),
            samples=int(os.environ.get("PKPD_STUDY_SAMPLES", 500)),
            out=fit_dir,
            plots=False,
            progress=False,
        )
    answers = answer_questions(
        fit_dir, n_virtual=1000, n_draws=100, seed=3, progress=False, data=example_paths()[0]
    )
    missed = {
        k: (a["dose_interval"], true_answers[k]["dose"])
        for k, a in answers.items()
        if not (a["dose_interval"][0] <= true_answers[k]["dose"] <= (a["dose_interval"][1] or np.inf))
    }
    assert not missed, missed
