"""Training, prediction, evaluation and the checkpoint file of the PBPK forecaster (see the
"Training" and "Metrics" paragraphs of `pkpd_jax.pbpk.forecast`)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax

from ...amortized.train import Preset, make_optimizer
from ...nn import checkpoint
from ..model import ORAL_CMT
from ..physiology import SPECIES
from ._corpus import DESCRIPTOR_NAMES, CorpusConfig, ForecastCorpus, _derived
from ._network import DTYPE, ForecastConfig, PBPKForecaster


_FORMAT = "pkpd_jax.pbpk.forecaster/1"


# ---------------------------------------------------------------------------------------- training
@dataclass
class TrainResult:
    """What [`train_forecaster`][] returns: the model (by default the one with the lowest
    validation loss), its normalisation and configs, and one record per epoch."""

    model: PBPKForecaster
    norm: dict
    config: ForecastConfig
    corpus_config: CorpusConfig
    history: list[dict]


def _normalisation(corpus: ForecastCorpus) -> dict:
    idx = corpus.indices("train")
    desc = corpus.desc[idx]
    sd = desc.std(axis=0)
    y = (corpus.log_conc - corpus.log_dose_per_kg[:, None])[idx][corpus.quantified[idx]]
    return {"desc_mean": desc.mean(axis=0).tolist(), "desc_sd": np.where(sd > 0, sd, 1.0).tolist(),
            "y_mean": float(y.mean()), "y_sd": float(y.std()), "k_obs": corpus.config.k_obs,
            "descriptor_names": list(DESCRIPTOR_NAMES)}


def _inputs(norm: dict, desc, times, log_obs, quantified, log_dose_per_kg, k_obs: int):
    """Network inputs (float32 numpy) from raw arrays: standardised descriptors and values, and
    the observed mask (the first `k_obs` times, where quantified)."""
    desc = (np.asarray(desc) - np.asarray(norm["desc_mean"])) / np.asarray(norm["desc_sd"])
    y = (np.asarray(log_obs) - np.asarray(log_dose_per_kg)[:, None] - norm["y_mean"]) / norm["y_sd"]
    first = np.arange(np.shape(times)[1]) < k_obs
    observed = first[None, :] & np.asarray(quantified, bool)
    y = np.where(observed, y, 0.0)
    return (desc.astype(np.float32), np.asarray(times, np.float32), y.astype(np.float32), observed)


def _targets(norm: dict, corpus: ForecastCorpus, idx, k_obs: int):
    y = (corpus.log_conc[idx] - corpus.log_dose_per_kg[idx, None] - norm["y_mean"]) / norm["y_sd"]
    scored = corpus.quantified[idx] & (np.arange(corpus.config.n_times) >= k_obs)[None, :]
    return np.where(scored, y, 0.0).astype(np.float32), scored


def _apply(model, desc, times, values, observed):
    return jax.vmap(model)(desc, times, values, observed)


def _loss(model, batch):
    desc, times, values, observed, target, scored = batch
    pred = _apply(model, desc, times, values, observed)
    w = scored.astype(DTYPE)
    return jnp.sum(w * (pred - target) ** 2) / jnp.maximum(jnp.sum(w), 1.0)


def train_forecaster(
    corpus: ForecastCorpus,
    config: ForecastConfig = ForecastConfig(),
    *,
    seed: int = 0,
    keep_best: bool = True,
    log: Callable[[str], None] | None = None,
) -> TrainResult:
    """Train a [`PBPKForecaster`][] on the ``train`` split of `corpus`, keeping the model with the
    best ``val`` loss (`keep_best`; else the last). Deterministic given `seed` (initialisation,
    batch order, noise redraws)."""
    tr, va = corpus.indices("train"), corpus.indices("val")
    if tr.size < config.batch_size:
        raise ValueError(f"the training split has {tr.size} subjects, fewer than one batch "
                         f"(batch_size={config.batch_size}).")
    c, k = corpus.config, corpus.config.k_obs
    norm = _normalisation(corpus)
    steps_per_epoch = tr.size // config.batch_size
    preset = Preset("pbpk_forecast", config.d_model, config.n_heads, config.n_layers, config.d_ff, 0.0,
                    config.lr, config.weight_decay, 1.0, batch_size=config.batch_size,
                    warmup_frac=config.warmup_frac, clip_norm=config.clip_norm)
    optim, _ = make_optimizer(preset, steps_per_epoch * config.epochs)
    model = PBPKForecaster(len(DESCRIPTOR_NAMES), config, key=jr.PRNGKey(seed))
    opt_state = optim.init(eqx.filter(model, eqx.is_inexact_array))

    @eqx.filter_jit
    def step(model, opt_state, batch):
        loss, grads = eqx.filter_value_and_grad(_loss)(model, batch)
        updates, opt_state = optim.update(grads, opt_state, eqx.filter(model, eqx.is_inexact_array))
        return eqx.apply_updates(model, updates), opt_state, loss, optax.global_norm(grads)

    eval_loss = eqx.filter_jit(_loss)
    target_tr, scored_tr = _targets(norm, corpus, tr, k)
    target_va, scored_va = _targets(norm, corpus, va, k)
    val_in = _inputs(norm, corpus.desc[va], corpus.times[va], corpus.log_obs[va], corpus.quantified[va],
                     corpus.log_dose_per_kg[va], k)
    best, best_val, history = model, math.inf, []
    for epoch in range(config.epochs):
        rng = np.random.default_rng([seed, epoch])
        log_obs = corpus.log_conc[tr] + c.noise_sd * rng.standard_normal((tr.size, c.n_times))
        x = _inputs(norm, corpus.desc[tr], corpus.times[tr], log_obs, corpus.quantified[tr],
                    corpus.log_dose_per_kg[tr], k)
        order = rng.permutation(tr.size)
        losses = []
        for b in range(steps_per_epoch):
            j = order[b * config.batch_size:(b + 1) * config.batch_size]
            batch = tuple(a[j] for a in x) + (target_tr[j], scored_tr[j])
            model, opt_state, loss, gnorm = step(model, opt_state, batch)
            losses.append(loss)
        train_loss = float(np.mean(jax.device_get(losses)))
        if not math.isfinite(train_loss):
            raise FloatingPointError(f"the training loss became {train_loss} at epoch {epoch + 1}; "
                                     "lower `lr` or raise `clip_norm`.")
        val = _batched_loss(eval_loss, model, val_in + (target_va, scored_va), 1024)
        history.append({"epoch": epoch + 1, "train_loss": train_loss, "val_loss": val})
        if val < best_val or not keep_best:
            best, best_val = model, val
        if log is not None:
            log(f"epoch {epoch + 1}/{config.epochs}: train {train_loss:.4f}, val {val:.4f}")
    return TrainResult(model=best, norm=norm, config=config, corpus_config=c, history=history)


def _batched_loss(fn, model, arrays, size):
    n = arrays[0].shape[0]
    total, weight = 0.0, 0.0
    for lo in range(0, n, size):
        part = tuple(a[lo:lo + size] for a in arrays)
        w = float(np.sum(part[-1]))
        total += float(fn(model, part)) * w
        weight += w
    return total / max(weight, 1.0)


# ------------------------------------------------------------------------------- predict / evaluate
@eqx.filter_jit
def _predict_jit(model, desc, times, values, observed):
    return _apply(model, desc, times, values, observed)


def predict(
    model: PBPKForecaster,
    norm: dict,
    desc: np.ndarray,
    times: np.ndarray,
    log_obs: np.ndarray,
    log_dose_per_kg: np.ndarray,
    *,
    quantified: np.ndarray | None = None,
    k_obs: int | None = None,
    batch_size: int = 4096,
) -> np.ndarray:
    """Forecast ln C (mg/L) at every grid time for a batch of subjects.

    **Arguments:** `desc` ``[n, 21]`` raw input features (`descriptors`); `times` ``[n, T]`` h;
    `log_obs` ``[n, T]`` observed ln C (only the first `k_obs` columns are read, default the
    training ``k_obs``); `log_dose_per_kg` ``[n]`` ln(dose mg / BW kg); `quantified` ``[n, T]``
    (False drops an observation below the LLOQ; default all True).

    **Returns:** ``[n, T]`` predicted ln C; the first `k_obs` columns are the network's
    reconstruction of the observed times, the rest the forecast.
    """
    desc, times, log_obs = (np.asarray(a, np.float64) for a in (desc, times, log_obs))
    log_dose_per_kg = np.asarray(log_dose_per_kg, np.float64).reshape(-1)
    n_desc = len(norm["desc_mean"])
    if desc.ndim != 2 or desc.shape[1] != n_desc:
        raise ValueError(f"`desc` must have shape (n, {n_desc}); got {desc.shape}.")
    n = desc.shape[0]
    if times.ndim != 2 or times.shape[0] != n or log_obs.shape != times.shape:
        raise ValueError(f"`times` and `log_obs` must have shape (n={n}, T); got {times.shape} and "
                         f"{log_obs.shape}.")
    if log_dose_per_kg.shape != (n,):
        raise ValueError(f"`log_dose_per_kg` must have shape ({n},); got {log_dose_per_kg.shape}.")
    k = norm["k_obs"] if k_obs is None else int(k_obs)
    if not 1 <= k < times.shape[1]:
        raise ValueError(f"`k_obs` must be in [1, {times.shape[1]}); got {k}.")
    if not np.all(np.isfinite(desc)) or not np.all(np.isfinite(times)) or np.any(times < 0):
        raise ValueError("`desc` and `times` must be finite and `times` >= 0.")
    if not np.all(np.isfinite(log_obs[:, :k])):
        bad = np.argwhere(~np.isfinite(log_obs[:, :k]))[0].tolist()
        raise ValueError(f"the observed log concentrations must be finite; got {log_obs[tuple(bad)]} "
                         f"at [subject, time] {bad}.")
    q = np.ones(times.shape, bool) if quantified is None else np.asarray(quantified, bool)
    x = _inputs(norm, desc, times, log_obs, q, log_dose_per_kg, k)
    out = [np.asarray(_predict_jit(model, *(a[lo:lo + batch_size] for a in x)))
           for lo in range(0, n, batch_size)]
    y = np.concatenate(out).astype(np.float64)
    return y * norm["y_sd"] + norm["y_mean"] + log_dose_per_kg[:, None]


def forecast_fn(model: PBPKForecaster, norm: dict) -> Callable:
    """A jitted ``f(raw_desc, theta, bw, times, log_obs, log_dose_per_kg) -> ln C [n, T]``: the
    whole forecast path in one compiled call, from the 17 raw descriptors ``[n, 17]`` (the first
    columns of `descriptors`), the PBPK parameters ``theta [n, 43]`` (for `derived_features`),
    body weights, grid times, observed ln C (the first ``norm["k_obs"]`` columns are read) and
    ln(dose / BW). Inputs are not checked (use [`predict`][] for checked calls); the throughput
    study times this path."""
    k = int(norm["k_obs"])
    mean, sd = np.asarray(norm["desc_mean"], np.float32), np.asarray(norm["desc_sd"], np.float32)
    y_mean, y_sd = float(norm["y_mean"]), float(norm["y_sd"])

    @jax.jit
    def run(raw, theta, bw, times, log_obs, off):
        desc = jnp.concatenate([raw, _derived(theta, bw)], axis=-1).astype(DTYPE)
        desc = (desc - mean) / sd
        observed = jnp.broadcast_to(jnp.arange(times.shape[-1]) < k, times.shape)
        y = ((log_obs - off[:, None] - y_mean) / y_sd).astype(DTYPE)
        out = _apply(model, desc, times.astype(DTYPE), jnp.where(observed, y, 0.0), observed)
        return out * y_sd + y_mean + off[:, None]

    return run


def fold_error_summary(log_pred: np.ndarray, log_true: np.ndarray, scored: np.ndarray) -> dict:
    """Median fold error, fraction within 2-fold (and 1.25-, 3-fold) over the `scored` points."""
    fe = np.exp(np.abs(np.asarray(log_pred) - np.asarray(log_true)))[np.asarray(scored, bool)]
    if fe.size == 0:
        raise ValueError("no scored points (every forecast point is below the LLOQ?).")
    return {"n_points": int(fe.size), "median_fold_error": float(np.median(fe)),
            "gmfe": float(np.exp(np.mean(np.log(fe)))), "p90_fold_error": float(np.quantile(fe, 0.9)),
            "within_1.25": float(np.mean(fe <= 1.25)), "within_2": float(np.mean(fe <= 2.0)),
            "within_3": float(np.mean(fe <= 3.0))}


def evaluate(model: PBPKForecaster, norm: dict, corpus: ForecastCorpus, split: str = "test") -> dict:
    """Forecast accuracy on `split` (default the held-out drugs): overall, by route and by species,
    against the truth, and the naive baseline (log-linear extrapolation of the last two observed
    points). Also returns the arrays (``log_pred``, ``scored``, ``fold_error``) for plots."""
    idx = corpus.indices(split)
    if idx.size == 0:
        raise ValueError(f"split {split!r} is empty.")
    k = norm["k_obs"]
    pred = predict(model, norm, corpus.desc[idx], corpus.times[idx], corpus.log_obs[idx],
                   corpus.log_dose_per_kg[idx], quantified=corpus.quantified[idx], k_obs=k)
    truth, q = corpus.log_conc[idx], corpus.quantified[idx]
    scored = q & (np.arange(truth.shape[1]) >= k)[None, :]
    out = {"split": split, "n_subjects": int(idx.size), "n_drugs": int(np.unique(corpus.drug_id[idx]).size),
           "k_obs": k, "overall": fold_error_summary(pred, truth, scored)}
    oral = corpus.route_cmt[idx] == ORAL_CMT
    out["by_route"] = {name: fold_error_summary(pred[m], truth[m], scored[m])
                       for name, m in (("iv", ~oral), ("oral", oral)) if np.any(scored[m])}
    out["by_species"] = {s: fold_error_summary(pred[m], truth[m], scored[m])
                         for i, s in enumerate(SPECIES)
                         if np.any(scored[m := corpus.species[idx] == i])}
    # Naive baseline: the line through the last two observed (noisy) points in (t, ln C).
    t, yo = corpus.times[idx], corpus.log_obs[idx]
    slope = (yo[:, k - 1] - yo[:, k - 2]) / (t[:, k - 1] - t[:, k - 2]) if k >= 2 else np.zeros(idx.size)
    base = yo[:, [k - 1]] + slope[:, None] * (t - t[:, [k - 1]])
    out["baseline_loglinear"] = fold_error_summary(base, truth, scored)
    out["arrays"] = {"index": idx, "log_pred": pred, "scored": scored,
                     "fold_error": np.exp(np.abs(pred - truth))[scored]}
    return out


# -------------------------------------------------------------------------------------- save / load
def save_forecaster(path: str | Path, result: TrainResult) -> Path:
    """Write the model, its normalisation and configs to `path` (one checkpoint file of
    `pkpd_jax.nn.checkpoint`: a JSON header line, then the equinox-serialised leaves)."""
    header = {"format": _FORMAT, "config": result.config.to_dict(), "norm": result.norm,
              "corpus_config": result.corpus_config.to_dict(), "n_desc": result.model.n_desc,
              "history": result.history}
    return checkpoint.save(path, header, result.model)


def load_forecaster(path: str | Path) -> TrainResult:
    """Load what [`save_forecaster`][] wrote."""
    header = checkpoint.read_header(path, format=_FORMAT, what="PBPK forecaster file")
    config = ForecastConfig.from_dict(header["config"])
    like = eqx.filter_eval_shape(PBPKForecaster, header["n_desc"], config, key=jr.PRNGKey(0))
    _, model = checkpoint.load(path, like, format=_FORMAT, what="PBPK forecaster file")
    return TrainResult(model=model, norm=header["norm"], config=config,
                       corpus_config=CorpusConfig.from_dict(header["corpus_config"]),
                       history=header["history"])
