"""The ten pharmacokinetic model classes.

State order follows the NONMEM ADVAN convention, so that a data set's 1-based ``CMT`` maps to
state index ``CMT - 1``: oral models ``[gut, central, (peripheral)]``, transit ``[transit1,
transit2, transit3, central]``, IV models ``[central, peripheral...]``. Bioavailability is 1.

References: Gabrielsson & Weiner, *Pharmacokinetic and Pharmacodynamic Data Analysis*, 5th ed.
(2016), chapters 2-3; Savic et al., J Pharmacokinet Pharmacodyn 34:711 (2007) for transit
absorption; NONMEM ADVAN1-4, 10, 11 for parameterisations.
"""

from __future__ import annotations

from typing import ClassVar

import jax.numpy as jnp

from .base import AbstractPK, Param


__all__ = [
    "OneCompIV",
    "OneCompOral",
    "OneCompOralLag",
    "OneCompIVMM",
    "TwoCompIV",
    "TwoCompIVInfusion",
    "TwoCompOral",
    "OneCompTransitAbs",
    "ThreeCompIV",
    "OneCompOralFlipFlop",
    "PK_MODELS",
]

# Default priors (log-normal: median, sd of log). Wide, weakly informative, typical of small
# molecules in adults; documented so that corpora and fits can cite them.
_CL = Param("CL", "L/h", 5.0, 0.8, description="clearance from the central compartment")
_V = Param("V", "L", 50.0, 0.6, description="volume of distribution")
_KA = Param("ka", "1/h", 1.0, 0.7, description="first-order absorption rate constant")
_V1 = Param("V1", "L", 30.0, 0.6, description="central volume")
_Q = Param("Q", "L/h", 10.0, 0.7, description="inter-compartmental clearance")
_V2 = Param("V2", "L", 60.0, 0.6, description="peripheral volume")


class OneCompIV(AbstractPK):
    name: ClassVar[str] = "pk_1c_iv"
    description: ClassVar[str] = "one compartment, IV bolus, linear elimination"
    states: ClassVar = ("central",)
    params: ClassVar = (_CL, _V)
    dose_cmt: ClassVar = 0
    central: ClassVar = 0
    volume: ClassVar = "V"

    def vector_field(self, t, y, p, rate):
        return rate - p["CL"] / p["V"] * y


class _OneCompOralBase(AbstractPK):
    states: ClassVar = ("gut", "central")
    dose_cmt: ClassVar = 0
    central: ClassVar = 1
    volume: ClassVar = "V"

    def vector_field(self, t, y, p, rate):
        absorbed = p["ka"] * y[0]
        return rate + jnp.stack([-absorbed, absorbed - p["CL"] / p["V"] * y[1]])


class OneCompOral(_OneCompOralBase):
    name: ClassVar[str] = "pk_1c_oral"
    description: ClassVar[str] = "one compartment, first-order absorption from the gut"
    params: ClassVar = (_KA, _CL, _V)


class OneCompOralLag(_OneCompOralBase):
    name: ClassVar[str] = "pk_1c_oral_lag"
    description: ClassVar[str] = "one compartment, first-order absorption after a lag time"
    params: ClassVar = (_KA, _CL, _V, Param("tlag", "h", 0.5, 0.6, description="absorption lag"))
    lag: ClassVar = "tlag"


class OneCompOralFlipFlop(_OneCompOralBase):
    name: ClassVar[str] = "pk_1c_oral_flipflop"
    description: ClassVar[str] = (
        "one compartment oral with slow absorption (ka << CL/V): the terminal slope is ka"
    )
    # Priors put ka about 8x below CL/V = 0.2 1/h (flip-flop kinetics).
    params: ClassVar = (
        Param("ka", "1/h", 0.025, 0.5, description="first-order absorption (rate limiting)"),
        Param("CL", "L/h", 10.0, 0.5, description="clearance"),
        Param("V", "L", 50.0, 0.5, description="volume of distribution"),
    )


class OneCompIVMM(AbstractPK):
    name: ClassVar[str] = "pk_1c_iv_mm"
    description: ClassVar[str] = "one compartment IV, linear plus Michaelis-Menten elimination"
    states: ClassVar = ("central",)
    params: ClassVar = (
        _CL,
        _V,
        Param("Vmax", "mg/h", 10.0, 0.8, description="maximal saturable elimination rate"),
        Param("Km", "mg/L", 1.0, 0.8, description="concentration at half-maximal rate"),
    )
    dose_cmt: ClassVar = 0
    central: ClassVar = 0
    volume: ClassVar = "V"
    linear: ClassVar = False

    def vector_field(self, t, y, p, rate):
        c = y[0] / p["V"]
        return rate - p["CL"] * c - p["Vmax"] * c / (p["Km"] + c)


