"""Population parameter draws: what trials, the digital twin and the quantum cohorts consume.

A [`PopulationDraws`][] holds ``S`` draws of the population values (typical values of the
reference subject, covariate coefficients, ``omega_*`` and, when known, ``sigma_*``) with the
structural model, the covariate effects, the parameters with between-subject variability, the
study's covariates (to resample new subjects from) and its dose duration. It comes from a fit
directory's posterior draws (`pkpd_jax.inference.fitdir.load_draws`, which builds them with
[`PopulationDraws.from_population_model`][]: the population layer does not read fit directories
itself, so it never imports the inference layer), from a known truth such as the bundled
example study's ``truth.json`` ([`PopulationDraws.from_truth`][]) or from a population model
at given positions ([`PopulationDraws.from_population_model`][]). Individual parameters follow
the one covariate map of `pkpd_jax.population` ([`individual_parameters`][]).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from ..models.coupling import PKPDModel
from ._covariates import (
    CovariateEffect,
    CovariateSpec,
    covariate_design,
    effect_matrix,
    individual_parameters,
    to_unconstrained,
)
from ._residual import sigma_names


__all__ = ["PopulationDraws", "dataset_covariates", "dose_duration", "parse_uniform"]


@dataclass
class PopulationDraws:
    """``S`` draws of population values, and what is needed to make individuals (module doc).

    `values`: ``{name: (S,)}`` natural-unit typical values (``model.param_names``), covariate
    coefficients (power: exponent; factor: the factor, e.g. ``COMED_CL = 0.6``),
    ``omega_<param>`` for `bsv_params` and, optionally, ``sigma_{prop,add}_{PK,PD}``.
    `study_covariates`: ``{name: (subjects,)}``. Raises `ValueError` when a value is missing or
    the draws differ in number.
    """

    model: PKPDModel
    effects: tuple[CovariateEffect, ...]
    bsv_params: tuple[str, ...]
    values: dict[str, np.ndarray]
    study_covariates: dict[str, np.ndarray] = field(default_factory=dict)
    dose_duration: float = 0.0
    source: str = ""
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        need = (
            list(self.model.param_names)
            + [e.name for e in self.effects]
            + [f"omega_{b}" for b in self.bsv_params]
        )
        missing = [n for n in need if n not in self.values]
        if missing:
            raise ValueError(f"posterior values miss {missing} (model {self.model.name}).")
        sizes = {np.asarray(self.values[n]).reshape(-1).size for n in need}
        if len(sizes) != 1:
            raise ValueError(
                f"every posterior value needs the same number of draws; got sizes {sorted(sizes)}."
            )
        self.values = {k: np.asarray(v, float).reshape(-1) for k, v in self.values.items()}

    # ------------------------------------------------------------------ properties
    @property
    def n_draws(self) -> int:
        return int(self.values[self.model.param_names[0]].size)

    @property
    def types(self) -> tuple[int, ...]:
        """Observation types of the model: ``(1,)`` PK only, ``(1, 2)`` with a PD model."""
        return (1,) if self.model.pd is None else (1, 2)

    @property
    def sigma_names(self) -> tuple[str, ...]:
        return sigma_names(self.types)

    @property
    def has_residual(self) -> bool:
        """Whether every ``sigma_*`` of the model's observation types is in `values`."""
        return all(s in self.values for s in self.sigma_names)

    @property
    def bsv_index(self) -> np.ndarray:
        return np.array([self.model.param_names.index(b) for b in self.bsv_params], int)

    @property
    def covariates_needed(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(e.covariate for e in self.effects))

    def subset(self, idx):
        """The draws `idx` (same model, effects and study)."""
        return type(self)(
            self.model,
            self.effects,
            self.bsv_params,
            {k: v[idx] for k, v in self.values.items()},
            self.study_covariates,
            self.dose_duration,
            self.source,
            self.meta,
        )

    # ------------------------------------------------------------------ unconstrained arrays
    def mu(self) -> np.ndarray:
        """Unconstrained typical values ``g(typical)`` ``(S, P)``."""
        p = self.model.params
        return np.asarray(to_unconstrained(p, np.stack([self.values[q.name] for q in p], -1)))

    def coef(self) -> np.ndarray:
        """Covariate coefficients on the unconstrained scale ``(S, E)`` (exponent or log factor)."""
        v = self.values
        cols = [v[e.name] if e.kind == "power" else np.log(v[e.name]) for e in self.effects]
        return np.stack(cols, -1) if cols else np.zeros((self.n_draws, 0))

    def omega(self) -> np.ndarray:
        """Between-subject SDs ``(S, B)`` (columns = `bsv_params`)."""
        cols = [self.values[f"omega_{b}"] for b in self.bsv_params]
        return np.stack(cols, -1) if cols else np.zeros((self.n_draws, 0))

    def sigma(self) -> np.ndarray:
        """Residual SDs ``(S, 2·types)`` ordered as `sigma_names` (raises without them)."""
        missing = [s for s in self.sigma_names if s not in self.values]
        if missing:
            raise ValueError(f"population values miss the residual SDs {missing} (model {self.model.name}).")
        return np.stack([self.values[s] for s in self.sigma_names], -1)

    # ------------------------------------------------------------------ individuals
    def individual_parameters(
        self, covariates: Mapping[str, np.ndarray], etas=None, *, draws=None, n: int | None = None
    ):
        """Individual parameters ``(S, N, P)`` (natural units, `model.param_names`).

        `covariates`: ``{name: (N,)}`` shared by every draw, or ``{name: (S, N)}`` per draw;
        `etas`: standardised random effects ``(S, N, B)`` (or ``(N, B)`` for every draw; columns =
        `bsv_params`), ``None`` for the typical subjects. `draws`: optional draw index ``(N,)``
        per subject instead of every draw for every subject: the result is then ``(N, P)``.
        `n`: the number of subjects when `covariates` is empty (a model without covariates).
        """
        mu, coef, omega = self.mu(), self.coef(), self.omega()
        if covariates:
            X = covariate_design(self.effects, {k: np.asarray(v, float) for k, v in covariates.items()})
        else:
            X = covariate_design(self.effects, {"_": np.zeros(0 if n is None else n)})
        A = effect_matrix(self.effects, self.model.param_names)
        if draws is not None:
            s = np.asarray(draws)
            out = individual_parameters(
                self.model.params, mu[s], coef[s], X[:, None, :], A,
                omega[s], None if etas is None else jnp.asarray(etas)[:, None, :],
                self.bsv_index,
            )
            return out[:, 0, :]
        if X.ndim == 2:
            X = np.broadcast_to(X, (self.n_draws, *X.shape))
        return individual_parameters(
            self.model.params, mu, coef, X, A, omega, etas, self.bsv_index
        )

    def sample_individuals(
        self, key_or_rng, covariates: Mapping[str, np.ndarray], *, bsv: bool = True, n: int | None = None
    ):
        """Individual parameters with fresh standardised random effects η ~ N(0, 1).

        - a JAX key: every draw gets every subject, ``(S, N, P)`` (`covariates` ``(N,)`` or
          ``(S, N)``), η from ``jax.random.normal(key, (S, N, B))``;
        - a NumPy ``Generator``: one random draw per subject, ``(N, P)`` (`covariates` ``(N,)``),
          the draw index then one standard normal per *parameter* ``(N, P)`` (those without
          variability unused, so that the stream does not depend on which parameters vary).

        ``bsv=False`` gives the typical subjects (no η drawn). `n`: the number of subjects when
        `covariates` is empty (a model without covariates).
        """
        if covariates:
            n = np.shape(next(iter(covariates.values())))[-1]
        elif n is None:
            raise ValueError("pass the number of subjects `n` when there are no covariates.")
        if isinstance(key_or_rng, np.random.Generator):
            rng = key_or_rng
            s = rng.integers(0, self.n_draws, n)
            eta = rng.standard_normal((n, len(self.model.param_names)))[:, self.bsv_index]
            return self.individual_parameters(covariates, eta if bsv else None, draws=s, n=n)
        eta = None
        if bsv and self.bsv_params:
            eta = jax.random.normal(key_or_rng, (self.n_draws, n, len(self.bsv_params)))
        return self.individual_parameters(covariates, eta, n=n)

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_population_model(cls, pm, positions, **kw):
        """From a population model (`pkpd_jax.inference.likelihood.PopulationModel`) at positions
        ``(..., dim)`` (e.g. posterior draws ``(chains, draws, dim)``); the study covariates and
        dose duration are the model's data set's. Extra keywords go to the constructor."""
        flat = np.asarray(positions, float).reshape(-1, pm.dim)
        vals = {k: np.asarray(v) for k, v in pm.unflatten(jnp.asarray(flat)).items()}
        kw.setdefault("study_covariates", dataset_covariates(pm.dataset))
        kw.setdefault("dose_duration", dose_duration(pm.dataset))
        return cls(pm.model, tuple(pm.effects), tuple(pm.bsv_params), vals, **kw)

    @classmethod
    def from_truth(
        cls,
        truth: Mapping | str | Path,
        *,
        covariates: str = "generating",
        n_study: int = 100_000,
        seed: int = 0,
    ):
        """One 'draw' at the known truth of a simulated study (e.g. the bundled ``truth.json``):
        ``population`` (typical values), the covariate coefficients in ``covariates``, ``omega``
        and ``residual`` (the ``sigma_*``).

        `covariates`: ``"generating"`` gives the study covariates from the generating
        distribution written in the truth (BW uniform on the stated range, COMED Bernoulli), as
        `n_study` seeded subjects to resample from; ``"study"`` uses the actual subjects'
        covariates (``truth["individual"]``). The covariate effects are the automatic covariate
        model (`CovariateSpec("auto")`), which is what the truth's equations describe.
        """
        from ..models import get_model

        if not isinstance(truth, Mapping):
            truth = json.loads(Path(truth).read_text())
        model = get_model(truth["pk_model"], truth.get("pd_model"))
        cov = truth.get("covariates", {})
        ind = truth.get("individual", {})
        if covariates == "study":
            study = {k: np.asarray(ind[k], float) for k in ("BW", "COMED") if k in ind}
        elif covariates == "generating":
            rng = np.random.default_rng(seed)
            lo, hi = parse_uniform(cov.get("BW_distribution", "uniform(50, 100) kg"))
            study = {
                "BW": rng.uniform(lo, hi, n_study),
                "COMED": (rng.uniform(size=n_study) < float(cov.get("COMED_probability", 0.0))).astype(float),
            }
        else:
            raise ValueError(f"`covariates` must be 'generating' or 'study'; got {covariates!r}.")
        effects = CovariateSpec("auto").resolve(model, _CovariateTable(study))
        vals = {k: np.array([float(v)]) for k, v in truth["population"].items()}
        for e in effects:
            if e.name in cov:
                vals[e.name] = np.array([float(cov[e.name])])
        vals.update({k: np.array([float(v)]) for k, v in truth.get("omega", {}).items()})
        vals.update(
            {
                k: np.array([float(v)])
                for k, v in truth.get("residual", {}).items()
                if k.startswith("sigma") and isinstance(v, (int, float))
            }
        )
        bsv = tuple(n for n in model.param_names if f"omega_{n}" in vals)
        design = truth.get("design", {})
        return cls(
            model, effects, bsv, vals, study, float(design.get("infusion_h", 0.0)), "truth",
            {"covariates": covariates},
        )


