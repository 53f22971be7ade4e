"""The diffrax engine: one `diffeqsolve` per interval of the merged observation/event grid."""

from __future__ import annotations

import diffrax as dfx
import jax
import jax.numpy as jnp

from ._config import MAX_STEPS, SOLVER_FAILURE, SUCCESS


def vector_field(t, y, args):
    """The model's vector field in diffrax's ``(t, y, args)`` form, ``args = (model, theta, rate)``."""
    model, theta, rate = args
    return model.vector_field(t, y, theta, rate)


def propagate_ode(model, theta, y0, grid, t_next, grid_kick, grid_rate, cfg):
    """The state at every grid point (before its bolus) and a status code (one subject).

    At grid point `k` the bolus `grid_kick[k]` is applied, then the state is integrated to
    `t_next[k]` with the constant input `grid_rate[k]`. The first failure's status is kept.
    """
    term = dfx.ODETerm(vector_field)
    controller = dfx.PIDController(rtol=cfg.rtol, atol=cfg.atol)

    def step(carry, k):
        y, status = carry
        record = y
        sol = dfx.diffeqsolve(
            term,
            cfg.solver,
            grid[k],
            t_next[k],
            None,
            y + grid_kick[k],
            args=(model, theta, grid_rate[k]),
            stepsize_controller=controller,
            max_steps=cfg.max_steps,
            adjoint=cfg.adjoint,
            throw=False,
        )
        code = jnp.where(
            sol.result == dfx.RESULTS.successful,
            SUCCESS,
            jnp.where(sol.result == dfx.RESULTS.max_steps_reached, MAX_STEPS, SOLVER_FAILURE),
        )
        status = jnp.where(status == SUCCESS, code, status)
        return (sol.ys[-1], status), record

    init = (y0, jnp.array(SUCCESS, jnp.int32))
    (_, status), records = jax.lax.scan(step, init, jnp.arange(grid.shape[0]))
    return records, status
