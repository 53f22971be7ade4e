"""Transfer of the model selectors to the bundled example's design: does `classify_study` pick the
generating PD class on studies that are sampled like the bundled study rather than like the corpus?

The PD selector was trained on corpora (`pkpd_jax.amortized.corpus`) where concentration and
biomarker are mostly sampled at the same times, with at most 7 doses. The bundled example study
(`pkpd_jax.data.example`) has 14 daily doses and samples PK and biomarker at different times. This
benchmark simulates, for each of the 10 PD classes, ``--studies`` studies with the bundled design and
classifies each with [`classify_study`][pkpd_jax.amortized.classify.classify_study].

**A simulated study** (everything from ``numpy.random.default_rng([seed, class index, study])``;
the class index is the class's position in `PD_MODELS`, so a subset of ``--classes`` gives the same
studies):

- ``--subjects`` dosed subjects (no placebo: the selectors ignore placebo subjects) in 3 cohorts
  of (nearly) equal size; body weight and co-medication as in the bundled study.
- PK: the bundled study's driver ``pk_2c_iv_infusion`` with its typical values, covariate model and
  variability ([`individual_parameters`][pkpd_jax.data.example.individual_parameters] under `TRUTH`;
  its PD entries are not used).
- PD typical parameters: one draw per study from the class's declared prior (``Param.median``,
  ``Param.log_sd``: log-normal; logit-normal for fractions such as ``Imax``), standard normal
  deviates clipped to ``±--z-max`` (default 2) so that no study is degenerate. Individual
  parameters: ``θ_i = θ·exp(0.3·η)`` (``0.2`` for ``R0``); fractions get the same 30% on the
  logit scale, so that they stay in (0, 1).
- Dose levels: the cohorts' typical steady-state average concentration
  ``C_ss = dose / (CL · 24 h)`` (``CL`` = 3 L/h) is ``COHORT_MULTIPLES`` = 0.3×, 1× and 3× the
  study's ``EC50``/``IC50``; ``pd_direct_linear`` has no potency, its reference concentration is
  the one that moves the typical response by ``LINEAR_CHANGE`` = 50% of ``R0``. Doses are rounded
  to 2 significant digits (mg).
- Design of the bundled study: 14 daily 1-h IV infusions; PK at 8 random of the 13 nominal
  `PK_TIMES`, the biomarker at the 12 `PD_TIMES`, jittered by `_jitter`; residual error
  ``TRUTH["residual"]``; concentrations below the LLOQ reported as ``DV = LLOQ, BLQ = 1``; times
  rounded to 0.001 h and DV to 6 significant digits, as in the shipped ``study.csv``.
- Simulation: `simulate_population` in float64 (``SOLVER``: Tsit5, rtol 1e-10, atol 1e-12, as the
  bundled study). A subject whose solve fails (non-zero status) or gives a non-finite value is left
  out of the table and reported (``failed_subjects`` per study, ``n_failed_subjects`` overall).

**Recorded:** per study the selected PD class, whether it is the generating one, the study
posterior of the true class and its rank, the per-subject PD accuracy and votes, the PK choice
(should be ``pk_2c_iv_infusion``); overall the study-level accuracy (with a 95% Wilson interval),
the subject-level accuracy, a 10×10 subject-level and a 10×10 study-level confusion matrix
(rows: true class, columns: selected class), and the wall times.

Usage::

    python benchmarks/bench_selector_transfer.py                      # 10 classes x 3 studies x 24
    python benchmarks/bench_selector_transfer.py --studies 10 --seed 1
    python benchmarks/bench_selector_transfer.py --checkpoint-pd runs/selectors/pd --out /tmp/x

Results: ``<out>/selector_transfer.{json,md}`` (default ``benchmarks/results``). Progress goes to
stderr.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


ROOT = Path(__file__).resolve().parents[1]
COHORT_MULTIPLES = (0.3, 1.0, 3.0)  # typical C_ss,avg / (EC50 or IC50) per cohort
LINEAR_CHANGE = 0.5  # pd_direct_linear: slope * C_ref = LINEAR_CHANGE * R0
OMEGA_PD, OMEGA_R0 = 0.30, 0.20
Z_MAX = 2.0


def _solver():
    from pkpd_jax.solve import SolverConfig

    return SolverConfig(rtol=1e-10, atol=1e-12)


def pd_class_names() -> tuple[str, ...]:
    from pkpd_jax.amortized.batches import class_names

    return class_names("pd")


def _sig(x: float, digits: int = 2) -> float:
    return float(f"{x:.{digits}g}")


def reference_concentration(pd_class: str, typical: dict[str, float]) -> float:
    """The concentration (mg/L) the cohorts' exposures are scaled to (see the module docstring)."""
    for k in ("EC50", "IC50"):
        if k in typical:
            return float(typical[k])
    if pd_class == "pd_direct_linear":
        return LINEAR_CHANGE * typical["R0"] / typical["slope"]
    raise ValueError(f"{pd_class} has neither EC50 nor IC50 nor a slope.")


