"""Classic public PK data sets, shipped as they come and converted to NONMEM-style tables.

Two data sets every pharmacometrics tool is tried on, shipped as small CSVs in
``pkpd_jax/data/public/`` with R's columns and values unchanged (provenance and citations in
``pkpd_jax/data/public/README.md``; ``experiments/public_datasets.py`` regenerates them):

- ``"theoph"``: R's ``datasets::Theoph``; 12 subjects, one oral dose of theophylline, 11
  concentrations each over 25 h (Boeckmann, Sheiner & Beal 1994, NONMEM Users Guide Part V).
- ``"phenobarb"``: R's ``nlme::Phenobarb``; 59 neonates, repeated IV doses of phenobarbital
  over up to 16 days, 1-6 (mostly 2-3) concentrations each (Grasela & Donn 1985).

[`load_public`][] converts one to the project's NONMEM-style table (validated with
[`read_nonmem`][pkpd_jax.data.read_nonmem]) and says what it did in ``notes``; a
[`PublicDataWarning`][] is raised where data are left out of the fit.
[`public_dataset`][] returns the table (and writes it as CSV with ``out=``).

**Theoph** (``theoph(predose=...)``). ``Dose`` is recorded in mg/kg; the dose row's ``AMT`` is
``Dose × Wt`` in mg (rounded to 4 decimals; 319.99 mg for subject 1 = 4.02 mg/kg × 79.6 kg;
about 320 mg for every subject but subject 9, 267.84 mg), given orally at ``TIME`` 0 into the
model's default (gut) compartment. ``conc`` is mg/L (``DV``); ``Wt`` becomes the covariate
``BW`` (kg). Every subject's first sample is at ``TIME`` 0, the dose time: it is a pre-dose
sample (written before the dose row; the project's convention at equal times). Three of them are
above zero (subject 1: 0.74 mg/L, subject 7: 0.15 mg/L, subject 10: 0.24 mg/L): a single-dose
study should have no drug before the dose, and no PK model here has a baseline, so these values
are assay noise, carry-over or a timing error as far as the model can tell. The default ``predose="ignore"``
keeps every pre-dose row in the table but sets ``MDV 1`` on it (not fitted; the zero ones carry
no information either, the model predicts exactly 0 there) and raises a
[`PublicDataWarning`][] naming the positive ones; ``"keep"`` leaves them ``MDV 0`` (the
population model then leaves them out itself, with its own warning), ``"drop"`` removes the
rows.

**Phenobarb** (``phenobarb(dose_basis=...)``). Rows with a ``dose`` become IV bolus dose rows,
rows with a ``conc`` observations (no row has both). ``Wt`` (birth weight, kg) becomes ``BW``,
``Apgar`` (5-minute score, 1-10) ``APGAR``, and ``ApgarInd`` the 0/1 flag ``APGAR_LOW``
(1 for ``"< 5"``). *Units.* R's documentation labels ``dose`` µg/kg and ``conc`` µg/L, but the
values are a total dose in mg and a concentration in mg/L (µg/mL): the first dose divided by the
birth weight is exactly 10 or 20 for most infants (the 10-20 mg/kg phenobarbital loading dose),
serum levels of 7-68 are the therapeutic range in mg/L, and the published estimates (CL 0.0047
L/h/kg, V 0.96 L/kg; NONMEM's ``pheno`` example, which uses the amounts as they are) follow only
from this reading; taking ``dose`` per kg would give volumes of about 1.3 L/kg. The default
``dose_basis="amount"`` therefore uses ``AMT = dose`` (mg) and ``DV = conc`` (mg/L);
``dose_basis="per_kg"`` applies R's labels literally (``AMT = dose × Wt / 1000`` mg,
``DV = conc / 1000`` mg/L) for comparison.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np
import polars as pl

from .dataset import Dataset
from .nonmem import read_nonmem, write_nonmem


__all__ = [
    "PUBLIC_DATASETS",
    "LITERATURE",
    "PublicData",
    "PublicDataWarning",
    "load_public",
    "public_dataset",
    "raw_path",
    "load_raw",
    "theoph",
    "phenobarb",
]


class PublicDataWarning(UserWarning):
    """A public data set had rows that are kept in the table but not fitted (or removed)."""


#: name -> (raw CSV file, R source, one-line description, suggested PK model)
PUBLIC_DATASETS: dict[str, dict] = {
    "theoph": {
        "file": "theoph.csv",
        "source": "R datasets::Theoph",
        "description": "theophylline, 12 subjects, one oral dose (mg/kg), 11 samples each over 25 h",
        "pk": "pk_1c_oral",
        "citation": "Boeckmann, Sheiner & Beal (1994), NONMEM Users Guide Part V, UCSF",
    },
    "phenobarb": {
        "file": "phenobarb.csv",
        "source": "R nlme::Phenobarb",
        "description": "phenobarbital in 59 neonates, repeated IV doses, 1-6 samples each",
        "pk": "pk_1c_iv",
        "citation": "Grasela & Donn (1985), Dev Pharmacol Ther 8:374-383",
    },
}

#: Published population estimates, for comparison (typical values; per kg where the source is).
#: Theoph: nlme fit of Pinheiro & Bates (2000, section 6.4; ``fm2Theo.nlme``): lKe -2.433,
#: lKa 0.451, lCl -3.215 with Dose in mg/kg, i.e. CL/F in L/h per kg. Phenobarb: Grasela & Donn
#: (1985) and NONMEM's ``pheno`` example (CL and V proportional to weight).
LITERATURE: dict[str, dict[str, float]] = {
    "theoph": {
        "ka": 1.57,  # 1/h
        "ke": 0.0878,  # 1/h
        "CL_per_kg": 0.0402,  # L/h/kg (CL/F)
        "V_per_kg": 0.0402 / 0.0878,  # L/kg (V/F = CL/ke, 0.458)
        "CL_70kg": 0.0402 * 70,  # L/h (2.81)
        "V_70kg": 0.0402 / 0.0878 * 70,  # L (32.0)
    },
    "phenobarb": {
        "CL_per_kg": 0.0047,  # L/h/kg
        "V_per_kg": 0.96,  # L/kg
    },
}


@dataclass(frozen=True)
class PublicData:
    """A converted public data set: the NONMEM-style `frame` (as
    [`read_nonmem`][pkpd_jax.data.read_nonmem] returns it), what was done (`notes`) and the
    `raw` table as shipped."""

    name: str
    frame: pl.DataFrame
    raw: pl.DataFrame
    notes: list[str] = field(default_factory=list)

    def dataset(self) -> Dataset:
        """The padded [`Dataset`][pkpd_jax.data.Dataset]."""
        return Dataset.from_frame(self.frame)


def _check_name(name: str) -> str:
    key = str(name).strip().lower()
    if key not in PUBLIC_DATASETS:
        raise ValueError(
            f"unknown public data set {name!r}; available: {', '.join(PUBLIC_DATASETS)}"
        )
    return key


def raw_path(name: str) -> Path:
    """Path of the shipped raw CSV of public data set `name` (``"theoph"`` or ``"phenobarb"``)."""
    key = _check_name(name)
    return Path(str(resources.files("pkpd_jax.data") / "public" / PUBLIC_DATASETS[key]["file"]))


def load_raw(name: str) -> pl.DataFrame:
    """The shipped raw table, R's columns and values (``NA`` read as missing)."""
    return pl.read_csv(raw_path(name), null_values="NA")


