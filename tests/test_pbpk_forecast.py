"""PBPK Transformer forecaster: corpus, network shapes, training (a fast loss-falls check; the
overfit of a tiny corpus is `slow`), save/load, errors."""

from __future__ import annotations

import equinox as eqx
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.linalg import expm

from pkpd_jax._x64 import x64
from pkpd_jax.dosing import Regimen
from pkpd_jax.models import get_model
from pkpd_jax.pbpk import IV_CMT, ORAL_CMT, Drug, pbpk_params
from pkpd_jax.pbpk.forecast import (
    DESCRIPTOR_NAMES,
    CorpusConfig,
    ForecastConfig,
    PBPKForecaster,
    build_corpus,
    derived_features,
    descriptors,
    evaluate,
    load_forecaster,
    predict,
    save_forecaster,
    single_dose_curves,
    species_grid,
    train_forecaster,
)
from pkpd_jax.solve import SolverConfig, simulate_population


TINY = CorpusConfig(n_drugs=10, subjects_per_drug=2, n_times=10, k_obs=3, split=(0.6, 0.2), seed=3)
NAMES = get_model("pbpk_whole_body").param_names


@pytest.fixture(scope="module")
def corpus():
    return build_corpus(TINY)


TINY_NET = dict(d_model=16, n_heads=2, n_layers=1, d_ff=32, batch_size=12, lr=1e-2, warmup_frac=0.02)


@pytest.fixture(scope="module")
def trained(corpus):
    """A few dozen steps of a tiny network: enough to check that training lowers the loss."""
    return train_forecaster(corpus, ForecastConfig(epochs=40, **TINY_NET), seed=0, keep_best=False)


def test_corpus_is_deterministic_and_split_by_drug(corpus):
    again = build_corpus(TINY)
    for name in ("desc", "times", "log_conc", "log_obs", "quantified", "theta", "split"):
        np.testing.assert_array_equal(getattr(corpus, name), getattr(again, name))
    other = build_corpus(CorpusConfig(**{**TINY.to_dict(), "seed": 4}))
    assert not np.allclose(other.log_conc, corpus.log_conc)
    # Every drug is in exactly one split; the sizes follow `split`.
    for d in np.unique(corpus.drug_id):
        assert np.unique(corpus.split[corpus.drug_id == d]).size == 1
    assert [np.unique(corpus.drug_id[corpus.indices(s)]).size for s in ("train", "val", "test")] == [6, 2, 2]
    assert corpus.desc.shape == (20, len(DESCRIPTOR_NAMES)) and corpus.log_conc.shape == (20, 10)
    # Species grids: human 0.25-48 h, others scaled by (BW/73)^0.25.
    np.testing.assert_allclose(species_grid("human", TINY)[[0, -1]], [0.25, 48.0])
    np.testing.assert_allclose(species_grid("rat", TINY)[0], 0.25 * (0.25 / 73.0) ** 0.25)


def test_corpus_curves_match_matrix_exponential(corpus):
    """The corpus curves equal expm(K t) y0 of the model's linear generator (scipy)."""
    model = get_model("pbpk_whole_body")
    for i in range(3):
        with x64():
            K = np.asarray(model.linear_generator(jnp.asarray(corpus.theta[i], jnp.float64)))
        y0 = np.zeros(K.shape[-1])
        y0[corpus.route_cmt[i]] = corpus.dose[i]
        scale = corpus.theta[i, NAMES.index("V_venous")] * corpus.theta[i, NAMES.index("BP")]
        ref = np.array([(expm(K * t) @ y0)[1] for t in corpus.times[i]]) / scale
        q = corpus.quantified[i]
        np.testing.assert_allclose(np.exp(corpus.log_conc[i][q]), ref[q], rtol=1e-7)
    # Observations carry the stated noise around the truth.
    resid = (corpus.log_obs - corpus.log_conc) / TINY.noise_sd
    assert 0.8 < resid.std() < 1.2


def test_single_dose_curves_match_the_simulator():
    """`single_dose_curves` (exact propagation) equals the solve layer's ODE simulation, for IV and
    oral doses on an uneven grid, and rejects unsorted times."""
    model = get_model("pbpk_whole_body")
    drugs = [Drug(logp=2.0, fu=0.2, clint=5.0), Drug(logp=0.5, fu=0.6, kind="acid", pka=4.0, clint=1.0)]
    theta = np.array([[pbpk_params("rat", d, 0.3)[k] for k in NAMES] for d in drugs])
    dose, cmt = np.array([1.0, 2.0]), np.array([IV_CMT, ORAL_CMT])
    times = np.tile(np.array([0.1, 0.3, 1.0, 2.5, 8.0, 24.0]), (2, 1))
    conc = single_dose_curves(theta, dose, cmt, times, NAMES)
    reg = Regimen(time=np.zeros((2, 1)), amount=dose[:, None], duration=np.zeros((2, 1)), cmt=cmt[:, None])
    with x64():
        cfg = SolverConfig(method="ode", rtol=1e-10, atol=1e-14, max_steps=100_000)
        sol = simulate_population(model, jnp.asarray(theta), reg, jnp.asarray(times), config=cfg)
        ode = np.asarray(sol.conc)
    np.testing.assert_allclose(conc, ode, rtol=1e-6)
    with pytest.raises(ValueError, match="non-decreasing"):
        single_dose_curves(theta, dose, cmt, times[:, ::-1], NAMES)


