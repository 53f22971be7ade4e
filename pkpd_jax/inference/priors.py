"""Priors of the population model (weakly informative; see `pkpd_jax.inference.likelihood`):

- typical values: ``g(θ_k) ~ N(g(median_k), (2·log_sd_k)²)`` using the model's declared prior
  (twice as wide on the log scale as the model default); an override ``{name: (median,
  log_sd)}`` is used as given;
- covariate effects: the effect's prior (``BW_CL ~ N(0.75, 0.25²)``, ``BW_V ~ N(1, 0.25²)``,
  other exponents ``N(0, 0.5²)``, ``log factor ~ N(0, 0.5²)``); overrides ``{name: (mean, sd)}``
  for exponents and ``{name: (median, log_sd)}`` for factors;
- ``omega_k ~ HalfNormal(0.5)``; ``sigma_prop ~ HalfNormal(0.3)``, ``sigma_add ~ HalfNormal(0.1 ×
  median of the quantified fitted DVs of that type)``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from ..data.dataset import Dataset


__all__ = [
    "build_priors",
    "prior_table",
    "OMEGA_PRIOR_SCALE",
    "SIGMA_PROP_PRIOR_SCALE",
    "SIGMA_ADD_PRIOR_FRACTION",
    "TYPICAL_PRIOR_INFLATION",
]

OMEGA_PRIOR_SCALE = 0.5
SIGMA_PROP_PRIOR_SCALE = 0.3
SIGMA_ADD_PRIOR_FRACTION = 0.1
TYPICAL_PRIOR_INFLATION = 2.0


def build_priors(params, effects, overrides: Mapping[str, tuple[float, float]], dataset: Dataset,
                 fitted: np.ndarray, blq: np.ndarray, bsv_params, types) -> dict:
    """The prior locations and scales (module docstring) with `overrides` applied; `fitted` and
    `blq` ``(N, M)`` mark the fitted and the BLQ observations (for the σ_add scales)."""
    by_name = {p.name: p for p in params}
    eff_names = {e.name: e for e in effects}
    unknown = sorted(set(overrides) - set(by_name) - set(eff_names))
    if unknown:
        raise ValueError(
            f"prior overrides for unknown names {unknown}; allowed: "
            f"{', '.join(list(by_name) + list(eff_names))}"
        )
    mu_loc, mu_sd = [], []
    for p in params:
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
    for e in effects:
        loc, sd = e.prior
        if e.name in overrides:
            loc, sd = (float(v) for v in overrides[e.name])
            if e.kind == "factor":
                if not loc > 0:
                    raise ValueError(f"prior median for {e.name} must be > 0; got {loc}")
                loc = math.log(loc)
        cov_loc.append(loc)
        cov_sd.append(sd)
    dv = np.asarray(dataset.obs_dv, float)
    quant = np.asarray(fitted) & ~np.asarray(blq)
    dvid = np.asarray(dataset.obs_dvid)
    sig = []
    for t in types:
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
        "omega_scale": np.full(len(bsv_params), OMEGA_PRIOR_SCALE),
        "sigma_scale": np.array(sig),
    }

def prior_table(params, effects, priors: dict, bsv_params, sigma_names) -> list[dict]:
    """One record per population parameter: name, distribution, scale, natural-unit median."""
    pr = priors
    rows = []
    for k, p in enumerate(params):
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
    for j, e in enumerate(effects):
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
    names = [f"omega_{b}" for b in bsv_params] + list(sigma_names)
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
