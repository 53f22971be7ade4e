"""The fit orchestration (`pkpd_jax.inference.fit`) and the `pkpd-jax fit` command.

A short PK-only fit (linear two-compartment model, exact matrix-exponential path) of eight
subjects of the bundled example study keeps this file fast; what is checked is the plumbing:
the files a fit writes, that their numbers agree with each other and with the draws, that a
fit reloads exactly, that the same seed gives the same draws, and that bad input fails before
any sampling starts. Posterior accuracy is checked in tests/test_samplers.py (known posteriors)
and tests/test_population.py (the log-density itself).
"""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest
from _cli import invoke as _cli

from pkpd_jax.data import read_nonmem, write_nonmem
from pkpd_jax.data.example import example_paths
from pkpd_jax.inference.fit import fit, load_fit
from pkpd_jax.models import UnknownModelError
from pkpd_jax.report.fit_plots import FIT_PLOTS, fit_plots


PK = "pk_2c_iv_infusion"
SETTINGS = dict(chains=2, warmup=40, samples=30, seed=3, map_steps=60, progress=False)


@pytest.fixture(scope="module")
def small_study(tmp_path_factory):
    """Eight subjects of the example study that have concentrations (CSV path)."""
    df = read_nonmem(example_paths()[0])
    with_pk = df.filter(pl.col("DVID") == 1)["ID"].unique().sort()[:8]
    path = tmp_path_factory.mktemp("data") / "small.csv"
    write_nonmem(df.filter(pl.col("ID").is_in(with_pk.to_list())), path)
    return path


@pytest.fixture(scope="module")
def fitted(small_study, tmp_path_factory):
    out = tmp_path_factory.mktemp("fit")
    fr = fit(small_study, pk=PK, out=out, plots=fit_plots, log=lambda *a: None, **SETTINGS)
    return fr, out


def test_fit_writes_every_output(fitted):
    fr, out = fitted
    for name in (
        "summary.json",
        "draws.parquet",
        "positions.npy",
        "fit.json",
        "data.csv",
        "trace.png",
        "pairs.png",
        "vpc.png",
        "individual_fits.png",
    ):
        assert (out / name).exists() and (out / name).stat().st_size > 0, name
    summary = json.loads((out / "summary.json").read_text())
    expected = {
        "CL",
        "V1",
        "Q",
        "V2",
        "BW_CL",
        "BW_V",
        "COMED_CL",
        "omega_CL",
        "omega_V1",
        "sigma_prop_PK",
        "sigma_add_PK",
    }
    assert expected <= set(summary["params"]), sorted(summary["params"])
    assert not any(k.endswith("_PD") for k in summary["params"])  # PK-only fit
    for stats in summary["params"].values():
        assert {"mean", "sd", "q2.5", "q97.5", "rhat", "ess_bulk"} <= set(stats)
        assert stats["q2.5"] <= stats["mean"] <= stats["q97.5"]
    assert summary["sampler"] == "qhmc"
    assert isinstance(summary["divergences"], int)
    assert summary["wall_s"] > 0
    assert summary["chains"] == 2 and summary["draws_per_chain"] == 30
    steps = np.asarray(fr.result.num_integration_steps)
    assert summary["leapfrog_steps_per_draw"] == pytest.approx(steps.mean()) and steps.min() >= 1
    assert summary["warmup_leapfrog_steps"] == int(np.sum(fr.result.warmup_steps)) >= 40  # 40 warm-up its


def test_summary_agrees_with_draws(fitted):
    """summary.json is computed from the same draws that draws.parquet holds."""
    fr, out = fitted
    summary = json.loads((out / "summary.json").read_text())["params"]
    draws = pl.read_parquet(out / "draws.parquet")
    assert draws.height == 2 * 30
    for name in ("CL", "V1", "BW_CL", "omega_CL", "sigma_prop_PK"):
        col = draws[name].to_numpy()
        assert summary[name]["mean"] == pytest.approx(col.mean(), rel=1e-10)
        assert summary[name]["sd"] == pytest.approx(col.std(ddof=1), rel=1e-6)
        assert summary[name]["q2.5"] == pytest.approx(np.quantile(col, 0.025), rel=1e-6)
    # Individual parameters: one column per subject and parameter, consistent with the
    # covariate equation CL_i = CL (BW/70)^BW_CL COMED_CL^COMED exp(eta).
    ids = fr.population.dataset.ids
    ind = np.stack([draws[f"CL[{i}]"].to_numpy() for i in ids], axis=1)
    assert ind.shape == (60, 8) and np.all(ind > 0)
    pos_ind = np.asarray(fr.individual_draws())[..., list(fr.population.param_names).index("CL")]
    np.testing.assert_allclose(ind, pos_ind.reshape(60, 8), rtol=1e-12)


