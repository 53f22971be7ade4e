"""The whole-body, perfusion-limited PBPK model as a registry PK model.

**States** (amounts, mg), in this order: ``gut_lumen`` (oral depot, index 0, so a data set's
``CMT=1`` is the oral route as in the compartmental oral models), ``venous`` (index 1, the
default dose compartment: IV bolus and infusion), ``arterial``, then one state per tissue of
``TISSUES``.

**Equations** (C = amount / volume; tissue t with volume V_t, blood flow Q_t and tissue:plasma
partition coefficient Kp_t releases venous blood at ``Cv_t = C_t · BP / Kp_t``):

- lung: ``dA/dt = CO · (C_venous - Cv_lung)``; arterial: ``CO · (Cv_lung - C_arterial)``;
- other tissues: ``Q_t · (C_arterial - Cv_t)``; gut and spleen drain into the liver;
- liver: ``Q_ha C_arterial + Q_gut Cv_gut + Q_spleen Cv_spleen - Q_liver Cv_liver
  - fu · CLint · V_liver · C_liver / Kp_liver`` (well-stirred: the unbound concentration in
  the emergent blood is ``fu_b · Cv_liver = fu · C_liver / Kp_liver``; ``Q_liver = Q_ha + Q_gut
  + Q_spleen``);
- kidney: ``Q_kidney (C_arterial - Cv_kidney) - fu · GFR · C_arterial / BP`` (glomerular
  filtration of unbound drug from the arterial plasma entering the kidney);
- venous: ``sum_{t in SYSTEMIC} Q_t Cv_t - CO · C_venous``; ``CO = Q_ha + sum of the other
  tissue flows``, so flows always sum to the cardiac output;
- gut lumen: ``-ka · A_lumen``, of which ``fa · ka · A_lumen`` enters the gut tissue (the rest is
  not absorbed and leaves the body).

**Observation:** venous plasma concentration ``C_venous / BP`` (mg/L).

**Analytic results** (derivations by integrating each mass balance from 0 to infinity, or at
steady state). They are closed forms of the same θ, not a second simulation path: documented
fast paths where only CL, Vss or F are needed (the allometry library's truth, the forecaster's
derived input features: algebra on θ, no solve) and test oracles for the solve layer, which
remains the one way to get a concentration curve:

- plasma clearance ``CL = BP · Q_h · fu_b CLint_h / (Q_h + fu_b CLint_h) + fu · GFR`` with
  ``fu_b = fu / BP``, ``CLint_h = CLint · V_liver``, ``Q_h = Q_liver`` (`clearance_analytic`);
- oral bioavailability ``F = fa · (1 - E_h)``, ``E_h = fu_b CLint_h / (Q_h + fu_b CLint_h)``;
- steady-state volume (plasma reference, ``A_body / C_plasma`` under a constant IV infusion)
  ``Vss = BP (V_arterial + V_venous) + sum_t V_t Kp_t (1 - E_t)``, where ``E_liver = E_h``,
  ``E_kidney = fu GFR / (BP Q_kidney)`` and ``E_t = 0`` elsewhere (`vss_analytic`); without
  elimination it is the textbook ``V_blood · BP + sum_t V_t · Kp_t``.

The model is linear, so the simulator propagates it exactly with matrix exponentials
(``method="auto"``). The ODE path works too but the lung and blood pools are fast (``CO / V``
of order 10^3 1/h): use ``diffrax.Kvaerno5()`` there.

**Parameters** carry the physiology, the partition coefficients and the drug, so a population of
physiologies vmaps through θ like any other model. Prior medians are the human reference
(ICRP 89 male) and a reference neutral drug (``REFERENCE_DRUG``); ``fu`` and ``fa`` are declared
positive (so that 1 is a valid value) and must be <= 1 (checked by `pbpk_params` and by
`Drug`). Build θ for a species and a drug with [`pbpk_params`][].
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

import jax.numpy as jnp

from ..models.base import AbstractPK, Param
from .partition import Drug, blood_plasma_ratio, partition_coefficients
from .physiology import PORTAL, SYSTEMIC, TISSUES, physiology


__all__ = [
    "WholeBodyPBPK",
    "WholeBodyPBPKMassBalance",
    "REFERENCE_DRUG",
    "STATES",
    "IV_CMT",
    "ORAL_CMT",
    "pbpk_params",
    "vss_analytic",
    "clearance_analytic",
    "hepatic_extraction",
    "oral_bioavailability",
    "vss_textbook",
]

STATES = ("gut_lumen", "venous", "arterial", *TISSUES)
ORAL_CMT, IV_CMT = 0, 1
_IDX = {s: i for i, s in enumerate(STATES)}
_FLOW_TISSUES = tuple(t for t in TISSUES if t not in ("lung", "liver"))  # own Q_t parameter

REFERENCE_DRUG = Drug(logp=2.0, fu=0.2, clint=5.0, ka=1.0, fa=0.9, name="reference neutral")
"""The drug behind the prior medians of the drug parameters (a moderately lipophilic neutral
compound, 20% unbound, CLint 5 L/h/kg liver)."""


def _build_params() -> tuple[Param, ...]:
    phys = physiology("human")
    kp = partition_coefficients(REFERENCE_DRUG, "human")
    out = [Param(f"V_{t}", "L", phys.volumes[t], 0.25, description=f"{t} volume") for t in TISSUES]
    out += [
        Param("V_arterial", "L", phys.volumes["arterial"], 0.2, description="arterial blood volume"),
        Param("V_venous", "L", phys.volumes["venous"], 0.2, description="venous blood volume"),
    ]
    out += [
        Param(f"Q_{t}", "L/h", phys.flows[t], 0.25, description=f"{t} blood flow")
        for t in _FLOW_TISSUES
    ]
    out.append(Param("Q_ha", "L/h", phys.q_hepatic_artery, 0.3, description="hepatic artery flow"))
    out += [
        Param(f"Kp_{t}", "-", kp[t], 0.5, description=f"{t}:plasma partition coefficient")
        for t in TISSUES
    ]
    out += [
        Param("GFR", "L/h", phys.gfr, 0.25, description="glomerular filtration rate"),
        Param("fu", "-", REFERENCE_DRUG.fu, 0.5, description="fraction unbound in plasma (<= 1)"),
        Param("BP", "-", blood_plasma_ratio(REFERENCE_DRUG), 0.2, description="blood:plasma ratio"),
        Param("CLint", "L/h/kg", REFERENCE_DRUG.clint, 1.0,
              description="hepatic intrinsic clearance of unbound drug per kg liver"),
        Param("ka", "1/h", REFERENCE_DRUG.ka, 0.7, description="oral absorption rate constant"),
        Param("fa", "-", REFERENCE_DRUG.fa, 0.05, description="fraction absorbed (<= 1)"),
    ]
    return tuple(out)


class WholeBodyPBPK(AbstractPK):
    """Whole-body perfusion-limited PBPK (see the module docstring for the equations)."""

    name: ClassVar[str] = "pbpk_whole_body"
    description: ClassVar[str] = (
        "whole-body perfusion-limited PBPK: 12 tissues, arterial/venous blood, well-stirred "
        "liver, renal fu*GFR; IV into venous blood (CMT 2), oral into the gut lumen (CMT 1)"
    )
    states: ClassVar = STATES
    params: ClassVar = _build_params()
    dose_cmt: ClassVar = IV_CMT
    central: ClassVar = IV_CMT
    volume: ClassVar = "V_venous"
    linear: ClassVar = True

    def concentration(self, y, p):
        """Venous plasma concentration (mg/L)."""
        return y[IV_CMT] / p["V_venous"] / p["BP"]

    def _fluxes(self, y, p, rate):
        """(d amounts / dt for STATES, hepatic, renal and unabsorbed loss rates)."""
        bp, fu = p["BP"], p["fu"]
        conc = {s: y[_IDX[s]] / p[f"V_{s}"] for s in STATES[1:]}
        cv = {t: conc[t] * bp / p[f"Kp_{t}"] for t in TISSUES}  # venous blood leaving t
        q = {t: p[f"Q_{t}"] for t in _FLOW_TISSUES}
        q_liver = p["Q_ha"] + sum(q[t] for t in PORTAL)
        q["liver"] = q_liver
        co = p["Q_ha"] + sum(q[t] for t in _FLOW_TISSUES)
        c_art, c_ven = conc["arterial"], conc["venous"]

        absorbed = p["ka"] * y[ORAL_CMT]
        fa = jnp.minimum(p["fa"], 1.0)
        hepatic = fu * p["CLint"] * p["V_liver"] * conc["liver"] / p["Kp_liver"]
        renal = fu * p["GFR"] * c_art / bp

        d = {
            "gut_lumen": -absorbed,
            "venous": sum(q[t] * cv[t] for t in SYSTEMIC) - co * c_ven,
            "arterial": co * (cv["lung"] - c_art),
            "lung": co * (c_ven - cv["lung"]),
        }
        for t in _FLOW_TISSUES:
            d[t] = q[t] * (c_art - cv[t])
        d["gut"] = d["gut"] + fa * absorbed
        d["kidney"] = d["kidney"] - renal
        d["liver"] = (
            p["Q_ha"] * c_art + sum(q[t] * cv[t] for t in PORTAL) - q_liver * cv["liver"] - hepatic
        )
        dy = jnp.stack([d[s] for s in STATES]) + rate
        return dy, hepatic, renal, (1.0 - fa) * absorbed

    def vector_field(self, t, y, p, rate):
        return self._fluxes(y, p, rate)[0]


class WholeBodyPBPKMassBalance(WholeBodyPBPK):
    """`WholeBodyPBPK` with three accumulating sink states (hepatic metabolism, renal excretion,
    unabsorbed oral dose), for mass-balance checks. Not for steady-state searches (the sinks
    grow without bound)."""

    name: ClassVar[str] = "pbpk_whole_body_mass_balance"
    states: ClassVar = (*STATES, "eliminated_hepatic", "eliminated_renal", "unabsorbed")

    def vector_field(self, t, y, p, rate):
        n = len(STATES)
        dy, hep, ren, lost = self._fluxes(y[:n], p, rate[:n])
        return jnp.concatenate([dy, jnp.stack([hep, ren, lost]) + rate[n:]])


# ----------------------------------------------------------------------------- parameters
_NAMES = tuple(p.name for p in WholeBodyPBPK.params)


def pbpk_params(species: str, drug: Drug, bw: float | None = None) -> dict[str, float]:
    """θ of one subject as ``{name: value}`` (natural units) for `species`, `drug` and body
    weight `bw` (kg; default the species reference). Pack with ``model.pack(...)``."""
    if not isinstance(drug, Drug):
        raise TypeError(f"`drug` must be a pkpd_jax.pbpk.Drug; got {type(drug).__name__}.")
    phys = physiology(species, bw)
    kp = partition_coefficients(drug, phys.species)
    out = {f"V_{t}": phys.volumes[t] for t in (*TISSUES, "arterial", "venous")}
    out.update({f"Q_{t}": phys.flows[t] for t in _FLOW_TISSUES})
    out["Q_ha"] = phys.q_hepatic_artery
    out.update({f"Kp_{t}": kp[t] for t in TISSUES})
    out.update(
        GFR=phys.gfr,
        fu=drug.fu,
        BP=blood_plasma_ratio(drug, phys.species),
        CLint=drug.clint,
        ka=drug.ka,
        fa=drug.fa,
    )
    return {n: float(out[n]) for n in _NAMES}


def _as_dict(theta) -> Mapping:
    if isinstance(theta, Mapping):
        missing = [n for n in _NAMES if n not in theta]
        if missing:
            more = "..." if len(missing) > 5 else ""
            raise ValueError(f"`theta` lacks PBPK parameters {missing[:5]}{more}.")
        return theta
    arr = jnp.asarray(theta)
    if arr.shape[-1] < len(_NAMES):
        raise ValueError(
            f"`theta` must be a mapping or an array whose last axis starts with the "
            f"{len(_NAMES)} PBPK parameters; got shape {arr.shape}."
        )
    return {n: arr[..., i] for i, n in enumerate(_NAMES)}


def _q_liver(p):
    return p["Q_ha"] + p["Q_gut"] + p["Q_spleen"]


def hepatic_extraction(theta):
    """Well-stirred hepatic extraction ratio ``E_h = fu_b CLint_h / (Q_h + fu_b CLint_h)``."""
    p = _as_dict(theta)
    k = p["fu"] / p["BP"] * p["CLint"] * p["V_liver"]
    return k / (_q_liver(p) + k)


def clearance_analytic(theta):
    """Total **plasma** clearance (L/h): ``BP · Q_h · E_h + fu · GFR`` (dose / AUC of venous
    plasma after an IV dose)."""
    p = _as_dict(theta)
    return p["BP"] * _q_liver(p) * hepatic_extraction(p) + p["fu"] * p["GFR"]


def oral_bioavailability(theta):
    """``F = fa · (1 - E_h)`` (no gut-wall metabolism)."""
    p = _as_dict(theta)
    return jnp.minimum(p["fa"], 1.0) * (1.0 - hepatic_extraction(p))


def vss_analytic(theta):
    """Steady-state volume of distribution (L, plasma reference): ``A_body / C_plasma`` under a
    constant IV infusion, ``BP (V_art + V_ven) + sum_t V_t Kp_t (1 - E_t)`` (module docstring)."""
    p = _as_dict(theta)
    e = {t: 0.0 for t in TISSUES}
    e["liver"] = hepatic_extraction(p)
    e["kidney"] = p["fu"] * p["GFR"] / (p["BP"] * p["Q_kidney"])
    blood = p["BP"] * (p["V_arterial"] + p["V_venous"])
    return blood + sum(p[f"V_{t}"] * p[f"Kp_{t}"] * (1.0 - e[t]) for t in TISSUES)


def vss_textbook(theta):
    """``V_blood · BP + sum_t V_t · Kp_t`` (equals `vss_analytic` without elimination)."""
    p = _as_dict(theta)
    return p["BP"] * (p["V_arterial"] + p["V_venous"]) + sum(
        p[f"V_{t}"] * p[f"Kp_{t}"] for t in TISSUES
    )
