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

import csv
import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from ..errors import PkpdError


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

REQUIRED_COLUMNS = ("ID", "TIME", "AMT", "DV", "EVID")
CANONICAL_COLUMNS = ("ID", "TIME", "AMT", "DV", "EVID", "MDV", "CMT", "DVID")
_OPTIONAL_COLUMNS = ("RATE", "DUR", "BLQ", "LLOQ")
_RESERVED = set(CANONICAL_COLUMNS) | set(_OPTIONAL_COLUMNS)
_UNSUPPORTED = {
    "ADDL": "additional doses (ADDL)",
    "II": "inter-dose intervals (II)",
    "SS": "steady-state doses (SS)",
}
_NULL_TOKENS = {"", ".", "NA", "NULL"}
_SUPPORTED_DVID = {1: "drug concentration, mg/L", 2: "PD response"}
_POSITIVE_COVARIATES = {"BW": "body weight (kg)", "WT": "body weight (kg)"}
_BINARY_COVARIATES = {"COMED": "co-medication flag"}
_INTERNAL_PREFIX = "_"


class DataValidationError(PkpdError, ValueError):
    """A data table that cannot be used; says where (row, column), what and how to fix it.

    **Attributes:**

    - `row`: 1-based data row number (header excluded), or `None` for whole-table problems.
    - `column`: the (upper-case) column name, or `None`.
    - `value`: the offending value (text, number, or `None` for a missing value).
    """

    def __init__(self, message: str, *, row: int | None = None, column: str | None = None,
                 value: Any = None):
        super().__init__(message)
        self.row = row
        self.column = column
        self.value = value


# ---------------------------------------------------------------------------- error helpers
def _fmt(value: Any) -> str:
    if value is None:
        return "missing"
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, (float, np.floating)):
        v = float(value)
        if math.isfinite(v) and v == int(v) and abs(v) < 2**53:
            return str(int(v))
        return repr(v)
    return str(value)


def _fail(row: int | None, column: str | None, value: Any, problem: str, fix: str,
          *, missing: bool = False):
    """Raise ``row R, column C: value V <problem>; <fix>``."""
    where = ", ".join(
        p for p in (f"row {row}" if row is not None else "",
                    f"column {column}" if column is not None else "") if p
    )
    what = "value is missing" if missing else f"value {_fmt(value)}"
    what = f"{what} {problem}" if problem else what
    msg = f"{where}: {what}; {fix}" if where else f"{what}; {fix}"
    raise DataValidationError(msg, row=row, column=column, value=None if missing else value)


def _first(mask: np.ndarray) -> int | None:
    idx = np.flatnonzero(mask)
    return int(idx[0]) if idx.size else None


# ---------------------------------------------------------------------------- raw reading
def _normalise_names(names: list[str], origin: str) -> list[str]:
    """Upper-case, strip, and check the column names are non-empty and unique."""
    out: list[str] = []
    seen: dict[str, str] = {}
    for k, name in enumerate(names):
        norm = str(name).strip().upper()
        if not norm:
            raise DataValidationError(
                f"column {k + 1} in the header of {origin} has an empty name; every column needs "
                "a name (ID, TIME, AMT, DV, EVID, ... or a covariate name): name it or delete it",
                value=str(name),
            )
        if norm in seen:
            raise DataValidationError(
                f"column {norm}: the header of {origin} has two columns named {seen[norm]!r} and "
                f"{name!r}, which are the same after upper-casing (names are case-insensitive); "
                "rename or remove one of them",
                column=norm, value=str(name),
            )
        seen[norm] = str(name)
        out.append(norm)
    return out


