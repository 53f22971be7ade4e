"""Steady-state exposure and response over one dosing interval, for many subjects and doses at once.

The question a trial asks of each virtual subject is: at steady state on a regimen of `dose` mg
every `tau` h, what is the largest (and smallest) biomarker value over the whole interval? Two
paths answer it, with the same model code (the model's own vector field, nothing re-derived):

- **fast** (linear PK without lag time, one dose per interval): the PK steady state of a *unit*
  dose is exact (superposition: the interval map of a linear system is ``A ↦ M·A + c`` with
  ``[M c] = expm`` of the augmented generator, so ``A_ss = (I − M)⁻¹·c``), and linear PK scales
  with the dose, so the PK part of every dose on the grid is ``dose × unit profile``. The PD
  states are *simulated*, not scaled: their periodic solution is the fixed point of the PD
  interval map ``r ↦ r(tau)``, found by Newton's method on that map (its Jacobian by forward-mode
  differentiation through the integration; 2 passes for a response that is linear in its state,
  such as the turnover models, a few more otherwise), integrating the PD states with classical
  Runge-Kutta 4 on a fixed grid whose PK inputs (at the nodes and mid-points) are exact. The
  extremes are taken on the grid nodes (``n_steps + 1`` points, the infusion end one of them).
- **generic** (any model): the simulator's [`simulate_steady_state`][pkpd_jax.simulate] (the
  interval map iterated until the state stops changing, adaptive diffrax solves), then the
  extremes on the same grid nodes.

`method="auto"` takes the fast path where it applies and the generic path otherwise, and
recomputes on the generic path any (subject, dose) the fast path could not vouch for: a
non-finite result, no convergence of the fixed point, or a PD Jacobian so large that the fixed
RK4 step is not accurate (``‖J‖·h > 0.5``). Every result carries a status (the simulator's codes,
`pkpd_jax.simulate.STATUS_MESSAGES`); [`steady_state_extremes`][] raises a
[`SimulationError`][pkpd_jax.simulate.SimulationError] naming the failures unless
``throw=False``, so a failure never reaches a coverage as a NaN.

Both paths are checked against each other and against a long simulation in tests/test_trials.py.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float, Int

from ..dosing import Regimen
from ..models.coupling import PKPDModel
from ..solve import (
    MAX_STEPS,
    NONFINITE,
    NOT_STEADY,
    SUCCESS,
    SimulationError,
    SolverConfig,
    simulate_steady_state,
)


__all__ = [
    "IntervalGrid",
    "Extremes",
    "fast_path_applies",
    "interval_grid",
    "steady_state_extremes",
    "steady_state_profile",
    "unit_pk_steady_state",
    "expm_small",
]

#: RK4 is accurate (and far from its stability limit, |h·λ| ≈ 2.8) while ‖J‖·h stays below this.
STIFFNESS_LIMIT = 0.5


@dataclass(frozen=True)
class IntervalGrid:
    """The static time grid of one dosing interval ``[0, tau]`` (nodes include the infusion end).

    `nodes`: ``(n_steps + 1,)`` increasing times from 0 to `tau`; `duration`: infusion length in h
    (0 = bolus). The first ``n_infusion`` steps cover the infusion.
    """

    tau: float
    duration: float
    nodes: np.ndarray
    n_infusion: int

    @property
    def n_steps(self) -> int:
        return self.nodes.size - 1


def interval_grid(
    tau: float, duration: float = 0.0, n_steps: int = 96, *, grading: float = 1.0
) -> IntervalGrid:
    """A grid of `n_steps` RK4 steps over ``[0, tau]`` with the infusion end (if any) as a node.

    The infusion gets at least 8 steps (graded towards its start); the rest of the
    interval is split uniformly (``grading=1``) or graded towards the dose (``grading > 1``:
    node ``s ↦ s**grading`` in relative time, finer where the concentration changes fastest).
    """
    tau, duration = float(tau), float(duration)
    if not tau > 0:
        raise ValueError(f"the dosing interval must be > 0 h; got {tau}.")
    if not 0 <= duration < tau:
        raise ValueError(f"the infusion duration must be in [0, tau={tau}) h; got {duration}.")
    if n_steps < 4:
        raise ValueError(f"`n_steps` must be >= 4; got {n_steps}.")
    if not grading >= 1:
        raise ValueError(f"`grading` must be >= 1; got {grading}.")
    n_inf = 0 if duration == 0 else min(n_steps // 4, max(8, int(round(n_steps * duration / tau))))
    n_rest = n_steps - n_inf
    s = np.linspace(0.0, 1.0, n_rest + 1) ** grading
    rest = duration + (tau - duration) * s
    # the infusion's nodes are graded quadratically towards its start: the response keeps
    # rising for a few minutes after a dose starts, and its maximum is often there
    inf = duration * np.linspace(0.0, 1.0, n_inf + 1)[:-1] ** 2 if n_inf else np.zeros(0)
    nodes = np.concatenate([inf, rest])
    return IntervalGrid(tau, duration, nodes, n_inf)


def fast_path_applies(model: PKPDModel) -> bool:
    """Whether the exact-PK fast path handles `model` (linear PK, no lag time, a PD model)."""
    return model.pk.linear and model.pk.lag is None and model.pd is not None


class Extremes(eqx.Module):
    """Biomarker extremes over one steady-state interval, ``(subjects, doses)`` each.

    `status`: 0 success, else a code of `pkpd_jax.simulate.STATUS_MESSAGES`; `path`: 0 = fast,
    1 = generic (where the fast path could not vouch for the result, or does not apply).
    """

    max_resp: Float[Array, "subjects doses"]
    min_resp: Float[Array, "subjects doses"]
    status: Int[Array, "subjects doses"]
    path: Int[Array, "subjects doses"]


# ---------------------------------------------------------------------------- exact unit-dose PK
def _pk_generator(model: PKPDModel, theta):
    n = model.n_pk_states
    pk, _ = model.split_params(theta)
    zero = jnp.zeros(n, theta.dtype)
    return jax.jacfwd(lambda a: model.pk.vector_field(0.0, a, pk, zero))(zero)


def expm_small(A: Float[Array, "n n"], order: int = 14) -> Float[Array, "n n"]:
    """Matrix exponential of a small matrix: scaling and squaring with a Taylor polynomial.

    ``‖A/2^s‖₁ ≤ 1/2`` and order 14 bound the truncation error by ``0.5^15/15! < 3e-17``
    (relative). It agrees with `jax.scipy.linalg.expm` to ~1e-14 (tests) and compiles in a
    fraction of the time (that one compiles every Padé degree it may pick)."""
    n = A.shape[0]
    norm = jnp.max(jnp.sum(jnp.abs(A), axis=0))
    s = jnp.clip(jnp.ceil(jnp.log2(jnp.maximum(norm, 1e-300) / 0.5)), 0, 60).astype(jnp.int32)
    X = A / (2.0 ** s.astype(A.dtype))
    eye = jnp.eye(n, dtype=A.dtype)
    E = eye
    for k in range(order, 0, -1):  # Horner: I + X/1 (I + X/2 (I + ...))
        E = eye + _mm(X, E) / k
    return jax.lax.fori_loop(0, s, lambda _, M: _mm(M, M), E)


def _mm(A, B):
    # tiny matrices: a broadcast product fuses into one loop (a `dot` per product compiles slowly)
    return jnp.sum(A[:, :, None] * B[None, :, :], axis=1)


def _aug(K, u, dt):
    n = K.shape[0]
    m = jnp.zeros((n + 1, n + 1), K.dtype).at[:n, :n].set(K).at[:n, n].set(u)
    return expm_small(m * dt)


def unit_pk_steady_state(
    model: PKPDModel, theta: Float[ArrayLike, " params"], grid: IntervalGrid
) -> tuple[Float[Array, "nodes pk"], Float[Array, "steps pk"]]:
    """PK amounts at steady state for 1 mg per interval: at the grid nodes and step mid-points.

    Exact for a linear PK model (matrix exponentials of the model's own Jacobian). At node 0
    the amounts are post-dose (a bolus already given); the state at `tau` is the pre-dose one.
    """
    theta = jnp.asarray(theta)
    dtype = theta.dtype
    K = _pk_generator(model, theta)
    n = K.shape[0]
    e = jax.nn.one_hot(model.pk.dose_cmt, n, dtype=dtype)
    d = grid.duration
    # Half-step propagators are needed only for the distinct (step, infusing) pairs of the static
    # grid (the uniform part shares one): a dozen exponentials per subject instead of one per step.
    h_np = np.diff(grid.nodes)
    infusing = np.arange(grid.n_steps) < grid.n_infusion
    pairs, which = np.unique(np.stack([np.round(h_np, 12), infusing]), axis=1, return_inverse=True)
    rate = e / (d if d > 0 else 1.0)
    u = jnp.where(jnp.asarray(pairs[1] > 0)[:, None], rate[None, :], 0.0)
    kick = e if d == 0 else jnp.zeros_like(e)
    # every matrix exponential in one batched call: the two pieces of the interval (infusion,
    # rest) and the distinct half steps of the grid
    gens = jnp.concatenate([jnp.stack([rate, jnp.zeros_like(e)]), u])
    dts = jnp.concatenate([jnp.asarray([d, grid.tau - d], dtype), jnp.asarray(pairs[0] / 2, dtype)])
    Es = jax.vmap(lambda uk, hk: _aug(K, uk, hk))(gens, dts)
    # one interval from A0 (pre-dose): A(tau) = M (A0) + c
    full = Es[1] @ Es[0] if d > 0 else Es[1]
    M, c = full[:n, :n], full[:n, n] + full[:n, :n] @ kick
    a0 = jnp.linalg.solve(jnp.eye(n, dtype=dtype) - M, c) + kick  # post-dose state at t = 0
    half = Es[2:][np.asarray(which).reshape(-1)]  # (steps, n+1, n+1)

    def step(a, E):
        a_mid = E[:n, :n] @ a + E[:n, n]
        a_next = E[:n, :n] @ a_mid + E[:n, n]
        return a_next, (a_mid, a_next)

    _, (mids, rest) = jax.lax.scan(step, a0, half)
    return jnp.concatenate([a0[None], rest]), mids


# ---------------------------------------------------------------------------- PD fixed point (fast)
def _fast_fns(model: PKPDModel, grid: IntervalGrid):
    """Per (subject, dose) building blocks: one RK4 pass over the interval and the stiffness."""
    t_nodes = np.asarray(grid.nodes)
    h_np = np.diff(t_nodes)

    # The PD part is driven by the plasma concentration alone (`PKPDModel.vector_field` passes
    # C = A_central / V to the PD model), so the passes carry unit-dose concentrations, not the
    # PK amounts: C(dose) = dose · C(1 mg) for linear PK.
    def observe(theta, c, r, dose):
        _, pd = model.split_params(theta)
        return model.pd.response(r, pd, dose * c)

    def rhs(theta, dose):
        _, pd = model.split_params(theta)

        def f(t, c, r):
            return model.pd.vector_field(t, r, pd, dose * c)

        return f

    def one_pass(theta, a_nodes, a_mids, dose, r0):
        """``r0 -> (r(tau), (r(tau), max, min))`` over the grid nodes."""
        f = rhs(theta, dose)
        t_n = jnp.asarray(t_nodes, theta.dtype)
        h = jnp.asarray(h_np, theta.dtype)

        def body(carry, k):
            r, mx, mn = carry
            t, hk = t_n[k], h[k]
            k1 = f(t, a_nodes[k], r)
            k2 = f(t + hk / 2, a_mids[k], r + hk / 2 * k1)
            k3 = f(t + hk / 2, a_mids[k], r + hk / 2 * k2)
            k4 = f(t + hk, a_nodes[k + 1], r + hk * k3)
            r1 = r + hk / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
            v = observe(theta, a_nodes[k + 1], r1, dose)
            return (r1, jnp.maximum(mx, v), jnp.minimum(mn, v)), None

        v0 = observe(theta, a_nodes[0], r0, dose)
        (r_end, mx, mn), _ = jax.lax.scan(body, (r0, v0, v0), jnp.arange(h_np.size))
        return r_end, (r_end, mx, mn)

    def stiffness(theta, a_nodes, dose, r):
        """max ‖J_PD‖∞·h at the trough, the infusion end and the peak concentration."""
        f = rhs(theta, dose)
        t_n = jnp.asarray(t_nodes, theta.dtype)
        conc = a_nodes  # unit-dose concentrations
        worst = jnp.zeros((), theta.dtype)
        for k in (0, grid.n_infusion, a_nodes.shape[0] - 1, jnp.argmax(conc)):
            Jk = jax.jacfwd(lambda rr, k=k: f(t_n[k], a_nodes[k], rr))(r)
            worst = jnp.maximum(worst, jnp.max(jnp.sum(jnp.abs(Jk), axis=1)))
        return worst * float(h_np.max())

    return observe, one_pass, stiffness, rhs


@eqx.filter_jit
def _fast_batch(model, grid_key, theta, doses, tol, max_iter):
    """Extremes, status and stiffness ``(S, D)`` for subjects `theta` ``(S, P)`` × `doses` ``(D,)``.

    The fixed-point loop is written for the whole batch (`vmap` inside the body, one unbatched
    loop condition): a `vmap` of a per-element `while_loop` would turn the pass counter into a
    batched value and run both branches of the Newton/plain alternation on every iteration.
    """
    grid = _GRIDS[grid_key]
    observe, one_pass, stiffness, _ = _fast_fns(model, grid)
    n_pk = model.n_pk_states
    m = model.n_states - n_pk
    dtype = theta.dtype
    a_nodes, a_mids = jax.vmap(lambda th: _unit_concentrations(model, th, grid))(theta)
    per_dose = lambda f: jax.vmap(f, in_axes=(None, None, None, 0, 0))  # noqa: E731
    per_subject = lambda f: jax.vmap(per_dose(f), in_axes=(0, 0, 0, None, 0))  # noqa: E731
    S, D = theta.shape[0], doses.shape[0]

    if m == 0:  # a direct model: the response follows the concentration, no state to settle

        def direct(th, an, am, dose, _):
            v = jax.vmap(lambda a: observe(th, a, jnp.zeros(0, dtype), dose))(an)
            return jnp.max(v), jnp.min(v)

        mx, mn = per_subject(direct)(theta, a_nodes, a_mids, doses, jnp.zeros((S, D, 0), dtype))
        ok = jnp.isfinite(mx) & jnp.isfinite(mn)
        return mx, mn, jnp.where(ok, SUCCESS, NONFINITE).astype(jnp.int32), jnp.zeros((S, D), dtype)

    eye = jnp.eye(m, dtype=dtype)

    def newton_one(th, an, am, dose, r):
        J, (r_end, mx, mn) = jax.jacfwd(lambda x: one_pass(th, an, am, dose, x), has_aux=True)(r)
        step = r - jnp.linalg.solve(J - eye, r_end - r)
        return jnp.where(jnp.all(jnp.isfinite(step)), step, r_end), r_end, mx, mn

    def plain_one(th, an, am, dose, r):
        r_end, (_, mx, mn) = one_pass(th, an, am, dose, r)
        return r_end, r_end, mx, mn

    newton_all, plain_all = per_subject(newton_one), per_subject(plain_one)

    def cond(c):
        _, it, done, _, _ = c
        return jnp.any(~done) & (it < max_iter)

    def body(c):
        # Newton steps (a pass with forward-mode tangents) alternate with plain passes that check
        # convergence (and are a fixed-point step otherwise): a response linear in its state (the
        # turnover models) converges in one Newton step, so two passes, one with tangents.
        r, it, done, mx0, mn0 = c
        args = (theta, a_nodes, a_mids, doses, r)
        nxt, r_end, mx, mn = jax.lax.cond(
            it % 2 == 0, lambda a: newton_all(*a), lambda a: plain_all(*a), args
        )
        conv = jnp.all(jnp.abs(r_end - r) <= tol * jnp.maximum(jnp.abs(r_end), 1e-8), axis=-1)
        # a non-finite pass will not recover: stop it now (its status says NONFINITE below)
        conv = conv | ~(jnp.all(jnp.isfinite(r_end), axis=-1) & jnp.isfinite(mx) & jnp.isfinite(mn))
        keep = done[..., None]
        r_new = jnp.where(keep | conv[..., None], r, nxt)
        return (r_new, it + 1, done | conv, jnp.where(done, mx0, mx), jnp.where(done, mn0, mn))

    r0 = jax.vmap(lambda th: model.init(th)[n_pk:])(theta)
    r0 = jnp.broadcast_to(r0[:, None, :], (S, D, m))
    nan = jnp.full((S, D), jnp.nan, dtype)
    init = (r0, jnp.zeros((), jnp.int32), jnp.zeros((S, D), bool), nan, nan)
    r, _, done, mx, mn = jax.lax.while_loop(cond, body, init)
    finite = jnp.isfinite(mx) & jnp.isfinite(mn) & jnp.all(jnp.isfinite(r), axis=-1)
    status = jnp.where(~finite, NONFINITE, jnp.where(done, SUCCESS, NOT_STEADY)).astype(jnp.int32)
    stiff = jax.vmap(jax.vmap(stiffness, in_axes=(None, None, 0, 0)))(
        theta, a_nodes, doses[None, :].repeat(S, 0), r
    )
    return mx, mn, status, stiff


def _unit_concentrations(model: PKPDModel, theta, grid: IntervalGrid):
    """Steady-state concentrations for 1 mg per interval at the grid nodes and mid-points."""
    a_nodes, a_mids = unit_pk_steady_state(model, theta, grid)
    pk, _ = model.split_params(theta)
    conc = jax.vmap(lambda a: model.pk.concentration(a, pk))
    return conc(a_nodes), conc(a_mids)


# grids are static numpy data: keep them out of the jit signature behind a hashable key
_GRIDS: dict[tuple, IntervalGrid] = {}


def _grid_key(grid: IntervalGrid) -> tuple:
    key = (grid.tau, grid.duration, grid.n_infusion, tuple(np.round(grid.nodes, 12).tolist()))
    _GRIDS.setdefault(key, grid)
    return key


# ---------------------------------------------------------------------------- generic path
def _generic_one(model, tau, duration, ts, tol, max_intervals, config):
    reg = Regimen.make([0.0], [1.0], [duration])

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


def _shard_rows(x, n_dev):
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    mesh = Mesh(np.asarray(jax.devices()[:n_dev]), ("subjects",))
    return jax.device_put(x, NamedSharding(mesh, PartitionSpec("subjects")))


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
    - `throw`: raise [`SimulationError`][pkpd_jax.simulate.SimulationError] (naming the subject
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
    bar, task = _start_bar(progress, n, f"steady state: {n} subjects × {n_d} doses")
    callback = progress if callable(progress) else None
    try:
        if fast:
            key = _grid_key(grid)
            for lo in range(0, n, size):
                hi = min(lo + size, n)
                chunk = theta[lo:hi]
                if hi - lo < size:
                    chunk = jnp.concatenate([chunk, jnp.repeat(chunk[-1:], size - (hi - lo), axis=0)])
                if n_dev > 1:
                    chunk = _shard_rows(chunk, n_dev)
                mx, mn, st, stiff = _fast_batch(model, key, chunk, doses, tol, max_iter)
                k = hi - lo
                st = np.asarray(st)[:k]
                # a step too large for the PD dynamics: not vouched for (generic path below)
                st = np.where((st == SUCCESS) & (np.asarray(stiff)[:k] > STIFFNESS_LIMIT), MAX_STEPS, st)
                out_max[lo:hi], out_min[lo:hi], out_status[lo:hi] = np.asarray(mx)[:k], np.asarray(mn)[:k], st
                if bar is not None:
                    bar.update(task, completed=hi)
                if callback is not None:
                    callback(hi, n)
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
                    if bar is not None:
                        bar.update(task, completed=min(n, (lo + k) // n_d))
                    if callback is not None:
                        callback(min(n, (lo + k) // n_d), n)
    finally:
        if bar is not None:
            bar.stop()
    if throw and np.any(out_status != SUCCESS):
        bad = np.flatnonzero(np.any(out_status != SUCCESS, axis=1))
        first = out_status[bad, np.argmax(out_status[bad] != SUCCESS, axis=1)]
        raise SimulationError(bad, first)
    return Extremes(
        jnp.asarray(out_max), jnp.asarray(out_min), jnp.asarray(out_status), jnp.asarray(out_path)
    )


def _start_bar(progress, total: int, label: str):
    if progress is not True:
        return None, None
    from rich.progress import Progress

    bar = Progress(transient=True)
    task = bar.add_task(label, total=total)
    bar.start()
    return bar, task


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
            f"{model.name} is not (use pkpd_jax.simulate.simulate_steady_state)."
        )
    theta = jnp.asarray(theta, dtype=float)
    grid = interval_grid(tau, _resolve_duration(model, duration), n_steps, grading=grading)
    out = _profile(model, _grid_key(grid), theta, jnp.asarray(dose, theta.dtype), tol, max_iter)
    t, conc, resp, done = (np.asarray(x) for x in out)
    if not done:
        raise SimulationError(np.array([0]), np.array([NOT_STEADY]))
    return {"time": t, "conc": conc, "resp": resp}


@eqx.filter_jit
def _profile(model, grid_key, theta, dose, tol, max_iter):
    grid = _GRIDS[grid_key]
    observe, one_pass, _, rhs = _fast_fns(model, grid)
    n_pk = model.n_pk_states
    m = model.n_states - n_pk
    a_nodes, a_mids = _unit_concentrations(model, theta, grid)
    eye = jnp.eye(m, dtype=theta.dtype)

    def cond(c):
        _, it, done = c
        return (~done) & (it < max_iter)

    def body(c):
        r, it, _ = c
        J, (r_end, _, _) = jax.jacfwd(lambda x: one_pass(theta, a_nodes, a_mids, dose, x), has_aux=True)(r)
        done = jnp.all(jnp.abs(r_end - r) <= tol * jnp.maximum(jnp.abs(r_end), 1e-8))
        return jnp.where(done, r, r - jnp.linalg.solve(J - eye, r_end - r)), it + 1, done

    r = model.init(theta)[n_pk:]
    done = jnp.array(True)
    if m:
        r, _, done = jax.lax.while_loop(cond, body, (r, 0, jnp.array(False)))

    # record the states along the interval from the fixed point
    t_n = jnp.asarray(grid.nodes, theta.dtype)
    h = t_n[1:] - t_n[:-1]
    f = rhs(theta, dose)

    def step(x, k):
        t, hk = t_n[k], h[k]
        k1 = f(t, a_nodes[k], x)
        k2 = f(t + hk / 2, a_mids[k], x + hk / 2 * k1)
        k3 = f(t + hk / 2, a_mids[k], x + hk / 2 * k2)
        k4 = f(t + hk, a_nodes[k + 1], x + hk * k3)
        x1 = x + hk / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
        return x1, x1

    _, rs = jax.lax.scan(step, r, jnp.arange(h.shape[0]))
    rs = jnp.concatenate([r[None], rs])
    resp = jax.vmap(lambda c, x: observe(theta, c, x, dose))(a_nodes, rs)
    return t_n, dose * a_nodes, resp, done
