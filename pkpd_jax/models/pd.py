"""The ten pharmacodynamic model classes, driven by the plasma concentration C(t) (mg/L).

Direct models are algebraic in C(t) (no state); the others carry an effect-site concentration,
a turnover response, or a transit chain. Indirect-response models start at baseline
(R(0) = R0, kin = R0·kout), so with no drug they stay at R0.

References: Gabrielsson & Weiner (2016), chapters 4-5; Dayneka, Garg & Jusko, J Pharmacokinet
Biopharm 21:457 (1993) for the four indirect-response models; Sheiner et al., Clin Pharmacol
Ther 25:358 (1979) for the effect compartment; Lobo & Balthasar, AAPS PharmSci 4:E42 (2002) for
transit-delay models.
"""

from __future__ import annotations

import abc
from typing import ClassVar

import jax.numpy as jnp

from .base import AbstractPD, Param


__all__ = [
    "DirectLinear",
    "DirectEmax",
    "DirectSigmoid",
    "DirectInhibEmax",
    "EffectCompEmax",
    "IndirectInhibKin",
    "IndirectStimKin",
    "IndirectInhibKout",
    "IndirectStimKout",
    "TransitDelay",
    "PD_MODELS",
]

_R0 = Param("R0", "response unit", 10.0, 0.4, description="baseline response")
_EMAX = Param("Emax", "response unit", 5.0, 0.6, description="maximal effect")
_EMAX_FRAC = Param("Emax", "1", 1.0, 0.6, description="maximal fractional stimulation")
_EC50 = Param("EC50", "mg/L", 1.0, 0.8, description="concentration at half-maximal effect")
_IC50 = Param("IC50", "mg/L", 1.0, 0.8, description="concentration at half-maximal inhibition")
_IMAX = Param("Imax", "1", 0.8, 0.8, "unit", description="maximal fractional inhibition, in (0,1)")
_KOUT = Param("kout", "1/h", 0.1, 0.6, description="first-order loss rate of the response")


def _emax(c, emax, ec50):
    return emax * c / (ec50 + c)


class DirectLinear(AbstractPD):
    name: ClassVar[str] = "pd_direct_linear"
    description: ClassVar[str] = "R = R0 + slope·C, clipped at 0"
    params: ClassVar = (
        _R0,
        Param("slope", "response unit·L/mg", 1.0, 0.8, description="effect per unit C"),
    )

    def response(self, r, p, c):
        return jnp.maximum(p["R0"] + p["slope"] * c, 0.0)


class DirectEmax(AbstractPD):
    name: ClassVar[str] = "pd_direct_emax"
    description: ClassVar[str] = "R = R0 + Emax·C/(EC50 + C)"
    params: ClassVar = (_R0, _EMAX, _EC50)

    def response(self, r, p, c):
        return p["R0"] + _emax(c, p["Emax"], p["EC50"])


class DirectSigmoid(AbstractPD):
    name: ClassVar[str] = "pd_direct_sigmoid"
    description: ClassVar[str] = "R = R0 + Emax·C^γ/(EC50^γ + C^γ)"
    params: ClassVar = (
        _R0,
        _EMAX,
        _EC50,
        Param("gamma", "1", 2.0, 0.4, description="Hill coefficient"),
    )

    def response(self, r, p, c):
        # (C/EC50)^γ written with a safe power so that C = 0 has a finite gradient.
        x = jnp.where(c > 0, c / p["EC50"], 1.0)
        h = jnp.where(c > 0, x ** p["gamma"], 0.0)
        return p["R0"] + p["Emax"] * h / (1.0 + h)


class DirectInhibEmax(AbstractPD):
    name: ClassVar[str] = "pd_direct_inhib_emax"
    description: ClassVar[str] = "R = R0·(1 − Imax·C/(IC50 + C))"
    params: ClassVar = (_R0, _IMAX, _IC50)

    def response(self, r, p, c):
        return p["R0"] * (1.0 - _emax(c, p["Imax"], p["IC50"]))


