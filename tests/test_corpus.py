"""Synthetic corpora and the batch loader (`pkpd_jax.amortized.corpus`, `.batches`).

One small PK corpus (2 classes, 3 shards) is made once per module; the other corpora reuse its
compiled simulators (same classes and shard size), so the whole file runs in well under a minute.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pyarrow.parquet as pq
import pytest

from pkpd_jax.amortized import batches as B, corpus as C
from pkpd_jax.amortized._corpus_rows import observe_rows
from pkpd_jax.amortized._corpus_store import sha256_of
from pkpd_jax.models import PD_MODELS, PK_MODELS


KW = dict(shard_size=40, classes=("pk_1c_iv", "pk_2c_iv_infusion"), progress=False)
N, SEED = 120, 7


def _shards(path):
    man = json.loads((path / "manifest.json").read_text())
    return man, [(path / s["file"]).read_bytes() for s in man["shards"]]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("corpus_a")
    C.generate_corpus(out, "pk", N, SEED, **KW)
    return out


# ----------------------------------------------------------------------------- determinism, resume
def test_deterministic_for_a_seed(corpus, tmp_path):
    man_a, bytes_a = _shards(corpus)
    C.generate_corpus(tmp_path, "pk", N, SEED, **KW)
    man_b, bytes_b = _shards(tmp_path)
    assert bytes_a == bytes_b  # byte-identical shards
    strip = lambda m: {k: v for k, v in m.items() if k not in ("timing",)}
    assert strip(man_a) == strip(man_b)
    # another seed gives other data
    other = tmp_path / "other"
    C.generate_corpus(other, "pk", 40, SEED + 1, **KW)
    assert _shards(other)[1][0] != bytes_a[0]


def test_resume_after_interruption(corpus, tmp_path):
    _, bytes_a = _shards(corpus)

    def interrupt(done, total):  # Ctrl-C in the middle of the second shard's simulation
        if done > 50:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        C.generate_corpus(tmp_path, "pk", N, SEED, **{**KW, "progress": interrupt})
    man, _ = _shards(tmp_path)
    assert [s["index"] for s in man["shards"]] == [0] and not man["complete"]
    (tmp_path / "shard-00001.parquet.tmp").write_bytes(b"half-written")  # debris of a crash

    man = C.generate_corpus(tmp_path, "pk", N, SEED, **KW, stop=lambda: False, max_shards=1)
    assert man["shards_done"] == 2 and not man["complete"]
    man = C.generate_corpus(tmp_path, "pk", N, SEED, **KW)
    assert man["complete"] and not list(tmp_path.glob("*.tmp"))
    assert _shards(tmp_path)[1] == bytes_a

    # a damaged shard is detected by its checksum and made again
    f = tmp_path / "shard-00002.parquet"
    f.write_bytes(f.read_bytes()[:-10] + b"0123456789")
    C.generate_corpus(tmp_path, "pk", N, SEED, **KW)
    assert _shards(tmp_path)[1] == bytes_a
    # settings that change the content are refused
    with pytest.raises(ValueError, match="seed 7 .existing. vs 8 .requested."):
        C.generate_corpus(tmp_path, "pk", N, SEED + 1, **KW)


def test_cli_writes_the_same_shard(corpus, tmp_path):
    from typer.testing import CliRunner

    from pkpd_jax.cli import app

    args = ["corpus", "--family", "pk", "--n", "40", "--out", str(tmp_path), "--seed", str(SEED),
            "--shard-size", "40", "--classes", ",".join(KW["classes"]), "--no-progress"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "complete pk corpus" in res.output and "40 trajectories" in res.output
    # a shard's rows depend on (seed, shard index, shard size), not on n (the file's metadata
    # names its corpus, so the bytes differ)
    read = lambda d: pq.read_table(d / "shard-00000.parquet").replace_schema_metadata(None)
    assert read(tmp_path).equals(read(corpus))
    res = CliRunner().invoke(app, ["corpus", "--family", "pkpd", "--n", "4", "--out", str(tmp_path)])
    assert res.exit_code == 1 and "--family must be 'pk' or 'pd'" in res.output


# ----------------------------------------------------------------------------- manifest
def test_manifest_contents(corpus):
    man = json.loads((corpus / "manifest.json").read_text())
    assert man["seed"] == SEED and man["family"] == "pk" and man["n"] == N and man["complete"]
    assert man["classes"] == list(KW["classes"])
    assert man["class_params"]["pk_2c_iv_infusion"] == ["CL", "V1", "Q", "V2"]
    cls = {c.name: c for c in PK_MODELS}
    for name in KW["classes"]:
        assert man["priors"][name] == json.loads(json.dumps([p.to_dict() for p in cls[name].params]))
    spec = man["spec"]
    assert [d["name"] for d in spec["designs"]] == ["single", "daily", "weekly", "daily14"]
    assert man["max_doses"] == 14
    assert all(len(d["sample_times"]) == 25 for d in spec["designs"])
    assert spec["noise"]["conc_add_sd_over_lloq"] == 0.2 and spec["split_rule"] == C.SPLIT_RULE
    assert man["features"]["names"] == list(B.PK_FEATURES)
    assert (man["n_times"], man["n_features"], man["n_params"]) == (25, 7, 6)
    counts = man["counts"]
    assert counts["requested"] == N == counts["written"] + counts["failed"]
    assert counts["train"] + counts["val"] + counts["test"] == counts["written"]
    assert sum(counts["per_class"].values()) == counts["written"]
    assert len(man["shards"]) == man["n_shards"] == 3
    for s in man["shards"]:
        assert sha256_of(corpus / s["file"]) == s["sha256"]
        assert s["rows"] == sum(v["rows"] for v in s["splits"].values())
    info = B.corpus_info(corpus)
    assert info.counts == {k: counts[k] for k in B.SPLITS}
    assert info.class_names == KW["classes"] and info.param_names["pk_1c_iv"] == ("CL", "V")


# ----------------------------------------------------------------------------- priors, noise
@pytest.mark.parametrize("family", ["pk", "pd"])
def test_parameters_follow_the_declared_priors(family):
    cfg = C.CorpusConfig(family=family, n=30_000, seed=3, shard_size=30_000, pd_potency="prior")
    draw = C.sample_shard(cfg, 0)
    counts = np.bincount(draw["label"], minlength=10)
    assert counts.max() - counts.min() <= 1  # classes balanced within a shard
    for k, cls in enumerate(PK_MODELS if family == "pk" else PD_MODELS):
        theta = draw["theta"][draw["label"] == k]
        n = theta.shape[0]
        for i, p in enumerate(cls.params):
            u = np.asarray(p.to_unconstrained(theta[:, i]))
            # mean and sd of the unconstrained draws within 4.5 Monte Carlo standard errors
            assert abs(u.mean() - p.prior_loc) < 4.5 * p.log_sd / math.sqrt(n), (cls.name, p.name)
            assert abs(u.std() / p.log_sd - 1) < 4.5 / math.sqrt(2 * n), (cls.name, p.name)
        assert np.all(theta[:, len(cls.params):] == 0)
    # the designs and the dose levels are drawn evenly
    assert np.all(np.abs(np.bincount(draw["design"]) / 30_000 - 1 / 4) < 0.02)
    assert set(np.unique(draw["dose_amount"][:, 0])) == set(C.DOSE_LEVELS_MG)


def test_pd_potency_relative_to_exposure():
    """Default PD corpora: EC50/IC50 = C_ref·exp(1.5 z), slope = 0.5·R0/C_ref·exp(z), C_ref = dose/V1;
    the other parameters keep their declared priors, and "prior" leaves the draws unchanged."""
    cfg = C.CorpusConfig(family="pd", n=20_000, seed=5, shard_size=20_000)
    draw = C.sample_shard(cfg, 0)
    prior = C.sample_shard(C.CorpusConfig(family="pd", n=20_000, seed=5, shard_size=20_000,
                                          pd_potency="prior"), 0)
    for k in ("label", "dose_amount", "driver_theta", "times", "obs_mask"):
        np.testing.assert_array_equal(draw[k], prior[k])
    c_ref = draw["dose_amount"][:, 0] / draw["driver_theta"][:, 2]  # pk_2c_oral: ka, CL, V1, Q, V2
    for k, cls in enumerate(PD_MODELS):
        rows = draw["label"] == k
        n = rows.sum()
        for i, p in enumerate(cls.params):
            got = draw["theta"][rows, i]
            if p.name in ("EC50", "IC50"):
                z = np.log(got / c_ref[rows]) / 1.5
            elif p.name == "slope":
                z = np.log(got * c_ref[rows] / (0.5 * draw["theta"][rows, 0]))
            else:
                np.testing.assert_array_equal(got, prior["theta"][rows, i])
                continue
            assert abs(z.mean()) < 4.5 / math.sqrt(n) and abs(z.std() - 1) < 4.5 / math.sqrt(2 * n), (
                cls.name, p.name)


def test_pd_sampling_mixed_and_shared():
    """"mixed": about half the subjects have 20-50% concentration-only and 20-50% biomarker-only
    times (never both missing at a kept time; the baseline biomarker always kept); "shared" keeps
    the 5% rates."""
    m = 20_000
    mixed = C.sample_shard(C.CorpusConfig(family="pd", n=m, seed=9, shard_size=m), 0)
    shared = C.sample_shard(C.CorpusConfig(family="pd", n=m, seed=9, shard_size=m, pd_sampling="shared"), 0)
    for d in (mixed, shared):
        assert not np.any(d["conc_missing"] & d["resp_missing"])
        assert not np.any(d["resp_missing"][:, 0]) and np.all(d["obs_mask"][:, 0])
    fc_s, fr_s = shared["resp_missing"].mean(1), shared["conc_missing"].mean(1)
    assert abs(fc_s.mean() - 0.05 * 0.97) < 0.01 and abs(fr_s.mean() - 0.05 * 0.97) < 0.01
    fc, fr = mixed["resp_missing"].mean(1), mixed["conc_missing"].mean(1)  # conc-only, resp-only
    kept = 0.97  # a whole time is missing with probability 0.03
    for f in (fc, fr):  # half at U(0.2, 0.5) (mean 0.35), half at 0.05
        assert abs(f.mean() - kept * (0.5 * 0.35 + 0.5 * 0.05)) < 0.005
    sep = (fc > 0.15) & (fr > 0.15)
    assert 0.4 < sep.mean() < 0.5  # (a separate-design subject can fall under 4 of 25 by chance)
    assert fc.max() <= 0.8 and fr.max() <= 0.8
    np.testing.assert_array_equal(mixed["theta"], shared["theta"])


def test_residual_error_model():
    cfg = C.CorpusConfig(family="pd", n=4000, seed=11, shard_size=4000)
    draw = C.sample_shard(cfg, 0)
    m = 4000
    # a flat truth far above the LLOQ (LLOQ <= 10^-1.5 · C_max): almost no censoring
    sim = {"conc": np.ones((m, 25)), "resp": np.full((m, 25), 10.0), "status": np.zeros(m, np.int32),
           "fallback": np.zeros(m, bool)}
    rows = observe_rows(cfg, draw, sim)["rows"]
    seen = rows["mask"] & ~rows["conc_missing"]
    assert rows["conc_blq"][seen].mean() < 1e-3  # (only beyond -3.9 sd)
    seen &= ~rows["conc_blq"]
    sd = np.sqrt(rows["conc_prop_sd"][:, None] ** 2 + rows["conc_add_sd"][:, None] ** 2)
    z = ((rows["conc"] - 1.0) / sd)[seen]
    assert abs(z.mean()) < 0.02 and abs(z.std() - 1) < 0.02
    assert np.all(rows["conc_prop_sd"] >= 0.05) and np.all(rows["conc_prop_sd"] <= 0.25)
    np.testing.assert_allclose(rows["conc_add_sd"], 0.2 * rows["lloq"], rtol=1e-6)
    seen_r = rows["mask"] & ~rows["resp_missing"]
    sd_r = np.sqrt((10 * rows["resp_prop_sd"][:, None]) ** 2 + rows["resp_add_sd"][:, None] ** 2)
    z = ((rows["resp"] - 10.0) / sd_r)[seen_r]
    assert abs(z.mean()) < 0.02 and abs(z.std() - 1) < 0.02
    # the pre-dose biomarker (the baseline) is always observed; about 25 samples per subject
    assert np.all(~rows["resp_missing"][:, 0] & rows["mask"][:, 0] & (rows["times"][:, 0] == 0))
    assert 22 < rows["mask"].sum(1).mean() < 25

    # censoring: a decaying truth crosses each subject's LLOQ; BLQ <=> observed value < LLOQ
    sim["conc"] = np.exp(-np.arange(25) / 2.0)[None, :].repeat(m, 0)
    rows = observe_rows(cfg, draw, sim)["rows"]
    seen = rows["mask"] & ~rows["conc_missing"]
    blq = rows["conc_blq"]
    assert 0.05 < blq[seen].mean() < 0.9
    assert np.all(rows["conc"][blq] == 0) and np.all(rows["values"][..., 0][blq] == 0)
    assert np.all((rows["conc"] >= rows["lloq"][:, None])[seen & ~blq])


def test_fast_path_matches_the_closed_form(corpus):
    """pk_1c_iv: C(t) = Σ_doses D/V·exp(-CL/V·(t - t_d)) over doses before t (pre-dose rule)."""
    cfg = C.CorpusConfig(family="pk", n=N, seed=SEED, shard_size=KW["shard_size"], classes=KW["classes"])
    draw = C.sample_shard(cfg, 0)
    sim = C.simulate_shard(cfg, draw)
    rows = draw["label"] == 0
    cl, v = draw["theta"][rows, 0], draw["theta"][rows, 1]
    t, td, amt = draw["times"][rows], draw["dose_time"][rows], draw["dose_amount"][rows]
    dt = t[:, :, None] - td[:, None, :]
    k = (cl / v)[:, None, None]
    ref = np.sum(np.where(dt > 0, amt[:, None, :] / v[:, None, None] * np.exp(-k * dt), 0.0), axis=-1)
    got = sim["conc"][rows]
    big = ref > 1e-3 * ref.max(axis=1, keepdims=True)
    assert np.all(sim["status"] == 0)
    assert np.max(np.abs(got - ref)[big] / ref[big]) < 2e-3



def test_class_inputs_simulate_to_the_shard():
    """`class_model` and `class_args` are what `simulate_shard` integrates: simulating them with
    `simulate_population` (float64, tight) reproduces the shard's concentrations."""
    import jax

    from pkpd_jax.dosing import Regimen
    from pkpd_jax.solve import SolverConfig, simulate_population

    cfg = C.CorpusConfig(family="pk", n=N, seed=SEED, shard_size=KW["shard_size"], classes=KW["classes"])
    draw = C.sample_shard(cfg, 0)
    sim = C.simulate_shard(cfg, draw)
    name = KW["classes"][1]
    model = C.class_model(cfg, name)
    assert model.name == name
    rows = np.flatnonzero(draw["label"] == 1)
    with jax.enable_x64(True):
        th, t, a, d, c, ts = C.class_args(cfg, draw, name, rows, np.float64)
        assert th.shape == (rows.size, len(model.param_names)) and ts.shape == (rows.size, C.N_TIMES)
        ref = simulate_population(model, th, Regimen(t, a, d, c), ts,
                                  config=SolverConfig(rtol=1e-10, atol=1e-12))
    got, want = sim["conc"][rows], np.asarray(ref.conc)
    big = want > 1e-3 * want.max(axis=1, keepdims=True)
    assert np.max(np.abs(got - want)[big] / want[big]) < 2e-3


