"""Dosing-aware simulation of PK/PD models with diffrax.

One entry point per use:

- [`simulate`][]: one subject, pure and jit/vmap/grad-compatible (returns a status, never raises);
- [`simulate_population`][]: many subjects, vmapped, sharded over all JAX devices, chunked with a
  progress bar, and raising a [`SimulationError`][] that names the failed subjects;
- [`steady_state`][] / [`simulate_steady_state`][]: the pre-dose state at steady state for a
  repeated dosing interval, and the trajectory over one interval at steady state.

**How the integration is split.** Dose events (bolus doses, infusion starts and infusion ends, all
shifted by the lag time) and observation times make one sorted grid; `lax.scan` runs over it and
each step is one `diffeqsolve` to the next grid point with a constant input rate. At a grid point
the state is recorded first and the bolus applied after, so observations at a dose time are
pre-dose. Regimens are padded to a fixed size, so the grid size is static (times + 2·doses + 1)
and populations vmap. (Saving observations by dense output inside longer segments was measured
slower under `vmap`: the saved buffer is carried through every solver step.)

**Tolerances.** Defaults are ``rtol=1e-6, atol=1e-9`` with Tsit5 and a PID step-size controller,
which gives about 6 significant digits on concentrations; the closed-form tests run at
``rtol=1e-10, atol=1e-12``. Pass ``solver=diffrax.Kvaerno5()`` for stiff systems (very fast
absorption or turnover next to slow elimination).

**Likelihood path.** The population log-density (`pkpd_jax.inference.population`) integrates
nonlinear models with a second, private path (`_solve_erk`, at the end of this module): one
adaptive explicit Runge-Kutta loop per subject over the whole horizon (the same tableau and error
norm; the step size carries over observations and is re-selected only after dose events), all
subjects in one batched loop, with forward sensitivities integrated alongside. `simulate` and
`simulate_population` keep the per-interval `diffeqsolve`
(reverse-mode differentiable, any diffrax solver, `y0`/`t0`).

**Failures.** Each subject carries a status (0 success, 1 max steps reached, 2 non-finite state,
3 other solver failure). `simulate_population(throw=True)` raises on any failure;
`throw=False` returns the status for the caller to handle (e.g. HMC treats a failed trajectory as
zero likelihood). Failed trajectories are never returned silently.
"""

from __future__ import annotations

import enum
from collections.abc import Callable

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from jaxtyping import Array, ArrayLike, Bool, Float, Int

from .dosing import Regimen, count_le, event_grid, inverse_permutation, stable_argsort
from .errors import PkpdError
from .models.coupling import PKPDModel


__all__ = [
    "SolverConfig",
    "Solution",
    "SteadyState",
    "SimulationError",
    "simulate",
    "simulate_population",
    "steady_state",
    "simulate_steady_state",
    "STATUS_MESSAGES",
    "Status",
]

class Status(enum.IntEnum):
    """The one status enumeration of every engine (an `int32` code per subject in results)."""

    SUCCESS = 0
    MAX_STEPS = 1
    NONFINITE = 2
    SOLVER_FAILURE = 3
    NOT_STEADY = 4


SUCCESS, MAX_STEPS, NONFINITE, SOLVER_FAILURE, NOT_STEADY = (int(s) for s in Status)
STATUS_MESSAGES = {
    SUCCESS: "success",
    MAX_STEPS: "the ODE solver reached max_steps; increase `max_steps`, or use a stiff solver "
    "(solver=diffrax.Kvaerno5()) if the parameters make the system stiff",
    NONFINITE: "the state became non-finite (NaN/inf); check the parameters (all positive and "
    "of plausible size?) and the doses",
    SOLVER_FAILURE: "the ODE solver failed (step size underflow or a non-finite vector field)",
    NOT_STEADY: "steady state was not reached within `max_intervals` dosing intervals; increase "
    "`max_intervals` or loosen `tol`",
}


