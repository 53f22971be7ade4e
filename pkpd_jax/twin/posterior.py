"""One patient's individual posterior under a population model: MAP + Laplace, mixed over draws.

One concept: the twin's individual posterior (its population, objective, Laplace fit and mixture
over population draws); the patient records are in `twin/patient.py`.

**Model.** For population draw ``k`` (typical values, covariate effects, ``ω``, ``σ``) and the
patient's covariates ``x``, the individual parameters follow the population model's one covariate
map (`pkpd_jax.population`)::

    g(θ) = u_k(x) + ω_k ⊙ η,   u_k(x) = g(typical_k) + Σ_e coef_e,k · x_e · [e acts on θ],
    η ~ N(0, I)  (one coordinate per parameter with between-subject variability)

and the observations are ``DV ~ N(f, (σ_prop·f)² + σ_add²)`` per type (DVID 1 concentration,
DVID 2 biomarker), BLQ rows with the M3 likelihood ``Φ((LLOQ − f)/sd)`` (the population model's
residual error model); quantified concentrations at or before the first dose are not used (the
model predicts 0 there), as in the population fit. The predictions use the fit's integrator and
settings (`pkpd_jax.population.individual_predictor`, `DEFAULT_CONFIG`): the explicit
Runge-Kutta one-loop solver with forward sensitivities for nonlinear models, the exact matrix
exponential for linear ones.

**Per draw: MAP and Laplace.** The negative log posterior in η,
``L_k(η) = −log p(y | η, draw k) + ½‖η‖²``, is minimised by Levenberg-Marquardt with the
Gauss-Newton/Fisher matrix ``Jᵀ W J + I`` (``J = ∂f/∂η`` from the integrator's forward
sensitivities ∂y/∂θ chained to η; ``W`` the expected
information of each observation about its prediction,
``1/v + 2σ_prop⁴f²/v²`` with ``v = (σ_prop·f)² + σ_add²``). The posterior is then approximated by
``N(η̂_k, H_k⁻¹)`` with ``H_k`` the Hessian of ``L_k`` at ``η̂_k`` — by default central
differences of the exact forward-mode gradient (``2B`` gradient calls of the already compiled
evaluation; the exact Hessian, ``hessian="exact"``, forward mode over the sensitivities,
compiles for minutes for ODE models) — falling back to the Fisher matrix where it is not
positive definite (Laplace approximation; Tierney & Kadane 1986, JASA 81:82-86; the idea of
NONMEM's FOCE-I conditional estimates).

**Integrating over population uncertainty.** With ``K`` population draws from a fit's posterior
``p(pop | study)``, the patient's posterior is the mixture
``Σ_k w_k N(η̂_k, H_k⁻¹)`` (each mapped through its own draw's ``u_k``, ``ω_k``) with weights
``w_k ∝ p(y | draw k)``, the Laplace evidence ``exp(−L_k(η̂_k))·|H_k|^{-1/2}``: the draws are
reweighted by how well they explain this patient (importance weights from ``p(pop | study)`` to
``p(pop | study, patient)``). ``K = 1`` (e.g. the known truth of a simulated study, or
posterior means) fixes the population values.

[`hmc_check`][] samples the same per-draw posterior with NUTS (blackjax) for a check of the
Laplace approximation on one patient.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from ..models.coupling import PKPDModel
from ..population import (
    DEFAULT_CONFIG,
    PopulationDraws,
    covariate_design,
    effect_matrix,
    fisher_weight,
    individual_predictor,
    jacobian_predictor,
    observation_loglik,
    regimen_arrays,
    to_natural,
    typical_unconstrained,
)
from ..solve import SolverConfig
from .patient import PatientArrays, PatientRecord, TwinError, stack_patients


__all__ = [
    "TwinError",
    "PatientRecord",
    "PatientArrays",
    "TwinPopulation",
    "TwinPosterior",
    "individual_posterior",
    "individual_posteriors",
    "neg_log_posterior",
    "predictions",
    "predictions_and_sensitivities",
    "individual_theta",
    "hmc_check",
    "TWIN_CONFIG",
]

#: Solver settings of the twin: those of the population fit (`pkpd_jax.population.DEFAULT_CONFIG`),
#: so that a patient's likelihood is the one the population was fitted with.
TWIN_CONFIG = DEFAULT_CONFIG


# ============================================================================ the population
@dataclass
class TwinPopulation(PopulationDraws):
    """What the twin needs from a population model: population draws with random effects and
    the residual SDs ([`PopulationDraws`][pkpd_jax.population.PopulationDraws]), ``K`` draws
    ``values {name: (K,)}`` (typical values, covariate coefficients, ``omega_*``,
    ``sigma_{prop,add}_{PK,PD}``)."""

    def __post_init__(self):
        vals = {k: np.asarray(v, float).reshape(-1) for k, v in self.values.items()}
        need = (
            list(self.model.param_names)
            + [e.name for e in self.effects]
            + [f"omega_{b}" for b in self.bsv_params]
            + list(self.sigma_names)
        )
        missing = [n for n in need if n not in vals]
        if missing:
            raise TwinError(f"population values miss {missing} (model {self.model.name}).")
        sizes = {vals[n].size for n in need}
        if len(sizes) != 1:
            raise TwinError(
                f"every population value needs the same number of draws; got sizes {sorted(sizes)}."
            )
        if not self.bsv_params:
            raise TwinError(
                "the population model has no between-subject variability: nothing is individual."
            )
        super().__post_init__()

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_posterior(
        cls, post: PopulationDraws, residual: Mapping[str, float] | None = None
    ) -> TwinPopulation:
        """From population draws (e.g. a `pkpd_jax.trials.virtual.Posterior`); its values must
        hold the ``sigma_*``, or pass `residual` ``{sigma_name: value}`` for every draw."""
        vals = dict(post.values)
        for k, v in (residual or {}).items():
            vals[k] = np.full(post.n_draws, float(v))
        return cls(
            post.model,
            tuple(post.effects),
            tuple(post.bsv_params),
            vals,
            dict(post.study_covariates),
            post.dose_duration,
            post.source,
            dict(post.meta),
        )

    @classmethod
    def from_fit(cls, fit_dir, *, n_draws: int | None = 8, seed: int = 0) -> TwinPopulation:
        """`n_draws` population draws of a fit directory (`pkpd-jax fit`), picked at random
        (seeded); raises [`TwinError`][] for a PK-only fit."""
        from ..inference.fitdir import load_draws

        draws = load_draws(fit_dir, n_draws=n_draws, seed=seed)
        if draws.model.pd is None:
            raise TwinError(
                f"the fit in {fit_dir} is PK-only: the twin forecasts the biomarker and needs a "
                "PK/PD fit (pkpd-jax fit --pd ...)."
            )
        return cls.from_posterior(draws)

    @classmethod
    def from_truth(cls, truth: Mapping | str | Path) -> TwinPopulation:
        """One draw at the known truth of a simulated study (e.g. the bundled ``truth.json``)."""
        return cls.from_posterior(PopulationDraws.from_truth(truth, n_study=1000))

    # ------------------------------------------------------------------ checks and arrays
    def check_patient(self, patient: PatientRecord) -> None:
        """Raise [`TwinError`][] when the patient lacks a covariate the model needs, has biomarker
        values a PK-only model cannot use, or doses into a compartment the model lacks."""
        missing = [c for c in self.covariates_needed if c not in patient.covariates]
        if missing:
            need = ", ".join(f"{e.name} ({e.covariate})" for e in self.effects if e.covariate in missing)
            raise TwinError(
                f"patient {patient.id} has no {', '.join(missing)} column, which the population "
                f"model needs for its covariate effects {need}; add the column(s) to the patient file."
            )
        for c in self.covariates_needed:
            x = patient.covariates[c]
            kind = next(e.kind for e in self.effects if e.covariate == c)
            if (
                not math.isfinite(x)
                or (kind == "power" and x <= 0)
                or (kind == "factor" and x not in (0.0, 1.0))
            ):
                need = "> 0" if kind == "power" else "0 or 1"
                raise TwinError(f"patient {patient.id}: covariate {c} must be {need}; got {x:g}.")
        a = patient.arrays
        dvid = np.asarray(a.dvid)[np.asarray(a.mask)]
        if self.model.pd is None and np.any(dvid == 2):
            raise TwinError(
                f"the population model {self.model.name} has no PD model but patient {patient.id} "
                "has biomarker values (DVID 2): use a PK/PD fit."
            )
        cmt = np.asarray(a.regimen.cmt)[np.asarray(a.regimen.amount) > 0]
        if cmt.size and cmt.max() >= self.model.n_pk_states:
            raise TwinError(
                f"patient {patient.id} doses into compartment {int(cmt.max()) + 1} but the model "
                f"{self.model.name} has {self.model.n_pk_states} PK compartments: a fit of another model?"
            )
        if not np.any(np.asarray(a.regimen.amount) > 0):
            raise TwinError(f"patient {patient.id} has no dose (EVID 1, AMT > 0).")

    def arrays(self, covariates: Mapping[str, float]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(u_typ (K, P), omega (K, B), sigma (K, 2·types))`` for a patient's covariates."""
        cov = {c: np.asarray([covariates[c]], float) for c in self.covariates_needed}
        X = covariate_design(self.effects, cov) if cov else np.zeros((1, 0))
        A = effect_matrix(self.effects, self.model.param_names)
        u = np.asarray(typical_unconstrained(self.mu(), self.coef(), X, A))[:, 0, :]
        return u, self.omega(), self.sigma()

    def theta(self, u_typ, omega, eta):
        """Natural-unit parameters for unconstrained typical values, ω and η (any batch axes)."""
        return individual_theta(self.model, self.bsv_index, u_typ, omega, eta)


