"""Quantum kernel regression: kernel identities, states vs circuits, regression accuracy, CLI contract."""

from __future__ import annotations

import json
import math
import re
import shutil

import jax
import numpy as np
import polars as pl
import pytest
from typer.testing import CliRunner

from pkpd_jax.quantum.cohort import CovariateModel, cohort_from_truth, example_population_model
from pkpd_jax.quantum.evaluate import evaluate_predictions, r2_rmse
from pkpd_jax.quantum.feature_maps import Encoding, FeatureMap, qubit_layout
from pkpd_jax.quantum.kernel import (
    bloch_vectors,
    circuit_by_circuit_kernel,
    density_features,
    fidelity_gram,
    gaussian_gram,
    make_kernel,
    product_of_cosines,
)
from pkpd_jax.quantum.regression import CovariateEquation, KernelRegressor, loo_errors, loo_errors_primal


jax.config.update("jax_enable_x64", True)


def _covariates(n, seed):
    rng = np.random.default_rng(seed)
    return np.stack([rng.uniform(50, 100, n), (rng.uniform(size=n) < 0.35).astype(float)], 1)


def _z(n, seed):
    return Encoding.fit(_covariates(200, 0), ["BW", "COMED"]).transform(_covariates(n, seed))


@pytest.fixture(scope="module")
def truth_cohort():
    return cohort_from_truth(3000, seed=11)


# ============================================================================ feature maps, kernels
def test_layout_and_encoding():
    assert qubit_layout([False, True], 4) == (0, 0, 0, 1)
    assert qubit_layout([True, False, False], 5) == (1, 1, 2, 2, 0)
    enc = Encoding.fit(_covariates(100, 1), ["BW", "COMED"])
    assert enc.binary == (False, True)
    z = enc.transform(_covariates(100, 1))
    np.testing.assert_allclose(z[:, 0].mean(), 0, atol=1e-12)
    np.testing.assert_allclose(z[:, 0].std(), 1, atol=1e-12)
    assert set(np.unique(z[:, 1])) == {0.0, 1.0}
    bad = _covariates(5, 2)
    bad[2, 1] = 2.0
    with pytest.raises(ValueError, match=r"row 3, column COMED: value 2 is not 0 or 1"):
        enc.transform(bad)
    with pytest.raises(ValueError, match="at least one qubit per feature"):
        FeatureMap.create("angle", [False, True], n_qubits=1)


@pytest.mark.parametrize("n_qubits", [2, 4])
def test_angle_kernel_is_the_product_of_cosines(n_qubits):
    fmap = FeatureMap.create("angle", [False, True], n_qubits=n_qubits)
    za, zb = _z(30, 1), _z(9, 2)
    bw = 0.7
    Sa, Sb = fmap.states(za, bw), fmap.states(zb, bw)
    ang_a, ang_b = np.asarray(fmap.angles(za, bw)), np.asarray(fmap.angles(zb, bw))
    np.testing.assert_allclose(fidelity_gram(Sa), product_of_cosines(ang_a, ang_a), atol=1e-13)
    np.testing.assert_allclose(fidelity_gram(Sa, Sb), product_of_cosines(ang_a, ang_b), atol=1e-13)
    # closed form in the covariates: cos^{2m}(γΔz/2) for BW on m qubits, 1/2 when COMED differs
    m = n_qubits - 1
    dz = za[:, None, 0] - za[None, :, 0]
    expected = np.cos(bw * dz / 2) ** (2 * m) * np.where(za[:, None, 1] == za[None, :, 1], 1.0, 0.5)
    np.testing.assert_allclose(fidelity_gram(Sa), expected, atol=1e-13)


@pytest.mark.parametrize(
    "kind,layers", [("angle", 1), ("angle", 2), ("iqp", 1), ("iqp", 2), ("projected", 1)]
)
def test_kernel_is_symmetric_psd_with_unit_diagonal(kind, layers):
    kern = make_kernel(kind, [False, True], n_qubits=4, layers=layers)
    hyper = {"bandwidth": 0.9} | ({"gamma": 1.0} if kind == "projected" else {})
    R = kern.represent(_z(80, 3), **hyper)
    K = kern.gram(R, **hyper)
    assert K.shape == (80, 80)
    assert np.array_equal(K, K.T)  # mirrored blocks: exactly symmetric
    np.testing.assert_allclose(np.diag(K), 1.0, atol=1e-12)
    assert np.all(K >= -1e-15) and np.all(K <= 1 + 1e-12)
    assert np.linalg.eigvalsh(K).min() > -1e-10


