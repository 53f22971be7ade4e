"""`pkpd-jax classify` and the shipped model selectors: study-level PK/PD class choice.

The selectors are the checkpoints shipped in `pkpd_jax/amortized/pretrained/` (trained by
`experiments/train_selectors.py`); these tests check that they load with the current code, that
a clear-cut simulated study is classified correctly, the bundled example study's result, the
aggregation arithmetic, and the command-line contract.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from _cli import invoke as _cli  # the command line in-process (tests/_cli.py)

from pkpd_jax.amortized import classify as C
from pkpd_jax.amortized.batches import class_names, feature_names


def _study_frame(pk: str, pd: str | None, n: int, seed: int, times, dose_mg: float,
                 pd_times=None, lloq: float | None = None) -> pl.DataFrame:
    """A NONMEM-style frame of `n` subjects simulated around the class priors' medians (25%
    between-subject variability on the log or logit scale), 10% proportional noise on the
    concentrations and 3% on the biomarker; one bolus of `dose_mg` at 0. With `lloq` (mg/L),
    concentrations below it are reported as an assay would: ``BLQ = 1``, ``DV = lloq``."""
    import jax.numpy as jnp

    from pkpd_jax.dosing import Regimen
    from pkpd_jax.models import get_model
    from pkpd_jax.solve import simulate_population

    model = get_model(pk, pd)
    rng = np.random.default_rng(seed)
    z = 0.25 * rng.standard_normal((n, len(model.params)))  # around the median, unconstrained space
    theta = np.stack([np.asarray(p.to_natural(p.prior_loc + z[:, i]))
                      for i, p in enumerate(model.params)], axis=-1)
    all_t = np.union1d(times, pd_times if pd_times is not None else [])
    sol = simulate_population(model, jnp.asarray(theta), Regimen.make([0.0], [dose_mg]), jnp.asarray(all_t))
    conc = np.asarray(sol.conc) * (1 + 0.1 * rng.standard_normal((n, all_t.size)))
    rows = []
    for i in range(n):
        rows.append((i + 1, 0.0, dose_mg, None, 1, 1, 0))
        for j, t in enumerate(all_t):
            if t in times and t > 0:
                c = float(max(conc[i, j], 1e-9))
                blq = lloq is not None and c < lloq
                rows.append((i + 1, float(t), 0.0, lloq if blq else c, 0, 1, int(blq)))
            if pd is not None and t in pd_times:
                r = float(np.asarray(sol.resp)[i, j]) * (1 + 0.03 * rng.standard_normal())
                rows.append((i + 1, float(t), 0.0, r, 0, 2, 0))
    df = pl.DataFrame(rows, schema=["ID", "TIME", "AMT", "DV", "EVID", "DVID", "BLQ"], orient="row")
    # one row per event, dose first at time 0
    return df.sort(["ID", "TIME", "EVID"], descending=[False, False, True], maintain_order=True)


RICH_TIMES = np.array([0.25, 0.5, 1, 1.5, 2, 3, 4, 6, 8, 10, 12, 16, 24, 32, 48, 72, 96])


# --------------------------------------------------------------------- the shipped checkpoints
@pytest.mark.parametrize("family", ["pk", "pd"])
def test_shipped_selector_loads_and_matches_the_feature_code(family):
    path = C.pretrained_checkpoint(family)
    assert (path / "best.eqx").stat().st_size < 2_000_000  # package data stays small
    ckpt = C.load_selector(None, family)
    assert ckpt.class_names == class_names(family)
    assert tuple(ckpt.info["feature_names"]) == feature_names(family)
    assert ckpt.info["family"] == family and ckpt.meta["kind"] == "model"
    ev = json.loads((path / "evaluation.json").read_text())
    assert ev["n"] >= 5_000 and ev["class_names"] == list(class_names(family))
    rec = json.loads((C.PRETRAINED_DIR / "selectors.json").read_text())["families"][family]
    assert rec["test"]["accuracy"] == pytest.approx(ev["accuracy"])
    # well above chance (0.1); exact figures in selectors.json. The PD corpus (separate
    # concentration/biomarker times, exposure-relative potency) is harder than the PK one.
    assert ev["accuracy"] > {"pk": 0.75, "pd": 0.45}[family]


def test_shipped_selectors_are_in_the_wheel_file_list():
    # hatch ships every non-ignored file under the package directory.
    import subprocess as sp

    root = Path(C.__file__).resolve().parents[2]
    if not (root / ".git").exists():
        pytest.skip("not a source checkout")
    ignored = sp.run(["git", "check-ignore", "pkpd_jax/amortized/pretrained/pk/best.eqx",
                      "pkpd_jax/amortized/pretrained/pd/best.eqx"], cwd=root, capture_output=True, text=True)
    assert ignored.stdout.strip() == ""
    text = (root / "pyproject.toml").read_text()
    assert 'packages = ["pkpd_jax"]' in text


# ----------------------------------------------------------------------------- aggregation
def test_aggregate_sums_floored_log_probabilities():
    probs = np.array([[0.6, 0.3, 0.1], [0.6, 0.3, 0.1], [0.0, 0.9, 0.1]])
    res = C.aggregate(probs, ("a", "b", "c"), floor=1e-4)
    # log-sums: a = 2 log 0.6 + log 1e-4, b = 2 log 0.3 + log 0.9, c = 3 log 0.1
    la, lb, lc = 2 * np.log(0.6) + np.log(1e-4), 2 * np.log(0.3) + np.log(0.9), 3 * np.log(0.1)
    z = np.exp([la, lb, lc])
    assert res["selected"] == "b"
    assert list(res["probabilities"]) == ["b", "c", "a"]
    np.testing.assert_allclose([res["probabilities"][k] for k in "abc"], z / z.sum(), rtol=1e-12)
    np.testing.assert_allclose(res["mean_subject_probabilities"]["a"], 0.4)
    assert res["votes"] == {"b": 1, "a": 2}


def test_pd_rows_merge_concentrations_and_biomarker_on_their_union_of_times():
    s = C.SubjectRecord(
        id="1", conc_times=np.array([1.0, 2.0, 2.0]), conc=np.array([0.5, 0.2, 0.4]),
        conc_blq=np.array([False, False, False]), resp_times=np.array([0.0, 2.0]),
        resp=np.array([10.0, 8.0]), dose_times=np.array([0.0]), dose_amounts=np.array([100.0]),
        dose_durations=np.array([0.0]),
    )
    t, c, b, r = C._merge_pd(s)
    np.testing.assert_array_equal(t, [0.0, 1.0, 2.0])
    np.testing.assert_allclose(c, [np.nan, 0.5, 0.3])  # replicates averaged
    np.testing.assert_allclose(r, [10.0, np.nan, 8.0])
    assert not b.any()
    times, values, mask = C.featurize_subjects([s], "pd", 25)
    assert times.shape == (1, 25) and mask.sum() == 3
    np.testing.assert_allclose(values[0, 2, 3], 8.0 / 10.0 - 1.0, rtol=1e-6)  # resp_rel vs baseline


# ------------------------------------------------------------------------------ classification
def test_clear_cut_one_compartment_iv_bolus_study_is_classified_pk_1c_iv():
    df = _study_frame("pk_1c_iv", None, n=16, seed=3, times=RICH_TIMES, dose_mg=100.0)
    res = C.classify_study(df)
    pk = res["pk"]
    assert pk["selected"] == "pk_1c_iv"
    assert pk["probabilities"]["pk_1c_iv"] > 0.9
    assert pk["n_subjects"] == 16 and pk["skipped"] == {}
    # the medians of the priors are CL = 5 L/h, V = 50 L; the regressed medians are close
    assert 5.0 / 1.5 < pk["params"]["CL"] < 5.0 * 1.5
    assert 50.0 / 1.5 < pk["params"]["V"] < 50.0 * 1.5
    assert res["pd"] is None and "no biomarker" in res["pd_note"]
    assert res["pd_summary"] == {"class": None, "reason": res["pd_note"]}
    assert all(r["pd"] is None and r["pd_reason"] == res["pd_note"] for r in res["subjects"])
    assert res["pk_summary"]["class"] == "pk_1c_iv" and res["pk_summary"]["votes"] == pk["votes"]["pk_1c_iv"]


PD_TIMES = np.array([0.5, 1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 72, 96, 120, 168])


def test_clear_cut_direct_inhibition_study_is_classified_pd_direct_inhib_emax():
    # An assay LLOQ of 0.002 mg/L, 1/1000 of C0 (100 mg / 50 L): without it the samples to 168 h would report
    # concentrations down to 1e-7 of the peak, which no assay measures and no corpus contains.
    df = _study_frame("pk_1c_iv", "pd_direct_inhib_emax", n=16, seed=5, times=PD_TIMES, dose_mg=100.0,
                      pd_times=np.concatenate([[0.0], PD_TIMES]), lloq=0.002)
    res = C.classify_study(df)
    assert res["notes"] == []
    assert res["pk"]["selected"] == "pk_1c_iv"
    pd = res["pd"]
    assert pd["selected"] == "pd_direct_inhib_emax" and pd["probabilities"]["pd_direct_inhib_emax"] > 0.9
    assert pd["n_subjects"] == 16
    # prior medians: R0 = 10, Imax = 0.8 (a fraction), IC50 = 1 mg/L
    assert 10.0 / 1.3 < pd["params"]["R0"] < 10.0 * 1.3 and 0.0 < pd["params"]["Imax"] < 1.0


def test_example_study_is_classified_with_the_documented_classes():
    from pkpd_jax.data.example import PD_MODEL, PK_MODEL, TRUTH, example_paths

    res = C.classify_study(example_paths()[0])
    assert res["n_subjects"] == 48
    assert res["pk"]["n_subjects"] == 36 and res["pd"]["n_subjects"] == 36  # 12 placebo left out
    assert all(v == "no dose (placebo)" for v in res["pk"]["skipped"].values())
    assert res["pk"]["selected"] == PK_MODEL
    assert res["pd"]["selected"] == PD_MODEL
    # The regressed parameters (median over subjects) are usable priors: each within 2-fold of the
    # study's typical values (subjects differ by weight, co-medication and random effects).
    for fam in ("pk", "pd"):
        for name, value in res[fam]["params"].items():
            assert 0.5 < value / TRUTH["population"][name] < 2.0, (fam, name, value)
    # the text summary shows each median with its 5th-95th percentile range
    ic50 = res["pd"]["param_ranges"]["IC50"]
    text = "\n".join(C.summary_lines(res))
    assert f"IC50={C._fmt(ic50['median'])} ({C._fmt(ic50['p5'])}-{C._fmt(ic50['p95'])})" in text


def test_concentrations_far_below_any_assay_lloq_get_a_note():
    df = _study_frame("pk_1c_iv", None, n=4, seed=5, times=PD_TIMES, dose_mg=100.0)  # no LLOQ
    subjects = C.study_subjects(df)
    note = C.range_note(subjects)
    assert note is not None and note.startswith("4 of 4 subjects") and "BLQ" in note
    res = C.classify_study(df)
    assert res["notes"] == [note] and any(line == f"note: {note}" for line in C.summary_lines(res))
    # censored at an assay LLOQ of 1/1000 of C0: within the corpora's range, no note
    assert C.range_note(C.study_subjects(_study_frame("pk_1c_iv", None, n=4, seed=5, times=PD_TIMES,
                                                      dose_mg=100.0, lloq=0.002))) is None


def test_too_few_observations_and_no_doses_are_clear_errors():
    df = pl.DataFrame({"ID": [1, 1, 1], "TIME": [0.0, 1.0, 2.0], "AMT": [100.0, 0.0, 0.0],
                       "DV": [None, 1.0, 0.5], "EVID": [1, 0, 0]})
    with pytest.raises(ValueError, match="no subject can be classified for PK.*fewer than 3"):
        C.classify_study(df)
    with pytest.raises(ValueError, match="no dose records"):
        C.classify_study(df.filter(pl.col("EVID") == 0))


# --------------------------------------------------------------------------------- command line
def test_cli_json_has_the_documented_keys():
    from pkpd_jax.data.example import example_paths

    res = _cli("classify", str(example_paths()[0]), "--json")
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert {"subjects", "pk_summary", "pd_summary", "data", "n_subjects", "pk", "pd", "pd_note"} <= set(out)
    # one record per subject; the 12 placebo subjects get null with the reason
    assert len(out["subjects"]) == 48
    placebo = [r for r in out["subjects"] if r["pk"] is None]
    assert len(placebo) == 12
    assert all(r["pd"] is None and r["pk_reason"] == "no dose (placebo)" for r in placebo)
    for r in (r for r in out["subjects"] if r["pk"] is not None):
        for fam in ("pk", "pd"):
            assert set(r[fam]) == {"class", "probs", "params"}
            assert sum(r[fam]["probs"].values()) == pytest.approx(1.0, abs=1e-5)
            assert r[fam]["class"] == max(r[fam]["probs"], key=r[fam]["probs"].get)
    for fam in ("pk", "pd"):
        summ = out[f"{fam}_summary"]
        assert summ["class"] == out[fam]["selected"] and summ["n_subjects"] == 36
        assert summ["votes"] == sum(r[fam]["class"] == summ["class"] for r in out["subjects"] if r[fam])
        assert all(v["p5"] <= v["median"] <= v["p95"] for v in summ["params"].values())
        assert {k: v["median"] for k, v in summ["params"].items()} == pytest.approx(out[fam]["params"])
    for fam in ("pk", "pd"):
        r = out[fam]
        assert {"selected", "probabilities", "log_probability", "mean_subject_probabilities", "votes",
                "params", "n_subjects", "skipped", "aggregation", "subjects"} <= set(r)
        assert r["selected"] == next(iter(r["probabilities"]))
        assert sum(r["probabilities"].values()) == pytest.approx(1.0)
        assert sum(r["votes"].values()) == r["n_subjects"] == len(r["subjects"]) == 36
        assert all(v > 0 for v in r["params"].values())


def test_cli_bad_input_is_a_one_line_error(tmp_path: Path):
    res = _cli("classify", str(tmp_path / "missing.csv"))
    assert res.returncode == 1 and res.stderr.startswith("error: no data file")
    assert len(res.stderr.strip().splitlines()) == 1
    bad = tmp_path / "placebo.csv"
    bad.write_text("ID,TIME,AMT,DV,EVID,DVID\n1,0,0,10,0,2\n1,24,0,9,0,2\n")
    res = _cli("classify", str(bad))
    assert res.returncode == 1 and res.stderr.startswith("error: the study has no dose records")
    assert len(res.stderr.strip().splitlines()) == 1


# ------------------------------------------------------------------------------------ pipeline
def test_run_selects_the_model_with_the_shipped_selectors(tmp_path: Path):
    from pkpd_jax.data.example import example_paths
    from pkpd_jax.pipeline import DEFAULT_PIPELINE_MODEL, select_model

    sel = select_model(example_paths()[0], None, None)
    assert sel["selected"] == {"pk": "pk_2c_iv_infusion", "pd": "pd_indirect_inhib_kin"}
    assert (sel["pk"], sel["pd"]) == DEFAULT_PIPELINE_MODEL and "fitted_reason" not in sel
    assert sel["how"].startswith("amortized model selection")
    assert next(iter(sel["probabilities"]["pk"])) == "pk_2c_iv_infusion"
    # a user-given PD model is kept while the selector picks the PK class
    sel = select_model(example_paths()[0], None, "pd_direct_emax")
    assert sel["pd"] == "pd_direct_emax" and "given on the command line" in sel["fitted_reason"]
    # an unreadable study falls back to the default model, saying why
    bad = tmp_path / "bad.csv"
    bad.write_text("ID,TIME\n")
    sel = select_model(bad, None, None)
    assert (sel["pk"], sel["pd"]) == DEFAULT_PIPELINE_MODEL and "could not classify" in sel["how"]


def test_a_depot_class_is_not_fitted_to_infusion_doses(tmp_path: Path):
    from pkpd_jax.data.example import example_paths
    from pkpd_jax.pipeline import unfittable_pk

    assert unfittable_pk("pk_2c_iv_infusion", example_paths()[0]) is None
    why = unfittable_pk("pk_1c_oral", example_paths()[0])
    assert why is not None and "infusions" in why


def test_selector_classify_and_the_old_classify_alias_print_the_same():
    from pkpd_jax.data.example import example_paths

    new = _cli("selector", "classify", str(example_paths()[0]))
    old = _cli("classify", str(example_paths()[0]))
    assert new.returncode == old.returncode == 0, new.stderr + old.stderr
    assert new.stdout == old.stdout and "PK: pk_2c_iv_infusion" in new.stdout
