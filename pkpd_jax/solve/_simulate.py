"""`simulate`: one subject, one entry point dispatching to the engines.

**How the integration is split.** Dose events (bolus doses, infusion starts and infusion ends, all
shifted by the lag time; `pkpd_jax.dosing.event_grid`) and observation times make one sorted
grid; every engine runs over it. The ode engine (`_ode`) runs `lax.scan` over the grid, each step
one `diffeqsolve` to the next grid point with a constant input rate; the exact engine (`_expm`)
takes one matrix exponential per step. At a grid point the state is recorded first and the bolus
applied after, so observations at a dose time are pre-dose. Regimens are padded to a fixed size,
so the grid size is static (times + 2·doses + 1) and populations vmap. (Saving observations by
dense output inside longer segments was measured slower under `vmap`: the saved buffer is
carried through every solver step.) The erk engine (`_erk`) runs one adaptive loop over the same
events and observations.
"""

from __future__ import annotations

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import ArrayLike, Float

from ..dosing import Regimen, count_le, event_grid, inverse_permutation, stable_argsort
from ..models.coupling import PKPDModel
from ._config import NONFINITE, SUCCESS, Solution, SolverConfig
from ._erk import erk_tableau, solve_erk
from ._expm import propagate_expm, use_expm
from ._ode import propagate_ode


def solve_grid(model: PKPDModel, theta, regimen: Regimen, ts, y0, t0, cfg: SolverConfig):
    """States at `ts` (any order), the state at the last time, and a status code (one subject;
    the ode or expm engine as `cfg.method` selects).

    The time grid is the union of observation times and event times, sorted with observations
    first among equal times. At each grid point the engine records the state (pre-dose), applies
    the bolus of that point (if it is a dose event), then integrates to the next grid point with
    the infusion rate of the enclosing event segment.
    """
    theta = jnp.asarray(theta)
    dtype = theta.dtype
    ts = jnp.asarray(ts, dtype)
    n_obs = ts.shape[0]
    order = stable_argsort(ts)
    ts_sorted = ts[order]
    horizon = ts_sorted[-1]
    y0 = model.init(theta) if y0 is None else jnp.asarray(y0, dtype)
    t_begin = (
        jnp.minimum(ts_sorted[0], jnp.min(regimen.time + model.lag_time(theta)))
        if t0 is None
        else jnp.minimum(jnp.asarray(t0, dtype), ts_sorted[0])
    ).astype(dtype)
    bounds, kicks, rates = event_grid(model, theta, regimen, t_begin, horizon)

    grid = jnp.concatenate([ts_sorted, bounds[:-1]])
    grid_kick = jnp.concatenate([jnp.zeros((n_obs, y0.shape[0]), dtype), kicks])
    g_order = stable_argsort(grid)  # observations sort before events at equal times
    grid, grid_kick = grid[g_order], grid_kick[g_order]
    seg = count_le(bounds[:-1], grid) - 1
    grid_rate = rates[jnp.clip(seg, 0, rates.shape[0] - 1)]
    t_next = jnp.concatenate([grid[1:], grid[-1:]])
    if use_expm(model, cfg):
        records = propagate_expm(model, theta, y0, grid, t_next, grid_kick, grid_rate)
        status = jnp.array(SUCCESS, jnp.int32)
    else:
        records, status = propagate_ode(model, theta, y0, grid, t_next, grid_kick, grid_rate, cfg)
    obs_pos = inverse_permutation(g_order)[:n_obs]  # where each sorted observation landed in the grid
    states = records[obs_pos][inverse_permutation(order)]
    y_end = records[-1]
    finite = jnp.all(jnp.isfinite(records))
    status = jnp.where((status == SUCCESS) & ~finite, NONFINITE, status)
    return states, y_end, status


def observe(model: PKPDModel, theta, states):
    """Concentrations and responses of a trajectory of states ``(times, states)``."""
    return jax.vmap(lambda y: model.observe(y, theta))(states)