@pytest.mark.parametrize("kind,layers", [("angle", 2), ("iqp", 2)])
def test_states_kernel_equals_circuit_by_circuit_inversion_test(kind, layers):
    fmap = FeatureMap.create(kind, [False, True], n_qubits=3, layers=layers)
    z, z2 = _z(5, 4), _z(3, 5)
    K_states = fidelity_gram(fmap.states(z, 1.3))
    # one jit-compiled QNode call per pair (the reference study's way) for one map, all pairs in
    # one vmapped call for the other (same circuits, no Python loop)
    K_circ = circuit_by_circuit_kernel(fmap, z, 1.3, batched=kind == "iqp")
    np.testing.assert_allclose(K_states, K_circ, atol=1e-12)
    K_rect = circuit_by_circuit_kernel(fmap, z, 1.3, Z2=z2, batched=True)
    np.testing.assert_allclose(fidelity_gram(fmap.states(z, 1.3), fmap.states(z2, 1.3)), K_rect, atol=1e-12)
    # the entangling layers matter: not the product of cosines any more
    assert not np.allclose(K_states, product_of_cosines(*(2 * [np.asarray(fmap.angles(z, 1.3))])), atol=1e-3)


def test_blocked_products_equal_direct_products():
    rng = np.random.default_rng(6)
    S = rng.normal(size=(23, 8)) + 1j * rng.normal(size=(23, 8))
    S /= np.linalg.norm(S, axis=1, keepdims=True)
    T = S[:11] * np.exp(0.3j)
    direct = np.abs(S @ S.conj().T) ** 2
    np.testing.assert_allclose(fidelity_gram(S, block=7), direct, atol=1e-14)
    np.testing.assert_allclose(fidelity_gram(S, T, block=5), np.abs(S @ T.conj().T) ** 2, atol=1e-14)
    # the explicit density-matrix features reproduce the kernel: K = Φ Φᵀ
    Phi = density_features(S)
    assert Phi.shape == (23, 64)
    np.testing.assert_allclose(Phi @ Phi.T, direct, atol=1e-14)
    F = rng.normal(size=(17, 3))
    d2 = ((F[:, None] - F[None]) ** 2).sum(-1)
    np.testing.assert_allclose(gaussian_gram(F, gamma=0.3, block=4), np.exp(-0.3 * d2), atol=1e-14)


def test_bloch_vectors_of_product_states():
    fmap = FeatureMap.create("angle", [False, True], n_qubits=3)
    z = _z(5, 7)
    ang = np.asarray(fmap.angles(z, 0.8))
    B = bloch_vectors(fmap.states(z, 0.8)).reshape(5, 3, 3)
    # RY(a)|0>: Bloch vector (sin a, 0, cos a)
    np.testing.assert_allclose(B[..., 0], np.sin(ang), atol=1e-13)
    np.testing.assert_allclose(B[..., 1], 0.0, atol=1e-13)
    np.testing.assert_allclose(B[..., 2], np.cos(ang), atol=1e-13)


# ============================================================================ regression
def test_loo_formulas_equal_brute_force_leave_one_out():
    rng = np.random.default_rng(8)
    Phi = rng.normal(size=(25, 6))
    Y = Phi @ rng.normal(size=(6, 2)) + 0.3 * rng.normal(size=(25, 2))
    K = Phi @ Phi.T
    ridges = [0.1, 2.0]
    brute = np.zeros((2, 2))
    for r, lam in enumerate(ridges):
        for i in range(25):
            keep = np.arange(25) != i
            alpha = np.linalg.solve(K[np.ix_(keep, keep)] + lam * np.eye(24), Y[keep])
            brute[r] += (Y[i] - K[i, keep] @ alpha) ** 2 / 25
    np.testing.assert_allclose(loo_errors(K, Y, ridges), brute, rtol=1e-9)
    np.testing.assert_allclose(loo_errors_primal(Phi, Y, ridges), brute, rtol=1e-9)


