"""Black-box tests of the `pkpd-jax` command line (the CLI contract).

The commands run in-process (`_cli.invoke`, no Python start and JAX import per call); the
console entry point itself (`python -m pkpd_jax.cli`, with its device and cache set-up) is run in
a subprocess by the model-listing and simulate-error tests."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
from _cli import invoke as cli


# The public parameter names of every class (DESIGN.md tables): a change here is an API break.
EXPECTED = {
    "pk_1c_iv": ["CL", "V"],
    "pk_1c_oral": ["ka", "CL", "V"],
    "pk_1c_oral_lag": ["ka", "CL", "V", "tlag"],
    "pk_1c_iv_mm": ["CL", "V", "Vmax", "Km"],
    "pk_2c_iv": ["CL", "V1", "Q", "V2"],
    "pk_2c_iv_infusion": ["CL", "V1", "Q", "V2"],
    "pk_2c_oral": ["ka", "CL", "V1", "Q", "V2"],
    "pk_1c_transit_abs": ["ktr", "CL", "V"],
    "pk_3c_iv": ["CL", "V1", "Q2", "V2", "Q3", "V3"],
    "pk_1c_oral_flipflop": ["ka", "CL", "V"],
    "pd_direct_linear": ["R0", "slope"],
    "pd_direct_emax": ["R0", "Emax", "EC50"],
    "pd_direct_sigmoid": ["R0", "Emax", "EC50", "gamma"],
    "pd_direct_inhib_emax": ["R0", "Imax", "IC50"],
    "pd_effect_comp_emax": ["R0", "Emax", "EC50", "ke0"],
    "pd_indirect_inhib_kin": ["R0", "kout", "IC50"],
    "pd_indirect_stim_kin": ["R0", "kout", "Emax", "EC50"],
    "pd_indirect_inhib_kout": ["R0", "kout", "Imax", "IC50"],
    "pd_indirect_stim_kout": ["R0", "kout", "Emax", "EC50"],
    "pd_transit_delay": ["R0", "Emax", "EC50", "ktr"],
}


def console(*args: str) -> subprocess.CompletedProcess:
    """The installed entry point in a fresh process."""
    return subprocess.run(
        [sys.executable, "-m", "pkpd_jax.cli", *args], capture_output=True, text=True, timeout=300
    )


def test_models_json_lists_all_twenty_classes_with_their_parameters():
    res = console("models", "--json")
    assert res.returncode == 0, res.stderr
    records = json.loads(res.stdout)
    got = {r["name"]: r["params"] for r in records}
    assert got == EXPECTED
    fam = {r["name"]: r["family"] for r in records}
    assert sum(f == "pk" for f in fam.values()) == 10
    assert all(fam[n] == n[:2] for n in fam)


def test_simulate_one_compartment_matches_closed_form(tmp_path: Path):
    out = tmp_path / "sim.csv"
    res = cli(
        "simulate", "--pk", "pk_1c_iv", "--params", "CL=5,V=50", "--doses", "100@0,100@24",
        "--times", "0,1,12,24,30", "--out", str(out),
    )
    assert res.returncode == 0, res.stderr
    df = pl.read_csv(out)
    assert df.columns == ["TIME", "CONC"]
    k = 0.1

    def c(t):
        return sum(2.0 * math.exp(-k * (t - d)) for d in (0.0, 24.0) if t > d)

    for t, got in zip(df["TIME"], df["CONC"]):
        assert got == pytest.approx(c(t), rel=1e-7, abs=1e-12)


def test_simulate_with_pd_and_infusion_writes_response(tmp_path: Path):
    out = tmp_path / "sim.csv"
    res = cli(
        "simulate", "--pk", "pk_1c_iv", "--pd", "pd_direct_emax",
        "--params", "CL=5,V=50,R0=2,Emax=10,EC50=1", "--doses", "100@0:2", "--times", "0,1,2,5",
        "--out", str(out),
    )
    assert res.returncode == 0, res.stderr
    df = pl.read_csv(out)
    assert df.columns == ["TIME", "CONC", "RESP"]
    k, rate = 0.1, 50.0
    c1 = rate / 5.0 * (1 - math.exp(-k * 1.0))  # 1 h into a 2 h infusion of 100 mg
    assert df["CONC"][1] == pytest.approx(c1, rel=1e-7)
    assert df["RESP"][1] == pytest.approx(2 + 10 * c1 / (1 + c1), rel=1e-7)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--pk", "pk_1c_ivv"], "unknown PK model 'pk_1c_ivv'. Did you mean pk_1c_iv"),
        (["--pk", "pk_1c_iv", "--params", "CL=5"], "missing: ['V']"),
        (["--pk", "pk_1c_iv", "--params", "CL=5,V=-50"], "parameter V of pk_1c_iv must be > 0"),
        (["--pk", "pk_1c_iv", "--params", "CL=5,V=50,ka=1"], "unknown: ['ka']"),
        (["--pk", "pk_1c_iv", "--params", "CL=x,V=5"], "value of 'CL' is not a number"),
        (["--pk", "pk_1c_iv", "--params", "CL=5,V=50", "--doses", "100at0"], "AMT@TIME"),
        (["--pk", "pk_1c_iv", "--params", "CL=5,V=50", "--doses", "-5@0"], "non-negative"),
        (["--pk", "pk_1c_iv", "--params", "CL=5,V=50", "--times", "0,-1"], "--times"),
    ],
)
def test_simulate_bad_input_gives_specific_error(tmp_path: Path, args, message):
    base = {"--params": "CL=5,V=50", "--doses": "100@0", "--times": "0,1"}
    full = list(args)
    for k, v in base.items():
        if k not in full:
            full += [k, v]
    res = cli("simulate", *full, "--out", str(tmp_path / "x.csv"))
    assert res.returncode == 1
    assert message in res.stderr
    assert "Traceback" not in res.stderr
    if args[0] == "--pk" and args[1] == "pk_1c_ivv":  # and through the console entry point
        res = console("simulate", *full, "--out", str(tmp_path / "x.csv"))
        assert res.returncode == 1
        assert message in res.stderr
        assert "Traceback" not in res.stderr


def test_example_writes_the_bundled_study_and_truth(tmp_path: Path):
    res = cli("example", "--out", str(tmp_path))
    assert res.returncode == 0, res.stderr
    df = pl.read_csv(tmp_path / "study.csv")
    truth = json.loads((tmp_path / "truth.json").read_text())
    assert df["ID"].n_unique() == 48
    assert set(truth["population"]) == set(EXPECTED["pk_2c_iv_infusion"] + EXPECTED["pd_indirect_inhib_kin"])
    for key in ("covariates", "omega", "residual", "seed"):
        assert key in truth


def test_validate_ok_and_bad(tmp_path: Path):
    cli("example", "--out", str(tmp_path))
    res = cli("validate", str(tmp_path / "study.csv"))
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("48 subjects, 504 doses, 864 observations (DVID 1: 288, DVID 2: 576)")
    lines = (tmp_path / "study.csv").read_text().splitlines()
    fields = lines[5].split(",")
    fields[1] = "-3"  # negative TIME in data row 5
    lines[5] = ",".join(fields)
    bad = tmp_path / "bad.csv"
    bad.write_text("\n".join(lines) + "\n")
    res = cli("validate", str(bad))
    assert res.returncode == 1
    assert "row 5, column TIME" in res.stderr
    assert "Traceback" not in res.stderr


def test_run_rejects_bad_input_before_any_work(tmp_path: Path):
    res = cli("run", "--out", str(tmp_path), "--threshold", "-1")
    assert res.returncode == 1 and "threshold must be" in res.stderr and "Traceback" not in res.stderr
    res = cli("run", "--out", str(tmp_path), "--data", str(tmp_path / "missing.csv"))
    assert res.returncode == 1 and "missing.csv" in res.stderr
    res = cli("run", "--out", str(tmp_path), "--samples", "0")
    assert res.returncode == 1 and "--samples must be >= 1" in res.stderr
    assert not (tmp_path / "fit").exists()


def _sizes(settings) -> dict:
    """The preset-table fields of a `RunSettings`."""
    from pkpd_jax.pipeline import RUN_SETTINGS

    return {k: getattr(settings, k) for k in RUN_SETTINGS["full"]}


def test_run_settings_take_the_users_chains_warmup_and_samples():
    from pkpd_jax.pipeline import RUN_SETTINGS, RunSettings

    assert _sizes(RunSettings.preset(False)) == RUN_SETTINGS["full"]
    got = RunSettings.preset(True, chains=3, warmup=0, samples=None)
    assert _sizes(got) == {**RUN_SETTINGS["fast"], "chains": 3, "warmup": 0}
    assert RUN_SETTINGS["fast"]["warmup"] == 200  # the table itself is not changed
    with pytest.raises(ValueError, match="--chains must be >= 1; got 0"):
        RunSettings.preset(False, chains=0)
    with pytest.raises(ValueError, match="--warmup must be >= 0; got -1"):
        RunSettings.preset(False, warmup=-1)


@pytest.mark.slow
def test_run_fast_answers_the_dose_questions_on_the_bundled_study(tmp_path: Path):
    """The whole pipeline (`run --fast`): data summary, fit, trials, report; every answer present."""
    res = console("run", "--fast", "--out", str(tmp_path))
    assert res.returncode == 0, res.stderr
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["n_subjects"] == 48
    cohorts = {c["dose"]: c["subjects"] for c in summary["cohorts"]}
    assert cohorts == {0.0: 12, 1.0: 12, 3.0: 12, 10.0: 12}
    answers = json.loads((tmp_path / "answers.json").read_text())
    scenarios = ("", "_bw70_140", "_nocomed")
    keys = {f"{r}_{t}{s}" for r in ("daily", "weekly") for t in (90, 75) for s in scenarios}
    assert set(answers) == keys
    for k, v in answers.items():
        assert v["dose"] is not None, k
        lo, hi = v["dose_interval"]
        assert lo <= v["dose"] <= hi, k
    for k in ("daily", "weekly"):
        for s in ("", "_bw70_140", "_nocomed"):
            assert answers[f"{k}_75{s}"]["dose"] <= answers[f"{k}_90{s}"]["dose"]
    html = (tmp_path / "report.html").read_text()
    assert "data:image/png;base64," in html and "daily_90" in html


def test_run_reuses_a_fit_only_when_data_model_seed_and_settings_match(tmp_path: Path):
    from pkpd_jax.pipeline import FIT_SETTING_KEYS, RUN_SETTINGS, RunSettings, finished_fit, select_model

    data = tmp_path / "study.csv"
    data.write_text("ID,TIME\n")
    sel = select_model(data, None, None)
    assert (sel["pk"], sel["pd"]) == ("pk_2c_iv_infusion", "pd_indirect_inhib_kin")
    given = {"pk": "pk_1c_iv", "pd": None, "how": "given on the command line"}
    assert select_model(data, "pk_1c_iv", None) == given
    fit_dir = tmp_path / "fit"
    fast = RUN_SETTINGS["fast"]
    fast_settings = RunSettings.preset(True, seed=0)
    assert not finished_fit(fit_dir, data, sel, fast_settings)  # nothing there
    fit_dir.mkdir()
    for name in ("summary.json", "positions.npy"):
        (fit_dir / name).write_text("x")
    saved = {"data": str(data.resolve()), "pk": sel["pk"], "pd": sel["pd"], "seed": 0,
             **{k: fast[k] for k in FIT_SETTING_KEYS}}
    (fit_dir / "run_settings.json").write_text(json.dumps(saved))
    assert finished_fit(fit_dir, data, sel, fast_settings)
    assert not finished_fit(fit_dir, data, sel, RunSettings.preset(True, seed=1))  # other seed
    assert not finished_fit(fit_dir, data, sel, RunSettings.preset(False, seed=0))  # other settings
    assert not finished_fit(fit_dir, data, {**sel, "pd": "pd_direct_emax"}, fast_settings)  # other model
    (fit_dir / "positions.npy").unlink()
    assert not finished_fit(fit_dir, data, sel, fast_settings)  # unfinished fit


def test_run_with_qkernel_reuses_the_fit_and_reports_the_covariate_model(tmp_path: Path):
    """`run --fast --qkernel` on a finished fit (a synthetic posterior around the truth): the
    pipeline skips the fit, trains the quantum-kernel covariate model on the posterior, answers
    the twelve dose questions with it and says so in the report."""
    import shutil

    from test_trials import make_fit_dir
    from typer.testing import CliRunner

    from pkpd_jax.cli import app
    from pkpd_jax.data.example import example_paths
    from pkpd_jax.pipeline import FIT_SETTING_KEYS, RUN_SETTINGS, select_model

    data = tmp_path / "study.csv"
    shutil.copyfile(example_paths()[0], data)
    out = tmp_path / "out"
    fit_dir = make_fit_dir(out / "fit", n_draws=40)
    sel = select_model(data, None, None)
    fast = RUN_SETTINGS["fast"]
    (fit_dir / "run_settings.json").write_text(json.dumps(
        {"data": str(data.resolve()), "pk": sel["pk"], "pd": sel["pd"], "seed": 0,
         **{k: fast[k] for k in FIT_SETTING_KEYS}}))
    res = CliRunner().invoke(app, ["run", "--data", str(data), "--out", str(out), "--fast", "--qkernel"])
    assert res.exit_code == 0, res.output
    assert "reusing the finished fit" in res.output and "quantum-kernel covariate model" in res.output
    qk = json.loads((out / "qkernel.json").read_text())
    assert qk["n_train"] == fast["qkernel_n"] and qk["kernel"] == "angle"
    assert qk["r2_noise_free"]["CL"] > 0.8
    answers = json.loads((out / "answers.json").read_text())
    assert len(answers) == 12 and all(a["dose"] is not None for a in answers.values())
    timings = json.loads((out / "timings.json").read_text())
    assert timings["qkernel_s"] > 0
    html = (out / "report.html").read_text()
    assert "Quantum-kernel covariate model" in html


def test_run_pipeline_from_python_gives_the_cli_answers_and_reads_the_study_once(tmp_path: Path, monkeypatch):
    """`run_pipeline` (the library function behind `pkpd-jax run`) on a finished fit (a synthetic
    posterior around the truth): the same dose answers and model record as the command line, and
    the study file is read from disk once."""
    import shutil

    from test_trials import make_fit_dir

    from pkpd_jax.data.example import example_paths
    from pkpd_jax.pipeline import PipelineResult, RunSettings, Study, run_pipeline, select_model

    data = tmp_path / "study.csv"
    shutil.copyfile(example_paths()[0], data)
    outs = {k: tmp_path / k for k in ("py", "cli")}
    settings = {k: RunSettings.preset(True, out=o) for k, o in outs.items()}
    for k, o in outs.items():
        fit_dir = make_fit_dir(o / "fit", n_draws=40)
        sel = select_model(data)
        (fit_dir / "run_settings.json").write_text(json.dumps(
            {"data": Study.read(data).key, "pk": sel["pk"], "pd": sel["pd"], **settings[k].fit_record()}))

    reads = []
    read_bytes = Path.read_bytes

    def counting(self):
        if self.resolve() == data.resolve():
            reads.append(self)
        return read_bytes(self)

    monkeypatch.setattr(Path, "read_bytes", counting)
    lines = []
    res = run_pipeline(data, settings["py"], log=lines.append)
    assert len(reads) == 1  # one read of the study for every stage
    monkeypatch.undo()
    assert isinstance(res, PipelineResult) and res.fit is None  # the finished fit was reused
    assert any("reusing the finished fit" in m for m in lines)
    assert res.report == outs["py"] / "report.html" and res.report.exists()
    assert res.summary["n_subjects"] == 48 and set(res.timings) >= {"validate_s", "trials_s", "total_s"}

    cli_res = cli("run", "--data", str(data), "--out", str(outs["cli"]), "--fast")
    assert cli_res.returncode == 0, cli_res.stderr
    assert "reusing the finished fit" in cli_res.stdout
    assert json.loads((outs["cli"] / "answers.json").read_text()) == res.answers
    assert json.loads((outs["py"] / "answers.json").read_text()) == res.answers
    for name in ("model_selection.json", "summary.json"):
        assert json.loads((outs["cli"] / name).read_text()) == json.loads((outs["py"] / name).read_text())


def test_study_read_once_and_its_key(tmp_path: Path):
    from pkpd_jax.data import Dataset, read_nonmem
    from pkpd_jax.data.example import example_paths
    from pkpd_jax.pipeline import Study, unfittable_pk

    path = example_paths()[0]
    study = Study.read(path)
    assert Study.read(study) is study
    assert study.key == str(Path(path).resolve())
    assert isinstance(study.dataset, Dataset) and study.dataset.n_subjects == 48
    raw = pl.read_csv(path)
    from_frame = Study.read(raw)
    assert from_frame.path is None and from_frame.frame.equals(read_nonmem(raw))
    assert from_frame.key.startswith("frame sha256:") and from_frame.key == Study.read(raw).key
    assert unfittable_pk("pk_1c_oral", from_frame) == unfittable_pk("pk_1c_oral", path)
    with pytest.raises(FileNotFoundError, match="no data file"):
        Study.read(tmp_path / "missing.csv")
    with pytest.raises(TypeError, match="Dataset"):
        Study.read(study.dataset)


def test_every_command_goes_through_the_one_error_handler():
    """Each registered command (groups and old aliases included) is wrapped by `friendly`."""
    from pkpd_jax.cli import app
    from pkpd_jax.cli._errors import friendly

    wrapper_code = friendly(lambda: None).__code__

    def commands(group, prefix=""):
        for c in group.registered_commands:
            yield prefix + c.name, c.callback
        for g in group.registered_groups:
            yield from commands(g.typer_instance, prefix + g.name + " ")

    found = dict(commands(app))
    assert {"run", "fit", "selector classify", "classify", "trial", "twin", "qkernel",
            "virtual-patients", "allometry predict"} <= set(found)
    assert all(cb.__code__ is wrapper_code for cb in found.values()), found


@pytest.mark.parametrize(
    "target, args",
    [
        ("pkpd_jax.data.validate", ["validate", "x.csv"]),
        ("pkpd_jax.models.model_catalogue", ["models"]),
        ("pkpd_jax.pipeline.run_pipeline", ["run", "--fast"]),
        ("pkpd_jax.amortized.classify.classify_study", ["selector", "classify", "{study}"]),
    ],
)
def test_a_library_error_inside_a_command_is_one_error_line(tmp_path: Path, monkeypatch, target, args):
    from pkpd_jax.data.example import example_paths
    from pkpd_jax.errors import PkpdError

    class Boom(PkpdError):
        pass

    def fail(*a, **k):
        raise Boom("something specific went wrong")

    module, name = target.rsplit(".", 1)
    monkeypatch.setattr(module + "." + name, fail)
    monkeypatch.chdir(tmp_path)
    res = cli(*(a.format(study=example_paths()[0]) for a in args))
    assert res.returncode == 1
    assert res.stderr.strip().splitlines() == ["error: something specific went wrong"]


def test_regimen_and_family_choices_match_the_library():
    from pkpd_jax.cli._options import Family, RegimenName
    from pkpd_jax.models import list_models
    from pkpd_jax.trials.dose_search import REGIMENS

    assert [r.value for r in RegimenName] == list(REGIMENS)
    assert {m[:2] for m in list_models()} == {f.value for f in Family}


def test_old_command_module_paths_still_import():
    from pkpd_jax.cli import pbpk, selector, trials, twin
    from pkpd_jax.pbpk.commands import parse_drug
    from pkpd_jax.trials.commands import parse_bw_range
    from pkpd_jax.twin import run_twin as twin_run
    from pkpd_jax.twin.commands import run_twin

    assert parse_bw_range is trials.parse_bw_range and run_twin is twin_run and twin.twin_command
    assert parse_drug is pbpk.parse_drug
    from pkpd_jax.amortized.classify_commands import classify_command

    assert classify_command is selector.classify_command
