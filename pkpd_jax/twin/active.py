"""Active sampling: the next sampling time that tells most about the patient's clearance.

**Criterion.** Under the twin's Laplace posterior of draw ``k``, ``η ~ N(η̂_k, Σ_k)``, the quantity
of interest is a linear functional ``q = cᵀη`` (plus constants): for the individual clearance
``log CL = u_k + ω_CL,k·η_CL``, so ``c = ω_CL,k·e_CL`` and ``Var(log CL) = cᵀΣ_k c``; for the
predicted steady-state biomarker maximum ``q(η)``, ``c = ∇_η q`` at ``η̂_k`` (central
differences of the steady-state computation). One more observation at time ``t`` with
prediction ``f(t; η)`` and residual variance ``v(f) = (σ_prop·f)² + σ_add²`` adds the expected
(Fisher) information ``w(t)·j(t)j(t)ᵀ`` with ``j(t) = ∂f(t)/∂η`` and
``w = 1/v + 2σ_prop⁴f²/v²`` (the information of a normal observation about its mean when the
variance depends on the mean). The linearised (Laplace) update of the posterior covariance is
the rank-one Sherman-Morrison update of ``(Σ_k⁻¹ + w·jjᵀ)⁻¹``, so the expected posterior
variance of ``q`` after sampling at ``t`` is

    Var_k(q | t) = cᵀΣ_k c − w·(cᵀΣ_k j)² / (1 + w·jᵀΣ_k j),

and over the mixture ``Σ_k w_k Var_k(q | t)`` plus the (unchanged) spread of the component
means. The next sampling time maximises the expected reduction of that variance (equivalently
the expected information ``½ log(Var before / Var after)``, Bayesian D/c-optimal sequential
design: Chaloner & Verdinelli 1995, Statist. Sci. 10:273-304; for PK sampling, D'Argenio 1981,
J. Pharmacokinet. Biopharm. 9:739-756).

**Sensitivities.** ``j(t)`` for every candidate time comes from one pass of the population
likelihood's integrator with forward sensitivities ∂y/∂θ, chained to η
(`pkpd_jax.twin.posterior.predictions_and_sensitivities`). The candidate grid (default: every
`step` h after 'now' within the horizon) is searched exhaustively and the best grid time is
refined on a 10x finer local grid.
"""

from __future__ import annotations

from functools import lru_cache

import jax
import jax.numpy as jnp
import numpy as np

from ..dosing import Regimen
from ..population import fisher_weight
from ..solve import SolverConfig
from .posterior import (
    TWIN_CONFIG,
    PatientArrays,
    TwinError,
    TwinPopulation,
    TwinPosterior,
    predictions_and_sensitivities,
)


__all__ = [
    "sensitivities",
    "expected_variance",
    "next_sample_time",
    "target_direction",
    "planned_regimen",
]


@lru_cache(maxsize=8)
def _sens_fn(pop_key, model, bsv_index, config):
    bsv_index = np.asarray(bsv_index)

    def one(eta, u, om, data):
        return predictions_and_sensitivities(model, bsv_index, u, om, eta, data, config)

    # draws share the candidate times; outer vmap over patients
    inner = jax.vmap(one, in_axes=(0, 0, 0, None))
    return jax.jit(jax.vmap(inner, in_axes=(0, 0, 0, 0)))


def _candidate_arrays(regimen: Regimen, times, dvid: int) -> PatientArrays:
    t = jnp.asarray(times, float)
    one = jnp.ones(t.shape, bool)
    return PatientArrays(
        regimen, t, jnp.zeros(t.shape), jnp.full(t.shape, dvid, jnp.int32), one, ~one, jnp.zeros(t.shape)
    )


