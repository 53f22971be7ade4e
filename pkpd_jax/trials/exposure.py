"""Steady-state exposure and response over one dosing interval, for many subjects and doses at once.

The question a trial asks of each virtual subject is: at steady state on a regimen of `dose` mg
every `tau` h, what is the largest (and smallest) biomarker value over the whole interval? Two
engines answer it, with the same model code (the model's own vector field, nothing re-derived):

- **fast** (linear PK without lag time, one dose per interval): the periodic steady-state
  engine [`pkpd_jax.solve.periodic`][] (exact unit-dose PK by superposition, the PD fixed point
  by Newton's method on the RK4 interval map; see there). The extremes are taken on the grid
  nodes (``n_steps + 1`` points, the infusion end one of them).
- **generic** (any model): the simulator's [`simulate_steady_state`][pkpd_jax.solve] (the
  interval map iterated until the state stops changing, adaptive diffrax solves), then the
  extremes on the same grid nodes.

`method="auto"` takes the fast path where it applies and the generic path otherwise, and
recomputes on the generic path any (subject, dose) the fast path could not vouch for: a
non-finite result, no convergence of the fixed point, or a PD Jacobian so large that the fixed
RK4 step is not accurate (``‖J‖·h > 0.5``). Every result carries a status (the simulator's codes,
`pkpd_jax.solve.STATUS_MESSAGES`); [`steady_state_extremes`][] raises a
[`SimulationError`][pkpd_jax.solve.SimulationError] naming the failures unless
``throw=False``, so a failure never reaches a coverage as a NaN.

This module chunks, shards and dispatches; the numerical engines live in `pkpd_jax.solve`. Both
paths are checked against each other and against a long simulation in tests/test_trials.py.
"""

from __future__ import annotations

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float, Int

from ..devices import shard_leading
from ..models.coupling import PKPDModel
from ..progress import progress_bar
from ..solve import (
    NONFINITE,
    NOT_STEADY,
    SUCCESS,
    SimulationError,
    SolverConfig,
    simulate_steady_state,
)
from ..solve.periodic import (
    IntervalGrid as IntervalGrid,
    fast_path_applies as fast_path_applies,
    interval_grid as interval_grid,
    periodic_extremes,
    periodic_profile,
    unit_dose_regimen,
    unit_pk_steady_state as unit_pk_steady_state,
)


__all__ = [
    "IntervalGrid",
    "Extremes",
    "fast_path_applies",
    "interval_grid",
    "steady_state_extremes",
    "steady_state_profile",
    "unit_pk_steady_state",
]


class Extremes(eqx.Module):
    """Biomarker extremes over one steady-state interval, ``(subjects, doses)`` each.

    `status`: 0 success, else a code of `pkpd_jax.solve.STATUS_MESSAGES`; `path`: 0 = fast,
    1 = generic (where the fast path could not vouch for the result, or does not apply).
    """

    max_resp: Float[Array, "subjects doses"]
    min_resp: Float[Array, "subjects doses"]
    status: Int[Array, "subjects doses"]
    path: Int[Array, "subjects doses"]


# ---------------------------------------------------------------------------- generic path
def _generic_one(model, tau, duration, ts, tol, max_intervals, config):
    reg = unit_dose_regimen(duration)  # the dose of the fast path too

    def run(theta, dose):
        sol = simulate_steady_state(
            model, theta, reg.scaled(dose), tau, ts, tol=tol, max_intervals=max_intervals, config=config
        )
        mx, mn = jnp.max(sol.resp), jnp.min(sol.resp)
        finite = jnp.isfinite(mx) & jnp.isfinite(mn)
        status = jnp.where((sol.status == SUCCESS) & ~finite, NONFINITE, sol.status)
        return mx, mn, status.astype(jnp.int32)

    return run


