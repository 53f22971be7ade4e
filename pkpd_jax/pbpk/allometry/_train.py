"""Training, prediction and evaluation of neural allometry, and its checkpoint file."""

from __future__ import annotations

import dataclasses
import itertools
import math
import time
from collections.abc import Callable
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax

from ...nn import checkpoint
from ..physiology import SPECIES
from ._baselines import (
    _mask_of,
    fitted_allometry,
    fold_metrics,
    simple_allometry,
    single_species,
)
from ._data import (
    _SP,
    DEFAULT_SOURCES,
    PRECLINICAL,
    AllometryData,
    AllometryError,
    Observations,
    _check_target,
)
from ._features import (
    FEATURES,
    SPECIES_FEATURES,
    build_inputs,
)
from ._network import NeuralAllometry, OffsetNet, TrainConfig


_FORMAT = "pkpd_jax.pbpk.allometry/1"


def _tasks(protocol: str):
    """(target, sources) pairs of the training protocol."""
    out = []
    for t in PRECLINICAL:
        others = [s for s in PRECLINICAL if s != t]
        for r in (3, 2):
            out += [(t, c) for c in itertools.combinations(others, r)]
    if protocol == "human":
        rdm = ("rat", "dog", "monkey")
        out += [("human", c) for r in (3, 2) for c in itertools.combinations(rdm, r)]
    return out


def _examples(obs: Observations, tasks):
    xs, bases, ys, srcs, tgts = [], [], [], [], []
    for t, s in tasks:
        src = _mask_of(s, obs.n)
        tg = np.full(obs.n, _SP[t])
        x, base = build_inputs(obs, src, tg)
        xs.append(x)
        bases.append(base)
        ys.append(np.column_stack([np.log(obs.cl[:, _SP[t]]), np.log(obs.vss[:, _SP[t]])]))
        srcs.append(src)
        tgts.append(tg)
    return (
        np.concatenate(xs),
        np.concatenate(bases),
        np.concatenate(ys),
        np.concatenate(srcs),
        np.concatenate(tgts),
    )


def _forward(net, x, src, tgt_onehot, base):
    d = jax.vmap(jax.vmap(net))(x)  # (n, 5, 2)
    src_mean = jnp.sum(d * src[..., None], 1) / jnp.sum(src, 1, keepdims=True)
    d_t = jnp.sum(d * tgt_onehot[..., None], 1)
    return base + d_t - src_mean


_forward_jit = eqx.filter_jit(_forward)


def _prep(stats, x, src, tgt, physiology: bool):
    x_mean, x_std = stats
    xs = np.where(np.any(x != 0, axis=2, keepdims=True), (x - x_mean) / x_std, 0.0)
    if not physiology:  # the species' physiology columns do not reach the network
        xs[..., : len(SPECIES_FEATURES)] = 0.0
    onehot = np.eye(len(SPECIES))[tgt]
    return (jnp.asarray(xs, jnp.float32), jnp.asarray(src, jnp.float32), jnp.asarray(onehot, jnp.float32))


