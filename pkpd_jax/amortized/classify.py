"""Classify a study: which PK class and which PD class, from the trained model selectors.

[`classify_study`][] reads a NONMEM-style study, featurises every usable subject exactly as the
training corpora were featurised ([`featurize`][pkpd_jax.amortized.batches.featurize]), runs the
PK selector (dose record + concentrations) and the PD selector (concentrations + biomarker), and
combines the subjects into one choice per family.

**Which subjects are used.** PK: subjects with at least one dose and at least
``MIN_PK_OBS`` quantified concentrations (BLQ records are kept as BLQ features but do not count).
PD: subjects with at least one dose, at least ``MIN_PD_CONC`` quantified concentrations and at
least ``MIN_PD_RESP`` biomarker observations (DVID 2); the first biomarker value is the baseline.
Placebo subjects (no dose) are left out of both: the selectors were trained on dosed subjects
only. Each left-out subject is listed with the reason.

**Aggregation: sum of per-subject log-probabilities.** The selectors were trained on corpora
with balanced classes, so a subject's softmax output is its posterior under a uniform prior,
``p(c | x_i) ∝ p(x_i | c)``. If every subject of a study follows the same structural model
(the premise of a population fit) and subjects are independent given the class, the study's
posterior is ``p(c | x_1..n) ∝ Π_i p(x_i | c) ∝ Π_i p(c | x_i)``, i.e. the softmax of the summed
log-probabilities. A mean of probabilities (also reported) has no such interpretation: it answers
"how often would one random subject be classified as c". Each per-subject probability is floored
at ``PROB_FLOOR`` before the logarithm so that one atypical subject (an outlier, a mis-recorded
dose) cannot veto a class on its own; the price is that the study posterior is only as good as
the selector's calibration (see the ECE in the shipped evaluation), and with dozens of subjects it
is typically very sharp. The per-subject votes and mean probabilities are reported next to it
so that a disagreement between subjects stays visible.

**Parameters.** For the chosen class, each subject's regressed parameters (the network's
parameter row of that class, in natural units via
[`denormalise_params`][pkpd_jax.amortized.batches.denormalise_params]); the study value is the
per-parameter median over the subjects used, reported with the 5th and 95th percentiles as a
range usable for the population fit's priors.

**Limitations of the shipped selectors** (see ``pretrained/selectors.json`` for their test
accuracy: 0.80 PK, 0.49 PD over 10 classes each, each on its own corpus's test split). They know
what their corpora showed them: in the PK corpus only ``pk_2c_iv_infusion`` is given by infusion,
so an infused study is called ``pk_2c_iv_infusion`` whatever its number of compartments; the dose
route (oral or IV) is not a feature and is inferred from the curve shape. Both corpora have four
designs (single dose, 7 daily, 14 daily, 4 weekly doses); in the PD corpus half the subjects have
concentration and biomarker samples at largely different times, and potency (EC50/IC50/slope) is
drawn relative to each subject's exposure. Subjects with more than 25 observations or more than
14 doses are outside the training designs (they are still classified; the network takes any
length); so are quantified concentrations far below any assay's LLOQ (see [`range_note`][]).
Pairs that make the same predictions for some parameters (``pd_indirect_inhib_kin`` /
``pd_indirect_stim_kout``, ``pd_direct_inhib_emax`` / ``pd_indirect_inhib_kin``, ``pk_2c_iv`` /
``pk_3c_iv``, ``pk_1c_iv`` / ``pk_1c_iv_mm``) account for most confusions;
``benchmarks/results/selector_transfer.md`` measures the PD selector on simulated studies of the
bundled design (right class in 20 of 30 studies).

**Checkpoints.** The selectors shipped with the package live in ``pretrained/pk`` and
``pretrained/pd`` next to this module (see ``experiments/train_selectors.py``); any training
output directory of `pkpd-jax train` (or a ``.eqx`` file) can be given instead.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


__all__ = [
    "PRETRAINED_DIR",
    "MIN_PK_OBS",
    "MIN_PD_CONC",
    "MIN_PD_RESP",
    "PROB_FLOOR",
    "MIN_CONC_RANGE",
    "SubjectRecord",
    "range_note",
    "pretrained_checkpoint",
    "load_selector",
    "study_subjects",
    "featurize_subjects",
    "aggregate",
    "classify_subjects",
    "classify_study",
    "family_summary",
    "subject_table",
]

PRETRAINED_DIR = Path(__file__).resolve().parent / "pretrained"
MIN_PK_OBS = 3
MIN_PD_CONC = 1
MIN_PD_RESP = 3
PROB_FLOOR = 1e-4
# The corpora censor concentrations below an LLOQ of 10^-3 to 10^-1.5 of the subject's peak (see
# pkpd_jax.amortized.corpus): quantified values far below 10^-3 of the peak were never seen in
# training (a margin of 2x for the noise on the observed peak).
MIN_CONC_RANGE = 5e-4
AGGREGATION = ("softmax of the summed per-subject log-probabilities (each floored at "
               f"{PROB_FLOOR:g}): the study posterior if all subjects share one class")


# --------------------------------------------------------------------------------- checkpoints
def pretrained_checkpoint(family: str) -> Path:
    """The shipped selector of a family (``"pk"`` or ``"pd"``): a directory with ``best.eqx``."""
    if family not in ("pk", "pd"):
        raise ValueError(f"family must be 'pk' or 'pd'; got {family!r}.")
    path = PRETRAINED_DIR / family
    if not (path / "best.eqx").is_file():
        raise FileNotFoundError(
            f"no shipped {family.upper()} selector ({path / 'best.eqx'} is missing); train one with "
            f"experiments/train_selectors.py or pass a checkpoint."
        )
    return path


@functools.lru_cache(maxsize=8)
def _load_cached(path: str):
    from .train import load_checkpoint

    return load_checkpoint(path)


def load_selector(checkpoint: Any, family: str):
    """Load (once per path) a selector checkpoint and check that it fits `family`'s features.

    `checkpoint`: None (the shipped selector), a training output directory, a ``.eqx`` file, or a
    loaded `Checkpoint`.
    """
    from .batches import class_names, feature_names
    from .train import Checkpoint

    if checkpoint is None:
        checkpoint = pretrained_checkpoint(family)
    ckpt = checkpoint if isinstance(checkpoint, Checkpoint) else _load_cached(str(Path(checkpoint).resolve()))
    info = ckpt.info
    where = "" if isinstance(checkpoint, Checkpoint) else f" {checkpoint}"
    if info.get("family", family) != family:
        raise ValueError(f"the checkpoint{where} is a {info.get('family')!r} selector, not {family!r}.")
    feats = tuple(info.get("feature_names") or ())
    if feats and feats != feature_names(family):
        raise ValueError(f"the checkpoint{where} was trained on features {list(feats)}; this version "
                         f"computes {list(feature_names(family))}. Retrain it.")
    if ckpt.config.n_features != len(feature_names(family)):
        raise ValueError(f"the checkpoint{where} takes {ckpt.config.n_features} features; the {family} "
                         f"family has {len(feature_names(family))}.")
    unknown = [c for c in ckpt.class_names if c not in class_names(family)]
    if unknown:
        raise ValueError(f"the checkpoint{where} predicts classes {unknown} unknown to this version.")
    return ckpt


# ------------------------------------------------------------------------------------- subjects
@dataclass(frozen=True)
class SubjectRecord:
    """One subject of a study, as numpy arrays (times in h on the study clock).

    - `conc_times`, `conc`, `conc_blq`: concentration observations (DVID 1) and BLQ flags.
    - `resp_times`, `resp`: biomarker observations (DVID 2).
    - `dose_times`, `dose_amounts`, `dose_durations`: the dose records (duration 0 = bolus).
    """

    id: str
    conc_times: np.ndarray
    conc: np.ndarray
    conc_blq: np.ndarray
    resp_times: np.ndarray
    resp: np.ndarray
    dose_times: np.ndarray
    dose_amounts: np.ndarray
    dose_durations: np.ndarray

    @property
    def n_quantified(self) -> int:
        return int(np.sum(~self.conc_blq & np.isfinite(self.conc) & (self.conc > 0)))

    @property
    def has_dose(self) -> bool:
        return bool(np.any(self.dose_amounts > 0))


def study_subjects(data) -> list[SubjectRecord]:
    """Split a study (a CSV path, a polars frame or a [`Dataset`][pkpd_jax.data.Dataset]) into
    subjects, through the project's data layer (validation, RATE -> DUR, padding).

    Observations with ``MDV = 1`` are ignored; BLQ records keep their flag (DV set to 0).
    """
    from ..data import Dataset, read_nonmem

    ds = data if isinstance(data, Dataset) else Dataset.from_frame(read_nonmem(data))
    time, dv, dvid, mask, blq = (np.asarray(a) for a in (
        ds.obs_time, ds.obs_dv, ds.obs_dvid, ds.obs_mask, ds.obs_blq))
    reg = ds.regimen
    d_time, d_amt, d_dur = (np.asarray(a, float) for a in (reg.time, reg.amount, reg.duration))
    out = []
    for i, sid in enumerate(ds.ids):
        pk = mask[i] & (dvid[i] == 1)
        pd = mask[i] & (dvid[i] == 2)
        dose = d_amt[i] > 0  # padding rows have zero amount
        out.append(SubjectRecord(
            id=str(sid),
            conc_times=time[i, pk].astype(float), conc=np.where(blq[i, pk], 0.0, dv[i, pk]),
            conc_blq=blq[i, pk], resp_times=time[i, pd].astype(float), resp=dv[i, pd],
            dose_times=d_time[i, dose], dose_amounts=d_amt[i, dose], dose_durations=d_dur[i, dose],
        ))
    return out


def _dose_and_conc_reason(s: SubjectRecord, min_conc: int) -> str | None:
    if not s.has_dose:
        return "no dose (placebo)"
    if s.n_quantified < min_conc:
        return f"{s.n_quantified} quantified concentration(s), fewer than {min_conc}"
    return None


def _pk_reason(s: SubjectRecord) -> str | None:
    return _dose_and_conc_reason(s, MIN_PK_OBS)


def _pd_reason(s: SubjectRecord) -> str | None:
    reason = _dose_and_conc_reason(s, MIN_PD_CONC)
    if reason is not None:
        return reason
    n_resp = int(np.sum(np.isfinite(s.resp)))
    if n_resp < MIN_PD_RESP:
        return f"{n_resp} biomarker observation(s), fewer than {MIN_PD_RESP}"
    return None


def _merge_pd(s: SubjectRecord) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Concentrations and biomarker on the union of their times (NaN = not measured there).
    Replicates at one time are averaged."""
    times = np.union1d(s.conc_times, s.resp_times)
    conc = np.full(times.shape, np.nan)
    blq = np.zeros(times.shape, bool)
    resp = np.full(times.shape, np.nan)
    for i, t in enumerate(times):
        c_sel = s.conc_times == t
        if c_sel.any():
            quant = c_sel & ~s.conc_blq
            if quant.any():
                conc[i] = float(np.mean(s.conc[quant]))
            else:
                conc[i], blq[i] = 0.0, True
        r_sel = s.resp_times == t
        if r_sel.any():
            resp[i] = float(np.mean(s.resp[r_sel]))
    return times, conc, blq, resp