def individual_theta(model: PKPDModel, bsv_index, u_typ, omega, eta):
    """``g⁻¹(u_typ + ω ⊙ η)`` (η on the parameters `bsv_index`; any batch axes)."""
    oe = jnp.asarray(omega) * jnp.asarray(eta)
    u = jnp.asarray(u_typ)
    u = jnp.broadcast_to(u, jnp.broadcast_shapes(u.shape[:-1], oe.shape[:-1]) + u.shape[-1:])
    u = u.at[..., np.asarray(bsv_index)].add(oe)
    return to_natural(model.params, u)


# ============================================================================ densities
def predictions(model: PKPDModel, theta, data: PatientArrays, config: SolverConfig = TWIN_CONFIG):
    """Predicted values ``(M,)`` at the observation rows (concentration or biomarker by DVID) and
    a status (0 = success, 1 = failed solve or non-finite prediction), from the population
    likelihood's predictor (`pkpd_jax.population.individual_predictor`)."""
    pred, ok = individual_predictor(model, config)(theta, data.time, *regimen_arrays(data.regimen))
    return jnp.where(data.dvid == 2, pred[1], pred[0]), jnp.where(ok > 0.5, 0, 1)


def predictions_and_sensitivities(model: PKPDModel, bsv_index, u_typ, omega, eta, data: PatientArrays,
                                  config: SolverConfig = TWIN_CONFIG):
    """Predictions ``f (M,)``, their sensitivities ``J = ∂f/∂η (M, B)`` and a status (0 =
    success): the likelihood's integrator with forward sensitivities ∂y/∂θ
    (`pkpd_jax.population.jacobian_predictor`), chained to η through ``θ(η)``. Forward-mode
    differentiable (the exact Hessian differentiates it once more)."""
    theta_of = lambda e: individual_theta(model, bsv_index, u_typ, omega, e)  # noqa: E731
    theta = theta_of(eta)
    dtheta = jax.jacfwd(theta_of)(eta)  # (P, B)
    pred, ok, jac = jacobian_predictor(model, config)(theta, data.time, *regimen_arrays(data.regimen))
    pd = data.dvid == 2
    f = jnp.where(pd, pred[1], pred[0])
    J = jnp.where(pd[:, None], jac[1], jac[0]) @ dtheta
    return f, J, jnp.where(ok > 0.5, 0, 1)