def cohort_doses(c_ref: float, n_subjects: int) -> np.ndarray:
    """Dose (mg) of every subject: cohorts of nearly equal size at `COHORT_MULTIPLES` × `c_ref`."""
    from pkpd_jax.data.example import TRUTH

    cl, tau = TRUTH["population"]["CL"], TRUTH["design"]["interval_h"]
    levels = [_sig(m * c_ref * cl * tau) for m in COHORT_MULTIPLES]
    groups = np.array_split(np.arange(n_subjects), len(levels))
    dose = np.empty(n_subjects)
    for g, d in zip(groups, levels):
        dose[g] = d
    return dose


def draw_pd(rng, pd_class: str, n: int, z_max: float = Z_MAX) -> tuple[dict, dict]:
    """Typical parameters (one prior draw) and `n` subjects' individual parameters of a PD class."""
    from pkpd_jax.amortized.batches import _class_table, _constrain

    names, constraints, loc, sd = _class_table("pd")[pd_class]
    z = np.clip(rng.standard_normal(len(names)), -z_max, z_max)
    u_typ = loc + sd * z
    typical = {k: float(_constrain(c, u_typ[i])) for i, (k, c) in enumerate(zip(names, constraints))}
    omega = np.array([OMEGA_R0 if k == "R0" else OMEGA_PD for k in names])
    u_ind = u_typ[None, :] + omega[None, :] * rng.standard_normal((n, len(names)))
    ind = {k: _constrain(c, u_ind[:, i]) for i, (k, c) in enumerate(zip(names, constraints))}
    return typical, ind


_MODELS: dict = {}


def _model(pd_class: str):
    """One model object per class, so that every study of a class reuses one compilation."""
    from pkpd_jax.data.example import PK_MODEL
    from pkpd_jax.models import get_model

    if pd_class not in _MODELS:
        _MODELS[pd_class] = get_model(PK_MODEL, pd_class)
    return _MODELS[pd_class]


def make_study(pd_class: str, seed: int = 0, study: int = 0, n_subjects: int = 24, *,
               z_max: float = Z_MAX, noise: bool = True):
    """Simulate one study of `pd_class` with the bundled design (see the module docstring).

    Returns ``(table, truth)``: the NONMEM-style polars frame (the bundled study's columns) and a
    dict with the generating class, typical and individual parameters, doses, covariates, the
    sampling times and the noise-free concentration and response at every time (``times``,
    ``conc``, ``resp``: ``[subjects, 8 PK + 12 PD times]``), ``n_pk`` and the failed subjects.
    `noise=False` writes the noise-free values (BLQ handling still applies).
    """
    from pkpd_jax._x64 import x64

    with x64():
        return _make_study(pd_class, seed, study, n_subjects, z_max, noise)


