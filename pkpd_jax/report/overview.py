"""A first look at a study: summary by dose cohort and a spaghetti plot of both observation types."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl

from ..data import read_nonmem, summarize


__all__ = ["cohort_table", "study_overview"]


def cohort_table(df: pl.DataFrame) -> pl.DataFrame:
    """One row per dose level (the subject's largest dose; 0 = placebo)."""
    dose = df.filter(pl.col("EVID") == 1).group_by("_SUBJ").agg(pl.col("AMT").max().alias("dose"))
    subj = df.group_by("_SUBJ").agg(
        pl.col("BW").first() if "BW" in df.columns else pl.lit(None).alias("BW"),
        pl.col("COMED").first() if "COMED" in df.columns else pl.lit(None).alias("COMED"),
        ((pl.col("EVID") == 0) & (pl.col("DVID") == 1)).sum().alias("n_conc"),
        ((pl.col("EVID") == 0) & (pl.col("DVID") == 2)).sum().alias("n_resp"),
        (pl.col("EVID") == 1).sum().alias("n_doses"),
    )
    subj = subj.join(dose, on="_SUBJ", how="left").with_columns(pl.col("dose").fill_null(0.0))
    return (
        subj.group_by("dose")
        .agg(
            pl.len().alias("subjects"),
            pl.col("n_doses").sum().alias("doses"),
            pl.col("n_conc").sum().alias("conc_obs"),
            pl.col("n_resp").sum().alias("resp_obs"),
            pl.col("BW").min().alias("BW_min"),
            pl.col("BW").max().alias("BW_max"),
            pl.col("COMED").mean().alias("COMED_fraction"),
        )
        .sort("dose")
    )


def _is_clean(frame) -> bool:
    """A frame returned by `read_nonmem` (it alone carries the internal `_SUBJ` and `_ROW` columns)."""
    return isinstance(frame, pl.DataFrame) and {"_SUBJ", "_ROW"} <= set(frame.columns)


def study_overview(source, out_dir: str | Path) -> dict:
    """Validate `source`, write ``summary.json`` and ``data_overview.png`` into `out_dir`.

    **Arguments:** `source`: a CSV path or a polars frame (read and validated with
    [`read_nonmem`][pkpd_jax.data.read_nonmem]), or a frame `read_nonmem` already returned (used
    as is, not read again); `out_dir`: the output directory.

    **Returns:** the summary record (also in ``summary.json``) plus ``cohorts_table`` (text).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    df = source if _is_clean(source) else read_nonmem(source)
    summary = summarize(df)
    cohorts = cohort_table(df)
    record = {
        "text": str(summary),
        "n_subjects": summary.n_subjects,
        "n_doses": summary.n_doses,
        "n_obs_by_dvid": {str(k): v for k, v in summary.n_obs_by_dvid.items()},
        "n_blq": summary.n_blq,
        "covariates": list(summary.covariates),
        "cohorts": cohorts.to_dicts(),
    }
    (out / "summary.json").write_text(json.dumps(record, indent=2) + "\n")

    obs = df.filter(pl.col("EVID") == 0)
    dose_of = dict(zip(cohorts["dose"].to_list(), range(cohorts.height)))
    subj_dose = (
        df.filter(pl.col("EVID") == 1).group_by("_SUBJ").agg(pl.col("AMT").max().alias("dose"))
    )
    obs = obs.join(subj_dose, on="_SUBJ", how="left").with_columns(pl.col("dose").fill_null(0.0))
    cmap = plt.get_cmap("viridis", max(len(dose_of), 2))
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, dvid, label, log in (
        (axes[0], 1, "concentration (mg/L)", True),
        (axes[1], 2, "biomarker", False),
    ):
        part = obs.filter(pl.col("DVID") == dvid)
        for (sid,), g in part.group_by(["_SUBJ"], maintain_order=True):
            d = g["dose"][0]
            ax.plot(g["TIME"], g["DV"], "-o", ms=2, lw=0.6, alpha=0.7, color=cmap(dose_of[d]))
        ax.set_xlabel("time (h)")
        ax.set_ylabel(label)
        if log and part.height:
            ax.set_yscale("log")
    handles = [
        plt.Line2D([], [], color=cmap(i), marker="o", label=f"{d:g} mg") for d, i in dose_of.items()
    ]
    axes[1].legend(handles=handles, title="dose", fontsize=8)
    fig.suptitle(str(summary), fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "data_overview.png", dpi=110)
    plt.close(fig)
    record["cohorts_table"] = str(cohorts)
    return record
