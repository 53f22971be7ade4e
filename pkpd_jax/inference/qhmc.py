r"""Quantum-inspired Hamiltonian Monte Carlo (QHMC), as a blackjax-style kernel.

QHMC (Liu & Zhang 2019, *Quantum-Inspired Hamiltonian Monte Carlo for Bayesian Sampling*,
arXiv:1912.01937) is HMC whose mass is a random variable. At every iteration a diagonal mass
is drawn, independently of the position, from a log-normal around an adapted centre
:math:`m_c` with spread :math:`s`,

.. math::

    \log m = \log m_c + s\,\xi, \qquad \xi \sim \mathcal N(0, I_d),

and one ordinary HMC transition is made with that mass: momentum :math:`p \sim \mathcal N(0,
\operatorname{diag} m)`, ``num_integration_steps`` leapfrog steps of size :math:`\epsilon` for
:math:`H(\theta, p) = -\log \pi(\theta) + \tfrac12 p^\top \operatorname{diag}(m)^{-1} p`,
then a Metropolis-Hastings accept/reject on :math:`\Delta H`.

Why it is exact. For a *fixed* mass the HMC transition :math:`K_m` leaves :math:`\pi` invariant
(volume-preserving, time-reversible integrator + MH). Drawing :math:`m` from a distribution that
does not depend on :math:`\theta` makes one QHMC iteration the mixture :math:`K = \int K_m\,
P(dm)`, and a mixture of :math:`\pi`-invariant kernels is :math:`\pi`-invariant. No Jacobian or
extra acceptance term is needed (the mass is *not* a state variable that is carried over).

Why it helps. In a direction of posterior scale :math:`\sigma` the leapfrog dynamics oscillate
at frequency :math:`1/(\sigma\sqrt m)`; with :math:`m_c = 1/\sigma^2` this is
:math:`e^{-s\xi/2}` in whitened units. A random mass therefore randomises the effective
integration time per coordinate (suppressing the periodicity of fixed-length HMC) and lets
occasional heavy/light masses explore directions whose local scale differs from the adapted
one (e.g. the neck and the mouth of a funnel), which is the paper's motivation.
With ``log_mass_sd = 0`` the kernel *is* plain HMC (see below).

This module follows blackjax's algorithm layout (``blackjax.mcmc.hmc``):

- :class:`QHMCState` -- an alias of ``blackjax.mcmc.hmc.HMCState`` (position, logdensity,
  gradient); nothing about the mass is carried between iterations.
- :class:`QHMCInfo` -- per-transition diagnostics, including the drawn ``log_mass``.
- :func:`init` ``(position, logdensity_fn)``.
- :func:`build_kernel` ``(integrator, divergence_threshold, xi_clip=None)`` returning the pure
  ``kernel(rng_key, state, logdensity_fn, step_size, inverse_mass_center, log_mass_sd,
  num_integration_steps)``. It draws the mass and calls ``blackjax.mcmc.hmc.build_kernel``'s
  kernel with the inverse mass matrix ``1/m``; the leapfrog integration, momentum draw,
  divergence check and MH step are blackjax's own. ``xi_clip`` optionally truncates ``ξ`` to
  ``[-xi_clip, xi_clip]`` (still exact: the mass distribution stays position-independent); the
  sampling driver uses 2 to avoid the rare very light masses that make the leapfrog unstable.
- :func:`as_top_level_api` -> ``blackjax.SamplingAlgorithm`` (nothing is jitted here).

Key handling: ``rng_key`` is split into ``(key_mass, key_hmc)``; ``key_hmc`` is handed to the
blackjax HMC kernel unchanged. With ``log_mass_sd = 0`` the inverse mass is exactly
``inverse_mass_center`` (it is computed as ``inverse_mass_center * exp(-s xi)``), so a QHMC step
equals ``blackjax.hmc.build_kernel(integrator)(key_hmc, state, ..., inverse_mass_center, L)``
bit for bit. (When comparing the two under ``jax.jit``, pass the inverse mass as an argument:
QHMC's drawn inverse mass is always a runtime value, while a closed-over constant lets XLA
specialise and constant-fold the arithmetic that involves it, which may round differently in
the last bit.)

``num_integration_steps`` may be a traced integer (blackjax integrates with a
``lax.fori_loop``), so callers can jitter the path length per iteration; see
:mod:`pkpd_jax.inference.adaptation` for the warm-up (step size, mass centre, path length).
Because the kernel has the ``(rng_key, state, logdensity_fn, step_size,
inverse_mass_matrix, **params)`` shape, this module can also be handed to
``blackjax.window_adaptation(qhmc, logdensity_fn, log_mass_sd=..., num_integration_steps=...)``.

Energy convention: :attr:`QHMCInfo.energy` is the Hamiltonian of the state the kernel
*returns* (the proposal's if accepted, the starting point's with its fresh momentum if
rejected), which is what the E-BFMI diagnostic needs. (``HMCInfo.energy`` in blackjax is the
proposal's energy whether or not it was accepted.)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import blackjax
import blackjax.mcmc.hmc as hmc
import blackjax.mcmc.integrators as integrators
import blackjax.mcmc.metrics as metrics
import jax
import jax.numpy as jnp
from blackjax.base import SamplingAlgorithm
from jax.flatten_util import ravel_pytree


__all__ = [
    "QHMCState",
    "QHMCInfo",
    "init",
    "build_kernel",
    "as_top_level_api",
    "draw_inverse_mass",
    "metric_dim",
]

QHMCState = hmc.HMCState


class QHMCInfo(NamedTuple):
    """Diagnostics of one QHMC transition.

    acceptance_rate
        Metropolis-Hastings acceptance probability ``min(1, exp(-ΔH))`` of the proposal.
    is_accepted
        Whether the proposal was accepted.
    is_divergent
        Whether the energy error exceeded ``divergence_threshold``.
    energy
        Hamiltonian of the returned state (see the module docstring).
    num_integration_steps
        Number of leapfrog steps (= gradient evaluations) of this transition.
    log_mass
        The drawn diagonal log-mass ``log m_c + s ξ``, shape ``(d,)``.
    """

    acceptance_rate: jax.Array
    is_accepted: jax.Array
    is_divergent: jax.Array
    energy: jax.Array
    num_integration_steps: jax.Array
    log_mass: jax.Array


def init(position, logdensity_fn: Callable) -> QHMCState:
    """Initial state: the position with its log density and gradient (blackjax's HMC init)."""
    return hmc.init(position, logdensity_fn)


def whitened_low_rank_metric(center: metrics.LowRankInverseMassMatrix, inverse_mass_factor) -> metrics.Metric:
    """The blackjax ``Metric`` of ``M⁻¹ = diag(σ) A diag(f) A diag(σ)`` with
    ``A = (I + U(Λ - I)Uᵀ)^{1/2} = I + U(√Λ - I)Uᵀ``: a low-rank mass centre
    ``M_c⁻¹ = diag(σ) A² diag(σ)`` whose inverse mass is multiplied by ``f`` (``(d,)``, > 0) in
    its own whitened coordinates. With ``f = 1`` it is ``M_c⁻¹``. All operations are ``O(d k)``.

    Momentum ``p = diag(1/σ) B (ε / √f)`` with ``B = A⁻¹ = I + U(Λ^{-1/2} - I)Uᵀ``,
    ``ε ~ N(0, I)``; velocity ``M⁻¹ p = σ ⊙ A (f ⊙ A (σ ⊙ p))``."""
    sigma, u, lam = center.sigma, center.U, center.lam
    f = inverse_mass_factor
    sqrt_lam = jnp.sqrt(lam)

    def a(v):  # A v
        return v + u @ ((sqrt_lam - 1.0) * (u.T @ v))

    def b(v):  # A^-1 v
        return v + u @ ((1.0 / sqrt_lam - 1.0) * (u.T @ v))

    def velocity(p):
        return sigma * a(f * a(sigma * p))

    def sample_momentum(rng_key, position):
        flat, unravel = ravel_pytree(position)
        eps = jax.random.normal(rng_key, flat.shape, flat.dtype)
        return unravel(b(eps / jnp.sqrt(f)) / sigma)

    def kinetic_energy(momentum, position=None):
        del position
        p, _ = ravel_pytree(momentum)
        w = a(sigma * p)
        return 0.5 * jnp.dot(w, f * w)

    def check_turning(momentum_left, momentum_right, momentum_sum, position_left=None,
                      position_right=None):
        del position_left, position_right
        m_left, m_right, m_sum = (ravel_pytree(m)[0] for m in (momentum_left, momentum_right, momentum_sum))
        rho = m_sum - (m_right + m_left) / 2
        return (jnp.dot(velocity(m_left), rho) <= 0) | (jnp.dot(velocity(m_right), rho) <= 0)

    def scale(position, element, *, inv: bool, trans: bool):
        del position
        e, unravel = ravel_pytree(element)
        if not inv and not trans:  # M^{1/2} = diag(1/σ) B diag(1/√f)
            out = b(e / jnp.sqrt(f)) / sigma
        elif not inv and trans:
            out = b(e / sigma) / jnp.sqrt(f)
        elif inv and not trans:  # M^{-1/2} = diag(√f) A diag(σ)
            out = jnp.sqrt(f) * a(sigma * e)
        else:
            out = sigma * a(jnp.sqrt(f) * e)
        return unravel(out)

    return metrics.Metric(sample_momentum, kinetic_energy, check_turning, scale)


def draw_inverse_mass(rng_key, inverse_mass_center, log_mass_sd, xi_clip: float | None = None,
                      whitened: bool = False):
    """Draw ``1/m`` with ``log m = log m_c + s ξ``, ``m_c = 1 / inverse_mass_center``.

    ``ξ ~ N(0, I)``, or truncated to ``[-xi_clip, xi_clip]`` when ``xi_clip`` is given.
    Returns ``(inverse_mass, log_mass)``; with ``log_mass_sd == 0`` the inverse mass equals
    ``inverse_mass_center`` exactly.

    ``inverse_mass_center`` is a diagonal ``(d,)`` or a low-rank-modified metric
    ``blackjax.mcmc.metrics.LowRankInverseMassMatrix(sigma, U, lam)``
    (``M_c^{-1} = diag(σ)(I + U(Λ - I)Uᵀ)diag(σ)``). For the latter the random factor acts on
    the diagonal scale, ``σ -> σ e^{-sξ/2}``: the drawn inverse mass is
    ``diag(e^{-sξ/2}) M_c^{-1} diag(e^{-sξ/2})`` (still symmetric positive definite, still drawn
    independently of the position), and ``log_mass`` reports its diagonal scale
    ``sξ - 2 log σ``. With ``whitened=True`` the random factor acts in the low-rank centre's
    own whitened coordinates instead (:func:`whitened_low_rank_metric` with ``f = e^{-sξ}``; a
    blackjax ``Metric`` is returned): the per-coordinate factor on ``σ`` mixes the directions
    the low-rank correction decorrelates (each coordinate's share of a strongly correlated
    direction is rescaled independently), while in whitened coordinates it only rescales
    independent unit directions. On a 50-dimensional Gaussian with equicorrelation 0.9 (0.98)
    and a rank-8 metric, ``s = 0.5`` on ``σ`` costs 16x (60x) the gradients per effective
    sample of ``s = 0``. ``log_mass`` reports ``sξ - 2 log σ`` in both cases.
    """
    if isinstance(inverse_mass_center, metrics.LowRankInverseMassMatrix):
        sigma = jnp.asarray(inverse_mass_center.sigma)
        shape, dtype = sigma.shape, sigma.dtype
    else:
        inverse_mass_center = jnp.asarray(inverse_mass_center)
        shape, dtype = inverse_mass_center.shape, inverse_mass_center.dtype
    if xi_clip is None:
        xi = jax.random.normal(rng_key, shape, dtype)
    else:
        xi = jax.random.truncated_normal(rng_key, -xi_clip, xi_clip, shape, dtype)
    scaled = log_mass_sd * xi
    if isinstance(inverse_mass_center, metrics.LowRankInverseMassMatrix):
        if whitened:
            drawn = whitened_low_rank_metric(inverse_mass_center, jnp.exp(-scaled))
            return drawn, scaled - 2.0 * jnp.log(sigma)
        drawn = inverse_mass_center._replace(sigma=sigma * jnp.exp(-0.5 * scaled))
        return drawn, scaled - 2.0 * jnp.log(sigma)
    inverse_mass = inverse_mass_center * jnp.exp(-scaled)
    log_mass = scaled - jnp.log(inverse_mass_center)
    return inverse_mass, log_mass


def metric_dim(inverse_mass_center) -> tuple[int, ...]:
    """Shape of the flat position a mass centre (diagonal or low-rank) applies to."""
    if isinstance(inverse_mass_center, metrics.LowRankInverseMassMatrix):
        return tuple(jnp.shape(inverse_mass_center.sigma))
    return tuple(jnp.shape(inverse_mass_center))


def build_kernel(
    integrator: Callable = integrators.velocity_verlet,
    divergence_threshold: float = 1000,
    xi_clip: float | None = None,
    whitened: bool = False,
) -> Callable:
    """Build the QHMC transition kernel.

    Parameters
    ----------
    integrator
        Symplectic integrator passed to ``blackjax.mcmc.hmc.build_kernel``.
    divergence_threshold
        Energy error above which a transition is flagged divergent.
    xi_clip
        ``None`` (default): ``ξ ~ N(0, I)`` as in the paper; a positive number truncates ``ξ``
        to ``[-xi_clip, xi_clip]``.
    whitened
        With a low-rank centre, draw the mass in the centre's whitened coordinates (see
        :func:`draw_inverse_mass`); no effect on a diagonal centre.

    Returns
    -------
    ``kernel(rng_key, state, logdensity_fn, step_size, inverse_mass_center, log_mass_sd,
    num_integration_steps) -> (QHMCState, QHMCInfo)``, a pure function (not jitted).
    ``inverse_mass_center`` is the diagonal ``1/m_c`` as a flat ``(d,)`` array (``d`` = size of
    the raveled position), or a ``LowRankInverseMassMatrix`` (see :func:`draw_inverse_mass`);
    ``log_mass_sd`` is the spread ``s >= 0`` of the log-mass.
    """
    hmc_kernel = hmc.build_kernel(integrator=integrator, divergence_threshold=divergence_threshold)

    def kernel(
        rng_key,
        state: QHMCState,
        logdensity_fn: Callable,
        step_size,
        inverse_mass_center,
        log_mass_sd,
        num_integration_steps,
    ) -> tuple[QHMCState, QHMCInfo]:
        flat_position, _ = ravel_pytree(state.position)
        if metric_dim(inverse_mass_center) != flat_position.shape:
            raise ValueError(
                "qhmc: inverse_mass_center must be a diagonal (or a low-rank metric's sigma) of "
                f"shape {flat_position.shape} (the raveled position), got shape "
                f"{metric_dim(inverse_mass_center)}"
            )
        key_mass, key_hmc = jax.random.split(rng_key)
        inverse_mass, log_mass = draw_inverse_mass(
            key_mass, inverse_mass_center, log_mass_sd, xi_clip, whitened)
        new_state, hmc_info = hmc_kernel(
            key_hmc, state, logdensity_fn, step_size, inverse_mass, num_integration_steps
        )
        # Hamiltonian at the starting point with the freshly drawn momentum.
        kinetic = metrics.default_metric(inverse_mass).kinetic_energy(hmc_info.momentum)
        initial_energy = -state.logdensity + kinetic
        energy = jnp.where(hmc_info.is_accepted, hmc_info.energy, initial_energy)
        info = QHMCInfo(
            acceptance_rate=hmc_info.acceptance_rate,
            is_accepted=hmc_info.is_accepted,
            is_divergent=hmc_info.is_divergent,
            energy=energy,
            num_integration_steps=jnp.asarray(num_integration_steps),
            log_mass=log_mass,
        )
        return new_state, info

    return kernel


def as_top_level_api(
    logdensity_fn: Callable,
    step_size: float,
    inverse_mass_center,
    log_mass_sd: float = 0.5,
    num_integration_steps: int = 10,
    *,
    divergence_threshold: float = 1000,
    integrator: Callable = integrators.velocity_verlet,
    xi_clip: float | None = None,
) -> SamplingAlgorithm:
    """QHMC with fixed parameters as a ``blackjax.SamplingAlgorithm`` (``init``, ``step``).

    Example::

        alg = qhmc.as_top_level_api(logdensity_fn, 0.3, jnp.ones(d), log_mass_sd=0.5,
                                    num_integration_steps=8)
        state = alg.init(x0)
        state, info = jax.jit(alg.step)(key, state)
    """
    if log_mass_sd < 0:
        raise ValueError(f"qhmc: log_mass_sd must be >= 0, got {log_mass_sd}")
    kernel = build_kernel(integrator, divergence_threshold, xi_clip)

    def init_fn(position, rng_key=None):
        del rng_key
        return init(position, logdensity_fn)

    def step_fn(rng_key, state):
        return kernel(
            rng_key,
            state,
            logdensity_fn,
            step_size,
            inverse_mass_center,
            log_mass_sd,
            num_integration_steps,
        )

    return blackjax.base.SamplingAlgorithm(init_fn, step_fn)
