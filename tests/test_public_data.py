"""The shipped public data sets (Theoph, Phenobarb), their conversion to NONMEM-style tables, the
identifiability check of the fit diagnostics, and (slow) population fits against the literature.

Loader numbers are checked against the raw CSVs (R's values as they come): Theoph's doses in mg
are Dose (mg/kg) x Wt; its pre-dose samples at TIME 0 are kept as ignored rows, with a warning for
the positive ones; Phenobarb's doses and concentrations are kept as amounts (mg) and mg/L.
The identifiability check is tested on a Gaussian conjugate case whose posterior SD is known.
"""

from __future__ import annotations

import json
import math
import re
import warnings

import jax


jax.config.update("jax_enable_x64", True)

import numpy as np  # noqa: E402
import polars as pl  # noqa: E402
import pytest  # noqa: E402

from pkpd_jax.data import read_nonmem, summarize, validate  # noqa: E402
from pkpd_jax.data.public import (  # noqa: E402
    LITERATURE,
    PUBLIC_DATASETS,
    PublicDataWarning,
    load_public,
    load_raw,
    phenobarb,
    public_dataset,
    theoph,
)
from pkpd_jax.inference import diagnostics as dg  # noqa: E402
from pkpd_jax.inference.fit import FitResult, _summary_json  # noqa: E402
from pkpd_jax.inference.population import PopulationDataWarning, PopulationModel  # noqa: E402
from pkpd_jax.inference.samplers import MCMCResult  # noqa: E402
from pkpd_jax.models import get_model  # noqa: E402


def _quiet(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PublicDataWarning)
        return fn(*args, **kwargs)


# ---------------------------------------------------------------------------- raw files
def test_raw_files_are_as_they_come():
    th = load_raw("theoph")
    assert th.columns == ["Subject", "Wt", "Dose", "Time", "conc"]
    assert th.height == 132 and th["Subject"].n_unique() == 12
    assert th.row(0) == (1, 79.6, 4.02, 0.0, 0.74)
    ph = load_raw("phenobarb")
    assert ph.columns == ["Subject", "Wt", "Apgar", "ApgarInd", "time", "dose", "conc"]
    assert ph.height == 744 and ph["Subject"].n_unique() == 59
    assert ph["dose"].null_count() == 155 and ph["conc"].null_count() == 589
    assert ph.row(1) == (1, 1.4, 7, ">= 5", 2.0, None, 17.3)
    with pytest.raises(ValueError, match="unknown public data set 'warfarin'"):
        load_raw("warfarin")


# ---------------------------------------------------------------------------- Theoph
def test_theoph_doses_in_mg_from_mg_per_kg():
    with pytest.warns(PublicDataWarning):
        data = theoph()
    df = data.frame
    doses = df.filter(pl.col("EVID") == 1)
    assert doses.height == 12
    assert doses["TIME"].to_list() == [0.0] * 12
    amt = dict(zip(doses["ID"].to_list(), doses["AMT"].to_list()))
    assert amt["1"] == pytest.approx(4.02 * 79.6) and amt["1"] == 319.992
    assert amt["9"] == pytest.approx(3.1 * 86.4) and amt["9"] == 267.84
    assert amt["12"] == 320.65  # 5.3 mg/kg x 60.5 kg
    assert doses["CMT"].to_list() == [0.0] * 12  # the model's default (gut) compartment
    # BW is the weight, one value per subject
    assert df.group_by("ID").agg(pl.col("BW").n_unique())["BW"].max() == 1
    assert df.filter(pl.col("ID") == "5")["BW"][0] == 54.6
    assert any("Dose x Wt" in n and "267.84-320.65 mg" in n for n in data.notes)


def test_theoph_predose_samples_ignored_with_a_warning():
    with pytest.warns(PublicDataWarning, match=r"3 pre-dose concentration\(s\) > 0") as rec:
        data = theoph()
    text = str(rec[0].message)
    assert "subject 1: 0.74 mg/L" in text and "subject 7: 0.15 mg/L" in text
    assert "subject 10: 0.24 mg/L" in text and "MDV 1" in text
    df = data.frame
    summary = summarize(df)
    assert (summary.n_subjects, summary.n_doses, summary.n_obs, summary.n_ignored) == (12, 12, 120, 12)
    # each subject: the TIME 0 sample comes first (pre-dose), then the dose, then 10 samples
    first = df.group_by("ID", maintain_order=True).head(2)
    assert first["EVID"].to_list() == [0.0, 1.0] * 12
    assert first.filter(pl.col("EVID") == 0)["MDV"].to_list() == [1.0] * 12
    assert df.filter((pl.col("ID") == "1") & (pl.col("EVID") == 0))["DV"][0] == 0.74
    ds = data.dataset()
    assert ds.obs_time.shape == (12, 11)
    assert int(np.asarray(ds.obs_mask).sum()) == 120 and int(np.asarray(ds.obs_present).sum()) == 132