def featurize_subjects(subjects: Sequence[SubjectRecord], family: str, n_times: int):
    """Feature batch ``(times [B, T], values [B, T, F], mask [B, T])`` of the given subjects,
    ``T = max(n_times, most observations of a subject)`` (the network takes any length; the
    corpus ``T`` is the usual one)."""
    from .batches import featurize

    rows = []
    for s in subjects:
        if family == "pk":
            rows.append((s.conc_times, s.conc, s.conc_blq, None))
        else:
            t, c, b, r = _merge_pd(s)
            rows.append((t, c, b, r))
    T = max([int(n_times)] + [len(r[0]) for r in rows])
    feats = [
        featurize(t, c, s.dose_times, s.dose_amounts, s.dose_durations, family=family, resp=r, blq=b,
                  n_times=T)
        for s, (t, c, b, r) in zip(subjects, rows)
    ]
    return tuple(np.stack([f[k] for f in feats]) for k in range(3))


@dataclass(frozen=True)
class _Batch:
    times: np.ndarray
    values: np.ndarray
    mask: np.ndarray


# ----------------------------------------------------------------------------------- aggregation
def aggregate(probs: np.ndarray, class_names: Sequence[str], floor: float = PROB_FLOOR) -> dict:
    """Study-level choice from per-subject class probabilities ``[N, C]`` (see the module
    docstring): ``{"selected", "probabilities", "log_probability", "mean_subject_probabilities",
    "votes"}``."""
    probs = np.asarray(probs, float)
    if probs.ndim != 2 or probs.shape[0] < 1 or probs.shape[1] != len(class_names):
        raise ValueError(f"probs must be [N >= 1, {len(class_names)}]; got {probs.shape}.")
    logp = np.log(np.clip(probs, floor, 1.0)).sum(axis=0)
    post = np.exp(logp - logp.max())
    post /= post.sum()
    top = int(np.argmax(logp))
    votes = np.bincount(probs.argmax(axis=1), minlength=len(class_names))
    order = np.argsort(-post, kind="stable")
    ranked = lambda a: {class_names[i]: float(a[i]) for i in order}
    return {
        "selected": class_names[top],
        "probabilities": ranked(post),
        "log_probability": ranked(logp),
        "mean_subject_probabilities": ranked(probs.mean(axis=0)),
        "votes": {class_names[i]: int(votes[i]) for i in order if votes[i]},
    }