def test_fit_reloads_exactly(fitted):
    fr, out = fitted
    pm, positions, summary = load_fit(out)
    assert positions.shape == (2, 30, pm.dim)
    np.testing.assert_array_equal(positions, np.asarray(fr.result.draws))
    np.testing.assert_allclose(
        np.asarray(pm.individual_parameters(positions)),
        np.asarray(fr.individual_draws()),
        rtol=1e-12,
    )
    lp_saved = np.asarray(fr.population.logdensity(positions[0, -1]))
    assert float(pm.logdensity(positions[0, -1])) == pytest.approx(float(lp_saved), rel=1e-12)


def test_auto_parametrisation_centres_the_informed_random_effects(small_study, tmp_path, monkeypatch):
    """`parametrization="auto"` decides per random effect: effects whose median data weight is at
    least AUTO_CENTERED_MIN_WEIGHT stay centred, the others are non-centred (mapped from the
    centred starting point); the mixed choice is saved and reloaded with the fit. The fit caps
    QHMC's warm-up at WARMUP_MAX_STEPS leapfrog steps per iteration (patched to 2 here)."""
    from pkpd_jax.inference import fit as fit_module
    from pkpd_jax.inference.population import PopulationModel

    real = PopulationModel.data_weight

    def weights(self, position, curvature):  # CL and V1 well informed, the rest not
        w = real(self, position, curvature)
        informed = np.isin(np.array(self.bsv_params), ["CL", "V1"])
        return np.where(informed[None, :], 50.0, 0.5) + 0 * w

    monkeypatch.setattr(PopulationModel, "data_weight", weights)
    monkeypatch.setattr(fit_module, "WARMUP_MAX_STEPS", 2)  # and the warm-up cap (one fit for both)
    lines = []
    fr = fit(small_study, pk=PK, out=tmp_path, plots=False, log=lines.append,
             **{**SETTINGS, "warmup": 6, "samples": 4, "map_steps": 10})
    assert np.max(fr.result.warmup_steps) <= 2
    pm = fr.population
    assert pm.parametrization == "mixed" and pm.centered_params == ("CL", "V1")
    assert any("non-centred Q, V2" in line for line in lines), lines
    assert np.all(np.isfinite(np.asarray(fr.result.logdensity)))
    assert fit_module.AUTO_CENTERED_MIN_WEIGHT == 2.0
    monkeypatch.undo()
    loaded, positions, _ = load_fit(tmp_path)
    assert loaded.centered_params == ("CL", "V1")
    np.testing.assert_allclose(np.asarray(loaded.individual_parameters(positions)),
                               np.asarray(fr.individual_draws()), rtol=1e-12)


@pytest.mark.slow  # a second full fit (compile + sample); the samplers' own seed test is fast
def test_same_seed_same_draws(small_study, fitted):
    fr, _ = fitted
    again = fit(small_study, pk=PK, out=None, plots=False, log=lambda *a: None, **SETTINGS)
    np.testing.assert_array_equal(np.asarray(again.result.draws), np.asarray(fr.result.draws))


def test_fit_rejects_bad_settings_before_sampling(small_study):
    with pytest.raises(ValueError, match="chains >= 1"):
        fit(small_study, pk=PK, chains=0)
    with pytest.raises(ValueError, match="metric must be 'diag' or 'low_rank', got 'dense'"):
        fit(small_study, pk=PK, metric="dense")
    with pytest.raises(UnknownModelError, match="unknown PK model 'pk_2c_iv_infusionX'"):
        fit(small_study, pk=PK + "X")


