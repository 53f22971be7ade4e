"""Steady state of a repeated dosing interval: the pre-dose state, and one interval's trajectory."""

from __future__ import annotations

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import ArrayLike, Float

from ..dosing import Regimen
from ..models.coupling import PKPDModel
from ._config import NOT_STEADY, SUCCESS, Solution, SolverConfig, SteadyState
from ._simulate import simulate, solve_grid


def steady_state(
    model: PKPDModel,
    theta: Float[ArrayLike, " params"],
    regimen: Regimen,
    tau: float,
    *,
    tol: float = 1e-6,
    max_intervals: int = 1000,
    config: SolverConfig = SolverConfig(),
) -> SteadyState:
    """Repeat one dosing interval until the pre-dose state stops changing.

    `regimen` holds the doses of one interval, at times in ``[0, tau)`` relative to the interval
    start (e.g. ``Regimen.make([0.0], [10.0], [1.0])`` for a 10 mg, 1 h infusion every `tau` h).
    The interval map ``y -> y(tau)`` is iterated from the baseline state until
    ``|y_{k+1} - y_k| <= tol * max(|y_{k+1}|, 1e-12)`` for every state. Pure and vmappable;
    `status` is 4 when `max_intervals` was not enough (see `STATUS_MESSAGES`).
    Differentiable in forward mode (it is a `while_loop`). Each interval starts from a given
    state, so ``method="erk"`` runs the ode engine here.
    """
    theta = jnp.asarray(theta)
    ts = jnp.asarray([tau], theta.dtype)

    # The while_loop is forward-mode only, so the inner solves use diffrax's forward-mode adjoint
    # (the default checkpointed adjoint is a custom_vjp and rejects jvp).
    inner = eqx.tree_at(lambda c: c.adjoint, config, dfx.ForwardMode())
    if inner.method == "erk":
        inner = eqx.tree_at(lambda c: c.method, inner, "ode")

    def one_interval(y):
        _, y_end, status = solve_grid(model, theta, regimen, ts, y, 0.0, inner)
        return y_end, status

    def cond(c):
        _, _, k, done, status = c
        return (~done) & (k < max_intervals) & (status == SUCCESS)

    def body(c):
        y, _, k, _, _ = c
        y_new, status = one_interval(y)
        done = jnp.all(jnp.abs(y_new - y) <= tol * jnp.maximum(jnp.abs(y_new), 1e-12))
        return y_new, y, k + 1, done, status

    y0 = model.init(theta)
    init = (y0, y0, jnp.array(0), jnp.array(False), jnp.array(SUCCESS, jnp.int32))
    y, _, k, done, status = jax.lax.while_loop(cond, body, init)
    status = jnp.where((status == SUCCESS) & ~done, NOT_STEADY, status)
    return SteadyState(y, done, k, status)


def simulate_steady_state(
    model: PKPDModel,
    theta: Float[ArrayLike, " params"],
    regimen: Regimen,
    tau: float,
    ts: Float[ArrayLike, " times"],
    *,
    tol: float = 1e-6,
    max_intervals: int = 1000,
    config: SolverConfig = SolverConfig(),
) -> Solution:
    """Trajectory over one dosing interval at steady state, at times `ts` in ``[0, tau]``.

    The status combines the steady-state search and the final interval's integration (the ode
    engine when ``method="erk"``, which cannot start from a given state).
    """
    ss = steady_state(model, theta, regimen, tau, tol=tol, max_intervals=max_intervals, config=config)
    if config.method == "erk":
        config = eqx.tree_at(lambda c: c.method, config, "ode")
    sol = simulate(model, theta, regimen, ts, y0=ss.state, t0=0.0, config=config)
    status = jnp.where(ss.status != SUCCESS, ss.status, sol.status)
    return eqx.tree_at(lambda s: s.status, sol, status)
