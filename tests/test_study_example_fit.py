"""Validation study: the population fit recovers the bundled example study's known truth.

Marked ``slow`` (a full PK/PD fit with two samplers; run with ``nox -s studies``). Checks, on the
default model (pk_2c_iv_infusion + pd_indirect_inhib_kin, covariates BW and COMED):

- every typical value and covariate effect of the truth lies in its 95% posterior interval;
- R-hat < 1.01 for every population parameter and no divergent transition;
- QHMC and NUTS agree: posterior means within 2 Monte-Carlo standard errors (combined).

``experiments/sampler_agreement.py OUT_DIR`` runs the same comparison with the two fits in two
processes at once (resumable, writes a table of every parameter's z-score).

Settings come from the environment so that a slow machine can run a shorter version:
``PKPD_STUDY_CHAINS`` (4), ``PKPD_STUDY_WARMUP`` (1000), ``PKPD_STUDY_SAMPLES`` (1000).
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from pkpd_jax.data.example import example_paths
from pkpd_jax.inference.diagnostics import mcse_mean
from pkpd_jax.inference.fit import fit
from pkpd_jax.report.fit_plots import fit_plots


pytestmark = pytest.mark.slow

CHAINS = int(os.environ.get("PKPD_STUDY_CHAINS", 4))
WARMUP = int(os.environ.get("PKPD_STUDY_WARMUP", 1000))
SAMPLES = int(os.environ.get("PKPD_STUDY_SAMPLES", 1000))


@pytest.fixture(scope="module")
def truth():
    return json.loads(example_paths()[1].read_text())


@pytest.fixture(scope="module")
def fits(tmp_path_factory):
    """Both samplers on the example study (same settings, plots written for inspection)."""
    return {
        sampler: fit(
            example_paths()[0],
            pk="pk_2c_iv_infusion",
            pd="pd_indirect_inhib_kin",
            sampler=sampler,
            chains=CHAINS,
            warmup=WARMUP,
            samples=SAMPLES,
            seed=2026,
            out=tmp_path_factory.mktemp(f"fit_{sampler}"),
            plots=fit_plots,
        )
        for sampler in ("qhmc", "nuts")
    }


def _true_values(truth) -> dict[str, float]:
    vals = dict(truth["population"])
    vals.update({k: truth["covariates"][k] for k in ("BW_CL", "BW_V", "COMED_CL")})
    return vals


@pytest.mark.parametrize("sampler", ["qhmc", "nuts"])
def test_intervals_contain_truth_and_diagnostics_clean(fits, truth, sampler):
    fr = fits[sampler]
    table = {row["name"]: row for row in fr.summary.iter_rows(named=True)}
    missed = {
        name: (value, table[name]["q2.5"], table[name]["q97.5"])
        for name, value in _true_values(truth).items()
        if not table[name]["q2.5"] <= value <= table[name]["q97.5"]
    }
    assert not missed, f"truth outside the 95% interval: {missed}"
    bad_rhat = {n: r["rhat"] for n, r in table.items() if not r["rhat"] < 1.01}
    assert not bad_rhat, f"R-hat >= 1.01: {bad_rhat}"
    assert int(np.sum(np.asarray(fr.result.divergent))) == 0


def test_qhmc_and_nuts_agree(fits, truth):
    a_draws, b_draws = fits["qhmc"].population_draws(), fits["nuts"].population_draws()
    for name in _true_values(truth):
        a, b = np.asarray(a_draws[name]), np.asarray(b_draws[name])
        se = float(np.hypot(mcse_mean(a), mcse_mean(b)))
        assert abs(a.mean() - b.mean()) <= 2.0 * se, (name, a.mean(), b.mean(), se)