# ----------------------------------------------------------------------------- loader
def test_loader_is_deterministic_and_complete(corpus):
    info = B.corpus_info(corpus)
    n_train = info.counts["train"]
    run = lambda **kw: list(B.iter_batches(corpus, "train", 16, **{"seed": 0, **kw}))
    a, b, c = run(), run(), run(epoch=1)
    assert len(a) == n_train // 16
    for x, y in zip(a, b):
        for f in ("times", "values", "mask", "label", "params", "param_mask"):
            np.testing.assert_array_equal(getattr(x, f), getattr(y, f))
    assert any(not np.array_equal(x.params, y.params) for x, y in zip(a, c))
    x = a[0]
    assert x.times.shape == (16, 25) and x.values.shape == (16, 25, 7) and x.params.shape == (16, 6)
    dtypes = (x.times.dtype, x.values.dtype, x.mask.dtype, x.label.dtype, x.params.dtype, x.param_mask.dtype)
    assert dtypes == (np.float32, np.float32, bool, np.int32, np.float32, bool)
    assert np.all(x.values[~x.mask] == 0) and np.all(x.times[~x.mask] == 0)
    assert np.all(x.param_mask.sum(1) == np.where(x.label == 0, 2, 4))

    # every row once per pass: the batches hold the split's rows, whatever the buffer size
    def rows(batches):
        return sorted(map(tuple, np.concatenate([np.c_[z.label, z.params] for z in batches]).tolist()))

    man = json.loads((corpus / "manifest.json").read_text())
    direct = [B.read_split(corpus, s, "train", info) for s in man["shards"]]
    expected = sorted(map(tuple, np.concatenate([np.c_[d["label"], d["params"]] for d in direct]).tolist()))
    assert rows(run(drop_last=False)) == expected
    assert rows(run(drop_last=False, buffer_shards=1, epoch=3)) == expected
    assert rows(B.iter_batches(corpus, "val", 4, seed=0, drop_last=False, shuffle=False)) == sorted(
        map(tuple, np.concatenate([np.c_[d["label"], d["params"]] for d in
                                   (B.read_split(corpus, s, "val", info) for s in man["shards"])]).tolist()))
    with pytest.raises(ValueError, match="split"):
        next(B.iter_batches(corpus, "validation", 4, seed=0))


