"""Predictive checks: replicate data sets from a population model (new η for every subject,
the data's covariates and doses, residual error from the one residual model)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array

from ..population import simulate_residual


#: A `pkpd_jax.inference.likelihood.PopulationModel`. Not imported, not even for type checking:
#: the likelihood module imports this one, and the import graph stays acyclic.
PopulationModel = Any


__all__ = ["PredictiveSample", "simulate_predictive"]


class PredictiveSample(NamedTuple):
    """Replicate data sets from [`PopulationModel.simulate_predictive`][] (R replicates).

    `dv`, `ipred`, `below_lloq`: ``(R, N, M)``; `status`: ``(R, N)`` (0 = success);
    `params`: ``(R, N, P)`` individual parameters; `time`, `dvid`, `mask`: ``(N, M)`` from the
    data (`mask` = the observations the model fits).
    """

    dv: Array
    ipred: Array
    below_lloq: Array
    status: Array
    params: Array
    time: Array
    dvid: Array
    mask: Array


def simulate_predictive(
    pm: PopulationModel, values, key: Array, *, n_replicates: int | None = None
) -> PredictiveSample:
    """Replicate data sets for visual predictive checks.

    `values`: population values as a dict of natural units (scalars, or arrays with one leading
    draws axis, as [`PopulationModel.unflatten`][] returns), or positions ``(dim,)`` /
    ``(..., dim)`` (e.g. MCMC draws ``(chains, draws, dim)``). Each replicate draws new η for every
    subject (the data's covariates and doses are kept), simulates at the data's observation
    times and adds residual error ``DV = f·(1 + σ_prop·ε₁) + σ_add·ε₂``. With scalar values
    `n_replicates` (default 1) replicates are drawn; with S draws each draw gives `n_replicates`
    (default 1) replicates, ``R = S·n_replicates``. `below_lloq` flags simulated DVs under the
    LLOQ for observation types that have BLQ rows in the data.
    """
    if isinstance(values, Mapping):
        vals = {k: jnp.asarray(values[k], float) for k in pm.names}
        if all(v.ndim == 0 for v in vals.values()):
            vals = {k: v[None] for k, v in vals.items()}
        pos = jax.vmap(lambda v: pm.to_position(v))(vals)
    else:
        pos = jnp.asarray(values, float).reshape(-1, pm.dim)
    reps = 1 if n_replicates is None else int(n_replicates)
    if reps < 1:
        raise ValueError(f"`n_replicates` must be >= 1; got {n_replicates}")
    pos = jnp.repeat(pos, reps, axis=0)
    keys = jax.random.split(key, pos.shape[0])

    blq_types = [t for t in pm.types if np.any(np.asarray(pm._blq) & (np.asarray(pm._dvid) == t))]
    has_lloq = jnp.isin(pm._dvid, jnp.asarray(blq_types or [-1]))
    lloq_by_type = {}
    for t in blq_types:
        sel = np.asarray(pm._blq) & (np.asarray(pm._dvid) == t)
        lloq_by_type[t] = float(np.median(np.asarray(pm._lloq)[sel]))
    lloq = jnp.zeros(pm._dvid.shape)
    for t, v in lloq_by_type.items():
        lloq = jnp.where(pm._dvid == t, v, lloq)
    lloq = jnp.where(pm._blq, pm._lloq, lloq)

    def one(x, k):
        tree = pm._tree(x)
        k_eta, k1, k2 = jax.random.split(k, 3)
        tree = pm._with_standard_eta(tree, jax.random.normal(k_eta, tree["eta"].shape, tree["eta"].dtype))
        theta = pm._to_natural(pm._individual_u(tree))
        pred, ok = pm._map_subjects(pm._predict, theta, pm._times, *pm._reg)
        f = jnp.where(pm._dvid == 2, pred[:, 1], pred[:, 0])
        sigma = jnp.exp(tree["log_sigma"]).reshape(len(pm.types), 2)
        sp, sa = sigma[pm._type, 0], sigma[pm._type, 1]
        e1 = jax.random.normal(k1, f.shape, f.dtype)
        e2 = jax.random.normal(k2, f.shape, f.dtype)
        dv = simulate_residual(f, sp, sa, e1, e2)
        status = jnp.where(ok > 0.5, 0, 1)
        return dv, f, has_lloq & (dv < lloq), status, theta

    dv, f, blq, status, theta = jax.jit(jax.vmap(one))(pos, keys)
    return PredictiveSample(dv, f, blq, status, theta, pm._times, pm._dvid, pm._mask)