def classify_subjects(subjects: Sequence[SubjectRecord], family: str, checkpoint: Any = None) -> dict:
    """Run one family's selector on the usable `subjects` and aggregate (see the module docstring).

    Raises `ValueError` when no subject is usable (the message lists why, per subject).
    """
    from .batches import denormalise_params
    from .evaluate import predict

    ckpt = load_selector(checkpoint, family)
    reason = _pk_reason if family == "pk" else _pd_reason
    used, skipped = [], {}
    for s in subjects:
        r = reason(s)
        if r is None:
            used.append(s)
        else:
            skipped[s.id] = r
    if not used:
        what = (f"dosed subjects with at least {MIN_PK_OBS} quantified concentrations" if family == "pk"
                else f"dosed subjects with concentrations and at least {MIN_PD_RESP} biomarker observations")
        examples = "; ".join(f"ID {k}: {v}" for k, v in list(skipped.items())[:3])
        raise ValueError(f"no subject can be classified for {family.upper()}: the selector needs {what} "
                         f"({len(subjects)} subjects; {examples}).")
    times, values, mask = featurize_subjects(used, family, int(ckpt.info.get("n_times", 25)))
    pred = predict(ckpt, _Batch(times, values, mask))
    names = tuple(ckpt.class_names)
    result = aggregate(pred.probs, names)
    chosen = names.index(result["selected"])
    nat = denormalise_params(result["selected"], pred.params_normalised[:, chosen, :])
    result["param_ranges"] = {}
    for k, v in nat.items():
        p5, median, p95 = np.percentile(np.asarray(v, float).reshape(-1), [5, 50, 95])
        result["param_ranges"][k] = {"median": float(median), "p5": float(p5), "p95": float(p95)}
    result["params"] = {k: r["median"] for k, r in result["param_ranges"].items()}
    result["n_subjects"] = len(used)
    result["skipped"] = skipped
    result["aggregation"] = AGGREGATION
    result["subjects"] = [
        {"id": s.id, "class": pred.predicted[i], "probability": float(pred.probs[i].max()),
         "probability_selected": float(pred.probs[i, chosen]),
         "probs": {c: float(pred.probs[i, j]) for j, c in enumerate(names)},
         "params": denormalise_params(pred.predicted[i],
                                      pred.params_normalised[i, names.index(pred.predicted[i])])}
        for i, s in enumerate(used)
    ]
    return result


