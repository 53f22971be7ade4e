"""Individual predictions of the population likelihood: one subject's concentrations and
responses at its observation times, with their Jacobian in the parameters.

For a nonlinear model with an explicit Runge-Kutta solver (the default Tsit5) and
``method="auto"``, the predictions come from ``pkpd_jax.solve.solve_erk`` (one adaptive loop per
subject over the whole horizon, steps landing on every observation and dose event; all subjects,
and all chains under ``vmap``, in one batched loop); ``gradient="forward"`` wraps it in a
`jax.custom_vjp` whose forward pass integrates the forward sensitivities ∂y/∂θ along the same
steps, so the reverse pass is a cheap ``Jᵀ·g``. Linear models (exact matrix exponential) and
``method="ode"`` use the simulator with diffrax's forward-mode Jacobians. The population fit and
the digital twin both predict through this module, with [`DEFAULT_CONFIG`][].
"""

from __future__ import annotations

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp

from ..dosing import Regimen
from ..models.coupling import PKPDModel
from ..solve import SolverConfig, erk_supported, simulate, solve_erk


#: Solver settings of the population log-density: Tsit5, rtol 1e-4, atol 1e-7 (the simulator
#: keeps 1e-6 / 1e-9). What distorts a posterior is the error of the log-density *where the
#: posterior is*, and how much it varies there (a constant offset does not matter). Measured on
#: the bundled example study (800 observations, 5-15 % residual error) against ``method="ode"``
#: at rtol 1e-10, at the MAP and at 18 draws from its Laplace approximation (1 and 2 posterior
#: SDs out): |Δ log p| ≤ 0.013, its variation between those points ≤ 0.019 (a density
#: reweighting of ≤ 2 %, inside Monte-Carlo error), gradient ≤ 4e-4 of its largest component.
#: rtol 3e-5 gives 0.006 and rtol 1e-5 (the previous default) 0.003, for 15 % and 33 % more
#: solver steps (the population fit's cost is proportional to them). Far from the posterior
#: (e.g. every coordinate of the MAP moved by 0.1, tens of posterior SDs for a typical
#: clearance) the error grows to ~0.5, which only the first warm-up iterations see. Pass
#: ``config=SolverConfig(rtol=1e-6, atol=1e-9)`` (or tighter) for more digits. ``max_steps``
#: bounds the attempted steps per subject over the whole horizon with the one-loop integrator
#: (per interval with ``method="ode"``).
DEFAULT_CONFIG = SolverConfig(rtol=1e-4, atol=1e-7)


def regimen_arrays(regimen: Regimen):
    """``(time, amount, duration, cmt as float)``: the dose arrays the predictors take."""
    return (regimen.time, regimen.amount, regimen.duration, regimen.cmt.astype(float))


def uses_one_loop(model: PKPDModel, config: SolverConfig, gradient: str) -> bool:
    """Whether the likelihood integrates with the one-loop explicit Runge-Kutta path."""
    return gradient == "forward" and config.method == "auto" and erk_supported(model, config)


def individual_predictor(model: PKPDModel, config: SolverConfig = DEFAULT_CONFIG, gradient: str = "forward"):
    """``predict(theta (P,), ts (M,), dose_time, dose_amount, dose_duration, dose_cmt) ->
    (pred (2, M) = [conc, resp], ok)`` for one subject; ``ok`` is a float 1/0 (no gradient).

    The individual predictions of the population likelihood (see the module docstring);
    reverse-mode differentiable (a custom VJP over forward sensitivities with
    ``gradient="forward"``), not forward-mode: use [`jacobian_predictor`][] for ``∂pred/∂θ``."""
    if gradient not in ("forward", "reverse"):
        raise ValueError(f"`gradient` must be 'forward' or 'reverse'; got {gradient!r}")
    if uses_one_loop(model, config, gradient):
        return _make_erk_predictor(model, config)

    def make(cfg):
        def predict(theta, ts, dt, da, dd, dc):
            reg = Regimen(dt, da, dd, dc.astype(jnp.int32))
            finite = jnp.all(jnp.isfinite(theta))
            # Non-finite parameters would make the adaptive solver run to max_steps: swap in a
            # harmless value and flag the subject as failed instead.
            theta_safe = jnp.where(finite, theta, jnp.ones_like(theta) * 0.5)
            sol = simulate(model, theta_safe, reg, ts, config=cfg)
            pred = jnp.stack([sol.conc, sol.resp])
            ok = finite & (sol.status == 0) & jnp.all(jnp.isfinite(pred))
            return pred, ok.astype(theta.dtype)

        return predict

    if gradient == "reverse":
        return make(config)
    predict_fwd = make(eqx.tree_at(lambda c: c.adjoint, config, dfx.ForwardMode()))

    @jax.custom_vjp
    def predict(theta, *data):
        return predict_fwd(theta, *data)

    def fwd(theta, *data):
        def f(th):
            pred, ok = predict_fwd(th, *data)
            return pred, (pred, ok)

        jac, (pred, ok) = jax.jacfwd(f, has_aux=True)(theta)
        jac = jnp.where(jnp.isfinite(jac), jac, 0.0)
        return (pred, ok), (jac, data)

    predict.defvjp(fwd, _predict_bwd)
    return predict