class SimulationError(PkpdError, RuntimeError):
    """A simulation failed for some subjects; `.subjects` and `.status` say which and why."""

    def __init__(self, subjects: np.ndarray, status: np.ndarray):
        self.subjects = np.asarray(subjects)
        self.status = np.asarray(status)
        lines = []
        for code in np.unique(self.status):
            who = self.subjects[self.status == code]
            shown = ", ".join(map(str, who[:10])) + (" ..." if who.size > 10 else "")
            lines.append(f"  {who.size} subject(s) [{shown}]: {STATUS_MESSAGES[int(code)]}")
        super().__init__("simulation failed for\n" + "\n".join(lines))


class SolverConfig(eqx.Module):
    """Solver settings (static under jit). See the module docstring for the defaults.

    `method`: ``"ode"`` integrates with diffrax; ``"expm"`` propagates linear systems exactly with
    matrix exponentials of the model's Jacobian (PK-only linear models); ``"auto"`` (default)
    picks ``"expm"`` when the joint model is linear and ``"ode"`` otherwise.

    `adjoint`: how diffrax differentiates the ODE path. The default (checkpointed reverse mode)
    supports `jax.grad` but not forward mode; pass ``adjoint=diffrax.ForwardMode()`` for
    `jax.jacfwd` / `jax.jvp`.
    """

    solver: dfx.AbstractSolver = dfx.Tsit5()
    rtol: float = 1e-6
    atol: float = 1e-9
    max_steps: int = 4096
    method: str = "auto"
    adjoint: dfx.AbstractAdjoint = dfx.RecursiveCheckpointAdjoint()

    def __check_init__(self):
        if self.method not in ("auto", "ode", "expm"):
            raise ValueError(f"`method` must be 'auto', 'ode' or 'expm'; got {self.method!r}.")
        if not (self.rtol > 0 and self.atol > 0):
            raise ValueError(f"`rtol` and `atol` must be > 0; got {self.rtol}, {self.atol}.")
        if self.max_steps < 1:
            raise ValueError(f"`max_steps` must be >= 1; got {self.max_steps}.")


class Solution(eqx.Module):
    """Trajectory at the observation times (leading batch axis for populations)."""

    ts: Float[Array, "*batch times"]
    states: Float[Array, "*batch times states"]
    conc: Float[Array, "*batch times"]
    resp: Float[Array, "*batch times"]
    status: Int[Array, "*batch"]

    @property
    def ok(self) -> Bool[Array, "*batch"]:
        return self.status == SUCCESS


def _vf(t, y, args):
    model, theta, rate = args
    return model.vector_field(t, y, theta, rate)


