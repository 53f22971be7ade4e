"""Training, checkpoints and evaluation of the model-selection Transformer on tiny synthetic corpora.

The synthetic task: three "model classes" of decay curves (mono-exponential, bi-exponential,
first-order absorption) observed at random times with random padding; the class is learnable from
the shape, and each class has 1 or 2 of the 3 parameter slots.
"""

from __future__ import annotations

import dataclasses
import json
from types import SimpleNamespace

import equinox as eqx
import jax
import numpy as np
import pytest
from typer.testing import CliRunner

from pkpd_jax.amortized.encoder import apply_batch
from pkpd_jax.amortized.evaluate import (
    confusion_matrix,
    evaluate,
    expected_calibration_error,
    predict,
)
from pkpd_jax.amortized.train import (
    BEST_FILE,
    CHECKPOINT_FILE,
    METRICS_FILE,
    PRESETS,
    ArrayBatches,
    NonFiniteLossError,
    load_checkpoint,
    loss_terms,
    make_steps,
    train,
)


T = 12
INFO = SimpleNamespace(
    family="pk", class_names=("mono", "bi", "oral"),
    param_names={"mono": ("k",), "bi": ("k", "r"), "oral": ("k", "ka")},
    n_times=T, n_features=1, n_params=3, feature_names=("log_conc",), counts={},
)


def _synthetic(n: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {"times": np.zeros((n, T), np.float32), "values": np.zeros((n, T, 1), np.float32),
           "mask": np.zeros((n, T), bool), "label": rng.integers(0, 3, n).astype(np.int32),
           "params": np.zeros((n, 3), np.float32), "param_mask": np.zeros((n, 3), bool)}
    for i in range(n):
        n_obs = rng.integers(T - 4, T + 1)
        t = np.sort(rng.uniform(0.25, 24.0, n_obs))
        z = 0.5 * rng.standard_normal(3)
        k = 0.2 * np.exp(0.5 * z[0])
        c = out["label"][i]
        if c == 0:
            y = np.exp(-k * t)
        elif c == 1:
            y = 0.5 * np.exp(-k * t) + 0.5 * np.exp(-5.0 * k * np.exp(0.3 * z[1]) * t)
        else:
            ka = np.exp(0.5 * z[1])
            y = ka / (ka - k) * (np.exp(-k * t) - np.exp(-ka * t))
        n_par = 1 if c == 0 else 2
        out["times"][i, :n_obs] = t
        out["values"][i, :n_obs, 0] = np.log(y + 1e-6) / 3.0
        out["mask"][i, :n_obs] = True
        out["params"][i, :n_par] = z[:n_par]
        out["param_mask"][i, :n_par] = True
    return out


def _denormalise(name, vec):
    """Stand-in for the corpus's `denormalise_params`: unit prior scale around 1."""
    return {p: float(np.exp(v)) for p, v in zip(INFO.param_names[name], vec)}


# ---------------------------------------------------------------------------------------- loss
def test_masked_loss_ignores_absent_parameters():
    rng = np.random.default_rng(0)
    B, C, P = 5, 3, 4
    logits = rng.standard_normal((B, C)).astype(np.float32)
    pred = rng.standard_normal((B, C, P)).astype(np.float32)
    label = np.array([0, 1, 2, 1, 0], np.int32)
    target = rng.standard_normal((B, P)).astype(np.float32)
    pmask = np.array([[1, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 1], [1, 1, 0, 0], [0, 0, 0, 0]], bool)

    def total(pred, target):
        ce, mse, _ = loss_terms(logits, pred, label, target, pmask)
        return ce + mse

    value_and_grad = jax.jit(jax.value_and_grad(total))
    ref, g_ref = value_and_grad(pred, target)
    # Absent targets: anything, even NaN/inf; absent predictions (incl. other classes' rows): anything.
    target2 = np.where(pmask, target, np.nan).astype(np.float32)
    target2[0, 3] = np.inf
    pred2 = pred.copy()
    pred2[0, 0, 1:] = 1e6
    pred2[4] = -7.0  # example 4 has no parameters at all
    pred2[0, 1] = 3.0  # a row of a class that is not example 0's
    val, g = value_and_grad(pred2, target2)
    assert float(val) == float(ref)
    other_class = np.arange(C)[None, :, None] != label[:, None, None]
    absent = ~np.broadcast_to(pmask[:, None, :], pred.shape) | other_class
    assert np.all(np.asarray(g)[absent] == 0.0)
    np.testing.assert_array_equal(np.asarray(g)[~absent], np.asarray(g_ref)[~absent])
    # By hand: mean over the 9 present entries of the true-class rows.
    rows = pred[np.arange(B), label]
    mse_hand = ((rows - target) ** 2)[pmask].mean()
    _, mse, acc = loss_terms(logits, pred, label, target, pmask)
    np.testing.assert_allclose(float(mse), mse_hand, rtol=1e-6)
    assert float(acc) == np.mean(logits.argmax(1) == label)
    # A present entry does count.
    target3 = target.copy()
    target3[2, 3] += 1.0
    assert float(total(pred, target3)) != float(ref)


def test_presets():
    ref = {"ref64": (64, 4, 4, 256, 0.10, 3e-4, 1e-2, 1.0), "ref128": (128, 8, 4, 512, 0.10, 3e-4, 1e-2, 1.0),
           "ref128x6": (128, 8, 6, 512, 0.15, 2e-4, 2e-2, 0.7),
           "ref192": (192, 8, 6, 768, 0.15, 2e-4, 1e-2, 1.2),
           "ref128x8": (128, 8, 8, 512, 0.10, 2e-4, 1e-2, 1.0)}
    for name, vals in ref.items():
        p = PRESETS[name]
        assert (p.d_model, p.n_heads, p.n_layers, p.d_ff, p.dropout, p.lr, p.weight_decay, p.lam) == vals
    assert (PRESETS["tiny"].d_model, PRESETS["tiny"].n_layers) == (32, 2)
    with pytest.raises(ValueError, match="unknown preset 'big'"):
        train(None, preset="big", epochs=1)


def test_make_steps_is_cached_and_consistent_with_loss_terms():
    """`make_steps`: one compilation per (preset, length); `eval_step` returns batch sums of the
    `loss_terms` values; two `train_step`s (the first at lr 0) move the weights and report finite
    statistics."""
    import jax.random as jr

    from pkpd_jax.amortized.encoder import TransformerEncoder

    preset = PRESETS["tiny"]
    steps = make_steps(preset, 50)
    assert make_steps(preset, 50) is steps and len(steps) == 4
    optim, schedule, train_step, eval_step = steps
    assert float(schedule(0)) == 0.0 and float(schedule(25)) > 0.0
    model = TransformerEncoder(preset.model_config(1, 3, 3), key=jr.PRNGKey(0))
    d = _synthetic(16, 5)
    arrays = tuple(d[k] for k in ("times", "values", "mask", "label", "params", "param_mask"))
    sums = np.asarray(eval_step(model, arrays))
    logits, params = apply_batch(model, d["times"], d["values"], d["mask"], inference=True)
    terms = loss_terms(logits, params, d["label"], d["params"], d["param_mask"])
    ce, mse, acc = (float(x) for x in terms)
    n_present = d["param_mask"].sum()
    np.testing.assert_allclose(sums, [ce * 16, mse * n_present, acc * 16, n_present, 16], rtol=1e-5)
    opt_state = optim.init(eqx.filter(model, eqx.is_inexact_array))
    new, opt_state, stats = train_step(model, opt_state, arrays, jr.PRNGKey(1))  # lr 0 at step 0
    new, _, stats = train_step(new, opt_state, arrays, jr.PRNGKey(2))
    assert np.isfinite(np.asarray(stats)).all() and stats.shape == (5,)
    assert not all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(eqx.filter(model, eqx.is_array)),
                                                        jax.tree.leaves(eqx.filter(new, eqx.is_array))))


