"""The allometric baselines (simple, fitted-exponent, single-species) and fold-error metrics."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from ..physiology import SPECIES
from ._data import (
    _SP,
    DEFAULT_SOURCES,
    AllometryError,
    Observations,
    _check_target,
)
from ._features import (
    _masked_mean,
    build_inputs,
)


# ---------------------------------------------------------------------------------- baselines
def _mask_of(species: Sequence[str], n: int) -> np.ndarray:
    m = np.zeros((n, len(SPECIES)), dtype=bool)
    for s in species:
        if s not in _SP:
            raise AllometryError(f"unknown species {s!r}; available: {', '.join(SPECIES)}.")
        m[:, _SP[s]] = True
    return m


def simple_allometry(
    obs: Observations, sources=DEFAULT_SOURCES, target: str = "human", fu_corrected: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Fixed-exponent allometry (CL ∝ BW^0.75, Vss ∝ BW^1), geometric mean over `sources`.
    `fu_corrected`: scale unbound CL and Vss (``CL/fu``, ``Vss/fu``) and multiply by the target's
    fu (Tang & Mayersohn 2005; Øie & Tozer 1979). Returns (CL, Vss) of the target."""
    t = _SP[_check_target(target)]
    src = _mask_of(sources, obs.n)
    x, base = build_inputs(obs, src, np.full(obs.n, t))
    if not fu_corrected:
        return np.exp(base[:, 0]), np.exp(base[:, 1])
    lfu = np.log(obs.fu)
    adj = lfu[:, t] - _masked_mean(lfu, src)
    return np.exp(base[:, 0] + adj), np.exp(base[:, 1] + adj)


def fitted_allometry(obs: Observations, sources=DEFAULT_SOURCES, target: str = "human"):
    """Allometry with exponents fitted per drug: least squares of log CL (log Vss) on log BW over
    the `sources` (at least two), extrapolated to the target's BW."""
    t = _SP[_check_target(target)]
    idx = [_SP[s] for s in sources]
    if len(idx) < 2:
        raise AllometryError("fitted allometry needs at least two source species.")
    lb = np.log(obs.bw[:, idx])
    xb = lb - lb.mean(1, keepdims=True)
    out = []
    for arr in (obs.cl, obs.vss):
        ly = np.log(arr[:, idx])
        slope = np.sum(xb * (ly - ly.mean(1, keepdims=True)), 1) / np.sum(xb**2, 1)
        out.append(np.exp(ly.mean(1) + slope * (np.log(obs.bw[:, t]) - lb.mean(1))))
    return out[0], out[1]


def single_species(obs: Observations, species: str, target: str = "human"):
    """Single-species scaling: ``CL_T = CL_s (BW_T / BW_s)^0.75``, ``Vss_T = Vss_s BW_T / BW_s``."""
    return simple_allometry(obs, (species,), target)


def fold_metrics(pred, true) -> dict:
    """Fraction within 2-fold and 3-fold, geometric-mean fold error ``10^mean|log10(pred/true)|``
    and the geometric-mean ratio (bias) ``10^mean log10(pred/true)``."""
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.log10(np.asarray(pred, dtype=float) / np.asarray(true, dtype=float))
    if not np.all(np.isfinite(r)):
        raise AllometryError("predictions and truths must be positive and finite.")
    a = np.abs(r)
    return {
        "within_2fold": float(np.mean(a <= math.log10(2.0) + 1e-12)),
        "within_3fold": float(np.mean(a <= math.log10(3.0) + 1e-12)),
        "gmfe": float(10.0 ** np.mean(a)),
        "bias": float(10.0 ** np.mean(r)),
        "n": int(r.size),
    }