def range_note(subjects: Sequence[SubjectRecord]) -> str | None:
    """A note when some subjects have quantified concentrations below ``MIN_CONC_RANGE`` of their
    peak: the selectors never saw such values (their corpora censor at an assay's LLOQ), so their
    choice is less reliable there. None when every subject is within range."""
    low = []
    for s in subjects:
        q = s.conc[~s.conc_blq & np.isfinite(s.conc) & (s.conc > 0)]
        if q.size >= 2 and q.min() < MIN_CONC_RANGE * q.max():
            low.append(s.id)
    if not low:
        return None
    ids = ", ".join(low[:5]) + (", ..." if len(low) > 5 else "")
    return (f"{len(low)} of {len(subjects)} subjects have quantified concentrations below "
            f"{MIN_CONC_RANGE:g} x their peak (IDs {ids}); the selectors were trained with an assay "
            "LLOQ of 1e-3 to 3e-2 x the peak, so these values are outside what they know: flag "
            "concentrations below the assay's LLOQ as BLQ (column BLQ = 1) for a reliable choice.")


def family_summary(result: dict | None, note: str | None = None) -> dict:
    """The study-level summary of one family (the ``pk_summary`` / ``pd_summary`` of the JSON):
    the chosen class, its study probability, how many subjects voted for it, and its parameter
    ranges over the subjects (median, 5th and 95th percentiles: usable as priors for the
    population fit). ``{"class": None, "reason": ...}`` when the family was not classified."""
    if result is None:
        return {"class": None, "reason": note}
    cls = result["selected"]
    return {"class": cls, "probability": result["probabilities"][cls],
            "votes": result["votes"].get(cls, 0), "n_subjects": result["n_subjects"],
            "rule": result["aggregation"], "params": result["param_ranges"]}


