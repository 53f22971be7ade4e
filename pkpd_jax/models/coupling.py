"""Any PK class coupled with any (or no) PD class into one joint vector field.

The joint state is ``[PK amounts..., PD states...]`` and the joint parameter vector is the PK
parameters followed by the PD parameters, in declaration order. When a PD parameter name clashes
with a PK one (``ktr`` in ``pk_1c_transit_abs`` + ``pd_transit_delay``), the PD name gets the
suffix ``_pd`` in the joint model.

Parameters travel through `jit`/`vmap` as a flat vector θ in natural units; [`PKPDModel.pack`][]
and [`PKPDModel.unpack`][] convert between θ and ``{name: value}``.
"""

from __future__ import annotations

from collections.abc import Mapping

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float

from ..errors import PkpdError
from .base import AbstractPD, AbstractPK, Param


__all__ = ["PKPDModel", "ParameterError"]


class ParameterError(PkpdError, ValueError):
    """Unknown, missing or out-of-support parameter values."""


class PKPDModel(eqx.Module):
    """A PK model and an optional PD model, simulated as one ODE system."""

    pk: AbstractPK
    pd: AbstractPD | None = None

    # ------------------------------------------------------------------ declarations
    @property
    def name(self) -> str:
        return self.pk.name if self.pd is None else f"{self.pk.name}+{self.pd.name}"

    @property
    def pk_params(self) -> tuple[Param, ...]:
        return self.pk.params

    @property
    def pd_params(self) -> tuple[Param, ...]:
        """PD parameters under their joint names (clashes with PK names get ``_pd``)."""
        if self.pd is None:
            return ()
        taken = {p.name for p in self.pk.params}
        out = []
        for p in self.pd.params:
            if p.name in taken:
                p = Param(p.name + "_pd", p.unit, p.median, p.log_sd, p.constraint, p.description)
            out.append(p)
        return tuple(out)

    @property
    def params(self) -> tuple[Param, ...]:
        return self.pk_params + self.pd_params

    @property
    def param_names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.params)

    @property
    def n_pk_states(self) -> int:
        return len(self.pk.states)

    @property
    def n_states(self) -> int:
        return self.n_pk_states + (0 if self.pd is None else len(self.pd.states))

    @property
    def state_names(self) -> tuple[str, ...]:
        return self.pk.states + (() if self.pd is None else self.pd.states)

    @property
    def linear(self) -> bool:
        """True when the whole joint system is linear in the state (PK-only linear models)."""
        return self.pk.linear and (self.pd is None or self.pd.direct)

    # ------------------------------------------------------------------ parameters
    def pack(self, values: Mapping[str, ArrayLike]) -> Float[Array, "*batch params"]:
        """``{name: value}`` (scalars or arrays of one batch shape) -> θ with the last axis = params.

        Raises a [`ParameterError`][] naming unknown or missing parameters, and non-positive values
        of positive parameters (when values are concrete).
        """
        names = self.param_names
        unknown = sorted(set(values) - set(names))
        missing = [n for n in names if n not in values]
        if unknown or missing:
            raise ParameterError(
                f"model {self.name} takes parameters {list(names)}; "
                + (f"unknown: {unknown}. " if unknown else "")
                + (f"missing: {missing}." if missing else "")
            )
        for p in self.params:
            try:
                v = np.asarray(values[p.name], dtype=float)
            except (TypeError, ValueError):
                continue  # traced values: checked by the caller's own guards
            bad = (
                ~np.isfinite(v)
                | ((v <= 0) if p.constraint == "positive" else False)
                | (((v <= 0) | (v >= 1)) if p.constraint == "unit" else False)
            )
            if np.any(bad):
                need = {"positive": "> 0", "unit": "in (0, 1)", "real": "finite"}[p.constraint]
                raise ParameterError(
                    f"parameter {p.name} of {self.name} must be {need} ({p.unit}); got "
                    f"{v[bad].ravel()[:5].tolist()}."
                )
        return jnp.stack([jnp.asarray(values[n], dtype=float) for n in names], axis=-1)

    def unpack(self, theta: Float[Array, "*batch params"]) -> dict[str, Array]:
        return {n: theta[..., i] for i, n in enumerate(self.param_names)}

    def split_params(self, theta: Float[Array, " params"]) -> tuple[dict[str, Array], dict[str, Array]]:
        """θ -> (PK parameters by name, PD parameters by name; empty without a PD model)."""
        n_pk = len(self.pk.params)
        pk = {p.name: theta[i] for i, p in enumerate(self.pk.params)}
        pd = (
            {}
            if self.pd is None
            else {p.name: theta[n_pk + i] for i, p in enumerate(self.pd.params)}
        )
        return pk, pd

    def prior_medians(self) -> dict[str, float]:
        return {p.name: p.median for p in self.params}

    # ------------------------------------------------------------------ dynamics
    def init(self, theta: Float[Array, " params"]) -> Float[Array, " states"]:
        pk, pd = self.split_params(theta)
        y_pk = self.pk.init(pk)
        if self.pd is None:
            return y_pk
        return jnp.concatenate([y_pk, self.pd.init(pd).astype(y_pk.dtype)])

    def vector_field(
        self,
        t: ArrayLike,
        y: Float[Array, " states"],
        theta: Float[Array, " params"],
        rate: Float[Array, " states"],
    ) -> Float[Array, " states"]:
        """Joint dy/dt. `rate` is the zero-order input per state (non-zero on PK states only)."""
        pk, pd = self.split_params(theta)
        n = self.n_pk_states
        dpk = self.pk.vector_field(t, y[:n], pk, rate[:n])
        if self.pd is None or self.pd.direct:
            return jnp.concatenate([dpk, jnp.zeros(self.n_states - n, dpk.dtype)])
        c = self.pk.concentration(y[:n], pk)
        return jnp.concatenate([dpk, self.pd.vector_field(t, y[n:], pd, c)])

    def observe(
        self, y: Float[Array, " states"], theta: Float[Array, " params"]
    ) -> tuple[Float[Array, ""], Float[Array, ""]]:
        """(concentration in mg/L, PD response; 0 when there is no PD model) for one state."""
        pk, pd = self.split_params(theta)
        n = self.n_pk_states
        c = self.pk.concentration(y[:n], pk)
        if self.pd is None:
            return c, jnp.zeros_like(c)
        return c, self.pd.response(y[n:], pd, c)

    # ------------------------------------------------------------------ linear structure
    def jacobian(
        self, theta: Float[Array, " params"], y: Float[Array, " states"], t: ArrayLike = 0.0
    ) -> Float[Array, "states states"]:
        """∂f/∂y of the joint vector field at state `y` (no input), by forward-mode AD."""
        zero = jnp.zeros(self.n_states, jnp.asarray(theta).dtype)
        return jax.jacfwd(lambda z: self.vector_field(t, z, theta, zero))(jnp.asarray(y, zero.dtype))

    def linear_generator(self, theta: Float[Array, " params"]) -> Float[Array, "states states"]:
        """The matrix K of a linear joint system, dy/dt = K·y + rate (raises if not `linear`).

        Taken from the model's own vector field (its Jacobian at zero), so no model is written
        twice; every exact (matrix-exponential) engine uses this one definition.
        """
        if not self.linear:
            raise ValueError(
                f"{self.name} is not linear in its state (linear_generator needs a linear PK model "
                "and no PD state); use `jacobian(theta, y)` for the local Jacobian."
            )
        return self.jacobian(theta, jnp.zeros(self.n_states, jnp.asarray(theta).dtype))

    def pk_generator(self, theta: Float[Array, " params"]) -> Float[Array, "pk pk"]:
        """The matrix K of the PK subsystem, dA/dt = K·A + rate (raises if the PK is nonlinear).

        Used where the PK part is linear while a PD part is not (steady-state PK by
        superposition under a nonlinear response).
        """
        if not self.pk.linear:
            raise ValueError(f"the PK part of {self.name} ({self.pk.name}) is not linear.")
        pk, _ = self.split_params(theta)
        zero = jnp.zeros(self.n_pk_states, jnp.asarray(theta).dtype)
        return jax.jacfwd(lambda a: self.pk.vector_field(0.0, a, pk, zero))(zero)

    def lag_time(self, theta: Float[Array, " params"]) -> Float[Array, ""]:
        if self.pk.lag is None:
            return jnp.zeros((), theta.dtype)
        return theta[self.param_names.index(self.pk.lag)]

    def describe(self) -> dict:
        return {
            "name": self.name,
            "states": list(self.state_names),
            "params": [p.to_dict() for p in self.params],
        }