# --------------------------------------------------------------------------------------- overfit
# One preset and one schedule length (120 steps, batch 32) for every training run of this file,
# so that all of them share one compiled train step. Dropout is on, so that resuming is also
# checked to continue the dropout keys.
PRESET = dataclasses.replace(PRESETS["tiny"], lr=3e-3, dropout=0.1)


def test_tiny_model_overfits_tiny_corpus():
    data = _synthetic(64, seed=0)
    source = ArrayBatches(INFO, {"train": data}, 32, seed=0)
    result = train(source, preset=PRESET, epochs=60, seed=0, val_split=None)  # 120 steps
    logits, _ = eqx.filter_jit(lambda m, t, v, k: apply_batch(m, t, v, k, inference=True))(
        result.model, data["times"], data["values"], data["mask"])
    acc = float(np.mean(np.asarray(logits).argmax(1) == data["label"]))
    assert acc >= 0.95, [round(h["train_acc"], 3) for h in result.history]
    assert result.history[-1]["train_loss"] < 0.5 * result.history[0]["train_loss"]


# ------------------------------------------------------------------- resume, checkpoints, evaluation
def _resume_source():
    """2 epochs of 60 batches: the same 120-step schedule as the overfit test."""
    return ArrayBatches(INFO, {"train": _synthetic(1920, 1), "val": _synthetic(32, 2),
                               "test": _synthetic(64, 3)}, 32, seed=5)


