r"""Warm-up and multi-chain sampling driver for QHMC and NUTS.

:func:`sample` runs ``C`` chains in parallel (``jax.vmap``) on a flat log density
``logdensity_fn(x) -> scalar`` with ``x`` of shape ``(dim,)`` (callers ravel pytrees themselves,
e.g. with ``jax.flatten_util.ravel_pytree``), and returns an :class:`MCMCResult` of numpy arrays.

The samplers (``"qhmc"``, the default, and ``"nuts"``, the reference) and QHMC's warm-up are
described in :mod:`pkpd_jax.inference.adaptation`; their options in
:mod:`pkpd_jax.inference.options` (:class:`QHMCOptions`, :class:`NUTSOptions`). The pieces:
``options`` (settings, argument checks), ``metrics`` (mass-matrix algebra), ``chains`` (chains
over devices), ``step_size`` (the initial step-size search), ``adaptation`` (QHMC's warm-up and
sampling program), ``nuts`` (blackjax NUTS), ``result`` (:class:`MCMCResult`); this module drives
them. Every public name it had is still importable from here.

Driver
------
QHMC's warm-up runs in jitted slices of at most ``chunk`` iterations (``jax.vmap`` over
chains inside), each ending at or before the end of a window of Stan's schedule. Its sampling
phase runs the *same* compiled program, ``chunk`` iterations per call, with adaptation switched
off (``adaptation.SAMPLING_STAGE``): the log-density gradient is compiled into one program per fit, not
two (about 15 s of compilation saved for a population PK/PD model on a CPU). Iteration ``i`` of
the sampling phase uses the ``i``-th key of ``split(key_sample, num_samples * thin)``. NUTS
samples with a ``lax.scan`` of at most ``max(1, chunk // thin)`` kept draws per jitted call
(calls of equal size, so that the program compiles once); its iteration ``i`` uses
``k_i = fold_in(key_sample, i)`` split over chains. Either way the draws do not depend on
``chunk``, and with ``thin = t`` the kept draws are iterations ``t-1, 2t-1, ...`` of the
un-thinned run. A ``rich`` progress bar is advanced between calls, and a ``KeyboardInterrupt``
stops the run and returns the draws made so far with ``interrupted=True``. The jitted
functions take ``logdensity_fn`` as a static argument, so calling :func:`sample` again with the
*same function object* and shapes re-uses the compiled code (different seeds included).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from blackjax.adaptation.window_adaptation import build_schedule
from blackjax.mcmc.metrics import LowRankInverseMassMatrix

from ..progress import progress_display
from . import adaptation, nuts
from .adaptation import QHMCParams, WarmupState, end_window_jit, final_jit, init_jit, longest_slow_window
from .chains import StaticFn, chain_shards, initial_logdensity, place_carry
from .metrics import laplace_inverse_mass, low_rank_estimate_jit
from .options import SAMPLERS, NUTSOptions, QHMCOptions, check_inverse_mass_init, validate_sample_args
from .result import MCMCResult, assemble
from .step_size import host_states, host_step_size, reasonable_step_size


__all__ = ["MCMCResult", "QHMCOptions", "NUTSOptions", "SAMPLERS", "sample", "laplace_inverse_mass"]


def _qhmc_warmup_driver(fn, opts, num_warmup, key, positions, inverse_mass0, chunk, on_chunk,
                        states=None, value_and_grad_fn=None):
    """QHMC warm-up in jitted slices of at most `chunk` iterations, each ending at or before the
    end of a window of Stan's schedule, which :func:`end_window` then closes in its own
    single-device call (same numbers as one scan: the per-iteration keys and the schedule do not
    depend on `chunk`); `on_chunk(done, chunk_stats)` reports progress.
    With ``value_and_grad_fn`` (and the initial `states` it gave), the initial step-size search
    runs on the host with it instead of compiling a program of its own.
    Returns states, params, per-iteration ``(steps, step_size, acceptance)`` numpy arrays and
    the final carry (for :func:`_qhmc_sample_driver`)."""
    dtype = positions.dtype
    d = positions.shape[1]
    if inverse_mass0 is None:
        inverse_mass0 = jnp.ones(d, dtype)
    elif not isinstance(inverse_mass0, LowRankInverseMassMatrix):
        inverse_mass0 = jnp.asarray(inverse_mass0, dtype)
    key_probe, key_scan, key_eps = jax.random.split(key, 3)
    eps0 = opts.initial_step_size
    if num_warmup > 0 and value_and_grad_fn is not None and states is not None:
        eps0 = host_step_size(value_and_grad_fn, opts, key_eps, states, inverse_mass0)
    elif num_warmup > 0:
        eps0 = reasonable_step_size(fn, opts, key_eps, positions, inverse_mass0)
    schedule = np.asarray(build_schedule(num_warmup)) if num_warmup > 0 else np.zeros((0, 2), int)
    buffer_rows = longest_slow_window(schedule) * positions.shape[0]
    carry = init_jit(fn, opts, key_probe, positions, inverse_mass0, eps0, buffer_rows, states)
    stats = []
    if num_warmup > 0:
        keys = jax.random.split(key_scan, num_warmup)
        pad = chunk  # room for a full slice starting anywhere
        keys = jnp.concatenate([keys, jnp.broadcast_to(keys[:1], (pad, *keys.shape[1:]))])
        stage = np.concatenate([schedule[:, 0], np.zeros(pad)]).astype(np.int32)
        ends = np.flatnonzero(schedule[:, 1].astype(bool))
        pos = 0
        while pos < num_warmup:
            later = ends[ends >= pos]
            stop = min(pos + chunk, num_warmup, int(later[0]) + 1 if later.size else num_warmup)
            sl = slice(pos, pos + chunk)
            valid = np.arange(pos, pos + chunk) < stop
            carry, st = adaptation.chunk_jit(fn, opts, place_carry(carry, fn.shards), keys[sl], stage[sl],
                                             valid)
            if later.size and stop == int(later[0]) + 1:
                low_rank = None
                if opts.metric == "low_rank":  # the window's valid rows (a number known here)
                    rows = int(np.asarray(carry.count))
                    buf_x, buf_g = np.asarray(carry.buf_x)[:rows], np.asarray(carry.buf_g)[:rows]
                    low_rank = (low_rank_estimate_jit(opts, buf_x, buf_g, carry.inverse_mass) if rows >= 2
                                else carry.inverse_mass)
                carry = end_window_jit(opts, jax.tree.map(np.asarray, carry), low_rank)  # via the host
            stats.append(tuple(np.asarray(a)[: stop - pos] for a in st[:3]))
            pos = stop
            on_chunk(pos, stats[-1])
    states, params = final_jit(carry, opts, num_warmup)
    if stats:
        steps, eps, acc = (np.concatenate([s_[j] for s_ in stats]) for j in range(3))
    else:
        steps, eps, acc = np.zeros(0, np.int32), np.zeros(0, dtype), np.zeros(0, dtype)
    return states, params, (steps, eps, acc), carry


def _qhmc_sample_driver(fn, opts, carry: WarmupState, params: QHMCParams, key, num_samples: int,
                        thin: int, chunk: int, on_draws, outs: list) -> None:
    """QHMC sampling with the warm-up's compiled chunk program (iterations at
    ``adaptation.SAMPLING_STAGE``: the final step size, mass centre and path length, nothing adapted),
    `chunk` iterations per call. Iteration i uses the i-th of ``num_samples * thin`` keys split
    from `key`, so the draws do not depend on `chunk`. Appends to `outs`, as draws complete,
    ``(position, logdensity, divergent, acceptance, energy, steps)`` with leading axes ``(draws,
    chains)`` (thinned: the last position of each `thin` iterations, divergent if any, mean
    acceptance, last energy, summed leapfrog steps); `on_draws(n)` reports them, so that an
    interruption keeps every finished draw."""
    num_chains = carry.states.position.shape[0]
    carry = carry._replace(step_size=jnp.asarray(params.step_size[0], carry.step_size.dtype))
    n_iter = num_samples * thin
    keys = jax.random.split(key, n_iter)
    keys = jnp.concatenate([keys, jnp.broadcast_to(keys[:1], (chunk, *keys.shape[1:]))])
    stage = np.full(chunk, adaptation.SAMPLING_STAGE, np.int32)
    pending: list[tuple[np.ndarray, ...]] = []  # iterations of a thinning group not yet complete
    for pos in range(0, n_iter, chunk):
        valid = np.arange(pos, pos + chunk) < n_iter
        carry, st = adaptation.chunk_jit(fn, opts, place_carry(carry, fn.shards), keys[pos : pos + chunk],
                                         stage, valid)
        k = int(valid.sum())
        steps = np.broadcast_to(np.asarray(st[0])[:k, None], (k, num_chains))
        pending.append((*(np.asarray(a)[:k] for a in st[3:]), steps))
        it = [np.concatenate([p[j] for p in pending]) for j in range(6)]
        groups = it[0].shape[0] // thin
        if groups == 0:
            pending = [tuple(it)]
            continue
        used = groups * thin
        block = lambda a: a[:used].reshape(groups, thin, *a.shape[1:])  # noqa: E731
        x, ld, div, acc, energy, n = (block(a) for a in it)
        outs.append((x[:, -1], ld[:, -1], div.any(1), acc.mean(1), energy[:, -1], n.sum(1)))
        pending = [tuple(a[used:] for a in it)]
        on_draws(groups)


def _progress_bar(enabled: bool):
    """The sampler's display (kept on stdout, with a spinner: NUTS's warm-up has no count)."""
    bar = progress_display(enabled=enabled, stdout=True, transient=False, spinner=True)
    return contextlib.nullcontext(None) if bar is None else bar


def sample(
    logdensity_fn: Callable,
    initial_positions,
    *,
    sampler: str = "qhmc",
    num_warmup: int = 1000,
    num_samples: int = 1000,
    thin: int = 1,
    seed: int = 0,
    progress: bool = True,
    chunk: int = 100,
    inverse_mass_init=None,
    chain_devices: int | None = None,
    value_and_grad_fn: Callable | None = None,
    **sampler_options,
) -> MCMCResult:
    """Warm up and sample ``chains`` chains of ``sampler`` in parallel.

    Parameters
    ----------
    logdensity_fn
        ``x (dim,) -> scalar`` log density (up to a constant), differentiable with JAX.
    initial_positions
        ``(chains, dim)`` starting points, one per chain (finite log density required).
    sampler
        ``"qhmc"`` (default) or ``"nuts"``.
    num_warmup, num_samples
        Warm-up iterations and kept draws per chain.
    thin
        Keep every ``thin``-th iteration (``num_samples * thin`` iterations are run).
    seed
        Integer seed; the same seed gives the same draws.
    progress
        Show a ``rich`` progress bar.
    chunk
        Iterations per jitted call between progress updates. QHMC: warm-up slices and sampling
        calls of ``chunk`` iterations (one compiled program for both); NUTS: at most
        ``max(1, chunk // thin)`` draws per sampling call, in calls of equal size.
    inverse_mass_init
        QHMC only: ``(dim,)`` diagonal inverse mass for the first (fast) warm-up window, e.g.
        the inverse curvature of the log density at its mode; ones when ``None``. A good start
        keeps the early step size (hence the leapfrog count per iteration) reasonable when the
        coordinates have very different scales; the slow windows replace it by the estimated
        posterior variances. With ``metric="low_rank"`` it may also be a
        ``LowRankInverseMassMatrix`` (e.g. [`laplace_inverse_mass`][] of the Hessian at the
        mode) for targets whose mode is representative of the bulk: it stays in use until
        a slow window holds the ``2·dim`` draws of a low-rank estimate. (Not for hierarchical
        posteriors: there the joint mode sits at an atypical ω, and its Laplace metric whitens
        the posterior worse than the diagonal, see ``population.curvature_matrix``.)
    chain_devices
        Split the chains over this many devices (``jax.shard_map``; it must divide the number
        of chains). ``None``: as many local devices as divide the chains (one on a default CPU
        set-up). The draws do not depend on it beyond floating-point round-off.
    value_and_grad_fn
        Optional ``x (dim,) -> (log density, gradient)`` for one position, already compiled
        (e.g. a model's own ``jax.jit(jax.value_and_grad(logdensity_fn))``). With QHMC, the
        initial states, their finiteness check and the initial step-size search then call it
        chain by chain on the host instead of compiling three programs of their own (about
        30 s of compilation for a population PK/PD model on a CPU). It must agree with
        `logdensity_fn`.
    **sampler_options
        :class:`QHMCOptions` or :class:`NUTSOptions` fields.

    Returns
    -------
    MCMCResult
    """
    opts, positions = validate_sample_args(
        initial_positions, sampler, num_warmup, num_samples, thin, chunk, sampler_options
    )
    num_chains, dim = positions.shape
    shards = chain_shards(num_chains, chain_devices)
    fn = StaticFn(logdensity_fn, shards)
    t_start = time.perf_counter()
    start_states = None
    if sampler == "qhmc" and value_and_grad_fn is not None:
        out_shape = jax.eval_shape(logdensity_fn, positions[0]).shape
        if out_shape != ():
            raise ValueError(
                f"sample: logdensity_fn must return a scalar for an input of shape ({dim},), "
                f"got output shape {out_shape}"
            )
        start_states = host_states(value_and_grad_fn, positions)
        init_ld = np.asarray(start_states.logdensity)
    else:
        init_ld = np.asarray(initial_logdensity(fn, positions))
    if init_ld.shape != (num_chains,):
        raise ValueError(
            f"sample: logdensity_fn must return a scalar for an input of shape ({dim},), "
            f"got output shape {init_ld.shape[1:]}"
        )
    if not np.all(np.isfinite(init_ld)):
        bad = np.flatnonzero(~np.isfinite(init_ld)).tolist()
        raise ValueError(
            f"sample: the log density must be finite at the initial positions; chains {bad} have "
            f"{init_ld[bad].tolist()}"
        )

    key_warmup, key_sample = jax.random.split(jax.random.PRNGKey(seed))
    outs: list[tuple[np.ndarray, ...]] = []
    interrupted = False
    states = params = None
    warmup_stats = None
    if inverse_mass_init is not None:
        inverse_mass_init = check_inverse_mass_init(
            inverse_mass_init, sampler, opts, dim, np.asarray(positions).dtype)
    warmup_s = 0.0
    with _progress_bar(progress) as bar:
        try:
            if bar is not None:
                total = num_warmup if sampler == "qhmc" and num_warmup > 0 else None
                task_w = bar.add_task(f"{sampler} warm-up ({num_chains} chains)", total=total)
            if sampler == "qhmc":

                def on_chunk(done, stats):
                    if bar is not None:
                        steps = int(np.max(stats[0]))
                        bar.update(task_w, completed=done, description=(
                            f"{sampler} warm-up ({num_chains} chains, <= {steps} leapfrog steps/it)"))

                states, params, warmup_stats, carry = _qhmc_warmup_driver(
                    fn, opts, num_warmup, key_warmup, positions, inverse_mass_init, chunk, on_chunk,
                    states=start_states, value_and_grad_fn=value_and_grad_fn,
                )
            else:
                states, params = nuts.warmup_jit(fn, opts, num_warmup, key_warmup, positions)
            jax.block_until_ready(params)
            warmup_s = time.perf_counter() - t_start
            if bar is not None:  # QHMC: num_warmup / num_warmup; NUTS (no count shown): 1 / 1
                bar.update(task_w, total=total or 1, completed=total or 1)
                task_s = bar.add_task(f"{sampler} sampling", total=num_samples)
            if sampler == "qhmc":

                def on_draws(n):
                    if bar is not None:
                        bar.update(task_s, advance=n)

                _qhmc_sample_driver(fn, opts, carry, params, key_sample, num_samples, thin, chunk,
                                    on_draws, outs)
            else:
                # Equal calls (the last one's surplus draws discarded): a shorter last call would
                # compile the sampling program a second time to save a few draws.
                n_calls = -(-num_samples // max(1, chunk // thin))
                draws_per_call = -(-num_samples // n_calls)
                done = 0
                while done < num_samples:
                    n = min(draws_per_call, num_samples - done)
                    states, out = nuts.sample_chunk(
                        fn, opts, draws_per_call, thin, states, params, key_sample, done * thin)
                    outs.append(tuple(np.asarray(o)[:n] for o in out))
                    done += n
                    if bar is not None:
                        bar.update(task_s, advance=n)
        except KeyboardInterrupt:
            interrupted = True
            if params is None:
                warmup_s = time.perf_counter() - t_start
    wall_s = time.perf_counter() - t_start
    return assemble(
        outs,
        params,
        opts,
        sampler,
        num_chains,
        dim,
        positions.dtype,
        num_warmup,
        thin,
        seed,
        wall_s,
        warmup_s,
        interrupted,
        warmup_stats,
    )