def _known_function(n, seed, noise):
    X = _covariates(n, seed)
    f = np.stack([0.75 * np.log(X[:, 0] / 70) + math.log(0.6) * X[:, 1], np.sin(X[:, 0] / 10)], 1)
    rng = np.random.default_rng(seed + 100)
    return X, f, f + noise * rng.standard_normal(f.shape)


@pytest.mark.parametrize("kernel", ["angle", "rbf"])
def test_kernel_ridge_recovers_a_known_function(kernel):
    X, _, Y = _known_function(800, 9, noise=0.05)
    Xt, ft, _ = _known_function(300, 10, noise=0.0)
    reg = KernelRegressor(kernel, cv_subset=400).fit(X, Y, ["BW", "COMED"], ["logCL", "sinBW"])
    r2, rmse, _ = r2_rmse(ft, reg.predict(Xt), ["logCL", "sinBW"])
    assert r2["logCL"] > 0.99 and r2["sinBW"] > 0.98, (r2, reg.info["hyperparameters"])
    assert rmse["logCL"] < 0.03


def test_primal_and_dual_kernel_ridge_agree():
    X, _, Y = _known_function(300, 12, noise=0.1)
    Xt = _covariates(50, 13)
    kw = dict(hyper={"bandwidth": 0.5}, ridge=0.3)
    p = KernelRegressor("iqp", solver="primal", **kw).fit(X, Y, ["BW", "COMED"], ["a", "b"])
    d = KernelRegressor("iqp", solver="dual", **kw).fit(X, Y, ["BW", "COMED"], ["a", "b"])
    r2, _, _ = r2_rmse(_known_function(50, 13, noise=0.0)[1], p.predict(Xt), ["a", "b"])
    assert r2["a"] > 0.95 and r2["b"] > 0.9, r2
    assert p.info["solver"] == "primal" and d.info["solver"] == "dual"
    np.testing.assert_allclose(p.predict(Xt), d.predict(Xt), atol=1e-10)


def test_svr_on_the_precomputed_quantum_kernel():
    X, _, Y = _known_function(400, 14, noise=0.05)
    Xt, ft, _ = _known_function(200, 15, noise=0.0)
    reg = KernelRegressor("angle", "svr", cv_subset=200).fit(X, Y[:, :1], ["BW", "COMED"], ["logCL"])
    r2, _, _ = r2_rmse(ft[:, :1], reg.predict(Xt), ["logCL"])
    assert r2["logCL"] > 0.97, (r2, reg.info["svr"])
    assert set(reg.info["svr"]["logCL"]) == {"C", "epsilon"}


def test_covariate_equation_recovers_the_true_coefficients(truth_cohort):
    cohort, gen, _ = truth_cohort
    eq = CovariateEquation(gen.structure).fit(
        cohort.covariates, cohort.log_params, cohort.covariate_names, cohort.param_names
    )
    c = eq.info["coefficients"]
    assert abs(c["CL"]["BW"] - 0.75) < 0.08 and abs(c["V1"]["BW"] - 1.0) < 0.06
    assert abs(c["CL"]["COMED"] - math.log(0.6)) < 0.03
    assert abs(c["CL"]["intercept"] - (math.log(3.0) - 0.75 * math.log(70))) < 0.35
    assert c["R0"]["BW"] == 0.0 and c["R0"]["COMED"] == 0.0  # no effect in the model: not fitted


# ============================================================================ cohorts, evaluation
def test_truth_cohort_follows_the_generating_model(truth_cohort):
    cohort, gen, pm = truth_cohort
    names = cohort.param_names
    assert names == ("CL", "V1", "Q", "V2", "R0", "kout", "IC50")
    bw, comed = cohort.covariates[:, 0], cohort.covariates[:, 1]
    assert 50 <= bw.min() and bw.max() <= 100 and abs(comed.mean() - 0.35) < 0.03
    f_cl = math.log(3.0) + 0.75 * np.log(bw / 70) + math.log(0.6) * comed
    np.testing.assert_allclose(cohort.noise_free[:, 0], f_cl, atol=1e-10)
    resid = cohort.log_params - cohort.noise_free
    np.testing.assert_allclose(resid.std(0), [0.3, 0.2, 0.2, 0.2, 0.1, 0.2, 0.3], rtol=0.06)
    assert np.all(np.abs(resid.mean(0)) < 0.02)