def _make_study(pd_class, seed, study, n_subjects, z_max, noise):
    import jax.numpy as jnp
    import polars as pl

    from pkpd_jax.data.example import PD_TIMES, PK_TIMES, TRUTH, _jitter, _sig6, individual_parameters
    from pkpd_jax.dosing import Regimen, stack_regimens
    from pkpd_jax.solve import STATUS_MESSAGES, simulate_population

    classes = pd_class_names()
    if pd_class not in classes:
        raise ValueError(f"unknown PD class {pd_class!r}; known: {', '.join(classes)}.")
    if n_subjects < len(COHORT_MULTIPLES):
        raise ValueError(f"--subjects must be at least {len(COHORT_MULTIPLES)} (one per cohort).")
    rng = np.random.default_rng([seed, classes.index(pd_class), study])
    des, res = TRUTH["design"], TRUTH["residual"]
    n = n_subjects
    bw = np.round(rng.uniform(50.0, 100.0, n), 1)
    comed = (rng.uniform(size=n) < TRUTH["covariates"]["COMED_probability"]).astype(float)
    ind_pk = {k: v for k, v in individual_parameters(rng, bw, comed).items() if k in ("CL", "V1", "Q", "V2")}
    typical, ind_pd = draw_pd(rng, pd_class, n, z_max)
    c_ref = reference_concentration(pd_class, typical)
    dose = cohort_doses(c_ref, n)

    model = _model(pd_class)
    theta = model.pack({k: jnp.asarray(v) for k, v in {**ind_pk, **ind_pd}.items()})
    regimens = stack_regimens([
        Regimen.repeated(float(d), des["interval_h"], des["n_doses"], duration=des["infusion_h"])
        for d in dose
    ])
    pk_t = [np.sort(_jitter(rng, rng.choice(PK_TIMES, 8, replace=False))) for _ in range(n)]
    pd_t = [_jitter(rng, PD_TIMES) for _ in range(n)]
    ts = np.stack([np.concatenate([a, b]) for a, b in zip(pk_t, pd_t)])
    n_pk = pk_t[0].size
    sol = simulate_population(model, theta, regimens, jnp.asarray(ts), config=_solver(), throw=False)
    conc, resp, status = np.asarray(sol.conc), np.asarray(sol.resp), np.asarray(sol.status)
    finite = np.isfinite(conc).all(1) & np.isfinite(resp).all(1)
    ok = (status == 0) & finite
    failed = [{"ID": int(i + 1), "status": int(status[i]),
               "reason": STATUS_MESSAGES.get(int(status[i]), "unknown") if status[i] else "non-finite value"}
              for i in np.flatnonzero(~ok)]

    # residual error, drawn for every subject (kept or not) so that the draws do not depend on failures
    shape = (n, ts.shape[1])
    if noise:
        e1, e2 = rng.standard_normal(shape), rng.standard_normal(shape)
    else:
        e1 = e2 = np.zeros(shape)
    is_pk = np.arange(ts.shape[1]) < n_pk
    s_prop = np.where(is_pk, res["sigma_prop_PK"], res["sigma_prop_PD"])
    s_add = np.where(is_pk, res["sigma_add_PK"], res["sigma_add_PD"])
    f = np.where(is_pk[None, :], conc, resp)
    dv = f * (1.0 + s_prop * e1) + s_add * e2
    lloq = des["lloq_mg_per_L"]
    blq = is_pk[None, :] & (dv < lloq)
    dv = np.where(blq, lloq, dv)

    dose_times = des["interval_h"] * np.arange(des["n_doses"])
    keep = np.flatnonzero(ok)
    nd, no = dose_times.size, ts.shape[1]
    ids_d = np.repeat(keep + 1, nd)
    ids_o = np.repeat(keep + 1, no)
    obs_pk = np.tile(is_pk, keep.size)
    cols = {
        "ID": np.concatenate([ids_d, ids_o]),
        "TIME": np.concatenate([np.tile(dose_times, keep.size), ts[keep].ravel()]),
        "AMT": np.concatenate([np.repeat(dose[keep], nd), np.zeros(keep.size * no)]),
        "DV": np.concatenate([np.zeros(keep.size * nd), dv[keep].ravel()]),
        "EVID": np.concatenate([np.ones(keep.size * nd, int), np.zeros(keep.size * no, int)]),
        "MDV": np.concatenate([np.ones(keep.size * nd, int), np.zeros(keep.size * no, int)]),
        "CMT": np.concatenate([np.ones(keep.size * nd, int), obs_pk.astype(int)]),
        "DVID": np.concatenate([np.zeros(keep.size * nd, int), np.where(obs_pk, 1, 2)]),
        "DUR": np.concatenate([np.full(keep.size * nd, des["infusion_h"]), np.zeros(keep.size * no)]),
        "BLQ": np.concatenate([np.zeros(keep.size * nd, int), blq[keep].ravel().astype(int)]),
        "BW": np.concatenate([np.repeat(bw[keep], nd), np.repeat(bw[keep], no)]),
        "COMED": np.concatenate([np.repeat(comed[keep], nd), np.repeat(comed[keep], no)]),
    }
    df = pl.DataFrame(cols).with_columns(
        pl.col("TIME").round(3), pl.col("DV").map_elements(_sig6, return_dtype=pl.Float64)
    )
    # within a time, doses after observations (pre-dose sampling), then PK before biomarker
    df = df.sort(["ID", "TIME", "EVID", "DVID"]).select(list(cols))
    truth = {
        "pd_model": pd_class,
        "pk_model": model.pk.name,
        "seed": [seed, classes.index(pd_class), study],
        "typical_pd": typical,
        "reference_concentration": c_ref,
        "cohort_doses_mg": sorted({float(d) for d in dose}),
        "dose_mg": dose,
        "BW": bw,
        "COMED": comed,
        "individual": {**ind_pk, **ind_pd},
        "times": ts,
        "n_pk": n_pk,
        "conc": conc,
        "resp": resp,
        "status": status,
        "failed_subjects": failed,
    }
    return df, truth


