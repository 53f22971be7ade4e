"""Corpus simulation: the noise-free trajectories of one shard, batched per class, sorted by
design and stiffness, split over devices, with a float64 fallback for the few failures."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np

from ._corpus_design import N_TIMES, ROUTES, CorpusConfig
from .batches import _class_table


_SIM_CACHE: dict = {}


def class_model(cfg: CorpusConfig, name: str):
    """The model simulated for class `name`: the class itself (PK) or the driver + the class (PD)."""
    from ..models import get_model

    return get_model(name) if cfg.family == "pk" else get_model(cfg.pd_driver, name)


def _sim_fn(cfg: CorpusConfig, name: str, n_dev: int):
    """Jitted ``(theta, dose_time, dose_amount, dose_duration, dose_cmt, ts) -> (conc, resp,
    status)`` over a batch, split over `n_dev` devices; one per class and configuration."""
    key = ("sim", cfg.family, cfg.pd_driver, name, cfg.dtype, cfg.rtol, cfg.atol, cfg.max_steps, cfg.method,
           n_dev)
    if key in _SIM_CACHE:
        return _SIM_CACHE[key]
    import jax

    from ..devices import device_mesh
    from ..dosing import Regimen
    from ..solve import SolverConfig, erk_supported, simulate

    model = class_model(cfg, name)
    # "erk": the one-loop engine (always available with Tsit5); "simulate": the default engine
    # choice of `simulate` (matrix exponentials for linear models, diffrax per interval otherwise)
    scfg = SolverConfig(rtol=cfg.rtol, atol=cfg.atol, max_steps=cfg.max_steps,
                        method="erk" if cfg.method == "erk" else "auto")
    if scfg.method == "erk" and not erk_supported(model, scfg):
        scfg = SolverConfig(rtol=cfg.rtol, atol=cfg.atol, max_steps=cfg.max_steps, method="auto")

    def one(th, t, a, d, c, ts):
        sol = simulate(model, th, Regimen(t, a, d, c), ts, config=scfg)
        return sol.conc, sol.resp, sol.status

    body = jax.vmap(one)
    if n_dev > 1:
        spec = jax.sharding.PartitionSpec("subjects")
        body = jax.shard_map(body, mesh=device_mesh("subjects", n_dev), in_specs=spec, out_specs=spec,
                             check_vma=False)
    fn = jax.jit(body)
    _SIM_CACHE[key] = fn
    return fn


def _radius_fn(cfg: CorpusConfig, name: str):
    """Jitted batch of spectral-radius proxies: the Jacobian at the baseline state, zero input."""
    key = ("radius", cfg.family, cfg.pd_driver, name, cfg.dtype)
    if key in _SIM_CACHE:
        return _SIM_CACHE[key]
    import jax

    model = class_model(cfg, name)
    fn = jax.jit(jax.vmap(lambda th: model.jacobian(th, model.init(th))))
    _SIM_CACHE[key] = fn
    return fn


def _x64_ctx(cfg: CorpusConfig):
    import jax

    return jax.enable_x64(cfg.dtype == "float64")


def _batch_size(cfg: CorpusConfig, n_dev: int) -> int:
    """Subjects per compiled call: fixed for a configuration (so one compilation per class)."""
    largest_group = -(-cfg.shard_size // len(cfg.classes))
    b = min(cfg.batch_size, largest_group)
    return -(-b // n_dev) * n_dev


def class_args(cfg: CorpusConfig, draw: dict, name: str, rows: np.ndarray, np_dtype) -> list[np.ndarray]:
    """Simulator inputs of one class's rows: theta, dose time/amount/duration/compartment, times."""
    model = class_model(cfg, name)
    p = len(_class_table(cfg.family)[name][0])
    theta = draw["theta"][rows, :p]
    if cfg.family == "pd":
        theta = np.concatenate([draw["driver_theta"][rows], theta], axis=1)
    route = draw["route"][rows]
    cmt = np.where(route == ROUTES.index("oral"), model.pk.dose_cmt, model.pk.central)
    cmt = np.where(route == ROUTES.index("class default"), -1, cmt)
    cmt = np.broadcast_to(cmt[:, None], draw["dose_amount"][rows].shape)
    cmt = np.where(draw["dose_amount"][rows] > 0, cmt, -1).astype(np.int32)
    args = [theta, draw["dose_time"][rows], draw["dose_amount"][rows], draw["dose_duration"][rows], cmt,
            draw["times"][rows]]
    return [a if a.dtype == np.int32 else a.astype(np_dtype) for a in args]


