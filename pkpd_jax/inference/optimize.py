"""Optimisation on the population log-density: the joint mode ([`fit_map`][], Adam), the
curvature there ([`curvature_matrix`][], [`curvature_diagonal`][]: finite differences of the
compiled gradient) and the chains' starting points around it ([`starting_points`][],
[`scatter`][])."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array

from ..population import PopulationDataError


#: A `pkpd_jax.inference.likelihood.PopulationModel`. Not imported, not even for type checking:
#: the likelihood module imports this one, and the import graph stays acyclic.
PopulationModel = Any


__all__ = [
    "StartingPoints",
    "fit_map",
    "curvature_matrix",
    "curvature_diagonal",
    "starting_points",
    "scatter",
]


def fit_map(
    pm: PopulationModel,
    position: Array | None = None,
    *,
    steps: int = 500,
    learning_rate: float = 0.05,
    final_learning_rate: float = 1e-3,
) -> Array:
    """Maximise the log-density with Adam (cosine-decayed step size) from `position` (default:
    the prior medians). Steps with a non-finite log-density or gradient are skipped; the best
    position seen is returned. Each step is one `value_and_grad` call.

    This is the joint mode over population values *and* η (used for starting points). In the
    non-centred parametrisation the joint mode has no ``-N·log ω`` term, so ω there is pulled up
    towards the prior scale and is not an estimate of the between-subject SD (sample for that);
    typical values and covariate effects are close to the data's (checked in the tests), but the
    direction "typical value vs. mean η" is flat, so allow ~1000 steps for them to settle."""
    import optax

    x = pm.prior_median_position() if position is None else jnp.asarray(position, float)
    schedule = optax.cosine_decay_schedule(
        learning_rate, max(steps, 1), alpha=final_learning_rate / learning_rate
    )
    opt = optax.adam(schedule)

    @jax.jit
    def update(x, state, val, g):
        good = jnp.isfinite(val) & jnp.all(jnp.isfinite(g))
        g = jnp.where(good & ~frozen, g, 0.0)
        upd, new_state = opt.update(-g, state, x)
        x_new = optax.apply_updates(x, upd)
        return jnp.where(good, x_new, x), new_state

    def step(x, state):
        # the model's compiled value_and_grad, then a small compiled Adam update: a jitted step
        # around both would compile the log-density a second time (~10-20 s on a CPU)
        val, g = pm.value_and_grad(x)
        return (*update(x, state, val, g), val)

    # Centred: the joint mode is at ω -> 0 (the -N·log ω term), so ω stays where it starts.
    frozen = jnp.asarray(pm.omega_mask(centred=True))

    state = opt.init(x)
    best_x, best_v = x, -np.inf
    for _ in range(steps):
        x_prev = x
        x, state, val = step(x, state)
        v = float(val)
        if np.isfinite(v) and v > best_v:
            best_x, best_v = x_prev, v
    v = float(pm.value_and_grad(x)[0])
    if np.isfinite(v) and v >= best_v:
        best_x = x
    return best_x


def curvature_matrix(pm: PopulationModel, position: Array, *, rel_step: float = 1e-5,
                     sparse: bool = True) -> np.ndarray:
    """Negative Hessian ``(dim, dim)`` of the log-density at `position`, by forward differences
    of the gradient, symmetrised: ``H_ij ≈ -(∂_j log p(x + h_i e_i) - ∂_j log p(x)) / h_i`` with
    ``h_i = rel_step·max(1, |x_i|)``. Uses the model's own compiled ``value_and_grad`` (the one
    the MAP uses), without compiling another program.

    Subject i's terms depend on its own random effects and the population values only, so the
    Hessian has no entries between two subjects' random effects. With `sparse` (default) that
    structure is used: one gradient per population coordinate (its whole row), and one per random
    effect *k*, moving the k-th random effect of every subject at once (each subject's difference
    is its own column of its block): ``1 + n_pop + n_random_effects`` gradients instead of
    ``dim + 1`` (29 instead of 358 on the bundled study). The population-by-random-effect entries
    come from the population rows. ``sparse=False`` moves every coordinate on its own (the
    check). Non-finite entries are returned as NaN (the caller decides).

    Measured on the bundled example study (centred, at the MAP of the starting points, against
    the covariance of a converged 4 x 1000 fit; smaller is better, 1 is perfect): the square
    root of the condition number of the posterior whitened by a metric is 20.6 for the diagonal
    ``1/H_ii`` that the sampler starts from, 45 for the full Laplace covariance ``H⁻¹`` (39.7 at
    rank 64), 14.7 for the posterior variances and 7.1 for the Fisher low-rank estimate from 800
    posterior draws (another fit, seed 2026: 22.7, 61.7, 54.7, 14.6, 7.2;
    ``experiments/metric_quality.py FIT_DIR``). The joint mode lies up to 11 posterior SDs from
    the posterior mean (the ω directions), so its correlations mislead; the fit therefore starts
    from the diagonal."""
    x = np.asarray(position, float)
    d = x.shape[0]
    h = rel_step * np.maximum(1.0, np.abs(x))
    _, g0 = pm.value_and_grad(jnp.asarray(x))
    g0 = np.asarray(g0)

    def minus_diff(moved):  # -(∇ log p(x + h on `moved`) - ∇ log p(x))
        xi = x.copy()
        xi[moved] += h[moved]
        return -(np.asarray(pm.value_and_grad(jnp.asarray(xi))[1]) - g0)

    n_re = len(pm.bsv_params)
    eta = np.flatnonzero(pm.block_mask("eta")).reshape(pm.n_subjects, n_re) if sparse and n_re else None
    if eta is None:
        hess = np.stack([minus_diff(np.array([i])) / h[i] for i in range(d)])
    else:
        pop = np.setdiff1d(np.arange(d), eta.ravel())
        hess = np.zeros((d, d))
        for i in pop:  # whole rows, the random effects' columns included
            hess[i] = minus_diff(np.array([i])) / h[i]
        hess[np.ix_(eta.ravel(), pop)] = hess[np.ix_(pop, eta.ravel())].T
        for k in range(n_re):  # the k-th random effect of every subject at once
            col = eta[:, k]
            diff = minus_diff(col)
            hess[col[:, None], eta] = diff[eta] / h[col][:, None]
    hess = 0.5 * (hess + hess.T)
    return np.where(np.isfinite(hess), hess, np.nan)


def curvature_diagonal(pm: PopulationModel, position: Array, *, rel_step: float = 1e-5) -> np.ndarray:
    """Diagonal of [`curvature_matrix`][] (the same ``dim + 1`` gradients):
    ``H_ii ≈ -(∂_i log p(x + h e_i) - ∂_i log p(x)) / h``. Non-finite entries are NaN."""
    return np.diag(curvature_matrix(pm, position, rel_step=rel_step)).copy()


class StartingPoints(NamedTuple):
    """What [`PopulationModel.starting_points`][] returns."""

    positions: Array  # (chains, dim)
    inverse_mass: np.ndarray | None  # (dim,) from the curvature, or None
    mode: Array  # (dim,) the optimised point the chains scatter around
    curvature: np.ndarray | None  # (dim,) diagonal of the negative Hessian at `mode`, or None
    hessian: np.ndarray | None = None  # (dim, dim) the negative Hessian at `mode`, or None


def starting_points(
    pm: PopulationModel,
    key: Array,
    n_chains: int,
    *,
    map_steps: int = 200,
    learning_rate: float = 0.05,
    jitter: float = 0.1,
    curvature: bool = True,
) -> StartingPoints:
    """Starting points ``(n_chains, dim)`` and a diagonal inverse mass ``(dim,)`` for HMC,
    with the point they scatter around (`mode`) and its curvature (for [`data_weight`][]).

    From the prior medians, `map_steps` Adam steps on the full position (η included; 0 skips
    the optimisation). With `curvature`, the diagonal of the negative Hessian at that point
    (finite differences of the gradient, ``dim + 1`` gradients, [`curvature_diagonal`][])
    gives per-coordinate scales ``s_i = 1/sqrt(H_ii)``: each chain starts at ``x0 + ε``,
    ``ε_i ~ N(0, min(jitter, s_i)²)`` (a uniform jitter would put precisely determined
    coordinates, such as a typical clearance with s ~ 0.002, dozens of posterior SDs away,
    and warm-up would spend its first hundreds of iterations at tiny step sizes coming back),
    and ``s_i²`` is returned as the inverse mass for the first warm-up window (``None``
    without `curvature`; coordinates with non-positive curvature get ``jitter²``). A draw
    with a non-finite log-density is halved until finite (the unperturbed point is the last
    resort).
    """
    x0 = pm.prior_median_position()
    # value_and_grad, not logdensity: the MAP compiles it anyway, one program fewer to compile
    if not np.isfinite(float(pm.value_and_grad(x0)[0])):
        raise PopulationDataError(
            "the log-density is not finite at the prior medians (the simulation fails for "
            "some subject); check doses, units and the model choice"
        )
    if map_steps > 0:
        x0 = fit_map(pm, x0, steps=map_steps, learning_rate=learning_rate)
    hess = curvature_matrix(pm, x0) if curvature else None
    h = None if hess is None else np.diag(hess).copy()
    return scatter(pm, key, n_chains, x0, h, jitter=jitter, hessian=hess)

def scatter(pm: PopulationModel, key: Array, n_chains: int, mode, curvature=None, *, jitter: float = 0.1,
            hessian=None) -> StartingPoints:
    """Chain starting points around `mode` scaled by the diagonal `curvature` (the second
    half of [`starting_points`][], for a mode and curvature computed elsewhere, e.g. mapped
    by [`reparametrized`][]); the full `hessian`, if given, is passed through."""
    x0 = jnp.asarray(mode, float)
    h = None if curvature is None else np.asarray(curvature, float)
    scale = np.full(pm.dim, jitter)
    inverse_mass = None
    if h is not None:
        ok = np.isfinite(h) & (h > 0)
        var = np.where(ok, 1.0 / np.where(ok, h, 1.0), jitter**2)
        var = np.clip(var, 1e-8, 1e2)
        scale = np.minimum(jitter, np.sqrt(var))
        inverse_mass = var
    keys = jax.random.split(key, n_chains)
    out = []
    for k in keys:
        shrink = 1.0
        x = x0
        for _ in range(8):
            cand = x0 + shrink * jnp.asarray(scale) * jax.random.normal(k, x0.shape, x0.dtype)
            if np.isfinite(float(pm.value_and_grad(cand)[0])):
                x = cand
                break
            shrink /= 2
        out.append(x)
    return StartingPoints(jnp.stack(out), inverse_mass, x0, h,
                          None if hessian is None else np.asarray(hessian, float))
