"""NUTS through blackjax: the per-chain window adaptation (`warmup`, jitted as `warmup_jit`) and
the sampling program (`sample_chunk`); chains mapped with `chain_map`.
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import blackjax
import jax
import jax.numpy as jnp
from blackjax.adaptation.base import get_filter_adapt_info_fn

from .chains import chain_map
from .options import NUTSOptions


__all__ = ["NUTSParams", "transition", "warmup_one", "warmup", "warmup_jit", "sample_chunk"]


class NUTSParams(NamedTuple):
    """Per-chain step size and diagonal inverse mass from the window adaptation."""

    step_size: jax.Array
    inverse_mass: jax.Array


def transition(logdensity_fn, opts: NUTSOptions, key, shared_key, state, params: NUTSParams):
    """One NUTS transition of one chain: the new state and (acceptance, divergent, energy, steps)."""
    del shared_key
    kernel = blackjax.nuts.build_kernel(opts.integrator, opts.divergence_threshold)
    state, info = kernel(
        key,
        state,
        logdensity_fn,
        params.step_size,
        params.inverse_mass,
        max_num_doublings=opts.max_num_doublings,
    )
    return state, (info.acceptance_rate, info.is_divergent, info.energy, info.num_integration_steps)


def warmup_one(logdensity_fn, opts: NUTSOptions, num_warmup: int, key, position):
    """blackjax's window adaptation of one chain (no adaptation when ``num_warmup == 0``)."""
    dtype = position.dtype
    if num_warmup == 0:
        state = blackjax.nuts.init(position, logdensity_fn)
        eps0 = jnp.asarray(opts.initial_step_size, dtype)
        return state, NUTSParams(eps0, jnp.ones(position.shape[0], dtype))
    window = blackjax.window_adaptation(
        blackjax.nuts,
        logdensity_fn,
        initial_step_size=opts.initial_step_size,
        target_acceptance_rate=opts.target_acceptance_rate,
        adaptation_info_fn=get_filter_adapt_info_fn(),
        integrator=opts.integrator,
        max_num_doublings=opts.max_num_doublings,
    )
    (state, params), _ = window.run(key, position, num_steps=num_warmup)
    return state, NUTSParams(
        jnp.asarray(params["step_size"], dtype), jnp.asarray(params["inverse_mass_matrix"], dtype)
    )


def warmup(logdensity_fn, opts: NUTSOptions, num_warmup: int, key, positions):
    """`warmup_one` over the chains (`chain_map`), one key per chain."""
    keys = jax.random.split(key, positions.shape[0])
    one = partial(warmup_one, logdensity_fn, opts, num_warmup)
    return chain_map(logdensity_fn, one, (0, 0))(keys, positions)


@partial(jax.jit, static_argnames=("logdensity_fn", "opts", "num_warmup"))
def warmup_jit(logdensity_fn, opts, num_warmup: int, key, positions):
    return warmup(logdensity_fn, opts, num_warmup, key, positions)


@partial(jax.jit, static_argnames=("logdensity_fn", "opts", "num_draws", "thin"))
def sample_chunk(logdensity_fn, opts, num_draws: int, thin: int, states, params, key, start):
    """NUTS: ``num_draws`` kept draws (``num_draws * thin`` iterations) from iteration ``start``
    on (QHMC samples with its warm-up's program, see `pkpd_jax.inference.samplers`).

    Returns the new states and ``(position, logdensity, divergent, acceptance, energy,
    num_integration_steps)`` with leading axes ``(num_draws, chains)``.
    """
    step = partial(transition, logdensity_fn, opts)
    num_chains = jax.tree.leaves(states)[0].shape[0]
    transitions = chain_map(logdensity_fn, step, (0, None, 0, 0))

    def one_iteration(states, i):
        key_i = jax.random.fold_in(key, i)
        keys = jax.random.split(key_i, num_chains)  # one per chain
        shared_key = jax.random.fold_in(key_i, num_chains)  # the same for every chain
        return transitions(keys, shared_key, states, params)

    def one_draw(states, j):
        iterations = start + j * thin + jnp.arange(thin)
        states, (acc, div, energy, steps) = jax.lax.scan(one_iteration, states, iterations)
        out = (
            states.position,
            states.logdensity,
            jnp.any(div, axis=0),
            jnp.mean(acc, axis=0),
            energy[-1],
            jnp.sum(steps, axis=0),
        )
        return states, out

    return jax.lax.scan(one_draw, states, jnp.arange(num_draws))
