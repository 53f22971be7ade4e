"""The initial step size of the QHMC warm-up: Stan's doubling/halving search on the one-leapfrog
acceptance probability, compiled over the chains or on the host with a compiled one-position
``value_and_grad_fn`` (and the initial chain states that function gives).
"""

from __future__ import annotations

import math
from functools import partial

import blackjax
import jax
import jax.numpy as jnp
import numpy as np

from . import qhmc
from .metrics import inverse_mass_times
from .options import QHMCOptions


__all__ = ["one_leapfrog_acceptance", "step_size_search", "reasonable_step_size", "host_states",
           "host_step_size"]


@partial(jax.jit, static_argnames=("logdensity_fn", "opts"))
def one_leapfrog_acceptance(logdensity_fn, opts: QHMCOptions, key, positions, inverse_mass, step_size):
    """Mean over chains of the acceptance probability of one leapfrog step (fixed mass centre)."""
    kernel = blackjax.hmc.build_kernel(integrator=opts.integrator)
    keys = jax.random.split(key, positions.shape[0])

    def one(k, x):
        state = blackjax.hmc.init(x, logdensity_fn)
        _, info = kernel(k, state, logdensity_fn, step_size, inverse_mass, 1)
        return jnp.where(jnp.isfinite(info.acceptance_rate), info.acceptance_rate, 0.0)

    return jnp.mean(jax.vmap(one)(keys, positions))


def step_size_search(acceptance, initial: float, max_tries: int = 40) -> float:
    """Stan's heuristic: double or halve the step size from `initial` until the one-step
    acceptance probability ``acceptance(eps, i)`` (``i`` numbers the tries) crosses 0.5 (a start
    for dual averaging, whose first iterations otherwise swing over orders of magnitude)."""
    eps = float(initial)
    direction = 1.0 if acceptance(eps, 0) > 0.5 else -1.0
    for i in range(max_tries):
        new = eps * 2.0**direction
        acc = acceptance(new, i + 1)
        if (direction > 0 and acc < 0.5) or (direction < 0 and acc > 0.5):
            return new if direction < 0 else eps
        eps = new
    return eps


def reasonable_step_size(fn, opts: QHMCOptions, key, positions, inverse_mass, max_tries: int = 40) -> float:
    """:func:`step_size_search` with a compiled one-leapfrog acceptance over the chains."""

    def acceptance(eps, i):
        key_i = key if i == 0 else jax.random.fold_in(key, i - 1)
        return float(one_leapfrog_acceptance(fn, opts, key_i, positions, inverse_mass, eps))

    return step_size_search(acceptance, opts.initial_step_size, max_tries)


def host_states(value_and_grad_fn, positions):
    """Initial chain states from a compiled one-position ``value_and_grad_fn``, chain by chain
    on the host (no program of its own to compile)."""
    vals, grads = zip(*(value_and_grad_fn(x) for x in positions))
    logdensity = jnp.asarray(np.asarray([float(v) for v in vals]), positions.dtype)
    return qhmc.QHMCState(positions, logdensity, jnp.stack([jnp.asarray(g) for g in grads]))


def host_step_size(value_and_grad_fn, opts: QHMCOptions, key, states, inverse_mass,
                    max_tries: int = 40) -> float:
    """:func:`step_size_search` with one-position ``value_and_grad_fn`` calls on the host (one
    leapfrog step per chain with the starting mass centre, diagonal or low-rank, mean acceptance
    over chains): no compiled program of its own."""
    x0 = np.asarray(states.position)
    v0 = np.asarray(states.logdensity)
    g0 = np.asarray(states.logdensity_grad)
    metric = jax.tree.map(lambda a: np.asarray(a, float), inverse_mass)
    seed = np.asarray(jax.random.key_data(key)).ravel().tolist()

    def inv_m(v):  # M^-1 v
        return np.asarray(inverse_mass_times(metric, v))

    half_mass = blackjax.mcmc.metrics.default_metric(jax.tree.map(jnp.asarray, metric)).scale

    def momentum(z):  # M^{1/2} z ~ N(0, M), blackjax's own factor (diagonal or low-rank)
        return np.stack([np.asarray(half_mass(None, jnp.asarray(zc), inv=False, trans=False)) for zc in z])

    def acceptance(eps, i):
        p = momentum(np.random.default_rng([*seed, i]).standard_normal(x0.shape))
        acc = []
        for c in range(x0.shape[0]):
            half = p[c] + 0.5 * eps * g0[c]
            x1 = x0[c] + eps * inv_m(half)
            v1, g1 = value_and_grad_fn(jnp.asarray(x1, states.position.dtype))
            p1 = half + 0.5 * eps * np.asarray(g1)
            dh = -(float(v1) - v0[c]) + 0.5 * (p1 @ inv_m(p1) - p[c] @ inv_m(p[c]))
            acc.append((1.0 if dh <= 0 else math.exp(-dh)) if np.isfinite(dh) else 0.0)
        return float(np.mean(acc))

    return step_size_search(acceptance, opts.initial_step_size, max_tries)