class EffectCompEmax(AbstractPD):
    name: ClassVar[str] = "pd_effect_comp_emax"
    description: ClassVar[str] = "dCe/dt = ke0·(C − Ce); R = R0 + Emax·Ce/(EC50 + Ce)"
    states: ClassVar = ("Ce",)
    params: ClassVar = (
        _R0,
        _EMAX,
        _EC50,
        Param("ke0", "1/h", 0.5, 0.7, description="effect-site equilibration rate"),
    )

    def vector_field(self, t, r, p, c):
        return p["ke0"] * (c - r)

    def response(self, r, p, c):
        return p["R0"] + _emax(r[0], p["Emax"], p["EC50"])


class _Turnover(AbstractPD):
    """Indirect response: dR/dt = kin·f_in(C) − kout·f_out(C)·R, kin = R0·kout, R(0) = R0."""

    states: ClassVar = ("R",)

    def init(self, p):
        return jnp.stack([p["R0"]])

    def response(self, r, p, c):
        return r[0]

    @abc.abstractmethod
    def _modulation(self, p, c):
        """(f_in, f_out): the drug's modulation of production and loss."""

    def vector_field(self, t, r, p, c):
        f_in, f_out = self._modulation(p, c)
        return p["R0"] * p["kout"] * f_in - p["kout"] * f_out * r


class IndirectInhibKin(_Turnover):
    name: ClassVar[str] = "pd_indirect_inhib_kin"
    description: ClassVar[str] = "dR/dt = kin·(1 − C/(IC50 + C)) − kout·R"
    params: ClassVar = (_R0, _KOUT, _IC50)

    def _modulation(self, p, c):
        return 1.0 - c / (p["IC50"] + c), 1.0


class IndirectStimKin(_Turnover):
    name: ClassVar[str] = "pd_indirect_stim_kin"
    description: ClassVar[str] = "dR/dt = kin·(1 + Emax·C/(EC50 + C)) − kout·R"
    params: ClassVar = (_R0, _KOUT, _EMAX_FRAC, _EC50)

    def _modulation(self, p, c):
        return 1.0 + _emax(c, p["Emax"], p["EC50"]), 1.0


class IndirectInhibKout(_Turnover):
    name: ClassVar[str] = "pd_indirect_inhib_kout"
    description: ClassVar[str] = "dR/dt = kin − kout·(1 − Imax·C/(IC50 + C))·R"
    params: ClassVar = (_R0, _KOUT, _IMAX, _IC50)

    def _modulation(self, p, c):
        return 1.0, 1.0 - _emax(c, p["Imax"], p["IC50"])


class IndirectStimKout(_Turnover):
    name: ClassVar[str] = "pd_indirect_stim_kout"
    description: ClassVar[str] = "dR/dt = kin − kout·(1 + Emax·C/(EC50 + C))·R"
    params: ClassVar = (_R0, _KOUT, _EMAX_FRAC, _EC50)

    def _modulation(self, p, c):
        return 1.0, 1.0 + _emax(c, p["Emax"], p["EC50"])


class TransitDelay(AbstractPD):
    name: ClassVar[str] = "pd_transit_delay"
    description: ClassVar[str] = (
        "R0·(1 + Emax·C/(EC50 + C)) passed through 3 transit compartments (ktr); observe the last"
    )
    states: ClassVar = ("T1", "T2", "T3")
    params: ClassVar = (
        _R0,
        _EMAX_FRAC,
        _EC50,
        Param("ktr", "1/h", 0.3, 0.6, description="transit rate constant of the delay chain"),
    )

    def init(self, p):
        return jnp.full(3, 1.0) * p["R0"]

    def vector_field(self, t, r, p, c):
        signal = p["R0"] * (1.0 + _emax(c, p["Emax"], p["EC50"]))
        upstream = jnp.concatenate([signal[None], r[:2]])
        return p["ktr"] * (upstream - r)

    def response(self, r, p, c):
        return r[2]


PD_MODELS: tuple[type[AbstractPD], ...] = (
    DirectLinear,
    DirectEmax,
    DirectSigmoid,
    DirectInhibEmax,
    EffectCompEmax,
    IndirectInhibKin,
    IndirectStimKin,
    IndirectInhibKout,
    IndirectStimKout,
    TransitDelay,
)