def _frame(rows: dict[str, list], order: list[str]) -> pl.DataFrame:
    df = pl.DataFrame(rows, schema={k: (pl.String if k == "ID" else pl.Float64) for k in rows})
    return df.select(order)


# ---------------------------------------------------------------------------- Theoph
def theoph(*, predose: str = "ignore") -> PublicData:
    """Theoph as a NONMEM-style table (see the module docstring for every conversion).

    `predose`: ``"ignore"`` (default: pre-dose rows kept with ``MDV 1``, a warning for the positive
    ones), ``"keep"`` (``MDV 0``) or ``"drop"`` (rows removed).
    """
    if predose not in ("ignore", "keep", "drop"):
        raise ValueError(f"predose must be 'ignore', 'keep' or 'drop'; got {predose!r}")
    raw = load_raw("theoph")
    notes = []
    cols: dict[str, list] = {k: [] for k in ("ID", "TIME", "AMT", "DV", "EVID", "MDV", "CMT", "DVID", "BW")}

    def add(**kw):
        for k in cols:
            cols[k].append(kw.get(k))

    positive: list[str] = []
    n_pre = 0
    doses = []
    for (subject,), g in raw.group_by(["Subject"], maintain_order=True):
        sid = str(subject)
        wt = float(g["Wt"][0])
        per_kg = float(g["Dose"][0])
        if g["Wt"].n_unique() != 1 or g["Dose"].n_unique() != 1:
            raise ValueError(f"Theoph subject {sid}: Wt or Dose changes within the subject")
        amt = round(per_kg * wt, 4)
        doses.append(amt)
        t = g["Time"].to_numpy()
        c = g["conc"].to_numpy()
        pre = t <= 0.0
        for ti, ci, is_pre in zip(t, c, pre):
            if not is_pre:
                continue
            n_pre += 1
            if ci > 0:
                positive.append(f"subject {sid}: {ci:g} mg/L")
            if predose == "drop":
                continue
            add(ID=sid, TIME=float(ti), AMT=0.0, DV=float(ci), EVID=0.0,
                MDV=1.0 if predose == "ignore" else 0.0, CMT=0.0, DVID=1.0, BW=wt)
        add(ID=sid, TIME=0.0, AMT=amt, DV=None, EVID=1.0, MDV=1.0, CMT=0.0, DVID=None, BW=wt)
        for ti, ci in zip(t[~pre], c[~pre]):
            add(ID=sid, TIME=float(ti), AMT=0.0, DV=float(ci), EVID=0.0, MDV=0.0, CMT=0.0, DVID=1.0,
                BW=wt)
    notes.append(
        "Dose is recorded in mg/kg: AMT = Dose x Wt in mg (oral, TIME 0, the model's default "
        f"compartment); {min(doses):g}-{max(doses):g} mg"
    )
    notes.append("conc is DV in mg/L (DVID 1); Wt is the covariate BW in kg")
    what = {"ignore": "kept with MDV 1 (not fitted)", "keep": "kept with MDV 0",
            "drop": "removed"}[predose]
    notes.append(
        f"{n_pre} samples at TIME 0 are pre-dose (taken before the dose at the same time): {what}; "
        f"{len(positive)} of them are > 0 ({'; '.join(positive) or 'none'})"
    )
    if positive and predose != "keep":
        warnings.warn(
            f"Theoph: {len(positive)} pre-dose concentration(s) > 0 at TIME 0 ({'; '.join(positive)}) "
            f"are {what}: no PK model has drug before the first dose (assay noise, carry-over or a "
            "timing error); use predose='keep' to leave them MDV 0",
            PublicDataWarning,
            stacklevel=2,
        )
    order = ["ID", "TIME", "AMT", "DV", "EVID", "MDV", "CMT", "DVID", "BW"]
    return PublicData("theoph", read_nonmem(_frame(cols, order)), raw, notes)


