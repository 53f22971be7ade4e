"""Independent reference solutions ("oracles") for the linear PK models of ``pkpd_jax``.

Everything here is plain numpy/scipy and shares no code with ``pkpd_jax``; the library's diffrax
simulator is checked against it (relative error 1e-6 in float64). Two independent oracles:

- [`concentration`][]: superposition of closed-form single-dose unit responses, each a short sum
  of terms ``c * t**p * exp(-lam * t)`` (see [`unit_response`][]). A zero-order infusion is the
  exact integral of the bolus response over the infusion window. For the transit model (and
  near-coincident exponents) the single-dose responses come from ``scipy.linalg.expm`` instead.
- [`concentration_expm`][] / [`amounts_expm`][]: the exact solution of ``dA/dt = K A + u(t)``
  with piecewise-constant input ``u``, propagated between events with the matrix exponential of
  the augmented matrix ``[[K, u], [0, 0]] * dt`` (Van Loan 1978; Moler & Van Loan 2003).

Units: time h, dose mg, volumes L, clearances L/h, rate constants 1/h; concentration
``C = A_central / V_central`` in mg/L.

Dosing semantics (the same as ``pkpd_jax.dosing``):

- doses are arrays ``times``, ``amounts``, ``durations``; duration 0 is a bolus, duration > 0 a
  zero-order infusion of ``amount / duration`` mg/h over ``[t, t + duration)`` into the model's
  dose compartment (gut for oral models, first transit compartment for the transit model,
  central compartment for IV models);
- a bolus at ``t`` is applied *after* an observation recorded at exactly ``t`` (pre-dose sample),
  so ``C(t_dose)`` is the left limit and excludes that dose;
- ``pk_1c_oral_lag`` shifts every dose by ``tlag``; a dose whose shifted time is beyond the last
  observation time has no effect (it is dropped explicitly; by causality it could not matter).

State order of [`amounts_expm`][]: oral models ``[gut, central, (peripheral)]``, transit
``[transit1, transit2, transit3, central]``, IV models ``[central, peripheral(s)]``.

References:

- J. Gabrielsson & D. Weiner, *Pharmacokinetic and Pharmacodynamic Data Analysis: Concepts and
  Applications*, 5th ed. (Swedish Pharmaceutical Press, 2016), sections 2.2-2.6 (one-, two- and
  three-compartment bolus, infusion and first-order-input models, macro-constants).
- M. Rowland & T. N. Tozer, *Clinical Pharmacokinetics and Pharmacodynamics*, 4th ed. (2011),
  chapters 3, 6, 10, 19 (IV bolus, extravascular absorption / Bateman function, constant-rate
  infusion, multicompartment disposition).
- M. Gibaldi & D. Perrier, *Pharmacokinetics*, 2nd ed. (1982), chapter 2 and appendix B
  (Laplace transforms and partial fractions for mammillary models).
- R. J. Savic et al., "Implementation of a transit compartment model for describing drug
  absorption in pharmacokinetic studies", J Pharmacokinet Pharmacodyn 34:711-726 (2007).
- C. F. Van Loan, "Computing integrals involving the matrix exponential", IEEE Trans. Automat.
  Control 23:395-404 (1978).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from scipy.linalg import expm
from scipy.special import gammainc, gammaincc


__all__ = [
    "MODELS",
    "ModelSpec",
    "ExpTerms",
    "NearlyEqualRatesError",
    "rate_matrix",
    "unit_response",
    "concentration",
    "concentration_closed_form",
    "concentration_expm",
    "amounts_expm",
    "one_compartment_iv_response",
    "one_compartment_oral_response",
    "two_compartment_iv_response",
    "two_compartment_oral_response",
    "three_compartment_iv_response",
    "transit_response",
    "three_compartment_rates",
]


# --------------------------------------------------------------------------------------------
# Model table
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelSpec:
    """Structure of one linear PK model.

    - `params`: parameter names (public API of ``pkpd_jax``).
    - `states`: state names, in the order used by [`amounts_expm`][].
    - `dose_state`, `central_state`: indices into `states`.
    - `volume`: name of the central volume parameter.
    - `lag`: name of the lag-time parameter, or ``None``.
    """

    params: tuple[str, ...]
    states: tuple[str, ...]
    dose_state: int
    central_state: int
    volume: str
    lag: str | None = None


_ORAL1 = ("gut", "central")
MODELS: dict[str, ModelSpec] = {
    "pk_1c_iv": ModelSpec(("CL", "V"), ("central",), 0, 0, "V"),
    "pk_1c_oral": ModelSpec(("ka", "CL", "V"), _ORAL1, 0, 1, "V"),
    "pk_1c_oral_lag": ModelSpec(("ka", "CL", "V", "tlag"), _ORAL1, 0, 1, "V", lag="tlag"),
    "pk_2c_iv": ModelSpec(("CL", "V1", "Q", "V2"), ("central", "peripheral"), 0, 0, "V1"),
    "pk_2c_iv_infusion": ModelSpec(("CL", "V1", "Q", "V2"), ("central", "peripheral"), 0, 0, "V1"),
    "pk_2c_oral": ModelSpec(
        ("ka", "CL", "V1", "Q", "V2"), ("gut", "central", "peripheral"), 0, 1, "V1"
    ),
    "pk_1c_transit_abs": ModelSpec(
        ("ktr", "CL", "V"), ("transit1", "transit2", "transit3", "central"), 0, 3, "V"
    ),
    "pk_3c_iv": ModelSpec(
        ("CL", "V1", "Q2", "V2", "Q3", "V3"),
        ("central", "peripheral1", "peripheral2"),
        0,
        0,
        "V1",
    ),
    "pk_1c_oral_flipflop": ModelSpec(("ka", "CL", "V"), _ORAL1, 0, 1, "V"),
}


class NearlyEqualRatesError(ValueError):
    """Two exponents of a closed form (nearly) coincide, so its partial fractions are singular.

    [`concentration`][] catches this and falls back to [`concentration_expm`][].
    """


def _spec(model: str) -> ModelSpec:
    try:
        return MODELS[model]
    except KeyError:
        raise KeyError(f"Unknown model {model!r}; known: {sorted(MODELS)}.") from None


def _params(model: str, params: Mapping[str, float]) -> dict[str, float]:
    """Required parameters as floats; all must be finite, positive (``tlag`` non-negative)."""
    spec = _spec(model)
    missing = [name for name in spec.params if name not in params]
    if missing:
        raise KeyError(f"Model {model!r} needs parameters {spec.params}; missing {missing}.")
    out = {name: float(params[name]) for name in spec.params}
    for name, value in out.items():
        bad = (value < 0.0) if name == spec.lag else (value <= 0.0)
        if not math.isfinite(value) or bad:
            raise ValueError(f"Parameter {name}={value} of {model!r} is out of range.")
    return out


# --------------------------------------------------------------------------------------------
# Linear rate matrices
# --------------------------------------------------------------------------------------------


def rate_matrix(model: str, params: Mapping[str, float]) -> tuple[np.ndarray, int, int, str]:
    """The linear system ``dA/dt = K A (+ input into the dose state)`` of a model.

    Returns ``(K, dose_index, central_index, volume_name)`` with micro-constants
    ``k = CL/V`` (or ``k10 = CL/V1``), ``k12 = Q/V1``, ``k21 = Q/V2``, ``k13 = Q3/V1``,
    ``k31 = Q3/V3`` (NONMEM ADVAN11 naming for the 3-compartment model: ``Q2``/``V2`` the first
    peripheral, ``Q3``/``V3`` the second). Gabrielsson & Weiner (2016) section 2.6.
    """
    spec = _spec(model)
    p = _params(model, params)
    if model == "pk_1c_iv":
        K = np.array([[-p["CL"] / p["V"]]])
    elif model in ("pk_1c_oral", "pk_1c_oral_lag", "pk_1c_oral_flipflop"):
        ka, k = p["ka"], p["CL"] / p["V"]
        K = np.array([[-ka, 0.0], [ka, -k]])
    elif model in ("pk_2c_iv", "pk_2c_iv_infusion"):
        k10, k12, k21 = p["CL"] / p["V1"], p["Q"] / p["V1"], p["Q"] / p["V2"]
        K = np.array([[-(k10 + k12), k21], [k12, -k21]])
    elif model == "pk_2c_oral":
        ka = p["ka"]
        k10, k12, k21 = p["CL"] / p["V1"], p["Q"] / p["V1"], p["Q"] / p["V2"]
        K = np.array([[-ka, 0.0, 0.0], [ka, -(k10 + k12), k21], [0.0, k12, -k21]])
    elif model == "pk_1c_transit_abs":
        ktr, k = p["ktr"], p["CL"] / p["V"]
        K = np.array(
            [
                [-ktr, 0.0, 0.0, 0.0],
                [ktr, -ktr, 0.0, 0.0],
                [0.0, ktr, -ktr, 0.0],
                [0.0, 0.0, ktr, -k],
            ]
        )
    elif model == "pk_3c_iv":
        k10 = p["CL"] / p["V1"]
        k12, k21 = p["Q2"] / p["V1"], p["Q2"] / p["V2"]
        k13, k31 = p["Q3"] / p["V1"], p["Q3"] / p["V3"]
        K = np.array([[-(k10 + k12 + k13), k21, k31], [k12, -k21, 0.0], [k13, 0.0, -k31]])
    else:  # pragma: no cover - MODELS and this function must list the same names
        raise AssertionError(model)
    return K.astype(np.float64), spec.dose_state, spec.central_state, spec.volume


# --------------------------------------------------------------------------------------------
# Closed-form unit responses (one function per model family)
# --------------------------------------------------------------------------------------------


class ExpTerms(NamedTuple):
    """Unit response ``h(t) = sum_i coef[i] * t**power[i] * exp(-rate[i] * t)`` for ``t >= 0``.

    ``h`` is the central concentration (mg/L) after a 1 mg bolus at ``t = 0`` into the dose
    compartment; ``integral_0^inf h = 1 / CL`` for every model here.
    """

    coef: np.ndarray
    rate: np.ndarray
    power: np.ndarray


def _terms(coef, rate, power=None) -> ExpTerms:
    coef = np.asarray(coef, dtype=np.float64)
    rate = np.asarray(rate, dtype=np.float64)
    power = np.zeros(coef.shape, dtype=np.int64) if power is None else np.asarray(power)
    return ExpTerms(coef, rate, power.astype(np.int64))


def _require_distinct(rates, rel_tol: float, what: str) -> None:
    """Raise [`NearlyEqualRatesError`][] if two of `rates` agree to `rel_tol` (relative)."""
    rates = [float(r) for r in rates]
    for i in range(len(rates)):
        for j in range(i + 1, len(rates)):
            gap = abs(rates[i] - rates[j]) / max(rates[i], rates[j])
            if gap < rel_tol:
                raise NearlyEqualRatesError(
                    f"{what}: rates {rates[i]:.17g} and {rates[j]:.17g} are nearly equal "
                    f"(relative gap {gap:.3g} < {rel_tol:g}); the partial fractions are singular."
                )


# Relative gap between exponents below which the closed forms are not used. Cancellation in a
# partial-fraction expansion costs about eps / gap**m for a pole of multiplicity m.
_SIMPLE_POLE_TOL = 1e-4
_TRIPLE_POLE_TOL = 1e-2


def one_compartment_iv_response(CL: float, V: float) -> ExpTerms:
    """One compartment, IV bolus: ``C(t) = D / V * exp(-k t)``, ``k = CL / V``.

    Rowland & Tozer (2011) ch. 3; Gabrielsson & Weiner (2016) section 2.2.
    """
    return _terms([1.0 / V], [CL / V])


def one_compartment_oral_response(ka: float, CL: float, V: float) -> ExpTerms:
    """One compartment, first-order absorption (bioavailability 1): the Bateman function.

    ``C(t) = D ka / (V (ka - k)) * (exp(-k t) - exp(-ka t))``, ``k = CL / V``; valid for
    ``ka != k`` in either order (flip-flop kinetics when ``ka < k``).
    Rowland & Tozer (2011) ch. 6; Gabrielsson & Weiner (2016) section 2.3.
    """
    k = CL / V
    _require_distinct([ka, k], _SIMPLE_POLE_TOL, "one-compartment oral (ka vs CL/V)")
    a = ka / (V * (ka - k))
    return _terms([a, -a], [k, ka])


def _two_compartment_macro(CL: float, V1: float, Q: float, V2: float):
    """Micro-constants and the hybrid rate constants ``alpha > beta`` of the 2-compartment model.

    ``alpha, beta = (a +- sqrt(a**2 - 4 k10 k21)) / 2`` with ``a = k10 + k12 + k21``;
    ``beta`` is computed as ``k10 k21 / alpha`` to avoid cancellation.
    Gabrielsson & Weiner (2016) section 2.5; Gibaldi & Perrier (1982) ch. 2.
    """
    k10, k12, k21 = CL / V1, Q / V1, Q / V2
    a = k10 + k12 + k21
    alpha = 0.5 * (a + math.sqrt(a * a - 4.0 * k10 * k21))
    beta = k10 * k21 / alpha
    return k10, k12, k21, alpha, beta


def two_compartment_iv_response(CL: float, V1: float, Q: float, V2: float) -> ExpTerms:
    """Two compartments, IV bolus into central: ``C(t) = A exp(-alpha t) + B exp(-beta t)``.

    ``A = D (alpha - k21) / (V1 (alpha - beta))``, ``B = D (k21 - beta) / (V1 (alpha - beta))``.
    Gabrielsson & Weiner (2016) section 2.5; Rowland & Tozer (2011) ch. 19.
    """
    _, _, k21, alpha, beta = _two_compartment_macro(CL, V1, Q, V2)
    den = V1 * (alpha - beta)
    return _terms([(alpha - k21) / den, (k21 - beta) / den], [alpha, beta])


def two_compartment_oral_response(ka: float, CL: float, V1: float, Q: float, V2: float) -> ExpTerms:
    """Two compartments, first-order absorption into central (bioavailability 1).

    ``C(t) = D ka / V1 * [ (k21 - alpha) / ((ka - alpha)(beta - alpha)) exp(-alpha t)
    + (k21 - beta) / ((ka - beta)(alpha - beta)) exp(-beta t)
    + (k21 - ka) / ((alpha - ka)(beta - ka)) exp(-ka t) ]``.
    Gabrielsson & Weiner (2016) section 2.5 (first-order input); Gibaldi & Perrier (1982) ch. 2.
    """
    _, _, k21, alpha, beta = _two_compartment_macro(CL, V1, Q, V2)
    _require_distinct([ka, alpha, beta], _SIMPLE_POLE_TOL, "two-compartment oral")
    s = ka / V1
    coef = [
        s * (k21 - alpha) / ((ka - alpha) * (beta - alpha)),
        s * (k21 - beta) / ((ka - beta) * (alpha - beta)),
        s * (k21 - ka) / ((alpha - ka) * (beta - ka)),
    ]
    return _terms(coef, [alpha, beta, ka])


def three_compartment_rates(
    CL: float, V1: float, Q2: float, V2: float, Q3: float, V3: float
) -> np.ndarray:
    """Hybrid rate constants ``alpha > beta > gamma`` of the 3-compartment mammillary model.

    They are the roots of ``lam**3 - a2 lam**2 + a1 lam - a0 = 0`` with
    ``a2 = k10 + k12 + k13 + k21 + k31``,
    ``a1 = k10 k21 + k10 k31 + k12 k31 + k13 k21 + k21 k31``, ``a0 = k10 k21 k31``,
    solved with the trigonometric (Viete) formula for three real roots and polished with two
    Newton steps. Gabrielsson & Weiner (2016) section 2.6; the same formulas as NONMEM ADVAN11.
    """
    k10 = CL / V1
    k12, k21, k13, k31 = Q2 / V1, Q2 / V2, Q3 / V1, Q3 / V3
    a2 = k10 + k12 + k13 + k21 + k31
    a1 = k10 * k21 + k10 * k31 + k12 * k31 + k13 * k21 + k21 * k31
    a0 = k10 * k21 * k31
    # Depressed cubic in y = lam - a2/3: y**3 + p y + q = 0 (p < 0 for three real roots).
    p = a1 - a2 * a2 / 3.0
    q = -2.0 * a2**3 / 27.0 + a1 * a2 / 3.0 - a0
    r = 2.0 * math.sqrt(-p / 3.0)
    phi = math.acos(min(1.0, max(-1.0, 3.0 * q / (p * r))))
    lam = np.array([r * math.cos((phi - 2.0 * math.pi * j) / 3.0) + a2 / 3.0 for j in range(3)])
    for _ in range(2):
        f = ((lam - a2) * lam + a1) * lam - a0
        df = (3.0 * lam - 2.0 * a2) * lam + a1
        lam = np.where(df != 0.0, lam - f / np.where(df != 0.0, df, 1.0), lam)
    return np.sort(lam)[::-1]


def three_compartment_iv_response(
    CL: float, V1: float, Q2: float, V2: float, Q3: float, V3: float
) -> ExpTerms:
    """Three compartments, IV bolus into central: ``C(t) = sum_i A_i exp(-lam_i t)``.

    Partial fractions of the Laplace transform ``(s + k21)(s + k31) / (V1 prod_j (s + lam_j))``:
    ``A_i = D (k21 - lam_i)(k31 - lam_i) / (V1 prod_{j != i} (lam_j - lam_i))``.
    Gabrielsson & Weiner (2016) section 2.6; Gibaldi & Perrier (1982) ch. 2 and appendix B.
    """
    k21, k31 = Q2 / V2, Q3 / V3
    lam = three_compartment_rates(CL, V1, Q2, V2, Q3, V3)
    _require_distinct(lam, _SIMPLE_POLE_TOL, "three-compartment IV")
    coef = []
    for i in range(3):
        den = V1 * np.prod([lam[j] - lam[i] for j in range(3) if j != i])
        coef.append((k21 - lam[i]) * (k31 - lam[i]) / den)
    return _terms(coef, lam)


def transit_response(ktr: float, CL: float, V: float) -> ExpTerms:
    """Three transit compartments (rate ``ktr`` each) into one compartment with ``k = CL / V``.

    The amount reaching central is the convolution of the Erlang(3, ktr) density with
    ``exp(-k t)``; with ``d = k - ktr`` the partial fractions of
    ``ktr**3 / ((s + ktr)**3 (s + k))`` give
    ``C(t) = D ktr**3 / V * [ t**2 / (2 d) e^{-ktr t} - t / d**2 e^{-ktr t}
    + (e^{-ktr t} - e^{-k t}) / d**3 ]``.
    Savic et al. (2007) for the model; Gibaldi & Perrier (1982) appendix B for the inversion.

    Conditioning: the terms cancel to ``ktr**3 t**3 / 6`` at small ``t``, costing about
    ``eps * 6 / (|d| t)**3`` relative error, so [`concentration`][] evaluates the transit model by
    superposing exact matrix-exponential single-dose responses instead; this form is used by the
    self-tests as an independent cross-check.
    """
    k = CL / V
    _require_distinct([ktr, k], _TRIPLE_POLE_TOL, "transit (ktr vs CL/V)")
    d = k - ktr
    s = ktr**3 / V
    coef = [s / (2.0 * d), -s / d**2, s / d**3, -s / d**3]
    return _terms(coef, [ktr, ktr, ktr, k], [2, 1, 0, 0])


def unit_response(model: str, params: Mapping[str, float]) -> ExpTerms:
    """Closed-form unit (1 mg bolus at ``t = 0``) concentration response of `model`.

    Raises [`NearlyEqualRatesError`][] where the partial fractions are (nearly) singular.
    """
    p = _params(model, params)
    if model == "pk_1c_iv":
        return one_compartment_iv_response(p["CL"], p["V"])
    if model in ("pk_1c_oral", "pk_1c_oral_lag", "pk_1c_oral_flipflop"):
        return one_compartment_oral_response(p["ka"], p["CL"], p["V"])
    if model in ("pk_2c_iv", "pk_2c_iv_infusion"):
        return two_compartment_iv_response(p["CL"], p["V1"], p["Q"], p["V2"])
    if model == "pk_2c_oral":
        return two_compartment_oral_response(p["ka"], p["CL"], p["V1"], p["Q"], p["V2"])
    if model == "pk_1c_transit_abs":
        return transit_response(p["ktr"], p["CL"], p["V"])
    if model == "pk_3c_iv":
        return three_compartment_iv_response(p["CL"], p["V1"], p["Q2"], p["V2"], p["Q3"], p["V3"])
    raise AssertionError(model)  # pragma: no cover


# --------------------------------------------------------------------------------------------
# Dose handling and superposition
# --------------------------------------------------------------------------------------------


def _doses(model, params, times, amounts, durations, obs_times, cmts=None):
    """Validated dose arrays after the lag shift, without zero-amount and dropped doses."""
    spec = _spec(model)
    p = _params(model, params)
    t = np.atleast_1d(np.asarray(times, dtype=np.float64))
    a = np.atleast_1d(np.asarray(amounts, dtype=np.float64))
    d = np.atleast_1d(np.asarray(durations, dtype=np.float64))
    c = np.full(t.shape, spec.dose_state) if cmts is None else np.atleast_1d(np.asarray(cmts))
    obs = np.atleast_1d(np.asarray(obs_times, dtype=np.float64))
    if not (t.ndim == 1 and t.shape == a.shape == d.shape == c.shape):
        raise ValueError(
            f"times, amounts, durations (and cmts) must be 1-D of equal length; got "
            f"{t.shape}, {a.shape}, {d.shape}, {c.shape}."
        )
    if obs.ndim != 1:
        raise ValueError(f"obs_times must be 1-D; got shape {obs.shape}.")
    for name, arr in (("times", t), ("amounts", a), ("durations", d), ("obs_times", obs)):
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"{name} must be finite.")
    if np.any(a < 0) or np.any(d < 0):
        raise ValueError("amounts and durations must be non-negative.")
    c = np.where(c < 0, spec.dose_state, c).astype(np.int64)
    if np.any(c >= len(spec.states)):
        raise ValueError(f"cmts must index the states {spec.states}.")
    if spec.lag is not None:
        t = t + p[spec.lag]
    keep = a > 0
    if obs.size:
        keep &= t <= obs.max()  # a dose shifted past the last observation is dropped
    return t[keep], a[keep], d[keep], c[keep], obs


def _power_exp_integral(power: int, rate: float, t1: np.ndarray, t2: np.ndarray) -> np.ndarray:
    """``integral_{t1}^{t2} s**power exp(-rate s) ds`` for ``0 <= t1 <= t2`` (elementwise).

    ``power = 0``: ``exp(-rate t1) (1 - exp(-rate (t2 - t1))) / rate`` (``expm1``, no
    cancellation). ``power >= 1``: ``power! / rate**(power+1)`` times a difference of regularised
    incomplete gamma functions, lower ``P`` below the mode and upper ``Q`` above it.
    """
    if power == 0:
        return np.exp(-rate * t1) * -np.expm1(-rate * (t2 - t1)) / rate
    n = power + 1
    x1, x2 = rate * t1, rate * t2
    lower = gammainc(n, x2) - gammainc(n, x1)
    upper = gammaincc(n, x1) - gammaincc(n, x2)
    return math.factorial(power) / rate**n * np.where(x1 < n, lower, upper)


def _superpose(terms: ExpTerms, t_dose, amount, duration, obs) -> np.ndarray:
    """Sum of single-dose responses at `obs` (linear superposition).

    A bolus of ``D`` at ``t_d`` adds ``D h(t - t_d)`` for ``t > t_d`` only (pre-dose rule). An
    infusion of rate ``R = D / T`` over ``[t_d, t_d + T)`` adds
    ``R * integral_{max(0, tau - T)}^{tau} h(s) ds`` with ``tau = t - t_d > 0``
    (Rowland & Tozer 2011 ch. 10: an infusion is a train of infinitesimal boluses).
    """
    out = np.zeros(obs.shape)
    if t_dose.size == 0 or obs.size == 0:
        return out
    tau = obs[:, None] - t_dose[None, :]  # (n_obs, n_dose)
    after = tau > 0.0
    tau_pos = np.where(after, tau, 0.0)
    bolus = duration == 0.0
    T = np.where(bolus, 1.0, duration)[None, :]
    t1 = np.maximum(tau_pos - T, 0.0)
    response = np.zeros(tau.shape)
    for c, lam, pw in zip(terms.coef, terms.rate, terms.power):
        h = c * tau_pos**pw * np.exp(-lam * tau_pos)
        integral = c * _power_exp_integral(int(pw), float(lam), t1, tau_pos)
        response += np.where(bolus[None, :], amount[None, :] * h, amount[None, :] / T * integral)
    return np.sum(np.where(after, response, 0.0), axis=1)


def concentration_closed_form(
    model: str,
    params: Mapping[str, float],
    times,
    amounts,
    durations,
    obs_times,
) -> np.ndarray:
    """Closed-form concentrations (mg/L) at `obs_times`; raises [`NearlyEqualRatesError`][]."""
    terms = unit_response(model, params)
    t, a, d, _, obs = _doses(model, params, times, amounts, durations, obs_times)
    return _superpose(terms, t, a, d, obs)


def _superpose_expm(model, params, t_dose, amount, duration, obs) -> np.ndarray:
    """Superposition of exact single-dose responses, each from the matrix exponential of ``K``.

    A bolus ``D`` gives ``x(tau) = e^{K tau} D e_dose``; an infusion of rate ``R`` over ``T``
    gives ``x(tau) = e^{K (tau - s)} integral_0^s e^{K r} dr R e_dose`` with ``s = min(tau, T)``
    (augmented exponential, Van Loan 1978). Only for ``tau > 0`` (pre-dose rule).
    """
    K, dose, central, volume = rate_matrix(model, params)
    n = K.shape[0]
    out = np.zeros(obs.shape)
    for t0, a, d in zip(t_dose, amount, duration):
        tau = obs[obs > t0] - t0
        if d == 0.0:
            x = a * expm(K * tau[:, None, None])[:, :, dose]
        else:
            s = np.minimum(tau, d)
            M = np.zeros((n + 1, n + 1))
            M[:n, :n] = K
            M[dose, n] = a / d
            x_end = expm(M * s[:, None, None])[:, :n, n]
            x = np.einsum("kij,kj->ki", expm(K * (tau - s)[:, None, None]), x_end)
        out[obs > t0] += x[:, central]
    return out / _params(model, params)[volume]


def concentration(
    model: str,
    params: Mapping[str, float],
    times,
    amounts,
    durations,
    obs_times,
) -> np.ndarray:
    """Central concentration (mg/L) at `obs_times` by superposition of single-dose responses.

    Left limits at bolus times (a dose at ``t`` is not seen by an observation at ``t``).
    Supports boluses and zero-order infusions for all models in [`MODELS`][]. The responses are
    the closed forms of [`unit_response`][], except for ``pk_1c_transit_abs`` (whose partial
    fractions are ill-conditioned at early times, see [`transit_response`][]) and where two
    exponents nearly coincide (e.g. ``ka == CL/V``, see [`NearlyEqualRatesError`][]): there each
    single-dose response is the exact matrix exponential of the model's rate matrix.
    """
    if model != "pk_1c_transit_abs":
        try:
            return concentration_closed_form(model, params, times, amounts, durations, obs_times)
        except NearlyEqualRatesError:
            pass
    t, a, d, _, obs = _doses(model, params, times, amounts, durations, obs_times)
    return _superpose_expm(model, params, t, a, d, obs)


# --------------------------------------------------------------------------------------------
# Matrix-exponential oracle
# --------------------------------------------------------------------------------------------


def _propagate(K: np.ndarray, x: np.ndarray, u: np.ndarray, dt: float) -> np.ndarray:
    """Exact solution at ``dt`` of ``x' = K x + u`` (``u`` constant) from ``x``.

    ``expm([[K, u], [0, 0]] dt) = [[e^{K dt}, integral_0^dt e^{K s} ds u], [0, 1]]``
    (Van Loan 1978), so one exponential gives both the free and the forced response.
    """
    n = K.shape[0]
    M = np.zeros((n + 1, n + 1))
    M[:n, :n] = K
    M[:n, n] = u
    E = expm(M * dt)
    return E[:n, :n] @ x + E[:n, n]


def amounts_expm(
    model: str,
    params: Mapping[str, float],
    times,
    amounts,
    durations,
    obs_times,
    cmts=None,
) -> np.ndarray:
    """Amounts (mg) of every state at `obs_times`, shape ``(n_obs, n_states)``.

    Events (dose starts, infusion ends, observations) are visited in time order; between two
    events the input is constant and the state is propagated exactly with [`_propagate`][]. At an
    event time observations are recorded first, then boluses are added (pre-dose rule).
    `cmts` optionally gives each dose's target state (0-based; ``-1`` or ``None`` = the model's
    dose compartment), mirroring ``pkpd_jax.dosing.Regimen.cmt``.
    """
    K, _, _, _ = rate_matrix(model, params)
    n = K.shape[0]
    t, a, d, c, obs = _doses(model, params, times, amounts, durations, obs_times, cmts)
    out = np.zeros((obs.size, n))
    if obs.size == 0:
        return out
    infusion = d > 0.0
    t_end = t + d
    rate = np.where(infusion, a / np.where(infusion, d, 1.0), 0.0)
    events = np.unique(np.concatenate([t, t_end[infusion], obs]))
    x = np.zeros(n)
    t_prev = events[0]
    for te in events:
        if te > t_prev:
            active = infusion & (t <= t_prev) & (t_end > t_prev)
            u = np.zeros(n)
            np.add.at(u, c[active], rate[active])
            x = _propagate(K, x, u, te - t_prev)
            t_prev = te
        out[obs == te] = x
        at = (~infusion) & (t == te)
        np.add.at(x, c[at], a[at])
    return out


def concentration_expm(
    model: str,
    params: Mapping[str, float],
    times,
    amounts,
    durations,
    obs_times,
    cmts=None,
) -> np.ndarray:
    """Central concentration (mg/L) from [`amounts_expm`][]: ``A_central / V_central``."""
    _, _, central, volume = rate_matrix(model, params)
    A = amounts_expm(model, params, times, amounts, durations, obs_times, cmts)
    return A[:, central] / _params(model, params)[volume]