def _residual_sds(data: PatientArrays, sigma):
    s = sigma.reshape(-1, 2)
    typ = jnp.clip(data.dvid - 1, 0, s.shape[0] - 1)
    return s[typ, 0], s[typ, 1], data.mask & (data.dvid <= s.shape[0])


def _obs_nll(f, data: PatientArrays, sigma):
    """Per-observation negative log-likelihood ``(M,)`` given predictions `f` (the population
    model's residual error and M3)."""
    sp, sa, use = _residual_sds(data, sigma)
    nll = -observation_loglik(data.dv, f, sp, sa, data.blq, data.lloq)
    return jnp.where(use, nll, 0.0)


def _fisher_weight(f, data: PatientArrays, sigma):
    """Expected information of each observation about its prediction: ``1/v + 2σ_p⁴f²/v²``."""
    sp, sa, _ = _residual_sds(data, sigma)
    return fisher_weight(f, sp, sa)


def neg_log_posterior(
    pop: TwinPopulation,
    eta,
    u_typ,
    omega,
    sigma,
    data: PatientArrays,
    config: SolverConfig = TWIN_CONFIG,
):
    """``L(η) = −log p(y | η) + ½‖η‖²`` for one population draw (``+inf`` if the solve fails)."""
    f, status = predictions(pop.model, pop.theta(u_typ, omega, eta), data, config)
    val = jnp.sum(_obs_nll(f, data, sigma)) + 0.5 * jnp.sum(eta**2)
    return jnp.where((status == 0) & jnp.isfinite(val), val, jnp.inf)


