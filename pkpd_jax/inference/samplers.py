r"""Warm-up and multi-chain sampling driver for QHMC and NUTS.

:func:`sample` runs ``C`` chains in parallel (``jax.vmap``) on a flat log density
``logdensity_fn(x) -> scalar`` with ``x`` of shape ``(dim,)`` (callers ravel pytrees themselves,
e.g. with ``jax.flatten_util.ravel_pytree``), and returns an :class:`MCMCResult` of numpy arrays.

Samplers
--------
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

Options (``**sampler_options``): see :class:`QHMCOptions` and :class:`NUTSOptions`.

Driver
------
QHMC's warm-up runs in jitted slices of at most ``chunk`` iterations (``jax.vmap`` over
chains inside), each ending at or before the end of a window of Stan's schedule. Its sampling
phase runs the *same* compiled program, ``chunk`` iterations per call, with adaptation switched
off (``_SAMPLING_STAGE``): the log-density gradient is compiled into one program per fit, not
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
import dataclasses
import math
import time
from collections.abc import Callable
from functools import partial
from typing import Any, NamedTuple

import blackjax
import blackjax.mcmc.integrators as integrators
import jax
import jax.numpy as jnp
import numpy as np
from blackjax.adaptation.base import get_filter_adapt_info_fn
from blackjax.adaptation.mass_matrix import mass_matrix_adaptation
from blackjax.adaptation.metric_estimators import fisher_score_low_rank
from blackjax.adaptation.step_size import dual_averaging_adaptation
from blackjax.adaptation.window_adaptation import build_schedule
from blackjax.mcmc.metrics import LowRankInverseMassMatrix

from pkpd_jax.inference import qhmc


__all__ = ["MCMCResult", "QHMCOptions", "NUTSOptions", "SAMPLERS", "sample", "laplace_inverse_mass"]

SAMPLERS = ("qhmc", "nuts")


class MCMCResult(NamedTuple):
    """Draws and per-draw statistics of :func:`sample` (numpy arrays).

    draws
        ``(chains, draws, dim)`` kept positions.
    logdensity
        ``(chains, draws)`` log density at the kept positions.
    divergent
        ``(chains, draws)`` bool: a divergent transition occurred in the ``thin`` iterations
        leading to the draw.
    acceptance
        ``(chains, draws)`` mean acceptance probability over those iterations (NUTS: blackjax's
        average acceptance probability over the trajectory).
    energy
        ``(chains, draws)`` Hamiltonian at the kept draw (for E-BFMI).
    step_size
        ``(chains,)`` adapted step sizes.
    num_integration_steps
        ``(chains, draws)`` leapfrog steps (gradient evaluations) spent per kept draw, i.e.
        summed over the ``thin`` iterations.
    inverse_mass_matrix
        ``(chains, dim)`` adapted diagonal inverse mass (QHMC: the centre ``1/m_c``).
    trajectory_length
        ``(chains,)`` QHMC integration time ``T`` (NaN for NUTS).
    sampler, num_warmup, thin, seed
        The settings of the run.
    wall_s
        Wall time of the whole call (warm-up, compilation and sampling).
    warmup_s
        Wall time of the warm-up (including its compilation).
    interrupted
        True when a ``KeyboardInterrupt`` stopped the run; the arrays hold the draws made so far.
    warmup_steps, warmup_step_size, warmup_acceptance
        QHMC: ``(num_warmup,)`` leapfrog steps (per chain), step size and mean acceptance
        probability of each warm-up iteration (``None`` for NUTS), to see where warm-up time goes.
    """

    draws: np.ndarray
    logdensity: np.ndarray
    divergent: np.ndarray
    acceptance: np.ndarray
    energy: np.ndarray
    step_size: np.ndarray
    num_integration_steps: np.ndarray
    inverse_mass_matrix: np.ndarray
    trajectory_length: np.ndarray
    sampler: str
    num_warmup: int
    thin: int
    seed: int
    wall_s: float
    warmup_s: float
    interrupted: bool
    warmup_steps: np.ndarray | None = None
    warmup_step_size: np.ndarray | None = None
    warmup_acceptance: np.ndarray | None = None

    @property
    def num_chains(self) -> int:
        return int(self.draws.shape[0])

    @property
    def num_draws(self) -> int:
        return int(self.draws.shape[1])


@dataclasses.dataclass(frozen=True)
class QHMCOptions:
    """Options of ``sample(..., sampler="qhmc", **options)``.

    log_mass_sd
        Spread ``s`` of the log-normal mass, ``log m = log m_c + s ξ`` (0 gives plain HMC).
    target_acceptance_rate
        Dual-averaging target for the mean acceptance probability during warm-up.
    step_jitter
        Half-width ``j`` of the path-length jitter: ``L = ceil(u T/eps)``, ``u ~ U[1-j, 1+j]``.
    trajectory_length
        Fixed integration time ``T`` (units of the adapted metric) instead of the quarter-period
        rule; ``None`` adapts it.
    num_integration_steps
        Fixed number of leapfrog steps (no jitter, overrides ``trajectory_length``); ``None``
        derives it from ``T`` and the step size.
    max_num_steps
        Upper bound on leapfrog steps per iteration.
    max_warmup_steps
        Upper bound on leapfrog steps per *warm-up* iteration (default 100). Early in warm-up,
        before the mass centre is adapted, dual averaging can drive the step size to tiny
        values for a few iterations; uncapped, ``T / eps`` then costs ``max_num_steps``
        gradients per iteration for no benefit (the warm-up needs acceptance statistics and
        positions near the typical set, not long trajectories).
    initial_step_size
        Starting point of dual averaging (and the step size if ``num_warmup == 0``).
    num_probes
        Number of power-iteration probe vectors for the path-length rule.
    divergence_threshold
        Energy error flagged as a divergence.
    integrator
        A blackjax integrator (``blackjax.mcmc.integrators.velocity_verlet`` by default).
    xi_clip
        Truncate ``ξ`` to ``[-xi_clip, xi_clip]`` (default 2; ``None``: untruncated normal).
        Any position-independent mass distribution keeps the kernel exact; the truncation stops
        the rare very light masses that make the leapfrog unstable at the adapted step size (they
        show up as divergences even on a Gaussian).
    metric
        Mass centre: ``"diag"`` (Welford variances) or ``"low_rank"`` (a diagonal scale plus a
        rank-``max_rank`` correction, estimated at the end of every slow window from the
        window's draws *and* log-density gradients pooled over chains by the Fisher-divergence
        estimator of Seyboldt et al. (nutpie; ``blackjax.adaptation.metric_estimators.
        fisher_score_low_rank``, regularisation ``low_rank_gamma``, eigenvalues within
        ``[1/low_rank_cutoff, low_rank_cutoff]`` left uncorrected; windows with fewer than 2·dim
        draws pooled over chains get only its diagonal scale). The low-rank part absorbs the
        few strongly correlated directions of a hierarchical posterior (a typical value and its
        subjects' individual values), which a diagonal mass cannot, so the quarter-period path
        length and the leapfrog count per iteration drop. The mass draw then scales the
        diagonal part (see :func:`pkpd_jax.inference.qhmc.draw_inverse_mass`).
    max_rank, low_rank_gamma, low_rank_cutoff
        Settings of the low-rank estimator (``metric="low_rank"`` only).
    mass_jitter
        Where a low-rank centre's random factor acts: ``"whitened"`` (default; in the centre's
        whitened coordinates, which keeps its decorrelation) or ``"coordinates"`` (on the
        diagonal scale ``σ``, per parameter; see
        :func:`pkpd_jax.inference.qhmc.draw_inverse_mass` for the measured cost). The diagonal
        metric is jittered per coordinate either way.
    """

    log_mass_sd: float = 0.5
    target_acceptance_rate: float = 0.8
    step_jitter: float = 0.5
    trajectory_length: float | None = None
    num_integration_steps: int | None = None
    max_num_steps: int = 1000
    max_warmup_steps: int = 100
    initial_step_size: float = 1.0
    num_probes: int = 4
    divergence_threshold: float = 1000.0
    integrator: Callable = integrators.velocity_verlet
    xi_clip: float | None = 2.0
    metric: str = "diag"
    max_rank: int = 10
    low_rank_gamma: float = 1e-5
    low_rank_cutoff: float = 2.0
    mass_jitter: str = "whitened"

    def __post_init__(self):
        _check(self.log_mass_sd >= 0, "log_mass_sd", ">= 0", self.log_mass_sd)
        _check(self.metric in ("diag", "low_rank"), "metric", "'diag' or 'low_rank'", self.metric)
        _check(self.mass_jitter in ("whitened", "coordinates"), "mass_jitter",
               "'whitened' or 'coordinates'", self.mass_jitter)
        _check(self.max_rank >= 1, "max_rank", "an integer >= 1", self.max_rank)
        _check(self.low_rank_gamma > 0, "low_rank_gamma", "> 0", self.low_rank_gamma)
        _check(self.low_rank_cutoff >= 1, "low_rank_cutoff", ">= 1", self.low_rank_cutoff)
        _check(
            0 < self.target_acceptance_rate < 1,
            "target_acceptance_rate",
            "in (0, 1)",
            self.target_acceptance_rate,
        )
        _check(0 <= self.step_jitter < 1, "step_jitter", "in [0, 1)", self.step_jitter)
        _check(
            self.trajectory_length is None or self.trajectory_length > 0,
            "trajectory_length",
            "None or > 0",
            self.trajectory_length,
        )
        _check(
            self.num_integration_steps is None or self.num_integration_steps >= 1,
            "num_integration_steps",
            "None or an integer >= 1",
            self.num_integration_steps,
        )
        _check(self.max_num_steps >= 1, "max_num_steps", "an integer >= 1", self.max_num_steps)
        _check(self.max_warmup_steps >= 1, "max_warmup_steps", "an integer >= 1", self.max_warmup_steps)
        _check(self.initial_step_size > 0, "initial_step_size", "> 0", self.initial_step_size)
        _check(self.num_probes >= 1, "num_probes", "an integer >= 1", self.num_probes)
        _check(self.divergence_threshold > 0, "divergence_threshold", "> 0", self.divergence_threshold)
        _check(self.xi_clip is None or self.xi_clip > 0, "xi_clip", "None or > 0", self.xi_clip)


@dataclasses.dataclass(frozen=True)
class NUTSOptions:
    """Options of ``sample(..., sampler="nuts", **options)``.

    target_acceptance_rate
        Dual-averaging target during ``blackjax.window_adaptation``.
    max_num_doublings
        Maximum tree depth of NUTS.
    initial_step_size
        Starting point of dual averaging (and the step size if ``num_warmup == 0``).
    divergence_threshold
        Energy error flagged as a divergence (sampling phase).
    integrator
        A blackjax integrator.
    """

    target_acceptance_rate: float = 0.8
    max_num_doublings: int = 10
    initial_step_size: float = 1.0
    divergence_threshold: float = 1000.0
    integrator: Callable = integrators.velocity_verlet

    def __post_init__(self):
        _check(
            0 < self.target_acceptance_rate < 1,
            "target_acceptance_rate",
            "in (0, 1)",
            self.target_acceptance_rate,
        )
        _check(self.max_num_doublings >= 1, "max_num_doublings", "an integer >= 1", self.max_num_doublings)
        _check(self.initial_step_size > 0, "initial_step_size", "> 0", self.initial_step_size)
        _check(self.divergence_threshold > 0, "divergence_threshold", "> 0", self.divergence_threshold)


def _check(ok: bool, name: str, expected: str, got: Any) -> None:
    if not ok:
        raise ValueError(f"sampler option {name} must be {expected}, got {got!r}")


_OPTIONS = {"qhmc": QHMCOptions, "nuts": NUTSOptions}


class _StaticFn:
    """Hashable wrapper so that ``logdensity_fn`` can be a static jit argument (cache hits for
    the same function object, even if the function itself is unhashable), together with the
    number of devices the chains are split over (``shards``; part of the cache key)."""

    __slots__ = ("fn", "shards")

    def __init__(self, fn: Callable, shards: int = 1):
        self.fn = fn
        self.shards = int(shards)

    def __hash__(self) -> int:
        return hash((id(self.fn), self.shards))

    def __eq__(self, other) -> bool:
        return isinstance(other, _StaticFn) and other.fn is self.fn and other.shards == self.shards

    def __call__(self, x):
        return self.fn(x)


def _chain_map(fn: _StaticFn, f: Callable, in_axes) -> Callable:
    """``jax.vmap(f, in_axes)`` over chains, split over ``fn.shards`` devices with
    ``jax.shard_map`` when there are several: each device runs its chains' vmapped transitions
    (its own batched ODE loops) independently, so the two cores of a CPU host (with
    ``--xla_force_host_platform_device_count=2``) each take half of the chains. Arguments with
    ``in_axes`` ``None`` are replicated; every output carries the chain axis first. The numbers
    are those of the plain ``vmap`` (each chain's arithmetic does not depend on its neighbours)."""
    vf = jax.vmap(f, in_axes=in_axes)
    if fn.shards <= 1:
        return vf
    from jax.sharding import PartitionSpec as P

    mesh = _chains_mesh(fn.shards)
    specs = tuple(P() if a is None else P("chains") for a in in_axes)
    # check_vma=False: the ODE solver's while loops mix per-chain and replicated carries.
    return jax.shard_map(vf, mesh=mesh, in_specs=specs, out_specs=P("chains"), check_vma=False)


def _chains_mesh(shards: int):
    """The 1-D mesh ``("chains",)`` over the first `shards` local devices."""
    from jax.sharding import Mesh

    return Mesh(np.asarray(jax.devices()[:shards]), ("chains",))


def _chain_shards(num_chains: int, requested: int | None = None) -> int:
    """How many devices :func:`sample` splits ``num_chains`` chains over: ``requested`` if given
    (it must divide the chains and not exceed the devices), else the largest divisor of
    ``num_chains`` that is at most the number of local devices (1 on a default CPU set-up; 2 on
    a 2-core host split with ``--xla_force_host_platform_device_count=2``, as the command line
    does)."""
    n_dev = jax.local_device_count()
    if requested is not None:
        if requested < 1 or num_chains % requested or requested > n_dev:
            raise ValueError(
                f"sample: chain_devices={requested} must divide the {num_chains} chains and be at "
                f"most the {n_dev} available device(s)"
            )
        return int(requested)
    return max(k for k in range(1, min(n_dev, num_chains) + 1) if num_chains % k == 0)


# --------------------------------------------------------------------------------------- QHMC
class _QHMCParams(NamedTuple):
    step_size: jax.Array
    inverse_mass: jax.Array
    trajectory_length: jax.Array


class _QHMCWarmup(NamedTuple):
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


def _inv_mass_times(metric, v):
    """``M^{-1} v`` for a diagonal ``(d,)`` inverse mass or a ``LowRankInverseMassMatrix``;
    ``v`` is ``(..., d)``."""
    if isinstance(metric, LowRankInverseMassMatrix):
        q = metric.sigma * v
        q = q + ((q @ metric.U) * (metric.lam - 1.0)) @ metric.U.T
        return metric.sigma * q
    return metric * v


def _mass_times(metric, v):
    """``M v`` (the inverse of :func:`_inv_mass_times`)."""
    if isinstance(metric, LowRankInverseMassMatrix):
        q = v / metric.sigma
        q = q + ((q @ metric.U) * (1.0 / metric.lam - 1.0)) @ metric.U.T
        return q / metric.sigma
    return v / metric


def _metric_diagonal(metric):
    """Diagonal of ``M^{-1}`` (what :class:`MCMCResult` reports), batched over leading axes."""
    if isinstance(metric, LowRankInverseMassMatrix):
        corr = jnp.einsum("...dk,...k->...d", metric.U**2, metric.lam - 1.0)
        return metric.sigma**2 * (1.0 + corr)
    return metric


def _low_rank_estimate(opts: QHMCOptions, draws, grads, previous=None):
    """Mass centre of the low-rank metric from a slow window's ``(n, d)`` draws and gradients
    (all rows valid). With ``n >= 2 d`` (the support the estimator needs; fewer rows give
    eigenvalues fitted to noise, e.g. thousands for a white-noise window of ``n = d / 4``), the
    Fisher-divergence estimate. Otherwise (an early, short window): with a diagonal
    `previous` metric (or none), only the estimator's diagonal scale
    ``σ = (Var x / Var ∇ log p)^{1/4}``; a structured `previous` metric (a low-rank start such
    as [`laplace_inverse_mass`][]) is kept unchanged, because re-estimated scales from a few
    draws break its correlations (on a Gaussian with correlation 0.98 in 50 dimensions: 4.5
    leapfrog steps per iteration kept, 9.5 with new scales, 19.5 from a diagonal start)."""
    n, d = draws.shape
    r = min(opts.max_rank, d)
    if n >= 2 * d:
        return fisher_score_low_rank(draws, grads, r, gamma=opts.low_rank_gamma, cutoff=opts.low_rank_cutoff)
    var_x, var_g = jnp.var(draws, axis=0), jnp.var(grads, axis=0)
    sigma = jnp.clip((var_x / var_g) ** 0.25, 1e-20, 1e20)
    sigma = jnp.where(jnp.isfinite(sigma), sigma, 1.0)
    if previous is not None:  # a structured metric (e.g. a Laplace start) is kept as it is
        structured = jnp.any(previous.lam != 1.0)
        sigma = jnp.where(structured, previous.sigma, sigma)
        return LowRankInverseMassMatrix(sigma, previous.U, previous.lam)
    return LowRankInverseMassMatrix(sigma, jnp.eye(d, r, dtype=draws.dtype), jnp.ones(r, draws.dtype))


def laplace_inverse_mass(neg_hessian, max_rank: int = 64, *, cutoff: float = 2.0,
                         max_condition: float = 1e6) -> LowRankInverseMassMatrix:
    """A low-rank inverse mass from the negative Hessian ``H`` of the log density at a mode
    (the Laplace approximation ``Σ = H⁻¹``), in the form the low-rank warm-up adapts:
    ``M⁻¹ = diag(σ) (I + U (Λ - I) Uᵀ) diag(σ)``.

    ``H`` is symmetrised and scaled to unit diagonal (``P = D H D``, ``D = diag(H)^{-1/2}``;
    coordinates with a non-positive or non-finite ``H_ii`` get ``D_ii = 1`` and no coupling);
    eigenvalues of ``P`` that are not positive (a saddle or a flat direction of the mode) are
    set to 1 (no correction there), the others clipped to ``[1/max_condition, max_condition]``.
    ``σ_i = D_ii (Σ̃_ii)^{1/4}`` is the geometric mean of the conditional (``1/√H_ii``) and the
    marginal (``√Σ_ii``) standard deviations, as in the Fisher-divergence estimator of the
    slow windows, so the eigenvalues of the rescaled covariance spread around 1; the (at most)
    ``max_rank`` of them furthest from 1, outside ``[1/cutoff, cutoff]``, make ``(U, Λ)``, the
    others are left at 1. The rank is ``min(max_rank, d)`` (unused columns are zero with
    ``λ = 1``), the shape QHMC's low-rank warm-up carries.

    On a Gaussian target (exact Hessian, ``max_rank >= d``, ``cutoff = 1``) this is the target's
    covariance."""
    h = np.asarray(neg_hessian, float)
    d = h.shape[0]
    if h.shape != (d, d):
        raise ValueError(f"laplace_inverse_mass: need a square (d, d) matrix, got shape {h.shape}")
    h = 0.5 * (h + h.T)
    diag = np.diag(h)
    ok = np.isfinite(diag) & (diag > 0)
    dsc = np.where(ok, 1.0 / np.sqrt(np.where(ok, diag, 1.0)), 1.0)
    p = dsc[:, None] * h * dsc[None, :]
    keep = ok[:, None] & ok[None, :] & np.isfinite(p)
    p = np.where(keep, p, 0.0)
    np.fill_diagonal(p, 1.0)
    w, v = np.linalg.eigh(p)
    w = np.where(w > 0, np.clip(w, 1.0 / max_condition, max_condition), 1.0)
    cov = (v / w) @ v.T  # covariance in units of the conditional SDs
    c4 = np.sqrt(np.sqrt(np.clip(np.diag(cov), 1e-12, None)))
    sigma = dsc * c4
    lam, u = np.linalg.eigh(cov / c4[:, None] / c4[None, :])
    r = min(int(max_rank), d)
    dev = np.abs(np.log(np.clip(lam, 1e-300, None)))
    order = np.argsort(-dev)[:r]
    big = dev[order] > np.log(cutoff)
    u_r = np.zeros((d, r))
    lam_r = np.ones(r)
    u_r[:, : big.sum()] = u[:, order[big]]
    lam_r[: big.sum()] = lam[order[big]]
    return LowRankInverseMassMatrix(sigma, u_r, lam_r)


_low_rank_jit = jax.jit(_low_rank_estimate, static_argnames=("opts",))


def _qhmc_num_steps(key, opts: QHMCOptions, trajectory_length, step_size, warmup=False):
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


def _qhmc_broadcast(num_chains, d, step_size, inverse_mass, trajectory_length) -> _QHMCParams:
    del d
    return _QHMCParams(
        jnp.broadcast_to(step_size, (num_chains,)),
        jax.tree.map(lambda a: jnp.broadcast_to(a, (num_chains, *a.shape)), inverse_mass),
        jnp.broadcast_to(trajectory_length, (num_chains,)),
    )


def _qhmc_warmup_init(
    logdensity_fn, opts: QHMCOptions, key, positions, inverse_mass0, eps0, buffer_rows: int = 0,
    states=None,
) -> _QHMCWarmup:
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
    return _QHMCWarmup(
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


def _qhmc_end_window(opts: QHMCOptions, c: _QHMCWarmup, low_rank=None) -> _QHMCWarmup:
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
    u_norm = jnp.sum(c.probes * _inv_mass_times(imm, c.probes), axis=1)  # u' M^-1 u
    rayleigh = jnp.sum(c.probes * cov_u, axis=1) / u_norm
    lam = jnp.max(jnp.where(jnp.isfinite(rayleigh), rayleigh, 0.0))
    if fixed_t is None:
        t_new = (math.pi / 2) * jnp.sqrt(jnp.maximum(lam, 1.0))
    else:
        t_new = c.trajectory_length
    new_probes = _mass_times(imm, cov_u)
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
_SAMPLING_STAGE = 3


def _qhmc_warmup_chunk(logdensity_fn, opts: QHMCOptions, carry: _QHMCWarmup, keys, stage, valid):
    """Advance the cross-chain QHMC warm-up (see the module docstring) over a slice of Stan's
    window schedule that ends at or before a window's end: one ``lax.scan``, chains vmapped
    inside, step size / mass centre / path length shared and estimated from all chains (the
    window is closed by :func:`_qhmc_end_window`). Iterations with ``valid == False`` (padding
    of a short slice) leave the carry unchanged. Iterations with ``stage == _SAMPLING_STAGE``
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

    chain_steps = _chain_map(logdensity_fn, chain_step, (0, 0, None, None, None))

    def one_step(c: _QHMCWarmup, key, stage):
        key_chains, key_steps = jax.random.split(key)
        keys = jax.random.split(key_chains, num_chains)
        sampling = stage == _SAMPLING_STAGE
        # The path-length jitter is drawn from a key shared by all chains: with the shared step
        # size and T every chain makes the same number of leapfrog steps, so vectorised chains
        # do not wait for the longest one (see the module docstring).
        n = _qhmc_num_steps(key_steps, opts, c.trajectory_length, c.step_size, warmup=~sampling)
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

    def maybe_step(c: _QHMCWarmup, xs):
        key, stage, ok = xs
        zeros = partial(jnp.zeros, dtype=dtype)
        skipped = (jnp.zeros((), jnp.int32), zeros(()), zeros(()), zeros((num_chains, d)),
                   zeros((num_chains,)), jnp.zeros((num_chains,), bool), zeros((num_chains,)),
                   zeros((num_chains,)))
        return jax.lax.cond(ok, lambda c_: one_step(c_, key, stage), lambda c_: (c_, skipped), c)

    return jax.lax.scan(maybe_step, carry, (keys, stage, valid))


def _qhmc_warmup_final(carry: _QHMCWarmup, opts: QHMCOptions, num_warmup: int):
    num_chains, d = carry.states.position.shape
    dtype = carry.states.position.dtype
    if num_warmup == 0:
        step_size = jnp.asarray(opts.initial_step_size, dtype)
    else:
        _, _, da_final = dual_averaging_adaptation(opts.target_acceptance_rate)
        step_size = da_final(carry.da).astype(dtype)
    params = _qhmc_broadcast(num_chains, d, step_size, carry.inverse_mass, carry.trajectory_length)
    return carry.states, params


# --------------------------------------------------------------------------------------- NUTS
class _NUTSParams(NamedTuple):
    step_size: jax.Array
    inverse_mass: jax.Array


def _nuts_transition(logdensity_fn, opts: NUTSOptions, key, shared_key, state, params: _NUTSParams):
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


def _nuts_warmup_one(logdensity_fn, opts: NUTSOptions, num_warmup: int, key, position):
    dtype = position.dtype
    if num_warmup == 0:
        state = blackjax.nuts.init(position, logdensity_fn)
        eps0 = jnp.asarray(opts.initial_step_size, dtype)
        return state, _NUTSParams(eps0, jnp.ones(position.shape[0], dtype))
    warmup = blackjax.window_adaptation(
        blackjax.nuts,
        logdensity_fn,
        initial_step_size=opts.initial_step_size,
        target_acceptance_rate=opts.target_acceptance_rate,
        adaptation_info_fn=get_filter_adapt_info_fn(),
        integrator=opts.integrator,
        max_num_doublings=opts.max_num_doublings,
    )
    (state, params), _ = warmup.run(key, position, num_steps=num_warmup)
    return state, _NUTSParams(
        jnp.asarray(params["step_size"], dtype), jnp.asarray(params["inverse_mass_matrix"], dtype)
    )


def _nuts_warmup(logdensity_fn, opts: NUTSOptions, num_warmup: int, key, positions):
    keys = jax.random.split(key, positions.shape[0])
    one = partial(_nuts_warmup_one, logdensity_fn, opts, num_warmup)
    return _chain_map(logdensity_fn, one, (0, 0))(keys, positions)


# --------------------------------------------------------------------------- jitted entry points
@partial(jax.jit, static_argnames=("logdensity_fn",))
def _initial_logdensity(logdensity_fn, positions):
    return jax.vmap(logdensity_fn)(positions)


@partial(jax.jit, static_argnames=("logdensity_fn", "opts", "num_warmup"))
def _warmup(logdensity_fn, opts, num_warmup: int, key, positions):
    return _nuts_warmup(logdensity_fn, opts, num_warmup, key, positions)


@partial(jax.jit, static_argnames=("logdensity_fn", "opts"))
def _one_leapfrog_acceptance(logdensity_fn, opts: QHMCOptions, key, positions, inverse_mass, step_size):
    """Mean over chains of the acceptance probability of one leapfrog step (fixed mass centre)."""
    kernel = blackjax.hmc.build_kernel(integrator=opts.integrator)
    keys = jax.random.split(key, positions.shape[0])

    def one(k, x):
        state = blackjax.hmc.init(x, logdensity_fn)
        _, info = kernel(k, state, logdensity_fn, step_size, inverse_mass, 1)
        return jnp.where(jnp.isfinite(info.acceptance_rate), info.acceptance_rate, 0.0)

    return jnp.mean(jax.vmap(one)(keys, positions))


def _step_size_search(acceptance, initial: float, max_tries: int = 40) -> float:
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


def _reasonable_step_size(fn, opts: QHMCOptions, key, positions, inverse_mass, max_tries: int = 40) -> float:
    """:func:`_step_size_search` with a compiled one-leapfrog acceptance over the chains."""

    def acceptance(eps, i):
        key_i = key if i == 0 else jax.random.fold_in(key, i - 1)
        return float(_one_leapfrog_acceptance(fn, opts, key_i, positions, inverse_mass, eps))

    return _step_size_search(acceptance, opts.initial_step_size, max_tries)


def _host_states(value_and_grad_fn, positions):
    """Initial chain states from a compiled one-position ``value_and_grad_fn``, chain by chain
    on the host (no program of its own to compile)."""
    vals, grads = zip(*(value_and_grad_fn(x) for x in positions))
    logdensity = jnp.asarray(np.asarray([float(v) for v in vals]), positions.dtype)
    return qhmc.QHMCState(positions, logdensity, jnp.stack([jnp.asarray(g) for g in grads]))


def _host_step_size(value_and_grad_fn, opts: QHMCOptions, key, states, inverse_mass,
                    max_tries: int = 40) -> float:
    """:func:`_step_size_search` with one-position ``value_and_grad_fn`` calls on the host (one
    leapfrog step per chain with the starting mass centre, diagonal or low-rank, mean acceptance
    over chains): no compiled program of its own."""
    x0 = np.asarray(states.position)
    v0 = np.asarray(states.logdensity)
    g0 = np.asarray(states.logdensity_grad)
    metric = jax.tree.map(lambda a: np.asarray(a, float), inverse_mass)
    seed = np.asarray(jax.random.key_data(key)).ravel().tolist()

    def inv_m(v):  # M^-1 v
        return np.asarray(_inv_mass_times(metric, v))

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

    return _step_size_search(acceptance, opts.initial_step_size, max_tries)


_qhmc_init_jit = jax.jit(_qhmc_warmup_init, static_argnames=("logdensity_fn", "opts", "buffer_rows"))


def _longest_slow_window(schedule: np.ndarray) -> int:
    """Iterations of the longest slow window of a ``build_schedule`` array (0 if none)."""
    longest = run = 0
    for stage, end in schedule:
        run = run + 1 if stage == 1 else 0
        longest = max(longest, run)
        if end:
            run = 0
    return longest


_qhmc_chunk_jit = jax.jit(_qhmc_warmup_chunk, static_argnames=("logdensity_fn", "opts"))
_qhmc_end_jit = jax.jit(_qhmc_end_window, static_argnames=("opts",))
_qhmc_final_jit = jax.jit(_qhmc_warmup_final, static_argnames=("opts", "num_warmup"))


def _placed(carry: _QHMCWarmup, shards: int) -> _QHMCWarmup:
    """The warm-up carry in the placement every chunk call receives it in: with the chains on
    several devices, the chain states split over them and everything else replicated (the
    layout the chunk program returns); on one device, host arrays.

    The carry comes back from the initial, chunk, window-end and low-rank programs with
    different placements; jit keys its compiled programs on the arguments' shardings, so
    without this the chunk program, the largest of a fit, was compiled again after the first
    chunk and after the first low-rank estimate (2-3 compilations of ~15 s each on the example
    study, chains split over 2 CPU devices; each recompilation mostly overlapped the previous
    chunk's execution, so this saves CPU time more than wall time on a 2-core host)."""
    carry = jax.tree.map(np.asarray, carry)  # (also drops weak types: one signature)
    if shards <= 1:
        return carry
    chains, rest = _carry_shardings(shards)
    return carry._replace(
        states=jax.device_put(carry.states, chains),
        **{f: jax.device_put(getattr(carry, f), rest) for f in carry._fields if f != "states"},
    )


def _carry_shardings(shards: int):
    """``(chain-split, replicated)`` shardings over the chains' mesh of :func:`_chain_map`."""
    from jax.sharding import NamedSharding, PartitionSpec as P

    mesh = _chains_mesh(shards)
    return NamedSharding(mesh, P("chains")), NamedSharding(mesh, P())


def _qhmc_warmup_driver(fn, opts, num_warmup, key, positions, inverse_mass0, chunk, on_chunk,
                        states=None, value_and_grad_fn=None):
    """QHMC warm-up in jitted slices of at most `chunk` iterations, each ending at or before the
    end of a window of Stan's schedule, which :func:`_qhmc_end_window` then closes in its own
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
        eps0 = _host_step_size(value_and_grad_fn, opts, key_eps, states, inverse_mass0)
    elif num_warmup > 0:
        eps0 = _reasonable_step_size(fn, opts, key_eps, positions, inverse_mass0)
    schedule = np.asarray(build_schedule(num_warmup)) if num_warmup > 0 else np.zeros((0, 2), int)
    buffer_rows = _longest_slow_window(schedule) * positions.shape[0]
    carry = _qhmc_init_jit(fn, opts, key_probe, positions, inverse_mass0, eps0, buffer_rows, states)
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
            carry, st = _qhmc_chunk_jit(fn, opts, _placed(carry, fn.shards), keys[sl], stage[sl], valid)
            if later.size and stop == int(later[0]) + 1:
                low_rank = None
                if opts.metric == "low_rank":  # the window's valid rows (a number known here)
                    rows = int(np.asarray(carry.count))
                    buf_x, buf_g = np.asarray(carry.buf_x)[:rows], np.asarray(carry.buf_g)[:rows]
                    low_rank = (_low_rank_jit(opts, buf_x, buf_g, carry.inverse_mass) if rows >= 2
                                else carry.inverse_mass)
                carry = _qhmc_end_jit(opts, jax.tree.map(np.asarray, carry), low_rank)  # via the host
            stats.append(tuple(np.asarray(a)[: stop - pos] for a in st[:3]))
            pos = stop
            on_chunk(pos, stats[-1])
    states, params = _qhmc_final_jit(carry, opts, num_warmup)
    if stats:
        steps, eps, acc = (np.concatenate([s_[j] for s_ in stats]) for j in range(3))
    else:
        steps, eps, acc = np.zeros(0, np.int32), np.zeros(0, dtype), np.zeros(0, dtype)
    return states, params, (steps, eps, acc), carry


def _qhmc_sample_driver(fn, opts, carry: _QHMCWarmup, params: _QHMCParams, key, num_samples: int,
                        thin: int, chunk: int, on_draws, outs: list) -> None:
    """QHMC sampling with the warm-up's compiled chunk program (iterations at
    ``_SAMPLING_STAGE``: the final step size, mass centre and path length, nothing adapted),
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
    stage = np.full(chunk, _SAMPLING_STAGE, np.int32)
    pending: list[tuple[np.ndarray, ...]] = []  # iterations of a thinning group not yet complete
    for pos in range(0, n_iter, chunk):
        valid = np.arange(pos, pos + chunk) < n_iter
        carry, st = _qhmc_chunk_jit(fn, opts, _placed(carry, fn.shards), keys[pos : pos + chunk], stage,
                                    valid)
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


@partial(jax.jit, static_argnames=("logdensity_fn", "opts", "num_draws", "thin"))
def _run_chunk(logdensity_fn, opts, num_draws: int, thin: int, states, params, key, start):
    """NUTS: ``num_draws`` kept draws (``num_draws * thin`` iterations) from iteration ``start``
    on (QHMC samples with its warm-up's program, :func:`_qhmc_sample_driver`).

    Returns the new states and ``(position, logdensity, divergent, acceptance, energy,
    num_integration_steps)`` with leading axes ``(num_draws, chains)``.
    """
    transition = partial(_nuts_transition, logdensity_fn, opts)
    num_chains = jax.tree.leaves(states)[0].shape[0]
    transitions = _chain_map(logdensity_fn, transition, (0, None, 0, 0))

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


# ----------------------------------------------------------------------------------- the driver
def _progress_bar(enabled: bool):
    if not enabled:
        return contextlib.nullcontext(None)
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(
        SpinnerColumn(),
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )


def _validate(initial_positions, sampler, num_warmup, num_samples, thin, chunk, sampler_options):
    if sampler not in SAMPLERS:
        raise ValueError(f"sample: sampler must be one of {SAMPLERS}, got {sampler!r}")
    for name, value, low in (
        ("num_warmup", num_warmup, 0),
        ("num_samples", num_samples, 1),
        ("thin", thin, 1),
        ("chunk", chunk, 1),
    ):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < low:
            raise ValueError(f"sample: {name} must be an integer >= {low}, got {value!r}")
    cls = _OPTIONS[sampler]
    allowed = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(sampler_options) - set(allowed))
    if unknown:
        raise TypeError(
            f"sample(sampler={sampler!r}): unknown option(s) {unknown}; expected some of {allowed}"
        )
    opts = cls(**sampler_options)
    positions = jnp.asarray(initial_positions)
    if positions.ndim != 2 or positions.shape[0] < 1 or positions.shape[1] < 1:
        raise ValueError(
            "sample: initial_positions must be an array of shape (chains, dim) with chains >= 1 "
            f"and dim >= 1 (flat vectors), got shape {tuple(positions.shape)}"
        )
    if not jnp.issubdtype(positions.dtype, jnp.floating):
        positions = positions.astype(jnp.result_type(float))
    if not bool(jnp.all(jnp.isfinite(positions))):
        bad = np.flatnonzero(~np.all(np.isfinite(np.asarray(positions)), axis=1)).tolist()
        raise ValueError(f"sample: initial_positions must be finite, chains {bad} are not")
    return opts, positions


def _check_inverse_mass_init(inverse_mass_init, sampler, opts, dim: int, dtype):
    """`sample`'s ``inverse_mass_init``: a ``(dim,)`` positive diagonal, or (low-rank QHMC) a
    ``LowRankInverseMassMatrix`` whose rank is padded (or cut, keeping the eigenvalues furthest
    from 1) to ``min(max_rank, dim)``."""
    if sampler != "qhmc":
        raise ValueError("sample: inverse_mass_init is a QHMC option (NUTS starts from ones)")
    if isinstance(inverse_mass_init, LowRankInverseMassMatrix):
        if opts.metric != "low_rank":
            raise ValueError(
                "sample: a low-rank inverse_mass_init needs metric='low_rank' (got "
                f"{opts.metric!r}); pass its diagonal for a diagonal metric")
        sigma, u, lam = (np.asarray(a, dtype) for a in inverse_mass_init)
        r = min(opts.max_rank, dim)
        if sigma.shape != (dim,) or u.ndim != 2 or u.shape[0] != dim or lam.shape != (u.shape[1],):
            raise ValueError(
                f"sample: a low-rank inverse_mass_init needs sigma ({dim},), U ({dim}, k) and lam "
                f"(k,); got {sigma.shape}, {u.shape}, {lam.shape}")
        if not (np.all(np.isfinite(sigma)) and np.all(sigma > 0) and np.all(np.isfinite(u))
                and np.all(np.isfinite(lam)) and np.all(lam > 0)):
            raise ValueError("sample: a low-rank inverse_mass_init needs finite U and finite "
                             "positive sigma and lam")
        if u.shape[1] > r:  # keep the r directions furthest from 1 (max_rank)
            top = np.argsort(-np.abs(np.log(lam)), kind="stable")[:r]
            u, lam = u[:, top], lam[top]
        k = u.shape[1]
        u = np.concatenate([u, np.zeros((dim, r - k), dtype)], axis=1)
        lam = np.concatenate([lam, np.ones(r - k, dtype)])
        return LowRankInverseMassMatrix(sigma, u, lam)
    inverse_mass_init = np.asarray(inverse_mass_init, dtype=dtype)
    if inverse_mass_init.shape != (dim,) or not np.all(np.isfinite(inverse_mass_init)) or np.any(
        inverse_mass_init <= 0
    ):
        raise ValueError(
            f"sample: inverse_mass_init must be {dim} finite positive numbers, got shape "
            f"{inverse_mass_init.shape}"
        )
    return inverse_mass_init


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
    opts, positions = _validate(
        initial_positions, sampler, num_warmup, num_samples, thin, chunk, sampler_options
    )
    num_chains, dim = positions.shape
    shards = _chain_shards(num_chains, chain_devices)
    fn = _StaticFn(logdensity_fn, shards)
    t_start = time.perf_counter()
    host_states = None
    if sampler == "qhmc" and value_and_grad_fn is not None:
        out_shape = jax.eval_shape(logdensity_fn, positions[0]).shape
        if out_shape != ():
            raise ValueError(
                f"sample: logdensity_fn must return a scalar for an input of shape ({dim},), "
                f"got output shape {out_shape}"
            )
        host_states = _host_states(value_and_grad_fn, positions)
        init_ld = np.asarray(host_states.logdensity)
    else:
        init_ld = np.asarray(_initial_logdensity(fn, positions))
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
        inverse_mass_init = _check_inverse_mass_init(
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
                    states=host_states, value_and_grad_fn=value_and_grad_fn,
                )
            else:
                states, params = _warmup(fn, opts, num_warmup, key_warmup, positions)
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
                    states, out = _run_chunk(
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
    return _assemble(
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


def _assemble(
    outs,
    params,
    opts,
    sampler,
    num_chains,
    dim,
    dtype,
    num_warmup,
    thin,
    seed,
    wall_s,
    warmup_s,
    interrupted,
    warmup_stats=None,
) -> MCMCResult:
    dtype = np.dtype(dtype)
    if outs:
        cat = [np.concatenate([o[i] for o in outs], axis=0) for i in range(6)]
        pos, ld, div, acc, energy, steps = (np.swapaxes(c, 0, 1) for c in cat)
    else:
        pos = np.zeros((num_chains, 0, dim), dtype)
        ld, acc, energy = (np.zeros((num_chains, 0), dtype) for _ in range(3))
        div = np.zeros((num_chains, 0), bool)
        steps = np.zeros((num_chains, 0), np.int32)
    if params is None:
        step_size = np.full(num_chains, np.nan, dtype)
        inverse_mass = np.full((num_chains, dim), np.nan, dtype)
        traj = np.full(num_chains, np.nan, dtype)
    else:
        step_size = np.asarray(params.step_size)
        inverse_mass = np.asarray(_metric_diagonal(params.inverse_mass))
        traj = (
            np.asarray(params.trajectory_length)
            if isinstance(opts, QHMCOptions)
            else np.full(num_chains, np.nan, dtype)
        )
    return MCMCResult(
        draws=pos,
        logdensity=ld,
        divergent=div.astype(bool),
        acceptance=acc,
        energy=energy,
        step_size=step_size,
        num_integration_steps=steps,
        inverse_mass_matrix=inverse_mass,
        trajectory_length=traj,
        sampler=sampler,
        num_warmup=int(num_warmup),
        thin=int(thin),
        seed=int(seed),
        wall_s=float(wall_s),
        warmup_s=float(warmup_s),
        interrupted=bool(interrupted),
        warmup_steps=None if warmup_stats is None else warmup_stats[0],
        warmup_step_size=None if warmup_stats is None else warmup_stats[1],
        warmup_acceptance=None if warmup_stats is None else warmup_stats[2],
    )
