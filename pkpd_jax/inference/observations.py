"""The observations a population likelihood fits: input checks, pre-dose concentrations and
the LLOQ of BLQ rows (see `pkpd_jax.inference.likelihood`)."""

from __future__ import annotations

import warnings

import numpy as np

from ..data.dataset import Dataset
from ..models.coupling import PKPDModel
from ..population import PopulationDataError, PopulationDataWarning


__all__ = ["fitted_observations", "resolve_lloq"]


def fitted_observations(model: PKPDModel, dataset: Dataset, types: tuple[int, ...]) -> np.ndarray:
    """Check that the data can be fitted (raises [`PopulationDataError`][]) and return the
    ``(N, M)`` mask of the observations the likelihood uses."""
    ds = dataset
    ids = ds.ids
    mask = np.asarray(ds.obs_mask)
    dvid = np.asarray(ds.obs_dvid)
    n_pk = int(np.sum(mask & (dvid == 1)))
    n_pd = int(np.sum(mask & (dvid == 2)))
    if model.pd is not None and n_pd == 0:
        raise PopulationDataError(
            f"the data has no PD observations (DVID 2), so the PD model {model.pd.name} "
            "cannot be fitted; fit a PK-only model (omit --pd) or add biomarker rows"
        )
    if n_pk == 0:
        raise PopulationDataError(
            "the data has no drug concentrations (DVID 1 observations with MDV 0); a PK model "
            "cannot be fitted without them; add concentration rows"
        )
    amount = np.asarray(ds.regimen.amount, float)
    if not np.any(amount > 0):
        raise PopulationDataError(
            "no subject has a dose amount > 0; add dose rows (EVID 1, AMT > 0) to the data"
        )
    fitted = mask & np.isin(dvid, types)

    # Concentrations at or before a subject's first dose: every PK model predicts exactly 0
    # there, so they carry no information on the PK parameters. BLQ ones are kept (M3 is
    # consistent with 0); quantified ones are not fitted: a positive value (carry-over,
    # endogenous drug, a time or ID error) would otherwise be explained by σ_add alone, and
    # exact zeros would make the likelihood unbounded as σ_add -> 0.
    t_first = np.min(np.where(amount > 0, np.asarray(ds.regimen.time, float), np.inf), axis=1)
    times = np.asarray(ds.obs_time, float)
    dv = np.asarray(ds.obs_dv, float)
    pre = fitted & (dvid == 1) & (times <= t_first[:, None]) & ~np.asarray(ds.obs_blq)
    positive = pre & (dv > 0)
    if positive.any():
        who = [ids[i] for i in np.flatnonzero(positive.any(axis=1))]
        shown = ", ".join(who[:10]) + (" ..." if len(who) > 10 else "")
        warnings.warn(
            f"{int(positive.sum())} concentration(s) > 0 at or before the first dose (where the "
            f"model predicts 0) are not fitted; subject(s) {shown}. Check for carry-over from "
            "an earlier period, endogenous drug, or TIME/ID errors (set MDV 1 on such rows to "
            "silence this warning)",
            PopulationDataWarning,
            stacklevel=3,
        )
    fitted = fitted & ~pre
    if not np.any(fitted & (dvid == 1)):
        raise PopulationDataError(
            "every drug concentration (DVID 1) is at or before the subject's first dose, where "
            "the model predicts 0; the PK parameters cannot be estimated; check the TIME "
            "column of the dose and concentration rows"
        )

    n_with = int(np.sum(fitted.any(axis=1)))
    if n_with < 2:
        raise PopulationDataError(
            f"a population model needs at least 2 subjects with observations; the data has {n_with}"
        )
    if model.pd is not None:
        exposed = fitted & (dvid == 2) & (times > t_first[:, None])
        if not exposed.any():
            warnings.warn(
                "no PD observation (DVID 2) is after a dose: the data cannot inform the "
                "concentration-effect parameters of the PD model (their estimates are the "
                "priors); add biomarker samples from dosed subjects",
                PopulationDataWarning,
                stacklevel=3,
            )
    if model.pd is None and n_pd > 0:
        warnings.warn(
            f"the data has {n_pd} PD observations (DVID 2) that a PK-only model ignores",
            PopulationDataWarning,
            stacklevel=3,
        )
    return fitted

def resolve_lloq(dataset: Dataset, mask: np.ndarray, types: tuple[int, ...]) -> np.ndarray:
    """The LLOQ ``(N, M)`` of each fitted BLQ row (0 elsewhere): the known one, else the stored
    DV, else the smallest known LLOQ / quantified DV of that observation type."""
    ds = dataset
    dv = np.asarray(ds.obs_dv, float)
    dvid = np.asarray(ds.obs_dvid)
    blq = np.asarray(ds.obs_blq) & mask
    stored = np.asarray(ds.obs_lloq, float)
    lloq = np.where(np.isfinite(stored) & (stored > 0), stored, np.where(dv > 0, dv, np.nan))
    for t in types:
        need = blq & (dvid == t) & ~np.isfinite(lloq)
        if not need.any():
            continue
        known = stored[(dvid == t) & np.isfinite(stored) & (stored > 0)]
        quant = dv[mask & ~blq & (dvid == t) & (dv > 0)]
        fallback = known.min() if known.size else (quant.min() if quant.size else 1.0)
        lloq = np.where(need, fallback, lloq)
    return np.where(blq, lloq, 0.0)
