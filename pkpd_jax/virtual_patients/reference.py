"""Reference virtual population of adults (18-85 y): physiological covariates from published relations.

One row per virtual patient, columns [`VARIABLES`][] (units in [`UNITS`][]):

- ``female`` (0/1): Bernoulli(0.5).
- ``age`` (y): uniform on [18, 85] (every age band equally represented).
- ``height`` (cm): normal, ICRP 89 reference means (176 cm men, 163 cm women), SD 7 / 6.5 cm (CDC NHANES
  anthropometric reference data, Fryar et al. 2021), minus 0.1 cm/y after 40 y (stature loss with age,
  Sorkin, Muller & Andres 1999).
- ``bmi`` (kg/m²): log-normal, log-SD 0.16; median set so a 30-y-old has on average the ICRP 89 reference
  weight (73 kg men, 60 kg women), rising 0.1 kg/m² per year from 30 to 60 y (NHANES age trend).
- ``weight`` (kg): BMI × height² (exactly).
- ``v_<organ>`` (L): organ masses (below) / tissue densities ([`DENSITY`][]; Brown et al. 1997; ICRP 89).
- ``co`` (L/h): cardiac index × Du Bois BSA, the index set so the ICRP 89 reference adults get 6.5 / 5.9
  L/min, declining 0.5 %/y after 40 y (between Brandfonbrener et al. 1955, ~1 %/y, and the small decline
  in screened healthy adults, Rodeheffer et al. 1984), log-normal variability (log-SD 0.12).
- ``q_<organ>`` (L/h): fractions of cardiac output (ICRP 89 Table 2.40; Brown et al. 1997 Table 23),
  Dirichlet (concentration 400) with the remaining tissues (bone, other organs) as one more share.
- ``gfr`` (mL/min): CKD-EPI 2021 creatinine equation (race-free; Inker et al. 2021) × BSA / 1.73.
- ``hct`` (L/L): normal, 0.45 men / 0.405 women, SD 0.03; men lose 0.0005/y after 50 y.
- ``albumin`` (g/L): normal, 44 g/L at 40 y, -0.05 g/L per year of age (Weaving et al. 2016), SD 3 g/L.

Organ masses, starting from the ICRP 89 reference adult (Valentin 2002, Table 2.8) at 30 y:

- body fat % from BMI, age and sex (Deurenberg, Weststrate & Seidell 1991:
  ``BF% = 1.2 BMI + 0.23 age - 10.8 male - 5.4``), clipped to [5, 55] %; adipose tissue holds 85 % lipid
  (so adipose mass = fat mass / 0.85); lean body mass ``LBM = W - fat``;
- skeletal muscle = LBM × the ICRP reference fraction, less 0.5 %/y after 45 y (Janssen et al. 2000);
- liver, kidneys, heart ∝ LBM^0.75 (liver -0.3 %/y after 40 y, Wynne et al. 1989; kidneys -0.5 %/y after
  50 y); brain ∝ height, -0.2 %/y after 40 y (Dekaban & Sadowsky 1978); lungs ∝ height²; skin ∝ BSA
  (Du Bois & Du Bois 1916: ``BSA = 0.007184 W^0.425 H^0.725``);
- each organ gets independent log-normal variability (log-SD 0.12; 0.10 for brain and skin).

Serum creatinine (mg/dL) is log-normal, median 0.95 (men) / 0.75 (women) at 40 y, +0.3 %/y after 40 y,
log-SD 0.18; it only enters through the eGFR and is not a column.

The relations are the untruncated model; the reference population is that model **restricted to the
physiological constraints** of [`pkpd_jax.virtual_patients.constraints`][]: draws that violate any are
redrawn (about 0.9 % of draws: out-of-range values, organs outweighing the body in the obese tail), so
every reference patient satisfies every constraint. Everything is numpy and seeded: the same ``seed``
gives the same table.
"""

from __future__ import annotations

import numpy as np

from .constraints import violations_numpy
from .schema import (
    DENSITY as DENSITY,
    FLOW_ORGANS as FLOW_ORGANS,
    ORGANS as ORGANS,
    UNITS as UNITS,
    VARIABLES as VARIABLES,
    du_bois_bsa as du_bois_bsa,
    index as index,
)


