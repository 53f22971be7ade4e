"""Model declarations: parameters, constraints, priors, and the abstract PK / PD interfaces.

A model is declared once, as class data plus a vector field:

- `name`, `states` (state names, which fixes the state size), `params` (a tuple of [`Param`][]);
- PK only: `dose_cmt` (state index receiving doses by default), `central` (state whose amount,
  divided by the `volume` parameter, is the concentration), `linear` (the vector field is linear in
  the state, which the tests and fast paths rely on), `lag` (name of a lag-time parameter or None),
  `default_duration` (h; > 0 turns doses without a duration into infusions of that length);
- PD only: `init` (initial state, e.g. R(0) = R0) and `response` (observed biomarker), both
  functions of the PD state, the parameters and the plasma concentration.

Parameters reach the vector field as a mapping ``name -> scalar`` so that the equations read like
the textbook. Units: time h, dose mg, volume L, clearance L/h, rate constants 1/h, concentration
mg/L (dose unit per volume unit).
"""

from __future__ import annotations

import abc
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar, Literal

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float


__all__ = ["Param", "AbstractPK", "AbstractPD", "Constraint"]

Constraint = Literal["positive", "unit", "real"]


@dataclass(frozen=True)
class Param:
    """One model parameter: name (public API), unit, constraint and a default prior.

    The prior is log-normal for `positive` parameters (``log θ ~ N(log median, log_sd²)``),
    logit-normal for `unit` parameters (fractions in (0, 1)), and normal for `real` ones
    (``θ ~ N(median, log_sd²)``, where `log_sd` is then a plain standard deviation).
    """

    name: str
    unit: str
    median: float
    log_sd: float
    constraint: Constraint = "positive"
    description: str = ""

    def __post_init__(self):
        if self.constraint not in ("positive", "unit", "real"):
            raise ValueError(f"unknown constraint {self.constraint!r} for parameter {self.name}")
        if self.constraint == "positive" and not self.median > 0:
            raise ValueError(f"positive parameter {self.name} needs median > 0")
        if self.constraint == "unit" and not 0 < self.median < 1:
            raise ValueError(f"unit-interval parameter {self.name} needs 0 < median < 1")

    @property
    def prior_loc(self) -> float:
        """Location of the prior in unconstrained space."""
        if self.constraint == "positive":
            return math.log(self.median)
        if self.constraint == "unit":
            return math.log(self.median / (1.0 - self.median))
        return self.median

    def prior_range(self, z: float = 1.96) -> tuple[float, float]:
        """Central ~95% prior interval in natural units."""
        lo, hi = self.prior_loc - z * self.log_sd, self.prior_loc + z * self.log_sd
        if self.constraint == "positive":
            return math.exp(lo), math.exp(hi)
        if self.constraint == "unit":
            return 1.0 / (1.0 + math.exp(-lo)), 1.0 / (1.0 + math.exp(-hi))
        return lo, hi

    def to_natural(self, u):
        """Unconstrained value -> natural value."""
        if self.constraint == "positive":
            return jnp.exp(u)
        if self.constraint == "unit":
            return jax.nn.sigmoid(u)
        return u

    def to_unconstrained(self, x):
        """Natural value -> unconstrained value."""
        if self.constraint == "positive":
            return jnp.log(x)
        if self.constraint == "unit":
            return jnp.log(x) - jnp.log1p(-x)
        return x

    def to_dict(self) -> dict:
        lo, hi = self.prior_range()
        return {
            "name": self.name,
            "unit": self.unit,
            "constraint": self.constraint,
            "prior_median": self.median,
            "prior_log_sd": self.log_sd,
            "prior_95": [lo, hi],
            "description": self.description,
        }


Params = Mapping[str, Float[Array, ""]]


class AbstractPK(eqx.Module):
    """A pharmacokinetic model: amounts in compartments, concentration = A_central / volume."""

    name: ClassVar[str]
    family: ClassVar[str] = "pk"
    description: ClassVar[str] = ""
    states: ClassVar[tuple[str, ...]]
    params: ClassVar[tuple[Param, ...]]
    dose_cmt: ClassVar[int]
    central: ClassVar[int]
    volume: ClassVar[str]
    linear: ClassVar[bool] = True
    lag: ClassVar[str | None] = None
    default_duration: ClassVar[float] = 0.0

    @abc.abstractmethod
    def vector_field(
        self, t: ArrayLike, y: Float[Array, " n"], p: Params, rate: Float[Array, " n"]
    ) -> Float[Array, " n"]:
        """dA/dt given amounts `y`, parameters `p` and zero-order input `rate` (mg/h per state)."""

    def concentration(self, y: Float[Array, " n"], p: Params) -> Float[Array, ""]:
        return y[self.central] / p[self.volume]

    def init(self, p: Params) -> Float[Array, " n"]:
        del p
        return jnp.zeros(len(self.states))


class AbstractPD(eqx.Module):
    """A pharmacodynamic model driven by the plasma (or effect-site) concentration C(t)."""

    name: ClassVar[str]
    family: ClassVar[str] = "pd"
    description: ClassVar[str] = ""
    states: ClassVar[tuple[str, ...]] = ()
    params: ClassVar[tuple[Param, ...]]

    @property
    def direct(self) -> bool:
        """Direct (algebraic) models have no state: R is a function of C(t) only."""
        return len(self.states) == 0

    def vector_field(
        self, t: ArrayLike, r: Float[Array, " m"], p: Params, c: Float[Array, ""]
    ) -> Float[Array, " m"]:
        del t, p, c
        return jnp.zeros_like(r)

    def init(self, p: Params) -> Float[Array, " m"]:
        del p
        return jnp.zeros(len(self.states))

    @abc.abstractmethod
    def response(self, r: Float[Array, " m"], p: Params, c: Float[Array, ""]) -> Float[Array, ""]:
        """Observed biomarker given PD state `r`, parameters and plasma concentration `c`."""