def train(
    data: AllometryData | Observations, config: TrainConfig = TrainConfig(), log: Callable | None = None
) -> NeuralAllometry:
    """Fit the offset network on the observations of `data` under `config.protocol` (a
    validation split of the drugs, `val_fraction`, picks each member's best step)."""
    obs = data.obs if isinstance(data, AllometryData) else data
    if obs.n < 4:
        raise AllometryError(f"training needs at least 4 drugs; got {obs.n}.")
    c = config
    rng = np.random.default_rng(c.seed)
    perm = rng.permutation(obs.n)
    n_val = int(round(c.val_fraction * obs.n))
    val_idx, tr_idx = perm[:n_val], perm[n_val:]
    tasks = _tasks(c.protocol)
    x, base, y, src, tgt = _examples(obs.take(tr_idx), tasks)
    used = np.any(x != 0, axis=2)
    rows = x[used]
    x_mean, x_std = rows.mean(0), rows.std(0)
    x_std = np.where(x_std > 1e-8, x_std, 1.0)
    xj, sj, oj = _prep((x_mean, x_std), x, src, tgt, c.physiology)
    bj, yj = jnp.asarray(base, jnp.float32), jnp.asarray(y, jnp.float32)
    if n_val:
        xv, bv, yv, sv, tv = _examples(obs.take(val_idx), tasks)
        val = (
            *_prep((x_mean, x_std), xv, sv, tv, c.physiology),
            jnp.asarray(bv, jnp.float32),
            jnp.asarray(yv, jnp.float32),
        )

    def loss_fn(net, xb, sb, ob, bb, yb):
        pred = _forward(net, xb, sb, ob, bb)
        return jnp.mean(jnp.sum((pred - yb) ** 2, axis=1))

    sched = optax.cosine_decay_schedule(c.lr, c.steps, alpha=0.05)
    opt = optax.adamw(sched, weight_decay=c.weight_decay)

    @eqx.filter_jit
    def step(net, state, b):
        batch = (xj[b], sj[b], oj[b], bj[b], yj[b])
        loss, g = eqx.filter_value_and_grad(loss_fn)(net, *batch)
        upd, state = opt.update(g, state, eqx.filter(net, eqx.is_array))
        return eqx.apply_updates(net, upd), state, loss

    eval_loss = eqx.filter_jit(loss_fn)
    n_ex = xj.shape[0]
    nets, history = [], []
    t0 = time.perf_counter()
    base_val = (
        float(eval_loss(OffsetNet(len(FEATURES), c.width, c.depth, c.bound, key=jr.PRNGKey(0)), *val))
        if n_val
        else None
    )
    for m in range(c.ensemble):
        key = jr.PRNGKey(c.seed * 1000 + m)
        net = OffsetNet(len(FEATURES), c.width, c.depth, c.bound, key=key)
        state = opt.init(eqx.filter(net, eqx.is_array))
        brng = np.random.default_rng([c.seed, m])
        best, best_loss, hist = net, math.inf, []
        for it in range(1, c.steps + 1):
            b = jnp.asarray(brng.integers(0, n_ex, size=min(c.batch, n_ex)))
            net, state, loss = step(net, state, b)
            if it % c.eval_every == 0 or it == c.steps:
                vl = float(eval_loss(net, *val)) if n_val else float(loss)
                hist.append((it, float(loss), vl))
                if vl < best_loss:
                    best, best_loss = net, vl
        if log is not None:
            log(
                f"member {m + 1}/{c.ensemble}: best validation loss {best_loss:.4f} "
                f"(allometry {base_val if base_val is None else round(base_val, 4)}), "
                f"{time.perf_counter() - t0:.0f} s"
            )
        nets.append(best)
        history.append(hist)
    meta = {
        "protocol": c.protocol,
        "physiology": c.physiology,
        "n_train_drugs": int(len(tr_idx)),
        "n_val_drugs": int(n_val),
        "n_examples": int(n_ex),
        "tasks": [[t, list(s)] for t, s in tasks],
        "val_loss_allometry": base_val,
        "val_loss_best": [min(h[2] for h in hh) for hh in history],
        "seconds": round(time.perf_counter() - t0, 1),
        "features": list(FEATURES),
    }
    return NeuralAllometry(nets=tuple(nets), x_mean=x_mean, x_std=x_std, config=c, meta=meta)


