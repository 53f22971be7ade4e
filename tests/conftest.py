"""Shared test set-up: float64 everywhere, seeded prior draws and a scipy reference integrator.

``jax_enable_x64`` is switched on at import time, before any test module builds an array, so
that the simulator is checked in double precision (the oracles are float64 numpy).
"""

from __future__ import annotations

import jax


jax.config.update("jax_enable_x64", True)

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from scipy.integrate import solve_ivp  # noqa: E402


def _draw_params(model, n: int, seed: int, z_max: float = 1.5) -> np.ndarray:
    """`n` seeded draws from the model's default priors, shape ``(n, n_params)`` (natural units).

    Standard normal deviates are clipped to ``±z_max`` so that a draw cannot be absurd (e.g. a
    10^4-fold stiff ratio that no fixed tolerance covers); they are still spread over the prior.
    """
    rng = np.random.default_rng(seed)
    z = np.clip(rng.standard_normal((n, len(model.params))), -z_max, z_max)
    u = np.array([p.prior_loc for p in model.params]) + z * np.array(
        [p.log_sd for p in model.params]
    )
    return np.stack(
        [np.asarray(p.to_natural(u[:, i])) for i, p in enumerate(model.params)], axis=-1
    )


def _solve_ivp_piecewise(
    rhs,
    y0,
    dose_times,
    dose_amounts,
    dose_durations,
    dose_state: int,
    obs,
    *,
    method: str = "Radau",
    rtol: float = 1e-11,
    atol: float = 1e-13,
) -> np.ndarray:
    """Reference trajectory with ``scipy.integrate.solve_ivp``, restarted at every dose event.

    `rhs(t, y, u)` is the hand-written vector field with the zero-order input vector `u`.
    Boluses are added after the observations at their time (pre-dose rule); infusions add
    ``amount / duration`` to `dose_state` over ``[t, t + duration)``. Returns ``(n_obs, n)``.
    """
    obs = np.asarray(obs, float)
    t_d = np.asarray(dose_times, float)
    a_d = np.asarray(dose_amounts, float)
    d_d = np.asarray(dose_durations, float)
    y = np.array(y0, float)
    n = y.size
    inf = d_d > 0
    t_start = min(obs.min(), t_d.min())
    breaks = np.unique(np.concatenate([[t_start], t_d, (t_d + d_d)[inf], [obs.max()]]))
    breaks = breaks[breaks <= obs.max()]
    out = np.full((obs.size, n), np.nan)
    out[obs == breaks[0]] = y
    for ta, tb in zip(breaks[:-1], breaks[1:]):
        y[dose_state] += a_d[(~inf) & (t_d == ta)].sum()
        u = np.zeros(n)
        active = inf & (t_d <= ta) & (t_d + d_d > ta)
        u[dose_state] = (a_d[active] / d_d[active]).sum()
        sel = (obs > ta) & (obs <= tb)
        t_eval = np.unique(np.concatenate([obs[sel], [tb]]))
        sol = solve_ivp(
            lambda t, x: rhs(t, x, u), (ta, tb), y, method=method, t_eval=t_eval, rtol=rtol,
            atol=atol,
        )
        assert sol.success, sol.message
        for ti, yi in zip(sol.t, sol.y.T):
            out[obs == ti] = yi
        y = sol.y[:, -1].copy()
    assert np.all(np.isfinite(out))
    return out


@pytest.fixture(scope="session")
def draw_params():
    """``draw_params(model, n, seed)`` -> seeded prior draws, ``(n, n_params)``."""
    return _draw_params


@pytest.fixture(scope="session")
def solve_ivp_piecewise():
    """Piecewise ``solve_ivp`` reference integrator (see `_solve_ivp_piecewise`)."""
    return _solve_ivp_piecewise