def _two_comp(y, p, cl, v1, q, v2):
    """Central (index 0) and peripheral (index 1) exchange with elimination from central."""
    c1, c2 = y[0] / p[v1], y[1] / p[v2]
    flow = p[q] * (c1 - c2)
    return jnp.stack([-p[cl] * c1 - flow, flow])


class TwoCompIV(AbstractPK):
    name: ClassVar[str] = "pk_2c_iv"
    description: ClassVar[str] = "two compartments, IV bolus"
    states: ClassVar = ("central", "peripheral")
    params: ClassVar = (_CL, _V1, _Q, _V2)
    dose_cmt: ClassVar = 0
    central: ClassVar = 0
    volume: ClassVar = "V1"

    def vector_field(self, t, y, p, rate):
        return rate + _two_comp(y, p, "CL", "V1", "Q", "V2")


class TwoCompIVInfusion(TwoCompIV):
    name: ClassVar[str] = "pk_2c_iv_infusion"
    description: ClassVar[str] = (
        "two compartments, zero-order IV infusion (duration from the regimen, default 1 h)"
    )
    default_duration: ClassVar = 1.0


class TwoCompOral(AbstractPK):
    name: ClassVar[str] = "pk_2c_oral"
    description: ClassVar[str] = "two compartments, first-order absorption from the gut"
    states: ClassVar = ("gut", "central", "peripheral")
    params: ClassVar = (_KA, _CL, _V1, _Q, _V2)
    dose_cmt: ClassVar = 0
    central: ClassVar = 1
    volume: ClassVar = "V1"

    def vector_field(self, t, y, p, rate):
        absorbed = p["ka"] * y[0]
        disp = _two_comp(y[1:], p, "CL", "V1", "Q", "V2")
        return rate + jnp.concatenate([-absorbed[None], disp + jnp.stack([absorbed, 0.0])])


class OneCompTransitAbs(AbstractPK):
    name: ClassVar[str] = "pk_1c_transit_abs"
    description: ClassVar[str] = "one compartment, absorption through 3 transit compartments"
    states: ClassVar = ("transit1", "transit2", "transit3", "central")
    params: ClassVar = (
        Param("ktr", "1/h", 2.0, 0.6, description="transit rate constant"),
        _CL,
        _V,
    )
    dose_cmt: ClassVar = 0
    central: ClassVar = 3
    volume: ClassVar = "V"

    def vector_field(self, t, y, p, rate):
        out = p["ktr"] * y[:3]
        inflow = jnp.concatenate([jnp.zeros(1), out])
        elim = jnp.concatenate([out, (p["CL"] / p["V"] * y[3])[None]])
        return rate + inflow - elim


class ThreeCompIV(AbstractPK):
    name: ClassVar[str] = "pk_3c_iv"
    description: ClassVar[str] = "three compartments (central + two peripherals), IV bolus"
    states: ClassVar = ("central", "peripheral1", "peripheral2")
    params: ClassVar = (
        _CL,
        _V1,
        Param("Q2", "L/h", 10.0, 0.7, description="clearance to the first peripheral"),
        Param("V2", "L", 50.0, 0.6, description="first peripheral volume"),
        Param("Q3", "L/h", 2.0, 0.7, description="clearance to the second peripheral"),
        Param("V3", "L", 100.0, 0.6, description="second peripheral volume"),
    )
    dose_cmt: ClassVar = 0
    central: ClassVar = 0
    volume: ClassVar = "V1"

    def vector_field(self, t, y, p, rate):
        c1, c2, c3 = y[0] / p["V1"], y[1] / p["V2"], y[2] / p["V3"]
        f2, f3 = p["Q2"] * (c1 - c2), p["Q3"] * (c1 - c3)
        return rate + jnp.stack([-p["CL"] * c1 - f2 - f3, f2, f3])


PK_MODELS: tuple[type[AbstractPK], ...] = (
    OneCompIV,
    OneCompOral,
    OneCompOralLag,
    OneCompIVMM,
    TwoCompIV,
    TwoCompIVInfusion,
    TwoCompOral,
    OneCompTransitAbs,
    ThreeCompIV,
    OneCompOralFlipFlop,
)