def test_evaluation_reports_the_oracle_ceiling_and_undefined_r2(truth_cohort):
    cohort, _, _ = truth_cohort
    ev = evaluate_predictions(cohort.noise_free, cohort)
    assert ev["noise_free"]["r2"]["CL"] == 1.0 and ev["noise_free"]["r2"]["R0"] is None
    assert "constant" in ev["notes"]["R0"]
    # oracle R² of log CL: var(covariate part) / (that + ω²) with ω = 0.3
    var_f = np.var(cohort.noise_free[:, 0])
    assert abs(ev["oracle"]["r2"]["CL"] - var_f / (var_f + 0.09)) < 0.04
    assert ev["individual"]["r2"] == ev["oracle"]["r2"]


def test_quantum_kernel_reaches_the_oracle_on_a_truth_cohort(truth_cohort):
    cohort, _, _ = truth_cohort
    train, test = cohort.split(1000, seed=1)
    reg = KernelRegressor("angle", cv_subset=1000).fit(
        train.covariates, train.log_params, train.covariate_names, train.param_names
    )
    ev = evaluate_predictions(reg.predict(test.covariates), test)
    for p in ("CL", "V1", "Q", "V2"):
        assert ev["noise_free"]["r2"][p] > 0.97, (p, ev["noise_free"]["r2"])
        assert ev["gap_to_oracle"][p] < 0.02
    for p in ("R0", "kout", "IC50"):  # nothing to learn: about the mean, not worse
        assert ev["individual"]["r2"][p] > -0.01


# ============================================================================ CLI
runner = CliRunner()


def _cli(*args):
    from pkpd_jax.cli import app

    return runner.invoke(app, ["qkernel", *args])


@pytest.fixture(scope="module")
def tables(tmp_path_factory, truth_cohort):
    cohort, _, _ = truth_cohort
    d = tmp_path_factory.mktemp("qk")
    train, test = cohort.split(200, seed=3)
    train.take(np.arange(500)).to_frame().write_csv(d / "train.csv")
    test.to_frame().write_csv(d / "test.csv")
    return d


def test_cli_json_contract(tables):
    res = _cli(
        "--train",
        str(tables / "train.csv"),
        "--test",
        str(tables / "test.csv"),
        "--features",
        "BW,COMED",
        "--targets",
        "CL,V1",
        "--kernel",
        "angle",
        "--cv-subset",
        "500",
        "--out",
        str(tables / "pred.csv"),
        "--json",
    )
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert {"kernel", "n_train", "r2", "rmse", "fit_s"} <= set(out)
    assert out["kernel"] == "angle" and out["n_train"] == 500 and out["fit_s"] > 0
    assert set(out["r2"]) == {"CL", "V1"} == set(out["rmse"])
    assert 0.3 < out["r2"]["CL"] < 0.7 and 0.3 < out["r2"]["V1"] < 0.7  # oracle ≈ 0.5
    assert 0.25 < out["rmse"]["CL"] < 0.4  # ω_CL = 0.3 is the floor
    pred = pl.read_csv(tables / "pred.csv")
    assert pred.columns == ["ID", "BW", "COMED", "CL", "V1"] and pred.height == 200
    lin = json.loads(
        _cli(
            "--train",
            str(tables / "train.csv"),
            "--test",
            str(tables / "test.csv"),
            "--targets",
            "CL",
            "--kernel",
            "covariate",
            "--json",
        ).stdout
    )
    assert abs(lin["r2"]["CL"] - out["r2"]["CL"]) < 0.05


@pytest.mark.parametrize(
    "edit,args,message",
    [
        (lambda df: df.drop("COMED"), (), "training table .* has no column 'COMED'"),
        (
            lambda df: df.with_columns(
                pl.when(pl.int_range(pl.len()) == 2)
                .then(pl.lit("heavy"))
                .otherwise(pl.col("BW").cast(str))
                .alias("BW")
            ),
            (),
            r"row 3, column BW: value 'heavy' is not a number",
        ),
        (
            lambda df: df.with_columns(
                pl.when(pl.int_range(pl.len()) == 4).then(-1.0).otherwise(pl.col("CL")).alias("CL")
            ),
            (),
            r"row 5, column CL: value -1.0 is not > 0",
        ),
        (None, ("--kernel", "rbff"), "unknown kernel 'rbff'"),
        (None, ("--method", "gp"), "unknown method 'gp'"),
        (None, ("--targets", "BW"), "cannot be both a feature and a target"),
    ],
)
def test_cli_bad_input_errors(tables, tmp_path, edit, args, message):
    train = tables / "train.csv"
    if edit is not None:
        train = tmp_path / "bad.csv"
        edit(pl.read_csv(tables / "train.csv")).write_csv(train)
    res = _cli("--train", str(train), "--test", str(tables / "test.csv"), "--targets", "CL", *args, "--json")
    assert res.exit_code == 1
    assert res.stderr.startswith("error: ")
    assert re.search(message, res.stderr), res.stderr