def _read_csv(path: Path) -> tuple[pl.DataFrame, np.ndarray]:
    """Read a CSV file as text columns; returns the frame and the 1-based row numbers."""
    if not path.exists():
        raise FileNotFoundError(f"data file {str(path)!r} does not exist.")
    data = path.read_bytes()
    origin = f"file {str(path)!r}"
    if not data.strip():
        size = "0 bytes" if not data else f"{len(data)} bytes of whitespace"
        raise DataValidationError(
            f"{origin} is empty ({size}); expected a CSV table with a header line "
            "(ID,TIME,AMT,DV,EVID,...) and one row per dose or observation"
        )
    if b"\x00" in data:
        pos = data.index(b"\x00")
        raise DataValidationError(
            f"{origin} is not a text CSV file (it contains a NUL byte at position {pos}); "
            "export the data as comma-separated text"
        )
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataValidationError(
            f"{origin} is not a UTF-8 text CSV file (undecodable byte at position {e.start}); "
            "export the data as comma-separated UTF-8 text"
        ) from None

    reader = csv.reader(io.StringIO(text, newline=""))
    header: list[str] | None = None
    header_line = 0
    records: list[list[str]] = []
    rows: list[int] = []
    try:
        for rec in reader:
            if not rec or all(not f.strip() for f in rec):
                continue  # blank line
            if header is None:
                header, header_line = rec, reader.line_num
                continue
            records.append(rec)
            rows.append(reader.line_num - header_line)
    except csv.Error as e:
        row = reader.line_num - header_line if header is not None else None
        raise DataValidationError(
            f"{origin}{f', row {row}' if row else ''}: cannot be parsed as CSV ({e}); "
            "check quoting on that line", row=row,
        ) from None
    assert header is not None
    if header and header[0].lstrip().startswith("#"):  # NONMEM-style commented header
        header[0] = header[0].lstrip()[1:]
    # Tolerate a trailing delimiter on every line (an empty-named, empty column at the end).
    while len(header) > 1 and not header[-1].strip() and all(
        len(r) < len(header) or not r[len(header) - 1].strip() for r in records
    ):
        header = header[:-1]
        records = [r[: len(header)] if len(r) == len(header) + 1 else r for r in records]
    names = _normalise_names(header, origin)
    for rec, row in zip(records, rows):
        if len(rec) != len(names):
            raise DataValidationError(
                f"row {row}: has {len(rec)} fields but the header has {len(names)} columns "
                f"({', '.join(names)}); every row needs one value per column (write '.' for a "
                "missing value)",
                row=row, value=len(rec),
            )
    cols = {n: [rec[k].strip() for rec in records] for k, n in enumerate(names)}
    frame = pl.DataFrame(cols, schema={n: pl.String for n in names})
    return frame, np.asarray(rows, dtype=np.int64)


def _from_frame(df: pl.DataFrame) -> tuple[pl.DataFrame, np.ndarray]:
    names = _normalise_names(list(df.columns), "the DataFrame")
    df = df.rename(dict(zip(df.columns, names)))
    if "_ROW" in df.columns and df["_ROW"].dtype.is_integer() and df["_ROW"].null_count() == 0:
        rows = df["_ROW"].to_numpy().astype(np.int64)
    else:
        rows = np.arange(1, df.height + 1, dtype=np.int64)
    return df, rows


def _id_column(s: pl.Series, rows: np.ndarray) -> pl.Series:
    if s.dtype == pl.String or s.dtype == pl.Null:
        out = s.cast(pl.String).str.strip_chars()
        out = out.set(out.str.to_uppercase().is_in(list(_NULL_TOKENS)), None)
    elif s.dtype.is_integer():
        out = s.cast(pl.String)
    elif s.dtype.is_float():
        out = pl.Series("ID", [None if v is None or not math.isfinite(v) else _fmt(float(v))
                               for v in s.to_list()], dtype=pl.String)
    else:
        raise DataValidationError(
            f"column ID: has type {s.dtype}; expected subject identifiers as text or numbers",
            column="ID",
        )
    i = _first(out.is_null().to_numpy())
    if i is not None:
        _fail(int(rows[i]), "ID", None, "",
              "every row needs a subject identifier (ID)", missing=True)
    return out.alias("ID")


def _float_column(name: str, s: pl.Series, rows: np.ndarray) -> pl.Series:
    """Cast one column to Float64, reporting the first value that is not a number."""
    if s.dtype == pl.String:
        txt = s.str.strip_chars()
        txt = txt.set(txt.str.to_uppercase().is_in(list(_NULL_TOKENS)), None)
        out = txt.cast(pl.Float64, strict=False)
        i = _first((out.is_null() & txt.is_not_null()).to_numpy())
        if i is not None:
            _fail(int(rows[i]), name, txt[i], "is not a number",
                  f"column {name} must hold plain numbers such as 1.5 (write '.' or leave "
                  "the field empty for a missing value)")
        return out.alias(name)
    if s.dtype.is_numeric() or s.dtype in (pl.Boolean, pl.Null):
        return s.cast(pl.Float64).alias(name)
    raise DataValidationError(
        f"column {name}: has type {s.dtype}; expected numbers (Float64 or integers)",
        column=name,
    )