# ------------------------------------------------------------------------------------ classification
def classify_one(df, truth: dict, checkpoint_pk=None, checkpoint_pd=None) -> dict:
    """Classify a simulated study; the record of one study for the results file."""
    from pkpd_jax.amortized.classify import classify_study

    rec = {
        "pd_true": truth["pd_model"],
        "typical_pd": truth["typical_pd"],
        "cohort_doses_mg": truth["cohort_doses_mg"],
        "failed_subjects": truth["failed_subjects"],
    }
    if df.height == 0:
        rec.update(error="every subject's simulation failed", pd_selected=None, correct=False,
                   pk_selected=None)
        return rec
    try:
        r = classify_study(df, checkpoint_pk=checkpoint_pk, checkpoint_pd=checkpoint_pd)
    except ValueError as e:  # e.g. no usable subject
        rec.update(error=str(e), pd_selected=None, correct=False, pk_selected=None)
        return rec
    rec["pk_selected"] = r["pk"]["selected"]
    rec["pk_probability"] = r["pk"]["probabilities"][r["pk"]["selected"]]
    pd = r["pd"]
    if pd is None:
        rec.update(error=r["pd_note"], pd_selected=None, correct=False)
        return rec
    probs = pd["probabilities"]
    ranked = list(probs)
    subj = [s["class"] for s in pd["subjects"]]
    rec.update(
        pd_selected=pd["selected"],
        correct=pd["selected"] == truth["pd_model"],
        pd_probability_selected=probs[pd["selected"]],
        pd_probability_true=probs.get(truth["pd_model"], 0.0),
        rank_of_true=ranked.index(truth["pd_model"]) + 1 if truth["pd_model"] in ranked else None,
        top3={k: probs[k] for k in ranked[:3]},
        n_subjects_used=pd["n_subjects"],
        skipped=pd["skipped"],
        subject_accuracy=float(np.mean([c == truth["pd_model"] for c in subj])),
        votes=pd["votes"],
        subject_predictions=subj,
    )
    return rec


def wilson(k: int, n: int, z: float = 1.96) -> list[float]:
    """95% Wilson score interval of a proportion k/n."""
    if n == 0:
        return [0.0, 1.0]
    p = k / n
    c = (p + z * z / (2 * n)) / (1 + z * z / n)
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return [max(0.0, c - h), min(1.0, c + h)]