@eqx.filter_jit
def _generic_pairs(model, tau, duration, ts, tol, max_intervals, config, theta, doses):
    run = _generic_one(model, tau, duration, ts, tol, max_intervals, config)
    return jax.vmap(run)(theta, doses)


# ---------------------------------------------------------------------------- entry point
def _resolve_duration(model: PKPDModel, duration: float | None) -> float:
    d = model.pk.default_duration if duration is None or duration == 0 else float(duration)
    return float(d)


def steady_state_extremes(
    model: PKPDModel,
    theta: Float[ArrayLike, "subjects params"],
    tau: float,
    doses: Float[ArrayLike, " doses"],
    *,
    duration: float | None = None,
    n_steps: int = 96,
    grading: float = 1.0,
    method: str = "auto",
    tol: float = 1e-8,
    max_iter: int = 30,
    generic_tol: float = 1e-7,
    max_intervals: int = 2000,
    config: SolverConfig = SolverConfig(rtol=1e-8, atol=1e-10),
    chunk_size: int = 2048,
    shard: bool = True,
    throw: bool = True,
    progress: bool | Callable[[int, int], None] = False,
) -> Extremes:
    """Biomarker max and min over one steady-state interval for every subject × dose.

    **Arguments:**

    - `theta`: ``(subjects, params)`` individual parameters (natural units, `model.param_names`).
    - `tau`: dosing interval in h (24 once daily, 168 once weekly); one dose per interval at its
      start, into the model's dose compartment.
    - `doses`: ``(doses,)`` amounts in mg (> 0).
    - `duration`: infusion length in h (default: the model's default, 0 = bolus).
    - `n_steps`, `grading`: the time grid (see [`interval_grid`][]); the extremes are taken on
      its ``n_steps + 1`` nodes.
    - `method`: ``"auto"`` (fast path where it applies, generic fallback), ``"fast"`` (no
      fallback; raises if it does not apply) or ``"generic"``.
    - `tol`, `max_iter`: the fast path's fixed-point tolerance (relative, on the PD state) and
      Newton iterations; `generic_tol`, `max_intervals`, `config`: the generic path's.
    - `chunk_size`: subjects per compiled call (every dose of a subject in the same call);
      the subject axis is sharded over all JAX devices when `shard`.
    - `throw`: raise [`SimulationError`][pkpd_jax.solve.SimulationError] (naming the subject
      rows) on any failure; with ``False`` read `status`.
    - `progress`: a rich progress bar over chunks, or a callback ``(done, total)``.
    """
    if method not in ("auto", "fast", "generic"):
        raise ValueError(f"`method` must be 'auto', 'fast' or 'generic'; got {method!r}.")
    if model.pd is None:
        raise ValueError(f"{model.name} has no PD model: a biomarker response needs one.")
    theta = jnp.asarray(theta, dtype=float)
    if theta.ndim != 2 or theta.shape[1] != len(model.param_names):
        raise ValueError(
            f"`theta` must have shape (subjects, {len(model.param_names)}) for {model.name}; "
            f"got {theta.shape}."
        )
    doses = jnp.asarray(doses, dtype=theta.dtype).reshape(-1)
    if doses.size == 0 or not bool(jnp.all(doses > 0)):
        raise ValueError(f"`doses` must be a non-empty list of amounts > 0 mg; got {np.asarray(doses)}.")
    d = _resolve_duration(model, duration)
    grid = interval_grid(tau, d, n_steps, grading=grading)
    n, n_d = theta.shape[0], doses.size
    fast = method != "generic" and fast_path_applies(model)
    if method == "fast" and not fast:
        raise ValueError(
            f"the fast path needs linear PK without a lag time and a PD model; {model.name} is not."
        )

    n_dev = jax.device_count() if shard else 1
    # chunk sizes are powers of two (>= 64): calls with different numbers of subjects then share
    # a few compiled shapes (the padding is at most the size of the population itself)
    size = min(max(1, chunk_size), max(64, 1 << max(0, n - 1).bit_length()))
    size = -(-size // n_dev) * n_dev
    out_max = np.empty((n, n_d))
    out_min = np.empty((n, n_d))
    out_status = np.empty((n, n_d), np.int32)
    out_path = np.zeros((n, n_d), np.int32)
    with progress_bar(f"steady state: {n} subjects × {n_d} doses", n, enabled=progress) as update:
        if fast:
            for lo in range(0, n, size):
                hi = min(lo + size, n)
                chunk = theta[lo:hi]
                if hi - lo < size:
                    chunk = jnp.concatenate([chunk, jnp.repeat(chunk[-1:], size - (hi - lo), axis=0)])
                chunk = shard_leading(chunk, n_dev)
                # a step too large for the PD dynamics has status MAX_STEPS: the generic path below
                mx, mn, st, _ = periodic_extremes(model, chunk, grid, doses, tol=tol, max_iter=max_iter)
                k = hi - lo
                out_max[lo:hi], out_min[lo:hi] = np.asarray(mx)[:k], np.asarray(mn)[:k]
                out_status[lo:hi] = np.asarray(st)[:k]
                update(hi)
            redo = np.argwhere(out_status != SUCCESS) if method == "auto" else np.zeros((0, 2), int)
        else:
            redo = np.argwhere(np.ones((n, n_d), bool))
        if redo.size:
            ts = grid.nodes  # the same nodes as the fast path
            rows, cols = redo[:, 0], redo[:, 1]
            pair = 256
            for lo in range(0, rows.size, pair):
                r, c = rows[lo : lo + pair], cols[lo : lo + pair]
                k = r.size
                th = theta[np.concatenate([r, np.repeat(r[-1:], pair - k)])]
                ds = doses[np.concatenate([c, np.repeat(c[-1:], pair - k)])]
                mx, mn, st = _generic_pairs(
                    model, float(tau), d, jnp.asarray(ts), generic_tol, max_intervals, config, th, ds
                )
                out_max[r, c], out_min[r, c] = np.asarray(mx)[:k], np.asarray(mn)[:k]
                out_status[r, c], out_path[r, c] = np.asarray(st)[:k], 1
                if not fast:
                    update(min(n, (lo + k) // n_d))
    if throw and np.any(out_status != SUCCESS):
        bad = np.flatnonzero(np.any(out_status != SUCCESS, axis=1))
        first = out_status[bad, np.argmax(out_status[bad] != SUCCESS, axis=1)]
        raise SimulationError(bad, first)
    return Extremes(
        jnp.asarray(out_max), jnp.asarray(out_min), jnp.asarray(out_status), jnp.asarray(out_path)
    )


def steady_state_profile(
    model: PKPDModel,
    theta: Float[ArrayLike, " params"],
    tau: float,
    dose: float,
    *,
    duration: float | None = None,
    n_steps: int = 96,
    grading: float = 1.0,
    tol: float = 1e-10,
    max_iter: int = 30,
) -> dict[str, np.ndarray]:
    """One subject's steady-state interval on the fast path's grid: ``{"time", "conc", "resp"}``
    (the PD fixed point found as in [`steady_state_extremes`][]; for plots and checks)."""
    if not fast_path_applies(model):
        raise ValueError(
            f"`steady_state_profile` needs linear PK without a lag time and a PD model; "
            f"{model.name} is not (use pkpd_jax.solve.simulate_steady_state)."
        )
    theta = jnp.asarray(theta, dtype=float)
    grid = interval_grid(tau, _resolve_duration(model, duration), n_steps, grading=grading)
    out = periodic_profile(model, theta, grid, jnp.asarray(dose, theta.dtype), tol=tol, max_iter=max_iter)
    t, conc, resp, done = (np.asarray(x) for x in out)
    if not done:
        raise SimulationError(np.array([0]), np.array([NOT_STEADY]))
    return {"time": t, "conc": conc, "resp": resp}
