r"""The QHMC warm-up (and sampling program), in blackjax's shape: a state NamedTuple
(`WarmupState`), `init`, the scan over a slice of iterations (`warmup_chunk`, the kernel
step with adaptation), `end_window` and `final`, each pure and jitted once here.

Samplers (see `pkpd_jax.inference.samplers.sample`)
---------------------------------------------------
``"nuts"`` (the reference)
    ``blackjax.window_adaptation(blackjax.nuts, ...)`` per chain (vmapped): Stan's windowed
    warm-up (initial fast window 75, doubling slow windows from 25, final fast window 50, scaled
    down for short warm-ups), dual averaging of the step size at ``target_acceptance_rate``
    (default 0.8) and a diagonal inverse mass matrix from the windowed Welford variances; then
    ``blackjax.nuts`` (multinomial NUTS, ``max_num_doublings`` 10).

``"qhmc"`` (:mod:`pkpd_jax.inference.qhmc`, the default)
    Warm-up, per chain (vmapped), in one ``lax.scan`` over Stan's window schedule
    (``blackjax.adaptation.window_adaptation.build_schedule``) with blackjax's building blocks:

    * **step size**: ``blackjax.adaptation.step_size.dual_averaging_adaptation`` at
      ``target_acceptance_rate`` (default 0.8), fed with the acceptance probability of the QHMC
      transitions themselves, i.e. *under the mass jitter and the path-length jitter* (a light
      drawn mass makes stiff directions less stable, so the step size has to be tuned with the
      jitter switched on). Restarted at the averaged value after every slow window, as Stan does.
    * **mass centre**: ``blackjax.adaptation.mass_matrix.mass_matrix_adaptation`` (diagonal
      Welford estimate of the variances in each slow window, Stan's shrinkage towards 1e-3);
      ``inverse_mass_center = var``, i.e. :math:`m_c = 1/\widehat{\operatorname{var}}`.
    * **path length** (integration time :math:`T`): the *quarter-period rule*. In the metric
      :math:`D = \operatorname{diag}(\text{inverse\_mass\_center})` a Gaussian direction of
      whitened variance :math:`\lambda` oscillates with period :math:`2\pi\sqrt\lambda`; a
      quarter turn :math:`T = \tfrac\pi2\sqrt\lambda` maps the position to an independent one.
      We take :math:`T = \tfrac\pi2\sqrt{\max(\lambda_{\max}, 1)}`, with :math:`\lambda_{\max}`
      the top eigenvalue of :math:`D^{-1/2}\,\widehat\Sigma\,D^{-1/2}` (the posterior covariance in
      the adapted metric: 1 for an uncorrelated target, :math:`1+\rho` for a correlated pair).
      :math:`\lambda_{\max}` is estimated in :math:`O(k d)` memory by ``k = num_probes`` (4)
      generalized power iterations :math:`u \leftarrow D^{-1}\widehat\Sigma u`, one per slow
      window, using the Rayleigh quotient :math:`u^\top\widehat\Sigma u / u^\top D u` (a lower
      bound of :math:`\lambda_{\max}`; unbiased for the fixed ``u`` chosen before the window's
      draws). The same rule is used by blackjax's ChEES adaptation as a floor of the ChEES
      trajectory length; we use it on its own because ChEES needs many chains (its cross-chain
      gradient is noisy with the 4 chains typical here) and it tunes a single step size for all
      chains. Directions with :math:`\lambda < \lambda_{\max}` are de-phased by the jitter.
      Before the first slow window :math:`T = \pi/2`.
    * **jitter**: every iteration uses ``L = ceil(u T / eps)`` leapfrog steps with
      ``u ~ Uniform[1 - step_jitter, 1 + step_jitter]`` (default 0.5, i.e. ``[L/2, 3L/2]``),
      clipped to ``[1, max_num_steps]`` (default 1000), against the periodicity of fixed-length
      HMC. ``u`` is drawn once per iteration for *all* chains (the step size and ``T`` are shared
      too), so the chains make the same number of leapfrog steps: vectorised chains run in
      lock-step (a traced ``fori_loop`` under ``vmap`` is a ``while_loop`` until the longest chain
      is done), and per-chain ``u`` would make every iteration cost ``E[max of C uniforms]``,
      about 1.3 L for 4 chains instead of L. Each chain is still a valid Markov chain (``u`` does
      not depend on any state), and the chains' momenta and masses stay independent. The mass
      spread ``log_mass_sd`` (default 0.5, with ``ξ`` truncated to ``[-2, 2]``
      (``xi_clip``), so the drawn masses are within a factor ``e^{±1} ≈ 2.7`` of the centre) adds
      a per-coordinate jitter of the oscillation frequencies on top. Without the truncation the
      rare very light masses (``ξ < -3``) make the leapfrog unstable at the adapted step size and
      show up as divergences even on a Gaussian target; truncating keeps the kernel exact (any
      position-independent mass distribution does). On the benchmark targets (correlated
      Gaussian, mild funnel) the mass jitter neither helps nor hurts ESS per gradient much
      compared with ``log_mass_sd=0`` (jittered HMC); it is meant for multi-scale posteriors.
      With a low-rank centre the jitter acts in the centre's whitened coordinates
      (``mass_jitter="whitened"``): per coordinate on its diagonal scale, it undid the
      decorrelation the low-rank part buys (3x to 45x fewer effective samples per gradient on
      strongly correlated Gaussians, see :func:`pkpd_jax.inference.qhmc.draw_inverse_mass`).

    Sampling then uses the final (averaged) step size, mass centre and :math:`T`, fixed.
"""

