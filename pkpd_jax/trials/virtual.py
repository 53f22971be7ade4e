"""Virtual populations: posterior draws × covariates × between-subject variability.

A [`Posterior`][] (the trial's [`PopulationDraws`][pkpd_jax.population.PopulationDraws]) holds
what a trial needs from a fit, or from a known truth: the structural
model, the covariate effects, which parameters vary between subjects, population values per
posterior draw (typical values of the reference subject, covariate coefficients, ``omega_*``),
the study's covariates (for resampling) and its dose duration.

[`virtual_parameters`][] builds individual parameters with the population model's one covariate
map (`pkpd_jax.population`)::

    θ_ik = g⁻¹( g(typical_k) + Σ_e coef_e·x_ie·[e acts on k] + ω_k·η_ik ),   η_ik ~ N(0, 1)

with ``x = log(BW/70)`` for a power effect (coefficient = exponent) and ``x = COMED`` for a
factor effect (coefficient = log factor), for *new* subjects: covariates from a
[`CovariateDistribution`][] (resampled from the study by default) and fresh η, independently for
every posterior draw, so that the spread between draws carries the parameter uncertainty.
Optionally the typical part comes from a regressor on the covariates instead (e.g. the quantum
kernel regressor), see `individual_model`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from ..population import PopulationDraws, to_natural, to_unconstrained


__all__ = [
    "Posterior",
    "CovariateDistribution",
    "sample_covariates",
    "virtual_parameters",
    "check_fit_matches_data",
]


@dataclass(frozen=True)
class CovariateDistribution:
    """Where virtual subjects' covariates come from.

    - `bw`: ``None`` resamples body weight from the study (jointly with the other covariates);
      ``("uniform", lo, hi)`` draws it uniformly on ``[lo, hi]`` kg; ``("empirical", values)``
      resamples the given values.
    - `comed`: ``None`` resamples COMED from the study (jointly with BW when BW is resampled);
      a probability in ``[0, 1]`` draws it as Bernoulli (0 = co-medication not allowed).
    - `label`: a short description for reports.
    """

    bw: tuple | None = None
    comed: float | None = None
    label: str = "as studied"

    def __post_init__(self):
        if self.bw is not None:
            kind = self.bw[0] if self.bw else None
            if kind == "uniform":
                if len(self.bw) != 3:
                    raise ValueError(f"a uniform BW distribution is ('uniform', lo, hi); got {self.bw}.")
                lo, hi = float(self.bw[1]), float(self.bw[2])
                if not (np.isfinite(lo) and np.isfinite(hi) and 0 < lo < hi):
                    raise ValueError(
                        f"the BW range must be two finite weights 0 < lo < hi (kg); got {lo:g}-{hi:g} "
                        "(an empty or reversed range has no subjects)."
                    )
            elif kind == "empirical":
                vals = np.asarray(self.bw[1], float).ravel() if len(self.bw) == 2 else np.zeros(0)
                if vals.size == 0 or not np.all(np.isfinite(vals) & (vals > 0)):
                    raise ValueError("an empirical BW distribution needs a non-empty list of weights > 0 kg.")
            else:
                raise ValueError(
                    f"`bw` must be ('uniform', lo, hi) or ('empirical', values); got {self.bw!r}."
                )
        if self.comed is not None and not 0.0 <= float(self.comed) <= 1.0:
            raise ValueError(f"the COMED fraction must be in [0, 1]; got {self.comed}.")


class Posterior(PopulationDraws):
    """Population values per draw, and what is needed to make new subjects: the
    [`PopulationDraws`][pkpd_jax.population.PopulationDraws] of a trial, whose fit must have a PD
    model (dose questions are about the biomarker).

    `values`: ``{name: (draws,)}`` natural-unit typical values (``model.param_names``), covariate
    coefficients (power: exponent; factor: the factor, e.g. ``COMED_CL = 0.6``) and
    ``omega_<param>`` for `bsv_params`. `study_covariates`: ``{name: (subjects,)}``.
    """

    @classmethod
    def from_fit(cls, fit_dir, *, n_draws: int | None = None, seed: int = 0) -> Posterior:
        """Posterior draws of a fit directory (`pkpd-jax fit`), `n_draws` of them picked at random
        without replacement (seeded; default all). Raises `ValueError` for a PK-only fit."""
        from ..inference.fitdir import load_draws

        post = load_draws(fit_dir, n_draws=n_draws, seed=seed, cls=cls)
        if post.model.pd is None:
            raise ValueError(
                f"the fit in {fit_dir} is PK-only ({post.model.name}); dose questions about a biomarker "
                "need a fit with a PD model (pkpd-jax fit --pd ...)."
            )
        return post


# ---------------------------------------------------------------------------- sampling
def sample_covariates(
    posterior: Posterior, dist: CovariateDistribution, n: int, key: jax.Array
) -> dict[str, np.ndarray]:
    """`n` virtual subjects' covariates ``{name: (n,)}`` (every covariate of the study)."""
    study = posterior.study_covariates
    names = list(study)
    if dist.bw is not None and not any(w in study for w in ("BW", "WT")):
        raise ValueError(
            "a body-weight scenario needs a BW (or WT) covariate, but the study data have none "
            f"(covariates: {', '.join(names) or 'none'})."
        )
    if dist.comed is not None and "COMED" not in study:
        raise ValueError(
            "a co-medication scenario needs a COMED covariate, but the study data have none "
            f"(covariates: {', '.join(names) or 'none'})."
        )
    k_rows, k_bw, k_comed = jax.random.split(key, 3)
    n_study = len(next(iter(study.values()))) if study else 0
    out: dict[str, np.ndarray] = {}
    if n_study:
        rows = np.asarray(jax.random.randint(k_rows, (n,), 0, n_study))
        out = {k: np.asarray(v, float)[rows] for k, v in study.items()}
    if dist.bw is not None:
        weight = "BW" if "BW" in study else "WT"
        if dist.bw[0] == "uniform":
            out[weight] = np.asarray(jax.random.uniform(k_bw, (n,), minval=dist.bw[1], maxval=dist.bw[2]))
        else:
            vals = np.asarray(dist.bw[1], float).ravel()
            out[weight] = vals[np.asarray(jax.random.randint(k_bw, (n,), 0, vals.size))]
    if dist.comed is not None:
        out["COMED"] = np.asarray(jax.random.uniform(k_comed, (n,)) < float(dist.comed), float)
    return out


