"""Physiological constraints on a covariate matrix, as per-sample violation magnitudes.

Every constraint is a function ``f(x) -> v`` of a covariate matrix ``x`` of shape ``(..., D)`` in natural
units (columns [`pkpd_jax.virtual_patients.schema.VARIABLES`][]) returning ``v`` of shape ``(...)``
with ``v >= 0`` and ``v == 0`` exactly when the constraint holds. Magnitudes are dimensionless (relative
to the bound or to the width of the allowed range), so they can be summed into one penalty.

They work on numpy arrays (a check: [`violation_rate`][]) and on JAX arrays (a differentiable penalty:
[`penalty`][], hinge-shaped, so ``jax.grad`` is defined everywhere and exact away from the kinks).

The constraints ([`CONSTRAINTS`][]):

- ``positivity``: every variable but ``female`` is > 0.
- ``organ_mass``: the listed organ volumes times their tissue densities
  ([`schema.DENSITY`][]) weigh at most the body weight.
- ``flow_sum``: the systemic regional blood flows sum to at most the cardiac output.
- ``bmi_consistency``: ``|BMI - W/H²| <= 1 %`` of BMI (H in m).
- ``ranges``: each variable inside [`RANGES`][] (adult ages 18-85 y, haematocrit 0.30-0.55, albumin 30-55 g/L,
  BMI 16-50 kg/m², ...).
- ``gfr_for_age``: eGFR (GFR × 1.73 / Du Bois BSA) between 15 mL/min/1.73 m² (kidney failure excluded) and
  ``190 · 0.9938^age``, the CKD-EPI 2021 value at a serum creatinine of about 0.35 mg/dL.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .schema import DENSITY, FLOW_ORGANS, ORGANS, VARIABLES, du_bois_bsa, index


__all__ = [
    "RANGES", "BMI_TOLERANCE", "CONSTRAINTS", "positivity", "organ_mass", "flow_sum", "bmi_consistency",
    "ranges", "gfr_for_age", "violations", "violations_numpy", "penalty", "violation_rate",
]

#: Allowed range of each bounded variable, natural units.
RANGES = {
    "female": (0.0, 1.0),
    "age": (18.0, 85.0),
    "height": (135.0, 215.0),
    "weight": (35.0, 200.0),
    "bmi": (16.0, 50.0),
    "co": (120.0, 900.0),       # L/h (2-15 L/min at rest)
    "hct": (0.30, 0.55),
    "albumin": (30.0, 55.0),
}
BMI_TOLERANCE = 0.01
EGFR_MIN = 15.0
EGFR_MAX_AT_AGE0 = 190.0

_POSITIVE = np.array([i for i, v in enumerate(VARIABLES) if v != "female"])
_RANGE_IDX = np.array([index(v) for v in RANGES])
_RANGE_LO = np.array([lo for lo, _ in RANGES.values()])
_RANGE_HI = np.array([hi for _, hi in RANGES.values()])
# Typical magnitudes (reference adult) to make positivity violations dimensionless.
_SCALE = {"age": 50.0, "height": 170.0, "weight": 70.0, "bmi": 25.0, "co": 380.0, "gfr": 100.0,
          "hct": 0.42, "albumin": 42.0, "v_liver": 1.5, "v_kidney": 0.3, "v_brain": 1.3, "v_heart": 0.3,
          "v_lung": 0.45, "v_muscle": 25.0, "v_adipose": 22.0, "v_skin": 2.6, "q_liver": 100.0,
          "q_kidney": 70.0, "q_brain": 45.0, "q_heart": 17.0, "q_muscle": 55.0, "q_adipose": 25.0,
          "q_skin": 19.0}
_POS_SCALE = np.array([_SCALE[VARIABLES[i]] for i in _POSITIVE])
_V_IDX = np.array([index(f"v_{o}") for o in ORGANS])
_RHO = np.array([DENSITY[o] for o in ORGANS])
_Q_IDX = np.array([index(f"q_{o}") for o in FLOW_ORGANS])


def _xp(x):
    if isinstance(x, np.ndarray):
        return np
    import jax.numpy as jnp

    return jnp


def _relu(xp, v):
    return xp.maximum(v, 0.0)


def _col(x, name):
    return x[..., index(name)]


def positivity(x):
    """Sum over variables (all but ``female``) of ``max(-x_j, 0) / typical_j``."""
    xp = _xp(x)
    return (_relu(xp, -x[..., _POSITIVE]) / _POS_SCALE).sum(-1)


def organ_mass(x):
    """``max(Σ ρ_o V_o - W, 0) / W``: the organs cannot outweigh the body."""
    xp = _xp(x)
    w = _col(x, "weight")
    total = (x[..., _V_IDX] * _RHO).sum(-1)
    return _relu(xp, total - w) / xp.maximum(xp.abs(w), 1.0)


def flow_sum(x):
    """``max(Σ Q_o - CO, 0) / CO``: regional flows cannot exceed the cardiac output."""
    xp = _xp(x)
    co = _col(x, "co")
    return _relu(xp, x[..., _Q_IDX].sum(-1) - co) / xp.maximum(xp.abs(co), 1.0)


def bmi_consistency(x):
    """``max(|BMI - W/H²| / BMI - 1 %, 0)`` with H in metres."""
    xp = _xp(x)
    bmi, w, h = _col(x, "bmi"), _col(x, "weight"), _col(x, "height") / 100.0
    implied = w / xp.maximum(h, 0.5) ** 2
    return _relu(xp, xp.abs(bmi - implied) / xp.maximum(xp.abs(bmi), 1.0) - BMI_TOLERANCE)


def ranges(x):
    """Sum over [`RANGES`][] of the distance outside the range, relative to the range's width."""
    xp = _xp(x)
    v = x[..., _RANGE_IDX]
    width = _RANGE_HI - _RANGE_LO
    return ((_relu(xp, _RANGE_LO - v) + _relu(xp, v - _RANGE_HI)) / width).sum(-1)


