"""The population log-density (NLME-style): typical values, covariates, BSV and residual error.

(One concept, the log-density over the flat position with its layout and parametrisations, hence
above 25 KB; its data checks, priors, optimisation and predictive checks are modules of their own.)

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

The covariate map is `pkpd_jax.population` (one for the fit, trials, the twin and the quantum
cohorts).

**Residual error.** ``DV ~ N(f, (σ_prop·f)² + σ_add²)`` per observation type, BLQ rows by M3
(`pkpd_jax.population`'s residual model); the LLOQ of a BLQ row is ``obs_lloq`` when known (> 0),
else the stored DV when it is > 0 (the data convention writes DV = LLOQ on BLQ rows), else the
smallest known LLOQ / smallest quantified DV of that type (`pkpd_jax.inference.observations`).
A PK-only model ignores biomarker rows (with a warning).

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

**Priors**: weakly informative, see `pkpd_jax.inference.priors` and
[`PopulationModel.prior_table`][]; ``η ~ N(0, 1)``.

**Integration and gradients.** Each subject's predictions depend only on its own P parameters
and come from `pkpd_jax.population.individual_predictor` (the one-loop explicit Runge-Kutta
integrator with forward sensitivities in a custom VJP for nonlinear models, the exact
matrix-exponential path for linear ones, ``method="ode"`` for the simulator's per-interval
``diffeqsolve``; `DEFAULT_CONFIG`). ``gradient="reverse"`` differentiates the simulator with
diffrax's checkpointed reverse-mode adjoint instead (slower; kept for checking). Forward-mode
transforms (``jax.jvp``) of the log-density are not supported with ``gradient="forward"``. On the
bundled example study (48 subjects, 357 unknowns, 2 CPU cores) ``value_and_grad`` takes ~8 ms
and 4 vmapped chains ~25 ms (``benchmarks/bench_likelihood.py``).

**Failures.** A subject whose simulation fails (status ≠ 0, non-finite prediction or
non-finite parameters) makes the log-density ``-inf`` (never NaN; the gradient is then finite).
So do unconstrained individual parameters, ``log ω`` or ``log σ`` beyond ±200 (outside the prior
mass): they are not exponentiated, so that no ``0·inf`` reaches the gradient.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree
from jaxtyping import Array, Float

from ..data.dataset import Dataset
from ..models.coupling import PKPDModel
from ..population import (
    DEFAULT_CONFIG,
    CovariateSpec,
    PopulationDataWarning,
    covariate_design,
    dataset_covariates,
    effect_matrix,
    individual_predictor,
    normal_logpdf,
    observation_loglik,
    regimen_arrays,
    sigma_names,
    to_natural,
    to_unconstrained,
    typical_unconstrained,
    uses_one_loop,
)
from ..solve import SolverConfig
from .observations import fitted_observations, resolve_lloq
from .optimize import StartingPoints, scatter, starting_points
from .predictive import PredictiveSample, simulate_predictive
from .priors import build_priors, prior_table


__all__ = ["PopulationModel"]


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

        fitted = fitted_observations(model, dataset, self.types)
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
        n = dataset.n_subjects
        e = len(self.effects)
        self._X = jnp.asarray(covariate_design(self.effects, dataset_covariates(dataset)))
        self._A = jnp.asarray(effect_matrix(self.effects, names))

        # ---- observations
        dvid = np.asarray(dataset.obs_dvid)
        mask = fitted
        self._mask = jnp.asarray(mask)
        self._blq = jnp.asarray(mask & np.asarray(dataset.obs_blq))
        self._dvid = jnp.asarray(dvid)
        self._type = jnp.asarray(np.clip(dvid - 1, 0, len(self.types) - 1))
        self._dv = jnp.asarray(np.asarray(dataset.obs_dv, float))
        self._lloq = jnp.asarray(resolve_lloq(dataset, mask, self.types))
        self._times = jnp.asarray(dataset.obs_time, float)
        self._reg = regimen_arrays(dataset.regimen)

        # ---- priors
        self.sigma_names = sigma_names(self.types)
        self._priors_given = dict(priors or {})
        self._priors = build_priors(
            self.params, self.effects, self._priors_given, dataset, mask, np.asarray(self._blq),
            self.bsv_params, self.types,
        )

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

        self._predict = individual_predictor(model, config, gradient)
        # The one-loop integrator advances a batch of subjects in lockstep until the slowest is
        # done: subjects without any dose (placebo; a few steps) run as a batch of their own, so
        # that the dosed ones do not carry them through hundreds of iterations.
        self._groups = None
        if uses_one_loop(model, config, gradient):
            dosed = np.any(np.asarray(dataset.regimen.amount) > 0, axis=1)
            if dosed.any() and not dosed.all():
                groups = (np.flatnonzero(dosed), np.flatnonzero(~dosed))
                self._groups = (groups, np.argsort(np.concatenate(groups)))
        self.logdensity = jax.jit(self._logdensity)
        self.value_and_grad = jax.jit(jax.value_and_grad(self._logdensity))

    # ------------------------------------------------------------------ priors
    def prior_table(self) -> list[dict]:
        """One record per population parameter: name, distribution, scale, natural-unit median."""
        return prior_table(self.params, self.effects, self._priors, self.bsv_params, self.sigma_names)

    # ------------------------------------------------------------------ position algebra
    @property
    def n_subjects(self) -> int:
        return self.dataset.n_subjects

    def _tree(self, position):
        return self._unravel(jnp.asarray(position))

    def _typical_u(self, tree):
        return typical_unconstrained(tree["mu"], tree["cov"], self._X, self._A)

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
        return to_natural(self.params, u)

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
        u_ind = to_unconstrained(self.params, theta)
        u_typ = self._typical_u(tree)
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
        ll_obs = observation_loglik(self._dv, f, sp, sa, self._blq, self._lloq)
        ll = jnp.sum(jnp.where(self._mask, ll_obs, 0.0), axis=1)
        return jnp.where(ok, ll, -jnp.inf)

    def log_prior(self, position) -> Array:
        """Log prior density of `position`, including the log-Jacobians of log ω and log σ."""
        tree = self._tree(position)
        pr = self._priors
        lp = jnp.sum(normal_logpdf(tree["mu"], pr["mu_loc"], pr["mu_sd"]))
        lp += jnp.sum(normal_logpdf(tree["cov"], pr["cov_loc"], pr["cov_sd"]))
        for key, scale in (("log_omega", pr["omega_scale"]), ("log_sigma", pr["sigma_scale"])):
            z = tree[key]
            s, bad = _safe_exp(z)
            lp += jnp.sum(jnp.where(bad, -jnp.inf, _halfnormal_logpdf(s, scale) + z))
        if not self.centered_params:
            lp += jnp.sum(normal_logpdf(tree["eta"], 0.0, 1.0))
        else:  # centred: g(θ_i) ~ N(typical, ω), the density of η ~ N(0, 1) plus log|dη/dg(θ_i)|
            omega, _ = _safe_exp(tree["log_omega"])
            u_typ = self._typical_u(tree)[:, self._bsv_idx]
            loc = jnp.where(self._cmask[None, :], u_typ, 0.0)
            scale = jnp.where(self._cmask[None, :], omega[None, :], 1.0)
            lp += jnp.sum(normal_logpdf(tree["eta"], loc, scale))
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
        """Starting points for HMC around the joint mode (`pkpd_jax.inference.optimize.starting_points`)."""
        return starting_points(self, key, n_chains, map_steps=map_steps, learning_rate=learning_rate,
                               jitter=jitter, curvature=curvature)

    def scatter(self, key: Array, n_chains: int, mode, curvature=None, *, jitter: float = 0.1,
                hessian=None) -> StartingPoints:
        """Chain starting points around `mode` (see `pkpd_jax.inference.optimize.scatter`)."""
        return scatter(self, key, n_chains, mode, curvature, jitter=jitter, hessian=hessian)

    # ------------------------------------------------------------------ predictive checks
    def simulate_predictive(self, values, key: Array, *, n_replicates: int | None = None) -> PredictiveSample:
        """See [`simulate_predictive`][]."""
        return simulate_predictive(self, values, key, n_replicates=n_replicates)

    def __repr__(self) -> str:
        return (
            f"PopulationModel({self.model.name}, {self.n_subjects} subjects, covariates="
            f"{[e.name for e in self.effects]}, dim={self.dim}, gradient={self.gradient})"
        )