def test_descriptors_and_derived_features():
    drug = Drug(logp=2.0, fu=0.1, kind="base", pka=9.0, clint=10.0, ka=1.2, fa=0.8)
    d = descriptors(drug, "rat", 0.3, 1.5, "oral")
    assert d.shape == (len(DESCRIPTOR_NAMES),)
    named = dict(zip(DESCRIPTOR_NAMES, d))
    assert named["species_rat"] == 1.0 and named["base"] == 1.0 and named["oral"] == 1.0
    assert named["pka_minus_7"] == pytest.approx(2.0) and named["log10_dose"] == pytest.approx(np.log10(1.5))
    p = pbpk_params("rat", drug, 0.3)
    theta = np.array([[p[k] for k in NAMES]])
    np.testing.assert_allclose(d[-4:], derived_features(theta, np.array([0.3]))[0])
    # CL / Vss: consistent with the two per-kg features.
    assert named["log10_kel"] == pytest.approx(named["log10_cl_per_kg"] - named["log10_vss_per_kg"])


def test_model_output_shapes(trained):
    # The fixture's network, traced without compiling (`eqx.filter_eval_shape`): shapes and errors.
    net = trained.model
    assert isinstance(net, PBPKForecaster) and net.n_desc == len(DESCRIPTOR_NAMES)
    t = np.geomspace(0.25, 48, 7)
    obs = np.arange(7) < 2
    out = eqx.filter_eval_shape(net, np.zeros(len(DESCRIPTOR_NAMES)), t, np.where(obs, 0.3, np.nan), obs)
    assert out.shape == (7,) and out.dtype == np.float32
    with pytest.raises(ValueError, match="desc"):
        eqx.filter_eval_shape(net, np.zeros(3), t, t, obs)
    with pytest.raises(ValueError, match="share one shape"):
        eqx.filter_eval_shape(net, np.zeros(len(DESCRIPTOR_NAMES)), t, t[:3], obs)


def test_training_lowers_the_loss(trained, corpus):
    h = trained.history
    assert len(h) == 40 and all(np.isfinite(r["val_loss"]) for r in h)
    assert h[-1]["train_loss"] < 0.3 * h[0]["train_loss"]
    fit = evaluate(trained.model, trained.norm, corpus, "train")
    assert fit["overall"]["median_fold_error"] < fit["baseline_loglinear"]["median_fold_error"]
    assert fit["arrays"]["log_pred"].shape == (corpus.indices("train").size, TINY.n_times)


@pytest.mark.slow
def test_tiny_model_overfits_tiny_corpus(corpus):
    trained = train_forecaster(corpus, ForecastConfig(epochs=150, **TINY_NET), seed=0, keep_best=False)
    h = trained.history
    assert len(h) == 150
    assert h[-1]["train_loss"] < 0.05 * h[0]["train_loss"]
    fit = evaluate(trained.model, trained.norm, corpus, "train")
    assert fit["overall"]["median_fold_error"] < 1.25
    assert fit["overall"]["median_fold_error"] < fit["baseline_loglinear"]["median_fold_error"]
    assert fit["arrays"]["log_pred"].shape == (corpus.indices("train").size, TINY.n_times)


def test_save_load_round_trip(trained, corpus, tmp_path):
    path = save_forecaster(tmp_path / "f.eqx", trained)
    back = load_forecaster(path)
    idx = corpus.indices("train")  # the shapes `evaluate` compiled for
    args = (corpus.desc[idx], corpus.times[idx], corpus.log_obs[idx], corpus.log_dose_per_kg[idx])
    np.testing.assert_array_equal(predict(trained.model, trained.norm, *args),
                                  predict(back.model, back.norm, *args))
    assert back.config == trained.config and back.corpus_config == TINY
    assert back.history == trained.history


def test_bad_inputs(trained, corpus, tmp_path):
    with pytest.raises(ValueError, match="k_obs"):
        CorpusConfig(n_times=5, k_obs=5)
    with pytest.raises(ValueError, match="t_min"):
        CorpusConfig(t_min=10.0, t_max=1.0)
    with pytest.raises(ValueError, match="kind_probs"):
        CorpusConfig(kind_probs=(0.5, 0.5, 0.5))
    drug = Drug(logp=1.0, fu=0.5)
    with pytest.raises(ValueError, match="unknown species"):
        descriptors(drug, "cat", 3.0, 1.0, "iv")
    with pytest.raises(ValueError, match="route"):
        descriptors(drug, "rat", 0.25, 1.0, "im")
    with pytest.raises(ValueError, match="dose"):
        descriptors(drug, "rat", 0.25, -1.0, "iv")
    idx = corpus.indices("test")
    m, norm = trained.model, trained.norm
    args = [corpus.desc[idx], corpus.times[idx], corpus.log_obs[idx], corpus.log_dose_per_kg[idx]]
    with pytest.raises(ValueError, match="desc"):
        predict(m, norm, args[0][:, :5], *args[1:])
    bad = args[2].copy()
    bad[0, 1] = np.nan
    with pytest.raises(ValueError, match="finite"):
        predict(m, norm, args[0], args[1], bad, args[3])
    with pytest.raises(ValueError, match="k_obs"):
        predict(m, norm, *args, k_obs=TINY.n_times)
    with pytest.raises(ValueError, match="fewer than one batch"):
        train_forecaster(corpus, ForecastConfig(batch_size=1000, epochs=1))
    junk = tmp_path / "junk.eqx"
    junk.write_text('{"format": "something else"}\n')
    with pytest.raises(ValueError, match="not a PBPK forecaster"):
        load_forecaster(junk)
    with pytest.raises(FileNotFoundError):
        load_forecaster(tmp_path / "missing.eqx")