from __future__ import annotations

import math
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from blackjax.adaptation.mass_matrix import mass_matrix_adaptation
from blackjax.adaptation.step_size import dual_averaging_adaptation
from blackjax.mcmc.metrics import LowRankInverseMassMatrix

from . import qhmc
from .chains import chain_map
from .metrics import inverse_mass_times, mass_times
from .options import QHMCOptions


__all__ = ["QHMCParams", "WarmupState", "SAMPLING_STAGE", "num_steps", "broadcast_params", "init",
           "warmup_chunk", "end_window", "final", "longest_slow_window", "init_jit", "chunk_jit",
           "end_window_jit", "final_jit"]


class QHMCParams(NamedTuple):
    """The sampling parameters the warm-up ends with, one row per chain."""

    step_size: jax.Array
    inverse_mass: jax.Array
    trajectory_length: jax.Array


class WarmupState(NamedTuple):
    """The carry of the QHMC warm-up (and of its sampling iterations) between jitted calls."""

    states: qhmc.QHMCState  # (C, ...) one per chain
    da: Any  # shared dual-averaging state
    mm: Any  # pooled diagonal Welford state
    step_size: jax.Array
    inverse_mass: Any  # (d,) diagonal, or a LowRankInverseMassMatrix
    trajectory_length: jax.Array
    probes: jax.Array  # (k, d) power-iteration vectors u
    probe_acc: jax.Array  # (k, d) sum over the window and chains of (y . u) y, y = x - shift
    sum_y: jax.Array  # (d,)
    shift: jax.Array  # (d,) mean position at the window's first slow iteration (centring)
    count: jax.Array
    buf_x: jax.Array  # (B, d) slow-window positions, all chains (low-rank metric; B = 0 otherwise)
    buf_g: jax.Array  # (B, d) their log-density gradients


def num_steps(key, opts: QHMCOptions, trajectory_length, step_size, warmup=False):
    """Leapfrog steps of one iteration: ``ceil(u T / eps)``, ``u ~ U[1-j, 1+j]``, clipped to
    ``max_num_steps`` (``max_warmup_steps`` during warm-up; `warmup` may be traced)."""
    if opts.num_integration_steps is not None:
        return jnp.asarray(opts.num_integration_steps, dtype=jnp.int32)
    dtype = jnp.result_type(step_size)
    cap = jnp.where(warmup, min(opts.max_warmup_steps, opts.max_num_steps), opts.max_num_steps)
    cap = cap.astype(dtype)
    j = opts.step_jitter
    u = jax.random.uniform(key, (), dtype=dtype, minval=1 - j, maxval=1 + j)
    n = jnp.ceil(u * trajectory_length / step_size)
    n = jnp.where(jnp.isnan(n), 1.0, jnp.where(jnp.isposinf(n), cap, n))
    return jnp.clip(n, 1, cap).astype(jnp.int32)


