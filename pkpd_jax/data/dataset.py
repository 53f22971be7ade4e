"""A validated population data set as padded JAX arrays.

[`Dataset`][] turns the clean long table of [`read_nonmem`][pkpd_jax.data.read_nonmem] into
fixed-shape arrays so that models `jax.vmap` over subjects:

- doses: a [`Regimen`][pkpd_jax.dosing.Regimen] of shape ``(N, D)`` (``D`` = most doses of any
  subject), padded as `Regimen.make` pads (amount 0 at the last dose time, cmt -1);
- observations: ``(N, M)`` arrays (``M`` = most observation rows of any subject). Every
  observation row of the table is kept, including ignored ones (MDV 1) and BLQ ones:
  ``obs_present`` marks real rows, ``obs_mask`` the fitted ones (real and MDV 0) and ``obs_blq``
  those below the limit of quantification. Padding repeats the subject's last observation time
  (times stay sorted) and has ``dv = 0``, ``dvid = 1``, ``lloq = 0``;
- covariates: ``(N, C)`` baseline values (the subject's first row).

All data arrays are finite except ``obs_lloq``, which is NaN where the LLOQ is unknown. A missing
DV on an ignored observation (MDV 1) is stored as 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import equinox as eqx
import jax.numpy as jnp
import numpy as np
import polars as pl
from jaxtyping import Array, Bool, Float, Int

from ..dosing import Regimen
from .nonmem import DataSummary, covariate_columns, read_nonmem


__all__ = ["Dataset"]


def _blocks(subj: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Start index and count of each subject's rows (rows are grouped by subject, in order)."""
    counts = np.bincount(subj, minlength=n)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    return starts, counts


def _pad(values: np.ndarray, starts: np.ndarray, counts: np.ndarray, width: int,
         fill) -> np.ndarray:
    """``(N, width)`` array of each subject's values, positions past its count set to `fill`.

    With ``fill=None`` the subject's last value is repeated instead.
    """
    pos = np.arange(width)[None, :]
    idx = starts[:, None] + np.minimum(pos, np.maximum(counts[:, None] - 1, 0))
    idx = np.minimum(idx, max(values.size - 1, 0))
    out = values[idx] if values.size else np.zeros(idx.shape, values.dtype)
    # subjects with no rows at all (placebo subjects have no doses): zeros, or `fill`
    out = np.where(counts[:, None] > 0, out, 0 if fill is None else fill)
    if fill is not None:
        out = np.where(pos < counts[:, None], out, fill)
    return out


