"""The covariate vector of a virtual patient: its columns, units, organs and tissue densities.

Shared by [`reference`](reference.py) (which draws patients) and [`constraints`](constraints.py)
(which checks them), so neither needs the other for these names.
"""

from __future__ import annotations

import numpy as np


__all__ = ["VARIABLES", "UNITS", "ORGANS", "FLOW_ORGANS", "DENSITY", "index", "du_bois_bsa"]

#: Tissues with a volume column ``v_<organ>``.
ORGANS = ("liver", "kidney", "brain", "heart", "lung", "muscle", "adipose", "skin")
#: Tissues with a blood-flow column ``q_<organ>`` (systemic; the lungs receive the whole cardiac output).
FLOW_ORGANS = ("liver", "kidney", "brain", "heart", "muscle", "adipose", "skin")

VARIABLES = (
    ("female", "age", "height", "weight", "bmi")
    + tuple(f"v_{o}" for o in ORGANS)
    + ("co",)
    + tuple(f"q_{o}" for o in FLOW_ORGANS)
    + ("gfr", "hct", "albumin")
)
UNITS = {
    "female": "1", "age": "y", "height": "cm", "weight": "kg", "bmi": "kg/m^2",
    **{f"v_{o}": "L" for o in ORGANS}, "co": "L/h", **{f"q_{o}": "L/h" for o in FLOW_ORGANS},
    "gfr": "mL/min", "hct": "L/L", "albumin": "g/L",
}

#: Tissue densities, kg/L (Brown et al. 1997, Table 20; ICRP 89, lungs as parenchyma without air).
DENSITY = {"liver": 1.05, "kidney": 1.05, "brain": 1.04, "heart": 1.03, "lung": 1.05, "muscle": 1.04,
           "adipose": 0.916, "skin": 1.09}


def index(name: str) -> int:
    """Column of variable `name` in a covariate matrix."""
    return VARIABLES.index(name)


def du_bois_bsa(weight, height, xp=np):
    """Body surface area, m² (Du Bois & Du Bois 1916): ``0.007184 W^0.425 H^0.725``, W kg, H cm."""
    return 0.007184 * weight**0.425 * height**0.725
