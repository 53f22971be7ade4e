"""The simulated studies of `benchmarks/bench_selector_transfer.py`: the bundled study's design
(dosed subjects, cohorts at the intended exposures, 14 infusions, 8 PK and 12 biomarker samples per
subject), observations that follow the generating class (closed form for a direct model, a scipy
reference for a turnover model), reproducibility from the seed, reported solver failures, and the
accuracy / confusion bookkeeping."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from pkpd_jax.data.example import PD_TIMES, PK_TIMES, TRUTH
from pkpd_jax.solve import SolverConfig


ROOT = Path(__file__).resolve().parents[1]
N = 6  # subjects: 3 cohorts of 2


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_selector_transfer",
                                                  ROOT / "benchmarks" / "bench_selector_transfer.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def emax_study(bench):
    return bench.make_study("pd_direct_emax", seed=3, study=1, n_subjects=N)


def _subject(df: pl.DataFrame, sid: int, dvid: int) -> pl.DataFrame:
    return df.filter((pl.col("ID") == sid) & (pl.col("DVID") == dvid) & (pl.col("EVID") == 0))


def test_design_of_a_simulated_study(bench, emax_study):
    df, truth = emax_study
    des = TRUTH["design"]
    assert df.columns == ["ID", "TIME", "AMT", "DV", "EVID", "MDV", "CMT", "DVID", "DUR", "BLQ", "BW",
                          "COMED"]
    assert sorted(df["ID"].unique().to_list()) == list(range(1, N + 1))
    assert truth["failed_subjects"] == [] and np.all(truth["status"] == 0)
    # cohorts at 0.3x, 1x, 3x EC50 (typical C_ss,avg = dose / (CL tau)), 2 significant digits
    ec50 = truth["typical_pd"]["EC50"]
    expected = [float(f"{m * ec50 * 3.0 * 24.0:.2g}") for m in (0.3, 1.0, 3.0)]
    assert truth["cohort_doses_mg"] == sorted(expected)
    np.testing.assert_array_equal(truth["dose_mg"], np.repeat(expected, 2))
    for sid in range(1, N + 1):
        doses = df.filter((pl.col("ID") == sid) & (pl.col("EVID") == 1))
        assert doses.height == des["n_doses"] == 14
        np.testing.assert_array_equal(doses["TIME"].to_numpy(), 24.0 * np.arange(14))
        assert set(doses["DUR"].to_list()) == {1.0}
        assert set(doses["AMT"].to_list()) == {truth["dose_mg"][sid - 1]}
        pk, pd = _subject(df, sid, 1), _subject(df, sid, 2)
        assert pk.height == 8 and pd.height == 12
        # biomarker: the 12 nominal times, jittered within the bundled study's rules
        t = pd["TIME"].to_numpy()
        assert t[0] == 0.0
        slack = np.maximum(0.25, 0.05 * (PD_TIMES % 24.0)) + 1e-3
        assert np.all(np.abs(t - PD_TIMES) <= slack)
        # PK: 8 distinct nominal times, each jittered
        tp = pk["TIME"].to_numpy()
        near = np.abs(tp[:, None] - PK_TIMES[None, :]) <= np.maximum(0.25, 0.05 * (PK_TIMES % 24.0)) + 1e-3
        assert np.all(near.any(1)) and len({int(np.argmax(r)) for r in near}) == 8
    # bookkeeping: 6 x (14 dose + 20 observation) rows
    assert df.height == N * 34
    assert df.filter(pl.col("DVID") == 1).height == 8 * N and df.filter(pl.col("DVID") == 2).height == 12 * N


def test_noise_free_direct_emax_follows_the_closed_form(bench):
    df, truth = bench.make_study("pd_direct_emax", seed=3, study=1, n_subjects=N, noise=False)
    ind, n_pk = truth["individual"], truth["n_pk"]
    conc_pd = truth["conc"][:, n_pk:]
    closed = ind["R0"][:, None] + ind["Emax"][:, None] * conc_pd / (ind["EC50"][:, None] + conc_pd)
    # the drug moves the biomarker visibly in the top cohort (the check below is not vacuous)
    assert np.max(np.abs(closed[-2:] / ind["R0"][-2:, None] - 1.0)) > 0.05
    for i in range(N):
        dv = _subject(df, i + 1, 2)["DV"].to_numpy()
        np.testing.assert_allclose(dv, closed[i], rtol=6e-6)  # DV is written to 6 significant digits
        pk = _subject(df, i + 1, 1)
        order = np.argsort(truth["times"][i, :n_pk])
        c = truth["conc"][i, :n_pk][order]
        q = pk["BLQ"].to_numpy() == 0
        np.testing.assert_allclose(pk["DV"].to_numpy()[q], c[q], rtol=6e-6)
        assert np.all(c[~q] < TRUTH["design"]["lloq_mg_per_L"])
        np.testing.assert_array_equal(pk["DV"].to_numpy()[~q], TRUTH["design"]["lloq_mg_per_L"])


def test_noise_free_turnover_matches_a_scipy_reference(bench, solve_ivp_piecewise):
    """pd_indirect_inhib_kin, subject 1: both observation types against scipy's Radau."""
    df, truth = bench.make_study("pd_indirect_inhib_kin", seed=0, study=0, n_subjects=3, noise=False)
    p = {k: float(v[0]) for k, v in truth["individual"].items()}
    dose = float(truth["dose_mg"][0])

    def rhs(t, y, u):
        c = y[0] / p["V1"]
        inhib = 1.0 - c / (p["IC50"] + c)
        return np.array([
            u[0] - (p["CL"] + p["Q"]) / p["V1"] * y[0] + p["Q"] / p["V2"] * y[1],
            p["Q"] / p["V1"] * y[0] - p["Q"] / p["V2"] * y[1],
            p["R0"] * p["kout"] * inhib - p["kout"] * y[2],
        ])

    pk, pd = _subject(df, 1, 1), _subject(df, 1, 2)
    obs = np.concatenate([np.sort(truth["times"][0, :8]), truth["times"][0, 8:]])
    ref = solve_ivp_piecewise(rhs, [0.0, 0.0, p["R0"]], 24.0 * np.arange(14), np.full(14, dose),
                              np.ones(14), 0, obs)
    conc_ref, resp_ref = ref[:8, 0] / p["V1"], ref[8:, 2]
    assert np.min(resp_ref) < 0.9 * p["R0"]  # the drug lowers the biomarker in this subject
    q = pk["BLQ"].to_numpy() == 0
    np.testing.assert_allclose(pk["DV"].to_numpy()[q], conc_ref[q], rtol=1e-5)
    np.testing.assert_allclose(pd["DV"].to_numpy(), resp_ref, rtol=1e-5)