def _egfr(x, xp):
    w = xp.maximum(_col(x, "weight"), 1.0)
    h = xp.maximum(_col(x, "height"), 50.0)
    return _col(x, "gfr") * 1.73 / du_bois_bsa(w, h)


def gfr_for_age(x):
    """eGFR within ``[15, 190 · 0.9938^age]`` mL/min/1.73 m², relative to the violated bound."""
    xp = _xp(x)
    egfr = _egfr(x, xp)
    upper = EGFR_MAX_AT_AGE0 * 0.9938 ** _col(x, "age")
    return _relu(xp, EGFR_MIN - egfr) / EGFR_MIN + _relu(xp, egfr - upper) / upper


CONSTRAINTS: dict[str, Callable] = {
    "positivity": positivity,
    "organ_mass": organ_mass,
    "flow_sum": flow_sum,
    "bmi_consistency": bmi_consistency,
    "ranges": ranges,
    "gfr_for_age": gfr_for_age,
}


def violations(x):
    """All constraints stacked: shape ``(..., len(CONSTRAINTS))`` (numpy in, numpy out; JAX in, JAX out)."""
    xp = _xp(x)
    return xp.stack([f(x) for f in CONSTRAINTS.values()], axis=-1)


def violations_numpy(x) -> np.ndarray:
    """[`violations`][] of a numpy matrix (float64), NaN rows counted as violating every constraint."""
    x = np.asarray(x, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        v = violations(x)
    return np.where(np.isfinite(v), v, np.inf)


def penalty(x):
    """Total violation per sample (sum of [`CONSTRAINTS`][]), differentiable with JAX."""
    return violations(x).sum(-1)


def violation_rate(x, *, tol: float = 0.0) -> dict:
    """Fraction of rows violating any constraint (``> tol``) and each constraint separately."""
    v = violations_numpy(x)
    out = {"any": float((v > tol).any(-1).mean()) if len(v) else 0.0}
    for j, name in enumerate(CONSTRAINTS):
        out[name] = float((v[:, j] > tol).mean()) if len(v) else 0.0
    return out