def test_theoph_predose_keep_and_drop():
    with warnings.catch_warnings():
        warnings.simplefilter("error", PublicDataWarning)  # 'keep' excludes nothing: no warning
        kept = theoph(predose="keep")
    assert summarize(kept.frame).n_obs == 132 and summarize(kept.frame).n_ignored == 0
    # the population model itself leaves the 3 positive pre-dose values out, and says so
    with pytest.warns(PopulationDataWarning, match=r"3 concentration\(s\) > 0 at or before the first dose"):
        pm = PopulationModel(get_model("pk_1c_oral"), kept.dataset())
    assert int(np.asarray(pm._mask).sum()) == 120
    with pytest.warns(PublicDataWarning, match="are removed"):
        dropped = theoph(predose="drop")
    assert dropped.frame.height == 132 and summarize(dropped.frame).n_obs == 120
    assert dropped.frame.filter(pl.col("EVID") == 0)["TIME"].min() > 0
    with pytest.raises(ValueError, match="predose must be"):
        theoph(predose="baseline")


# ---------------------------------------------------------------------------- Phenobarb
def test_phenobarb_doses_concentrations_and_covariates():
    data = phenobarb()
    df, raw = data.frame, data.raw
    s = summarize(df)
    assert (s.n_subjects, s.n_doses, s.n_obs, s.n_ignored) == (59, 589, 155, 0)
    assert s.covariates == ["BW", "APGAR", "APGAR_LOW"]
    one = df.filter(pl.col("ID") == "1")
    assert one.filter(pl.col("EVID") == 1)["AMT"].to_list() == [25.0] + [3.5] * 9
    assert one.filter(pl.col("EVID") == 0)["DV"].to_list() == [17.3, 31.0]
    assert one["BW"][0] == 1.4 and one["APGAR"][0] == 7.0 and one["APGAR_LOW"][0] == 0.0
    # ApgarInd '< 5' <-> APGAR_LOW 1 <-> Apgar < 5, per infant
    per = df.group_by("ID").agg(pl.col("APGAR").first(), pl.col("APGAR_LOW").first())
    assert per.filter(pl.col("APGAR_LOW") == 1).height == raw.filter(
        pl.col("ApgarInd") == "< 5")["Subject"].n_unique()
    assert (per["APGAR_LOW"] == (per["APGAR"] < 5).cast(pl.Float64)).all()
    # sparse: concentrations per infant
    n_conc = df.filter(pl.col("EVID") == 0).group_by("ID").len()["len"].to_numpy()
    assert {k: int(np.sum(n_conc == k)) for k in range(1, 7)} == {1: 9, 2: 15, 3: 27, 4: 6, 5: 1, 6: 1}
    assert any("9 subjects with 1" in n for n in data.notes)


def test_phenobarb_dose_units_are_total_mg():
    """The unit decision documented in the loader: the first dose over the birth weight is a round
    10 or 20 (mg/kg) for most infants, which only a total dose in mg explains."""
    df = phenobarb().frame
    first = df.filter(pl.col("EVID") == 1).group_by("ID", maintain_order=True).first()
    per_kg = (first["AMT"] / first["BW"]).to_numpy()
    round_ = np.isclose(per_kg, 10.0, atol=0.05) | np.isclose(per_kg, 20.0, atol=0.05)
    assert round_.sum() == 37, per_kg  # of 59; the others 9.5-29.5 (rounded amounts)
    assert np.all((per_kg > 9) & (per_kg < 30))
    literal = phenobarb(dose_basis="per_kg").frame
    one = literal.filter(pl.col("ID") == "1")
    assert one.filter(pl.col("EVID") == 1)["AMT"][0] == pytest.approx(25.0 * 1.4 / 1000)
    assert one.filter(pl.col("EVID") == 0)["DV"][0] == pytest.approx(17.3 / 1000)
    with pytest.raises(ValueError, match="dose_basis must be"):
        phenobarb(dose_basis="ug")