def test_splits_are_disjoint_and_follow_the_rule(corpus):
    man = json.loads((corpus / "manifest.json").read_text())
    seen = []
    for s in man["shards"]:
        f = pq.ParquetFile(corpus / s["file"])
        for code, split in enumerate(B.SPLITS):
            rg = s["splits"][split]["row_group"]
            if rg is None:
                continue
            t = f.read_row_group(rg, columns=["index", "split"])
            idx = t.column("index").to_numpy()
            assert np.all(t.column("split").to_numpy() == code)
            assert np.all(C.split_of(idx) == code)
            seen.append(idx)
    seen = np.concatenate(seen)
    assert np.unique(seen).size == seen.size == man["counts"]["written"]


def test_corpus_rows_are_the_featurize_of_their_raw_columns(corpus):
    """The stored features are exactly `featurize` of the stored observations and doses (the
    function `classify` applies to real subjects)."""
    table = pq.read_table(corpus / "shard-00000.parquet")
    get = lambda name, shape: B._fixed(table, name, shape, float)
    t, conc = get("times", (25,)), get("conc", (25,))
    blq, mask = get("conc_blq", (25,)) > 0, get("mask", (25,)) > 0
    values = get("values", (25, 7))
    D = C.MAX_DOSES  # the default designs include daily14
    d_t, d_a, d_d = get("dose_time", (D,)), get("dose_amount", (D,)), get("dose_duration", (D,))
    for i in range(0, table.num_rows, 7):
        m = mask[i]
        _, v, mk = B.featurize(t[i, m], conc[i, m], d_t[i], d_a[i], d_d[i], family="pk", blq=blq[i, m],
                               n_times=25)
        np.testing.assert_array_equal(mk, m)
        np.testing.assert_allclose(v, values[i], rtol=1e-6, atol=2e-5)  # times are stored as float32


