"""Neural allometry: sampler, zero-correction identity, training, checkpoints, CLI and bad input."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from typer.testing import CliRunner

from pkpd_jax.cli import app
from pkpd_jax.pbpk import SPECIES, allometry as A, clearance_analytic, pbpk_params, vss_analytic


runner = CliRunner()
OBSERVED = "rat:CL=1.2,V=2.5,fu=0.08;dog:CL=15,V=60,fu=0.06;monkey:CL=6,V=20,fu=0.05"
DRUG = "logp=3,fu=0.05,kind=base,pka=9"


@pytest.fixture(scope="module")
def library():
    return A.sample_drugs(120, seed=3)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """One tiny training run through the CLI (shared by the tests below)."""
    path = tmp_path_factory.mktemp("allo") / "m.eqx"
    r = runner.invoke(
        app,
        [
            "allometry",
            "train",
            "--out",
            str(path),
            "--n-drugs",
            "120",
            "--steps",
            "150",
            "--ensemble",
            "1",
            "--seed",
            "3",
            "--json",
        ],
    )
    assert r.exit_code == 0, r.output
    return path, json.loads(r.output[r.output.index("{") :])


def test_sampler_is_deterministic_and_truth_is_the_pbpk_analytics(library):
    again = A.sample_drugs(120, seed=3)
    np.testing.assert_array_equal(library.obs.cl, again.obs.cl)
    np.testing.assert_array_equal(library.fu_true, again.fu_true)
    assert not np.array_equal(A.sample_drugs(5, seed=4).cl_true, library.cl_true[:5])
    for i in (0, 7):
        for j, sp in enumerate(SPECIES):
            p = pbpk_params(sp, library.drugs[i][sp], float(library.obs.bw[i, j]))
            assert library.cl_true[i, j] == pytest.approx(float(clearance_analytic(p)), rel=1e-12)
            assert library.vss_true[i, j] == pytest.approx(float(vss_analytic(p)), rel=1e-12)
    # species differ in fu and CLint, and the observations carry noise
    assert np.all(np.std(np.log(library.fu_true), axis=1) > 0)
    assert np.all(library.obs.cl != library.cl_true)
    assert library.obs.cl.dtype == np.float64


def test_zero_correction_is_exactly_simple_allometry(library):
    obs = library.obs
    untrained = A.NeuralAllometry(
        nets=(A.OffsetNet(len(A.FEATURES), 8, 1, math.log(10.0), key=__import__("jax").random.PRNGKey(0)),),
        x_mean=np.zeros(len(A.FEATURES)),
        x_std=np.ones(len(A.FEATURES)),
        config=A.TrainConfig(),
    )
    cl, vss = A.simple_allometry(obs)
    for p in (A.predict(untrained, obs), A.predict(untrained, obs, zero_correction=True)):
        np.testing.assert_array_equal(p["cl"], cl)
        np.testing.assert_array_equal(p["vss"], vss)
    # simple allometry by hand for drug 0: geometric mean of the three single-species scalings
    i, h = 0, SPECIES.index("human")
    want = np.exp(
        np.mean(
            [
                np.log(obs.cl[i, SPECIES.index(s)] * (obs.bw[i, h] / obs.bw[i, SPECIES.index(s)]) ** 0.75)
                for s in A.DEFAULT_SOURCES
            ]
        )
    )
    assert cl[i] == pytest.approx(want, rel=1e-12)
    dog_cl, dog_v = A.single_species(obs, "dog")
    d = SPECIES.index("dog")
    assert dog_v[i] == pytest.approx(obs.vss[i, d] * obs.bw[i, h] / obs.bw[i, d], rel=1e-12)


def test_fold_metrics_numbers():
    m = A.fold_metrics([2.0, 0.5, 3.0, 1.0], [1.0, 1.0, 1.0, 1.0])
    assert m["within_2fold"] == 0.75 and m["within_3fold"] == 1.0
    assert m["gmfe"] == pytest.approx(10 ** ((2 * math.log10(2) + math.log10(3)) / 4))
    assert m["bias"] == pytest.approx(3.0**0.25)
    with pytest.raises(A.AllometryError, match="positive"):
        A.fold_metrics([0.0], [1.0])


def test_training_reduces_error_and_checkpoint_round_trips(checkpoint, library):
    path, rec = checkpoint
    assert rec["protocol"] == "loso" and rec["physiology"] is False
    assert rec["val_loss_best"][0] < 0.9 * rec["val_loss_allometry"]  # toy: better than allometry
    model = A.load(path)
    assert ["human", ["rat", "dog", "monkey"]] not in rec["tasks"]  # human never a target (loso)
    p = A.predict(model, library.obs)
    assert np.all(np.isfinite(p["cl"])) and np.any(p["correction_cl"] != 1.0)
    assert np.all(np.abs(np.log(p["correction_cl"])) <= 2 * math.log(10.0) + 1e-6)  # bounded


def test_cli_predict_matches_library_and_csv(checkpoint, tmp_path):
    path, _ = checkpoint
    r = runner.invoke(
        app, ["allometry", "predict", "--model", str(path), "--drug", DRUG, "--observed", OBSERVED, "--json"]
    )
    assert r.exit_code == 0, r.output
    got = json.loads(r.output)
    obs, _ = A.make_observations(
        {"logp": 3, "fu": 0.05, "kind": "base", "pka": 9},
        {
            "rat": {"CL": 1.2, "V": 2.5, "fu": 0.08},
            "dog": {"CL": 15, "V": 60, "fu": 0.06},
            "monkey": {"CL": 6, "V": 20, "fu": 0.05},
        },
    )
    want = A.predict(A.load(path), obs)
    assert got["neural"]["CL"] == pytest.approx(float(want["cl"][0]), rel=1e-6)
    # geometric mean of 2.5 L x 73/0.25, 60 L x 73/10 and 20 L x 73/5 (Vss ∝ BW)
    assert got["simple_allometry"]["Vss"] == pytest.approx((730.0 * 438.0 * 292.0) ** (1 / 3), rel=1e-9)
    csv = tmp_path / "drugs.csv"
    csv.write_text(
        "name,logp,fu,kind,pka,CL_rat,V_rat,fu_rat,CL_dog,V_dog,fu_dog,CL_monkey,V_monkey,fu_monkey\n"
        "x,3,0.05,base,9,1.2,2.5,0.08,15,60,0.06,6,20,0.05\n"
        "y,1,0.5,neutral,,0.3,0.2,,4,6,,,,\n"
    )
    out = tmp_path / "pred.csv"
    r = runner.invoke(
        app, ["allometry", "predict", "--model", str(path), "--csv", str(csv), "--out", str(out), "--json"]
    )
    assert r.exit_code == 0, r.output
    rows = json.loads(r.output[: r.output.rindex("]") + 1])
    assert rows[0]["neural"]["CL"] == pytest.approx(got["neural"]["CL"], rel=1e-9)
    assert rows[1]["sources"] == ["rat", "dog"] and "notes" in rows[1]
    assert out.read_text().count("\n") == 3


@pytest.mark.parametrize(
    "args, match",
    [
        (["--drug", "logp=3,fu=2", "--observed", "rat:CL=1,V=2"], "fu"),
        (["--drug", DRUG, "--observed", "cat:CL=1,V=2"], "unknown observed species"),
        (["--drug", DRUG, "--observed", "rat:CL=-1,V=2"], "CL"),
        (["--drug", DRUG, "--observed", "rat:CL=1"], "V"),
        (["--drug", DRUG, "--observed", "human:CL=1,V=2"], "cannot also be observed"),
        (["--drug", "logp=3,fu=0.1,kind=acid", "--observed", "rat:CL=1,V=2"], "pka"),
        (["--drug", DRUG, "--observed", "rat:CL=1,V=2", "--target", "cow"], "--target"),
        (["--drug", DRUG], "--observed"),
    ],
)
def test_cli_bad_input(checkpoint, args, match):
    path, _ = checkpoint
    r = runner.invoke(app, ["allometry", "predict", "--model", str(path), *args])
    assert r.exit_code == 1
    assert "error:" in r.output and match in r.output


def test_bad_checkpoint_and_config(tmp_path):
    bad = tmp_path / "x.eqx"
    bad.write_text("not a checkpoint\n")
    with pytest.raises(A.AllometryError, match="not a neural-allometry checkpoint"):
        A.load(bad)
    with pytest.raises(FileNotFoundError):
        A.load(tmp_path / "missing.eqx")
    with pytest.raises(A.AllometryError, match="protocol"):
        A.TrainConfig(protocol="all")
    with pytest.raises(A.AllometryError, match="n"):
        A.sample_drugs(0)
