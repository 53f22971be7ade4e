"""Covariate effects and the one map from population values to individual parameters.

For subject ``i`` and model parameter ``k`` (natural units θ, link ``g`` = log for positive
parameters, logit for fractions, identity for real ones)::

    θ_ik = g⁻¹( μ_k + Σ_e β_e·x_ie·[e acts on k] + ω_k·η_ik ),   η_ik ~ N(0, 1)

with ``x = log(BW/70)`` for a power (allometric) effect (β the exponent) and ``x = COMED`` (0/1)
for a factor effect (β the log factor); ``μ`` is the typical value of a reference subject (70 kg,
COMED 0). [`CovariateSpec`][] says which covariate acts on which parameter and resolves to
[`CovariateEffect`][]s; [`covariate_design`][], [`effect_matrix`][], [`typical_unconstrained`][]
and [`individual_parameters`][] are that equation, used by the population log-density, virtual
trials, the digital twin and the quantum cohorts alike.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import jax.numpy as jnp
import numpy as np

from ..data.dataset import Dataset
from ..models.coupling import PKPDModel
from ._errors import CovariateSpecError, PopulationDataWarning


REFERENCE_BW = 70.0
_WEIGHT_COLUMNS = ("BW", "WT")


@dataclass(frozen=True)
class CovariateEffect:
    """One resolved covariate effect (shared coefficient `name` on parameters `params`).

    - `kind="power"`: ``θ ∝ (x / reference)^β`` (β real, `name` e.g. ``BW_CL``);
    - `kind="factor"`: ``θ ∝ β^x`` for a 0/1 covariate (β > 0, `name` e.g. ``COMED_CL``).

    `prior` is ``(mean, sd)`` of β for power effects and of ``log β`` for factor effects.
    """

    name: str
    covariate: str
    kind: Literal["power", "factor"]
    params: tuple[str, ...]
    reference: float
    prior: tuple[float, float]

    def design(self, values: np.ndarray) -> np.ndarray:
        """The regressor x_i on the unconstrained scale: log(x/ref) or the 0/1 flag."""
        if self.kind == "power":
            return np.log(values / self.reference)
        return values.astype(float)


def _is_clearance(p) -> bool:
    return p.unit == "L/h"


def _is_volume(p) -> bool:
    return p.unit == "L"


@dataclass(frozen=True)
class CovariateSpec:
    """Which covariate acts on which parameter.

    - ``CovariateSpec("auto")`` (default): with a ``BW`` column (or ``WT``), a power effect
      ``(BW/70)^BW_CL`` on every PK clearance (unit L/h: CL, Q, Q2, Q3; not Vmax) and
      ``(BW/70)^BW_V`` on every volume (unit L); with a 0/1 ``COMED`` column, a factor
      ``COMED_CL^COMED`` on ``CL`` only. A covariate with the same value for every subject is
      left out (with a [`PopulationDataWarning`][]).
    - ``CovariateSpec("none")``: no covariates.
    - ``CovariateSpec.parse("BW:CL,V1;COMED:CL")``: explicit, ``COVARIATE:PARAM,PARAM;...``.
      Names are column names and model parameter names. Body weight (``BW``/``WT``) gets one
      exponent ``BW_CL`` shared by the listed clearances and ``BW_V`` shared by the listed
      volumes (``BW_<param>`` for any other parameter); any other positive covariate gets a
      power effect ``(X/median X)^X_<param>``; a 0/1 covariate gets a factor ``X_<param>``.
    """

    mode: Literal["auto", "none", "explicit"] = "auto"
    effects: tuple[tuple[str, tuple[str, ...]], ...] = field(default=())

    def __post_init__(self):
        if self.mode not in ("auto", "none", "explicit"):
            raise CovariateSpecError(
                f"covariate mode must be 'auto', 'none' or 'explicit'; got {self.mode!r}"
            )

    @classmethod
    def auto(cls) -> CovariateSpec:
        return cls("auto")

    @classmethod
    def none(cls) -> CovariateSpec:
        return cls("none")

    @classmethod
    def parse(cls, text: str | CovariateSpec | None) -> CovariateSpec:
        """``"auto"``, ``"none"`` (or empty / None) or ``"COV:P1,P2;COV2:P3"``."""
        if isinstance(text, CovariateSpec):
            return text
        if text is None:
            return cls("auto")
        s = text.strip()
        if s.lower() == "auto":
            return cls("auto")
        if s == "" or s.lower() == "none":
            return cls("none")
        effects = []
        for part in (p.strip() for p in s.split(";")):
            if not part:
                continue
            m = re.fullmatch(r"([A-Za-z_][A-Za-z0-9_]*)\s*:\s*(.+)", part)
            params = tuple(q.strip() for q in m.group(2).split(",")) if m else ()
            if not m or not all(re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", q) for q in params):
                raise CovariateSpecError(
                    f"cannot parse covariate effect {part!r}; expected COVARIATE:PARAM[,PARAM...] "
                    "with effects separated by ';', e.g. 'BW:CL,V;COMED:CL' (or 'auto' / 'none')"
                )
            effects.append((m.group(1).upper(), params))
        if not effects:
            return cls("none")
        return cls("explicit", tuple(effects))

    def __str__(self) -> str:
        if self.mode != "explicit":
            return self.mode
        return ";".join(f"{c}:{','.join(ps)}" for c, ps in self.effects)

    # ------------------------------------------------------------------ resolution
    def resolve(self, model: PKPDModel, dataset: Dataset) -> tuple[CovariateEffect, ...]:
        """The effects for this model and data (raises [`CovariateSpecError`][] on mismatch)."""
        names = dataset.covariate_names
        cov = np.asarray(dataset.covariates, float)
        if self.mode == "none":
            return ()
        if self.mode == "auto":
            out = []
            weight = next((w for w in _WEIGHT_COLUMNS if w in names), None)
            if weight is not None and _constant(weight, cov[:, names.index(weight)], "auto"):
                weight = None
            if weight is not None:
                bw = cov[:, names.index(weight)]
                _check_positive(weight, bw)
                cls_ = tuple(p.name for p in model.pk_params if _is_clearance(p))
                vols = tuple(p.name for p in model.pk_params if _is_volume(p))
                if cls_:
                    out.append(
                        CovariateEffect(f"{weight}_CL", weight, "power", cls_, REFERENCE_BW, (0.75, 0.25))
                    )
                if vols:
                    out.append(
                        CovariateEffect(f"{weight}_V", weight, "power", vols, REFERENCE_BW, (1.0, 0.25))
                    )
            if (
                "COMED" in names
                and "CL" in model.param_names
                and not _constant("COMED", cov[:, names.index("COMED")], "auto")
            ):
                _check_binary("COMED", cov[:, names.index("COMED")])
                out.append(CovariateEffect("COMED_CL", "COMED", "factor", ("CL",), 0.0, (0.0, 0.5)))
            return tuple(out)

        by_param = {p.name: p for p in model.params}
        out: list[CovariateEffect] = []
        for column, params in self.effects:
            if column not in names:
                raise CovariateSpecError(
                    f"covariate {column!r} is not a column of the data; available covariates: "
                    f"{', '.join(names) or 'none'}"
                )
            unknown = [q for q in params if q not in by_param]
            if unknown:
                raise CovariateSpecError(
                    f"unknown parameter(s) {unknown} in covariate effect {column}:"
                    f"{','.join(params)}; model {model.name} has parameters "
                    f"{', '.join(model.param_names)}"
                )
            x = cov[:, names.index(column)]
            _constant(column, x, "explicit")
            if column in _WEIGHT_COLUMNS:
                _check_positive(column, x)
                groups = {"CL": [], "V": []}
                for q in params:
                    p = by_param[q]
                    if _is_clearance(p):
                        groups["CL"].append(q)
                    elif _is_volume(p):
                        groups["V"].append(q)
                    else:
                        out.append(
                            CovariateEffect(f"{column}_{q}", column, "power", (q,), REFERENCE_BW, (0.0, 0.5))
                        )
                if groups["CL"]:
                    out.append(
                        CovariateEffect(
                            f"{column}_CL", column, "power", tuple(groups["CL"]), REFERENCE_BW, (0.75, 0.25)
                        )
                    )
                if groups["V"]:
                    out.append(
                        CovariateEffect(
                            f"{column}_V", column, "power", tuple(groups["V"]), REFERENCE_BW, (1.0, 0.25)
                        )
                    )
            elif column == "COMED" or _binary(x):
                _check_binary(column, x)
                for q in params:
                    out.append(CovariateEffect(f"{column}_{q}", column, "factor", (q,), 0.0, (0.0, 0.5)))
            else:
                _check_positive(column, x, binary_ok=True)
                ref = float(np.median(x))
                for q in params:
                    out.append(CovariateEffect(f"{column}_{q}", column, "power", (q,), ref, (0.0, 0.5)))
        seen: dict[str, tuple] = {}
        for e in out:
            if e.name in seen:
                raise CovariateSpecError(f"covariate effect {e.name} is specified twice")
            seen[e.name] = e.params
        taken = set(model.param_names)
        clash = [e.name for e in out if e.name in taken]
        if clash:
            raise CovariateSpecError(f"covariate effect names {clash} clash with model parameters")
        return tuple(out)


def _constant(name: str, x: np.ndarray, mode: str) -> bool:
    """True (with a warning) when covariate `name` has one value for every subject: the data
    cannot inform its effect (with a value other than the reference it is also confounded with
    the typical value). ``auto`` leaves such an effect out; an explicit effect is kept."""
    if x.size == 0 or np.ptp(x) > 0:
        return False
    what = (
        "it is left out of the automatic covariate model"
        if mode == "auto"
        else "its effect is informed by the prior only (and confounded with the typical value)"
    )
    warnings.warn(
        f"covariate {name} has the same value ({x[0]:g}) for every subject; the data cannot "
        f"support a {name} effect, so {what}",
        PopulationDataWarning,
        stacklevel=4,
    )
    return True


def _binary(x: np.ndarray) -> bool:
    return bool(np.all(np.isin(x, (0.0, 1.0))))


def _check_binary(name: str, x: np.ndarray) -> None:
    if not _binary(x):
        bad = np.unique(x[~np.isin(x, (0.0, 1.0))])[:5].tolist()
        raise CovariateSpecError(
            f"covariate {name} must be binary (0/1) for a factor effect; found values {bad}"
        )


def _check_positive(name: str, x: np.ndarray, binary_ok: bool = False) -> None:
    if not np.all(np.isfinite(x) & (x > 0)):
        bad = np.unique(x[~(np.isfinite(x) & (x > 0))])[:5].tolist()
        hint = " (or 0/1 for a factor effect)" if binary_ok else ""
        raise CovariateSpecError(
            f"covariate {name} must be positive for a power effect{hint}; found values {bad}"
        )


# ============================================================================ the map
def covariate_design(effects: Sequence[CovariateEffect], covariates: Mapping[str, np.ndarray]) -> np.ndarray:
    """The regressors ``(..., E)`` of `effects` (log(x/ref) or the 0/1 flag) for covariate values
    ``{name: (...)}`` (any common shape; ``(..., 0)`` without effects).

    Raises [`CovariateSpecError`][] when a covariate an effect needs is absent."""
    missing = [e.covariate for e in effects if e.covariate not in covariates]
    if missing:
        raise CovariateSpecError(
            f"covariate(s) {sorted(set(missing))} are needed by the covariate effects "
            f"{[e.name for e in effects if e.covariate in missing]} but absent; given: "
            f"{', '.join(covariates) or 'none'}"
        )
    if not effects:
        shape = np.shape(next(iter(covariates.values()))) if covariates else ()
        return np.zeros((*shape, 0))
    return np.stack([e.design(np.asarray(covariates[e.covariate], float)) for e in effects], -1)


def effect_matrix(effects: Sequence[CovariateEffect], param_names: Sequence[str]) -> np.ndarray:
    """Incidence ``(E, P)``: 1 where effect ``e`` acts on parameter ``k``."""
    names = list(param_names)
    A = np.zeros((len(effects), len(names)))
    for j, e in enumerate(effects):
        for q in e.params:
            A[j, names.index(q)] = 1.0
    return A


def typical_unconstrained(mu, coef, design, incidence):
    """Typical unconstrained parameters ``g(θ)`` given covariates: ``μ + X·(β ⊙ A)``.

    `mu` ``(..., P)``, `coef` ``(..., E)`` (power: exponent; factor: log factor), `design`
    ``(..., N, E)`` from [`covariate_design`][], `incidence` ``(E, P)`` from [`effect_matrix`][];
    returns ``(..., N, P)`` (leading axes broadcast: one population draw per leading index)."""
    mu = jnp.asarray(mu)
    coef = jnp.asarray(coef)
    return mu[..., None, :] + jnp.asarray(design) @ (coef[..., :, None] * jnp.asarray(incidence))


def to_natural(params, u):
    """Natural-unit parameters ``(..., P)`` from unconstrained ones (each parameter's link)."""
    return jnp.stack([p.to_natural(u[..., k]) for k, p in enumerate(params)], axis=-1)


def to_unconstrained(params, theta):
    """Unconstrained parameters ``(..., P)`` from natural-unit ones (inverse of [`to_natural`][])."""
    theta = jnp.asarray(theta, dtype=float)
    return jnp.stack([p.to_unconstrained(theta[..., k]) for k, p in enumerate(params)], axis=-1)


def individual_parameters(params, mu, coef, design, incidence, omega=None, eta=None, bsv_index=None):
    """Individual parameters in natural units: ``g⁻¹(μ + X·(β ⊙ A) + ω ⊙ η)`` (the equation of
    the module docstring).

    **Arguments:**

    - `params`: the model's parameters (`PKPDModel.params`, P of them).
    - `mu`, `coef`, `design`, `incidence`: as for [`typical_unconstrained`][].
    - `omega` ``(..., B)``, `eta` ``(..., N, B)``: between-subject SDs and standardised random
      effects of the parameters `bsv_index` ``(B,)``; ``eta=None`` gives the typical subject.

    **Returns:** ``(..., N, P)`` natural-unit parameters.
    """
    u = typical_unconstrained(mu, coef, design, incidence)
    if eta is not None and len(bsv_index):
        oe = jnp.asarray(omega)[..., None, :] * jnp.asarray(eta)
        u = jnp.broadcast_to(u, jnp.broadcast_shapes(u.shape[:-1], oe.shape[:-1]) + u.shape[-1:])
        u = u.at[..., np.asarray(bsv_index)].add(oe)
    return to_natural(params, u)
