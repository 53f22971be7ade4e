"""Look models up by name."""

from __future__ import annotations

import difflib

from ..errors import PkpdError
from .base import AbstractPD, AbstractPK
from .coupling import PKPDModel
from .pd import PD_MODELS
from .pk import PK_MODELS


__all__ = ["get_pk", "get_pd", "get_model", "list_models", "model_catalogue", "UnknownModelError"]

_PK = {cls.name: cls for cls in PK_MODELS}
_PD = {cls.name: cls for cls in PD_MODELS}


class UnknownModelError(PkpdError, KeyError):
    def __str__(self) -> str:  # KeyError quotes its message; show it plainly
        return str(self.args[0])


def _lookup(name: str, table: dict, family: str):
    if name not in table:
        close = difflib.get_close_matches(name, table, n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise UnknownModelError(
            f"unknown {family} model {name!r}.{hint} Available: {', '.join(table)}."
        )
    return table[name]()


# Models reachable by name but kept out of `PK_MODELS` / `list_models` (the compartmental
# classes that corpora and the amortized selector enumerate): imported on first use.
_EXTRA_PK = {"pbpk_whole_body": ("pkpd_jax.pbpk.model", "WholeBodyPBPK")}


def get_pk(name: str) -> AbstractPK:
    if name in _EXTRA_PK:
        import importlib

        module, cls = _EXTRA_PK[name]
        return getattr(importlib.import_module(module), cls)()
    return _lookup(name, _PK, "PK")


def get_pd(name: str) -> AbstractPD:
    return _lookup(name, _PD, "PD")


def get_model(pk: str, pd: str | None = None) -> PKPDModel:
    """The joint model for a PK class name and an optional PD class name."""
    return PKPDModel(get_pk(pk), None if pd is None else get_pd(pd))


def list_models(family: str | None = None) -> list[str]:
    if family not in (None, "pk", "pd"):
        raise ValueError(f"family must be 'pk', 'pd' or None; got {family!r}")
    names = []
    if family in (None, "pk"):
        names += list(_PK)
    if family in (None, "pd"):
        names += list(_PD)
    return names


def model_catalogue() -> list[dict]:
    """One record per class: name, family, description, states, params (names), param details."""
    out = []
    for cls in (*PK_MODELS, *PD_MODELS):
        out.append(
            {
                "name": cls.name,
                "family": cls.family,
                "description": cls.description,
                "states": list(cls.states),
                "params": [p.name for p in cls.params],
                "units": {p.name: p.unit for p in cls.params},
                "priors": [p.to_dict() for p in cls.params],
            }
        )
    return out