def broadcast_params(num_chains, d, step_size, inverse_mass, trajectory_length) -> QHMCParams:
    """The shared step size, mass centre and path length as one row per chain."""
    del d
    return QHMCParams(
        jnp.broadcast_to(step_size, (num_chains,)),
        jax.tree.map(lambda a: jnp.broadcast_to(a, (num_chains, *a.shape)), inverse_mass),
        jnp.broadcast_to(trajectory_length, (num_chains,)),
    )


def init(
    logdensity_fn, opts: QHMCOptions, key, positions, inverse_mass0, eps0, buffer_rows: int = 0,
    states=None,
) -> WarmupState:
    """Initial warm-up carry: chain states (`states`, or computed from `positions`), dual
    averaging from ``eps0``, the mass centre ``inverse_mass0`` (e.g. the inverse curvature at the
    MAP; ones by default; as a low-rank metric with no correction when ``opts.metric ==
    "low_rank"``), ``T = pi/2`` (or the fixed ``trajectory_length``) and ``buffer_rows`` rows of
    slow-window buffers."""
    num_chains, d = positions.shape
    dtype = positions.dtype
    da_init, _, _ = dual_averaging_adaptation(opts.target_acceptance_rate)
    mm_init, _, _ = mass_matrix_adaptation(is_diagonal_matrix=True)
    fixed_t = opts.trajectory_length
    t0 = jnp.asarray(math.pi / 2 if fixed_t is None else fixed_t, dtype)
    eps0 = jnp.asarray(eps0, dtype)
    if states is None:
        states = jax.vmap(lambda x: qhmc.init(x, logdensity_fn))(positions)
    k = min(opts.num_probes, d)
    probes = jax.random.normal(key, (k, d), dtype)
    probes = probes / jnp.linalg.norm(probes, axis=1, keepdims=True)
    as_dtype = partial(jax.tree.map, lambda x: jnp.asarray(x, dtype))
    if isinstance(inverse_mass0, LowRankInverseMassMatrix):  # (a low-rank metric only)
        inverse_mass = as_dtype(inverse_mass0)
    else:
        inverse_mass = jnp.asarray(inverse_mass0, dtype)
    if opts.metric == "low_rank" and not isinstance(inverse_mass, LowRankInverseMassMatrix):
        r = min(opts.max_rank, d)
        inverse_mass = LowRankInverseMassMatrix(
            jnp.sqrt(inverse_mass), jnp.eye(d, r, dtype=dtype), jnp.ones(r, dtype)
        )
    rows = buffer_rows if opts.metric == "low_rank" else 0
    return WarmupState(
        states=states,
        da=as_dtype(da_init(eps0)),
        mm=as_dtype(mm_init(d)),
        step_size=eps0,
        inverse_mass=inverse_mass,
        trajectory_length=t0,
        probes=probes,
        probe_acc=jnp.zeros((k, d), dtype),
        sum_y=jnp.zeros(d, dtype),
        shift=jnp.mean(positions, axis=0),
        count=jnp.zeros((), dtype),
        buf_x=jnp.zeros((rows, d), dtype),
        buf_g=jnp.zeros((rows, d), dtype),
    )