def _pad_rows(args: list[np.ndarray], idx: np.ndarray, size: int) -> list[np.ndarray]:
    """Rows `idx` of every argument, padded to `size` rows by repeating the last one."""
    pad = size - idx.size
    return [np.concatenate([a[idx], np.repeat(a[idx[-1:]], pad, axis=0)]) for a in args]


#: The fallback for the few subjects the fast path cannot integrate (its step size underflows on
#: some long, stiff decays): `simulate` in float64 (matrix exponentials for linear models,
#: diffrax Tsit5 per dosing interval otherwise), in calls of this many subjects.
FALLBACK = {"method": "simulate", "dtype": "float64", "rtol": 1e-6, "atol": 1e-9, "batch": 16}


def simulate_shard(
    cfg: CorpusConfig,
    draw: dict[str, np.ndarray],
    *,
    n_dev: int | None = None,
    on_batch: Callable[[int], None] | None = None,
    fallback: bool = True,
    sort: bool = True,
) -> dict[str, np.ndarray]:
    """Noise-free concentrations ``[m, T]``, responses ``[m, T]``, statuses ``[m]`` (0 = success)
    and ``fallback`` ``[m]`` (True where the fallback integrator was used) of a shard.

    `n_dev`: devices to split each batch over (default all); `on_batch(k)`: called as batches of
    `k` subjects finish; `fallback`: re-simulate failures with `FALLBACK`; `sort`: batch subjects
    by design and stiffness (False only to measure what sorting gains)."""
    import jax

    n_dev = len(jax.devices()) if n_dev is None else n_dev
    m = draw["label"].shape[0]
    conc = np.zeros((m, N_TIMES))
    resp = np.zeros((m, N_TIMES))
    status = np.zeros(m, np.int32)
    used_fallback = np.zeros(m, bool)
    B = _batch_size(cfg, n_dev)
    np_dtype = np.float32 if cfg.dtype == "float32" else np.float64
    pending = []
    with _x64_ctx(cfg):
        for k, name in enumerate(cfg.classes):
            rows = np.flatnonzero(draw["label"] == k)
            if rows.size == 0:
                continue
            args = class_args(cfg, draw, name, rows, np_dtype)
            # sort by design, then by stiffness: a batched loop runs as long as its slowest subject
            jac = np.asarray(_radius_fn(cfg, name)(args[0]), float)
            radius = np.max(np.abs(np.linalg.eigvals(jac)), axis=-1)
            order = np.lexsort((radius, draw["design"][rows])) if sort else np.arange(rows.size)
            fn = _sim_fn(cfg, name, n_dev)
            for lo in range(0, rows.size, B):  # dispatched asynchronously, collected below
                idx = order[lo : lo + B]
                pending.append((rows[idx], fn(*_pad_rows(args, idx, B))))
        for dest, result in pending:
            c, r, s = (np.asarray(x) for x in jax.block_until_ready(result))
            n = dest.size
            conc[dest], resp[dest], status[dest] = c[:n], r[:n], s[:n]
            if on_batch is not None:
                on_batch(n)
    bad = (status != 0) | ~np.all(np.isfinite(conc), axis=1) | ~np.all(np.isfinite(resp), axis=1)
    if fallback and bad.any():
        fb = dataclasses.replace(cfg, **{k: FALLBACK[k] for k in ("method", "dtype", "rtol", "atol")})
        size = -(-FALLBACK["batch"] // n_dev) * n_dev
        with _x64_ctx(fb):
            for k, name in enumerate(cfg.classes):
                rows = np.flatnonzero(bad & (draw["label"] == k))
                if rows.size == 0:
                    continue
                args = class_args(fb, draw, name, rows, np.float64)
                fn = _sim_fn(fb, name, n_dev)
                for lo in range(0, rows.size, size):
                    idx = np.arange(lo, min(lo + size, rows.size))
                    c, r, s = (np.asarray(x) for x in fn(*_pad_rows(args, idx, size)))
                    dest = rows[idx]
                    conc[dest], resp[dest], status[dest] = c[: idx.size], r[: idx.size], s[: idx.size]
                    used_fallback[dest] = True
    return {"conc": conc, "resp": resp, "status": status, "fallback": used_fallback}