__all__ = [
    "VARIABLES", "UNITS", "ORGANS", "FLOW_ORGANS", "DENSITY", "ICRP_REFERENCE", "index",
    "du_bois_bsa", "ckd_epi_2021", "generate", "as_dict",
]

#: ICRP Publication 89 reference adults (Valentin 2002): body, organ masses (kg), cardiac output (L/min)
#: and blood-flow fractions of cardiac output (Table 2.40). Index 0 = male, 1 = female.
ICRP_REFERENCE = {
    "weight": (73.0, 60.0),
    "height": (176.0, 163.0),
    "mass": {
        "liver": (1.80, 1.40), "kidney": (0.31, 0.275), "brain": (1.45, 1.30), "heart": (0.33, 0.25),
        "lung": (0.50, 0.42), "muscle": (29.0, 17.5), "adipose": (18.2, 22.5), "skin": (3.30, 2.30),
    },
    "cardiac_output": (6.5, 5.9),
    "flow_fraction": {
        "liver": (0.255, 0.27), "kidney": (0.19, 0.17), "brain": (0.12, 0.12), "heart": (0.04, 0.05),
        "muscle": (0.17, 0.12), "adipose": (0.05, 0.085), "skin": (0.05, 0.05),
    },
}

AGE_RANGE = (18.0, 85.0)
_REF_AGE = 30.0
_BMI_LOG_SD = 0.16
_DIRICHLET_CONCENTRATION = 400.0


def ckd_epi_2021(scr, age, female, xp=np):
    """eGFR, mL/min/1.73 m², CKD-EPI 2021 creatinine equation without race (Inker et al., NEJM 2021).

    ``142 · min(Scr/κ, 1)^α · max(Scr/κ, 1)^-1.200 · 0.9938^age · 1.012 [female]`` with κ = 0.7 (F) / 0.9 (M),
    α = -0.241 (F) / -0.302 (M), Scr in mg/dL.
    """
    kappa = xp.where(female > 0.5, 0.7, 0.9)
    alpha = xp.where(female > 0.5, -0.241, -0.302)
    r = scr / kappa
    return (142.0 * xp.minimum(r, 1.0) ** alpha * xp.maximum(r, 1.0) ** -1.200 * 0.9938**age
            * xp.where(female > 0.5, 1.012, 1.0))


def _deurenberg_fat_fraction(bmi, age, female):
    """Body-fat fraction (Deurenberg et al. 1991), clipped to [0.05, 0.55]."""
    return np.clip((1.2 * bmi + 0.23 * age - 10.8 * (1.0 - female) - 5.4) / 100.0, 0.05, 0.55)


def _reference_lbm(sex: int) -> float:
    w, h = ICRP_REFERENCE["weight"][sex], ICRP_REFERENCE["height"][sex]
    fat = _deurenberg_fat_fraction(w / (h / 100) ** 2, _REF_AGE, float(sex))
    return float(w * (1.0 - fat))