def test_public_dataset_writes_a_valid_nonmem_csv(tmp_path):
    frame = _quiet(public_dataset, "theoph", out=tmp_path)
    path = tmp_path / "theoph.csv"
    assert path.exists()
    assert str(validate(path)) == str(summarize(frame))
    back = read_nonmem(path)
    np.testing.assert_allclose(back["AMT"].to_numpy(), frame["AMT"].to_numpy())
    ph = public_dataset("Phenobarb", out=tmp_path)
    assert (tmp_path / "phenobarb.csv").exists() and ph.height == 744
    assert set(PUBLIC_DATASETS) == {"theoph", "phenobarb"}
    with pytest.raises(ValueError, match="available: theoph, phenobarb"):
        public_dataset("pheno")


# ---------------------------------------------------------------------------- identifiability
def test_half_normal_log_sd():
    z = np.abs(np.random.default_rng(0).standard_normal(400_000)) * 0.5
    assert np.std(np.log(z)) == pytest.approx(dg.HALF_NORMAL_LOG_SD, rel=0.01)
    assert dg.HALF_NORMAL_LOG_SD == pytest.approx(math.pi / math.sqrt(8))


def test_prior_sd_ratio_gaussian_known_answer():
    """log θ ~ N(m, 1) a priori; n observations y ~ N(log θ, σ²): the posterior SD of log θ is
    1/√(1 + n/σ²). Draws from that exact posterior give that ratio; a parameter drawn from its
    prior (a half-normal ω: its log has SD π/√8) gives ratio 1 and is the only one flagged."""
    rng = np.random.default_rng(1)
    sigma = 0.5
    table = [
        {"name": "CL", "distribution": "log-normal", "scale": 1.0},
        {"name": "V", "distribution": "log-normal", "scale": 1.0},
        {"name": "F", "distribution": "logit-normal", "scale": 2.0},
        {"name": "BW_CL", "distribution": "normal", "scale": 0.25},
        {"name": "omega_CL", "distribution": "half-normal", "scale": 0.5},
    ]
    shape = (4, 5000)
    expected = {"CL": 1 / math.sqrt(1 + 20 / sigma**2), "V": 1 / math.sqrt(1 + 1 / sigma**2)}
    draws = np.stack([
        np.exp(1.0 + expected["CL"] * rng.standard_normal(shape)),
        np.exp(3.0 + expected["V"] * rng.standard_normal(shape)),
        1 / (1 + np.exp(-(0.5 + 0.1 * rng.standard_normal(shape)))),  # logit SD 0.1 of prior 2
        0.75 + 0.2 * rng.standard_normal(shape),  # 0.2 of a prior SD 0.25
        np.abs(0.5 * rng.standard_normal(shape)),  # the prior itself
    ], axis=-1)
    names = [r["name"] for r in table]
    ratio = dg.prior_sd_ratio(draws, names, table)
    np.testing.assert_allclose(ratio, [expected["CL"], expected["V"], 0.05, 0.8, 1.0], rtol=0.03)
    assert ratio[0] == pytest.approx(0.1104, abs=0.004) and ratio[1] == pytest.approx(0.447, abs=0.015)
    # a name without a prior record: NaN, never flagged
    assert np.isnan(dg.prior_sd_ratio(draws[..., :1], ["other"], table)[0])

    summary = dg.summarize(draws, names).with_columns(pl.Series("prior_sd_ratio", ratio))
    result = MCMCResult(
        draws=draws, logdensity=np.zeros(shape), divergent=np.zeros(shape, bool),
        acceptance=np.full(shape, 0.8), energy=rng.standard_normal(shape),
        step_size=np.full(4, 0.1), num_integration_steps=np.full(shape, 10),
        inverse_mass_matrix=np.ones((4, 5)), trajectory_length=np.full(4, 1.0), sampler="qhmc",
        num_warmup=100, thin=1, seed=0, wall_s=1.0, warmup_s=0.5, interrupted=False,
    )
    warns = dg.check(result, summary)
    assert len(warns) == 2, warns
    assert warns[0].startswith("the data do not inform BW_CL: its posterior SD is 0.8")
    assert re.match(r"the data do not inform omega_CL: its posterior SD is (0\.9[6-9]|1\.0[0-4]) ", warns[1])
    assert "treat its value as an assumption" in warns[1]
    assert not any(f"inform {n}:" in w for w in warns for n in ("CL", "V", "F"))
    # a stricter threshold flags V too; without the column nothing is checked
    assert any("inform V:" in w for w in dg.check(result, summary, prior_ratio_max=0.4))
    assert dg.check(result, summary.drop("prior_sd_ratio")) == []

    # summary.json keeps its keys and adds prior_sd_ratio per parameter
    fr = FitResult(population=None, result=result, summary=summary, warnings=warns, out=None)
    params = json.loads(json.dumps(_summary_json(fr, {})))["params"]
    for name, r in zip(names, ratio):
        assert {"mean", "sd", "q2.5", "q50", "q97.5", "rhat", "ess_bulk", "ess_tail"} < set(params[name])
        assert params[name]["prior_sd_ratio"] == pytest.approx(r)