def sensitivities(
    posts: list[TwinPosterior],
    times,
    *,
    dvid: int = 1,
    regimens=None,
    config: SolverConfig = TWIN_CONFIG,
):
    """Predictions ``f (N, K, C)``, sensitivities ``j = ∂f/∂η (N, K, C, B)`` at the MAP of every
    draw, and a solver status ``(N, K)``, for `N` posteriors (one population) at candidate
    `times` ``(C,)`` or ``(N, C)``; `regimens`: the doses to simulate (default each patient's)."""
    pop: TwinPopulation = posts[0].population
    times = np.asarray(times, float)
    times = np.broadcast_to(times, (len(posts), times.shape[-1]))
    regs = [p.patient.regimen for p in posts] if regimens is None else list(regimens)
    size = max(r.n_doses for r in regs)
    regs = [r.pad_to(size) for r in regs]
    reg = jax.tree.map(lambda *x: jnp.stack(x), *regs)
    data = _candidate_arrays(reg, times, dvid)
    fn = _sens_fn((pop.model.name, pop.bsv_params), pop.model, tuple(pop.bsv_index), config)
    eta = jnp.asarray(np.stack([p.eta for p in posts]))
    u = jnp.asarray(np.stack([p.u_typ for p in posts]))
    om = jnp.asarray(np.stack([p.omega for p in posts]))
    f, J, status = fn(eta, u, om, data)
    return np.asarray(f), np.asarray(J), np.asarray(status)


def target_direction(
    post: TwinPosterior,
    target: str = "CL",
    *,
    dose: float | None = None,
    tau: float = 24.0,
    step: float = 1e-4,
) -> tuple[np.ndarray, np.ndarray]:
    """The quantity of interest, linearised at every draw's MAP: ``q ≈ q_k + c_kᵀ(η − η̂_k)``.
    Returns ``(c (K, B), q_k (K,))`` for a parameter name (``log θ``: ``c = ω·e``), or
    ``"ss_biomarker"`` (the steady-state biomarker maximum at `dose` every `tau` h, default the
    patient's last dose; ``c`` by central differences)."""
    pop = post.population
    k, b = post.eta.shape
    if target in pop.model.param_names:
        if target not in pop.bsv_params:
            raise TwinError(f"{target} has no between-subject variability: nothing to learn about it.")
        i = pop.bsv_params.index(target)
        c = np.zeros((k, b))
        c[:, i] = post.omega[:, i]
        j = pop.model.param_names.index(target)
        return c, post.u_typ[:, j] + post.omega[:, i] * post.eta[:, i]
    if target != "ss_biomarker":
        raise TwinError(f"the target must be a model parameter or 'ss_biomarker'; got {target!r}.")
    from ..trials.exposure import steady_state_extremes

    dose = post.patient.last_dose() if dose is None else float(dose)
    eye = np.eye(b) * step
    etas = np.concatenate(
        [post.eta[:, None, :] + eye[None], post.eta[:, None, :] - eye[None], post.eta[:, None, :]], 1
    )  # (K, 2B + 1, B)
    th = np.asarray(pop.theta(post.u_typ[:, None, :], post.omega[:, None, :], etas)).reshape(
        k * (2 * b + 1), -1
    )
    dur = post.patient.dose_duration() or None
    mx = np.asarray(steady_state_extremes(pop.model, th, tau, [dose], duration=dur).max_resp)[:, 0]
    mx = mx.reshape(k, 2 * b + 1)
    return (mx[:, :b] - mx[:, b : 2 * b]) / (2 * step), mx[:, -1]


def expected_variance(
    post: TwinPosterior, f: np.ndarray, J: np.ndarray, c: np.ndarray, q=None, *, dvid: int = 1
):
    """``(before, after (C,))``: the posterior variance of the quantity ``q`` now and expected
    after one observation of type `dvid` at each candidate (`f (K, C)`, `J (K, C, B)` from
    [`sensitivities`][], ``c (K, B)`` and the component means ``q (K,)`` from
    [`target_direction`][]), mixed over the draws (see the module docstring)."""
    w_k = post.weights
    s = post.sigma.reshape(post.sigma.shape[0], -1, 2)[:, dvid - 1]  # (K, 2)
    sp, sa = s[:, 0:1], s[:, 1:2]
    w = np.asarray(fisher_weight(f, sp, sa))  # (K, C)
    Sc = np.einsum("kab,kb->ka", post.cov, c)  # Σc (K, B)
    var0 = np.einsum("ka,ka->k", c, Sc)  # (K,)
    cSj = np.einsum("ka,kca->kc", Sc, J)  # (K, C)
    jSj = np.einsum("kca,kab,kcb->kc", J, post.cov, J)
    var1 = var0[:, None] - w * cSj**2 / (1 + w * jSj)
    # the spread of the component means of q is not changed by the design (to first order)
    q = np.einsum("ka,ka->k", c, post.eta) if q is None else np.asarray(q, float)
    spread = float(np.sum(w_k * (q - np.sum(w_k * q)) ** 2)) if len(w_k) > 1 else 0.0
    return float(np.sum(w_k * var0) + spread), np.einsum("k,kc->c", w_k, var1) + spread