def test_cli_mode_errors(tables, tmp_path):
    res = _cli("--train", str(tables / "train.csv"), "--json")
    assert res.exit_code == 1 and "missing --test" in res.stderr
    res = _cli("--from-fit", str(tmp_path), "--json")
    assert res.exit_code == 1 and "is not a fit directory (missing fit.json)" in res.stderr
    res = _cli("--from-truth", "--train", str(tables / "train.csv"), "--json")
    assert res.exit_code == 1 and "cannot be combined" in res.stderr
    res = _cli("--train", str(tmp_path / "nope.csv"), "--test", str(tables / "test.csv"), "--json")
    assert res.exit_code == 1 and "does not exist" in res.stderr


@pytest.fixture(scope="module")
def fit_dir(tmp_path_factory):
    """A fit directory whose 'posterior' is 5 jittered copies of the true position (no sampling)."""
    from pkpd_jax.data.example import example_paths
    from pkpd_jax.quantum.cohort import truth_population

    pm, truth = example_population_model()
    pos = np.asarray(pm.to_position(truth_population(truth, pm)))
    draws = pos + 0.02 * np.random.default_rng(0).standard_normal((1, 5, pos.size))
    d = tmp_path_factory.mktemp("fit")
    np.save(d / "positions.npy", draws)
    shutil.copyfile(example_paths()[0], d / "data.csv")
    (d / "fit.json").write_text(
        json.dumps(
            {
                "pk": truth["pk_model"],
                "pd": truth["pd_model"],
                "covariates": "auto",
                "priors": None,
                "data": "data.csv",
            }
        )
    )
    (d / "summary.json").write_text("{}")
    return d


def test_cli_from_fit_cohort(fit_dir):
    res = _cli(
        "--from-fit",
        str(fit_dir),
        "--n",
        "600",
        "--n-test",
        "300",
        "--targets",
        "CL,V1,R0",
        "--no-study-rmse",
        "--cv-subset",
        "600",
        "--json",
    )
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["n_train"] == 600 and out["n_test"] == 300 and out["features"] == ["BW", "COMED"]
    assert out["noise_free"]["r2"]["CL"] > 0.9 and out["noise_free"]["r2"]["R0"] is None
    assert abs(out["r2"]["CL"] - out["oracle"]["r2"]["CL"]) < 0.05
    assert "population_prediction" not in out


def test_posterior_covariate_model_averages_the_draws(fit_dir):
    from pkpd_jax.inference.fit import load_fit

    pm, positions, _ = load_fit(fit_dir)
    gen = CovariateModel.from_population(pm, positions)
    assert gen.mu.shape == (5, 7) and gen.coef.shape == (5, 3)
    cov = _covariates(10, 16)
    one = [CovariateModel.from_population(pm, positions[0, s]).noise_free(cov) for s in range(5)]
    np.testing.assert_allclose(gen.noise_free(cov), np.mean(one, 0), atol=1e-12)


@pytest.mark.slow
def test_population_prediction_on_the_study(truth_cohort):
    """True individual parameters fit the observations better than the typical ones."""
    from pkpd_jax.quantum.evaluate import population_prediction_rmse

    _, gen, pm = truth_cohort
    truth = example_population_model()[1]
    names = list(pm.param_names)
    ind = np.log(np.stack([truth["individual"][p] for p in names], 1))
    cov = np.stack([np.asarray(pm.dataset.covariate(c)) for c in gen.covariate_names], 1)
    typical = population_prediction_rmse(pm, gen.noise_free(cov), names)
    individual = population_prediction_rmse(pm, ind, names)
    for k in ("concentration", "biomarker"):
        assert individual[k]["rmse"] < 0.8 * typical[k]["rmse"]
        assert individual[k]["n_obs"] == typical[k]["n_obs"] > 100