def test_cli_fit_errors_are_specific(small_study, tmp_path):
    # A PD model on data without any biomarker observations.
    df = read_nonmem(small_study)
    pk_only = tmp_path / "pk_only.csv"
    write_nonmem(df.filter((pl.col("EVID") == 1) | (pl.col("DVID") == 1)), pk_only)
    r = _cli("fit", str(pk_only), "--pk", PK, "--pd", "pd_indirect_inhib_kin", "--out", str(tmp_path / "o1"))
    assert r.returncode == 1 and "error:" in r.stderr and "PD" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    # A covariate column that is not in the data.
    r = _cli("fit", str(small_study), "--pk", PK, "--covariates", "AGE:CL", "--out", str(tmp_path / "o2"))
    assert r.returncode == 1 and "AGE" in r.stderr and "Traceback" not in r.stderr, r.stderr
    # All doses zero.
    zero = tmp_path / "zero.csv"
    df.with_columns(pl.col("AMT") * 0.0).write_csv(zero)  # bypass the writer's own check
    r = _cli("fit", str(zero), "--pk", PK, "--out", str(tmp_path / "o3"))
    assert r.returncode == 1 and "dose" in r.stderr.lower() and "Traceback" not in r.stderr, r.stderr
    assert not (tmp_path / "o1").exists() and not (tmp_path / "o3").exists()


def test_cli_fit_runs(small_study, tmp_path):
    out = tmp_path / "cli_fit"
    r = _cli(
        "fit",
        str(small_study),
        "--pk",
        PK,
        "--chains",
        "2",
        "--warmup",
        "20",
        "--samples",
        "10",
        "--seed",
        "1",
        "--no-plots",
        "--out",
        str(out),
    )
    assert r.returncode == 0, r.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["chains"] == 2 and summary["draws_per_chain"] == 10
    assert "CL" in r.stdout and "summary.json" in r.stdout


def test_low_rank_metric_only_where_a_window_can_support_it():
    """The low-rank estimate needs 2·dim draws pooled over chains in one slow window: the bundled
    study's full fit (4 chains x 1000 warm-up: a 500-iteration window, 2000 draws for 357
    unknowns) has it, `run --fast` (2 chains x 200) does not and falls back to the diagonal."""
    from pkpd_jax.inference.fit import _low_rank_can_engage

    assert _low_rank_can_engage(1000, 4, 357)
    assert not _low_rank_can_engage(200, 2, 357)
    assert not _low_rank_can_engage(0, 4, 10)
    assert _low_rank_can_engage(200, 4, 10)


def test_fit_caps_warm_up_trajectories(fitted):
    """`fit` caps QHMC's warm-up at WARMUP_MAX_STEPS leapfrog steps per iteration (sampling is
    not capped; a cap of 2 is checked in the parametrisation test's fit)."""
    from pkpd_jax.inference import fit as fit_module

    fr, _ = fitted
    assert 1 <= np.max(fr.result.warmup_steps) <= fit_module.WARMUP_MAX_STEPS


def test_fit_directory_round_trip(fitted, tmp_path):
    """`save_fit` then `load_fit` (the fit directory format, no plotting) gives back the same
    population model settings and exactly the same draws; `fit_plots` adds exactly FIT_PLOTS."""
    from pkpd_jax.inference.fitdir import FIT_FILES, load_fit as load_dir, save_fit

    fr, out = fitted
    pm = fr.population
    meta = json.loads((out / "fit.json").read_text())
    save_fit(fr, tmp_path, meta={k: v for k, v in meta.items() if k != "data"})
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(FIT_FILES)  # no plots
    loaded, positions, summary = load_dir(tmp_path)
    np.testing.assert_array_equal(positions, np.asarray(fr.result.draws))
    assert loaded.model.name == pm.model.name
    assert [e.name for e in loaded.effects] == [e.name for e in pm.effects]
    assert loaded.parametrization == pm.parametrization
    assert loaded.centered_params == pm.centered_params
    assert list(loaded.names) == list(pm.names) and loaded.dim == pm.dim
    assert list(loaded.dataset.ids) == list(pm.dataset.ids)
    assert loaded.prior_table() == pm.prior_table()
    assert summary == json.loads((out / "summary.json").read_text())
    assert summary["params"].keys() == set(pm.names)
    x = positions[-1, -1]
    assert float(loaded.logdensity(x)) == pytest.approx(float(pm.logdensity(x)), rel=1e-12)
    assert set(FIT_PLOTS) <= {p.name for p in out.iterdir()}


def test_fit_takes_the_plotter_from_the_caller(small_study):
    """The inference layer does not pick a plotter: `plots=True` says what to pass instead."""
    with pytest.raises(TypeError, match="plots=pkpd_jax.report.fit_plots.fit_plots"):
        fit(small_study, pk=PK, plots=True)
    with pytest.raises(TypeError, match="plots must be a function"):
        fit(small_study, pk=PK, plots="yes")