def _draw(n: int, rng: np.random.Generator) -> np.ndarray:
    female = (rng.random(n) < 0.5).astype(float)
    s = female.astype(int)
    pick = lambda pair: np.asarray(pair, float)[s]
    age = rng.uniform(*AGE_RANGE, n)
    over = lambda a0: np.maximum(age - a0, 0.0)

    height = pick((176.0, 163.0)) + pick((7.0, 6.5)) * rng.standard_normal(n) - 0.1 * over(40.0)
    ref_bmi = pick(ICRP_REFERENCE["weight"]) / (pick(ICRP_REFERENCE["height"]) / 100.0) ** 2
    median_bmi = ref_bmi * np.exp(-0.5 * _BMI_LOG_SD**2) + 0.1 * np.clip(age - _REF_AGE, 0.0, 30.0)
    bmi = median_bmi * np.exp(_BMI_LOG_SD * rng.standard_normal(n))
    weight = bmi * (height / 100.0) ** 2
    bsa = du_bois_bsa(weight, height)
    ref_bsa = du_bois_bsa(pick(ICRP_REFERENCE["weight"]), pick(ICRP_REFERENCE["height"]))

    fat_mass = _deurenberg_fat_fraction(bmi, age, female) * weight
    lbm = weight - fat_mass
    ref_lbm = np.array([_reference_lbm(0), _reference_lbm(1)])[s]
    ref_mass = {o: pick(m) for o, m in ICRP_REFERENCE["mass"].items()}
    noise = lambda sd: np.exp(sd * rng.standard_normal(n))
    mass = {
        "liver": ref_mass["liver"] * (lbm / ref_lbm) ** 0.75 * (1 - 0.003 * over(40.0)) * noise(0.12),
        "kidney": ref_mass["kidney"] * (lbm / ref_lbm) ** 0.75 * (1 - 0.005 * over(50.0)) * noise(0.12),
        "brain": ref_mass["brain"] * height / pick(ICRP_REFERENCE["height"]) * (1 - 0.002 * over(40.0))
        * noise(0.10),
        "heart": ref_mass["heart"] * (lbm / ref_lbm) ** 0.75 * noise(0.12),
        "lung": ref_mass["lung"] * (height / pick(ICRP_REFERENCE["height"])) ** 2 * noise(0.12),
        "muscle": ref_mass["muscle"] * lbm / ref_lbm * (1 - 0.005 * over(45.0)) * noise(0.12),
        "adipose": fat_mass / 0.85 * noise(0.12),
        "skin": ref_mass["skin"] * bsa / ref_bsa * noise(0.10),
    }
    volumes = [mass[o] / DENSITY[o] for o in ORGANS]

    ref_ci = pick(ICRP_REFERENCE["cardiac_output"]) / ref_bsa
    co = 60.0 * ref_ci * bsa * (1 - 0.005 * over(40.0)) * noise(0.12)   # L/h
    fractions = np.stack([pick(ICRP_REFERENCE["flow_fraction"][o]) for o in FLOW_ORGANS], axis=1)
    alpha = _DIRICHLET_CONCENTRATION * np.concatenate([fractions, 1.0 - fractions.sum(1, keepdims=True)], 1)
    shares = rng.gamma(alpha)
    shares = shares / shares.sum(1, keepdims=True)
    flows = [co * shares[:, i] for i in range(len(FLOW_ORGANS))]

    scr = pick((0.95, 0.75)) * (1 + 0.003 * over(40.0)) * np.exp(0.18 * rng.standard_normal(n))
    gfr = ckd_epi_2021(scr, age, female) * bsa / 1.73
    hct = pick((0.45, 0.405)) - 0.0005 * over(50.0) * (1 - female) + 0.03 * rng.standard_normal(n)
    albumin = 44.0 - 0.05 * (age - 40.0) + 3.0 * rng.standard_normal(n)
    return np.stack([female, age, height, weight, bmi, *volumes, co, *flows, gfr, hct, albumin], axis=1)


def generate(n: int, seed: int = 0, *, return_rejected: bool = False):
    """`n` reference patients, shape ``(n, len(VARIABLES))``, float64, natural units ([`UNITS`][]).

    Draws from the relations in the module docstring and redraws every patient that violates any
    constraint of [`pkpd_jax.virtual_patients.constraints`][] (see there), so the result satisfies all of
    them. With `return_rejected`, also returns the fraction of draws that were redrawn.
    """
    if n < 0:
        raise ValueError(f"`n` must be >= 0; got {n}.")
    rng = np.random.default_rng(seed)
    kept, drawn, n_kept = [], 0, 0
    while n_kept < n:
        m = max(1024, int(1.05 * (n - n_kept)) + 16)
        x = _draw(m, rng)
        drawn += m
        ok = violations_numpy(x).sum(1) == 0.0
        kept.append(x[ok])
        n_kept += int(ok.sum())
    x = np.concatenate(kept)[:n] if kept else np.zeros((0, len(VARIABLES)))
    if return_rejected:
        return x, 1.0 - n_kept / max(drawn, 1)
    return x


def as_dict(x: np.ndarray) -> dict[str, np.ndarray]:
    """Columns of a covariate matrix by variable name."""
    return {name: x[..., i] for i, name in enumerate(VARIABLES)}