def subject_table(subjects: Sequence[SubjectRecord], pk: dict, pd: dict | None, pd_note: str | None) -> list:
    """One record per subject of the study: ``{"ID", "pk", "pd"}``, each family
    ``{"class", "probs", "params"}`` (the subject's own most probable class and its parameters) or
    None with ``pk_reason`` / ``pd_reason`` saying why it was not classified."""
    rows = []
    by_id = {f: {r["id"]: r for r in res["subjects"]} if res else {} for f, res in (("pk", pk), ("pd", pd))}
    skipped = {"pk": pk["skipped"], "pd": pd["skipped"] if pd else {}}
    for s in subjects:
        row: dict[str, Any] = {"ID": s.id}
        for fam in ("pk", "pd"):
            r = by_id[fam].get(s.id)
            if r is None:
                row[fam] = None
                row[f"{fam}_reason"] = (skipped[fam].get(s.id) or (pd_note if fam == "pd" else None)
                                        or "not classified")
            else:
                row[fam] = {"class": r["class"], "probs": r["probs"], "params": r["params"]}
        rows.append(row)
    return rows


def classify_study(data, *, checkpoint_pk: Any = None, checkpoint_pd: Any = None) -> dict:
    """Choose the PK and the PD class of a study (see the module docstring).

    **Arguments:** `data`: a NONMEM-style CSV path, a polars frame or an already-read
    [`Dataset`][pkpd_jax.data.Dataset] (not read again); `checkpoint_pk`,
    `checkpoint_pd`: selector checkpoints (default: the shipped ones).

    **Returns:** ``{"subjects", "pk_summary", "pd_summary", "data", "n_subjects", "pk": {...},
    "pd": {...} or None, "pd_note", "notes"}``: ``subjects`` from [`subject_table`][], the
    summaries from [`family_summary`][], ``notes`` warnings about the data (e.g.
    [`range_note`][]); each family
    entry has ``selected``, ``probabilities`` (study posterior, best first), ``log_probability``,
    ``mean_subject_probabilities``, ``votes``, ``params`` (median natural-unit parameters of the
    selected class), ``n_subjects`` (used), ``skipped`` (``{ID: reason}``), ``aggregation`` and
    per-subject ``subjects``. ``pd`` is None when the study has no biomarker observations
    (``pd_note`` says why).
    """
    subjects = study_subjects(data)
    if not any(s.has_dose for s in subjects):
        raise ValueError("the study has no dose records (EVID 1 with AMT > 0): nothing to classify.")
    out: dict[str, Any] = {
        "data": str(data) if isinstance(data, (str, Path)) else "<frame>",
        "n_subjects": len(subjects),
        "pk": classify_subjects(subjects, "pk", checkpoint_pk),
        "pd": None,
        "pd_note": None,
        "notes": [n for n in (range_note(subjects),) if n],
    }
    if not any(len(s.resp_times) for s in subjects):
        out["pd_note"] = "no biomarker observations (DVID 2): PK only"
    else:
        try:
            out["pd"] = classify_subjects(subjects, "pd", checkpoint_pd)
        except ValueError as e:
            if "no subject can be classified" not in str(e):
                raise
            out["pd_note"] = str(e)
    return {"subjects": subject_table(subjects, out["pk"], out["pd"], out["pd_note"]),
            "pk_summary": family_summary(out["pk"]),
            "pd_summary": family_summary(out["pd"], out["pd_note"]),
            **out}


def summary_lines(result: dict) -> list[str]:
    """Human-readable lines of a [`classify_study`][] result."""
    lines = []
    for fam in ("pk", "pd"):
        r = result.get(fam)
        if r is None:
            lines.append(f"{fam.upper()}: not classified ({result.get('pd_note')})")
            continue
        probs = list(r["probabilities"].items())
        best = ", ".join(f"{k} {v:.3g}" for k, v in probs[:3])
        votes = ", ".join(f"{k} {v}" for k, v in r["votes"].items())
        rng = r.get("param_ranges", {})
        span = lambda k: f" ({_fmt(rng[k]['p5'])}-{_fmt(rng[k]['p95'])})" if k in rng else ""
        params = ", ".join(f"{k}={_fmt(v)}{span(k)}" for k, v in r["params"].items())
        lines.append(f"{fam.upper()}: {r['selected']} (p = {probs[0][1]:.3g}; {r['n_subjects']} subjects, "
                     f"{len(r['skipped'])} skipped)")
        lines.append(f"    study probabilities: {best}")
        lines.append(f"    per-subject votes: {votes}")
        lines.append(f"    median parameters (5th-95th percentile over subjects): {params}")
    lines.extend(f"note: {n}" for n in result.get("notes", []))
    return lines


def _fmt(v: float) -> str:
    return f"{v:.3g}" if math.isfinite(v) else str(v)