# ---------------------------------------------------------------------------- validation
def _check_finite_nonneg(name, x, null, rows, check_rows, what, fix):
    bad_inf = check_rows & ~null & ~np.isfinite(x) & ~np.isnan(x)
    i = _first(bad_inf)
    if i is not None:
        _fail(int(rows[i]), name, float(x[i]), "is not a finite number", fix)
    i = _first(check_rows & ~null & (x < 0))
    if i is not None:
        _fail(int(rows[i]), name, float(x[i]), f"is negative; {what} must be >= 0", fix)


def _clean(raw: pl.DataFrame, rows: np.ndarray) -> pl.DataFrame:
    raw = raw.select([c for c in raw.columns if not c.startswith(_INTERNAL_PREFIX)])
    if raw.height == 0:
        raise DataValidationError(
            f"the table has a header ({', '.join(raw.columns) or 'no columns'}) but no data "
            "rows; add one row per dose and observation"
        )
    for col, what in _UNSUPPORTED.items():
        if col in raw.columns:
            raise DataValidationError(
                f"column {col}: {what} are not supported; expand them into one dose row per dose "
                f"(EVID 1) and remove column {col}",
                column=col,
            )
    missing = [c for c in REQUIRED_COLUMNS if c not in raw.columns]
    if missing:
        hint = ""
        if len(raw.columns) == 1 and any(ch in raw.columns[0] for ch in ";\t |"):
            hint = " (the header was read as a single column: the file must be comma-separated)"
        raise DataValidationError(
            f"column {missing[0]}: required column{'s' if len(missing) > 1 else ''} "
            f"{', '.join(missing)} {'are' if len(missing) > 1 else 'is'} missing; found columns "
            f"{', '.join(raw.columns)}{hint}; the table needs ID, TIME, AMT, DV and EVID",
            column=missing[0],
        )

    ids = _id_column(raw["ID"], rows)
    num = {c: _float_column(c, raw[c], rows) for c in raw.columns if c != "ID"}
    arr = {c: s.to_numpy().astype(float) for c, s in num.items()}
    null = {c: (s.is_null().to_numpy() | np.isnan(arr[c])) for c, s in num.items()}
    n = raw.height
    everywhere = np.ones(n, dtype=bool)

    # TIME
    t = arr["TIME"]
    i = _first(num["TIME"].is_null().to_numpy())
    if i is not None:
        _fail(int(rows[i]), "TIME", None, "", "every row needs a time in hours", missing=True)
    i = _first(~np.isfinite(t))
    if i is not None:
        _fail(int(rows[i]), "TIME", float(t[i]), "is not a finite number",
              "times must be finite numbers of hours since the first dose")
    i = _first(t < 0)
    if i is not None:
        _fail(int(rows[i]), "TIME", float(t[i]), "is negative",
              "times must be >= 0 (hours since first dose)")

    # EVID
    evid = arr["EVID"]
    i = _first(null["EVID"])
    if i is not None:
        _fail(int(rows[i]), "EVID", None, "",
              "every row needs EVID 0 (observation) or 1 (dose)", missing=True)
    i = _first(~np.isin(evid, (0.0, 1.0)))
    if i is not None:
        _fail(int(rows[i]), "EVID", float(evid[i]), "is not a supported event type",
              "use EVID 0 (observation) or 1 (dose); EVID 2 (other event), 3 (reset) and "
              "4 (reset and dose) are not supported: remove those rows or rewrite them as plain "
              "doses and observations")
    is_dose = evid == 1.0
    is_obs = ~is_dose

    # MDV
    if "MDV" in arr:
        mdv_raw = arr["MDV"]
        i = _first(~null["MDV"] & ~np.isin(mdv_raw, (0.0, 1.0)))
        if i is not None:
            _fail(int(rows[i]), "MDV", float(mdv_raw[i]), "is not 0 or 1",
                  "MDV must be 1 (dose or ignored observation) or 0 (fitted observation)")
        i = _first(~null["MDV"] & is_dose & (mdv_raw == 0.0))
        if i is not None:
            _fail(int(rows[i]), "MDV", 0.0, "is on a dose row (EVID 1)",
                  "dose rows must have MDV 1 (or leave MDV empty); if this row is an "
                  "observation, set EVID 0")
        mdv = np.where(null["MDV"], is_dose.astype(float), mdv_raw)
    else:
        mdv = is_dose.astype(float)
    fitted = is_obs & (mdv == 0.0)

    # AMT
    amt = arr["AMT"]
    i = _first(is_dose & num["AMT"].is_null().to_numpy())
    if i is not None:
        _fail(int(rows[i]), "AMT", None, "on a dose row (EVID 1)",
              "give the dose amount in mg (AMT > 0)", missing=True)
    i = _first(is_dose & ~np.isfinite(amt))
    if i is not None:
        _fail(int(rows[i]), "AMT", float(amt[i]), "is not a finite number on a dose row (EVID 1)",
              "give the dose amount in mg (AMT > 0)")
    i = _first(is_dose & (amt <= 0))
    if i is not None:
        _fail(int(rows[i]), "AMT", float(amt[i]), "is not a positive dose amount",
              "dose rows (EVID 1) need AMT > 0 mg; if this row is an observation, set EVID 0")
    i = _first(is_obs & ~null["AMT"] & (amt != 0))
    if i is not None:
        _fail(int(rows[i]), "AMT", float(amt[i]), "is on an observation row (EVID 0)",
              "observation rows must have AMT 0 or empty; if this row is a dose, set EVID 1")
    amt = np.where(is_dose, amt, 0.0)

    # DV
    dv = arr["DV"]
    i = _first(fitted & num["DV"].is_null().to_numpy())
    if i is not None:
        _fail(int(rows[i]), "DV", None, "on an observation row (EVID 0, MDV 0)",
              "give the measured value (for a BLQ sample use the LLOQ or 0 and set BLQ 1), or "
              "set MDV 1 to exclude this observation", missing=True)
    i = _first(fitted & ~np.isfinite(dv))
    if i is not None:
        _fail(int(rows[i]), "DV", float(dv[i]), "is not a finite number on an observation row",
              "give the measured value, or set MDV 1 to exclude this observation")
    i = _first(is_obs & ~null["DV"] & ~np.isfinite(dv))
    if i is not None:
        _fail(int(rows[i]), "DV", float(dv[i]), "is not a finite number",
              "give a finite value, or leave DV empty ('.') on ignored observations")

    # DVID
    if "DVID" in arr:
        dvid = arr["DVID"]
        i = _first(is_obs & null["DVID"])
        if i is not None:
            _fail(int(rows[i]), "DVID", None, "on an observation row (EVID 0)",
                  "give DVID 1 (drug concentration) or 2 (PD response)", missing=True)
        i = _first(is_obs & ~np.isfinite(dvid) | is_obs & (dvid != np.round(dvid)))
        if i is not None:
            _fail(int(rows[i]), "DVID", float(dvid[i]), "is not a whole number",
                  "DVID must be 1 (drug concentration) or 2 (PD response)")
        i = _first(is_obs & ~np.isin(dvid, list(_SUPPORTED_DVID)))
        if i is not None:
            _fail(int(rows[i]), "DVID", float(dvid[i]), "is not a supported observation type",
                  "DVID must be 1 (drug concentration, mg/L) or 2 (PD response); remove or "
                  "recode other outputs")
        dvid = np.where(is_obs, dvid, np.nan)
    else:
        dvid = np.where(is_obs, 1.0, np.nan)

    # CMT
    if "CMT" in arr:
        cmt = arr["CMT"]
        bad = ~null["CMT"] & (~np.isfinite(cmt) | (cmt < 0) | (cmt != np.round(cmt)))
        i = _first(bad)
        if i is not None:
            _fail(int(rows[i]), "CMT", float(cmt[i]), "is not a valid compartment number",
                  "CMT must be a whole number >= 1 (1-based, as in NONMEM), or 0/empty for the "
                  "model's default dose compartment")
        cmt = np.where(null["CMT"], 0.0, cmt)
    else:
        cmt = np.zeros(n)

    # RATE / DUR
    dur = np.zeros(n)
    for name, what in (("RATE", "infusion rates (mg/h)"), ("DUR", "infusion durations (h)")):
        if name not in arr:
            continue
        x = arr[name]
        i = _first(~null[name] & ~np.isfinite(x))
        if i is not None:
            _fail(int(rows[i]), name, float(x[i]), "is not a finite number",
                  f"{what} must be finite numbers >= 0 (0 or empty for a bolus)")
        i = _first(~null[name] & (x < 0))
        if i is not None:
            extra = (" (NONMEM's -1/-2 for modelled rates or durations are not supported)"
                     if name == "RATE" and x[i] in (-1.0, -2.0) else "")
            _fail(int(rows[i]), name, float(x[i]), f"is negative{extra}",
                  f"{what} must be >= 0 (0 or empty for a bolus); give the rate in RATE (mg/h) "
                  "or the duration in DUR (h)")
    rate = np.where(null["RATE"], 0.0, arr["RATE"]) if "RATE" in arr else np.zeros(n)
    dur_in = np.where(null["DUR"], 0.0, arr["DUR"]) if "DUR" in arr else np.zeros(n)
    both = is_dose & (rate > 0) & (dur_in > 0)
    if both.any():
        implied = np.where(both, amt / np.where(rate > 0, rate, 1.0), 0.0)
        bad = both & ~np.isclose(dur_in, implied, rtol=1e-6, atol=1e-9)
        i = _first(bad)
        if i is not None:
            _fail(int(rows[i]), "DUR", float(dur_in[i]),
                  f"does not match AMT/RATE = {_fmt(amt[i])}/{_fmt(rate[i])} = "
                  f"{_fmt(implied[i])} h",
                  "give only one of RATE and DUR on a dose row, or make them consistent")
    dur = np.where(is_dose & (dur_in > 0), dur_in,
                   np.where(is_dose & (rate > 0), amt / np.where(rate > 0, rate, 1.0), 0.0))

    # BLQ / LLOQ
    has_blq = "BLQ" in arr or "LLOQ" in arr
    blq = np.zeros(n)
    lloq = None
    if "BLQ" in arr:
        b = arr["BLQ"]
        i = _first(~null["BLQ"] & ~np.isin(b, (0.0, 1.0)))
        if i is not None:
            _fail(int(rows[i]), "BLQ", float(b[i]), "is not 0 or 1",
                  "BLQ must be 1 (below the limit of quantification) or 0 (or empty)")
        blq = np.where(null["BLQ"], 0.0, b)
    if "LLOQ" in arr:
        lloq = arr["LLOQ"]
        _check_finite_nonneg("LLOQ", lloq, null["LLOQ"], rows, everywhere, "limits of "
                             "quantification", "give the LLOQ in the units of DV, or leave it "
                             "empty when unknown")
        below = ~null["LLOQ"] & ~null["DV"] & (dv < np.where(null["LLOQ"], -np.inf, lloq))
        blq = np.where(below, 1.0, blq)
    blq = np.where(is_obs, blq, 0.0)

    # covariates
    covariates = [c for c in num if c not in _RESERVED]
    for c in covariates:
        x = arr[c]
        i = _first(null[c])
        if i is not None:
            _fail(int(rows[i]), c, None, f"in covariate column {c}",
                  "every row needs a covariate value (repeat the subject's last known value, "
                  "or drop the column)", missing=True)
        i = _first(~np.isfinite(x))
        if i is not None:
            _fail(int(rows[i]), c, float(x[i]), "is not a finite number",
                  f"covariate {c} must be a finite number on every row")
        if c in _BINARY_COVARIATES:
            i = _first(~np.isin(x, (0.0, 1.0)))
            if i is not None:
                _fail(int(rows[i]), c, float(x[i]), "is not 0 or 1",
                      f"{c} is a {_BINARY_COVARIATES[c]} and must be 0 (no) or 1 (yes)")
        if c in _POSITIVE_COVARIATES:
            i = _first(x <= 0)
            if i is not None:
                _fail(int(rows[i]), c, float(x[i]), "is not positive",
                      f"{c} is a {_POSITIVE_COVARIATES[c]} and must be > 0")

    # subjects: contiguous blocks, time order
    id_list = ids.to_list()
    subj = np.empty(n, dtype=np.int64)
    index: dict[str, int] = {}
    last_row: dict[str, int] = {}
    for k, sid in enumerate(id_list):
        if sid not in index:
            index[sid] = len(index)
        elif id_list[k - 1] != sid:
            _fail(int(rows[k]), "ID", sid,
                  f"appears again after rows of other subjects (its earlier rows end at row "
                  f"{last_row[sid]})",
                  "keep all rows of a subject together (sort by ID, keeping time order)")
        subj[k] = index[sid]
        last_row[sid] = int(rows[k])
    same = np.zeros(n, dtype=bool)
    same[1:] = subj[1:] == subj[:-1]
    back = np.zeros(n, dtype=bool)
    back[1:] = same[1:] & (t[1:] < t[:-1])
    i = _first(back)
    if i is not None:
        _fail(int(rows[i]), "TIME", float(t[i]),
              f"is earlier than the previous row of subject {id_list[i]!r} (row {int(rows[i - 1])}"
              f", TIME {_fmt(t[i - 1])})",
              "sort each subject's rows by TIME (keep file order for equal times)")

    # duplicate rows (identical values in every column)
    cast = pl.DataFrame([ids] + list(num.values())).with_columns(
        pl.Series("_R", rows, dtype=pl.Int64))
    dups = (cast.group_by([c for c in cast.columns if c != "_R"], maintain_order=True)
            .agg(pl.col("_R")).filter(pl.col("_R").list.len() > 1))
    if dups.height:
        r = sorted(dups["_R"][0].to_list())
        raise DataValidationError(
            f"row {r[1]}: is a duplicate of row {r[0]} (identical values in every column); "
            "remove the repeated row (two doses at the same time should be one row with the "
            "total AMT)",
            row=r[1], value=r[0],
        )

    # every subject needs observations; subjects without doses are placebo subjects (allowed:
    # they inform the baseline of the biomarker)
    n_subj = len(index)
    n_obs = np.bincount(subj, weights=is_obs, minlength=n_subj)
    first_row = {s: int(rows[k]) for k, s in reversed(list(enumerate(subj.tolist())))}
    for counts, kind, fix in (
        (n_obs, "observation rows (EVID 0)",
         "add its observations, or remove the subject"),
    ):
        s = _first(counts == 0)
        if s is not None:
            sid = list(index)[s]
            lo, hi = first_row[s], last_row[sid]
            span = f"row {lo}" if lo == hi else f"rows {lo}-{hi}"
            _fail(lo, "ID", sid, f"is a subject with no {kind} ({span})", fix)

    # assemble the clean frame
    cols: dict[str, pl.Series] = {"ID": ids}

    def f64(name, x, nulls=None):
        s = pl.Series(name, x, dtype=pl.Float64)
        mask = np.isnan(x) if nulls is None else nulls
        return s.set(pl.Series(mask), None) if mask.any() else s

    cols["TIME"] = f64("TIME", t)
    cols["AMT"] = f64("AMT", amt)
    cols["DV"] = f64("DV", np.where(is_obs, dv, np.nan))
    cols["EVID"] = f64("EVID", evid)
    cols["MDV"] = f64("MDV", mdv)
    cols["CMT"] = f64("CMT", cmt)
    cols["DVID"] = f64("DVID", dvid)
    if "RATE" in arr or "DUR" in arr:
        cols["DUR"] = f64("DUR", dur)
    if has_blq:
        cols["BLQ"] = f64("BLQ", blq)
    if lloq is not None:
        cols["LLOQ"] = f64("LLOQ", lloq)
    for c in covariates:
        cols[c] = f64(c, arr[c])
    cols["_SUBJ"] = pl.Series("_SUBJ", subj, dtype=pl.Int64)
    cols["_ROW"] = pl.Series("_ROW", rows, dtype=pl.Int64)
    return pl.DataFrame(list(cols.values()))


# ---------------------------------------------------------------------------- public API
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
