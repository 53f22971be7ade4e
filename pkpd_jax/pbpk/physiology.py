"""Reference physiology (organ volumes, blood flows, cardiac output, GFR) for five species.

**Tissues.** ``TISSUES`` are the perfusion-limited compartments of the whole-body model; the
blood pools ``"arterial"`` and ``"venous"`` come on top. ``gut`` is the wall of the
gastrointestinal tract plus the pancreas (the splanchnic organs drained by the portal vein
together with the spleen); ``rest`` closes the body: its volume is the body weight minus every
tabulated tissue and the blood (density 1 kg/L), its flow is the cardiac output minus every
tabulated flow.

**Flows.** ``flows[t]`` is the blood flow *out* of tissue ``t`` in L/h. The lung receives the
whole cardiac output; gut and spleen drain into the liver through the portal vein, so
``flows["liver"]`` is the total hepatic flow (hepatic artery + portal) and the hepatic artery is
``flows["liver"] - flows["gut"] - flows["spleen"]`` ([`Physiology.q_hepatic_artery`][]).
The blood returning to the vena cava is then
``sum(flows[t] for t in SYSTEMIC) == co``, which is the closure the tests check.

**Sources** (cited per number below; volumes as fractions of body weight, flows as fractions of
cardiac output, so that both scale with the absolute values):

- mouse, rat, dog organ weights and flow fractions: Brown RP, Delp MD, Lindstedt SL, Rhomberg
  LR, Beliles RP. *Physiological parameter values for physiologically based pharmacokinetic
  models.* Toxicol Ind Health 13:407-484 (1997), Tables 4 (organ weight, % BW) and 23 (blood
  flow, % cardiac output);
- monkey (rhesus) organ weights and flows, and cardiac output and GFR of mouse, rat, monkey,
  dog, human: Davies B, Morris T. *Physiological parameters in laboratory animals and humans.*
  Pharm Res 10:1093-1095 (1993), Tables I (organ weights), III (blood flows) and the GFR /
  cardiac-output rows;
- human: ICRP Publication 89, *Basic anatomical and physiological data for use in radiological
  protection: reference values* (2002), reference adult male (73 kg): Table 2.8 (organ masses),
  Table 2.39 (blood flow, % cardiac output, cardiac output 6.5 L/min) and the total blood volume
  (5.3 L).

Where a table has no entry (Davies & Morris give no adipose or bone for the monkey; Brown et al.
give no bone flow for the dog) the fallback is stated next to the number.

**Haematocrit** (not in the tables above): typical laboratory reference values
(mouse 0.45, rat 0.46, dog 0.42, monkey 0.41, human male 0.45).

**Arterial / venous split.** Total blood is split 1/3 arterial (heart chambers, pulmonary veins,
systemic arteries) and 2/3 venous, a modelling convention; neither the Vss nor the clearance of
the model depends on the split.

**Other body weights.** ``physiology(species, bw)`` scales every volume in proportion to body
weight and every flow (and the GFR) in proportion to ``bw**0.75`` (allometry, West et al. 1997
Science 276:122); flow fractions of cardiac output are therefore preserved.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from types import MappingProxyType


__all__ = ["SPECIES", "TISSUES", "SYSTEMIC", "PORTAL", "Physiology", "physiology"]

SPECIES = ("mouse", "rat", "dog", "monkey", "human")
TISSUES = (
    "lung", "brain", "heart", "muscle", "adipose", "skin", "bone",
    "liver", "gut", "spleen", "kidney", "rest",
)  # fmt: skip
PORTAL = ("gut", "spleen")  # drain into the liver
SYSTEMIC = ("brain", "heart", "muscle", "adipose", "skin", "bone", "liver", "kidney", "rest")
"""Tissues whose outflow returns to the venous blood (the liver carrying the portal flow)."""

_TABULATED = tuple(t for t in TISSUES if t not in ("lung", "rest"))


# --------------------------------------------------------------------------- reference tables
# Organ volumes as fractions of body weight (kg tissue / kg BW, taken as L/kg); "blood" is the
# total blood volume. Lung and the other tissues are without their blood content.
_VOLUME_FRACTION = {
    "mouse": {  # Brown et al. 1997, Table 4 (mouse)
        "lung": 0.0073, "brain": 0.0165, "heart": 0.0050, "muscle": 0.3840, "adipose": 0.0700,
        "skin": 0.1653, "bone": 0.1073, "liver": 0.0549, "gut": 0.0422, "spleen": 0.0035,
        "kidney": 0.0167, "blood": 0.0490,
    },
    "rat": {  # Brown et al. 1997, Table 4 (rat)
        "lung": 0.0050, "brain": 0.0057, "heart": 0.0033, "muscle": 0.4043, "adipose": 0.0700,
        "skin": 0.1903, "bone": 0.0730, "liver": 0.0366, "gut": 0.0270, "spleen": 0.0020,
        "kidney": 0.0073, "blood": 0.0740,
    },
    "dog": {  # Brown et al. 1997, Table 4 (dog); blood: Brown et al. 1997, blood-volume table
        "lung": 0.0082, "brain": 0.0078, "heart": 0.0078, "muscle": 0.4565, "adipose": 0.1500,
        "skin": 0.0904, "bone": 0.0810, "liver": 0.0329, "gut": 0.0387, "spleen": 0.0027,
        "kidney": 0.0055, "blood": 0.0820,
    },
    "monkey": {  # Davies & Morris 1993, Table I (rhesus, 5 kg): grams / 5000 g
        "lung": 33.0 / 5000, "brain": 90.0 / 5000, "heart": 18.5 / 5000,
        "muscle": 2500.0 / 5000, "skin": 500.0 / 5000, "liver": 150.0 / 5000,
        "gut": 230.0 / 5000, "spleen": 8.0 / 5000, "kidney": 30.0 / 5000,
        "blood": 367.0 / 5000,  # Davies & Morris 1993, blood volume 367 mL
        "adipose": 0.0500,  # not in Davies & Morris; 5% BW (lean laboratory macaque), assumption
        "bone": 0.0700,  # not in Davies & Morris; rat skeletal fraction (Brown 1997), assumption
    },
    "human": {  # ICRP 89, reference adult male, Table 2.8 (kg / 73 kg)
        "lung": 0.50 / 73, "brain": 1.45 / 73, "heart": 0.33 / 73, "muscle": 29.0 / 73,
        "adipose": 14.5 / 73,  # separable adipose tissue (yellow marrow counted in bone)
        "skin": 3.3 / 73, "bone": 10.5 / 73,  # total skeleton incl. marrow
        "liver": 1.8 / 73,
        "gut": (0.15 + 0.65 + 0.37 + 0.14) / 73,  # stomach + small + large intestine + pancreas
        "spleen": 0.15 / 73, "kidney": 0.31 / 73,
        "blood": 5.3 / 73,  # ICRP 89 total blood volume, male
    },
}  # fmt: skip

# Blood flows as fractions of cardiac output (%/100). "liver" is the total hepatic flow
# (hepatic artery + portal); the portal part is gut + spleen.
_FLOW_FRACTION = {
    "mouse": {  # Brown et al. 1997, Table 23 (mouse); liver 16.1% of which hepatic artery 2.0%
        "brain": 0.033, "heart": 0.066, "muscle": 0.159, "adipose": 0.070, "skin": 0.058,
        "bone": 0.110, "kidney": 0.091, "liver": 0.161,
        "spleen": 0.011, "gut": 0.161 - 0.020 - 0.011,  # portal 14.1% = gut + spleen
    },
    "rat": {  # Brown et al. 1997, Table 23 (rat); liver 18.3% of which hepatic artery 2.1%
        "brain": 0.020, "heart": 0.049, "muscle": 0.278, "adipose": 0.070, "skin": 0.058,
        "bone": 0.122, "kidney": 0.141, "liver": 0.183,
        "spleen": 0.011, "gut": 0.183 - 0.021 - 0.011,
    },
    "dog": {  # Brown et al. 1997, Table 23 (dog); liver 29.7% of which hepatic artery 4.6%
        "brain": 0.020, "heart": 0.046, "muscle": 0.217, "adipose": 0.074, "skin": 0.060,
        "kidney": 0.173, "liver": 0.297,
        "bone": 0.050,  # not in Brown et al. for the dog; ICRP 89 human fraction, assumption
        "spleen": 0.020, "gut": 0.297 - 0.046 - 0.020,
    },
    "monkey": {  # Davies & Morris 1993, Table III (mL/min) / cardiac output 1086 mL/min
        "brain": 72.0 / 1086, "heart": 60.0 / 1086, "muscle": 90.0 / 1086, "skin": 54.0 / 1086,
        "kidney": 138.0 / 1086, "liver": 218.0 / 1086,  # total hepatic; hepatic artery 51 mL/min
        "spleen": 10.0 / 1086, "gut": (218.0 - 51.0 - 10.0) / 1086,
        "adipose": 0.050, "bone": 0.050,  # not in Davies & Morris; ICRP 89 human fractions
    },
    "human": {  # ICRP 89, Table 2.39, adult male (% of cardiac output)
        "brain": 0.12, "heart": 0.04, "muscle": 0.17, "adipose": 0.05, "skin": 0.05,
        "bone": 0.05, "kidney": 0.19,
        "liver": 0.255,  # hepatic artery 6.5% + portal 19%
        "spleen": 0.03,
        "gut": 0.01 + 0.10 + 0.04 + 0.01,  # stomach/oesophagus + small + large intestine + pancreas
    },
}  # fmt: skip

# Reference body weight (kg), cardiac output (L/h), GFR (L/h) and haematocrit.
_REFERENCE = {
    # Davies & Morris 1993: mouse 0.02 kg, CO 8.0 mL/min, GFR 0.14 mL/min
    "mouse": {"bw": 0.02, "co": 8.0 * 60 / 1000, "gfr": 0.14 * 60 / 1000, "hct": 0.45},
    # Davies & Morris 1993: rat 0.25 kg, CO 74 mL/min, GFR 1.31 mL/min
    "rat": {"bw": 0.25, "co": 74.0 * 60 / 1000, "gfr": 1.31 * 60 / 1000, "hct": 0.46},
    # Davies & Morris 1993: dog 10 kg, CO 1200 mL/min, GFR 61.3 mL/min
    "dog": {"bw": 10.0, "co": 1200.0 * 60 / 1000, "gfr": 61.3 * 60 / 1000, "hct": 0.42},
    # Davies & Morris 1993: monkey 5 kg, CO 1086 mL/min, GFR 10.4 mL/min
    "monkey": {"bw": 5.0, "co": 1086.0 * 60 / 1000, "gfr": 10.4 * 60 / 1000, "hct": 0.41},
    # ICRP 89 male: 73 kg, CO 6.5 L/min; GFR 125 mL/min (Davies & Morris 1993, human)
    "human": {"bw": 73.0, "co": 6.5 * 60, "gfr": 125.0 * 60 / 1000, "hct": 0.45},
}
_ARTERIAL_FRACTION = 1.0 / 3.0  # of total blood (convention, see module docstring)


@dataclass(frozen=True)
class Physiology:
    """One subject's physiology. Volumes in L, flows, cardiac output and GFR in L/h, BW in kg.

    `volumes` holds every tissue of ``TISSUES`` plus ``"arterial"`` and ``"venous"`` blood;
    `flows` every tissue (``flows["lung"] == co``; ``flows["liver"]`` is the total hepatic flow).
    """

    species: str
    bw: float
    volumes: MappingProxyType
    flows: MappingProxyType
    co: float
    gfr: float
    hct: float
    sources: str = field(default="", repr=False)

    @property
    def q_hepatic_artery(self) -> float:
        return self.flows["liver"] - sum(self.flows[t] for t in PORTAL)

    @property
    def blood_volume(self) -> float:
        return self.volumes["arterial"] + self.volumes["venous"]


def _check_species(species: str) -> str:
    key = str(species).strip().lower()
    if key not in SPECIES:
        raise ValueError(f"unknown species {species!r}; available: {', '.join(SPECIES)}.")
    return key


def physiology(species: str, bw: float | None = None) -> Physiology:
    """Reference physiology of `species`, optionally scaled to body weight `bw` (kg).

    Volumes scale as ``bw / bw_ref`` and flows and GFR as ``(bw / bw_ref)**0.75``.
    """
    key = _check_species(species)
    ref = _REFERENCE[key]
    if bw is None:
        bw = ref["bw"]
    bw = float(bw)
    if not (math.isfinite(bw) and bw > 0):
        raise ValueError(f"`bw` must be a positive body weight in kg; got {bw}.")
    s_vol, s_flow = bw / ref["bw"], (bw / ref["bw"]) ** 0.75
    vf, qf = _VOLUME_FRACTION[key], _FLOW_FRACTION[key]

    ref_bw = ref["bw"]
    volumes = {t: vf[t] * ref_bw for t in _TABULATED}
    volumes["lung"] = vf["lung"] * ref_bw
    blood = vf["blood"] * ref_bw
    volumes["rest"] = ref_bw - sum(volumes.values()) - blood
    volumes["arterial"] = _ARTERIAL_FRACTION * blood
    volumes["venous"] = (1.0 - _ARTERIAL_FRACTION) * blood

    co = ref["co"]
    flows = {t: qf[t] * co for t in _TABULATED}
    flows["rest"] = co - sum(flows[t] for t in SYSTEMIC if t != "rest")
    flows["lung"] = co
    if volumes["rest"] <= 0 or flows["rest"] <= 0:  # guards the tables themselves
        raise AssertionError(f"reference tables for {key} leave no rest of body")
    if flows["liver"] - sum(flows[t] for t in PORTAL) <= 0:
        raise AssertionError(f"reference tables for {key} give no hepatic-artery flow")

    return Physiology(
        species=key,
        bw=bw,
        volumes=MappingProxyType({k: v * s_vol for k, v in volumes.items()}),
        flows=MappingProxyType({t: flows[t] * s_flow for t in TISSUES}),
        co=co * s_flow,
        gfr=ref["gfr"] * s_flow,
        hct=ref["hct"],
        sources="Brown et al. 1997; Davies & Morris 1993; ICRP 89 (see pkpd_jax.pbpk.physiology)",
    )