def summarise(records: list[dict], classes: tuple[str, ...]) -> dict:
    """Accuracies and confusion matrices over the study records."""
    C = len(classes)
    idx = {c: i for i, c in enumerate(classes)}
    cm_subj = np.zeros((C, C), np.int64)
    cm_study = np.zeros((C, C), np.int64)
    for r in records:
        t = idx[r["pd_true"]]
        for c in r.get("subject_predictions", []):
            cm_subj[t, idx[c]] += 1
        if r.get("pd_selected") is not None:
            cm_study[t, idx[r["pd_selected"]]] += 1
    n_st = len(records)
    k_st = sum(bool(r["correct"]) for r in records)
    n_sub = int(cm_subj.sum())
    per_class = {}
    for c in classes:
        rs = [r for r in records if r["pd_true"] == c]
        if not rs:
            continue
        row = cm_subj[idx[c]]
        wrong = [(classes[j], int(row[j])) for j in np.argsort(-row, kind="stable") if j != idx[c] and row[j]]
        per_class[c] = {
            "studies": len(rs),
            "studies_correct": sum(bool(r["correct"]) for r in rs),
            "selected": [r.get("pd_selected") for r in rs],
            "subject_accuracy": float(row[idx[c]] / row.sum()) if row.sum() else None,
            "most_common_wrong": wrong[0] if wrong else None,
        }
    off = [(int(cm_subj[i, j]), classes[i], classes[j])
           for i in range(C) for j in range(C) if i != j and cm_subj[i, j]]
    off.sort(key=lambda x: -x[0])
    return {
        "n_studies": n_st,
        "study_accuracy": k_st / n_st if n_st else None,
        "studies_correct": k_st,
        "study_accuracy_wilson95": wilson(k_st, n_st),
        "n_subjects_classified": n_sub,
        "subject_accuracy": float(np.trace(cm_subj) / n_sub) if n_sub else None,
        "pk_correct": sum(r.get("pk_selected") == "pk_2c_iv_infusion" for r in records),
        "pk_selected": sorted({str(r.get("pk_selected")) for r in records}),
        "n_unclassified": sum(r.get("pd_selected") is None for r in records),
        "n_failed_subjects": sum(len(r["failed_subjects"]) for r in records),
        "confusion_matrix_subjects": cm_subj.tolist(),
        "confusion_matrix_studies": cm_study.tolist(),
        "largest_subject_confusions": [{"true": a, "predicted": b, "count": k} for k, a, b in off[:8]],
        "per_class": per_class,
    }


# ------------------------------------------------------------------------------------------ helpers
def _git_commit() -> dict:
    def git(*a):
        return subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True, timeout=30)

    try:
        head = git("rev-parse", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}
    return {"commit": head.stdout.strip() or None,
            "dirty": bool(dirty.stdout.strip()) if dirty.returncode == 0 else None}


def _checkpoint_label(path: Path | None) -> str:
    """How a checkpoint is recorded: ``shipped``, or its path relative to the repository (never an
    absolute path of this machine)."""
    if path is None:
        return "shipped"
    p = path.resolve()
    try:
        return str(p.relative_to(ROOT))
    except ValueError:
        return p.name


def _corpus_test_accuracy(checkpoint: Path | None) -> float | None:
    """The PD selector's accuracy on its own corpus test split, when its evaluation is at hand."""
    from pkpd_jax.amortized.classify import pretrained_checkpoint

    d = pretrained_checkpoint("pd") if checkpoint is None else checkpoint
    f = d / "evaluation.json" if d.is_dir() else d.parent / "evaluation.json"
    try:
        return float(json.loads(f.read_text())["accuracy"])
    except (OSError, KeyError, TypeError, ValueError):
        return None


def _short(c: str) -> str:
    return c.removeprefix("pd_").removeprefix("pk_")


def interpretation(s: dict, corpus_acc: float | None) -> str:
    missed = [c for c, v in s["per_class"].items() if v["studies_correct"] == 0]
    top = s["largest_subject_confusions"][0] if s["largest_subject_confusions"] else None
    lo, hi = s["study_accuracy_wilson95"]
    line = (f"On the bundled design the PD selector picks the generating class in {s['studies_correct']}/"
            f"{s['n_studies']} studies ({s['study_accuracy']:.0%}, 95% CI {lo:.0%}-{hi:.0%}; chance 10%) "
            f"and for {s['subject_accuracy']:.0%} of subjects")
    line += f" (corpus test split: {corpus_acc:.0%})" if corpus_acc is not None else ""
    line += "."
    if missed:
        line += f" Never right for {', '.join(_short(c) for c in missed)}."
    if top:
        line += (f" Commonest subject confusion: {_short(top['true'])} -> {_short(top['predicted'])} "
                 f"({top['count']}).")
    line += f" PK: pk_2c_iv_infusion in {s['pk_correct']}/{s['n_studies']} studies."
    return line


