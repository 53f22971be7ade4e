"""The one-loop explicit Runge-Kutta engine with forward sensitivities (``method="erk"``; the
engine of the population log-density and of the corpus).

The ode engine restarts `diffeqsolve` at every grid point, and under `vmap` a `lax.scan` of
`while_loop`s runs each grid interval for as many steps as the slowest subject needs *in that
interval* (sum over intervals of the max over subjects); every restart also re-selects an
initial step. Forward-mode Jacobians through it carry P tangents through diffrax's whole step
machinery. For a likelihood evaluated thousands of times this dominates (see
benchmarks/bench_likelihood.py). `solve_erk` instead runs *one* adaptive loop per subject over
the whole horizon with the same explicit Runge-Kutta tableau (taken from the diffrax solver),
the same error norm (RMS of err / (atol + rtol·max(|y0|, |y1|))) and an I-controller. Steps are
clipped to land exactly on every observation and dose event. Across an observation the step
size carries over; after a dose event a fresh initial step is selected, as a restarted
`diffeqsolve` would (carrying it over there was measured 10-100x less accurate: a saturable
effect switching on as an infusion starts is a fast transient that the embedded error estimate
underrates by 10x over a long first step). Optionally the forward sensitivities
S = ∂y/∂θ are integrated by the same steps (the exact derivative of the discrete scheme for the
chosen steps: each stage is differentiated with `jax.linearize`; the error control looks at
the states only, as for the value, so value and gradient share one discretisation).

Batching: the loop is written for a batch of subjects (`vmap` *inside* the body, one
unbatched `any(active)` loop condition), and `jax.custom_batching.custom_vmap` folds any outer
`vmap` (over subjects, or over chains on top of that) into that batch. A `vmap` of a
`while_loop` would instead select every carry (the observation buffers included) on every
iteration. Finished subjects idle until the last one is done.

With a lag time the dose events move with θ: at each one the sensitivities jump by
(f_before − f_after)·∂τ/∂tlag (the classical jump condition for a state-independent event time).

Limits (callers fall back to the ode engine): explicit RK solvers with an error estimate only
(Tsit5, Dopri5, Bosh3, ...), the baseline initial state; `max_steps` bounds the *total* number of
attempted steps of a subject (not the steps per segment).
"""

from __future__ import annotations

import diffrax as dfx
import jax
import jax.numpy as jnp
import numpy as np

from ..dosing import Regimen, event_grid, inverse_permutation, stable_argsort
from ..models.coupling import PKPDModel
from ._config import MAX_STEPS, NONFINITE, SOLVER_FAILURE, SUCCESS, SolverConfig
from ._expm import use_expm
from ._ode import vector_field


def erk_tableau(solver):
    """``(ButcherTableau, error_order)`` of an explicit diffrax Runge-Kutta solver with an
    embedded error estimate, else None."""
    if not isinstance(solver, dfx.AbstractERK):
        return None
    tab = getattr(solver, "tableau", None)
    if tab is None or tab.implicit or not np.any(np.asarray(tab.b_error)):
        return None
    order = solver.error_order(dfx.ODETerm(vector_field))
    if order is None:
        return None
    return tab, float(order)


def erk_supported(model: PKPDModel, cfg: SolverConfig) -> bool:
    """Whether [`solve_erk`][] handles this model and configuration: an explicit Runge-Kutta
    solver with an embedded error estimate, and a method that does not select the exact engine
    (``"expm"``, or ``"auto"`` on a linear model). Otherwise use `simulate`."""
    return cfg.method != "expm" and not use_expm(model, cfg) and erk_tableau(cfg.solver) is not None


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
    tab, error_order = erk_tableau(cfg.solver)
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


def solve_erk(
    model: PKPDModel, theta, regimen: Regimen, ts, cfg: SolverConfig, sensitivities: bool = False
):
    """The one-loop explicit Runge-Kutta engine for one subject (any outer `vmap`s fold into one
    batched loop, see the module docstring).

    **Arguments:** `model`, `theta`, `regimen` (one subject's doses), `ts` (observation times,
    any order), `cfg` (a [`SolverConfig`][] whose solver is explicit with an error estimate and
    whose method is not ``"expm"``; see [`erk_supported`][]), `sensitivities` (also integrate
    ∂y/∂θ).

    **Returns:** ``(states (M, n), dstates (M, n, P) or None, status, n_steps)``: the states at
    `ts` from the baseline state (observations at a dose time are pre-dose), their derivatives
    with respect to `theta` when `sensitivities`, the status code and the number of attempted
    steps. Not differentiable itself (use the sensitivities). `simulate(...,
    config=SolverConfig(method="erk"))` wraps it with concentrations and responses.
    """
    if not erk_supported(model, cfg):
        raise ValueError(
            f"solve_erk does not handle {model.name} with solver {type(cfg.solver).__name__} and "
            f"method={cfg.method!r}: it needs an explicit Runge-Kutta solver with an error "
            "estimate (Tsit5, Dopri5, Bosh3, ...) and a method other than 'expm' (and not 'auto' "
            "on a linear model); use `simulate` for the others."
        )
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