def _lm_pieces(pop, config):
    """Jitted, vmapped (patients × draws) evaluation ``(L, ∇L, Fisher matrix, ok)`` and the exact
    Hessian (compiled on first use: forward over forward mode compiles slowly)."""

    bsv_index = pop.bsv_index

    def grad_pieces(eta, u, om, sg, data):
        f, J, status = predictions_and_sensitivities(pop.model, bsv_index, u, om, eta, data, config)
        nll = lambda ff: jnp.sum(_obs_nll(ff, data, sg))  # noqa: E731
        return f, J, status, nll, J.T @ jax.grad(nll)(f) + eta

    def evaluate(eta, u, om, sg, data):
        f, J, status, nll, g = grad_pieces(eta, u, om, sg, data)
        nll = lambda ff: jnp.sum(_obs_nll(ff, data, sg))  # noqa: E731
        val = nll(f) + 0.5 * jnp.sum(eta**2)
        use = (data.mask & (data.dvid >= 1) & (data.dvid <= sg.size // 2)).astype(f.dtype)
        A = J.T @ ((use * _fisher_weight(f, data, sg))[:, None] * J) + jnp.eye(eta.size, dtype=f.dtype)
        ok = (status == 0) & jnp.isfinite(val) & jnp.all(jnp.isfinite(g)) & jnp.all(jnp.isfinite(A))
        return jnp.where(ok, val, jnp.inf), g, A, ok

    def hessian(eta, u, om, sg, data):  # forward mode over the sensitivities' gradient
        return jax.jacfwd(lambda e: grad_pieces(e, u, om, sg, data)[4])(eta)

    # inner vmap over draws (data shared), outer over patients
    def vv(fn):
        inner = jax.vmap(fn, in_axes=(0, 0, 0, 0, None))
        return jax.jit(jax.vmap(inner, in_axes=(0, 0, 0, 0, 0)))

    return vv(evaluate), vv(hessian)


_PIECES: dict = {}


def _pieces(pop: TwinPopulation, config: SolverConfig):
    key = (
        pop.model.name,
        tuple(pop.bsv_params),
        pop.types,
        config.rtol,
        config.atol,
        config.max_steps,
        type(config.solver).__name__,
        config.method,
    )
    if key not in _PIECES:
        _PIECES[key] = _lm_pieces(pop, config)
    return _PIECES[key]


def fd_hessian(evaluate, eta, args, *, step: float = 1e-4) -> np.ndarray:
    """Central differences of the forward-mode gradient: ``H[..., :, i] = (∇L(η + h·e_i) −
    ∇L(η − h·e_i)) / 2h``, symmetrised (``2B`` calls of the compiled evaluation)."""
    b = eta.shape[-1]
    cols = []
    for i in range(b):
        e = jnp.zeros(b).at[i].set(step)
        gp = np.asarray(evaluate(eta + e, *args)[1])
        gm = np.asarray(evaluate(eta - e, *args)[1])
        cols.append((gp - gm) / (2 * step))
    H = np.stack(cols, -1)
    return 0.5 * (H + np.swapaxes(H, -1, -2))


# ============================================================================ the posterior
@dataclass
class TwinPosterior:
    """A patient's posterior: per population draw ``k`` the MAP ``eta[k]`` and the Laplace
    covariance ``cov[k]`` of η, mixed with weights ``weights[k]`` (see the module docstring)."""

    population: TwinPopulation
    patient: PatientRecord
    u_typ: np.ndarray  # (K, P)
    omega: np.ndarray  # (K, B)
    sigma: np.ndarray  # (K, S)
    eta: np.ndarray  # (K, B)
    cov: np.ndarray  # (K, B, B)
    log_evidence: np.ndarray  # (K,)
    converged: np.ndarray  # (K,)
    hessian_kind: np.ndarray  # (K,) "exact" or "fisher"

    @property
    def weights(self) -> np.ndarray:
        le = np.where(np.isfinite(self.log_evidence), self.log_evidence, -np.inf)
        w = np.exp(le - np.max(le))
        return w / w.sum()

    @property
    def map_theta(self) -> np.ndarray:
        """Individual parameters ``(P,)`` at the MAP of the heaviest draw."""
        k = int(np.argmax(self.weights))
        return np.asarray(self.population.theta(self.u_typ[k], self.omega[k], self.eta[k]))

    def log_param_moments(self, name: str) -> tuple[float, float]:
        """Posterior mean and SD of ``g(θ_name)`` (log for positive parameters): the mixture's
        moments of the Laplace components (exact for a Gaussian mixture)."""
        names = self.population.model.param_names
        if name not in names:
            raise TwinError(f"unknown parameter {name!r}; the model has {', '.join(names)}.")
        j = names.index(name)
        w = self.weights
        if name in self.population.bsv_params:
            b = self.population.bsv_params.index(name)
            means = self.u_typ[:, j] + self.omega[:, b] * self.eta[:, b]
            var = self.omega[:, b] ** 2 * self.cov[:, b, b]
        else:
            means, var = self.u_typ[:, j], np.zeros(len(w))
        # centred on one component: equal component means (a parameter without random effect
        # and no uncertainty in its typical value) give exactly that mean and SD 0
        m = float(means[0] + np.sum(w * (means - means[0])))
        return m, float(np.sqrt(np.sum(w * (var + (means - m) ** 2))))

    def sample_eta(self, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """``n`` draws ``(component (n,), η (n, B))`` from the mixture (seeded)."""
        rng = np.random.default_rng(seed)
        comp = rng.choice(len(self.weights), size=n, p=self.weights)
        z = rng.standard_normal((n, self.eta.shape[1]))
        L = np.linalg.cholesky(self.cov)
        eta = self.eta[comp] + np.einsum("nij,nj->ni", L[comp], z)
        return comp, eta

    def sample(self, n: int, seed: int = 0) -> np.ndarray:
        """``n`` individual parameter vectors ``(n, P)`` (natural units) from the posterior."""
        comp, eta = self.sample_eta(n, seed)
        return np.asarray(self.population.theta(self.u_typ[comp], self.omega[comp], eta))

    def summary(self, level: float = 0.9, n: int = 4000, seed: int = 0) -> dict:
        """Per parameter: MAP (heaviest draw), posterior median and the central `level` interval
        (from `n` mixture draws), and the posterior SD of the log parameter (about its CV; logit
        for fractions), key ``"cv"``."""
        th = self.sample(n, seed)
        lo, hi = (1 - level) / 2, (1 + level) / 2
        out = {}
        for j, name in enumerate(self.population.model.param_names):
            _, sd = self.log_param_moments(name)
            out[name] = {
                "map": float(self.map_theta[j]),
                "median": float(np.median(th[:, j])),
                "interval": [float(np.quantile(th[:, j], lo)), float(np.quantile(th[:, j], hi))],
                "cv": sd,
                "individual": name in self.population.bsv_params,
            }
        return out


def individual_posteriors(
    pop: TwinPopulation,
    patients,
    *,
    config: SolverConfig = TWIN_CONFIG,
    max_iter: int = 60,
    tol: float = 1e-6,
    eta0=None,
    hessian: str = "fd",
) -> list[TwinPosterior]:
    """MAP + Laplace for several patients at once (equal array shapes; see [`stack_patients`][]),
    every population draw of `pop`. Returns one [`TwinPosterior`][] per patient.

    `eta0`: optional starting points ``(patients, K, B)`` (e.g. the previous posterior's MAP when
    one observation was added); default 0 (the typical patient).

    `hessian`: the Laplace curvature: ``"fd"`` (default; central differences of the exact
    forward-mode gradient, 2B gradient calls of the already compiled evaluation), ``"exact"``
    (forward over forward mode; exact but slow to compile for ODE models) or ``"fisher"`` (the
    expected information ``JᵀWJ + I``). A curvature that is not positive definite falls back to
    the Fisher matrix (`TwinPosterior.hessian_kind` says which was used).
    """
    if hessian not in ("fd", "exact", "fisher"):
        raise ValueError(f"`hessian` must be 'fd', 'exact' or 'fisher'; got {hessian!r}.")
    patients = list(patients)
    for p in patients:
        pop.check_patient(p)
    data = stack_patients(patients)
    arrs = [pop.arrays(p.covariates) for p in patients]
    u = jnp.asarray(np.stack([a[0] for a in arrs]))
    om = jnp.asarray(np.stack([a[1] for a in arrs]))
    sg = jnp.asarray(np.stack([a[2] for a in arrs]))
    n, k, b = om.shape
    evaluate, exact_hessian = _pieces(pop, config)
    args = (u, om, sg, data)
    eta = jnp.zeros((n, k, b)) if eta0 is None else jnp.asarray(eta0, float).reshape(n, k, b)
    val, g, A, ok = evaluate(eta, *args)
    if eta0 is not None and not bool(jnp.all(ok)):
        eta = jnp.where(ok[..., None], eta, 0.0)
        val, g, A, ok = evaluate(eta, *args)
    if not bool(jnp.all(ok)):
        bad = [patients[i].id for i in np.flatnonzero(~np.all(np.asarray(ok), axis=1))]
        raise TwinError(
            f"the simulation fails at the typical parameters for patient(s) {bad[:5]}; "
            "check the doses and units."
        )
    lam = jnp.full((n, k), 1e-3)
    done = np.zeros((n, k), bool)
    eye = jnp.eye(b)
    for _ in range(max_iter):
        done = done | (np.asarray(jnp.max(jnp.abs(g), axis=-1)) < tol)
        if done.all():
            break
        M = A + lam[..., None, None] * (A * eye + eye)
        cand = eta - jnp.linalg.solve(M, g[..., None])[..., 0]
        v2, g2, A2, ok2 = evaluate(cand, *args)
        better = ok2 & (v2 <= val) & jnp.asarray(~done)
        # a step that no longer changes the value: converged to round-off
        tiny = np.asarray(better & (jnp.abs(v2 - val) < 1e-13 * (1 + jnp.abs(val))))
        eta = jnp.where(better[..., None], cand, eta)
        val = jnp.where(better, v2, val)
        g = jnp.where(better[..., None], g2, g)
        A = jnp.where(better[..., None, None], A2, A)
        lam = jnp.where(better, jnp.maximum(lam / 3, 1e-9), lam * 4)
        done = done | tiny | (np.asarray(lam) > 1e8)
    if hessian == "exact":
        Hn = np.asarray(exact_hessian(eta, *args))
        Hn = 0.5 * (Hn + np.swapaxes(Hn, -1, -2))
    elif hessian == "fd":
        Hn = fd_hessian(evaluate, eta, args)
    else:
        Hn = np.full(A.shape, np.nan)
    An = np.asarray(A)
    eig = np.linalg.eigvalsh(np.where(np.isfinite(Hn), Hn, 0.0))
    exact = np.all(np.isfinite(Hn), axis=(-1, -2)) & (eig[..., 0] > 1e-8)
    Huse = np.where(exact[..., None, None], Hn, An)
    cov = np.linalg.inv(Huse)
    cov = 0.5 * (cov + np.swapaxes(cov, -1, -2))
    logdet = np.linalg.slogdet(Huse)[1]
    log_ev = -np.asarray(val) - 0.5 * logdet
    conv = np.asarray(jnp.max(jnp.abs(g), axis=-1)) < max(tol, 1e-4)
    eta_n = np.asarray(eta)
    return [
        TwinPosterior(
            pop,
            p,
            np.asarray(u[i]),
            np.asarray(om[i]),
            np.asarray(sg[i]),
            eta_n[i],
            cov[i],
            log_ev[i],
            conv[i],
            np.where(exact[i], hessian, "fisher"),
        )
        for i, p in enumerate(patients)
    ]


def individual_posterior(pop: TwinPopulation, patient: PatientRecord, **kw) -> TwinPosterior:
    """MAP + Laplace of one patient under every population draw of `pop` (see the module doc)."""
    return individual_posteriors(pop, [patient], **kw)[0]


# ============================================================================ NUTS check
def hmc_check(
    post: TwinPosterior,
    *,
    component: int | None = None,
    num_warmup: int = 300,
    num_samples: int = 500,
    seed: int = 0,
    config: SolverConfig = TWIN_CONFIG,
) -> dict:
    """Sample η of one population draw (default: the heaviest) with NUTS (blackjax window
    adaptation) and compare with its Laplace approximation: returns the NUTS mean and covariance
    of η and of log CL-like individual parameters, and the Laplace ones."""
    import blackjax

    pop = post.population
    k = int(np.argmax(post.weights)) if component is None else int(component)
    u, om, sg = (jnp.asarray(x[k]) for x in (post.u_typ, post.omega, post.sigma))
    data = post.patient.arrays
    def logdensity(eta):  # reverse mode: the likelihood predictor's custom VJP
        val = neg_log_posterior(pop, eta, u, om, sg, data, config)
        return -jnp.where(jnp.isfinite(val), val, 1e30)

    key_w, key_s = jax.random.split(jax.random.key(seed))
    warm = blackjax.window_adaptation(blackjax.nuts, logdensity)
    (state, params), _ = warm.run(key_w, jnp.asarray(post.eta[k]), num_steps=num_warmup)
    kernel = jax.jit(blackjax.nuts(logdensity, **params).step)

    def body(st, key):
        st, info = kernel(key, st)
        return st, (st.position, info.is_divergent)

    _, (draws, div) = jax.lax.scan(body, state, jax.random.split(key_s, num_samples))
    draws = np.asarray(draws)
    return {
        "component": k,
        "nuts_mean": draws.mean(0),
        "nuts_cov": np.cov(draws.T),
        "laplace_mean": post.eta[k],
        "laplace_cov": post.cov[k],
        "divergences": int(np.sum(div)),
        "draws": draws,
    }
