"""The bundled example study: reproducible bit for bit, and consistent with its documented truth."""

from __future__ import annotations

import filecmp

import jax
import jax.numpy as jnp
import numpy as np
import polars as pl
import pytest


jax.config.update("jax_enable_x64", True)

from pkpd_jax.data import Dataset  # noqa: E402
from pkpd_jax.data.example import TRUTH, example_paths, load_example, write_example  # noqa: E402
from pkpd_jax.models import get_model  # noqa: E402
from pkpd_jax.solve import SolverConfig, simulate_population  # noqa: E402


def test_regenerates_bit_for_bit(tmp_path):
    csv, js = write_example(tmp_path)
    shipped_csv, shipped_js = example_paths()
    assert filecmp.cmp(csv, shipped_csv, shallow=False)
    assert filecmp.cmp(js, shipped_js, shallow=False)


def test_design_matches_the_documented_phase1_study():
    df, truth = load_example()
    ind = pl.DataFrame(truth["individual"])
    assert ind.height == 48
    assert sorted(ind["dose_mg"].value_counts()["count"].to_list()) == [12, 12, 12, 12]
    pk_subjects = df.filter((pl.col("EVID") == 0) & (pl.col("DVID") == 1))["ID"].n_unique()
    assert pk_subjects == 36
    assert df.filter((pl.col("EVID") == 0) & (pl.col("DVID") == 2))["ID"].n_unique() == 48
    assert 50 <= ind["BW"].min() and ind["BW"].max() <= 100
    assert set(ind["COMED"].to_list()) == {0, 1}
    doses = df.filter(pl.col("EVID") == 1)
    assert set(doses["AMT"].unique().to_list()) == {1.0, 3.0, 10.0}
    assert (doses["DUR"] == 1.0).all()


def test_individual_parameters_follow_the_covariate_model():
    _, truth = load_example()
    ind = {k: np.asarray(v, float) for k, v in truth["individual"].items()}
    pop, cov = TRUTH["population"], TRUTH["covariates"]
    eta_cl = np.log(
        ind["CL"] / (pop["CL"] * (ind["BW"] / 70) ** cov["BW_CL"] * cov["COMED_CL"] ** ind["COMED"])
    )
    # eta_CL ~ N(0, 0.3^2) over 48 subjects: sample sd within a generous band, mean near 0
    assert abs(eta_cl.mean()) < 3 * 0.3 / np.sqrt(48)
    assert 0.2 < eta_cl.std() < 0.4


def test_observations_are_truth_plus_documented_residual_error():
    """Simulating each subject from its true parameters explains the data: standardised residuals
    under the documented error model have mean ~0 and sd ~1 for both observation types."""
    ds = Dataset.load(example_paths()[0])
    _, truth = load_example()
    model = get_model(TRUTH["pk_model"], TRUTH["pd_model"])
    theta = model.pack({k: jnp.asarray(truth["individual"][k]) for k in model.param_names})
    sol = simulate_population(
        model, theta, ds.regimen, ds.obs_time, config=SolverConfig(rtol=1e-10, atol=1e-12)
    )
    res = TRUTH["residual"]
    for dvid, pred, prop, add in (
        (1, sol.conc, res["sigma_prop_PK"], res["sigma_add_PK"]),
        (2, sol.resp, res["sigma_prop_PD"], res["sigma_add_PD"]),
    ):
        sel = np.asarray(ds.obs_mask & (ds.obs_dvid == dvid) & ~ds.obs_blq)
        f = np.asarray(pred)[sel]
        z = (np.asarray(ds.obs_dv)[sel] - f) / np.sqrt((prop * f) ** 2 + add**2)
        n = z.size
        assert abs(z.mean()) < 4 / np.sqrt(n), (dvid, z.mean())
        assert z.std() == pytest.approx(1.0, abs=0.15), (dvid, z.std())