def virtual_parameters(
    posterior: Posterior,
    dist: CovariateDistribution,
    n_virtual: int,
    key: jax.Array,
    *,
    individual_model: Callable[[dict[str, np.ndarray]], np.ndarray] | None = None,
    bsv: bool = True,
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Individual parameters ``(draws, n_virtual, P)`` (natural units, `model.param_names`) and
    the covariates ``{name: (draws, n_virtual)}``: new covariates and η for every draw.

    `individual_model`: optional ``covariates {name: (n,)} -> (n, P)`` natural-unit parameters
    predicted from covariates (e.g. the quantum kernel regressor); it then replaces the typical
    value and covariate effects, and ``bsv=True`` still adds ``ω·η`` of each draw on top.
    """
    if n_virtual < 1:
        raise ValueError(f"`n_virtual` must be >= 1; got {n_virtual}.")
    model = posterior.model
    params = model.params
    names = model.param_names
    n_draws = posterior.n_draws
    k_cov, k_eta = jax.random.split(key)
    cov_keys = jax.random.split(k_cov, n_draws)
    covs = [sample_covariates(posterior, dist, n_virtual, k) for k in cov_keys]
    cov_arr = {c: np.stack([cv[c] for cv in covs]) for c in (covs[0] if covs else {})}

    if individual_model is None:
        missing = [e for e in posterior.effects if e.covariate not in cov_arr]
        if missing:
            e = missing[0]
            raise ValueError(
                f"covariate effect {e.name} needs covariate {e.covariate}, absent from the study."
            )
        theta = np.asarray(posterior.sample_individuals(k_eta, cov_arr, bsv=bsv, n=n_virtual))
    else:
        typ = np.stack(
            [
                np.asarray(individual_model({c: v[j] for c, v in cov_arr.items()}), float)
                for j in range(n_draws)
            ]
        )
        if typ.shape != (n_draws, n_virtual, len(names)):
            raise ValueError(
                f"`individual_model` must return (n, {len(names)}) parameters ({list(names)}); "
                f"got {typ.shape[1:]}."
            )
        u = to_unconstrained(params, typ)
        if bsv and posterior.bsv_params:
            eta = jax.random.normal(k_eta, (n_draws, n_virtual, len(posterior.bsv_params)))
            u = u.at[..., posterior.bsv_index].add(jnp.asarray(posterior.omega())[:, None, :] * eta)
        theta = np.asarray(to_natural(params, u))
    if not np.all(np.isfinite(theta)):
        raise ValueError(
            "virtual subjects with non-finite parameters (extreme posterior draws?); check the fit."
        )
    return theta, cov_arr


def check_fit_matches_data(fit_dir, data) -> None:
    """Raise `ValueError` unless the fit in `fit_dir` was made on the data set `data` (a CSV path,
    a polars frame or a Dataset): same subjects, covariates, doses and observations."""
    from ..data import Dataset, read_nonmem

    ref = Dataset.load(Path(fit_dir) / "data.csv")
    other = data if isinstance(data, Dataset) else Dataset.from_frame(read_nonmem(data))
    problems = []
    if ref.ids != other.ids:
        problems.append(f"subjects differ ({len(ref.ids)} in the fit, {len(other.ids)} in the data)")
    elif ref.covariate_names != other.covariate_names:
        problems.append(f"covariates differ ({ref.covariate_names} vs {other.covariate_names})")
    else:
        for name in ("covariates", "obs_time", "obs_dv"):
            a, b = np.asarray(getattr(ref, name)), np.asarray(getattr(other, name))
            if a.shape != b.shape or not np.allclose(a, b, rtol=1e-9, atol=1e-12):
                problems.append(f"{name} differ")
        for name in ("time", "amount", "duration"):
            a, b = np.asarray(getattr(ref.regimen, name)), np.asarray(getattr(other.regimen, name))
            if a.shape != b.shape or not np.allclose(a, b, rtol=1e-9, atol=1e-12):
                problems.append(f"dose {name}s differ")
    if problems:
        given = "the given one" if isinstance(data, Dataset) else str(data)
        raise ValueError(
            f"the fit in {fit_dir} was made on another data set than {given}: "
            + "; ".join(problems)
            + ". Fit this data set first (pkpd-jax fit), or pass the matching fit directory."
        )