# ----------------------------------------------------------------------------- features by hand
def test_featurize_pk_by_hand():
    L = math.log1p(168)
    # unsorted input, a BLQ pre-dose sample, doses at 10 h (origin shift) and 34 h, the second a 2 h infusion
    times, values, mask = B.featurize(
        [35.0, 10.0, 11.0, 34.0], [3.0, 0.0, 2.0, 0.5], [10.0, 34.0], [100.0, 100.0], [0.0, 2.0],
        family="pk", n_times=6,
    )
    np.testing.assert_array_equal(times, [0, 1, 24, 25, 0, 0])
    np.testing.assert_array_equal(mask, [1, 1, 1, 1, 0, 0])
    last = math.log1p(10) / math.log1p(100)
    expected = [
        [0, 1, 0, 0, 0, 0, 0],  # pre-dose: BLQ, no dose yet
        [math.log(2 * 50 / 100) / 4, 0, math.log1p(1) / L, last, 0, 0, 0.1],
        [math.log(0.5 * 50 / 100) / 4, 0, math.log1p(24) / L, last, 0, 0, 0.1],  # trough: pre-dose
        [math.log(3 * 50 / 100) / 4, 0, math.log1p(1) / L, last, 1, math.log1p(2) / math.log1p(24), 0.2],
        [0] * 7,
        [0] * 7,
    ]
    np.testing.assert_allclose(values, expected, atol=1e-6)
    # explicit BLQ flags and NaN (not measured) concentrations
    _, v, m = B.featurize([1.0, 2.0, 3.0], [1.0, np.nan, 5.0], [0.0], [50.0], family="pk",
                          blq=[False, False, True])
    np.testing.assert_array_equal(m, [True, True])
    np.testing.assert_allclose(v[:, :2], [[0.0, 0.0], [0.0, 1.0]], atol=1e-7)