# ---------------------------------------------------------------------------- fits (slow)
FIT = dict(chains=2, warmup=300, samples=300, seed=1, progress=False, plots=False, log=lambda *a: None)


@pytest.mark.slow  # ~2 min on 2 shared cores
def test_theoph_fit_matches_nlme(tmp_path):
    from pkpd_jax.inference.fit import fit

    data = _quiet(load_public, "theoph")
    fr = fit(data.frame, pk="pk_1c_oral", out=tmp_path, **FIT)
    lit = LITERATURE["theoph"]
    summary = json.loads((tmp_path / "summary.json").read_text())["params"]
    mean = {k: v["mean"] for k, v in summary.items()}
    # typical values of a 70 kg subject against nlme's (mg/kg doses, so per kg x 70)
    assert mean["ka"] == pytest.approx(lit["ka"], rel=0.25)
    assert mean["CL"] == pytest.approx(lit["CL_70kg"], rel=0.2)
    assert mean["V"] == pytest.approx(lit["V_70kg"], rel=0.2)
    assert mean["CL"] / mean["V"] == pytest.approx(lit["ke"], rel=0.2)
    for name, key in (("ka", "ka"), ("CL", "CL_70kg"), ("V", "V_70kg")):
        assert summary[name]["q2.5"] < lit[key] < summary[name]["q97.5"]
        assert summary[name]["prior_sd_ratio"] < 0.2  # well determined
    # 12 subjects of 55-86 kg cannot inform the allometric exponents: flagged
    assert summary["BW_CL"]["prior_sd_ratio"] > 0.5
    assert any(w.startswith("the data do not inform BW_CL") for w in fr.warnings)
    for n in ("ka", "CL", "V"):
        assert not any(w.startswith(f"the data do not inform {n}:") for w in fr.warnings)


@pytest.mark.slow  # ~2-3 min on 2 shared cores
def test_phenobarb_fit_matches_grasela_donn(tmp_path):
    from pkpd_jax.inference.fit import fit

    data = load_public("phenobarb")
    fr = fit(data.frame, pk="pk_1c_iv", out=tmp_path, **FIT)
    lit = LITERATURE["phenobarb"]
    draws = fr.population_draws()
    w = float(np.median(np.asarray(fr.population.dataset.covariate("BW"))))  # 1.3 kg
    cl_kg = draws["CL"] * (w / 70.0) ** draws["BW_CL"] / w
    v_kg = draws["V"] * (w / 70.0) ** draws["BW_V"] / w
    assert float(np.median(cl_kg)) == pytest.approx(lit["CL_per_kg"], rel=0.2)
    assert float(np.median(v_kg)) == pytest.approx(lit["V_per_kg"], rel=0.15)
    summary = json.loads((tmp_path / "summary.json").read_text())["params"]
    assert summary["CL"]["prior_sd_ratio"] < 0.5 and summary["V"]["prior_sd_ratio"] < 0.5
    flagged = [n for n, v in summary.items() if v["prior_sd_ratio"] > dg.PRIOR_SD_RATIO_MAX]
    assert any(n.startswith("omega_") or n.startswith("sigma_") for n in flagged), summary
    for n in flagged:
        assert any(x.startswith(f"the data do not inform {n}:") for x in fr.warnings)


def test_cli_example_public_writes_a_fittable_table(tmp_path):
    from typer.testing import CliRunner

    from pkpd_jax.cli import app
    from pkpd_jax.data import Dataset, read_nonmem

    res = CliRunner().invoke(app, ["example", "--public", "theoph", "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    assert "suggested model: --pk pk_1c_oral" in res.output and "mg/kg" in res.output
    ds = Dataset.from_frame(read_nonmem(tmp_path / "theoph.csv"))
    assert ds.n_subjects == 12 and "BW" in ds.covariate_names
    bad = CliRunner().invoke(app, ["example", "--public", "nope", "--out", str(tmp_path)])
    assert bad.exit_code == 1 and "unknown public data set 'nope'" in bad.output
