"""Virtual patients: reference generator, constraints, diffusion model, shipped checkpoint, CLI."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pkpd_jax._x64 import x64
from pkpd_jax.virtual_patients import constraints as C, diffusion as D, reference as R


@pytest.fixture(scope="module")
def ref():
    return R.generate(20000, seed=0)


def _col(x, name):
    return x[:, R.index(name)]


# ------------------------------------------------------------------------------------- reference
def test_reference_is_seeded_and_shaped(ref):
    assert ref.shape == (20000, len(R.VARIABLES))
    np.testing.assert_array_equal(R.generate(500, seed=3), R.generate(500, seed=3))
    assert not np.array_equal(R.generate(500, seed=3), R.generate(500, seed=4))
    assert np.isfinite(ref).all()
    x, rejected = R.generate(5000, seed=1, return_rejected=True)
    assert 0.0 <= rejected < 0.03   # the constraints truncate only the far tails


def test_reference_statistics_match_cited_values(ref):
    male, female = _col(ref, "female") == 0, _col(ref, "female") == 1
    assert abs(male.mean() - 0.5) < 0.02
    young = (_col(ref, "age") >= 20) & (_col(ref, "age") <= 40)
    # ICRP 89 reference adults: 176 cm / 73 kg (men), 163 cm / 60 kg (women)
    assert _col(ref, "height")[male & young].mean() == pytest.approx(176.0, rel=0.02)
    assert _col(ref, "height")[female & young].mean() == pytest.approx(163.0, rel=0.02)
    assert _col(ref, "weight")[male & young].mean() == pytest.approx(73.0, rel=0.05)
    assert _col(ref, "weight")[female & young].mean() == pytest.approx(60.0, rel=0.05)
    # cardiac output 6.5 / 5.9 L/min, liver 1.8 / 1.4 kg, brain 1.45 kg (men)
    assert _col(ref, "co")[male & young].mean() / 60 == pytest.approx(6.5, rel=0.08)
    assert _col(ref, "co")[female & young].mean() / 60 == pytest.approx(5.9, rel=0.08)
    assert (_col(ref, "v_liver") * R.DENSITY["liver"])[male & young].mean() == pytest.approx(1.8, rel=0.1)
    assert (_col(ref, "v_brain") * R.DENSITY["brain"])[male & young].mean() == pytest.approx(1.45, rel=0.1)
    # BMI = W / H², flows below cardiac output, haematocrit by sex, GFR falls with age
    np.testing.assert_allclose(_col(ref, "bmi"), _col(ref, "weight") / (_col(ref, "height") / 100) ** 2,
                               rtol=1e-12)
    flows = sum(_col(ref, f"q_{o}") for o in R.FLOW_ORGANS)
    assert (flows <= _col(ref, "co")).all()
    assert 0.80 < (flows / _col(ref, "co")).mean() < 0.92
    assert _col(ref, "hct")[male].mean() == pytest.approx(0.45, abs=0.01)
    assert _col(ref, "hct")[female].mean() == pytest.approx(0.405, abs=0.01)
    old = _col(ref, "age") > 70
    assert _col(ref, "gfr")[old].mean() < 0.85 * _col(ref, "gfr")[young].mean()
    # CKD-EPI 2021 at a known point: 40-y man with Scr 0.9 mg/dL -> 142·0.9938^40
    assert R.ckd_epi_2021(0.9, 40.0, 0.0) == pytest.approx(142 * 0.9938**40, rel=1e-12)
    assert R.du_bois_bsa(73.0, 176.0) == pytest.approx(1.888, abs=0.002)


# ------------------------------------------------------------------------------------- constraints
def _violating_sample(ref):
    base = ref[0].copy()
    cases = {}
    x = base.copy()
    x[R.index("v_liver")] = -0.5
    cases["positivity"] = x
    x = base.copy()
    x[R.index("v_adipose")] = x[R.index("weight")]
    cases["organ_mass"] = x
    x = base.copy()
    x[R.index("q_liver")] = x[R.index("co")]
    cases["flow_sum"] = x
    x = base.copy()
    x[R.index("bmi")] *= 1.05
    cases["bmi_consistency"] = x
    x = base.copy()
    x[R.index("hct")] = 0.62
    cases["ranges"] = x
    x = base.copy()
    x[R.index("gfr")] = 2.0
    cases["gfr_for_age"] = x
    return cases


def test_every_constraint_zero_on_reference_positive_on_violations(ref):
    v = C.violations_numpy(ref)
    assert v.shape == (len(ref), len(C.CONSTRAINTS))
    assert (v == 0.0).all()
    assert C.violation_rate(ref)["any"] == 0.0
    cases = _violating_sample(ref)
    assert set(cases) == set(C.CONSTRAINTS)
    for name, x in cases.items():
        vx = C.CONSTRAINTS[name](x[None])[0]
        assert vx > 1e-3, name
        assert C.violation_rate(x[None])[name] == 1.0
    # an over-old patient violates `ranges` by the distance relative to the range's width
    x = ref[0].copy()
    x[R.index("age")] = 95.0
    assert C.ranges(x[None])[0] == pytest.approx(10.0 / 67.0)


def test_penalty_differentiable_matches_finite_differences(ref):
    x0 = ref[0].copy()   # one patient violating every constraint at once
    for name, case in _violating_sample(ref).items():
        changed = case != ref[0]
        x0[changed] = case[changed]
    assert (C.violations_numpy(x0[None]) > 0).all()
    with x64():
        x = jnp.asarray(x0, jnp.float64)
        assert float(C.penalty(x)) > 0
        g = np.asarray(jax.grad(lambda z: C.penalty(z))(x))
        assert np.isfinite(g).all() and np.abs(g).sum() > 0
        h = 1e-6 * np.maximum(np.abs(x0), 1.0)
    f = lambda j, s: C.violations_numpy(x0 + s * h[j] * np.eye(len(x0))[j])[None].sum()   # float64 numpy
    fd = np.array([(f(j, 1) - f(j, -1)) / (2 * h[j]) for j in range(len(x0))])
    np.testing.assert_allclose(g, fd, rtol=1e-5, atol=1e-8)
    # numpy and JAX agree
    np.testing.assert_allclose(np.asarray(C.violations(jnp.asarray(x0[None], jnp.float32))),
                               C.violations_numpy(x0[None]), rtol=1e-4, atol=1e-6)


# ------------------------------------------------------------------------------------- diffusion
@pytest.fixture(scope="module")
def tiny(ref):
    config = D.DiffusionConfig(width=64, depth=2, n_steps=40, emb_dim=16)
    return D.train(ref[:5000], config, steps=300, batch_size=256, lam=1.0, seed=0, log_every=50)


def test_tiny_training_reduces_loss_and_samples_deterministically(tiny, tmp_path):
    h = tiny.history
    assert len(h) == 6 and h[-1]["step"] == 300
    assert h[-1]["mse"] < 0.7 * h[0]["mse"]
    model = tiny.diffusion
    a = model.sample(64, seed=5)
    assert a.shape == (64, len(R.VARIABLES)) and np.isfinite(a).all()
    assert set(np.unique(_col(a, "female"))) <= {0.0, 1.0}
    np.testing.assert_array_equal(a, model.sample(64, seed=5))
    assert not np.array_equal(a, model.sample(64, seed=6))
    # samples are roughly on the reference scale
    assert 40 < _col(a, "weight").mean() < 110
    # checkpoint round trip: identical samples
    path = D.save(model, tmp_path / "tiny.eqx")
    again = D.load(path)
    np.testing.assert_array_equal(again.sample(64, seed=5), a)
    assert again.meta["train"]["steps"] == 300
    with pytest.raises(ValueError, match="not a virtual-patient"):
        (tmp_path / "bad.eqx").write_bytes(b'{"format": "x"}\n')
        D.load(tmp_path / "bad.eqx")


def test_training_is_seeded(ref):
    config = D.DiffusionConfig(width=16, depth=1, n_steps=10, emb_dim=4)
    a = D.train(ref[:500], config, steps=10, batch_size=32, lam=1.0, seed=2, log_every=5)
    b = D.train(ref[:500], config, steps=10, batch_size=32, lam=1.0, seed=2, log_every=5)
    assert a.history == b.history and len(a.history) == 2
    leaves = lambda r: jax.tree.leaves(r.diffusion.model)
    assert all(np.array_equal(u, v) for u, v in zip(leaves(a), leaves(b)))


@pytest.mark.slow
def test_physics_term_reduces_violations(ref):
    """Same data, seed, steps, network and sampler (no guidance); only λ differs. Without the physics term
    this small model breaks a constraint for most patients (mostly BMI = W/H² within 1 %); with it, for
    fewer than a quarter as many. Fails if the term stopped acting on the sampled patients."""
    config = D.DiffusionConfig(width=128, depth=2, n_steps=50, emb_dim=16)
    rates = {}
    for lam in (0.0, 30.0):
        tr = D.train(ref[:5000], config, steps=1000, batch_size=256, lam=lam, seed=0, min_abar=0.9,
                     log_every=500)
        rates[lam] = C.violation_rate(tr.diffusion.sample(2000, seed=0, guidance=0.0))
        assert tr.history[-1]["physics"] >= 0.0   # logged for λ = 0 as well
    assert rates[0.0]["any"] > 0.3, rates[0.0]
    assert rates[30.0]["any"] < 0.25 * rates[0.0]["any"], (rates[30.0], rates[0.0])
    assert rates[30.0]["bmi_consistency"] < 0.25 * rates[0.0]["bmi_consistency"]


def test_train_rejects_bad_physics_settings(ref):
    config = D.DiffusionConfig(width=16, depth=1, n_steps=10, emb_dim=4)
    with pytest.raises(ValueError, match="physics_sigma"):
        D.train(ref[:100], config, steps=1, physics_sigma=-1.0)
    with pytest.raises(ValueError, match="physics_perturb"):
        D.train(ref[:100], config, steps=1, physics_perturb=("age", "shoe_size"))
    with pytest.raises(ValueError, match="min_abar"):
        D.train(ref[:100], config, steps=1, min_abar=1.0)


# ------------------------------------------------------------------------------------- shipped model
@pytest.fixture(scope="module")
def shipped():
    if not D.pretrained_path().exists():
        pytest.fail(f"the shipped checkpoint {D.pretrained_path().name} is missing")
    return D.load_pretrained()


def test_shipped_checkpoint_is_small_and_meets_violation_target(shipped):
    assert D.pretrained_path().stat().st_size < 1_000_000
    x = shipped.sample(2000, seed=0)
    assert np.isfinite(x).all()
    rate = C.violation_rate(x)["any"]
    assert rate < 0.005, rate
    assert shipped.meta["train"]["lam"] > 0
    # the physics term alone (no guidance): 0.33 % of 100 000 in the study, 13.8 % without the term
    raw = C.violation_rate(shipped.sample(2000, seed=0, guidance=0.0))
    assert raw["any"] < 0.01 and raw["bmi_consistency"] < 0.005, raw
    # marginals close to the reference (standardised mean within 0.15 SD per variable)
    ref = R.generate(5000, seed=11)
    dz = np.abs(x.mean(0) - ref.mean(0)) / ref.std(0)
    assert dz.max() < 0.15, dict(zip(R.VARIABLES, dz.round(3)))


def test_shipped_conditional_body_weight_range(shipped):
    x, info = shipped.sample(500, seed=1, bw_range=(70.0, 140.0), return_info=True)
    w = _col(x, "weight")
    assert len(x) == 500 and w.min() >= 70.0 and w.max() <= 140.0
    assert info["raw_in_range"] > 0.9
    # restricted population, not a flat one: heavier than the unconditional mean, mostly below 110 kg
    assert w.mean() > 80 and (w < 110).mean() > 0.8
    assert C.violation_rate(x)["any"] < 0.02
    old = shipped.sample(300, seed=2, age_range=(65.0, 85.0))
    assert _col(old, "age").min() >= 65.0


def test_cli_virtual_patients(tmp_path):
    from typer.testing import CliRunner

    from pkpd_jax.cli import app

    runner = CliRunner()
    r = runner.invoke(app, ["virtual-patients", "--n", "50", "--out", str(tmp_path / "vp"),
                            "--bw-range", "70,140", "--seed", "3"])
    assert r.exit_code == 0, r.output
    import polars as pl

    table = pl.read_csv(tmp_path / "vp" / "virtual_patients.csv")
    assert table.shape == (50, len(R.VARIABLES)) and table.columns == list(R.VARIABLES)
    assert table["weight"].min() >= 70.0 and table["weight"].max() <= 140.0
    summary = json.loads((tmp_path / "vp" / "summary.json").read_text())
    assert summary["n"] == 50 and "diffusion" in summary["source"]
    r = runner.invoke(app, ["virtual-patients", "--n", "20", "--out", str(tmp_path / "ref"), "--reference"])
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "ref" / "summary.json").read_text())["violation_rate"]["any"] == 0.0
    r = runner.invoke(app, ["virtual-patients", "--n", "5", "--out", str(tmp_path / "x"),
                            "--bw-range", "140"])
    assert r.exit_code != 0