def test_featurize_pd_by_hand():
    L = math.log1p(168)
    _, v, m = B.featurize(
        [0.0, 2.0, 4.0, 6.0, 8.0], [0.0, 1.0, np.nan, 0.5, np.nan], [0.0], [100.0],
        family="pd", resp=[10.0, 12.0, 8.0, np.nan, np.nan],
    )
    np.testing.assert_array_equal(m, [True] * 4)  # the last time has neither observation
    lb = math.log(10) / 4
    expected = [
        [0, 1, 0, 0, 0, lb, 0],
        [0, 0, 0, 0.2, 0, lb, math.log1p(2) / L],
        [0, 0, 1, -0.2, 0, lb, math.log1p(4) / L],
        [math.log(0.5) / 4, 0, 0, 0, 1, lb, math.log1p(6) / L],
    ]
    np.testing.assert_allclose(v, expected, atol=1e-6)
    with pytest.raises(ValueError, match="resp"):
        B.featurize([0.0], [1.0], [0.0], [1.0], family="pd")
    with pytest.raises(ValueError, match="n_times"):
        B.featurize([0.0, 1.0], [1.0, 1.0], [0.0], [1.0], family="pk", n_times=1)


# ----------------------------------------------------------------------------- parameters
@pytest.mark.parametrize("cls", PK_MODELS + PD_MODELS, ids=lambda c: c.name)
def test_normalise_round_trip(cls):
    rng = np.random.default_rng(0)
    u = np.array([p.prior_loc for p in cls.params]) + rng.standard_normal((50, len(cls.params))) * np.array(
        [p.log_sd for p in cls.params])
    theta = np.stack([np.asarray(p.to_natural(u[:, i])) for i, p in enumerate(cls.params)], -1)
    vec = B.normalise_params(cls.name, theta)
    P = 6 if cls.family == "pk" else 4
    assert vec.shape == (50, P) and np.all(vec[:, len(cls.params):] == 0)
    np.testing.assert_allclose(vec[:, : len(cls.params)], (u - [p.prior_loc for p in cls.params]) /
                               np.array([p.log_sd for p in cls.params]), atol=1e-9)
    back = B.denormalise_params(cls.name, vec)
    for i, p in enumerate(cls.params):
        np.testing.assert_allclose(back[p.name], theta[:, i], rtol=1e-12)
    medians = {p.name: p.median for p in cls.params}
    np.testing.assert_allclose(B.normalise_params(cls.name, medians), 0.0, atol=1e-12)
    one = B.denormalise_params(cls.name, B.normalise_params(cls.name, medians))
    assert all(isinstance(x, float) and math.isclose(x, medians[k]) for k, x in one.items())


def test_normalise_errors():
    with pytest.raises(ValueError, match="unknown model class"):
        B.normalise_params("pk_4c", [1.0])
    with pytest.raises(ValueError, match="missing"):
        B.normalise_params("pk_1c_iv", {"CL": 1.0})
    with pytest.raises(ValueError, match="2 parameters"):
        B.normalise_params("pk_1c_iv", [1.0, 2.0, 3.0])