class Dataset(eqx.Module):
    """Padded arrays for ``N`` subjects (see the module docstring for the conventions).

    **Fields:**

    - `ids`: subject identifiers as text, in order of first appearance (static).
    - `covariate_names`: covariate column names, upper case (static).
    - `regimen`: doses, a [`Regimen`][pkpd_jax.dosing.Regimen] of shape ``(N, D)``.
    - `obs_time`, `obs_dv`: ``(N, M)`` observation times (h) and values.
    - `obs_dvid`: ``(N, M)`` int, 1 = drug concentration, 2 = PD response.
    - `obs_mask`: ``(N, M)`` bool, True for real observations that are fitted (MDV 0).
    - `obs_present`: ``(N, M)`` bool, True for every real observation row (MDV 0 or 1).
    - `obs_blq`: ``(N, M)`` bool, True where below the limit of quantification.
    - `obs_lloq`: ``(N, M)`` limit of quantification (NaN where unknown, 0 on padding).
    - `covariates`: ``(N, C)`` baseline covariate values.
    """

    ids: tuple[str, ...] = eqx.field(static=True)
    covariate_names: tuple[str, ...] = eqx.field(static=True)
    regimen: Regimen
    obs_time: Float[Array, "N M"]
    obs_dv: Float[Array, "N M"]
    obs_dvid: Int[Array, "N M"]
    obs_mask: Bool[Array, "N M"]
    obs_present: Bool[Array, "N M"]
    obs_blq: Bool[Array, "N M"]
    obs_lloq: Float[Array, "N M"]
    covariates: Float[Array, "N C"]

    def __check_init__(self):
        obs = {k: getattr(self, k).shape for k in (
            "obs_time", "obs_dv", "obs_dvid", "obs_mask", "obs_present", "obs_blq", "obs_lloq")}
        if len(set(obs.values())) != 1:
            raise ValueError(f"`Dataset` observation arrays must have one shape; got {obs}.")
        if self.covariates.shape[-1] != len(self.covariate_names):
            raise ValueError(
                f"`Dataset.covariates` has {self.covariates.shape[-1]} columns but "
                f"{len(self.covariate_names)} names ({self.covariate_names})."
            )
        if self.obs_time.ndim == 2 and self.obs_time.shape[0] != len(self.ids):
            raise ValueError(
                f"`Dataset` has {len(self.ids)} ids but arrays for {self.obs_time.shape[0]} "
                "subjects."
            )

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_frame(cls, df: pl.DataFrame) -> Dataset:
        """Build from a table (validated with [`read_nonmem`][pkpd_jax.data.read_nonmem]).

        **Arguments:**

        - `df`: a `polars.DataFrame`, typically the output of `read_nonmem`.

        **Returns:**

        The [`Dataset`][].
        """
        df = read_nonmem(df)
        subj = df["_SUBJ"].to_numpy().astype(np.int64)
        n = int(subj.max()) + 1
        starts = _blocks(subj, n)[0]
        all_ids = df["ID"].to_list()
        ids = tuple(all_ids[i] for i in starts)
        evid = df["EVID"].to_numpy()

        # doses
        d = evid == 1
        d_starts, d_counts = _blocks(subj[d], n)
        size = max(int(d_counts.max()), 1)  # placebo-only data: one padding row
        t_d = df["TIME"].to_numpy()[d]
        a_d = df["AMT"].to_numpy()[d]
        dur_d = df["DUR"].to_numpy()[d] if "DUR" in df.columns else np.zeros(t_d.size)
        c = df["CMT"].to_numpy()[d]
        c_d = np.where(c > 0, c - 1, -1).astype(np.int64)
        # Same layout as `stack_regimens([Regimen.make(..., size=size), ...])` (padding rows at
        # the last dose time with zero amount and duration, cmt -1), built in one go.
        regimen = Regimen(
            time=jnp.asarray(_pad(t_d, d_starts, d_counts, size, None)),
            amount=jnp.asarray(_pad(a_d, d_starts, d_counts, size, 0.0)),
            duration=jnp.asarray(_pad(dur_d, d_starts, d_counts, size, 0.0)),
            cmt=jnp.asarray(_pad(c_d, d_starts, d_counts, size, -1)),
        )

        # observations
        o = evid == 0
        o_starts, o_counts = _blocks(subj[o], n)
        width = int(o_counts.max())
        dv = df["DV"].fill_null(0.0).to_numpy()[o]
        dvid = df["DVID"].to_numpy()[o].astype(np.int64)
        fitted = df["MDV"].to_numpy()[o] == 0
        blq = (df["BLQ"].to_numpy()[o] == 1) if "BLQ" in df.columns else np.zeros(dv.size, bool)
        lloq = (df["LLOQ"].fill_null(np.nan).to_numpy()[o] if "LLOQ" in df.columns
                else np.full(dv.size, np.nan))

        def pad(x, fill):
            return jnp.asarray(_pad(x, o_starts, o_counts, width, fill))

        names = covariate_columns(df)
        cov = (df.select(names).to_numpy().astype(float)[starts] if names
               else np.zeros((n, 0)))
        return cls(
            ids=ids,
            covariate_names=tuple(names),
            regimen=regimen,
            obs_time=pad(df["TIME"].to_numpy()[o], None),
            obs_dv=pad(dv, 0.0),
            obs_dvid=pad(dvid, 1),
            obs_mask=pad(fitted, False),
            obs_present=pad(np.ones(dv.size, bool), False),
            obs_blq=pad(blq, False),
            obs_lloq=pad(lloq, 0.0),
            covariates=jnp.asarray(cov),
        )

    @classmethod
    def load(cls, path: str | Path) -> Dataset:
        """Read, validate and convert a NONMEM-style CSV: ``from_frame(read_nonmem(path))``."""
        return cls.from_frame(read_nonmem(path))

    # ------------------------------------------------------------------ access
    @property
    def n_subjects(self) -> int:
        return len(self.ids)

    def covariate(self, name: str) -> Float[Array, " N"]:
        """Baseline values ``(N,)`` of covariate `name` (case-insensitive)."""
        key = name.strip().upper()
        if key not in self.covariate_names:
            raise KeyError(
                f"no covariate {name!r} in this data set; available: "
                f"{', '.join(self.covariate_names) or 'none'}."
            )
        return self.covariates[..., self.covariate_names.index(key)]

    def subset(self, indices: Sequence[int] | np.ndarray) -> Dataset:
        """The subjects at `indices` (integer positions or a boolean mask of length ``N``).

        Array widths (``D``, ``M``) are kept.
        """
        idx = np.asarray(indices)
        if idx.dtype == bool:
            if idx.shape != (self.n_subjects,):
                raise IndexError(
                    f"boolean subset mask must have shape ({self.n_subjects},); got {idx.shape}."
                )
            idx = np.flatnonzero(idx)
        idx = idx.astype(np.int64).reshape(-1)
        bad = (idx < -self.n_subjects) | (idx >= self.n_subjects)
        if bad.any():
            raise IndexError(
                f"subject index {int(idx[bad][0])} is out of range for {self.n_subjects} subjects."
            )
        if idx.size == 0:
            raise IndexError("`subset` needs at least one subject index.")
        r = self.regimen
        return Dataset(
            ids=tuple(self.ids[i] for i in idx),
            covariate_names=self.covariate_names,
            regimen=Regimen(r.time[idx], r.amount[idx], r.duration[idx], r.cmt[idx]),
            obs_time=self.obs_time[idx],
            obs_dv=self.obs_dv[idx],
            obs_dvid=self.obs_dvid[idx],
            obs_mask=self.obs_mask[idx],
            obs_present=self.obs_present[idx],
            obs_blq=self.obs_blq[idx],
            obs_lloq=self.obs_lloq[idx],
            covariates=self.covariates[idx],
        )

    def summary(self) -> DataSummary:
        """Counts as [`validate`][pkpd_jax.data.validate] reports them for the source table."""
        mask = np.asarray(self.obs_mask)
        present = np.asarray(self.obs_present)
        dvid = np.asarray(self.obs_dvid)
        amount = np.asarray(self.regimen.amount)
        dosed = amount > 0
        times = np.concatenate([np.asarray(self.obs_time)[present],
                                np.asarray(self.regimen.time)[dosed]])
        return DataSummary(
            n_subjects=self.n_subjects,
            n_doses=int(dosed.sum()),
            n_obs_by_dvid={int(k): int(np.sum(mask & (dvid == k))) for k in np.unique(dvid[mask])},
            n_blq=int(np.sum(mask & np.asarray(self.obs_blq))),
            covariates=list(self.covariate_names),
            time_range=(float(times.min()), float(times.max())),
            n_ignored=int(np.sum(present & ~mask)),
        )

    # ------------------------------------------------------------------ back to a table
    def to_frame(self) -> pl.DataFrame:
        """The long NONMEM-style table (as [`read_nonmem`][pkpd_jax.data.read_nonmem] returns it).

        Rows are ordered by subject, then time, with observations before doses at equal times
        (pre-dose samples). Covariates are the baseline values on every row. ``DUR`` is included
        when a dose is an infusion, ``BLQ`` when a sample is BLQ or has an LLOQ, ``LLOQ`` when one
        is known.
        """
        n, m = self.obs_time.shape
        present = np.asarray(self.obs_present)
        amount = np.asarray(self.regimen.amount)
        dosed = amount > 0
        subj_o = np.broadcast_to(np.arange(n)[:, None], present.shape)[present]
        subj_d = np.broadcast_to(np.arange(n)[:, None], dosed.shape)[dosed]
        n_o, n_d = subj_o.size, subj_d.size

        def cat(obs_values, dose_values):
            return np.concatenate([np.asarray(obs_values, float), np.asarray(dose_values, float)])

        subj = np.concatenate([subj_o, subj_d])
        time = cat(np.asarray(self.obs_time)[present], np.asarray(self.regimen.time)[dosed])
        kind = np.concatenate([np.zeros(n_o, int), np.ones(n_d, int)])
        order = np.lexsort((np.arange(subj.size), kind, time, subj))

        lloq_o = np.asarray(self.obs_lloq)[present]
        blq_o = np.asarray(self.obs_blq)[present]
        dur_d = np.asarray(self.regimen.duration)[dosed]
        cmt_d = np.asarray(self.regimen.cmt)[dosed]
        nan_d = np.full(n_d, np.nan)
        cols: dict[str, np.ndarray] = {
            "TIME": time,
            "AMT": cat(np.zeros(n_o), amount[dosed]),
            "DV": cat(np.asarray(self.obs_dv)[present], nan_d),
            "EVID": cat(np.zeros(n_o), np.ones(n_d)),
            "MDV": cat(~np.asarray(self.obs_mask)[present], np.ones(n_d)),
            "CMT": cat(np.zeros(n_o), np.where(cmt_d >= 0, cmt_d + 1, 0)),
            "DVID": cat(np.asarray(self.obs_dvid)[present], nan_d),
        }
        if np.any(dur_d > 0):
            cols["DUR"] = cat(np.zeros(n_o), dur_d)
        has_lloq = bool(np.any(np.isfinite(lloq_o)))
        if has_lloq or np.any(blq_o):
            cols["BLQ"] = cat(blq_o, np.zeros(n_d))
        if has_lloq:
            cols["LLOQ"] = cat(lloq_o, nan_d)
        cov = np.asarray(self.covariates, float)
        for j, name in enumerate(self.covariate_names):
            cols[name] = cov[subj, j]
        series = [pl.Series("ID", [self.ids[s] for s in subj[order]], dtype=pl.String)]
        for name, x in cols.items():
            x = x[order]
            s = pl.Series(name, x, dtype=pl.Float64)
            series.append(s.set(pl.Series(np.isnan(x)), None) if np.isnan(x).any() else s)
        return read_nonmem(pl.DataFrame(series))
