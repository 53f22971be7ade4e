"""One patient's records for the digital twin: doses and observations as fixed-shape arrays
([`PatientArrays`][], a pytree that stacks and vmaps), read from a NONMEM-style table
([`PatientRecord.from_csv`][]) or built from arrays, with free observation slots for samples
added later."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ..dosing import Regimen
from ..errors import PkpdError


__all__ = ["TwinError", "PatientArrays", "PatientRecord", "stack_patients"]


class TwinError(PkpdError, ValueError):
    """A patient record or population that the twin cannot use as given."""


class PatientArrays(NamedTuple):
    """One patient's data as fixed-shape arrays (a pytree: several patients stack and vmap).

    `regimen`: doses ``(D,)``; observation arrays ``(M,)``: times (h), DV, DVID (1/2), `mask`
    (used by the likelihood), `blq`, `lloq` (on BLQ rows).
    """

    regimen: Regimen
    time: jax.Array
    dv: jax.Array
    dvid: jax.Array
    mask: jax.Array
    blq: jax.Array
    lloq: jax.Array


@dataclass
class PatientRecord:
    """One patient: ID, covariates, doses and observations (see [`from_csv`][])."""

    id: str
    covariates: dict[str, float]
    arrays: PatientArrays

    @property
    def regimen(self) -> Regimen:
        return self.arrays.regimen

    @property
    def n_obs(self) -> int:
        return int(np.sum(np.asarray(self.arrays.mask)))

    @property
    def last_time(self) -> float:
        """The latest dose or observation time (h): 'now' for forecasts and sampling."""
        reg = self.arrays.regimen
        dosed = np.asarray(reg.amount) > 0
        times = [np.asarray(self.arrays.time)[np.asarray(self.arrays.mask)]]
        if dosed.any():
            times.append(np.asarray(reg.time)[dosed])
        return float(max((t.max() for t in times if t.size), default=0.0))

    def dose_duration(self) -> float:
        """The median infusion duration of the patient's doses (0 = bolus / none)."""
        return self.arrays.regimen.median_duration()

    def dose_interval(self) -> float | None:
        """The median interval between the patient's doses (h), None with fewer than 2 doses."""
        return self.arrays.regimen.interval()

    def last_dose(self) -> float | None:
        reg = self.arrays.regimen
        dosed = np.asarray(reg.amount) > 0
        if not dosed.any():
            return None
        i = np.argmax(np.where(dosed, np.asarray(reg.time), -np.inf))
        return float(np.asarray(reg.amount)[i])

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_csv(cls, source, *, extra_obs: int = 0) -> PatientRecord:
        """Read one patient's NONMEM-style records (a CSV path or a polars frame; the format of
        `pkpd_jax.data.read_nonmem`). Raises [`TwinError`][] for several IDs or no observation.

        `extra_obs`: empty (masked) observation slots to append, for adding samples later.
        """
        from ..data import Dataset, read_nonmem

        frame = read_nonmem(source)
        ids = frame["ID"].unique(maintain_order=True).to_list()
        where = source if isinstance(source, (str, Path)) else "the patient table"
        if len(ids) != 1:
            shown = ", ".join(map(str, ids[:5])) + (" ..." if len(ids) > 5 else "")
            raise TwinError(
                f"{where} holds {len(ids)} subjects (IDs {shown}); the twin takes one patient's "
                "records: split the file by ID (or filter it) and pass one patient."
            )
        ds = Dataset.from_frame(frame)
        mask = np.asarray(ds.obs_mask[0])
        if not mask.any():
            raise TwinError(
                f"{where} has no observation rows (EVID 0, MDV 0) for patient {ids[0]}: the "
                "individual posterior needs at least one concentration or biomarker value."
            )
        covs = {n: float(v) for n, v in zip(ds.covariate_names, np.asarray(ds.covariates[0]))}
        reg = Regimen(
            ds.regimen.time[0], ds.regimen.amount[0], ds.regimen.duration[0], ds.regimen.cmt[0]
        )
        rec = cls.from_arrays(
            str(ids[0]),
            covs,
            reg,
            np.asarray(ds.obs_time[0]),
            np.asarray(ds.obs_dv[0]),
            np.asarray(ds.obs_dvid[0]),
            mask,
            blq=np.asarray(ds.obs_blq[0]),
            lloq=np.asarray(ds.obs_lloq[0]),
        )
        return rec.with_slots(extra_obs) if extra_obs else rec

    @classmethod
    def from_arrays(
        cls,
        pid,
        covariates: Mapping[str, float],
        regimen: Regimen,
        time,
        dv,
        dvid,
        mask=None,
        *,
        blq=None,
        lloq=None,
    ) -> PatientRecord:
        """Build a record from arrays (simulation studies). BLQ rows without a known LLOQ use
        their DV (the data convention writes DV = LLOQ there)."""
        time = np.asarray(time, float).reshape(-1)
        m = time.size
        dv = np.asarray(dv, float).reshape(-1)
        dvid = np.asarray(dvid, int).reshape(-1)
        mask = np.ones(m, bool) if mask is None else np.asarray(mask, bool).reshape(-1)
        blq = np.zeros(m, bool) if blq is None else np.asarray(blq, bool).reshape(-1)
        lloq = np.full(m, np.nan) if lloq is None else np.asarray(lloq, float).reshape(-1)
        if not (dv.size == dvid.size == mask.size == blq.size == lloq.size == m):
            raise TwinError("observation arrays (time, dv, dvid, mask, blq, lloq) must have one length.")
        bad = mask & ~np.isin(dvid, (1, 2))
        if bad.any():
            raise TwinError(
                f"unknown DVID {np.unique(dvid[bad]).tolist()}; use 1 (concentration) or 2 (biomarker)."
            )
        # concentrations at or before the first dose carry no information (the model predicts 0)
        amount = np.asarray(regimen.amount, float)
        t_first = float(np.min(np.where(amount > 0, np.asarray(regimen.time, float), np.inf)))
        mask = mask & ~((dvid == 1) & (time <= t_first) & ~blq)
        lloq = np.where(blq, np.where(np.isfinite(lloq) & (lloq > 0), lloq, dv), 0.0)
        arrays = PatientArrays(
            regimen,
            jnp.asarray(time),
            jnp.asarray(dv),
            jnp.asarray(dvid),
            jnp.asarray(mask),
            jnp.asarray(blq & mask),
            jnp.asarray(lloq),
        )
        return cls(str(pid), {k.upper(): float(v) for k, v in covariates.items()}, arrays)

    def with_slots(self, n: int) -> PatientRecord:
        """The same record with `n` more (masked) observation slots at the end."""
        a = self.arrays
        t_pad = jnp.full(n, a.time[-1] if a.time.size else 0.0)
        pad = lambda x, v: jnp.concatenate([x, jnp.full(n, v, x.dtype)])  # noqa: E731
        # free slots have DVID 0 (never used by the likelihood until filled)
        arrays = PatientArrays(
            a.regimen,
            jnp.concatenate([a.time, t_pad]),
            pad(a.dv, 0.0),
            pad(a.dvid, 0),
            pad(a.mask, False),
            pad(a.blq, False),
            pad(a.lloq, 0.0),
        )
        return PatientRecord(self.id, self.covariates, arrays)

    def with_observation(self, time: float, dv: float, dvid: int = 1) -> PatientRecord:
        """A copy with one more observation in the first free (masked) slot, or appended."""
        free = np.flatnonzero(np.asarray(self.arrays.dvid) == 0)
        rec = self if free.size else self.with_slots(1)
        a = rec.arrays
        j = int(np.flatnonzero(np.asarray(a.dvid) == 0)[0])
        arrays = a._replace(
            time=a.time.at[j].set(time),
            dv=a.dv.at[j].set(dv),
            dvid=a.dvid.at[j].set(dvid),
            mask=a.mask.at[j].set(True),
        )
        return PatientRecord(rec.id, rec.covariates, arrays)


def stack_patients(records) -> PatientArrays:
    """Stack records of equal shapes ``(D,)``, ``(M,)`` into one batched `PatientArrays`."""
    shapes = {(r.arrays.regimen.time.shape, r.arrays.time.shape) for r in records}
    if len(shapes) != 1:
        raise TwinError(
            f"patients to batch need equal dose and observation counts; got {sorted(shapes)}."
        )
    return jax.tree.map(lambda *x: jnp.stack(x), *[r.arrays for r in records])