def planned_regimen(post: TwinPosterior, horizon: float) -> Regimen:
    """The patient's doses plus the current dose continued at the current interval until
    ``last time + horizon`` (what a next sample would see)."""
    reg = post.patient.regimen
    tau = post.patient.dose_interval()
    if tau is None or not (np.asarray(reg.amount) > 0).any():
        return reg
    return reg.continued(tau=tau, until=post.patient.last_time + horizon,
                         duration=post.patient.dose_duration())


def next_sample_time(
    post: TwinPosterior,
    *,
    target: str = "CL",
    dvid: int = 1,
    candidates=None,
    after: float | None = None,
    horizon: float = 168.0,
    step: float = 1.0,
    regimen: Regimen | None = None,
    refine: bool = True,
    dose: float | None = None,
    tau: float = 24.0,
) -> dict:
    """The candidate time with the largest expected reduction of the posterior variance of
    `target` (see the module docstring).

    Candidates: `candidates` (h), else every `step` h in ``(after, after + horizon]`` with
    `after` = the patient's last record time. `regimen`: the doses the sample will follow
    (default: [`planned_regimen`][], the current dose continued). Returns ``{"time", "sd_before",
    "sd_after" (expected), "reduction", "candidates", "variance_after"}`` (SDs of ``q``: for a
    parameter, the SD of its log, i.e. about its CV).
    """
    if dvid not in (1, 2):
        raise TwinError(f"`dvid` must be 1 (concentration) or 2 (biomarker); got {dvid}.")
    if dvid == 2 and post.population.model.pd is None:
        raise TwinError("a biomarker sample needs a PD model.")
    start = post.patient.last_time if after is None else float(after)
    if candidates is None:
        candidates = start + np.arange(step, horizon + step / 2, step)
    cand = np.asarray(candidates, float).reshape(-1)
    if cand.size == 0:
        raise TwinError("no candidate sampling time.")
    reg = (
        planned_regimen(post, max(horizon, float(cand.max()) - post.patient.last_time))
        if regimen is None
        else regimen
    )
    c, q = target_direction(post, target, dose=dose, tau=tau)
    f, J, status = sensitivities([post], cand, dvid=dvid, regimens=[reg])
    var0, var1 = expected_variance(post, f[0], J[0], c, q, dvid=dvid)
    var1 = np.where(np.all(status[0] == 0), var1, np.inf)
    best = int(np.argmin(var1))
    t_best, v_best = float(cand[best]), float(var1[best])
    if refine and cand.size > 2:
        lo = cand[max(best - 1, 0)]
        hi = cand[min(best + 1, cand.size - 1)]
        fine = np.linspace(lo, hi, 21)
        f2, J2, st2 = sensitivities([post], fine, dvid=dvid, regimens=[reg])
        _, v2 = expected_variance(post, f2[0], J2[0], c, q, dvid=dvid)
        if np.all(st2 == 0) and float(v2.min()) < v_best:
            t_best, v_best = float(fine[int(np.argmin(v2))]), float(v2.min())
    return {
        "time": t_best,
        "target": target,
        "dvid": dvid,
        "sd_before": float(np.sqrt(var0)),
        "sd_after": float(np.sqrt(max(v_best, 0.0))),
        "reduction": float(var0 - v_best),
        "candidates": cand,
        "variance_after": var1,
    }
