"""The row-by-row validator of NONMEM-style tables: raw columns -> the clean canonical frame.

Private to `pkpd_jax.data`; every problem raises `DataValidationError` naming row, column and value.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from ._columns import (
    _BINARY_COVARIATES,
    _INTERNAL_PREFIX,
    _POSITIVE_COVARIATES,
    _RESERVED,
    _SUPPORTED_DVID,
    _UNSUPPORTED,
    REQUIRED_COLUMNS,
    DataValidationError,
    _check_finite_nonneg,
    _fail,
    _first,
    _float_column,
    _fmt,
    _id_column,
)


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
