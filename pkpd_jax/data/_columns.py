"""Column conventions, the validation error, and reading raw tables (CSV or frame) for the NONMEM reader.

Private to `pkpd_jax.data`: the public API is in `pkpd_jax.data.nonmem`.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from ..errors import PkpdError


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


