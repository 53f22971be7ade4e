"""The likelihood + BIC baseline of `benchmarks/bench_selector_baseline.py`: its batched
Levenberg-Marquardt fits recover known parameters from noise-free subjects, for a PK class and for
a PD class driven by a fixed PK fit, and the BIC prefers the generating class over a simpler one."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import jax
import numpy as np
import pytest

from pkpd_jax.dosing import Regimen
from pkpd_jax.models import get_model
from pkpd_jax.solve import SolverConfig, simulate


ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_selector_baseline",
                                                  ROOT / "benchmarks" / "bench_selector_baseline.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


TIMES = np.array([0.0, 0.25, 0.5, 1, 2, 3, 4, 6, 8, 12, 16, 24, 36, 48, 72])
THETA_PK = np.array([4.0, 40.0])  # pk_1c_iv: CL (L/h), V (L)
THETA_PD = np.array([12.0, 6.0, 0.8])  # pd_direct_emax: R0, Emax, EC50


def _subject(theta_pk, theta_pd=None):
    """Two noise-free subjects (100 mg IV bolus at 0) in the layout `load_test_subjects` returns."""
    model = get_model("pk_1c_iv", None if theta_pd is None else "pd_direct_emax")
    theta = theta_pk if theta_pd is None else np.concatenate([theta_pk, theta_pd])
    reg = Regimen(np.array([0.0]), np.array([100.0]), np.array([0.0]), np.array([-1]))
    with jax.enable_x64(True):
        sol = simulate(model, theta, reg, TIMES, config=SolverConfig(rtol=1e-10, atol=1e-12))
        conc, resp = jax.vmap(lambda y: model.observe(y, theta))(sol.states)
    conc, resp = np.array(conc), np.array(resp)
    conc[0] = 0.0  # a bolus at 0: the observation at 0 is pre-dose (no drug yet)
    N, T = 2, TIMES.size
    rep = lambda a: np.repeat(a[None], N, 0)
    return {
        "family": "pk" if theta_pd is None else "pd", "pd_driver": "pk_1c_iv",
        "times": rep(TIMES), "mask": np.ones((N, T), bool), "blq": np.zeros((N, T), bool),
        "conc": rep(conc), "resp": rep(resp),
        "conc_missing": np.zeros((N, T), bool), "resp_missing": np.zeros((N, T), bool),
        "dose_time": np.zeros((N, 1)), "dose_amount": np.full((N, 1), 100.0),
        "dose_duration": np.zeros((N, 1)), "dose_cmt": np.full((N, 1), -1, np.int32),
    }


def test_lm_recovers_a_pk_class_and_bic_prefers_it(bench):
    with jax.enable_x64(True):
        data = _subject(THETA_PK)
        w = bench._conc_weights(data)
        assert w[:, 0].sum() == 0 and w.sum() == 2 * (TIMES.size - 1)  # pre-dose zero left out
        fit = bench._fit("pk_1c_iv", None, data, data["conc"], w, np.zeros((2, 0)), 2, 30, 0)
        np.testing.assert_allclose(fit["theta"], np.repeat(THETA_PK[None], 2, 0), rtol=1e-4)
        assert np.all(fit["rss"] < 1e-10)
        # a two-compartment model fits as well but pays for two more parameters
        bic_1c = bench.fit_class("pk_1c_iv", data, 2, 30, 0)["bic"]
        bic_2c = bench.fit_class("pk_2c_iv", data, 2, 30, 0)["bic"]
    assert np.all(bic_1c < bic_2c)


def test_lm_recovers_a_pd_class_with_the_driver_fixed(bench):
    with jax.enable_x64(True):
        data = _subject(THETA_PK, THETA_PD)
        fit = bench.fit_driver(data, 2, 30, 0)
        np.testing.assert_allclose(fit["theta"], np.repeat(THETA_PK[None], 2, 0), rtol=1e-4)
        w = np.ones_like(data["resp"])
        pd = bench._fit("pk_1c_iv", "pd_direct_emax", data, data["resp"], w, fit["theta"], 2, 30, 0)
    np.testing.assert_allclose(pd["theta"], np.repeat(THETA_PD[None], 2, 0), rtol=1e-3)
    assert np.all(pd["rss"] < 1e-8)