def test_same_seed_same_table_other_seed_other_table(bench, emax_study):
    df, truth = emax_study
    again, truth2 = bench.make_study("pd_direct_emax", seed=3, study=1, n_subjects=N)
    assert df.equals(again)
    assert truth["typical_pd"] == truth2["typical_pd"]
    other, _ = bench.make_study("pd_direct_emax", seed=3, study=2, n_subjects=N)
    assert not df.equals(other)
    assert not np.allclose(_subject(df, 1, 2)["DV"].to_numpy(), _subject(other, 1, 2)["DV"].to_numpy())


def test_typical_values_come_from_the_prior_and_linear_reference(bench):
    rng = np.random.default_rng(0)
    typ, ind = bench.draw_pd(rng, "pd_indirect_inhib_kout", 2000, z_max=2.0)
    # the prior's 2-SD box (Imax logit-normal around 0.8 with SD 0.8 on the logit scale)
    assert 1.0 * np.exp(-1.6) <= typ["IC50"] <= 1.0 * np.exp(1.6)
    assert 0.0 < typ["Imax"] < 1.0 and np.all((ind["Imax"] > 0) & (ind["Imax"] < 1))
    np.testing.assert_allclose(np.std(np.log(ind["IC50"])), 0.30, rtol=0.08)
    np.testing.assert_allclose(np.std(np.log(ind["R0"])), 0.20, rtol=0.08)
    np.testing.assert_allclose(np.median(ind["kout"]), typ["kout"], rtol=0.05)
    assert bench.reference_concentration("pd_direct_linear", {"R0": 10.0, "slope": 2.0}) == pytest.approx(2.5)


def test_failed_simulations_are_reported_not_passed_on(bench, monkeypatch):
    # a turnover model is integrated by the ODE solver (a direct model's joint system is linear and
    # goes through matrix exponentials); two steps per segment cannot reach the next grid point
    monkeypatch.setattr(bench, "_solver", lambda: SolverConfig(rtol=1e-10, atol=1e-12, max_steps=2))
    df, truth = bench.make_study("pd_indirect_inhib_kin", seed=0, study=0, n_subjects=3)
    assert [f["ID"] for f in truth["failed_subjects"]] == [1, 2, 3]
    assert all(f["status"] == 1 for f in truth["failed_subjects"])
    assert df.height == 0
    rec = bench.classify_one(df, truth)
    assert rec["pd_selected"] is None and rec["correct"] is False and "failed" in rec["error"]
    s = bench.summarise([rec], bench.pd_class_names())
    assert s["n_unclassified"] == 1 and s["n_failed_subjects"] == 3 and s["study_accuracy"] == 0.0


def test_summary_accuracies_and_confusion(bench):
    names = bench.pd_class_names()
    a, b, c = names[0], names[1], names[5]
    recs = [
        {"pd_true": a, "pd_selected": a, "correct": True, "pk_selected": "pk_2c_iv_infusion",
         "failed_subjects": [], "subject_predictions": [a, a, b]},
        {"pd_true": b, "pd_selected": c, "correct": False, "pk_selected": "pk_2c_iv",
         "failed_subjects": [], "subject_predictions": [c, c, b, a]},
    ]
    s = bench.summarise(recs, names)
    assert s["studies_correct"] == 1 and s["study_accuracy"] == 0.5 and s["pk_correct"] == 1
    assert s["n_subjects_classified"] == 7 and s["subject_accuracy"] == pytest.approx(3 / 7)
    cm = np.array(s["confusion_matrix_subjects"])
    assert cm[0, 0] == 2 and cm[0, 1] == 1 and cm[1, 5] == 2 and cm[1, 1] == 1 and cm[1, 0] == 1
    assert cm.sum() == 7
    cms = np.array(s["confusion_matrix_studies"])
    assert cms[0, 0] == 1 and cms[1, 5] == 1 and cms.sum() == 2
    assert s["largest_subject_confusions"][0] == {"true": b, "predicted": c, "count": 2}
    assert s["per_class"][b]["most_common_wrong"] == (c, 2)
    lo, hi = s["study_accuracy_wilson95"]
    assert lo < 0.5 < hi