class _CovariateTable:
    """A minimal stand-in for a data set with `covariate_names` and `covariates` (all that
    `CovariateSpec.resolve` reads)."""

    def __init__(self, study: Mapping[str, np.ndarray]):
        self.covariate_names = tuple(study)
        self.covariates = (
            np.stack([np.asarray(study[k], float) for k in study], axis=1) if study else np.zeros((1, 0))
        )


def parse_uniform(text: str) -> tuple[float, float]:
    """``(lo, hi)`` from a distribution text like ``"uniform(50, 100) kg"``."""
    m = re.search(r"uniform\(\s*([0-9.eE+-]+)\s*,\s*([0-9.eE+-]+)\s*\)", text)
    if not m:
        raise ValueError(f"cannot read a BW distribution from {text!r}; expected 'uniform(lo, hi)'.")
    return float(m.group(1)), float(m.group(2))


def dataset_covariates(dataset) -> dict[str, np.ndarray]:
    """A data set's covariates ``{name: (subjects,)}``."""
    cov = np.asarray(dataset.covariates, float)
    return {name: cov[:, j] for j, name in enumerate(dataset.covariate_names)}


def dose_duration(dataset) -> float:
    """The study's infusion duration (median over real doses; 0 = bolus / model default)."""
    return dataset.regimen.median_duration()