def end_window(opts: QHMCOptions, c: WarmupState, low_rank=None) -> WarmupState:
    """Close a warm-up window: new mass centre (diagonal Welford variances, or ``low_rank``, the
    low-rank estimate the driver computed from the slow window's buffers), path length from the
    power-iteration probes, dual averaging restarted at the window's final step size. Runs as
    its own jitted call between warm-up slices."""
    dtype = c.states.position.dtype
    da_init, _, da_final = dual_averaging_adaptation(opts.target_acceptance_rate)
    _, _, mm_final = mass_matrix_adaptation(is_diagonal_matrix=True)
    fixed_t = opts.trajectory_length
    as_dtype = partial(jax.tree.map, lambda x: jnp.asarray(x, dtype))
    mm = as_dtype(mm_final(c.mm)) if opts.metric == "diag" else c.mm
    if opts.metric == "low_rank":
        imm = as_dtype(low_rank)
    else:
        imm = mm.inverse_mass_matrix
    n = jnp.maximum(c.count, 1.0)
    mean_y = c.sum_y / n
    cov_u = c.probe_acc / n - (c.probes @ mean_y)[:, None] * mean_y[None, :]  # Σ̂ u, (k, d)
    u_norm = jnp.sum(c.probes * inverse_mass_times(imm, c.probes), axis=1)  # u' M^-1 u
    rayleigh = jnp.sum(c.probes * cov_u, axis=1) / u_norm
    lam = jnp.max(jnp.where(jnp.isfinite(rayleigh), rayleigh, 0.0))
    if fixed_t is None:
        t_new = (math.pi / 2) * jnp.sqrt(jnp.maximum(lam, 1.0))
    else:
        t_new = c.trajectory_length
    new_probes = mass_times(imm, cov_u)
    norms = jnp.linalg.norm(new_probes, axis=1, keepdims=True)
    good = jnp.isfinite(norms) & (norms > 0)
    new_probes = jnp.where(good, new_probes / jnp.where(good, norms, 1.0), c.probes)
    da = as_dtype(da_init(da_final(c.da)))
    return c._replace(
        mm=mm,
        da=da,
        step_size=jnp.exp(da.log_step_size),
        inverse_mass=imm,
        trajectory_length=t_new.astype(dtype),
        probes=new_probes,
        probe_acc=jnp.zeros_like(c.probe_acc),
        sum_y=jnp.zeros_like(c.sum_y),
        count=jnp.zeros_like(c.count),
    )


#: `stage` of a QHMC chunk iteration that samples: no adaptation, the sampling step cap.
SAMPLING_STAGE = 3


