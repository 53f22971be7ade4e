"""The periodic steady state of a repeated dosing interval, for a model whose PK is linear.

The steady-state engine behind the in-silico trials (`pkpd_jax.trials.exposure` dispatches here
where [`fast_path_applies`][] and to [`simulate_steady_state`][pkpd_jax.solve.simulate_steady_state]
otherwise). One dose per interval ``[0, tau]``, given at its start into the model's dose
compartment (a bolus or an infusion), is encoded by the one event encoding
(`pkpd_jax.dosing.event_grid` of a 1 mg [`unit_dose_regimen`][]):

- **PK exactly**: the interval map of a linear system is ``A ↦ M·A + c`` with ``[M c] = expm`` of
  the augmented generator (`PKPDModel.pk_generator`,
  [`affine_propagator`][pkpd_jax.solve.linalg.affine_propagator]), so ``A_ss = (I − M)⁻¹·c``;
  linear PK scales with the dose, so the PK part of every dose is ``dose × unit profile``
  ([`unit_pk_steady_state`][]).
- **PD simulated**: the PD states are integrated by one fixed-step classical Runge-Kutta 4
  routine on the static grid of [`interval_grid`][] (its PK inputs at the nodes and mid-points
  exact), and their periodic solution is the fixed point of the PD interval map ``r ↦ r(tau)``,
  found by Newton's method on that map (its Jacobian by forward-mode differentiation through
  the integration; 2 passes for a response linear in its state, a few more otherwise).

[`periodic_extremes`][] gives the response's extremes over the interval for subjects × doses
(with a status from `pkpd_jax.solve.Status`, and a stiffness measure: the fixed step is not
vouched for where ``‖J_PD‖·h > STIFFNESS_LIMIT``); [`periodic_profile`][] one subject's
interval. The extremes are taken on the grid nodes (``n_steps + 1`` points, the infusion end one
of them).

One concept (the periodic fast path: grid, exact unit-dose PK, RK4 pass, Newton), kept in one
file.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Bool, Float, Int

from ..dosing import Regimen, event_grid
from ._config import MAX_STEPS, NONFINITE, NOT_STEADY, SUCCESS
from .linalg import affine_propagator


if TYPE_CHECKING:
    from ..models.coupling import PKPDModel


__all__ = [
    "STIFFNESS_LIMIT",
    "IntervalGrid",
    "fast_path_applies",
    "interval_grid",
    "periodic_extremes",
    "periodic_profile",
    "unit_dose_regimen",
    "unit_pk_steady_state",
]

#: RK4 is accurate (and far from its stability limit, |h·λ| ≈ 2.8) while ‖J‖·h stays below this.
STIFFNESS_LIMIT = 0.5


# ---------------------------------------------------------------------------- the interval
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

    **Arguments:** `tau` (dosing interval, h), `duration` (infusion length, h; 0 = bolus),
    `n_steps` (>= 4), `grading` (>= 1).

    **Returns:** an [`IntervalGrid`][].
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
    """Whether the periodic engine handles `model` (linear PK, no lag time, a PD model)."""
    return model.pk.linear and model.pk.lag is None and model.pd is not None


def unit_dose_regimen(duration: float) -> Regimen:
    """The dose of one interval: 1 mg at time 0 into the model's dose compartment, over
    `duration` h (0: the model's default infusion duration; a bolus where it has none)."""
    return Regimen.make([0.0], [1.0], [float(duration)])


# grids are static numpy data: keep them out of the jit signature behind a hashable key
_GRIDS: dict[tuple, IntervalGrid] = {}


def _grid_key(grid: IntervalGrid) -> tuple:
    key = (grid.tau, grid.duration, grid.n_infusion, tuple(np.round(grid.nodes, 12).tolist()))
    _GRIDS.setdefault(key, grid)
    return key


# ---------------------------------------------------------------------------- exact unit-dose PK
def _unit_dose_input(model: PKPDModel, theta, grid: IntervalGrid):
    """(bolus, infusion rate) of the PK states for the interval's 1 mg dose, from the one event
    encoding."""
    d_model = grid.duration if grid.duration > 0 else float(model.pk.default_duration)
    if d_model != grid.duration:
        raise ValueError(
            f"the grid is for a bolus (duration 0) but {model.name} doses by a {d_model:g} h "
            f"infusion; build the grid with `interval_grid(tau, duration={d_model:g})`."
        )
    dtype = theta.dtype
    _, kicks, rates = event_grid(
        model, theta, unit_dose_regimen(grid.duration), jnp.zeros((), dtype), jnp.asarray(grid.tau, dtype)
    )
    n = model.n_pk_states
    # one dose at t = 0: every bolus is given at a segment starting there, and the infusion's
    # rate is the only input rate of the interval
    return jnp.sum(kicks, axis=0)[:n], jnp.max(rates, axis=0)[:n]


def unit_pk_steady_state(
    model: PKPDModel, theta: Float[ArrayLike, " params"], grid: IntervalGrid
) -> tuple[Float[Array, "nodes pk"], Float[Array, "steps pk"]]:
    """PK amounts at steady state for 1 mg per interval: at the grid nodes and step mid-points.

    Exact for a linear PK model (matrix exponentials of `model.pk_generator(theta)`). At node 0
    the amounts are post-dose (a bolus already given); the state at `tau` is the pre-dose one.

    **Arguments:** `model` (linear PK, no lag time), `theta` (its parameters), `grid` (from
    [`interval_grid`][], with the model's infusion duration).

    **Returns:** ``(at_nodes, at_midpoints)``: ``(n_steps + 1, pk states)`` and ``(n_steps, pk
    states)`` amounts in mg.
    """
    theta = jnp.asarray(theta)
    dtype = theta.dtype
    K = model.pk_generator(theta)
    n = K.shape[0]
    kick, rate = _unit_dose_input(model, theta, grid)
    d = grid.duration
    # Half-step propagators are needed only for the distinct (step, infusing) pairs of the static
    # grid (the uniform part shares one): a dozen exponentials per subject instead of one per step.
    h_np = np.diff(grid.nodes)
    infusing = np.arange(grid.n_steps) < grid.n_infusion
    pairs, which = np.unique(np.stack([np.round(h_np, 12), infusing]), axis=1, return_inverse=True)
    u = jnp.where(jnp.asarray(pairs[1] > 0)[:, None], rate[None, :], 0.0)
    # every matrix exponential in one batched call: the two pieces of the interval (infusion,
    # rest) and the distinct half steps of the grid
    gens = jnp.concatenate([jnp.stack([rate, jnp.zeros_like(rate)]), u])
    dts = jnp.concatenate([jnp.asarray([d, grid.tau - d], dtype), jnp.asarray(pairs[0] / 2, dtype)])
    Es = jax.vmap(lambda uk, hk: affine_propagator(K, uk, hk))(gens, dts)
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


def _unit_concentrations(model: PKPDModel, theta, grid: IntervalGrid):
    """Steady-state concentrations for 1 mg per interval at the grid nodes and mid-points."""
    a_nodes, a_mids = unit_pk_steady_state(model, theta, grid)
    pk, _ = model.split_params(theta)
    conc = jax.vmap(lambda a: model.pk.concentration(a, pk))
    return conc(a_nodes), conc(a_mids)


# ---------------------------------------------------------------------------- PD: RK4 and Newton
def _pd_fns(model: PKPDModel, theta, dose):
    """The PD right-hand side and observation for one subject and dose.

    The PD part is driven by the plasma concentration alone (`PKPDModel.vector_field` passes
    C = A_central / V to the PD model), so they take unit-dose concentrations, not the PK
    amounts: C(dose) = dose · C(1 mg) for linear PK.
    """
    _, pd = model.split_params(theta)

    def f(t, c, r):
        return model.pd.vector_field(t, r, pd, dose * c)

    def observe(c, r):
        return model.pd.response(r, pd, dose * c)

    return f, observe


def _rk4_pass(f, observe, t_nodes, c_nodes, c_mids, r0, *, record: bool = False):
    """The one fixed-step classical RK4 pass over the interval grid.

    **Returns:** ``(r(tau), max, min, states)``: the PD state at `tau`, the response's extremes
    over the nodes, and (`record`) the states at the nodes after node 0, else None.
    """
    h = t_nodes[1:] - t_nodes[:-1]

    def body(carry, k):
        r, mx, mn = carry
        t, hk = t_nodes[k], h[k]
        k1 = f(t, c_nodes[k], r)
        k2 = f(t + hk / 2, c_mids[k], r + hk / 2 * k1)
        k3 = f(t + hk / 2, c_mids[k], r + hk / 2 * k2)
        k4 = f(t + hk, c_nodes[k + 1], r + hk * k3)
        r1 = r + hk / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
        v = observe(c_nodes[k + 1], r1)
        return (r1, jnp.maximum(mx, v), jnp.minimum(mn, v)), (r1 if record else None)

    v0 = observe(c_nodes[0], r0)
    (r_end, mx, mn), states = jax.lax.scan(body, (r0, v0, v0), jnp.arange(h.shape[0]))
    return r_end, mx, mn, states


def _stiffness(f, t_nodes, h_max, n_infusion, c_nodes, r):
    """max ‖J_PD‖∞·h at the trough, the infusion end and the peak concentration."""
    worst = jnp.zeros((), r.dtype)
    for k in (0, n_infusion, c_nodes.shape[0] - 1, jnp.argmax(c_nodes)):
        Jk = jax.jacfwd(lambda rr, k=k: f(t_nodes[k], c_nodes[k], rr))(r)
        worst = jnp.maximum(worst, jnp.max(jnp.sum(jnp.abs(Jk), axis=1)))
    return worst * h_max


def periodic_extremes(
    model: PKPDModel,
    theta: Float[ArrayLike, "subjects params"],
    grid: IntervalGrid,
    doses: Float[ArrayLike, " doses"],
    *,
    tol: float = 1e-8,
    max_iter: int = 30,
) -> tuple[
    Float[Array, "subjects doses"],
    Float[Array, "subjects doses"],
    Int[Array, "subjects doses"],
    Float[Array, "subjects doses"],
]:
    """The response's max and min over one steady-state interval, for subjects × doses.

    **Arguments:**

    - `model`: a model for which [`fast_path_applies`][].
    - `theta`: ``(subjects, params)`` individual parameters; `doses`: ``(doses,)`` amounts in mg.
    - `grid`: the interval and its RK4 nodes ([`interval_grid`][], with the model's infusion
      duration); the extremes are taken on its nodes.
    - `tol`, `max_iter`: the fixed point's relative tolerance on the PD state and the
      iteration cap (Newton steps alternating with plain passes that check convergence).

    **Returns:** ``(max_resp, min_resp, status, stiffness)``, each ``(subjects, doses)``.
    `status` is a `pkpd_jax.solve.Status` code: ``SUCCESS``, ``NONFINITE``, ``NOT_STEADY`` (no
    convergence in `max_iter` passes) or ``MAX_STEPS`` (``stiffness > STIFFNESS_LIMIT``: the
    fixed step is too large for the PD dynamics; recompute with an adaptive solver);
    `stiffness` is ``‖J_PD‖∞·h`` at the fixed point (0 for a direct response).
    """
    if not fast_path_applies(model):
        raise ValueError(
            f"the periodic engine needs linear PK without a lag time and a PD model; {model.name} "
            "is not (use pkpd_jax.solve.simulate_steady_state)."
        )
    theta = jnp.asarray(theta, dtype=float)
    doses = jnp.asarray(doses, dtype=theta.dtype).reshape(-1)
    return _periodic_batch(model, _grid_key(grid), theta, doses, float(tol), int(max_iter))


@eqx.filter_jit
def _periodic_batch(model, grid_key, theta, doses, tol, max_iter):
    """The fixed-point loop is written for the whole batch (`vmap` inside the body, one unbatched
    loop condition): a `vmap` of a per-element `while_loop` would turn the pass counter into a
    batched value and run both branches of the Newton/plain alternation on every iteration.
    """
    grid = _GRIDS[grid_key]
    n_pk = model.n_pk_states
    m = model.n_states - n_pk
    dtype = theta.dtype
    t_nodes = jnp.asarray(grid.nodes, dtype)
    a_nodes, a_mids = jax.vmap(lambda th: _unit_concentrations(model, th, grid))(theta)
    per_dose = lambda f: jax.vmap(f, in_axes=(None, None, None, 0, 0))  # noqa: E731
    per_subject = lambda f: jax.vmap(per_dose(f), in_axes=(0, 0, 0, None, 0))  # noqa: E731
    S, D = theta.shape[0], doses.shape[0]

    if m == 0:  # a direct model: the response follows the concentration, no state to settle

        def direct(th, an, am, dose, _):
            _, observe = _pd_fns(model, th, dose)
            v = jax.vmap(lambda a: observe(a, jnp.zeros(0, dtype)))(an)
            return jnp.max(v), jnp.min(v)

        mx, mn = per_subject(direct)(theta, a_nodes, a_mids, doses, jnp.zeros((S, D, 0), dtype))
        ok = jnp.isfinite(mx) & jnp.isfinite(mn)
        return mx, mn, jnp.where(ok, SUCCESS, NONFINITE).astype(jnp.int32), jnp.zeros((S, D), dtype)

    eye = jnp.eye(m, dtype=dtype)

    def one_pass(th, an, am, dose, r0):
        """``r0 -> (r(tau), (r(tau), max, min))``."""
        f, observe = _pd_fns(model, th, dose)
        r_end, mx, mn, _ = _rk4_pass(f, observe, t_nodes, an, am, r0)
        return r_end, (r_end, mx, mn)

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
    h_max = float(np.diff(grid.nodes).max())

    def stiffness(th, an, dose, rr):
        f, _ = _pd_fns(model, th, dose)
        return _stiffness(f, t_nodes, h_max, grid.n_infusion, an, rr)

    stiff = jax.vmap(jax.vmap(stiffness, in_axes=(None, None, 0, 0)))(
        theta, a_nodes, doses[None, :].repeat(S, 0), r
    )
    # a step too large for the PD dynamics: not vouched for
    status = jnp.where((status == SUCCESS) & (stiff > STIFFNESS_LIMIT), MAX_STEPS, status)
    return mx, mn, status.astype(jnp.int32), stiff


def periodic_profile(
    model: PKPDModel,
    theta: Float[ArrayLike, " params"],
    grid: IntervalGrid,
    dose: float,
    *,
    tol: float = 1e-10,
    max_iter: int = 30,
) -> tuple[Float[Array, " nodes"], Float[Array, " nodes"], Float[Array, " nodes"], Bool[Array, ""]]:
    """One subject's steady-state interval on the grid nodes (Newton steps to the PD fixed point,
    then one recorded RK4 pass from it).

    **Arguments:** `model` (a model for which [`fast_path_applies`][]), `theta` (its
    parameters), `grid` ([`interval_grid`][]), `dose` (mg), `tol` and `max_iter` (the fixed
    point's relative tolerance and Newton iterations).

    **Returns:** ``(time, conc, resp, converged)``: the nodes, the concentration and the response
    there, and whether the fixed point converged.
    """
    if not fast_path_applies(model):
        raise ValueError(
            f"the periodic engine needs linear PK without a lag time and a PD model; {model.name} "
            "is not (use pkpd_jax.solve.simulate_steady_state)."
        )
    theta = jnp.asarray(theta, dtype=float)
    dose = jnp.asarray(dose, theta.dtype)
    return _periodic_profile(model, _grid_key(grid), theta, dose, float(tol), int(max_iter))


@eqx.filter_jit
def _periodic_profile(model, grid_key, theta, dose, tol, max_iter):
    grid = _GRIDS[grid_key]
    n_pk = model.n_pk_states
    m = model.n_states - n_pk
    a_nodes, a_mids = _unit_concentrations(model, theta, grid)
    t_n = jnp.asarray(grid.nodes, theta.dtype)
    f, observe = _pd_fns(model, theta, dose)
    eye = jnp.eye(m, dtype=theta.dtype)

    def one_pass(x):
        r_end, _, _, _ = _rk4_pass(f, observe, t_n, a_nodes, a_mids, x)
        return r_end, r_end

    def cond(c):
        _, it, done = c
        return (~done) & (it < max_iter)

    def body(c):
        r, it, _ = c
        J, r_end = jax.jacfwd(one_pass, has_aux=True)(r)
        done = jnp.all(jnp.abs(r_end - r) <= tol * jnp.maximum(jnp.abs(r_end), 1e-8))
        return jnp.where(done, r, r - jnp.linalg.solve(J - eye, r_end - r)), it + 1, done

    r = model.init(theta)[n_pk:]
    done = jnp.array(True)
    if m:
        r, _, done = jax.lax.while_loop(cond, body, (r, 0, jnp.array(False)))

    # record the states along the interval from the fixed point
    _, _, _, rs = _rk4_pass(f, observe, t_n, a_nodes, a_mids, r, record=True)
    rs = jnp.concatenate([r[None], rs])
    resp = jax.vmap(observe)(a_nodes, rs)
    return t_n, dose * a_nodes, resp, done
