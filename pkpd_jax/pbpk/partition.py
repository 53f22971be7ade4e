"""Drug properties and tissue:plasma partition coefficients (Rodgers & Rowland).

A [`Drug`][] holds what the model needs to know about a compound: lipophilicity (``logp``,
octanol:water), fraction unbound in plasma ``fu``, ionisation (``kind`` and ``pka``), blood:plasma
ratio ``bp``, hepatic intrinsic clearance ``clint`` (L/h of *unbound* drug per kg liver, so that
total intrinsic clearance scales with liver mass), oral absorption rate ``ka`` (1/h) and fraction
absorbed ``fa``.

**Partition coefficients.** [`partition_coefficients`][] returns ``Kp = C_tissue / C_plasma`` at
steady state (total concentrations) for every tissue, from the mechanistic tissue-composition
equations of Rodgers & Rowland. With ``P = 10**logp`` (``P_vo = 10**(1.115 logp - 1.35)``, the
vegetable-oil:water coefficient, in adipose), ``fEW``/``fIW`` the extra-/intracellular water
fractions, ``fNL``/``fNP`` the neutral lipid / neutral phospholipid fractions and ionisation
terms ``X = 1 + 10**(pKa - pH_IW)``, ``Y = 1 + 10**(pKa - pH_p)`` for bases (exponents negated
for acids, ``X = Y = 1`` for neutral drugs), pH_IW = 7.0, pH_p = 7.4, pH_BC = 7.22:

- moderate-to-strong bases (pKa >= 7), Rodgers, Leahy & Rowland, J Pharm Sci 94:1259 (2005),
  eq. 15: ``Kpu = fEW + X fIW / Y + Ka [AP-] (X - 1) / Y + (P fNL + (0.3 P + 0.7) fNP) / Y``,
  with the acidic-phospholipid affinity ``Ka`` obtained from the blood-cell partition
  ``Kpu_BC = (BP - 1 + H) / (H fu)``;
- acids, neutral drugs and weak bases, Rodgers & Rowland, J Pharm Sci 95:1238 (2006), eq. 3:
  ``Kpu = fEW + X fIW / Y + (P fNL + (0.3 P + 0.7) fNP) / Y + Ka_PR [PR]_T``, with the
  plasma-protein term ``Ka_PR [PR]_T = (1/fu - 1 - (P fNL_p + (0.3 P + 0.7) fNP_p) / Y) * r``,
  where ``r`` is the tissue:plasma ratio of albumin (acids) or lipoproteins (neutral drugs and
  weak bases);
- ``Kp = fu * Kpu``. Negative binding terms (inconsistent inputs) are clipped to 0.

**Tissue composition.** Rat values of Rodgers et al. 2005 (Table 1: water and lipid fractions,
acidic phospholipids in mg/g) and Rodgers & Rowland 2006 (Table 1: albumin and lipoprotein
tissue:plasma ratios), used for every species, as Rodgers & Rowland (2006, 2007) did for their
human predictions; ``rest`` of body takes the muscle composition.

**Blood:plasma ratio.** When ``Drug.bp`` is None it is predicted as ``BP = 1 - H + H fu Kpu_BC``
with the erythrocyte ``Kpu_BC = X_BC fIW_BC / Y + (P fNL_BC + (0.3 P + 0.7) fNP_BC) / Y`` (no
acidic-phospholipid binding). For strong bases give a measured ``bp``: it is what calibrates
their phospholipid affinity.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from types import MappingProxyType

from .physiology import TISSUES, _check_species, physiology


__all__ = ["Drug", "TISSUE_COMPOSITION", "partition_coefficients", "blood_plasma_ratio"]

PH_PLASMA, PH_IW, PH_BC = 7.4, 7.0, 7.22

# Rat tissue composition. fEW, fIW, fNL, fNP: fraction of tissue volume; AP: acidic
# phospholipids, mg/g tissue (Rodgers et al. 2005, Table 1). alb, lip: tissue:plasma ratios of
# albumin and lipoproteins (Rodgers & Rowland 2006, Table 1).
_COLUMNS = ("fEW", "fIW", "fNL", "fNP", "AP", "alb", "lip")
_ROWS = {
    "adipose": (0.135, 0.017, 0.853, 0.0016, 0.40, 0.049, 0.068),
    "bone": (0.100, 0.346, 0.0174, 0.0016, 0.67, 0.100, 0.050),
    "brain": (0.162, 0.620, 0.0391, 0.0015, 0.40, 0.048, 0.041),
    "gut": (0.282, 0.475, 0.0375, 0.0124, 2.41, 0.158, 0.141),
    "heart": (0.320, 0.456, 0.0135, 0.0106, 2.25, 0.157, 0.160),
    "kidney": (0.273, 0.483, 0.0121, 0.0240, 5.03, 0.130, 0.137),
    "liver": (0.161, 0.573, 0.0135, 0.0238, 4.56, 0.086, 0.161),
    "lung": (0.336, 0.446, 0.0215, 0.0123, 3.91, 0.212, 0.168),
    "muscle": (0.118, 0.630, 0.0100, 0.0072, 1.53, 0.064, 0.059),
    "skin": (0.382, 0.291, 0.0603, 0.0044, 1.32, 0.277, 0.096),
    "spleen": (0.207, 0.579, 0.0071, 0.0107, 3.18, 0.097, 0.207),
}
_ROWS["rest"] = _ROWS["muscle"]
TISSUE_COMPOSITION = MappingProxyType(
    {t: MappingProxyType(dict(zip(_COLUMNS, _ROWS[t]))) for t in TISSUES}
)
# Erythrocytes (Rodgers et al. 2005): intracellular water, neutral lipid, neutral phospholipid,
# acidic phospholipids (mg/g); plasma neutral lipid and phospholipid fractions.
_BC = {"fIW": 0.603, "fNL": 0.0017, "fNP": 0.0029, "AP": 0.5}
_PLASMA = {"fNL": 0.0023, "fNP": 0.0013}


@dataclass(frozen=True)
class Drug:
    """A compound's properties. See the module docstring for units and defaults.

    - `logp`: log10 octanol:water partition coefficient of the neutral species.
    - `fu`: fraction unbound in plasma, in (0, 1].
    - `kind`: ``"neutral"``, ``"acid"`` or ``"base"``; `pka` is required for acids and bases
      and must be None for neutral drugs.
    - `bp`: blood:plasma concentration ratio (None: predicted, see `blood_plasma_ratio`).
    - `clint`: hepatic intrinsic clearance of unbound drug, L/h per kg liver (>= 0).
    - `ka`: first-order oral absorption rate, 1/h (> 0); `fa`: fraction absorbed, in (0, 1].
    """

    logp: float
    fu: float
    pka: float | None = None
    kind: str = "neutral"
    bp: float | None = None
    clint: float = 0.0
    ka: float = 1.0
    fa: float = 1.0
    name: str = "drug"

    def __post_init__(self):
        def bad(field, value, need):
            raise ValueError(f"`Drug({field}=...)` must be {need}; got {value!r} (drug {self.name!r}).")

        for f in ("logp", "fu", "clint", "ka", "fa"):
            v = getattr(self, f)
            if not isinstance(v, (int, float)) or not math.isfinite(v):
                bad(f, v, "a finite number")
        if not -10.0 <= self.logp <= 10.0:
            bad("logp", self.logp, "in [-10, 10]")
        if not 0.0 < self.fu <= 1.0:
            bad("fu", self.fu, "in (0, 1]")
        if self.kind not in ("neutral", "acid", "base"):
            bad("kind", self.kind, "one of 'neutral', 'acid', 'base'")
        if self.kind == "neutral" and self.pka is not None:
            bad("pka", self.pka, "None for a neutral drug (or set kind='acid'/'base')")
        if self.kind != "neutral" and (
            self.pka is None or not math.isfinite(self.pka) or not -2.0 <= self.pka <= 16.0
        ):
            bad("pka", self.pka, f"a number in [-2, 16] for kind={self.kind!r}")
        if self.bp is not None and not (math.isfinite(self.bp) and self.bp > 0):
            bad("bp", self.bp, "a positive blood:plasma ratio or None")
        if self.clint < 0:
            bad("clint", self.clint, ">= 0 (L/h per kg liver)")
        if not self.ka > 0:
            bad("ka", self.ka, "> 0 (1/h)")
        if not 0.0 < self.fa <= 1.0:
            bad("fa", self.fa, "in (0, 1]")


def _ionisation(drug: Drug, ph: float) -> float:
    """1 + ratio of ionised to neutral species at pH `ph` (Henderson-Hasselbalch)."""
    if drug.kind == "base":
        return 1.0 + 10.0 ** (drug.pka - ph)
    if drug.kind == "acid":
        return 1.0 + 10.0 ** (ph - drug.pka)
    return 1.0


def _lipid(p: float, fnl: float, fnp: float) -> float:
    return p * fnl + (0.3 * p + 0.7) * fnp


def _kpu_bc_unbound(drug: Drug) -> float:
    """Erythrocyte Kpu without acidic-phospholipid binding."""
    y, x_bc, p = _ionisation(drug, PH_PLASMA), _ionisation(drug, PH_BC), 10.0**drug.logp
    return (x_bc * _BC["fIW"] + _lipid(p, _BC["fNL"], _BC["fNP"])) / y


def blood_plasma_ratio(drug: Drug, species: str = "human") -> float:
    """``drug.bp`` if given, else ``1 - H + H fu Kpu_BC`` (module docstring)."""
    if drug.bp is not None:
        return float(drug.bp)
    hct = physiology(species).hct
    return 1.0 - hct + hct * drug.fu * _kpu_bc_unbound(drug)


def partition_coefficients(drug: Drug, species: str = "human") -> dict[str, float]:
    """Tissue:plasma partition coefficients ``{tissue: Kp}`` for every tissue in ``TISSUES``."""
    key = _check_species(species)
    hct = physiology(key).hct
    bp = blood_plasma_ratio(drug, key)
    p = 10.0**drug.logp
    p_vo = 10.0 ** (1.115 * drug.logp - 1.35)
    x, y = _ionisation(drug, PH_IW), _ionisation(drug, PH_PLASMA)
    strong_base = drug.kind == "base" and drug.pka >= 7.0

    if strong_base:
        x_bc = _ionisation(drug, PH_BC)
        kpu_bc = (bp - 1.0 + hct) / (hct * drug.fu)
        ka_ap = (kpu_bc - _kpu_bc_unbound(drug)) * y / (_BC["AP"] * (x_bc - 1.0))
        ka_ap = max(ka_ap, 0.0)
    else:
        ratio = "alb" if drug.kind == "acid" else "lip"
        plasma_binding = max(1.0 / drug.fu - 1.0 - _lipid(p, _PLASMA["fNL"], _PLASMA["fNP"]) / y, 0.0)

    out = {}
    for t in TISSUES:
        c = TISSUE_COMPOSITION[t]
        pt = p_vo if t == "adipose" else p
        kpu = c["fEW"] + x * c["fIW"] / y + _lipid(pt, c["fNL"], c["fNP"]) / y
        if strong_base:
            kpu += ka_ap * c["AP"] * (x - 1.0) / y
        else:
            kpu += plasma_binding * c[ratio]
        out[t] = drug.fu * kpu
    return out
