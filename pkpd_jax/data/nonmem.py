"""Reading, validating and writing NONMEM-style event tables with polars.

The input is a long table (CSV or `polars.DataFrame`), one row per event:

| column | meaning | required |
|---|---|---|
| `ID` | subject identifier (any text or number) | yes |
| `TIME` | hours since the start of the study (>= 0, non-decreasing within a subject) | yes |
| `AMT` | dose amount in mg (> 0 on dose rows; 0 or empty on observations) | yes |
| `DV` | observed value (mg/L for DVID 1, biomarker units for DVID 2) | yes |
| `EVID` | 1 = dose, 0 = observation | yes |
| `MDV` | 1 = dose or ignored observation, 0 = fitted observation | no (derived from EVID) |
| `CMT` | 1-based dose compartment; 0 or empty = the model's default | no |
| `DVID` | 1 = drug concentration, 2 = PD response | no (default 1) |
| `RATE` / `DUR` | infusion rate (mg/h) / duration (h); > 0 makes a dose an infusion | no |
| `BLQ` / `LLOQ` | below-quantification flag (0/1) / lower limit of quantification | no |

Any other column is a numeric covariate (e.g. `BW` body weight in kg, `COMED` 0/1). Column names
are case-insensitive and become upper case. Missing values are written as ``.`` (NONMEM style) or
left empty. Rows keep their file order; each subject's rows must be together and in time order.
An observation and a dose at the same time is a pre-dose sample.

[`read_nonmem`][] returns a *clean* frame: the columns above in canonical order (``ID, TIME, AMT,
DV, EVID, MDV, CMT, DVID, [DUR], [BLQ], [LLOQ], covariates...``) as Float64 (ID as text), defaults
filled in, ``RATE`` converted to ``DUR`` (hours), plus the internal columns ``_SUBJ`` (0-based
subject index in order of first appearance) and ``_ROW`` (1-based data row of the source). Every
problem raises a [`DataValidationError`][] naming the row, the column, the value, why it is wrong
and how to fix it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from ._clean import _clean
from ._columns import (
    _INTERNAL_PREFIX,
    _RESERVED,
    CANONICAL_COLUMNS,
    REQUIRED_COLUMNS,
    DataValidationError,
    _fmt,
    _from_frame,
    _read_csv,
)


__all__ = [
    "DataValidationError",
    "DataSummary",
    "read_nonmem",
    "validate",
    "write_nonmem",
    "summarize",
    "REQUIRED_COLUMNS",
    "CANONICAL_COLUMNS",
]


def read_nonmem(source: str | Path | pl.DataFrame) -> pl.DataFrame:
    """Read and validate a NONMEM-style event table.

    **Arguments:**

    - `source`: path to a CSV file (comma-separated, header line first, ``.`` or empty for
      missing values), or a `polars.DataFrame` with the same columns.

    **Returns:**

    A clean `polars.DataFrame` in canonical column order with Float64 values, text ``ID``,
    defaults filled in (``MDV``, ``CMT``, ``DVID``), ``RATE`` converted to ``DUR`` (h), a ``BLQ``
    flag when ``BLQ`` or ``LLOQ`` was given (1 when flagged or ``DV < LLOQ``), ``DV``/``DVID``
    empty on dose rows, ``AMT`` 0 on observation rows, and the internal columns ``_SUBJ``
    (0-based subject index, order of first appearance) and ``_ROW`` (1-based source row).

    **Raises:**

    [`DataValidationError`][] on the first problem found (with `.row`, `.column`, `.value`);
    `FileNotFoundError` if the path does not exist.
    """
    if isinstance(source, pl.DataFrame):
        raw, rows = _from_frame(source)
    elif isinstance(source, (str, Path)):
        raw, rows = _read_csv(Path(source))
    else:
        raise TypeError(
            f"`read_nonmem` expects a path or a polars.DataFrame; got {type(source).__name__}."
        )
    return _clean(raw, rows)


@dataclass(frozen=True)
class DataSummary:
    """Counts describing a validated data set (see [`validate`][])."""

    n_subjects: int
    n_doses: int
    n_obs_by_dvid: dict[int, int]
    n_blq: int
    covariates: list[str]
    time_range: tuple[float, float]
    n_ignored: int = 0

    @property
    def n_obs(self) -> int:
        """Number of fitted observations (MDV 0), all DVIDs."""
        return sum(self.n_obs_by_dvid.values())

    def __str__(self) -> str:
        def plural(k, word):
            return f"{k} {word}{'' if k == 1 else 's'}"

        by = ", ".join(f"DVID {k}: {v}" for k, v in sorted(self.n_obs_by_dvid.items()))
        parts = [
            plural(self.n_subjects, "subject"),
            plural(self.n_doses, "dose"),
            plural(self.n_obs, "observation") + (f" ({by})" if by else ""),
            f"{self.n_blq} BLQ",
        ]
        if self.n_ignored:
            parts.append(f"{self.n_ignored} ignored (MDV 1)")
        parts.append("covariates: " + (", ".join(self.covariates) or "none"))
        lo, hi = self.time_range
        parts.append(f"time {_fmt(lo)}-{_fmt(hi)} h")
        return ", ".join(parts)


def covariate_columns(df: pl.DataFrame) -> list[str]:
    """Names of the covariate columns of a clean frame (everything not reserved or internal)."""
    return [c for c in df.columns
            if c != "ID" and c not in _RESERVED and not c.startswith(_INTERNAL_PREFIX)]


def summarize(df: pl.DataFrame) -> DataSummary:
    """Summary counts of a clean frame from [`read_nonmem`][]."""
    evid = df["EVID"].to_numpy()
    mdv = df["MDV"].to_numpy()
    fitted = (evid == 0) & (mdv == 0)
    dvid = df["DVID"].to_numpy()
    by = {int(k): int(np.sum(fitted & (dvid == k))) for k in np.unique(dvid[fitted])}
    blq = df["BLQ"].to_numpy() if "BLQ" in df.columns else np.zeros(df.height)
    t = df["TIME"].to_numpy()
    return DataSummary(
        n_subjects=int(df["_SUBJ"].max()) + 1,
        n_doses=int(np.sum(evid == 1)),
        n_obs_by_dvid=by,
        n_blq=int(np.sum(fitted & (blq == 1))),
        covariates=covariate_columns(df),
        time_range=(float(t.min()), float(t.max())),
        n_ignored=int(np.sum((evid == 0) & (mdv == 1))),
    )


def validate(source: str | Path | pl.DataFrame) -> DataSummary:
    """Validate a data table (as [`read_nonmem`][]) and return its [`DataSummary`][].

    **Arguments:**

    - `source`: a CSV path or a `polars.DataFrame`.

    **Returns:**

    A [`DataSummary`][]; ``str()`` of it is a one-line description, e.g.
    ``48 subjects, 336 doses, 1201 observations (DVID 1: 600, DVID 2: 601), 12 BLQ, covariates:
    BW, COMED, time 0-168 h``.
    """
    return summarize(read_nonmem(source))


def _tidy_for_csv(df: pl.DataFrame) -> pl.DataFrame:
    out = []
    for c in df.columns:
        s = df[c]
        if s.dtype.is_float():
            x = s.drop_nulls().to_numpy()
            if x.size and np.all(np.isfinite(x)) and np.all(x == np.round(x)) and np.all(
                np.abs(x) < 2**53
            ):
                s = s.cast(pl.Int64)
        out.append(s)
    return pl.DataFrame(out)


def write_nonmem(data, path: str | Path) -> Path:
    """Write a data table as a clean NONMEM-style CSV that [`read_nonmem`][] reads back unchanged.

    **Arguments:**

    - `data`: a `polars.DataFrame` (validated first with [`read_nonmem`][]) or a
      [`Dataset`][pkpd_jax.data.Dataset] (via its ``to_frame()``).
    - `path`: the output file.

    **Returns:**

    The path written. Columns are in canonical order (``ID, TIME, AMT, DV, EVID, MDV, CMT, DVID,
    [DUR], [BLQ], [LLOQ], covariates...``), internal ``_`` columns are dropped, whole-number
    columns are written as integers and missing values as ``.``.
    """
    if isinstance(data, pl.DataFrame):
        frame = read_nonmem(data)
    elif hasattr(data, "to_frame"):
        frame = data.to_frame()
    else:
        raise TypeError(
            f"`write_nonmem` expects a polars.DataFrame or a Dataset; got {type(data).__name__}."
        )
    frame = frame.select([c for c in frame.columns if not c.startswith(_INTERNAL_PREFIX)])
    path = Path(path)
    _tidy_for_csv(frame).write_csv(path, null_value=".", float_precision=None)
    return path