def _progress(console):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=console)


# --------------------------------------------------------------------------------------------- main
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--studies", type=int, default=3, help="studies per PD class")
    ap.add_argument("--subjects", type=int, default=24, help="dosed subjects per study")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--z-max", type=float, default=Z_MAX,
                    help="clip of the prior deviates of the typical PD values")
    ap.add_argument("--classes", nargs="+", default=None, help="PD classes (default: all 10)")
    ap.add_argument("--checkpoint-pd", type=Path, default=None, help="default: the shipped PD selector")
    ap.add_argument("--checkpoint-pk", type=Path, default=None, help="default: the shipped PK selector")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = ap.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _results import cpu_probe, public_args
    from rich.console import Console

    from pkpd_jax._x64 import enable_x64

    enable_x64()
    import jax

    from pkpd_jax.amortized.classify import load_selector

    console = Console(stderr=True, width=110, log_path=False)
    all_classes = pd_class_names()
    classes = tuple(args.classes or all_classes)
    unknown = [c for c in classes if c not in all_classes]
    if unknown:
        raise SystemExit(f"unknown PD classes {unknown}; known: {', '.join(all_classes)}.")
    probe = cpu_probe()
    load_start = list(os.getloadavg())
    ck_pk = load_selector(args.checkpoint_pk, "pk")  # fail early on a wrong checkpoint
    ck_pd = load_selector(args.checkpoint_pd, "pd")
    if tuple(ck_pd.class_names) != all_classes:
        raise SystemExit(f"the PD checkpoint's classes {list(ck_pd.class_names)} are not "
                         f"{list(all_classes)}.")

    records, sim_s, cls_s = [], 0.0, 0.0
    t_all = time.perf_counter()
    with _progress(console) as bar:
        task = bar.add_task("studies", total=len(classes) * args.studies)
        for c in classes:
            for s in range(args.studies):
                bar.update(task, description=f"{_short(c)} study {s + 1}")
                t0 = time.perf_counter()
                df, truth = make_study(c, args.seed, s, args.subjects, z_max=args.z_max)
                t1 = time.perf_counter()
                rec = classify_one(df, truth, ck_pk, ck_pd)
                t2 = time.perf_counter()
                sim_s += t1 - t0
                cls_s += t2 - t1
                rec.update(study=s, simulate_s=t1 - t0, classify_s=t2 - t1)
                records.append(rec)
                if truth["failed_subjects"]:
                    console.log(f"[yellow]{c} study {s}: {len(truth['failed_subjects'])} subject(s) failed "
                                f"and were left out: {truth['failed_subjects'][:3]}")
                bar.advance(task)
            rs = records[-args.studies:]
            console.log(f"{c}: selected {[r['pd_selected'] for r in rs]}, subject accuracy "
                        f"{np.mean([r.get('subject_accuracy', 0.0) for r in rs]):.2f}")
    wall = time.perf_counter() - t_all
    summary = summarise(records, all_classes)
    corpus_acc = _corpus_test_accuracy(args.checkpoint_pd)
    interp = interpretation(summary, corpus_acc)

    result = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(), "jax": jax.__version__,
                    "loadavg_start": load_start, "loadavg_end": list(os.getloadavg()), "cpu_probe_s": probe},
        "git": _git_commit(),
        "command": "python benchmarks/bench_selector_transfer.py "
        + " ".join(public_args(argv if argv is not None else sys.argv[1:])),
        "arguments": {"studies": args.studies, "subjects": args.subjects, "seed": args.seed,
                      "z_max": args.z_max, "classes": list(classes),
                      "checkpoint_pd": _checkpoint_label(args.checkpoint_pd),
                      "checkpoint_pk": _checkpoint_label(args.checkpoint_pk)},
        "design": {"pk_driver": "pk_2c_iv_infusion (bundled study's typical values, covariates and IIV)",
                   "cohort_multiples_of_potency": list(COHORT_MULTIPLES), "linear_change": LINEAR_CHANGE,
                   "omega_pd": OMEGA_PD, "omega_R0": OMEGA_R0,
                   "sampling": "bundled study: 14 daily 1 h infusions, PK 8 of 13 nominal times, "
                               "biomarker 12 nominal times, jittered",
                   "solver": {"rtol": _solver().rtol, "atol": _solver().atol}},
        "class_names": list(all_classes),
        "corpus_test_accuracy_pd": corpus_acc,
        "wall_s": wall,
        "simulate_s": sim_s,
        "classify_s": cls_s,
        **summary,
        "interpretation": interp,
        "studies": records,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "selector_transfer.json").write_text(json.dumps(result, indent=2) + "\n")
    md = markdown(result)
    (args.out / "selector_transfer.md").write_text(md)
    console.log(f"wrote {args.out / 'selector_transfer'}.json and .md")
    print(md)
    return 0