def _predict_bwd(res, g):
    jac, data = res
    g_pred, _ = g
    g_pred = jnp.where(jnp.isfinite(g_pred), g_pred, 0.0)
    return (jnp.einsum("tmp,tm->p", jac, g_pred), *(jnp.zeros_like(d) for d in data))


def _make_erk_predictor(model: PKPDModel, config: SolverConfig, jacobian: bool = False):
    """The predictor on `pkpd_jax.solve.solve_erk`: one adaptive loop per subject (all
    subjects, and all chains under `vmap`, in one batched loop), with the forward sensitivities
    ∂y/∂θ integrated alongside in the custom VJP's forward pass; the value alone skips them."""

    def observe(y, th):
        return jnp.stack(model.observe(y, th))

    def run(theta, ts, dt, da, dd, dc, sens):
        reg = Regimen(dt, da, dd, dc.astype(jnp.int32))
        finite = jnp.all(jnp.isfinite(theta))
        # non-finite parameters would stall the adaptive solver: simulate a harmless value and
        # flag the subject as failed instead
        theta_safe = jnp.where(finite, theta, jnp.ones_like(theta) * 0.5)
        states, dstates, status, _ = solve_erk(model, theta_safe, reg, ts, config, sens)
        # (the prediction is computed by the same code with and without sensitivities: under
        # `vmap` + `lax.map`, a custom VJP whose forward pass lays out its output differently
        # from the primal function was measured to return mis-batched predictions)
        pred = jax.vmap(observe, in_axes=(0, None))(states, theta_safe).T  # (2, M)
        jac = None
        if sens:
            eye = jnp.eye(theta.shape[0], dtype=theta.dtype)

            def d_observe(y, S):  # y (n,), S (n, P) -> (2, P)
                _, lin = jax.linearize(observe, y, theta_safe)
                return jax.vmap(lin, in_axes=(1, 0), out_axes=1)(S, eye)

            jac = jnp.swapaxes(jax.vmap(d_observe)(states, dstates), 0, 1)  # (2, M, P)
        ok = finite & (status == 0) & jnp.all(jnp.isfinite(pred))
        return pred, ok.astype(theta.dtype), jac

    if jacobian:

        def predict_jac(theta, *data):
            pred, ok, jac = run(theta, *data, sens=True)
            return pred, ok, jnp.where(jnp.isfinite(jac), jac, 0.0)

        return predict_jac

    @jax.custom_vjp
    def predict(theta, *data):
        pred, ok, _ = run(theta, *data, sens=False)
        return pred, ok

    def fwd(theta, *data):
        pred, ok, jac = run(theta, *data, sens=True)
        jac = jnp.where(jnp.isfinite(jac), jac, 0.0)
        return (pred, ok), (jac, data)

    predict.defvjp(fwd, _predict_bwd)
    return predict


def jacobian_predictor(model: PKPDModel, config: SolverConfig = DEFAULT_CONFIG):
    """``predict(theta (P,), ts (M,), dose_time, dose_amount, dose_duration, dose_cmt) ->
    (pred (2, M), ok, jac (2, M, P))``: the predictions of [`individual_predictor`][] (same
    integrator and steps) with their Jacobian ``∂pred/∂θ`` (forward sensitivities on the
    one-loop path, forward-mode differentiation of the simulator otherwise). Non-finite
    Jacobian entries (a failed subject) are 0. Forward-mode differentiable (``jax.jvp`` /
    ``jacfwd``), e.g. for an exact Hessian."""
    if uses_one_loop(model, config, "forward"):
        return _make_erk_predictor(model, config, jacobian=True)
    fwd_cfg = eqx.tree_at(lambda c: c.adjoint, config, dfx.ForwardMode())
    predict_fwd = individual_predictor(model, fwd_cfg, "reverse")

    def predict(theta, *data):
        def f(th):
            pred, ok = predict_fwd(th, *data)
            return pred, (pred, ok)

        jac, (pred, ok) = jax.jacfwd(f, has_aux=True)(theta)
        return pred, ok, jnp.where(jnp.isfinite(jac), jac, 0.0)

    return predict
