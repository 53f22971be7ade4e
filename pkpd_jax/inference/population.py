"""Hierarchical (NLME-style) population model: typical values, covariates, BSV and residual error.

A [`PopulationModel`][] turns a [`PKPDModel`][pkpd_jax.models.PKPDModel] and a
[`Dataset`][pkpd_jax.data.Dataset] into one log-density over a flat, unconstrained position
vector, ready for HMC/NUTS (``pkpd_jax.inference.sample``) or MAP optimisation ([`fit_map`][]).

**Individual parameters.** For subject ``i`` and model parameter ``k`` (natural units θ, link
``g`` = log for positive parameters, logit for fractions, identity for real ones)::

    θ_ik = g⁻¹( μ_k + Σ_c β_c·x_ic·[c acts on k] + ω_k·η_ik ),   η_ik ~ N(0, 1)   (non-centred)

``parametrization="noncentered"`` (the default) samples η; ``"centered"`` samples ``g(θ_ik)``
itself with ``g(θ_ik) ~ N(μ_k + ..., ω_k)`` (the same model). Non-centred suits weakly informed
subjects (sparse data: the funnel between ω and η disappears); centred suits richly sampled
ones, where non-centring couples μ_k with every η_ik (a direction N+1 times longer than the
others in a diagonal metric, so HMC needs ~√N times more leapfrog steps per iteration).
A list of parameter names (e.g. ``("CL", "V1", "Kin")``) centres those random effects and keeps
the others non-centred (``parametrization == "mixed"``): what a study needs when the data inform
some parameters subject by subject (clearance) and hardly inform others (an inter-compartmental
clearance seen in few samples), see ``fit(parametrization="auto")``.

with ``x = log(BW/70)`` for a power (allometric) effect and ``x = COMED`` (0/1) for a factor
effect, ``β`` the exponent or the log factor. In natural units, e.g.
``CL_i = CL·(BW/70)^BW_CL·COMED_CL^COMED·exp(ω_CL·η_CL,i)``. ``μ`` is the typical value of a
reference subject (70 kg, COMED 0).

**Residual error.** Per observation type (DVID 1 = concentration, DVID 2 = biomarker)::

    DV ~ N(f, (σ_prop·f)² + σ_add²)

observations with ``obs_mask`` False contribute nothing; BLQ observations use the M3 likelihood
``log Φ((LLOQ − f)/sd)``, where LLOQ is ``obs_lloq`` when known (> 0), else the stored DV when it
is > 0 (the data convention writes DV = LLOQ on BLQ rows), else the smallest known LLOQ / smallest
quantified DV of that observation type. A PK-only model ignores biomarker rows (with a warning).

**Pre-dose concentrations.** Every PK model predicts a concentration of exactly 0 at or before a
subject's first dose (an observation at a dose time is taken before that dose), so quantified
concentrations there are not fitted: a positive one (carry-over, endogenous drug, a TIME or ID
error) raises a [`PopulationDataWarning`][] naming the subjects, exact zeros are dropped silently
(they carry no information, and would make the likelihood unbounded as ``σ_add → 0``). BLQ rows
there are kept (M3 is consistent with 0).

**Input checks.** Before anything is compiled, [`PopulationDataError`][] is raised for a PD model
without PD observations, data without concentrations (or with all of them before the first dose),
no dose amount > 0, or fewer than 2 subjects with observations; [`CovariateSpecError`][] for a
covariate that is not a column, an unknown parameter, a non-binary factor or a non-positive power
covariate. Where the data cannot support a parameter, a [`PopulationDataWarning`][] says so: a
covariate with one value for every subject (left out by ``"auto"``), or no PD observation after a
dose (the concentration-effect parameters are then prior-only).

**Priors** (weakly informative; all documented in [`PopulationModel.prior_table`][]):

- typical values: ``g(θ_k) ~ N(g(median_k), (2·log_sd_k)²)`` using the model's declared prior
  (log-normal for positive parameters, i.e. twice as wide on the log scale as the model default);
  an override ``priors={name: (median, log_sd)}`` uses the given median (natural units) and
  log_sd *as given* (no inflation) — this is how a model selector passes its own ranges;
- covariate effects: body-weight exponents ``BW_CL ~ N(0.75, 0.25²)`` on clearances,
  ``BW_V ~ N(1, 0.25²)`` on volumes, other power exponents ``N(0, 0.5²)``; factors
  ``log COMED_CL ~ N(0, 0.5²)`` (same for any binary covariate); overrides ``{name: (mean, sd)}``
  for exponents and ``{name: (median, log_sd)}`` for factors;
- between-subject SDs: ``omega_k ~ HalfNormal(0.5)`` (sampled as log ω, with the log-Jacobian);
- residual error: ``sigma_prop ~ HalfNormal(0.3)``, ``sigma_add ~ HalfNormal(0.1 × median of the
  quantified fitted DVs of that type)`` (log scale, with the log-Jacobian);
- ``η ~ N(0, 1)``.

**Integration and gradients.** Each subject's predictions depend only on its own P parameters.
For a nonlinear model with an explicit Runge-Kutta solver (the default Tsit5) and
``method="auto"`` (the default), the likelihood has its own integrator
(``pkpd_jax.solve.solve_erk``): one adaptive loop per subject over the whole horizon, with
steps that land exactly on every observation and dose event instead of a restarted
``diffeqsolve`` per interval; all subjects (and all chains, when the log-density is ``vmap``-ed)
advance together in one batched loop (subjects without doses in a short loop of their own). The
default ``gradient="forward"`` wraps it in a
`jax.custom_vjp` whose forward pass integrates the forward sensitivities ∂y/∂θ along the same
steps (each Runge-Kutta stage differentiated exactly), giving each subject's Jacobian
(observations × P); the reverse pass is then a cheap ``Jᵀ·g``. `logdensity` alone skips the
sensitivities (same steps, same value). Linear models use the exact matrix-exponential path;
``method="ode"`` (or an implicit solver such as ``Kvaerno5``) selects the simulator's
per-interval ``diffeqsolve`` with forward-mode Jacobians through diffrax (``ForwardMode``).
``gradient="reverse"`` differentiates the simulator with diffrax's checkpointed reverse-mode
adjoint instead (slower; kept for checking). Forward-mode transforms (``jax.jvp``) of the
log-density are not supported with ``gradient="forward"``. On the bundled example study (48
subjects, 357 unknowns, 2 CPU cores) this took ``value_and_grad`` from ~220 ms to ~8 ms and 4
vmapped chains from ~1 s to ~25 ms (~10 ms and ~33 ms at the previous default rtol 1e-6;
``benchmarks/bench_likelihood.py``).

**Failures.** A subject whose simulation fails (status ≠ 0, non-finite prediction or
non-finite parameters) makes the log-density ``-inf`` (never NaN; the gradient is then finite).
So do unconstrained individual parameters, ``log ω`` or ``log σ`` beyond ±200 (outside the prior
mass): they are not exponentiated, so that no ``0·inf`` reaches the gradient.
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, NamedTuple

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree
from jax.scipy.special import log_ndtr
from jaxtyping import Array, Float

from ..data.dataset import Dataset
from ..dosing import Regimen
from ..errors import PkpdError
from ..models.coupling import PKPDModel
from ..solve import SolverConfig, erk_supported, simulate, solve_erk


__all__ = [
    "CovariateSpec",
    "CovariateEffect",
    "CovariateSpecError",
    "PopulationDataError",
    "PopulationDataWarning",
    "PopulationModel",
    "PredictiveSample",
    "StartingPoints",
    "curvature_diagonal",
    "curvature_matrix",
    "fit_map",
    "simulate_predictive",
    "DEFAULT_CONFIG",
]

REFERENCE_BW = 70.0
_WEIGHT_COLUMNS = ("BW", "WT")
_TYPES = {1: "PK", 2: "PD"}
OMEGA_PRIOR_SCALE = 0.5
SIGMA_PROP_PRIOR_SCALE = 0.3
SIGMA_ADD_PRIOR_FRACTION = 0.1
TYPICAL_PRIOR_INFLATION = 2.0

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


class CovariateSpecError(PkpdError, ValueError):
    """A covariate specification that does not fit the model or the data."""


class PopulationDataError(PkpdError, ValueError):
    """A data set that cannot be fitted with the requested model (checked before sampling)."""


class PopulationDataWarning(UserWarning):
    """Data that can be fitted but not as given, or that cannot inform some parameter."""


# ============================================================================ covariates
@dataclass(frozen=True)
class CovariateEffect:
    """One resolved covariate effect (shared coefficient `name` on parameters `params`).

    - `kind="power"`: ``θ ∝ (x / reference)^β`` (β real, `name` e.g. ``BW_CL``);
    - `kind="factor"`: ``θ ∝ β^x`` for a 0/1 covariate (β > 0, `name` e.g. ``COMED_CL``).

    `prior` is ``(mean, sd)`` of β for power effects and of ``log β`` for factor effects.
    """

    name: str
    covariate: str
    kind: Literal["power", "factor"]
    params: tuple[str, ...]
    reference: float
    prior: tuple[float, float]

    def design(self, values: np.ndarray) -> np.ndarray:
        """The regressor x_i on the unconstrained scale: log(x/ref) or the 0/1 flag."""
        if self.kind == "power":
            return np.log(values / self.reference)
        return values.astype(float)


def _is_clearance(p) -> bool:
    return p.unit == "L/h"


def _is_volume(p) -> bool:
    return p.unit == "L"


@dataclass(frozen=True)
class CovariateSpec:
    """Which covariate acts on which parameter.

    - ``CovariateSpec("auto")`` (default): with a ``BW`` column (or ``WT``), a power effect
      ``(BW/70)^BW_CL`` on every PK clearance (unit L/h: CL, Q, Q2, Q3; not Vmax) and
      ``(BW/70)^BW_V`` on every volume (unit L); with a 0/1 ``COMED`` column, a factor
      ``COMED_CL^COMED`` on ``CL`` only. A covariate with the same value for every subject is
      left out (with a [`PopulationDataWarning`][]).
    - ``CovariateSpec("none")``: no covariates.
    - ``CovariateSpec.parse("BW:CL,V1;COMED:CL")``: explicit, ``COVARIATE:PARAM,PARAM;...``.
      Names are column names and model parameter names. Body weight (``BW``/``WT``) gets one
      exponent ``BW_CL`` shared by the listed clearances and ``BW_V`` shared by the listed
      volumes (``BW_<param>`` for any other parameter); any other positive covariate gets a
      power effect ``(X/median X)^X_<param>``; a 0/1 covariate gets a factor ``X_<param>``.
    """

    mode: Literal["auto", "none", "explicit"] = "auto"
    effects: tuple[tuple[str, tuple[str, ...]], ...] = field(default=())

    def __post_init__(self):
        if self.mode not in ("auto", "none", "explicit"):
            raise CovariateSpecError(
                f"covariate mode must be 'auto', 'none' or 'explicit'; got {self.mode!r}"
            )

    @classmethod
    def auto(cls) -> CovariateSpec:
        return cls("auto")

    @classmethod
    def none(cls) -> CovariateSpec:
        return cls("none")

    @classmethod
    def parse(cls, text: str | CovariateSpec | None) -> CovariateSpec:
        """``"auto"``, ``"none"`` (or empty / None) or ``"COV:P1,P2;COV2:P3"``."""
        if isinstance(text, CovariateSpec):
            return text
        if text is None:
            return cls("auto")
        s = text.strip()
        if s.lower() == "auto":
            return cls("auto")
        if s == "" or s.lower() == "none":
            return cls("none")
        effects = []
        for part in (p.strip() for p in s.split(";")):
            if not part:
                continue
            m = re.fullmatch(r"([A-Za-z_][A-Za-z0-9_]*)\s*:\s*(.+)", part)
            params = tuple(q.strip() for q in m.group(2).split(",")) if m else ()
            if not m or not all(re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", q) for q in params):
                raise CovariateSpecError(
                    f"cannot parse covariate effect {part!r}; expected COVARIATE:PARAM[,PARAM...] "
                    "with effects separated by ';', e.g. 'BW:CL,V;COMED:CL' (or 'auto' / 'none')"
                )
            effects.append((m.group(1).upper(), params))
        if not effects:
            return cls("none")
        return cls("explicit", tuple(effects))

    def __str__(self) -> str:
        if self.mode != "explicit":
            return self.mode
        return ";".join(f"{c}:{','.join(ps)}" for c, ps in self.effects)

    # ------------------------------------------------------------------ resolution
    def resolve(self, model: PKPDModel, dataset: Dataset) -> tuple[CovariateEffect, ...]:
        """The effects for this model and data (raises [`CovariateSpecError`][] on mismatch)."""
        names = dataset.covariate_names
        cov = np.asarray(dataset.covariates, float)
        if self.mode == "none":
            return ()
        if self.mode == "auto":
            out = []
            weight = next((w for w in _WEIGHT_COLUMNS if w in names), None)
            if weight is not None and _constant(weight, cov[:, names.index(weight)], "auto"):
                weight = None
            if weight is not None:
                bw = cov[:, names.index(weight)]
                _check_positive(weight, bw)
                cls_ = tuple(p.name for p in model.pk_params if _is_clearance(p))
                vols = tuple(p.name for p in model.pk_params if _is_volume(p))
                if cls_:
                    out.append(
                        CovariateEffect(f"{weight}_CL", weight, "power", cls_, REFERENCE_BW, (0.75, 0.25))
                    )
                if vols:
                    out.append(
                        CovariateEffect(f"{weight}_V", weight, "power", vols, REFERENCE_BW, (1.0, 0.25))
                    )
            if (
                "COMED" in names
                and "CL" in model.param_names
                and not _constant("COMED", cov[:, names.index("COMED")], "auto")
            ):
                _check_binary("COMED", cov[:, names.index("COMED")])
                out.append(CovariateEffect("COMED_CL", "COMED", "factor", ("CL",), 0.0, (0.0, 0.5)))
            return tuple(out)

        by_param = {p.name: p for p in model.params}
        out: list[CovariateEffect] = []
        for column, params in self.effects:
            if column not in names:
                raise CovariateSpecError(
                    f"covariate {column!r} is not a column of the data; available covariates: "
                    f"{', '.join(names) or 'none'}"
                )
            unknown = [q for q in params if q not in by_param]
            if unknown:
                raise CovariateSpecError(
                    f"unknown parameter(s) {unknown} in covariate effect {column}:"
                    f"{','.join(params)}; model {model.name} has parameters "
                    f"{', '.join(model.param_names)}"
                )
            x = cov[:, names.index(column)]
            _constant(column, x, "explicit")
            if column in _WEIGHT_COLUMNS:
                _check_positive(column, x)
                groups = {"CL": [], "V": []}
                for q in params:
                    p = by_param[q]
                    if _is_clearance(p):
                        groups["CL"].append(q)
                    elif _is_volume(p):
                        groups["V"].append(q)
                    else:
                        out.append(
                            CovariateEffect(f"{column}_{q}", column, "power", (q,), REFERENCE_BW, (0.0, 0.5))
                        )
                if groups["CL"]:
                    out.append(
                        CovariateEffect(
                            f"{column}_CL", column, "power", tuple(groups["CL"]), REFERENCE_BW, (0.75, 0.25)
                        )
                    )
                if groups["V"]:
                    out.append(
                        CovariateEffect(
                            f"{column}_V", column, "power", tuple(groups["V"]), REFERENCE_BW, (1.0, 0.25)
                        )
                    )
            elif column == "COMED" or _binary(x):
                _check_binary(column, x)
                for q in params:
                    out.append(CovariateEffect(f"{column}_{q}", column, "factor", (q,), 0.0, (0.0, 0.5)))
            else:
                _check_positive(column, x, binary_ok=True)
                ref = float(np.median(x))
                for q in params:
                    out.append(CovariateEffect(f"{column}_{q}", column, "power", (q,), ref, (0.0, 0.5)))
        seen: dict[str, tuple] = {}
        for e in out:
            if e.name in seen:
                raise CovariateSpecError(f"covariate effect {e.name} is specified twice")
            seen[e.name] = e.params
        taken = set(model.param_names)
        clash = [e.name for e in out if e.name in taken]
        if clash:
            raise CovariateSpecError(f"covariate effect names {clash} clash with model parameters")
        return tuple(out)


def _constant(name: str, x: np.ndarray, mode: str) -> bool:
    """True (with a warning) when covariate `name` has one value for every subject: the data
    cannot inform its effect (with a value other than the reference it is also confounded with
    the typical value). ``auto`` leaves such an effect out; an explicit effect is kept."""
    if x.size == 0 or np.ptp(x) > 0:
        return False
    what = (
        "it is left out of the automatic covariate model"
        if mode == "auto"
        else "its effect is informed by the prior only (and confounded with the typical value)"
    )
    warnings.warn(
        f"covariate {name} has the same value ({x[0]:g}) for every subject; the data cannot "
        f"support a {name} effect, so {what}",
        PopulationDataWarning,
        stacklevel=4,
    )
    return True


def _binary(x: np.ndarray) -> bool:
    return bool(np.all(np.isin(x, (0.0, 1.0))))


def _check_binary(name: str, x: np.ndarray) -> None:
    if not _binary(x):
        bad = np.unique(x[~np.isin(x, (0.0, 1.0))])[:5].tolist()
        raise CovariateSpecError(
            f"covariate {name} must be binary (0/1) for a factor effect; found values {bad}"
        )


def _check_positive(name: str, x: np.ndarray, binary_ok: bool = False) -> None:
    if not np.all(np.isfinite(x) & (x > 0)):
        bad = np.unique(x[~(np.isfinite(x) & (x > 0))])[:5].tolist()
        hint = " (or 0/1 for a factor effect)" if binary_ok else ""
        raise CovariateSpecError(
            f"covariate {name} must be positive for a power effect{hint}; found values {bad}"
        )


# ============================================================================ predictions
def _regimen_args(regimen: Regimen):
    return (regimen.time, regimen.amount, regimen.duration, regimen.cmt.astype(float))


def _uses_erk(model: PKPDModel, config: SolverConfig, gradient: str) -> bool:
    """Whether the likelihood integrates with the one-loop explicit Runge-Kutta path."""
    return gradient == "forward" and config.method == "auto" and erk_supported(model, config)


def _make_predictor(model: PKPDModel, config: SolverConfig, gradient: str):
    """``predict(theta (P,), ts (M,), dose_time, dose_amount, dose_duration, dose_cmt) ->
    (pred (2, M) = [conc, resp], ok)`` for one subject; ``ok`` is a float 1/0 (no gradient)."""
    if gradient not in ("forward", "reverse"):
        raise ValueError(f"`gradient` must be 'forward' or 'reverse'; got {gradient!r}")
    if _uses_erk(model, config, gradient):
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


def _make_erk_predictor(model: PKPDModel, config: SolverConfig):
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


#: |log ω|, |log σ| and |g(θ_i)| (positive and unit parameters) above this give a log-density
#: of ``-inf`` (no mass is lost: the priors put < e^-1000 there); inside the bound exp() and
#: its derivative stay finite, so a ``-inf`` value always comes with a finite gradient.
_LOG_LIMIT = 200.0


def _safe_exp(z):
    """``(exp(z), bad)`` with ``bad = |z| > _LOG_LIMIT`` (or non-finite), where exp is taken at 0
    so that its derivative is finite (the caller masks those entries with ``-inf``)."""
    bad = ~(jnp.abs(z) <= _LOG_LIMIT)
    return jnp.exp(jnp.where(bad, 0.0, z)), bad


def _halfnormal_logpdf(x, scale):
    return 0.5 * math.log(2.0 / math.pi) - jnp.log(scale) - 0.5 * (x / scale) ** 2


def _normal_logpdf(x, loc, scale):
    return -0.5 * math.log(2.0 * math.pi) - jnp.log(scale) - 0.5 * ((x - loc) / scale) ** 2


class StartingPoints(NamedTuple):
    """What [`PopulationModel.starting_points`][] returns."""

    positions: Array  # (chains, dim)
    inverse_mass: np.ndarray | None  # (dim,) from the curvature, or None
    mode: Array  # (dim,) the optimised point the chains scatter around
    curvature: np.ndarray | None  # (dim,) diagonal of the negative Hessian at `mode`, or None
    hessian: np.ndarray | None = None  # (dim, dim) the negative Hessian at `mode`, or None


class PredictiveSample(NamedTuple):
    """Replicate data sets from [`PopulationModel.simulate_predictive`][] (R replicates).

    `dv`, `ipred`, `below_lloq`: ``(R, N, M)``; `status`: ``(R, N)`` (0 = success);
    `params`: ``(R, N, P)`` individual parameters; `time`, `dvid`, `mask`: ``(N, M)`` from the
    data (`mask` = the observations the model fits).
    """

    dv: Array
    ipred: Array
    below_lloq: Array
    status: Array
    params: Array
    time: Array
    dvid: Array
    mask: Array


# ============================================================================ the model
class PopulationModel:
    """The population log-density of `model` on `dataset` (see the module docstring).

    **Arguments:**

    - `model`: the structural [`PKPDModel`][pkpd_jax.models.PKPDModel].
    - `dataset`: the [`Dataset`][pkpd_jax.data.Dataset].
    - `covariates`: a [`CovariateSpec`][], ``"auto"`` (default), ``"none"`` or a spec string.
    - `priors`: overrides ``{name: (median, log_sd)}`` for typical values and factor effects,
      ``{name: (mean, sd)}`` for power exponents.
    - `bsv`: names of the parameters with between-subject variability (default: all); the
      others are the same for every subject (besides covariate effects).
    - `config`: solver settings (default [`DEFAULT_CONFIG`][]); ``method="auto"`` uses the
      one-loop integrator for nonlinear models (see the module docstring), ``method="ode"`` the
      simulator's ``diffeqsolve`` per interval.
    - `gradient`: ``"forward"`` (default, per-subject forward-mode Jacobians in a custom VJP:
      forward sensitivities, or diffrax ``ForwardMode`` with ``method="ode"``) or
      ``"reverse"`` (diffrax's reverse-mode adjoint through the simulator).

    **Position.** A flat float64 vector (``ravel_pytree`` of ``{"mu", "cov", "log_omega",
    "log_sigma", "eta"}``); use [`unflatten`][], [`to_position`][],
    [`individual_parameters`][] rather than indexing it.

    Raises [`PopulationDataError`][] / [`CovariateSpecError`][] (both `ValueError`) for data
    that cannot be fitted, before anything is compiled.
    """

    def __init__(
        self,
        model: PKPDModel,
        dataset: Dataset,
        covariates: CovariateSpec | str | None = "auto",
        priors: Mapping[str, tuple[float, float]] | None = None,
        *,
        bsv: Sequence[str] | None = None,
        config: SolverConfig = DEFAULT_CONFIG,
        gradient: Literal["forward", "reverse"] = "forward",
        subject_batch: int | None = None,
        parametrization: Literal["noncentered", "centered"] | Sequence[str] = "noncentered",
    ):
        if isinstance(parametrization, str) and parametrization not in ("noncentered", "centered"):
            raise ValueError(
                f"`parametrization` must be 'noncentered', 'centered' or a list of the random "
                f"effects to centre; got {parametrization!r}"
            )
        self.model = model
        self.subject_batch = subject_batch
        self.dataset = dataset
        self.config = config
        self.gradient = gradient
        self.spec = CovariateSpec.parse(covariates)
        self.params = model.params
        self.param_names = model.param_names
        self.types = (1,) if model.pd is None else (1, 2)

        fitted = self._check_data()
        self.effects = self.spec.resolve(model, dataset)

        names = self.param_names
        if bsv is None:
            bsv = names
        unknown = [b for b in bsv if b not in names]
        if unknown:
            raise ValueError(f"`bsv` names {unknown} are not parameters of {model.name} ({', '.join(names)})")
        self.bsv_params = tuple(n for n in names if n in set(bsv))
        self._bsv_idx = np.array([names.index(n) for n in self.bsv_params], dtype=int)
        if isinstance(parametrization, str):
            centred = self.bsv_params if parametrization == "centered" else ()
        else:
            centred = tuple(parametrization)
            unknown = [c for c in centred if c not in self.bsv_params]
            if unknown:
                raise ValueError(
                    f"`parametrization` names {unknown}, which have no random effect; the random "
                    f"effects are {', '.join(self.bsv_params)}"
                )
        #: The random effects sampled centred (``g(θ_ik)``); the others are non-centred (η).
        self.centered_params = tuple(b for b in self.bsv_params if b in set(centred))
        self._cmask = np.array([b in self.centered_params for b in self.bsv_params], dtype=bool)
        if not self.centered_params:
            self.parametrization = "noncentered"
        elif len(self.centered_params) == len(self.bsv_params):
            self.parametrization = "centered"
        else:
            self.parametrization = "mixed"
        self._u_limit = jnp.asarray([np.inf if p.constraint == "real" else _LOG_LIMIT for p in self.params])

        # ---- covariate design
        cov = np.asarray(dataset.covariates, float)
        n = dataset.n_subjects
        e = len(self.effects)
        X = np.zeros((n, e))
        A = np.zeros((e, len(names)))
        for j, eff in enumerate(self.effects):
            X[:, j] = eff.design(cov[:, dataset.covariate_names.index(eff.covariate)])
            for q in eff.params:
                A[j, names.index(q)] = 1.0
        self._X = jnp.asarray(X)
        self._A = jnp.asarray(A)

        # ---- observations
        dvid = np.asarray(dataset.obs_dvid)
        mask = fitted
        self._mask = jnp.asarray(mask)
        self._blq = jnp.asarray(mask & np.asarray(dataset.obs_blq))
        self._dvid = jnp.asarray(dvid)
        self._type = jnp.asarray(np.clip(dvid - 1, 0, len(self.types) - 1))
        self._dv = jnp.asarray(np.asarray(dataset.obs_dv, float))
        self._lloq = jnp.asarray(self._resolve_lloq(mask))
        self._times = jnp.asarray(dataset.obs_time, float)
        self._reg = _regimen_args(dataset.regimen)

        # ---- priors
        self.sigma_names = tuple(f"sigma_{kind}_{_TYPES[t]}" for t in self.types for kind in ("prop", "add"))
        self._priors_given = dict(priors or {})
        self._priors = self._build_priors(self._priors_given)

        # ---- position layout
        template = {
            "mu": jnp.zeros(len(names)),
            "cov": jnp.zeros(e),
            "log_omega": jnp.zeros(len(self.bsv_params)),
            "log_sigma": jnp.zeros(len(self.sigma_names)),
            "eta": jnp.zeros((n, len(self.bsv_params))),
        }
        flat, self._unravel = ravel_pytree(template)
        self.dim = int(flat.size)
        self.names = (
            tuple(names)
            + tuple(eff.name for eff in self.effects)
            + tuple(f"omega_{b}" for b in self.bsv_params)
            + self.sigma_names
        )

        self._predict = _make_predictor(model, config, gradient)
        # The one-loop integrator advances a batch of subjects in lockstep until the slowest is
        # done: subjects without any dose (placebo; a few steps) run as a batch of their own, so
        # that the dosed ones do not carry them through hundreds of iterations.
        self._groups = None
        if _uses_erk(model, config, gradient):
            dosed = np.any(np.asarray(dataset.regimen.amount) > 0, axis=1)
            if dosed.any() and not dosed.all():
                groups = (np.flatnonzero(dosed), np.flatnonzero(~dosed))
                self._groups = (groups, np.argsort(np.concatenate(groups)))
        self.logdensity = jax.jit(self._logdensity)
        self.value_and_grad = jax.jit(jax.value_and_grad(self._logdensity))

    # ------------------------------------------------------------------ checks
    def _check_data(self) -> np.ndarray:
        """Check that the data can be fitted (raises [`PopulationDataError`][]) and return the
        ``(N, M)`` mask of the observations the likelihood uses."""
        ds = self.dataset
        ids = ds.ids
        mask = np.asarray(ds.obs_mask)
        dvid = np.asarray(ds.obs_dvid)
        n_pk = int(np.sum(mask & (dvid == 1)))
        n_pd = int(np.sum(mask & (dvid == 2)))
        if self.model.pd is not None and n_pd == 0:
            raise PopulationDataError(
                f"the data has no PD observations (DVID 2), so the PD model {self.model.pd.name} "
                "cannot be fitted; fit a PK-only model (omit --pd) or add biomarker rows"
            )
        if n_pk == 0:
            raise PopulationDataError(
                "the data has no drug concentrations (DVID 1 observations with MDV 0); a PK model "
                "cannot be fitted without them; add concentration rows"
            )
        amount = np.asarray(ds.regimen.amount, float)
        if not np.any(amount > 0):
            raise PopulationDataError(
                "no subject has a dose amount > 0; add dose rows (EVID 1, AMT > 0) to the data"
            )
        fitted = mask & np.isin(dvid, self.types)

        # Concentrations at or before a subject's first dose: every PK model predicts exactly 0
        # there, so they carry no information on the PK parameters. BLQ ones are kept (M3 is
        # consistent with 0); quantified ones are not fitted: a positive value (carry-over,
        # endogenous drug, a time or ID error) would otherwise be explained by σ_add alone, and
        # exact zeros would make the likelihood unbounded as σ_add -> 0.
        t_first = np.min(np.where(amount > 0, np.asarray(ds.regimen.time, float), np.inf), axis=1)
        times = np.asarray(ds.obs_time, float)
        dv = np.asarray(ds.obs_dv, float)
        pre = fitted & (dvid == 1) & (times <= t_first[:, None]) & ~np.asarray(ds.obs_blq)
        positive = pre & (dv > 0)
        if positive.any():
            who = [ids[i] for i in np.flatnonzero(positive.any(axis=1))]
            shown = ", ".join(who[:10]) + (" ..." if len(who) > 10 else "")
            warnings.warn(
                f"{int(positive.sum())} concentration(s) > 0 at or before the first dose (where the "
                f"model predicts 0) are not fitted; subject(s) {shown}. Check for carry-over from "
                "an earlier period, endogenous drug, or TIME/ID errors (set MDV 1 on such rows to "
                "silence this warning)",
                PopulationDataWarning,
                stacklevel=3,
            )
        fitted = fitted & ~pre
        if not np.any(fitted & (dvid == 1)):
            raise PopulationDataError(
                "every drug concentration (DVID 1) is at or before the subject's first dose, where "
                "the model predicts 0; the PK parameters cannot be estimated; check the TIME "
                "column of the dose and concentration rows"
            )

        n_with = int(np.sum(fitted.any(axis=1)))
        if n_with < 2:
            raise PopulationDataError(
                f"a population model needs at least 2 subjects with observations; the data has {n_with}"
            )
        if self.model.pd is not None:
            exposed = fitted & (dvid == 2) & (times > t_first[:, None])
            if not exposed.any():
                warnings.warn(
                    "no PD observation (DVID 2) is after a dose: the data cannot inform the "
                    "concentration-effect parameters of the PD model (their estimates are the "
                    "priors); add biomarker samples from dosed subjects",
                    PopulationDataWarning,
                    stacklevel=3,
                )
        if self.model.pd is None and n_pd > 0:
            warnings.warn(
                f"the data has {n_pd} PD observations (DVID 2) that a PK-only model ignores",
                PopulationDataWarning,
                stacklevel=3,
            )
        return fitted

    def _resolve_lloq(self, mask: np.ndarray) -> np.ndarray:
        ds = self.dataset
        dv = np.asarray(ds.obs_dv, float)
        dvid = np.asarray(ds.obs_dvid)
        blq = np.asarray(ds.obs_blq) & mask
        stored = np.asarray(ds.obs_lloq, float)
        lloq = np.where(np.isfinite(stored) & (stored > 0), stored, np.where(dv > 0, dv, np.nan))
        for t in self.types:
            need = blq & (dvid == t) & ~np.isfinite(lloq)
            if not need.any():
                continue
            known = stored[(dvid == t) & np.isfinite(stored) & (stored > 0)]
            quant = dv[mask & ~blq & (dvid == t) & (dv > 0)]
            fallback = known.min() if known.size else (quant.min() if quant.size else 1.0)
            lloq = np.where(need, fallback, lloq)
        return np.where(blq, lloq, 0.0)

    # ------------------------------------------------------------------ priors
    def _build_priors(self, overrides: Mapping[str, tuple[float, float]]) -> dict:
        by_name = {p.name: p for p in self.params}
        eff_names = {e.name: e for e in self.effects}
        unknown = sorted(set(overrides) - set(by_name) - set(eff_names))
        if unknown:
            raise ValueError(
                f"prior overrides for unknown names {unknown}; allowed: "
                f"{', '.join(list(by_name) + list(eff_names))}"
            )
        mu_loc, mu_sd = [], []
        for p in self.params:
            if p.name in overrides:
                med, sd = (float(v) for v in overrides[p.name])
                if p.constraint == "positive" and not med > 0:
                    raise ValueError(f"prior median for {p.name} must be > 0; got {med}")
                if p.constraint == "unit" and not 0 < med < 1:
                    raise ValueError(f"prior median for {p.name} must be in (0, 1); got {med}")
                loc = float(p.to_unconstrained(med))
            else:
                loc, sd = p.prior_loc, TYPICAL_PRIOR_INFLATION * p.log_sd
            if not sd > 0:
                raise ValueError(f"prior log_sd for {p.name} must be > 0; got {sd}")
            mu_loc.append(loc)
            mu_sd.append(sd)
        cov_loc, cov_sd = [], []
        for e in self.effects:
            loc, sd = e.prior
            if e.name in overrides:
                loc, sd = (float(v) for v in overrides[e.name])
                if e.kind == "factor":
                    if not loc > 0:
                        raise ValueError(f"prior median for {e.name} must be > 0; got {loc}")
                    loc = math.log(loc)
            cov_loc.append(loc)
            cov_sd.append(sd)
        dv = np.asarray(self.dataset.obs_dv, float)
        quant = np.asarray(self._mask) & ~np.asarray(self._blq)
        dvid = np.asarray(self.dataset.obs_dvid)
        sig = []
        for t in self.types:
            x = np.abs(dv[quant & (dvid == t)])
            med = float(np.median(x)) if x.size else 0.0
            if not med > 0:
                med = float(np.max(x)) if x.size and np.max(x) > 0 else 1.0
            sig += [SIGMA_PROP_PRIOR_SCALE, SIGMA_ADD_PRIOR_FRACTION * med]
        return {
            "mu_loc": np.array(mu_loc),
            "mu_sd": np.array(mu_sd),
            "cov_loc": np.array(cov_loc),
            "cov_sd": np.array(cov_sd),
            "omega_scale": np.full(len(self.bsv_params), OMEGA_PRIOR_SCALE),
            "sigma_scale": np.array(sig),
        }

    def prior_table(self) -> list[dict]:
        """One record per population parameter: name, distribution, scale, natural-unit median."""
        pr = self._priors
        rows = []
        for k, p in enumerate(self.params):
            loc, sd = pr["mu_loc"][k], pr["mu_sd"][k]
            dist = {"positive": "log-normal", "unit": "logit-normal", "real": "normal"}
            rows.append(
                {
                    "name": p.name,
                    "unit": p.unit,
                    "distribution": dist[p.constraint],
                    "median": float(p.to_natural(loc)),
                    "scale": float(sd),
                    "range_95": [float(p.to_natural(loc - 1.96 * sd)), float(p.to_natural(loc + 1.96 * sd))],
                }
            )
        for j, e in enumerate(self.effects):
            loc, sd = pr["cov_loc"][j], pr["cov_sd"][j]
            if e.kind == "power":
                rows.append(
                    {
                        "name": e.name,
                        "unit": "1",
                        "distribution": "normal",
                        "median": float(loc),
                        "scale": float(sd),
                        "range_95": [loc - 1.96 * sd, loc + 1.96 * sd],
                    }
                )
            else:
                rows.append(
                    {
                        "name": e.name,
                        "unit": "1",
                        "distribution": "log-normal",
                        "median": math.exp(loc),
                        "scale": float(sd),
                        "range_95": [math.exp(loc - 1.96 * sd), math.exp(loc + 1.96 * sd)],
                    }
                )
        scales = list(pr["omega_scale"]) + list(pr["sigma_scale"])
        names = [f"omega_{b}" for b in self.bsv_params] + list(self.sigma_names)
        for name, s in zip(names, scales):
            rows.append(
                {
                    "name": name,
                    "unit": "1" if "add" not in name else "DV unit",
                    "distribution": "half-normal",
                    "median": 0.6745 * float(s),
                    "scale": float(s),
                    "range_95": [0.0, 2.2414 * float(s)],
                }
            )
        return rows

    # ------------------------------------------------------------------ position algebra
    @property
    def n_subjects(self) -> int:
        return self.dataset.n_subjects

    def _tree(self, position):
        return self._unravel(jnp.asarray(position))

    def _typical_u(self, tree):
        return tree["mu"][None, :] + self._X @ (tree["cov"][:, None] * self._A)

    def block_mask(self, block: str) -> np.ndarray:
        """Boolean ``(dim,)`` mask of one block of the position (``"mu"``, ``"cov"``,
        ``"log_omega"``, ``"log_sigma"`` or ``"eta"``)."""
        tree = self._tree(jnp.zeros(self.dim))
        if block not in tree:
            raise ValueError(f"unknown block {block!r}; expected one of {sorted(tree)}")
        flat = ravel_pytree({k: jnp.full(v.shape, k == block) for k, v in tree.items()})[0]
        return np.asarray(flat).astype(bool)

    def data_weight(self, position, curvature: np.ndarray) -> np.ndarray:
        """Per subject and BSV parameter ``(N, n_bsv)``: how much the subject's data outweigh the
        population prior, ``H_ii·ω² - 1`` for the random-effect coordinates (centred:
        ``H = 1/ω² + data information``; non-centred: ``H = 1 + ω²·data information``, scaled back).
        Large values (≫ 1) favour the centred parametrisation, small ones the non-centred."""
        tree = self._tree(jnp.asarray(position))
        omega = np.exp(np.asarray(tree["log_omega"]))
        h = np.asarray(curvature)[self.block_mask("eta")].reshape(self.n_subjects, len(self.bsv_params))
        return np.where(self._cmask[None, :], h * omega[None, :] ** 2, h) - 1.0

    def _individual_u(self, tree, omega=None):
        """Individual unconstrained parameters ``(N, P)``. The "eta" block holds ``g(θ_ik)`` for
        the centred random effects and the standardised η for the non-centred ones."""
        u = self._typical_u(tree)
        omega = jnp.exp(tree["log_omega"]) if omega is None else omega
        u_bsv = u[:, self._bsv_idx]
        u_bsv = jnp.where(self._cmask[None, :], tree["eta"], u_bsv + omega[None, :] * tree["eta"])
        return u.at[:, self._bsv_idx].set(u_bsv)

    def _standard_eta(self, tree):
        """Standardised η ``(N, n_bsv)`` from a position tree (any parametrisation)."""
        if not self.centered_params:
            return tree["eta"]
        u_typ = self._typical_u(tree)[:, self._bsv_idx]
        centred = (tree["eta"] - u_typ) / jnp.exp(tree["log_omega"])[None, :]
        return jnp.where(self._cmask[None, :], centred, tree["eta"])

    def _with_standard_eta(self, tree, eta):
        """The tree whose random-effect block encodes standardised `eta` (any parametrisation)."""
        if not self.centered_params:
            return {**tree, "eta": eta}
        u_typ = self._typical_u(tree)[:, self._bsv_idx]
        centred = u_typ + jnp.exp(tree["log_omega"])[None, :] * eta
        return {**tree, "eta": jnp.where(self._cmask[None, :], centred, eta)}

    def omega_mask(self, centred: bool = True) -> np.ndarray:
        """Boolean ``(dim,)`` mask of the ``log ω`` coordinates of the centred (or, with
        ``centred=False``, the non-centred) random effects."""
        tree = self._tree(jnp.zeros(self.dim))
        want = self._cmask if centred else ~self._cmask
        flat = ravel_pytree({k: (jnp.asarray(want) if k == "log_omega" else jnp.zeros(v.shape, bool))
                             for k, v in tree.items()})[0]
        return np.asarray(flat).astype(bool)

    def reparametrized(self, parametrization, position, curvature=None):
        """The same model in another parametrisation, and `position` (and the diagonal
        `curvature` of the negative log-density there, if given) mapped into it: η of a
        switched random effect is ``(g(θ) - typical)/ω`` one way and ``typical + ω·η`` the other;
        its curvature is scaled by ``ω²`` / ``1/ω²`` (the diagonal of the Hessian in the new
        coordinates, neglecting the coupling to the typical value and ω). Returns
        ``(model, position, curvature)``."""
        with warnings.catch_warnings():  # the data warnings were given for this model already
            warnings.simplefilter("ignore", PopulationDataWarning)
            new = PopulationModel(
                self.model, self.dataset, self.spec, self._priors_given, bsv=self.bsv_params,
                config=self.config, gradient=self.gradient, subject_batch=self.subject_batch,
                parametrization=parametrization,
            )
        tree = self._tree(jnp.asarray(position))
        eta_std = self._standard_eta(tree)
        new_pos = ravel_pytree(new._with_standard_eta(tree, eta_std))[0]
        new_h = None
        if curvature is not None:
            h = np.array(curvature, float)
            mask = self.block_mask("eta")
            he = h[mask].reshape(self.n_subjects, len(self.bsv_params))
            w2 = np.exp(2 * np.asarray(tree["log_omega"]))[None, :]
            to_c = new._cmask & ~self._cmask  # non-centred -> centred: H_u = H_η / ω²
            to_nc = self._cmask & ~new._cmask  # centred -> non-centred: H_η = ω² H_u
            he = np.where(to_c[None, :], he / w2, np.where(to_nc[None, :], he * w2, he))
            h[mask] = he.reshape(-1)
            new_h = h
        return new, new_pos, new_h

    def _to_natural(self, u):
        return jnp.stack([p.to_natural(u[..., k]) for k, p in enumerate(self.params)], axis=-1)

    def _unflatten_one(self, position) -> dict[str, Array]:
        tree = self._tree(position)
        out = {p.name: p.to_natural(tree["mu"][k]) for k, p in enumerate(self.params)}
        for j, e in enumerate(self.effects):
            c = tree["cov"][j]
            out[e.name] = c if e.kind == "power" else jnp.exp(c)
        for j, b in enumerate(self.bsv_params):
            out[f"omega_{b}"] = jnp.exp(tree["log_omega"][j])
        for j, s in enumerate(self.sigma_names):
            out[s] = jnp.exp(tree["log_sigma"][j])
        return out

    def unflatten(self, position: Float[Array, "... dim"]) -> dict[str, Array]:
        """Natural-unit population values ``{name: value}`` (leading axes of `position` kept).

        Names: the model's parameter names (typical values of the reference subject), the
        covariate coefficients (e.g. ``BW_CL``, ``BW_V``, ``COMED_CL``), ``omega_<param>`` and
        ``sigma_{prop,add}_{PK,PD}``. See also [`eta`][].
        """
        position = jnp.asarray(position)
        lead = position.shape[:-1]
        flat = position.reshape(-1, self.dim)
        out = jax.vmap(self._unflatten_one)(flat)
        return {k: v.reshape(lead) for k, v in out.items()}

    def eta(self, position: Float[Array, "... dim"]) -> Array:
        """Standardised random effects ``(..., N, n_bsv)`` (columns ordered as `bsv_params`)."""
        position = jnp.asarray(position)
        lead = position.shape[:-1]
        etas = jax.vmap(lambda x: self._standard_eta(self._tree(x)))(position.reshape(-1, self.dim))
        return etas.reshape(lead + etas.shape[1:])

    def individual_parameters(self, position: Float[Array, "... dim"]) -> Array:
        """Individual parameters ``(..., N, P)`` in natural units (columns = `param_names`)."""
        position = jnp.asarray(position)
        lead = position.shape[:-1]
        f = lambda x: self._to_natural(self._individual_u(self._tree(x)))
        out = jax.vmap(f)(position.reshape(-1, self.dim))
        return out.reshape(lead + out.shape[1:])

    def to_position(self, values: Mapping[str, float], eta=None) -> Array:
        """The position for natural-unit population `values` (all of `names`) and `eta`
        (``(N, n_bsv)``, default zeros). Inverse of [`unflatten`][] / [`eta`][]."""
        missing = [n for n in self.names if n not in values]
        unknown = sorted(set(values) - set(self.names))
        if missing or unknown:
            raise ValueError(
                f"population values must have exactly the names {list(self.names)}; "
                + (f"missing {missing}. " if missing else "")
                + (f"unknown {unknown}." if unknown else "")
            )
        f64 = lambda v: jnp.asarray(v, dtype=float)
        tree = {
            "mu": jnp.stack([p.to_unconstrained(f64(values[p.name])) for p in self.params]),
            "cov": jnp.stack(
                [
                    f64(values[e.name]) if e.kind == "power" else jnp.log(f64(values[e.name]))
                    for e in self.effects
                ]
            )
            if self.effects
            else jnp.zeros(0),
            "log_omega": jnp.log(jnp.stack([f64(values[f"omega_{b}"]) for b in self.bsv_params]))
            if self.bsv_params
            else jnp.zeros(0),
            "log_sigma": jnp.log(jnp.stack([f64(values[s]) for s in self.sigma_names])),
            "eta": jnp.zeros((self.n_subjects, len(self.bsv_params)))
            if eta is None
            else f64(eta).reshape(self.n_subjects, len(self.bsv_params)),
        }
        tree = self._with_standard_eta(tree, tree["eta"])
        return ravel_pytree(tree)[0]

    def etas_from_individual(self, values: Mapping[str, float], theta: Array) -> Array:
        """The η ``(N, n_bsv)`` that reproduce individual parameters `theta` ``(N, P)`` (natural
        units) under population `values` (parameters without BSV are ignored)."""
        tree = self._tree(self.to_position(values))
        theta = jnp.asarray(theta, dtype=float)
        u_ind = jnp.stack([p.to_unconstrained(theta[:, k]) for k, p in enumerate(self.params)], -1)
        u_typ = tree["mu"][None, :] + self._X @ (tree["cov"][:, None] * self._A)
        omega = jnp.exp(tree["log_omega"])
        return (u_ind - u_typ)[:, self._bsv_idx] / omega[None, :]

    def prior_median_position(self) -> Array:
        """Prior medians: typical values and covariate effects at their prior centres, ω and σ at
        their half-normal medians, η = 0."""
        pr = self._priors
        tree = {
            "mu": jnp.asarray(pr["mu_loc"]),
            "cov": jnp.asarray(pr["cov_loc"]),
            "log_omega": jnp.log(0.6745 * jnp.asarray(pr["omega_scale"])),
            "log_sigma": jnp.log(0.6745 * jnp.asarray(pr["sigma_scale"])),
            "eta": jnp.zeros((self.n_subjects, len(self.bsv_params))),
        }
        tree = self._with_standard_eta(tree, tree["eta"])
        return ravel_pytree(tree)[0]

    # ------------------------------------------------------------------ densities
    def predictions(self, theta: Array) -> tuple[Array, Array]:
        """Individual predictions ``(N, M)`` (concentration or response by DVID) and an ok flag
        ``(N,)`` for individual parameters `theta` ``(N, P)``."""
        pred, ok = self._map_subjects(self._predict, theta, self._times, *self._reg)
        f = jnp.where(self._dvid == 2, pred[:, 1], pred[:, 0])
        return f, ok > 0.5

    def _map_subjects(self, f, *args):
        b = self.subject_batch
        if b is None or b >= self.n_subjects:
            if self._groups is None:
                return jax.vmap(f)(*args)
            groups, back = self._groups
            outs = [jax.vmap(f)(*(a[idx] for a in args)) for idx in groups]
            return jax.tree.map(lambda *o: jnp.concatenate(o)[back], *outs)
        return jax.lax.map(lambda a: f(*a), args, batch_size=b)

    def loglik_individual(self, theta: Array, sigma: Array) -> Array:
        """Per-subject log-likelihood ``(N,)`` for individual parameters `theta` ``(N, P)`` and
        residual SDs `sigma` ordered as `sigma_names`; ``-inf`` for a failed subject."""
        f, ok = self.predictions(theta)
        sigma = jnp.asarray(sigma).reshape(len(self.types), 2)
        sp, sa = sigma[self._type, 0], sigma[self._type, 1]
        f = jnp.where(jnp.isfinite(f), f, 0.0)
        sd = jnp.sqrt((sp * f) ** 2 + sa**2)
        ll_obs = jnp.where(
            self._blq,
            log_ndtr((self._lloq - f) / sd),
            _normal_logpdf(self._dv, f, sd),
        )
        ll = jnp.sum(jnp.where(self._mask, ll_obs, 0.0), axis=1)
        return jnp.where(ok, ll, -jnp.inf)

    def log_prior(self, position) -> Array:
        """Log prior density of `position`, including the log-Jacobians of log ω and log σ."""
        tree = self._tree(position)
        pr = self._priors
        lp = jnp.sum(_normal_logpdf(tree["mu"], pr["mu_loc"], pr["mu_sd"]))
        lp += jnp.sum(_normal_logpdf(tree["cov"], pr["cov_loc"], pr["cov_sd"]))
        for key, scale in (("log_omega", pr["omega_scale"]), ("log_sigma", pr["sigma_scale"])):
            z = tree[key]
            s, bad = _safe_exp(z)
            lp += jnp.sum(jnp.where(bad, -jnp.inf, _halfnormal_logpdf(s, scale) + z))
        if not self.centered_params:
            lp += jnp.sum(_normal_logpdf(tree["eta"], 0.0, 1.0))
        else:  # centred: g(θ_i) ~ N(typical, ω), the density of η ~ N(0, 1) plus log|dη/dg(θ_i)|
            omega, _ = _safe_exp(tree["log_omega"])
            u_typ = self._typical_u(tree)[:, self._bsv_idx]
            loc = jnp.where(self._cmask[None, :], u_typ, 0.0)
            scale = jnp.where(self._cmask[None, :], omega[None, :], 1.0)
            lp += jnp.sum(_normal_logpdf(tree["eta"], loc, scale))
        return lp

    def log_likelihood(self, position) -> Array:
        """Sum of the per-subject log-likelihoods at `position` (``-inf`` if any subject fails).

        Subjects whose unconstrained individual parameters are non-finite or beyond
        ``±_LOG_LIMIT`` get ``-inf`` (they are simulated at placeholder values, not at the
        overflowing ones), and so do absurd ω or σ: this keeps the gradient of a ``-inf``
        log-density finite (no ``0·inf`` in the chain rule).
        """
        tree = self._tree(position)
        omega, bad_omega = _safe_exp(tree["log_omega"])
        sigma, bad_sigma = _safe_exp(tree["log_sigma"])
        u = self._individual_u(tree, omega)
        bad = ~jnp.all(jnp.isfinite(u) & (jnp.abs(u) <= self._u_limit), axis=-1)
        theta = self._to_natural(jnp.where(bad[:, None], 0.0, u))
        ll = jnp.where(bad, -jnp.inf, self.loglik_individual(theta, sigma))
        return jnp.where(jnp.any(bad_omega) | jnp.any(bad_sigma), -jnp.inf, jnp.sum(ll))

    def _logdensity(self, position) -> Array:
        lp = self.log_prior(position)
        ll = self.log_likelihood(position)
        total = lp + ll
        return jnp.where(jnp.isfinite(total), total, -jnp.inf)

    # ------------------------------------------------------------------ starting points
    def initial_positions(
        self,
        key: Array,
        n_chains: int,
        *,
        map_steps: int = 200,
        learning_rate: float = 0.05,
        jitter: float = 0.1,
    ) -> Array:
        """``(n_chains, dim)`` starting points with finite log-density (see [`starting_points`][])."""
        return self.starting_points(
            key, n_chains, map_steps=map_steps, learning_rate=learning_rate, jitter=jitter
        ).positions

    def starting_points(
        self,
        key: Array,
        n_chains: int,
        *,
        map_steps: int = 200,
        learning_rate: float = 0.05,
        jitter: float = 0.1,
        curvature: bool = True,
    ) -> StartingPoints:
        """Starting points ``(n_chains, dim)`` and a diagonal inverse mass ``(dim,)`` for HMC,
        with the point they scatter around (`mode`) and its curvature (for [`data_weight`][]).

        From the prior medians, `map_steps` Adam steps on the full position (η included; 0 skips
        the optimisation). With `curvature`, the diagonal of the negative Hessian at that point
        (finite differences of the gradient, ``dim + 1`` gradients, [`curvature_diagonal`][])
        gives per-coordinate scales ``s_i = 1/sqrt(H_ii)``: each chain starts at ``x0 + ε``,
        ``ε_i ~ N(0, min(jitter, s_i)²)`` (a uniform jitter would put precisely determined
        coordinates, such as a typical clearance with s ~ 0.002, dozens of posterior SDs away,
        and warm-up would spend its first hundreds of iterations at tiny step sizes coming back),
        and ``s_i²`` is returned as the inverse mass for the first warm-up window (``None``
        without `curvature`; coordinates with non-positive curvature get ``jitter²``). A draw
        with a non-finite log-density is halved until finite (the unperturbed point is the last
        resort).
        """
        x0 = self.prior_median_position()
        # value_and_grad, not logdensity: the MAP compiles it anyway, one program fewer to compile
        if not np.isfinite(float(self.value_and_grad(x0)[0])):
            raise PopulationDataError(
                "the log-density is not finite at the prior medians (the simulation fails for "
                "some subject); check doses, units and the model choice"
            )
        if map_steps > 0:
            x0 = fit_map(self, x0, steps=map_steps, learning_rate=learning_rate)
        hess = curvature_matrix(self, x0) if curvature else None
        h = None if hess is None else np.diag(hess).copy()
        return self.scatter(key, n_chains, x0, h, jitter=jitter, hessian=hess)

    def scatter(self, key: Array, n_chains: int, mode, curvature=None, *, jitter: float = 0.1,
                hessian=None) -> StartingPoints:
        """Chain starting points around `mode` scaled by the diagonal `curvature` (the second
        half of [`starting_points`][], for a mode and curvature computed elsewhere, e.g. mapped
        by [`reparametrized`][]); the full `hessian`, if given, is passed through."""
        x0 = jnp.asarray(mode, float)
        h = None if curvature is None else np.asarray(curvature, float)
        scale = np.full(self.dim, jitter)
        inverse_mass = None
        if h is not None:
            ok = np.isfinite(h) & (h > 0)
            var = np.where(ok, 1.0 / np.where(ok, h, 1.0), jitter**2)
            var = np.clip(var, 1e-8, 1e2)
            scale = np.minimum(jitter, np.sqrt(var))
            inverse_mass = var
        keys = jax.random.split(key, n_chains)
        out = []
        for k in keys:
            shrink = 1.0
            x = x0
            for _ in range(8):
                cand = x0 + shrink * jnp.asarray(scale) * jax.random.normal(k, x0.shape, x0.dtype)
                if np.isfinite(float(self.value_and_grad(cand)[0])):
                    x = cand
                    break
                shrink /= 2
            out.append(x)
        return StartingPoints(jnp.stack(out), inverse_mass, x0, h,
                              None if hessian is None else np.asarray(hessian, float))

    # ------------------------------------------------------------------ predictive checks
    def simulate_predictive(self, values, key: Array, *, n_replicates: int | None = None) -> PredictiveSample:
        """See [`simulate_predictive`][]."""
        return simulate_predictive(self, values, key, n_replicates=n_replicates)

    def __repr__(self) -> str:
        return (
            f"PopulationModel({self.model.name}, {self.n_subjects} subjects, covariates="
            f"{[e.name for e in self.effects]}, dim={self.dim}, gradient={self.gradient})"
        )


# ============================================================================ MAP
def fit_map(
    pm: PopulationModel,
    position: Array | None = None,
    *,
    steps: int = 500,
    learning_rate: float = 0.05,
    final_learning_rate: float = 1e-3,
) -> Array:
    """Maximise the log-density with Adam (cosine-decayed step size) from `position` (default:
    the prior medians). Steps with a non-finite log-density or gradient are skipped; the best
    position seen is returned. Each step is one `value_and_grad` call.

    This is the joint mode over population values *and* η (used for starting points). In the
    non-centred parametrisation the joint mode has no ``-N·log ω`` term, so ω there is pulled up
    towards the prior scale and is not an estimate of the between-subject SD (sample for that);
    typical values and covariate effects are close to the data's (checked in the tests), but the
    direction "typical value vs. mean η" is flat, so allow ~1000 steps for them to settle."""
    import optax

    x = pm.prior_median_position() if position is None else jnp.asarray(position, float)
    schedule = optax.cosine_decay_schedule(
        learning_rate, max(steps, 1), alpha=final_learning_rate / learning_rate
    )
    opt = optax.adam(schedule)

    @jax.jit
    def update(x, state, val, g):
        good = jnp.isfinite(val) & jnp.all(jnp.isfinite(g))
        g = jnp.where(good & ~frozen, g, 0.0)
        upd, new_state = opt.update(-g, state, x)
        x_new = optax.apply_updates(x, upd)
        return jnp.where(good, x_new, x), new_state

    def step(x, state):
        # the model's compiled value_and_grad, then a small compiled Adam update: a jitted step
        # around both would compile the log-density a second time (~10-20 s on a CPU)
        val, g = pm.value_and_grad(x)
        return (*update(x, state, val, g), val)

    # Centred: the joint mode is at ω -> 0 (the -N·log ω term), so ω stays where it starts.
    frozen = jnp.asarray(pm.omega_mask(centred=True))

    state = opt.init(x)
    best_x, best_v = x, -np.inf
    for _ in range(steps):
        x_prev = x
        x, state, val = step(x, state)
        v = float(val)
        if np.isfinite(v) and v > best_v:
            best_x, best_v = x_prev, v
    v = float(pm.value_and_grad(x)[0])
    if np.isfinite(v) and v >= best_v:
        best_x = x
    return best_x


def curvature_matrix(pm: PopulationModel, position: Array, *, rel_step: float = 1e-5,
                     sparse: bool = True) -> np.ndarray:
    """Negative Hessian ``(dim, dim)`` of the log-density at `position`, by forward differences
    of the gradient, symmetrised: ``H_ij ≈ -(∂_j log p(x + h_i e_i) - ∂_j log p(x)) / h_i`` with
    ``h_i = rel_step·max(1, |x_i|)``. Uses the model's own compiled ``value_and_grad`` (the one
    the MAP uses), without compiling another program.

    Subject i's terms depend on its own random effects and the population values only, so the
    Hessian has no entries between two subjects' random effects. With `sparse` (default) that
    structure is used: one gradient per population coordinate (its whole row), and one per random
    effect *k*, moving the k-th random effect of every subject at once (each subject's difference
    is its own column of its block): ``1 + n_pop + n_random_effects`` gradients instead of
    ``dim + 1`` (29 instead of 358 on the bundled study). The population-by-random-effect entries
    come from the population rows. ``sparse=False`` moves every coordinate on its own (the
    check). Non-finite entries are returned as NaN (the caller decides).

    Measured on the bundled example study (centred, at the MAP of the starting points, against
    the covariance of a converged 4 x 1000 fit; smaller is better, 1 is perfect): the square
    root of the condition number of the posterior whitened by a metric is 20.6 for the diagonal
    ``1/H_ii`` that the sampler starts from, 45 for the full Laplace covariance ``H⁻¹`` (39.7 at
    rank 64), 14.7 for the posterior variances and 7.1 for the Fisher low-rank estimate from 800
    posterior draws (another fit, seed 2026: 22.7, 61.7, 54.7, 14.6, 7.2;
    ``experiments/metric_quality.py FIT_DIR``). The joint mode lies up to 11 posterior SDs from
    the posterior mean (the ω directions), so its correlations mislead; the fit therefore starts
    from the diagonal."""
    x = np.asarray(position, float)
    d = x.shape[0]
    h = rel_step * np.maximum(1.0, np.abs(x))
    _, g0 = pm.value_and_grad(jnp.asarray(x))
    g0 = np.asarray(g0)

    def minus_diff(moved):  # -(∇ log p(x + h on `moved`) - ∇ log p(x))
        xi = x.copy()
        xi[moved] += h[moved]
        return -(np.asarray(pm.value_and_grad(jnp.asarray(xi))[1]) - g0)

    n_re = len(pm.bsv_params)
    eta = np.flatnonzero(pm.block_mask("eta")).reshape(pm.n_subjects, n_re) if sparse and n_re else None
    if eta is None:
        hess = np.stack([minus_diff(np.array([i])) / h[i] for i in range(d)])
    else:
        pop = np.setdiff1d(np.arange(d), eta.ravel())
        hess = np.zeros((d, d))
        for i in pop:  # whole rows, the random effects' columns included
            hess[i] = minus_diff(np.array([i])) / h[i]
        hess[np.ix_(eta.ravel(), pop)] = hess[np.ix_(pop, eta.ravel())].T
        for k in range(n_re):  # the k-th random effect of every subject at once
            col = eta[:, k]
            diff = minus_diff(col)
            hess[col[:, None], eta] = diff[eta] / h[col][:, None]
    hess = 0.5 * (hess + hess.T)
    return np.where(np.isfinite(hess), hess, np.nan)


def curvature_diagonal(pm: PopulationModel, position: Array, *, rel_step: float = 1e-5) -> np.ndarray:
    """Diagonal of [`curvature_matrix`][] (the same ``dim + 1`` gradients):
    ``H_ii ≈ -(∂_i log p(x + h e_i) - ∂_i log p(x)) / h``. Non-finite entries are NaN."""
    return np.diag(curvature_matrix(pm, position, rel_step=rel_step)).copy()


# ============================================================================ predictive
def simulate_predictive(
    pm: PopulationModel, values, key: Array, *, n_replicates: int | None = None
) -> PredictiveSample:
    """Replicate data sets for visual predictive checks.

    `values`: population values as a dict of natural units (scalars, or arrays with one leading
    draws axis, as [`PopulationModel.unflatten`][] returns), or positions ``(dim,)`` /
    ``(..., dim)`` (e.g. MCMC draws ``(chains, draws, dim)``). Each replicate draws new η for every
    subject (the data's covariates and doses are kept), simulates at the data's observation
    times and adds residual error ``DV = f·(1 + σ_prop·ε₁) + σ_add·ε₂``. With scalar values
    `n_replicates` (default 1) replicates are drawn; with S draws each draw gives `n_replicates`
    (default 1) replicates, ``R = S·n_replicates``. `below_lloq` flags simulated DVs under the
    LLOQ for observation types that have BLQ rows in the data.
    """
    if isinstance(values, Mapping):
        vals = {k: jnp.asarray(values[k], float) for k in pm.names}
        if all(v.ndim == 0 for v in vals.values()):
            vals = {k: v[None] for k, v in vals.items()}
        pos = jax.vmap(lambda v: pm.to_position(v))(vals)
    else:
        pos = jnp.asarray(values, float).reshape(-1, pm.dim)
    reps = 1 if n_replicates is None else int(n_replicates)
    if reps < 1:
        raise ValueError(f"`n_replicates` must be >= 1; got {n_replicates}")
    pos = jnp.repeat(pos, reps, axis=0)
    keys = jax.random.split(key, pos.shape[0])

    blq_types = [t for t in pm.types if np.any(np.asarray(pm._blq) & (np.asarray(pm._dvid) == t))]
    has_lloq = jnp.isin(pm._dvid, jnp.asarray(blq_types or [-1]))
    lloq_by_type = {}
    for t in blq_types:
        sel = np.asarray(pm._blq) & (np.asarray(pm._dvid) == t)
        lloq_by_type[t] = float(np.median(np.asarray(pm._lloq)[sel]))
    lloq = jnp.zeros(pm._dvid.shape)
    for t, v in lloq_by_type.items():
        lloq = jnp.where(pm._dvid == t, v, lloq)
    lloq = jnp.where(pm._blq, pm._lloq, lloq)

    def one(x, k):
        tree = pm._tree(x)
        k_eta, k1, k2 = jax.random.split(k, 3)
        tree = pm._with_standard_eta(tree, jax.random.normal(k_eta, tree["eta"].shape, tree["eta"].dtype))
        theta = pm._to_natural(pm._individual_u(tree))
        pred, ok = pm._map_subjects(pm._predict, theta, pm._times, *pm._reg)
        f = jnp.where(pm._dvid == 2, pred[:, 1], pred[:, 0])
        sigma = jnp.exp(tree["log_sigma"]).reshape(len(pm.types), 2)
        sp, sa = sigma[pm._type, 0], sigma[pm._type, 1]
        e1 = jax.random.normal(k1, f.shape, f.dtype)
        e2 = jax.random.normal(k2, f.shape, f.dtype)
        dv = f * (1.0 + sp * e1) + sa * e2
        status = jnp.where(ok > 0.5, 0, 1)
        return dv, f, has_lloq & (dv < lloq), status, theta

    dv, f, blq, status, theta = jax.jit(jax.vmap(one))(pos, keys)
    return PredictiveSample(dv, f, blq, status, theta, pm._times, pm._dvid, pm._mask)