def predict(
    model: NeuralAllometry,
    obs: Observations,
    sources=DEFAULT_SOURCES,
    target: str = "human",
    zero_correction: bool = False,
) -> dict:
    """Predict the target species' CL (L/h) and Vss (L) for every drug of `obs` from `sources`.

    Returns ``{"cl", "vss", "cl_allometry", "vss_allometry", "correction_cl",
    "correction_vss"}`` (arrays; corrections are fold factors). `zero_correction` drops the
    network: the result is then exactly `simple_allometry`."""
    t = _SP[_check_target(target)]
    if target in sources:
        raise AllometryError(f"the target {target!r} cannot also be a source.")
    src = _mask_of(sources, obs.n)
    tg = np.full(obs.n, t)
    x, base = build_inputs(obs, src, tg)
    if zero_correction or not model.nets:
        log_pred = base
    else:
        xj, sj, oj = _prep((model.x_mean, model.x_std), x, src, tg, model.config.physiology)
        bj = jnp.asarray(np.zeros_like(base), jnp.float32)
        corr = np.mean(
            [np.asarray(_forward_jit(net, xj, sj, oj, bj), dtype=np.float64) for net in model.nets], axis=0
        )
        log_pred = base + corr
    return {
        "cl": np.exp(log_pred[:, 0]),
        "vss": np.exp(log_pred[:, 1]),
        "cl_allometry": np.exp(base[:, 0]),
        "vss_allometry": np.exp(base[:, 1]),
        "correction_cl": np.exp(log_pred[:, 0] - base[:, 0]),
        "correction_vss": np.exp(log_pred[:, 1] - base[:, 1]),
    }


def evaluate(models: dict, data: AllometryData, sources=DEFAULT_SOURCES, target: str = "human") -> dict:
    """Fold-error metrics of every method on `data` against the noiseless truth of `target`:
    each neural model of `models` (``{label: NeuralAllometry}``), simple allometry (fixed
    exponents; fitted exponents; fu-corrected) and single-species scaling from each source.

    Returns ``{"metrics": {method: {"CL": ..., "Vss": ...}}, "predictions": {method: (cl, vss)},
    "truth": (cl, vss)}``."""
    t = _SP[_check_target(target)]
    obs = data.obs
    preds = {}
    for label, m in models.items():
        p = predict(m, obs, sources, target)
        preds[label] = (p["cl"], p["vss"])
    preds["simple allometry (0.75 / 1.0)"] = simple_allometry(obs, sources, target)
    if len(sources) >= 2:
        preds["simple allometry (fitted exponents)"] = fitted_allometry(obs, sources, target)
    preds["simple allometry, fu-corrected"] = simple_allometry(obs, sources, target, fu_corrected=True)
    for s in sources:
        preds[f"single species ({s})"] = single_species(obs, s, target)
    truth = (data.cl_true[:, t], data.vss_true[:, t])
    metrics = {
        k: {"CL": fold_metrics(v[0], truth[0]), "Vss": fold_metrics(v[1], truth[1])} for k, v in preds.items()
    }
    return {"metrics": metrics, "predictions": preds, "truth": truth}


# -------------------------------------------------------------------------------- checkpoints
def save(model: NeuralAllometry, path: str | Path) -> Path:
    """Write `model` to one file (JSON header line + equinox-serialised ensemble), atomically."""
    header = {
        "format": _FORMAT,
        "config": dataclasses.asdict(model.config),
        "features": list(FEATURES),
        "n_nets": len(model.nets),
        "x_mean": model.x_mean.tolist(),
        "x_std": model.x_std.tolist(),
        "meta": model.meta,
    }
    return checkpoint.save(path, header, list(model.nets))


def load(path: str | Path) -> NeuralAllometry:
    """Read a checkpoint written by [`save`][]."""
    what = "neural-allometry checkpoint"
    try:
        header = checkpoint.read_header(path, format=_FORMAT, what=what)
    except checkpoint.CheckpointNotFoundError:
        raise
    except checkpoint.CheckpointError as e:  # this module's error family, same message
        raise AllometryError(str(e)) from e
    if tuple(header["features"]) != FEATURES:
        raise AllometryError(f"{path} was trained on other input features: {header['features']}.")
    cfg = dict(header["config"])
    cfg = TrainConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in cfg.items()})
    like = [
        eqx.filter_eval_shape(OffsetNet, len(FEATURES), cfg.width, cfg.depth, cfg.bound, key=jr.PRNGKey(0))
        for _ in range(header["n_nets"])
    ]
    _, nets = checkpoint.load(path, like, format=_FORMAT, what=what)
    return NeuralAllometry(
        nets=tuple(nets),
        x_mean=np.asarray(header["x_mean"]),
        x_std=np.asarray(header["x_std"]),
        config=cfg,
        meta=header.get("meta", {}),
    )