def _check_erk(model: PKPDModel, y0, t0, config: SolverConfig) -> None:
    if y0 is not None or t0 is not None:
        raise ValueError(
            "method='erk' starts from the model's baseline state at the first observation or dose; "
            "it does not take `y0`/`t0`. Use method='ode' (or 'auto') for a given initial state."
        )
    if erk_tableau(config.solver) is None:
        raise ValueError(
            f"method='erk' needs an explicit Runge-Kutta solver with an embedded error estimate "
            f"(Tsit5, Dopri5, Bosh3, ...); got {type(config.solver).__name__}. Use method='ode' "
            "for implicit or fixed-step solvers."
        )


def _d_observe(model: PKPDModel, theta, states, dstates):
    """∂(conc, resp)/∂θ from the states and their sensitivities ``(times, states, params)``."""
    eye = jnp.eye(theta.shape[0], dtype=theta.dtype)

    def one(y, S):  # y (n,), S (n, P) -> two (P,)
        _, lin = jax.linearize(lambda y_, th_: jnp.stack(model.observe(y_, th_)), y, theta)
        return jax.vmap(lin, in_axes=(1, 0), out_axes=1)(S, eye)

    d = jax.vmap(one)(states, dstates)  # (times, 2, P)
    return d[:, 0], d[:, 1]


def simulate(
    model: PKPDModel,
    theta: Float[ArrayLike, " params"],
    regimen: Regimen,
    ts: Float[ArrayLike, " times"],
    *,
    y0: Float[ArrayLike, " states"] | None = None,
    t0: float | None = None,
    config: SolverConfig = SolverConfig(),
    sensitivities: bool = False,
) -> Solution:
    """Simulate one subject.

    **Arguments:**

    - `model`: a [`PKPDModel`][] (see `pkpd_jax.models.get_model`).
    - `theta`: parameters in natural units, ordered as `model.param_names` (use `model.pack`).
    - `regimen`: the subject's doses (shape `(doses,)`).
    - `ts`: observation times in h (any order; duplicates allowed).
    - `y0`, `t0`: initial state at time `t0` (default: the model's baseline state, at the earlier
      of the first observation and the first dose). Doses before `t0` are ignored. Not with
      ``method="erk"``.
    - `config`: solver settings; `config.method` picks the engine (see [`SolverConfig`][]).
    - `sensitivities`: also return ∂states/∂θ, ∂conc/∂θ and ∂resp/∂θ (`Solution.dstates`,
      `dconc`, `dresp`): integrated alongside the states with ``method="erk"``, by forward-mode
      differentiation (`jax.jacfwd`) of the engine otherwise, so the quantity is the same
      whatever the engine.

    **Returns:** a [`Solution`][] with states, concentration, response and a status code. Pure
    and traceable: jit, vmap and differentiate it freely (reverse mode goes through diffrax's
    checkpointed adjoint; ``method="erk"`` is not differentiable by JAX, use `sensitivities`).
    """
    theta = jnp.asarray(theta)
    ts_out = jnp.asarray(ts, theta.dtype)
    if config.method == "erk":
        _check_erk(model, y0, t0, config)
        states, dstates, status, _ = solve_erk(model, theta, regimen, ts, config, sensitivities)
        conc, resp = observe(model, theta, states)
        if not sensitivities:
            return Solution(ts_out, states, conc, resp, status)
        dconc, dresp = _d_observe(model, theta, states, dstates)
        return Solution(ts_out, states, conc, resp, status, dstates, dconc, dresp)
    if not sensitivities:
        states, _, status = solve_grid(model, theta, regimen, ts, y0, t0, config)
        conc, resp = observe(model, theta, states)
        return Solution(ts_out, states, conc, resp, status)

    # Forward mode through diffrax needs its forward-mode adjoint (the default checkpointed
    # adjoint is a custom_vjp and rejects jvp); the primal computation is the same.
    fwd = eqx.tree_at(lambda c: c.adjoint, config, dfx.ForwardMode())

    def run(th):
        states, _, status = solve_grid(model, th, regimen, ts, y0, t0, fwd)
        conc, resp = observe(model, th, states)
        return (states, conc, resp), (states, conc, resp, status)

    (dstates, dconc, dresp), (states, conc, resp, status) = jax.jacfwd(run, has_aux=True)(theta)
    return Solution(ts_out, states, conc, resp, status, dstates, dconc, dresp)