class _Interrupt(Exception):
    pass


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """An uninterrupted 2-epoch run, and a run interrupted after epoch 1 then resumed."""
    root = tmp_path_factory.mktemp("train")
    full = train(_resume_source(), preset=PRESET, epochs=2, out=root / "full", seed=11)

    def stop_after_first(record):
        if record["epoch"] == 1:
            raise _Interrupt

    with pytest.raises(_Interrupt):
        train(_resume_source(), preset=PRESET, epochs=2, out=root / "resumed", seed=11,
              on_epoch_end=stop_after_first)
    first_half = load_checkpoint(root / "resumed" / CHECKPOINT_FILE)
    logs = []
    resumed = train(_resume_source(), preset=PRESET, epochs=2, out=root / "resumed", seed=11,
                    log=logs.append)
    return SimpleNamespace(root=root, full=full, resumed=resumed, first_half=first_half, logs=logs)


def test_resume_is_bit_for_bit(runs):
    assert runs.first_half.meta["epoch"] == 1
    assert any("resuming" in line for line in runs.logs)
    assert eqx.tree_equal(runs.full.model, runs.resumed.model)  # exact equality of every array
    assert not eqx.tree_equal(runs.first_half.model, runs.full.model)
    assert [h["train_loss"] for h in runs.full.history] == [h["train_loss"] for h in runs.resumed.history]
    lines = [json.loads(s) for s in (runs.root / "resumed" / METRICS_FILE).read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [1, 2]
    assert {"train_loss", "val_loss", "val_acc", "lr", "step"} <= set(lines[0])
    assert not list((runs.root / "resumed").glob("*.tmp"))


def test_resume_refuses_other_settings(runs):
    with pytest.raises(ValueError, match="cannot be resumed exactly"):
        train(_resume_source(), preset=PRESET, epochs=2, out=runs.root / "full", seed=12)


def test_checkpoint_round_trip_gives_identical_predictions(runs):
    data = _synthetic(16, 9)
    batch = SimpleNamespace(**data)
    fwd = eqx.filter_jit(lambda m, t, v, k: apply_batch(m, t, v, k, inference=True))
    logits, params = fwd(runs.full.model, data["times"], data["values"], data["mask"])
    for path in (runs.root / "full" / CHECKPOINT_FILE, runs.root / "full"):
        ckpt = load_checkpoint(path)
        assert ckpt.class_names == INFO.class_names
        logits2, params2 = fwd(ckpt.model, data["times"], data["values"], data["mask"])
        if path.name == CHECKPOINT_FILE:  # the last epoch's model
            np.testing.assert_array_equal(np.asarray(logits2), np.asarray(logits))
            np.testing.assert_array_equal(np.asarray(params2), np.asarray(params))
    pred = predict(runs.root / "full" / CHECKPOINT_FILE, batch, denormalise=_denormalise, all_classes=True)
    np.testing.assert_allclose(pred.probs, np.asarray(jax.nn.softmax(logits, axis=-1)), rtol=1e-6)
    np.testing.assert_allclose(pred.probs.sum(1), 1.0, rtol=1e-6)
    top = pred.probs.argmax(1)
    assert pred.predicted == [INFO.class_names[c] for c in top]
    for b, c in enumerate(top):
        name = INFO.class_names[c]
        assert set(pred.params[b]) == set(INFO.param_names[name])
        assert pred.params[b]["k"] == pytest.approx(float(np.exp(params[b, c, 0])), rel=1e-6)
        assert pred.params_by_class[b][name] == pred.params[b]
    # best.eqx holds the model with the lowest validation loss
    best = load_checkpoint(runs.root / "full" / BEST_FILE)
    val = [h["val_loss"] for h in runs.full.history]
    assert best.meta["epoch"] == 1 + int(np.argmin(val))


def test_non_finite_loss_stops_with_a_clear_message(tmp_path):
    source = _resume_source()
    source.splits["train"]["values"][40, 0, 0] = np.nan  # a real observation of the 2nd batch or later
    with pytest.raises(NonFiniteLossError, match=r"epoch 1, step \d+ \(batch \d+ of the epoch\)"):
        train(source, preset=PRESET, epochs=2, out=tmp_path, seed=11)
    assert not (tmp_path / CHECKPOINT_FILE).exists() and not (tmp_path / BEST_FILE).exists()


def test_evaluate_writes_json_and_plots(runs, tmp_path):
    res = evaluate(runs.root / "full", _resume_source(), split="test", out=tmp_path, denormalise=_denormalise)
    cm = np.array(res["confusion_matrix"])
    assert cm.sum() == res["n"] == 64
    assert res["accuracy"] == pytest.approx(np.trace(cm) / 64)
    assert 0.0 <= res["ece"] <= 1.0
    saved = json.loads((tmp_path / "evaluation.json").read_text())
    assert saved["confusion_matrix"] == res["confusion_matrix"]
    assert (tmp_path / "confusion.png").stat().st_size > 1000
    assert (tmp_path / "reliability.png").stat().st_size > 1000
    per = res["per_class"]["bi"]
    assert set(per["rmse_normalised"]) == {"k", "r"} and set(per["median_fold_error"]) == {"k", "r"}
    assert all(v >= 1.0 for v in per["median_fold_error"].values())
    assert set(res["per_class"]["mono"]["median_fold_error"]) == {"k"}


# ------------------------------------------------------------------------------------- hand cases
def test_confusion_matrix_hand_case():
    cm = confusion_matrix([0, 0, 1, 2, 2, 2], [0, 1, 1, 2, 0, 2], 3)
    np.testing.assert_array_equal(cm, [[1, 1, 0], [0, 1, 0], [1, 0, 2]])


def test_ece_hand_case():
    probs = np.array([[0.95, 0.05], [0.95, 0.05], [0.40, 0.60], [0.70, 0.30], [0.30, 0.70]])
    labels = np.array([0, 1, 1, 0, 1])
    # 5 bins: conf 0.95, 0.95 -> bin 4 (acc 1/2, conf .95); 0.6 -> bin 3 (acc 1, conf .6);
    # 0.7, 0.7 -> bin 3 as well (0.7 * 5 = 3.5): bin 3 holds 0.6, 0.7, 0.7, all correct.
    ece, bins = expected_calibration_error(probs, labels, n_bins=5)
    expect = 2 / 5 * abs(0.5 - 0.95) + 3 / 5 * abs(1.0 - (0.6 + 0.7 + 0.7) / 3)
    assert ece == pytest.approx(expect, abs=1e-12)
    assert [b["count"] for b in bins] == [0, 0, 0, 3, 2]
    perfect, _ = expected_calibration_error(np.array([[1.0, 0.0], [0.0, 1.0]]), np.array([0, 1]))
    assert perfect == 0.0


def test_cli_train_rejects_bad_input(tmp_path):
    from pkpd_jax.cli import app

    res = CliRunner().invoke(app, ["train", "--family", "xx", "--corpus", str(tmp_path), "--epochs", "1",
                                   "--out", str(tmp_path / "o")])
    assert res.exit_code == 1 and "--family must be 'pk' or 'pd'" in res.output
    res = CliRunner().invoke(app, ["train", "--family", "pk", "--corpus", str(tmp_path / "none"),
                                   "--epochs", "1", "--out", str(tmp_path / "o"), "--preset", "huge"])
    assert res.exit_code == 1 and "unknown preset 'huge'" in res.output


# ------------------------------------------------------------------------------ on a real corpus
def test_train_and_evaluate_on_a_generated_corpus(tmp_path):
    """`pkpd-jax train` (tiny, 1 epoch) and `pkpd-jax evaluate` on a tiny simulated PK corpus."""
    from pkpd_jax.amortized.batches import Batch, corpus_info, iter_batches
    from pkpd_jax.amortized.corpus import generate_corpus
    from pkpd_jax.cli import app

    corpus, ckpt, ev = tmp_path / "corpus", tmp_path / "ckpt", tmp_path / "eval"
    classes = ("pk_1c_iv", "pk_1c_oral")
    generate_corpus(corpus, "pk", 120, 0, shard_size=120, classes=classes, batch_size=64, progress=False)
    info = corpus_info(corpus)
    runner = CliRunner()
    res = runner.invoke(app, ["train", "--family", "pk", "--corpus", str(corpus), "--preset", "tiny",
                              "--epochs", "1", "--out", str(ckpt), "--batch-size", "32", "--no-progress"])
    assert res.exit_code == 0, res.output
    lines = [json.loads(s) for s in (ckpt / METRICS_FILE).read_text().splitlines()]
    assert len(lines) == 1 and lines[0]["step"] == info.counts["train"] // 32
    assert np.isfinite(lines[0]["val_loss"])
    res = runner.invoke(app, ["evaluate", "--checkpoint", str(ckpt), "--corpus", str(corpus),
                              "--out", str(ev), "--no-progress"])
    assert res.exit_code == 0, res.output
    out = json.loads((ev / "evaluation.json").read_text())
    assert out["n"] == info.counts["test"] and out["class_names"] == list(classes)
    assert set(out["per_class"]["pk_1c_oral"]["median_fold_error"]) == {"ka", "CL", "V"}
    assert (ev / "confusion.png").is_file() and (ev / "reliability.png").is_file()
    # predict() with the corpus's own denormalisation: natural units of the predicted class
    batch = next(iter_batches(corpus, "test", 4, seed=0, drop_last=False))
    assert isinstance(batch, Batch)
    pred = predict(ckpt, batch)
    for name, params in zip(pred.predicted, pred.params):
        assert set(params) == set(info.param_names[name]) and all(v > 0 for v in params.values())