def warmup_chunk(logdensity_fn, opts: QHMCOptions, carry: WarmupState, keys, stage, valid):
    """Advance the cross-chain QHMC warm-up (see the module docstring) over a slice of Stan's
    window schedule that ends at or before a window's end: one ``lax.scan``, chains vmapped
    inside, step size / mass centre / path length shared and estimated from all chains (the
    window is closed by :func:`end_window`). Iterations with ``valid == False`` (padding
    of a short slice) leave the carry unchanged. Iterations with ``stage == SAMPLING_STAGE``
    sample: nothing is adapted and the sampling cap on leapfrog steps applies, so the sampling
    phase runs the warm-up's compiled program (one program of the log-density gradient to
    compile per fit, not two). Returns the carry and, per iteration, the leapfrog steps, the
    step size used, the mean acceptance probability over chains and, per chain, the position,
    log density, divergence, acceptance probability and energy."""
    num_chains, d = carry.states.position.shape
    dtype = carry.states.position.dtype
    kernel = qhmc.build_kernel(opts.integrator, opts.divergence_threshold, opts.xi_clip,
                               opts.mass_jitter == "whitened")
    _, da_update, _ = dual_averaging_adaptation(opts.target_acceptance_rate)
    _, mm_update, _ = mass_matrix_adaptation(is_diagonal_matrix=True)
    as_dtype = partial(jax.tree.map, lambda x: jnp.asarray(x, dtype))

    def chain_step(key, state, step_size, inverse_mass, n):
        state, info = kernel(key, state, logdensity_fn, step_size, inverse_mass, opts.log_mass_sd, n)
        acc = jnp.where(jnp.isfinite(info.acceptance_rate), info.acceptance_rate, 0.0)
        return state, (acc, info.is_divergent, info.energy)

    chain_steps = chain_map(logdensity_fn, chain_step, (0, 0, None, None, None))

    def one_step(c: WarmupState, key, stage):
        key_chains, key_steps = jax.random.split(key)
        keys = jax.random.split(key_chains, num_chains)
        sampling = stage == SAMPLING_STAGE
        # The path-length jitter is drawn from a key shared by all chains: with the shared step
        # size and T every chain makes the same number of leapfrog steps, so vectorised chains
        # do not wait for the longest one (see the module docstring).
        n = num_steps(key_steps, opts, c.trajectory_length, c.step_size, warmup=~sampling)
        step_size = c.step_size
        states, (acc, div, energy) = chain_steps(keys, c.states, c.step_size, c.inverse_mass, n)
        da = jax.tree.map(partial(jnp.where, sampling), c.da, da_update(c.da, jnp.mean(acc)))
        slow = stage == 1
        x = states.position  # (C, d)

        def pooled_update(m):
            return jax.lax.scan(lambda m_, xi: (mm_update(m_, xi), None), m, x)[0]

        if opts.metric == "diag":  # (the low-rank estimate comes from the buffers instead)
            mm = as_dtype(jax.lax.cond(slow, pooled_update, lambda m: m, c.mm))
        else:
            mm = c.mm
        shift = jnp.where(c.count == 0, jnp.mean(x, axis=0), c.shift)
        y = x - shift
        w = jnp.where(slow, 1.0, 0.0).astype(dtype)
        if opts.metric == "low_rank" and c.buf_x.shape[0] >= num_chains:  # append positions, gradients
            row = jnp.minimum(c.count, c.buf_x.shape[0] - num_chains).astype(jnp.int32)
            at = (row, jnp.zeros((), jnp.int32))
            put = lambda buf, v: jnp.where(  # noqa: E731
                slow, jax.lax.dynamic_update_slice(buf, v.astype(dtype), at), buf)
            c = c._replace(buf_x=put(c.buf_x, x), buf_g=put(c.buf_g, states.logdensity_grad))
        c = c._replace(
            states=states,
            da=da,
            mm=mm,
            step_size=jnp.where(sampling, c.step_size, jnp.exp(da.log_step_size)).astype(dtype),
            probe_acc=c.probe_acc + w * jnp.einsum("ck,cd->kd", y @ c.probes.T, y),
            sum_y=c.sum_y + w * jnp.sum(y, axis=0),
            shift=jnp.where(slow, shift, c.shift),
            count=c.count + w * num_chains,
        )
        per_chain = (states.position, states.logdensity, div, acc, energy.astype(dtype))
        return c, (n, step_size, jnp.mean(acc), *per_chain)

    def maybe_step(c: WarmupState, xs):
        key, stage, ok = xs
        zeros = partial(jnp.zeros, dtype=dtype)
        skipped = (jnp.zeros((), jnp.int32), zeros(()), zeros(()), zeros((num_chains, d)),
                   zeros((num_chains,)), jnp.zeros((num_chains,), bool), zeros((num_chains,)),
                   zeros((num_chains,)))
        return jax.lax.cond(ok, lambda c_: one_step(c_, key, stage), lambda c_: (c_, skipped), c)

    return jax.lax.scan(maybe_step, carry, (keys, stage, valid))


def final(carry: WarmupState, opts: QHMCOptions, num_warmup: int):
    """End of the warm-up: the chain states and the sampling parameters (the averaged step size;
    ``initial_step_size`` without warm-up)."""
    num_chains, d = carry.states.position.shape
    dtype = carry.states.position.dtype
    if num_warmup == 0:
        step_size = jnp.asarray(opts.initial_step_size, dtype)
    else:
        _, _, da_final = dual_averaging_adaptation(opts.target_acceptance_rate)
        step_size = da_final(carry.da).astype(dtype)
    params = broadcast_params(num_chains, d, step_size, carry.inverse_mass, carry.trajectory_length)
    return carry.states, params


def longest_slow_window(schedule: np.ndarray) -> int:
    """Iterations of the longest slow window of a ``build_schedule`` array (0 if none)."""
    longest = run = 0
    for stage, end in schedule:
        run = run + 1 if stage == 1 else 0
        longest = max(longest, run)
        if end:
            run = 0
    return longest


init_jit = jax.jit(init, static_argnames=("logdensity_fn", "opts", "buffer_rows"))
chunk_jit = jax.jit(warmup_chunk, static_argnames=("logdensity_fn", "opts"))
end_window_jit = jax.jit(end_window, static_argnames=("opts",))
final_jit = jax.jit(final, static_argnames=("opts", "num_warmup"))