def _solve(model: PKPDModel, theta, regimen: Regimen, ts, y0, t0, cfg: SolverConfig):
    """States at `ts` (any order), the state at the last time, and a status code (one subject).

    The time grid is the union of observation times and event times, sorted with observations
    first among equal times. At each grid point the scan records the state (pre-dose), applies
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
    if _use_expm(model, cfg):
        records = _propagate_expm(model, theta, y0, grid, t_next, grid_kick, grid_rate)
        status = jnp.array(SUCCESS, jnp.int32)
    else:
        records, status = _propagate_ode(model, theta, y0, grid, t_next, grid_kick, grid_rate, cfg)
    obs_pos = inverse_permutation(g_order)[:n_obs]  # where each sorted observation landed in the grid
    states = records[obs_pos][inverse_permutation(order)]
    y_end = records[-1]
    finite = jnp.all(jnp.isfinite(records))
    status = jnp.where((status == SUCCESS) & ~finite, NONFINITE, status)
    return states, y_end, status


def _use_expm(model: PKPDModel, cfg: SolverConfig) -> bool:
    if cfg.method == "expm" and not model.linear:
        raise ValueError(f"method='expm' needs a linear model; {model.name} is not (use 'ode' or 'auto').")
    return cfg.method == "expm" or (cfg.method == "auto" and model.linear)


def _propagate_expm(model: PKPDModel, theta, y0, grid, t_next, grid_kick, grid_rate):
    """Exact propagation of a linear system dy/dt = K y + r over the grid.

    K is the Jacobian of the model's own vector field (so no model is written twice) and each
    step uses ``expm([[K, r], [0, 0]]·dt) = [[e^{K dt}, ∫e^{Ks}ds·r], [0, 1]]``.
    """
    n = y0.shape[0]
    zero = jnp.zeros(n, y0.dtype)
    K = jax.jacfwd(lambda y: model.vector_field(0.0, y, theta, zero))(zero)

    def step(y, k):
        dt = t_next[k] - grid[k]
        aug = jnp.zeros((n + 1, n + 1), y.dtype).at[:n, :n].set(K).at[:n, n].set(grid_rate[k])
        E = jax.scipy.linalg.expm(aug * dt)
        y_new = E[:n, :n] @ (y + grid_kick[k]) + E[:n, n]
        return y_new, y

    _, records = jax.lax.scan(step, y0, jnp.arange(grid.shape[0]))
    return records


def _propagate_ode(model: PKPDModel, theta, y0, grid, t_next, grid_kick, grid_rate, cfg):
    term = dfx.ODETerm(_vf)
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


def _observe(model: PKPDModel, theta, states):
    return jax.vmap(lambda y: model.observe(y, theta))(states)


def simulate(
    model: PKPDModel,
    theta: Float[ArrayLike, " params"],
    regimen: Regimen,
    ts: Float[ArrayLike, " times"],
    *,
    y0: Float[ArrayLike, " states"] | None = None,
    t0: float | None = None,
    config: SolverConfig = SolverConfig(),
) -> Solution:
    """Simulate one subject.

    **Arguments:**

    - `model`: a [`PKPDModel`][] (see `pkpd_jax.models.get_model`).
    - `theta`: parameters in natural units, ordered as `model.param_names` (use `model.pack`).
    - `regimen`: the subject's doses (shape `(doses,)`).
    - `ts`: observation times in h (any order; duplicates allowed).
    - `y0`, `t0`: initial state at time `t0` (default: the model's baseline state, at the earlier
      of the first observation and the first dose). Doses before `t0` are ignored.
    - `config`: solver settings.

    **Returns:** a [`Solution`][] with states, concentration, response and a status code. Pure
    and traceable: jit, vmap and differentiate it freely (reverse mode goes through diffrax's
    checkpointed adjoint).
    """
    theta = jnp.asarray(theta)
    states, _, status = _solve(model, theta, regimen, ts, y0, t0, config)
    conc, resp = _observe(model, theta, states)
    return Solution(jnp.asarray(ts, theta.dtype), states, conc, resp, status)


@eqx.filter_jit
def _simulate_batch(model, theta, regimen, ts, y0, t0, config):
    def one(th, reg, t, y):
        return simulate(model, th, reg, t, y0=y, t0=t0, config=config)

    return jax.vmap(one, in_axes=(0, 0, 0, None if y0 is None else 0))(theta, regimen, ts, y0)


def _broadcast_regimen(regimen: Regimen, n: int) -> Regimen:
    if regimen.time.ndim == 1:
        return jax.tree.map(lambda a: jnp.broadcast_to(a, (n,) + a.shape), regimen)
    if regimen.time.shape[0] != n:
        raise ValueError(f"`regimen` has {regimen.time.shape[0]} subjects but `theta` has {n} rows.")
    return regimen


def _shard(tree, n_dev: int):
    """Place the leading (subject) axis of every array across all devices."""
    mesh = Mesh(np.asarray(jax.devices()[:n_dev]), ("subjects",))
    sharding = NamedSharding(mesh, PartitionSpec("subjects"))
    return jax.device_put(tree, sharding)


def simulate_population(
    model: PKPDModel,
    theta: Float[ArrayLike, "subjects params"],
    regimen: Regimen,
    ts: Float[ArrayLike, "*subjects times"],
    *,
    y0: Float[ArrayLike, "subjects states"] | None = None,
    t0: float | None = None,
    config: SolverConfig = SolverConfig(),
    shard: bool = True,
    chunk_size: int | None = None,
    throw: bool = True,
    progress: bool | Callable[[int, int], None] = False,
) -> Solution:
    """Simulate a population: `vmap` over subjects, sharded over every JAX device.

    **Arguments:**

    - `theta`: `(subjects, params)` in natural units.
    - `regimen`: one regimen for everybody (`(doses,)`) or one per subject (`(subjects, doses)`).
    - `ts`: shared observation times `(times,)` or per subject `(subjects, times)`.
    - `shard`: split the subject axis across `jax.devices()` with `jax.sharding` (no-op on one
      device). Results are identical to the unsharded run.
    - `chunk_size`: simulate this many subjects per compiled call (bounds memory; every chunk
      reuses one compilation). Default: all at once.
    - `throw`: raise [`SimulationError`][] naming the failed subjects; with `False` inspect
      `solution.status` instead.
    - `progress`: show a progress bar over chunks (or a callback `(done, total)`).
    """
    theta = jnp.asarray(theta)
    if theta.ndim != 2 or theta.shape[1] != len(model.param_names):
        raise ValueError(
            f"`theta` must have shape (subjects, {len(model.param_names)}) for {model.name} "
            f"(params {list(model.param_names)}); got {theta.shape}."
        )
    n = theta.shape[0]
    regimen = _broadcast_regimen(regimen, n)
    ts = jnp.asarray(ts, theta.dtype)
    ts = jnp.broadcast_to(ts, (n, ts.shape[-1])) if ts.ndim == 1 else ts
    if ts.shape[0] != n:
        raise ValueError(f"`ts` has {ts.shape[0]} rows but `theta` has {n} subjects.")
    if y0 is not None:
        y0 = jnp.broadcast_to(jnp.asarray(y0, theta.dtype), (n, model.n_states))

    n_dev = jax.device_count() if shard else 1
    size = n if chunk_size is None else max(1, min(chunk_size, n))
    size = -(-size // n_dev) * n_dev  # whole number of subjects per device
    inputs = (theta, regimen, ts, y0)
    pieces = []
    callback = progress if callable(progress) else None
    bar = None
    if progress is True:
        from rich.progress import Progress

        bar = Progress(transient=True)
        task = bar.add_task(f"simulating {n} subjects", total=n)
        bar.start()
    try:
        for lo in range(0, n, size):
            hi = min(lo + size, n)
            chunk = jax.tree.map(lambda a: a[lo:hi], inputs)
            pad = size - (hi - lo)
            if pad:  # repeat the last subject so every chunk has the compiled shape
                chunk = jax.tree.map(lambda a: jnp.concatenate([a, jnp.repeat(a[-1:], pad, axis=0)]), chunk)
            if n_dev > 1:
                chunk = _shard(chunk, n_dev)
            sol = _simulate_batch(model, *chunk, t0, config)
            pieces.append(jax.tree.map(lambda a: a[: hi - lo], sol))
            if bar is not None:
                bar.update(task, completed=hi)
            if callback is not None:
                callback(hi, n)
    finally:
        if bar is not None:
            bar.stop()
    sol = pieces[0] if len(pieces) == 1 else jax.tree.map(lambda *a: jnp.concatenate(a), *pieces)
    if throw:
        status = np.asarray(sol.status)
        bad = np.flatnonzero(status != SUCCESS)
        if bad.size:
            raise SimulationError(bad, status[bad])
    return sol


# ---------------------------------------------------------------------------- steady state
class SteadyState(eqx.Module):
    """Pre-dose state at steady state, whether the tolerance was met, and intervals used."""

    state: Float[Array, "*batch states"]
    converged: Bool[Array, "*batch"]
    n_intervals: Int[Array, "*batch"]
    status: Int[Array, "*batch"]


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
    Differentiable in forward mode (it is a `while_loop`).
    """
    theta = jnp.asarray(theta)
    ts = jnp.asarray([tau], theta.dtype)

    # The while_loop is forward-mode only, so the inner solves use diffrax's forward-mode adjoint
    # (the default checkpointed adjoint is a custom_vjp and rejects jvp).
    inner = eqx.tree_at(lambda c: c.adjoint, config, dfx.ForwardMode())

    def one_interval(y):
        _, y_end, status = _solve(model, theta, regimen, ts, y, 0.0, inner)
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

    The status combines the steady-state search and the final interval's integration.
    """
    ss = steady_state(model, theta, regimen, tau, tol=tol, max_intervals=max_intervals, config=config)
    sol = simulate(model, theta, regimen, ts, y0=ss.state, t0=0.0, config=config)
    status = jnp.where(ss.status != SUCCESS, ss.status, sol.status)
    return eqx.tree_at(lambda s: s.status, sol, status)


# ---------------------------------------------------------------------------- one-loop integrator
# A second ODE path, private to the population log-density (`pkpd_jax.inference.population`).
#
# `_propagate_ode` restarts `diffeqsolve` at every grid point, and under `vmap` a `lax.scan` of
# `while_loop`s runs each grid interval for as many steps as the slowest subject needs *in that
# interval* (sum over intervals of the max over subjects); every restart also re-selects an
# initial step. Forward-mode Jacobians through it carry P tangents through diffrax's whole step
# machinery. For a likelihood evaluated thousands of times this dominates (see
# benchmarks/bench_likelihood.py). `_solve_erk` instead runs *one* adaptive loop per subject over
# the whole horizon with the same explicit Runge-Kutta tableau (taken from the diffrax solver),
# the same error norm (RMS of err / (atol + rtol·max(|y0|, |y1|))) and an I-controller. Steps are
# clipped to land exactly on every observation and dose event. Across an observation the step
# size carries over; after a dose event a fresh initial step is selected, as a restarted
# `diffeqsolve` would (carrying it over there was measured 10-100x less accurate: a saturable
# effect switching on as an infusion starts is a fast transient that the embedded error estimate
# underrates by 10x over a long first step). Optionally the forward sensitivities
# S = ∂y/∂θ are integrated by the same steps (the exact derivative of the discrete scheme for the
# chosen steps: each stage is differentiated with `jax.linearize`; the error control looks at
# the states only, as for the value, so value and gradient share one discretisation).
#
# Batching: the loop is written for a batch of subjects (`vmap` *inside* the body, one
# unbatched `any(active)` loop condition), and `jax.custom_batching.custom_vmap` folds any outer
# `vmap` (over subjects, or over chains on top of that) into that batch. A `vmap` of a
# `while_loop` would instead select every carry (the observation buffers included) on every
# iteration. Finished subjects idle until the last one is done.
#
# With a lag time the dose events move with θ: at each one the sensitivities jump by
# (f_before − f_after)·∂τ/∂tlag (the classical jump condition for a state-independent event time).
#
# Limits (callers fall back to `_solve`): explicit RK solvers with an error estimate only (Tsit5,
# Dopri5, Bosh3, ...), the baseline initial state; `max_steps` bounds the *total* number of
# attempted steps of a subject (not the steps per segment).


def _erk_tableau(solver):
    """``(ButcherTableau, error_order)`` of an explicit diffrax Runge-Kutta solver with an
    embedded error estimate, else None."""
    if not isinstance(solver, dfx.AbstractERK):
        return None
    tab = getattr(solver, "tableau", None)
    if tab is None or tab.implicit or not np.any(np.asarray(tab.b_error)):
        return None
    order = solver.error_order(dfx.ODETerm(_vf))
    if order is None:
        return None
    return tab, float(order)


def _erk_supported(model: PKPDModel, cfg: SolverConfig) -> bool:
    """Whether `_solve_erk` handles this model and solver (else use `_solve`)."""
    return cfg.method != "expm" and not _use_expm(model, cfg) and _erk_tableau(cfg.solver) is not None


def _rms(x):
    return jnp.sqrt(jnp.mean(x * x))


def _unique_sorted(times, fill):
    """For sorted `times` (n,): the index of each entry among the distinct values, and the
    distinct values padded with `fill` to n + 1 entries."""
    n = times.shape[0]
    new = jnp.concatenate([jnp.ones(1, bool), times[1:] != times[:-1]])
    uid = (jnp.cumsum(new) - 1).astype(jnp.int32)
    return uid, jnp.full(n + 1, fill, times.dtype).at[uid].set(times)


def _erk_batched(model: PKPDModel, cfg: SolverConfig, sens: bool, theta, ts, r_time, r_amount, r_dur, r_cmt):
    """The integration for a batch of subjects (leading axis B on every argument)."""
    tab, error_order = _erk_tableau(cfg.solver)
    a_lower = [np.asarray(a, float) for a in tab.a_lower]
    c_nodes = np.asarray(tab.c, float)
    b_sol = np.asarray(tab.b_sol, float)
    b_err = np.asarray(tab.b_error, float)
    n_stages = b_sol.shape[0]
    rtol, atol, max_steps = cfg.rtol, cfg.atol, cfg.max_steps
    n_obs = ts.shape[-1]
    lag = None if model.pk.lag is None else model.param_names.index(model.pk.lag)

    def combine(w, ks):
        terms = [float(w[m]) * ks[m] for m in range(len(ks)) if w[m] != 0]
        return sum(terms[1:], terms[0]) if terms else jnp.zeros_like(ks[0])

    def rhs(t, y, S, rate, theta):
        fn = lambda y_, th_: model.vector_field(t, y_, th_, rate)
        if not sens:
            return fn(y, theta), None
        f, lin = jax.linearize(fn, y, theta)
        # S is (P, n): one tangent per parameter
        return f, jax.vmap(lin)(S, jnp.eye(theta.shape[0], dtype=theta.dtype))

    def initial_step(t, y, rate, theta):
        """Hairer, Nørsett & Wanner (1993), II.4, as diffrax selects its first step."""
        scale = atol + rtol * jnp.abs(y)
        f0 = model.vector_field(t, y, theta, rate)
        d0, d1 = _rms(y / scale), _rms(f0 / scale)
        small = (d0 < 1e-5) | (d1 < 1e-5)
        h0 = jnp.where(small, 1e-6, 0.01 * d0 / jnp.where(small, 1.0, d1))
        f1 = model.vector_field(t + h0, y + h0 * f0, theta, rate)
        d2 = _rms((f1 - f0) / scale) / h0
        dmax = jnp.maximum(d1, d2)
        h1 = jnp.where(
            dmax <= 1e-15,
            jnp.maximum(1e-6, h0 * 1e-3),
            (0.01 / jnp.where(dmax > 0, dmax, 1.0)) ** (1.0 / error_order),
        )
        return jnp.minimum(100 * h0, h1)

    def land(c, inv, do):
        """At a stop: record the (pre-dose) state for observations at this time, then apply
        the boluses and switch to the input rate of the events at this time."""
        c = dict(c)
        o, j = c["o"], c["j"]
        hit = do & (c["t"] == inv["ob_t"][o])
        slot = jnp.where(hit, o, n_obs)  # row n_obs is a scratch row
        c["rec"] = c["rec"].at[slot].set(c["y"])
        if sens:
            c["rec_S"] = c["rec_S"].at[slot].set(c["S"])
        c["o"] = o + hit
        ev = do & (c["t"] == inv["ev_t"][j])
        y_before, rate_before = c["y"], c["rate"]
        c["y"] = y_before + jnp.where(ev, inv["ev_kick"][j], 0.0)
        c["rate"] = jnp.where(ev, inv["ev_rate"][j], rate_before)
        if sens and lag is not None:
            # a dose event at tau = t_dose + tlag moves with tlag: S+ = S- + (f- - f+)·dtau/dtlag
            # (the state jump does not depend on θ)
            theta = inv["theta"]
            jump = model.vector_field(c["t"], y_before, theta, rate_before) - model.vector_field(
                c["t"], c["y"], theta, c["rate"]
            )
            c["S"] = c["S"].at[lag].add(jnp.where(ev & inv["ev_lagged"][j], jump, 0.0))
        c["j"] = j + ev
        c["event"] = ev
        return c

    def setup(theta, ts, r_time, r_amount, r_dur, r_cmt):
        regimen = Regimen(r_time, r_amount, r_dur, r_cmt)
        dtype = theta.dtype
        order = stable_argsort(ts)
        ts_sorted = ts[order]
        y0 = model.init(theta)
        n = y0.shape[0]
        t_begin = jnp.minimum(ts_sorted[0], jnp.min(regimen.time + model.lag_time(theta))).astype(dtype)
        bounds, kicks, rates = event_grid(model, theta, regimen, t_begin, ts_sorted[-1])
        inf = jnp.asarray(jnp.inf, dtype)
        ev_uid, ev_t = _unique_sorted(bounds[:-1], inf)
        ob_uid, ob_t = _unique_sorted(ts_sorted, inf)
        inv = {
            "theta": theta,
            "ob_t": ob_t,
            "n_uobs": ob_uid[-1] + 1,
            "ev_t": ev_t,
            # events at one time: boluses add up, and share the rate of the following segment
            "ev_kick": jnp.zeros((ev_t.shape[0], n), dtype).at[ev_uid].add(kicks),
            "ev_rate": jnp.zeros((ev_t.shape[0], n), dtype).at[ev_uid].set(rates),
            # whether a dose event (index >= 1; index 0 is the start) is among them
            "ev_lagged": jnp.zeros(ev_t.shape[0], jnp.int32).at[ev_uid].max(
                (jnp.arange(ev_uid.shape[0]) >= 1).astype(jnp.int32)
            )
            > 0,
        }
        c = {
            "t": t_begin,
            "y": y0,
            "o": jnp.zeros((), jnp.int32),
            "j": jnp.zeros((), jnp.int32),
            "rate": jnp.zeros(n, dtype),
            "rec": jnp.zeros((n_obs + 1, n), dtype),
            "status": jnp.array(SUCCESS, jnp.int32),
            "steps": jnp.zeros((), jnp.int32),
        }
        if sens:
            c["S"] = jax.jacfwd(model.init)(theta).T  # (P, n)
            c["rec_S"] = jnp.zeros((n_obs + 1,) + c["S"].shape, dtype)
        else:
            c["S"] = None
        c = land(c, inv, True)
        del c["event"]
        c["h"] = initial_step(t_begin, c["y"], c["rate"], theta)
        return c, inv, ob_uid[inverse_permutation(order)]

    def is_active(c, inv):
        return (c["o"] < inv["n_uobs"]) & (c["status"] == SUCCESS)

    def step(c, inv):
        t, h, y, S, rate, theta = c["t"], c["h"], c["y"], c["S"], c["rate"], inv["theta"]
        active = is_active(c, inv)
        t_stop = jnp.minimum(inv["ob_t"][c["o"]], inv["ev_t"][c["j"]])
        landing = h >= t_stop - t
        dt = jnp.where(active, jnp.where(landing, t_stop - t, h), 0.0)
        ks, kS = [], []
        for i in range(n_stages):
            if i == 0:
                z, zS, ti = y, S, t
            else:
                z = y + dt * combine(a_lower[i - 1], ks)
                zS = S + dt * combine(a_lower[i - 1], kS) if sens else None
                ti = t + c_nodes[i - 1] * dt
            k, kk = rhs(ti, z, zS, rate, theta)
            ks.append(k)
            kS.append(kk)
        y1 = y + dt * combine(b_sol, ks)
        err = dt * combine(b_err, ks)
        e = _rms(err / (atol + rtol * jnp.maximum(jnp.abs(y), jnp.abs(y1))))
        finite = jnp.all(jnp.isfinite(y1)) & jnp.isfinite(e)
        accept = active & finite & (e <= 1.0)
        factor = 0.9 * jnp.where(finite & (e > 0), e, 1e-10) ** (-1.0 / error_order)
        factor = jnp.where(finite, jnp.clip(factor, 0.2, 10.0), 0.2)
        h_new = dt * factor
        # a step shortened to land on a stop does not shrink the next one
        h_new = jnp.where(accept & landing, jnp.maximum(h_new, h), h_new)
        out = dict(c)
        out["h"] = jnp.where(active, h_new, h)
        out["t"] = jnp.where(accept, jnp.where(landing, t_stop, t + dt), t)
        out["y"] = jnp.where(accept, y1, y)
        if sens:
            out["S"] = jnp.where(accept, S + dt * combine(b_sol, kS), S)
        out = land(out, inv, accept & landing)
        # After a dose event (bolus, infusion start or end) the dynamics change, possibly with a
        # fast transient (e.g. a saturable effect switching on as an infusion starts) that the
        # embedded error estimate underrates over a long step: select a fresh initial step there,
        # as a restarted diffeqsolve does. Across an observation the step size carries over.
        out["h"] = jnp.where(out.pop("event"), initial_step(out["t"], out["y"], out["rate"], theta), out["h"])
        steps = c["steps"] + active.astype(jnp.int32)
        status = c["status"]
        status = jnp.where(active & (out["h"] < 1e-12 * jnp.maximum(1.0, jnp.abs(t))), SOLVER_FAILURE, status)
        status = jnp.where(active & (steps >= max_steps) & (out["o"] < inv["n_uobs"]), MAX_STEPS, status)
        out["steps"] = steps
        out["status"] = status
        return out

    carry, inv, slot = jax.vmap(setup)(theta, ts, r_time, r_amount, r_dur, r_cmt)
    step_all = jax.vmap(step)
    active_all = jax.vmap(is_active)
    c = jax.lax.while_loop(lambda c: jnp.any(active_all(c, inv)), lambda c: step_all(c, inv), carry)

    states = jnp.take_along_axis(c["rec"], slot[:, :, None], axis=1)
    finite = jnp.all(jnp.isfinite(states), axis=(1, 2))
    dstates = None
    if sens:
        rec_S = jnp.take_along_axis(c["rec_S"], slot[:, :, None, None], axis=1)
        dstates = jnp.swapaxes(rec_S, -1, -2)  # (B, M, n, P)
        finite = finite & jnp.all(jnp.isfinite(dstates), axis=(1, 2, 3))
    status = jnp.where((c["status"] == SUCCESS) & ~finite, NONFINITE, c["status"])
    return states, dstates, status, c["steps"]


def _fold_vmap(batched):
    """`custom_vmap` for a function whose arguments all carry a leading batch axis: an outer
    `vmap` of it runs it once on the merged batch (unbatched arguments are broadcast)."""
    fn = jax.custom_batching.custom_vmap(batched)

    @fn.def_vmap
    def _rule(axis_size, in_batched, *args):
        args = [a if b else jnp.broadcast_to(a, (axis_size,) + a.shape) for a, b in zip(args, in_batched)]
        size = args[0].shape[1]
        out = fn(*(a.reshape((axis_size * size,) + a.shape[2:]) for a in args))
        out = jax.tree.map(lambda o: o.reshape((axis_size, size) + o.shape[1:]), out)
        return out, jax.tree.map(lambda _: True, out)

    return fn


def _solve_erk(
    model: PKPDModel, theta, regimen: Regimen, ts, cfg: SolverConfig, sensitivities: bool = False
):
    """One subject (any outer `vmap`s fold into one batched loop, see above).

    Returns ``(states (M, n), dstates (M, n, P) or None, status, n_steps)``: the states at `ts`
    from the baseline state (observations at a dose time are pre-dose), their derivatives with
    respect to `theta` when `sensitivities`, the status code and the number of attempted steps.
    Not differentiable itself (use the sensitivities)."""
    if not _erk_supported(model, cfg):
        raise ValueError(f"_solve_erk does not handle {model.name} with {cfg}")
    theta = jnp.asarray(theta)
    dtype = theta.dtype
    args = (
        theta,
        jnp.asarray(ts, dtype),
        jnp.asarray(regimen.time, dtype),
        jnp.asarray(regimen.amount, dtype),
        jnp.asarray(regimen.duration, dtype),
        jnp.asarray(regimen.cmt, jnp.int32),
    )
    run = _fold_vmap(lambda *a: _erk_batched(model, cfg, sensitivities, *a))
    out = run(*(a[None] for a in args))
    return jax.tree.map(lambda o: o[0], out)
