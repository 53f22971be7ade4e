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
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float

from .base import AbstractPD, AbstractPK, Param


__all__ = ["PKPDModel", "ParameterError"]


class ParameterError(ValueError):
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

    def _split(self, theta):
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
        pk, pd = self._split(theta)
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
        pk, pd = self._split(theta)
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
        pk, pd = self._split(theta)
        n = self.n_pk_states
        c = self.pk.concentration(y[:n], pk)
        if self.pd is None:
            return c, jnp.zeros_like(c)
        return c, self.pd.response(y[n:], pd, c)

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