def markdown(r: dict) -> str:
    names = r["class_names"]
    a = r["arguments"]
    lo, hi = r["study_accuracy_wilson95"]
    corpus = "n/a" if r["corpus_test_accuracy_pd"] is None else f"{r['corpus_test_accuracy_pd']:.3f}"
    commit = r["git"]["commit"]
    lines = [
        "# Model-selector transfer to the bundled study's design",
        "",
        f"{r['date']} · {r['machine']['platform']} · {r['machine']['cpu_count']} CPUs (shared) · CPU probe "
        f"{r['machine']['cpu_probe_s']:.3f} s · jax {r['machine']['jax']} · commit "
        f"`{(commit or 'unknown')[:12]}`{' (dirty)' if r['git']['dirty'] else ''} · command `{r['command']}`",
        "",
        f"{len(a['classes'])} PD classes × {a['studies']} studies × {a['subjects']} dosed subjects, the "
        "bundled study's design (14 daily 1 h infusions of pk_2c_iv_infusion, PK at 8 of 13 times, biomarker "
        "at 12 other times), cohorts at 0.3×, 1× and 3× the study's EC50/IC50 (typical C_ss,avg); PD typical "
        "values "
        f"drawn from each class's prior (see the script's docstring). Selectors: PD {a['checkpoint_pd']}, "
        f"PK {a['checkpoint_pk']}. Wall time {r['wall_s']:.0f} s (simulation {r['simulate_s']:.0f} s, "
        f"classification {r['classify_s']:.0f} s).",
        "",
        f"**{r['interpretation']}**",
        "",
        "| measure | value |",
        "|---|---:|",
        f"| study-level PD accuracy | {r['studies_correct']}/{r['n_studies']} = {r['study_accuracy']:.3f} "
        f"(95% CI {lo:.2f}-{hi:.2f}) |",
        f"| subject-level PD accuracy | {r['subject_accuracy']:.3f} "
        f"({r['n_subjects_classified']} subjects) |",
        f"| PD accuracy on the corpus test split (per subject) | {corpus} |",
        f"| PK selected pk_2c_iv_infusion | {r['pk_correct']}/{r['n_studies']} |",
        f"| studies not classified | {r['n_unclassified']} |",
        f"| subjects whose simulation failed (left out) | {r['n_failed_subjects']} |",
        "",
        "Per class (selected class of each study; subject accuracy; most frequent wrong subject call):",
        "",
        "| true class | studies right | selected | subject acc. | most common wrong |",
        "|---|---:|---|---:|---|",
    ]
    for c, v in r["per_class"].items():
        mw = v["most_common_wrong"]
        sa = "n/a" if v["subject_accuracy"] is None else f"{v['subject_accuracy']:.2f}"
        lines.append(f"| {c} | {v['studies_correct']}/{v['studies']} | "
                     f"{', '.join(_short(x) if x else '-' for x in v['selected'])} | {sa} | "
                     f"{f'{_short(mw[0])} ({mw[1]})' if mw else '-'} |")
    lines += ["", "Subject-level confusion matrix (rows: true class, columns: predicted):", "",
              "| true \\ predicted | " + " | ".join(_short(n) for n in names) + " |",
              "|---|" + "---:|" * len(names)]
    for n, row in zip(names, r["confusion_matrix_subjects"]):
        if sum(row):
            lines.append(f"| {_short(n)} | " + " | ".join(str(x) for x in row) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
