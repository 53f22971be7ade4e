"""The residual error model: proportional + additive per observation type, BLQ rows by M3.

Per observation type (DVID 1 = concentration, DVID 2 = biomarker)::

    DV ~ N(f, (σ_prop·f)² + σ_add²)

and a BLQ observation contributes the M3 likelihood ``log Φ((LLOQ − f)/sd)`` (Beal 2001, J
Pharmacokinet Pharmacodyn 28:481-504). One implementation for the population fit, the digital
twin's individual posterior, its sampling design and predictive simulation.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
from jax.scipy.special import log_ndtr


__all__ = [
    "residual_sd",
    "observation_loglik",
    "fisher_weight",
    "simulate_residual",
    "sigma_names",
    "normal_logpdf",
]

_TYPES = {1: "PK", 2: "PD"}


def sigma_names(types=(1, 2)) -> tuple[str, ...]:
    """Residual SD names ``sigma_{prop,add}_{PK,PD}`` for observation types `types` (1, 2)."""
    return tuple(f"sigma_{kind}_{_TYPES[t]}" for t in types for kind in ("prop", "add"))


def normal_logpdf(x, loc, scale):
    """``log N(x; loc, scale²)`` elementwise."""
    return -0.5 * math.log(2.0 * math.pi) - jnp.log(scale) - 0.5 * ((x - loc) / scale) ** 2


def residual_sd(f, sigma_prop, sigma_add):
    """``sqrt((σ_prop·f)² + σ_add²)`` elementwise."""
    return jnp.sqrt((sigma_prop * f) ** 2 + sigma_add**2)


def observation_loglik(dv, f, sigma_prop, sigma_add, blq, lloq):
    """Per-observation log-likelihood: ``log N(dv; f, sd²)`` for quantified rows, M3
    ``log Φ((lloq − f)/sd)`` where `blq` (no masking here: the caller sums the rows it uses)."""
    sd = residual_sd(f, sigma_prop, sigma_add)
    return jnp.where(blq, log_ndtr((lloq - f) / sd), normal_logpdf(dv, f, sd))


def fisher_weight(f, sigma_prop, sigma_add):
    """Expected information of one quantified observation about its prediction ``f``:
    ``1/v + 2σ_prop⁴f²/v²`` with ``v = (σ_prop·f)² + σ_add²`` (the mean and the variance
    both depend on ``f``)."""
    v = (sigma_prop * f) ** 2 + sigma_add**2
    return 1.0 / v + 2.0 * sigma_prop**4 * f**2 / v**2


def simulate_residual(f, sigma_prop, sigma_add, eps_prop, eps_add):
    """A simulated observation ``f·(1 + σ_prop·ε₁) + σ_add·ε₂`` for standard normal ε."""
    return f * (1.0 + sigma_prop * eps_prop) + sigma_add * eps_add
