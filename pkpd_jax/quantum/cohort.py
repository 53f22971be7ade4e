"""Synthetic cohorts drawn from a population model: covariates -> individual (log-)parameters.

A [`CovariateModel`][] is the generating model of the individual parameters, taken from a
[`PopulationModel`][pkpd_jax.inference.likelihood.PopulationModel] at one or several positions (posterior
draws, or the single true position of the bundled example study)::

    log θ_ip = μ_p(s_i) + Σ_e β_e(s_i)·x_ie·[e acts on p] + ω_p(s_i)·η_ip,   η ~ N(0, 1)

with ``x = log(BW/70)`` for a power effect and the 0/1 flag for a factor effect (``β`` = log
factor), and ``s_i`` a posterior draw picked at random for each synthetic subject (so that the
cohort carries the posterior uncertainty). The noise-free covariate function is
``E[log θ | x] = mean_s μ(s) + Σ_e mean_s β_e(s)·x_e`` (exact: the model is linear in the draws),
and for a single position it is the population model's typical-value equation.

Covariates: [`cohort_from_truth`][] uses the distributions documented in ``truth.json``
(``uniform(50, 100) kg`` body weight, co-medication with probability 0.35); [`cohort_from_fit`][]
resamples the fitted study's subjects (BW and COMED jointly) and jitters the continuous covariates
with a Gaussian kernel (Silverman's bandwidth, reflected into the observed range), so that a
10,000-subject cohort does not repeat 48 body weights.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..population import PopulationDraws, covariate_design, effect_matrix, typical_unconstrained


__all__ = ["Cohort", "CovariateModel", "cohort_from_truth", "cohort_from_fit", "truth_population"]


@dataclass(frozen=True)
class Cohort:
    """Covariates ``(N, C)`` and log-parameters ``(N, P)`` of synthetic (or real) subjects.

    `noise_free` is ``E[log θ | covariates]`` under the generating model (``None`` when unknown).
    """

    covariate_names: tuple[str, ...]
    covariates: np.ndarray
    param_names: tuple[str, ...]
    log_params: np.ndarray
    noise_free: np.ndarray | None = None

    @property
    def n(self) -> int:
        return self.covariates.shape[0]

    def split(self, n_test: int, seed: int = 0) -> tuple[Cohort, Cohort]:
        """Random (train, test) split with `n_test` test subjects."""
        if not 0 < n_test < self.n:
            raise ValueError(f"n_test must be between 1 and {self.n - 1}; got {n_test}.")
        perm = np.random.default_rng(seed).permutation(self.n)
        return self.take(perm[n_test:]), self.take(perm[:n_test])

    def take(self, idx) -> Cohort:
        nf = None if self.noise_free is None else self.noise_free[idx]
        return Cohort(self.covariate_names, self.covariates[idx], self.param_names, self.log_params[idx], nf)

    def to_frame(self):
        """A polars table: ``ID``, covariate columns and natural-unit parameter columns."""
        import polars as pl

        cols = {"ID": np.arange(1, self.n + 1)}
        cols.update({c: self.covariates[:, j] for j, c in enumerate(self.covariate_names)})
        cols.update({p: np.exp(self.log_params[:, k]) for k, p in enumerate(self.param_names)})
        return pl.DataFrame(cols)


@dataclass(frozen=True)
class CovariateModel:
    """Generating model of log-parameters given covariates: ``S`` population draws
    ([`PopulationDraws`][pkpd_jax.population.PopulationDraws]) of a model whose parameters are
    all positive.

    `mu` ``(S, P)``: log typical values (reference subject); `coef` ``(S, E)``: effect
    coefficients (power exponent or log factor); `omega` ``(S, P)``: between-subject SDs (0 for a
    parameter without variability); `effects`: the population model's
    [`CovariateEffect`][pkpd_jax.population.CovariateEffect]s; `covariate_names`: the covariates
    they use, in order.
    """

    draws: PopulationDraws

    @classmethod
    def from_population(cls, pm, positions) -> CovariateModel:
        """From a population model and positions ``(..., dim)`` (e.g. ``(chains, draws, dim)``)."""
        return cls.from_draws(PopulationDraws.from_population_model(pm, positions))

    @classmethod
    def from_draws(cls, draws: PopulationDraws) -> CovariateModel:
        """From population draws (raises `ValueError` for a non-positive parameter or non-finite values)."""
        bad = [p.name for p in draws.model.params if p.constraint != "positive"]
        if bad:
            raise ValueError(
                f"parameters {bad} of {draws.model.name} are not positive; the quantum kernel regression "
                "models log-parameters and needs positive parameters only."
            )
        gen = cls(draws)
        if not all(np.all(np.isfinite(a)) for a in (gen.mu, gen.coef, gen.omega)):
            raise ValueError("the population values at these positions are not all finite")
        return gen

    @property
    def param_names(self) -> tuple[str, ...]:
        return tuple(self.draws.model.param_names)

    @property
    def covariate_names(self) -> tuple[str, ...]:
        return self.draws.covariates_needed

    @property
    def effects(self) -> tuple:
        return tuple(self.draws.effects)

    @property
    def mu(self) -> np.ndarray:
        return self.draws.mu()

    @property
    def coef(self) -> np.ndarray:
        return self.draws.coef()

    @property
    def omega(self) -> np.ndarray:
        om = np.zeros((self.draws.n_draws, len(self.param_names)))
        om[:, self.draws.bsv_index] = self.draws.omega()
        return om

    @property
    def structure(self) -> dict[str, tuple[str, ...]]:
        """Covariates acting on each parameter (the covariate equation's design)."""
        return {
            p: tuple(dict.fromkeys(e.covariate for e in self.effects if p in e.params))
            for p in self.param_names
        }

    def _covariates(self, covariates: np.ndarray) -> dict[str, np.ndarray]:
        covariates = np.asarray(covariates, float)
        return {c: covariates[:, j] for j, c in enumerate(self.covariate_names)}

    def noise_free(self, covariates: np.ndarray) -> np.ndarray:
        """``E[log θ | covariates]`` ``(N, P)`` (averaged over the draws: exact, the map is linear
        in them)."""
        cov = self._covariates(covariates)
        X = covariate_design(self.effects, cov) if cov else np.zeros((len(covariates), 0))
        A = effect_matrix(self.effects, self.param_names)
        return np.asarray(typical_unconstrained(self.mu.mean(0), self.coef.mean(0), X, A))

    def sample(self, covariates: np.ndarray, seed: int = 0) -> Cohort:
        """Individual log-parameters for the given covariates (a random draw per subject)."""
        covariates = np.asarray(covariates, float)
        rng = np.random.default_rng(seed)
        theta = self.draws.sample_individuals(rng, self._covariates(covariates), n=covariates.shape[0])
        u = np.log(np.asarray(theta))
        return Cohort(self.covariate_names, covariates, self.param_names, u, self.noise_free(covariates))


# ============================================================================ covariate draws
def _draw_from_study(study_cov: np.ndarray, n: int, rng) -> np.ndarray:
    """Joint bootstrap of the study's covariate rows; continuous columns jittered (Silverman)."""
    m = study_cov.shape[0]
    out = study_cov[rng.integers(0, m, n)].copy()
    for j in range(study_cov.shape[1]):
        col = study_cov[:, j]
        if np.all((col == 0) | (col == 1)) or np.ptp(col) == 0:
            continue
        lo, hi = col.min(), col.max()
        h = 1.06 * col.std() * m ** (-1 / 5)
        x = out[:, j] + h * rng.standard_normal(n)
        x = np.where(x < lo, 2 * lo - x, x)
        x = np.where(x > hi, 2 * hi - x, x)
        out[:, j] = np.clip(x, lo, hi)
    return out


def _study_covariates(pm, names) -> np.ndarray:
    ds = pm.dataset
    return np.stack([np.asarray(ds.covariate(c), float) for c in names], 1)


# ============================================================================ truth
def truth_population(truth: dict, pm) -> dict[str, float]:
    """Natural-unit population values (all of ``pm.names``) from an example-study ``truth.json``
    (read by [`PopulationDraws.from_truth`][pkpd_jax.population.PopulationDraws.from_truth])."""
    vals = PopulationDraws.from_truth(truth, n_study=1000).values
    missing = [k for k in pm.names if k not in vals]
    if missing:
        raise ValueError(
            f"truth has no value for {missing} (population model {pm.model.name}, "
            f"covariates {[e.name for e in pm.effects]})."
        )
    return {k: float(vals[k][0]) for k in pm.names}


def _truth_covariates(truth: dict, names, n: int, rng, study_cov: np.ndarray) -> np.ndarray:
    cov = truth.get("covariates", {})
    out = _draw_from_study(study_cov, n, rng)
    for j, c in enumerate(names):
        dist = str(cov.get(f"{c}_distribution", ""))
        m = re.match(r"\s*uniform\(\s*([-\d.eE+]+)\s*,\s*([-\d.eE+]+)\s*\)", dist)
        if m:
            out[:, j] = rng.uniform(float(m.group(1)), float(m.group(2)), n)
        elif f"{c}_probability" in cov:
            out[:, j] = (rng.uniform(size=n) < float(cov[f"{c}_probability"])).astype(float)
    return out


def example_population_model(study=None, truth=None):
    """``(population model, truth dict)`` for the bundled example study (or the given files)."""
    from ..data import Dataset
    from ..data.example import example_paths
    from ..inference.likelihood import PopulationModel
    from ..models import get_model

    csv, js = example_paths()
    study = Path(study) if study is not None else csv
    truth_d = truth if isinstance(truth, dict) else json.loads(Path(truth or js).read_text())
    pm = PopulationModel(get_model(truth_d["pk_model"], truth_d.get("pd_model")), Dataset.load(study), "auto")
    return pm, truth_d


def cohort_from_truth(
    n: int, seed: int = 0, *, study=None, truth=None
) -> tuple[Cohort, CovariateModel, object]:
    """``n`` synthetic subjects from the example study's true population model.

    Returns ``(cohort, generating model, population model of the study)``."""
    from .._x64 import enable_x64

    enable_x64()
    if n < 2:
        raise ValueError(f"--n must be >= 2; got {n}.")
    pm, truth_d = example_population_model(study, truth)
    pos = np.asarray(pm.to_position(truth_population(truth_d, pm)))[None]
    gen = CovariateModel.from_population(pm, pos)
    rng = np.random.default_rng(seed)
    cov = _truth_covariates(truth_d, gen.covariate_names, n, rng, _study_covariates(pm, gen.covariate_names))
    return gen.sample(cov, seed=int(rng.integers(2**31))), gen, pm


def cohort_from_fit(
    path, n: int, seed: int = 0, *, max_draws: int | None = None
) -> tuple[Cohort, CovariateModel, object]:
    """``n`` synthetic subjects from a fit directory's posterior (``pkpd-jax fit``): population
    values of a random posterior draw per subject, covariates resampled from the fitted study.

    Returns ``(cohort, generating model, population model of the fit)``."""
    from ..inference.fit import load_fit

    if n < 2:
        raise ValueError(f"--n must be >= 2; got {n}.")
    pm, positions, _ = load_fit(path)
    pos = np.asarray(positions).reshape(-1, pm.dim)
    rng = np.random.default_rng(seed)
    if max_draws is not None and pos.shape[0] > max_draws:
        pos = pos[np.sort(rng.choice(pos.shape[0], max_draws, replace=False))]
    gen = CovariateModel.from_population(pm, pos)
    if not gen.effects:
        raise ValueError(f"the fit in {path} has no covariate effects; there is nothing to regress on.")
    cov = _draw_from_study(_study_covariates(pm, gen.covariate_names), n, rng)
    return gen.sample(cov, seed=int(rng.integers(2**31))), gen, pm