# ---------------------------------------------------------------------------- Phenobarb
def phenobarb(*, dose_basis: str = "amount") -> PublicData:
    """Phenobarb as a NONMEM-style table (see the module docstring for every conversion).

    `dose_basis`: ``"amount"`` (default: ``dose`` is the total dose in mg, ``conc`` mg/L; what
    the published analyses use) or ``"per_kg"`` (R's labels taken literally: µg/kg and µg/L).
    """
    if dose_basis not in ("amount", "per_kg"):
        raise ValueError(f"dose_basis must be 'amount' or 'per_kg'; got {dose_basis!r}")
    raw = load_raw("phenobarb")
    both = raw.filter(pl.col("dose").is_not_null() & pl.col("conc").is_not_null()).height
    neither = raw.filter(pl.col("dose").is_null() & pl.col("conc").is_null()).height
    if both or neither:
        raise ValueError(f"Phenobarb: {both} rows with both dose and conc, {neither} with neither")
    is_dose = raw["dose"].is_not_null().to_numpy()
    wt = raw["Wt"].to_numpy().astype(float)
    dose = raw["dose"].fill_null(0.0).to_numpy().astype(float)
    conc = raw["conc"].to_numpy().astype(float)
    if dose_basis == "amount":
        amt, dv = dose, conc
    else:
        amt, dv = np.round(dose * wt / 1000.0, 10), conc / 1000.0
    n = raw.height
    low = (raw["ApgarInd"].str.strip_chars() == "< 5").to_numpy()
    cols = {
        "ID": [str(s) for s in raw["Subject"].to_list()],
        "TIME": raw["time"].to_numpy().astype(float).tolist(),
        "AMT": np.where(is_dose, amt, 0.0).tolist(),
        "DV": [None if d else float(v) for d, v in zip(is_dose, dv)],
        "EVID": is_dose.astype(float).tolist(),
        "MDV": is_dose.astype(float).tolist(),
        "CMT": [0.0] * n,
        "DVID": [None if d else 1.0 for d in is_dose],
        "BW": wt.tolist(),
        "APGAR": raw["Apgar"].to_numpy().astype(float).tolist(),
        "APGAR_LOW": low.astype(float).tolist(),
    }
    frame = read_nonmem(_frame(cols, list(cols)))
    n_conc = (frame.filter(pl.col("EVID") == 0).group_by("ID").len()["len"].to_numpy())
    counts = {k: int(np.sum(n_conc == k)) for k in np.unique(n_conc)}
    notes = [
        ("dose is the total IV bolus dose in mg (R documents it as ug/kg, but dose/Wt is 10 or 20 "
         "mg/kg for most loading doses and the published CL 0.0047 L/h/kg, V 0.96 L/kg follow only "
         "from the total-amount reading): AMT = dose mg, DV = conc mg/L")
        if dose_basis == "amount" else
        "dose taken as ug/kg and conc as ug/L (R's labels): AMT = dose x Wt / 1000 mg, DV = conc / 1000 mg/L",
        "Wt (birth weight, kg) is BW; Apgar is APGAR (1-10); ApgarInd '< 5' is APGAR_LOW = 1",
        "concentrations per subject: " + ", ".join(f"{v} subjects with {k}" for k, v in counts.items()),
    ]
    return PublicData("phenobarb", frame, raw, notes)


# ---------------------------------------------------------------------------- access
_BUILDERS = {"theoph": theoph, "phenobarb": phenobarb}


def load_public(name: str, **options) -> PublicData:
    """Public data set `name` converted to a NONMEM-style table (options: ``predose`` for
    Theoph, ``dose_basis`` for Phenobarb; see [`theoph`][] and [`phenobarb`][])."""
    return _BUILDERS[_check_name(name)](**options)


def public_dataset(name: str, out: str | Path | None = None, **options) -> pl.DataFrame:
    """The NONMEM-style table of public data set `name`; with `out` (a folder), also written
    as ``out/<name>.csv`` (readable by ``pkpd-jax validate`` / ``fit``)."""
    data = load_public(name, **options)
    if out is not None:
        folder = Path(out)
        folder.mkdir(parents=True, exist_ok=True)
        write_nonmem(data.frame, folder / f"{data.name}.csv")
    return data.frame
