"""Digital-twin simulation studies on the bundled example study's known truth.

(a) **Active vs fixed sampling.** Simulated patients (covariates and random effects drawn from the
    truth) receive 3 mg once daily for 14 days (1 h infusions, as the example study's middle
    cohort). Concentrations are sampled one at a time either on the fixed Phase 1 schedule of the
    example study (``PK_TIMES``, 13 samples in time order) or actively: each next time is the
    candidate after the previous sample that maximises the expected reduction of the posterior
    variance of log CL (`pkpd_jax.twin.active`). After each sample the twin's posterior
    (MAP + Laplace, population fixed at the truth) is updated with the simulated observation; the
    number of samples needed is the first count at which the posterior SD of log CL (about the
    CV of CL) is at most the target. Patients not reaching it within the 13 samples count as 14
    (censored; reported).
(b) **Calibration of the recommendation.** Simulated patients receive 3 mg once daily for a week
    with sparse sampling (4 concentrations, 5 biomarker values); the twin recommends, for stated
    probabilities p, the lowest daily dose (0.5 mg grid) with P(steady-state biomarker < 3.3 over
    the whole interval) >= p. The truth decides: the fraction of patients whose *true* steady-state
    biomarker maximum at their recommended dose is below the threshold is compared with p (and
    with the mean predicted probability at the recommended doses).

Usage::

    python experiments/twin_study.py OUT_DIR [--quick] [--seed 0] [--n-active N] [--n-calib N]

writes ``OUT_DIR/twin_study.json``, ``OUT_DIR/twin_study.md`` and ``OUT_DIR/twin_study.png``.
``--quick`` (20 + 100 patients) is sized for a nox session; the full study uses 100 + 500.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from pkpd_jax.data.example import individual_parameters


TARGETS = (0.20, 0.15, 0.10)
MAIN_TARGET = 0.15
PROBABILITIES = (0.5, 0.75, 0.9)
THRESHOLD = 3.3


def _patients(truth: dict, n: int, rng) -> tuple[np.ndarray, np.ndarray, dict]:
    """Covariates and true individual parameters drawn from the truth (the example study's
    generator; body weight uniform on 50-100 kg)."""
    bw = rng.uniform(50.0, 100.0, n)
    comed = (rng.uniform(size=n) < truth["covariates"]["COMED_probability"]).astype(float)
    return bw, comed, individual_parameters(rng, bw, comed, truth)


def _noisy(f, sp, sa, rng):
    return f * (1 + sp * rng.normal(size=np.shape(f))) + sa * rng.normal(size=np.shape(f))


# ---------------------------------------------------------------------------- (a)
def study_active(
    pop, truth, n: int, seed: int, log=print, max_time: float | None = None, window: float | None = None
) -> dict:
    """`max_time`: active candidates only up to this time (h), e.g. 311.5 for 'while on treatment'
    (before the last dose) instead of the whole fixed schedule's span. `window`: each next active
    sample at most this many hours after the previous one (the first within `window` h of the
    first dose): a time-limited design."""
    import jax.numpy as jnp

    from pkpd_jax.data.example import PK_TIMES
    from pkpd_jax.dosing import Regimen
    from pkpd_jax.solve import SolverConfig, simulate_population
    from pkpd_jax.twin.active import expected_variance, sensitivities, target_direction
    from pkpd_jax.twin.posterior import PatientRecord, individual_posteriors

    rng = np.random.default_rng(seed)
    model = pop.model
    bw, comed, ind = _patients(truth, n, rng)
    theta = np.asarray(model.pack({k: jnp.asarray(v) for k, v in ind.items()}))
    reg = Regimen.repeated(3.0, 24.0, 14, duration=1.0)
    res = truth["residual"]
    sp, sa = res["sigma_prop_PK"], res["sigma_add_PK"]
    fixed = np.asarray(PK_TIMES, float)
    k_max = fixed.size
    cand = np.unique(np.r_[np.arange(0.5, 24.0, 0.5), np.arange(24.0, fixed.max() + 0.1, 2.0)])
    if max_time is not None:
        cand = cand[cand <= max_time]

    def truth_conc(times):  # (n, T) exact concentrations of the true patients
        sol = simulate_population(
            model, theta, reg, jnp.asarray(times), config=SolverConfig(rtol=1e-10, atol=1e-12)
        )
        return np.asarray(sol.conc)

    def empty(i):
        return PatientRecord.from_arrays(
            f"a{i}", {"BW": bw[i], "COMED": comed[i]}, reg, np.zeros(0), np.zeros(0), np.zeros(0, int)
        ).with_slots(k_max)

    # independent noise streams for the two arms (the same patient, different samples)
    out = {}
    for arm in ("fixed", "active"):
        t0 = time.perf_counter()
        recs = [empty(i) for i in range(n)]
        posts = individual_posteriors(pop, recs)
        sd = np.full((n, k_max + 1), np.nan)
        sd[:, 0] = [p.log_param_moments("CL")[1] for p in posts]
        times = np.zeros((n, k_max))
        last = np.full(n, -np.inf)
        for k in range(k_max):
            if arm == "fixed":
                t_new = np.full(n, fixed[k])
            else:
                cq = [target_direction(p, "CL") for p in posts]  # (c (K, B), q (K,)) each
                f, J, status = sensitivities(posts, cand, regimens=[reg] * n)
                t_new = np.empty(n)
                for i, p in enumerate(posts):
                    _, v1 = expected_variance(p, f[i], J[i], *cq[i])
                    ok = cand > last[i] + 0.25
                    if window is not None:
                        ok &= cand <= max(last[i], 0.0) + window
                    v1 = np.where(ok & np.all(status[i] == 0), v1, np.inf)
                    t_new[i] = cand[int(np.argmin(v1))] if np.isfinite(v1).any() else cand[-1]
            conc = truth_conc(t_new[:, None])[:, 0] if arm == "active" else truth_conc(t_new[:1])[:, 0]
            y = _noisy(conc, sp, sa, rng)
            recs = [r.with_observation(float(t_new[i]), float(y[i]), 1) for i, r in enumerate(recs)]
            eta0 = np.stack([p.eta for p in posts])
            posts = individual_posteriors(pop, recs, eta0=eta0)
            sd[:, k + 1] = [p.log_param_moments("CL")[1] for p in posts]
            times[:, k] = t_new
            last = t_new
            log(
                f"  (a) {arm}: sample {k + 1}/{k_max}, mean SD(log CL) {sd[:, k + 1].mean():.3f} "
                f"({time.perf_counter() - t0:.0f} s)"
            )
            if np.all(sd[:, k + 1] <= min(TARGETS)):
                sd[:, k + 2 :] = sd[:, k + 1 : k + 2]
                break
        m = np.array([p.log_param_moments("CL")[0] for p in posts])
        s = np.array([p.log_param_moments("CL")[1] for p in posts])
        cover = np.abs(np.log(ind["CL"]) - m) <= 1.645 * s
        out[arm] = {
            "sd_log_cl": sd,
            "times": times,
            "coverage90_final": float(cover.mean()),
            "wall_s": time.perf_counter() - t0,
        }

    summary = {
        "n_patients": n,
        "regimen": "3 mg once daily x 14, 1 h infusion",
        "fixed_schedule_h": fixed.tolist(),
        "candidates": f"{cand.size} times, every 0.5 h on day 1 then every 2 h to {cand.max():g} h, each "
        "after the previous sample",
        "targets": {},
    }
    for target in TARGETS:
        row = {}
        for arm in ("fixed", "active"):
            sd = out[arm]["sd_log_cl"]
            reached = sd[:, 1:] <= target
            n_needed = np.where(reached.any(1), reached.argmax(1) + 1, k_max + 1)
            hit = reached.any(1)
            t_hit = out[arm]["times"][np.flatnonzero(hit), n_needed[hit] - 1]
            row[arm] = {
                # clock time (h from the first dose) of the sample that reached the target
                "median_time_to_target_h": float(np.median(t_hit)) if t_hit.size else None,
                "mean_samples": float(n_needed.mean()),
                "median_samples": float(np.median(n_needed)),
                "censored": int(np.sum(~reached.any(1))),
            }
        row["reduction"] = 1.0 - row["active"]["mean_samples"] / row["fixed"]["mean_samples"]
        summary["targets"][f"{target:.2f}"] = row
    summary["mean_sd_log_cl"] = {arm: out[arm]["sd_log_cl"].mean(0).tolist() for arm in out}
    summary["coverage90_final"] = {arm: out[arm]["coverage90_final"] for arm in out}
    summary["first_active_times_h"] = {"median": np.median(out["active"]["times"][:, :4], 0).tolist()}
    summary["wall_s"] = {arm: out[arm]["wall_s"] for arm in out}
    return summary


# ---------------------------------------------------------------------------- (b)
def study_calibration(pop, truth, n: int, seed: int, n_samples: int = 200, log=print) -> dict:
    import jax.numpy as jnp

    from pkpd_jax.dosing import Regimen
    from pkpd_jax.solve import SolverConfig, simulate_population
    from pkpd_jax.trials.dose_search import REGIMENS
    from pkpd_jax.trials.exposure import steady_state_extremes
    from pkpd_jax.twin.forecast import DoseTable
    from pkpd_jax.twin.posterior import PatientRecord, individual_posteriors

    rng = np.random.default_rng(seed + 1)
    model = pop.model
    bw, comed, ind = _patients(truth, n, rng)
    theta = np.asarray(model.pack({k: jnp.asarray(v) for k, v in ind.items()}))
    reg = Regimen.repeated(3.0, 24.0, 7, duration=1.0)
    t_pk = np.array([1.5, 23.5, 71.5, 143.5])
    t_pd = np.array([0.0, 24.0, 72.0, 120.0, 144.0])
    ts = np.r_[t_pk, t_pd]
    sol = simulate_population(
        model, theta, reg, jnp.asarray(ts), config=SolverConfig(rtol=1e-10, atol=1e-12)
    )
    res = truth["residual"]
    conc = _noisy(np.asarray(sol.conc)[:, :4], res["sigma_prop_PK"], res["sigma_add_PK"], rng)
    resp = _noisy(np.asarray(sol.resp)[:, 4:], res["sigma_prop_PD"], res["sigma_add_PD"], rng)
    lloq = truth["design"]["lloq_mg_per_L"]
    recs = []
    for i in range(n):
        blq = np.r_[conc[i] < lloq, np.zeros(5, bool)]
        dv = np.r_[np.where(conc[i] < lloq, lloq, conc[i]), resp[i]]
        recs.append(
            PatientRecord.from_arrays(
                f"c{i}",
                {"BW": bw[i], "COMED": comed[i]},
                reg,
                ts,
                dv,
                np.r_[np.ones(4, int), np.full(5, 2)],
                blq=blq,
            )
        )
    t0 = time.perf_counter()
    posts = []
    for lo in range(0, n, 100):
        posts += individual_posteriors(pop, recs[lo : lo + 100])
        log(f"  (b) posteriors {len(posts)}/{n} ({time.perf_counter() - t0:.0f} s)")
    spec = REGIMENS["daily"]
    doses = spec.step * np.arange(1, 121)  # up to 60 mg daily
    draws = np.concatenate([p.sample(n_samples, seed=seed + i) for i, p in enumerate(posts)])
    ext = steady_state_extremes(model, draws, spec.tau, doses, duration=1.0, throw=False)
    mx = np.where(np.asarray(ext.status) == 0, np.asarray(ext.max_resp), np.inf).reshape(
        n, n_samples, -1
    )
    true_mx = np.asarray(steady_state_extremes(model, theta, spec.tau, doses, duration=1.0).max_resp)
    log(
        f"  (b) steady state of {n} x {n_samples} draws x {doses.size} doses "
        f"({time.perf_counter() - t0:.0f} s)"
    )
    tables = [DoseTable(spec, doses, mx[i], 1.0) for i in range(n)]
    summary = {
        "n_patients": n,
        "posterior_draws": n_samples,
        "threshold": THRESHOLD,
        "design": "3 mg once daily x 7 (1 h infusion); PK at 1.5, 23.5, 71.5, 143.5 h; biomarker at "
        "0, 24, 72, 120, 144 h",
        "probabilities": {},
    }
    for p in PROBABILITIES:
        rec = np.array([t.recommend(p, THRESHOLD) or np.nan for t in tables])
        ok = np.isfinite(rec)
        idx = np.searchsorted(doses, rec[ok])
        achieved = true_mx[np.flatnonzero(ok), idx] < THRESHOLD
        pred = np.array([tables[i].probability(THRESHOLD)[j] for i, j in zip(np.flatnonzero(ok), idx)])
        frac = float(achieved.mean())
        se = float(np.sqrt(p * (1 - p) / ok.sum()))
        # the same patients' oracle: the lowest grid dose that suppresses the true patient
        true_need = np.array(
            [doses[np.argmax(r < THRESHOLD)] if np.any(r < THRESHOLD) else np.nan for r in true_mx]
        )
        summary["probabilities"][f"{p:g}"] = {
            "achieved_fraction": frac,
            "binomial_se_at_p": se,
            "mean_predicted_probability": float(pred.mean()),
            "no_recommendation": int((~ok).sum()),
            "median_recommended_dose": float(np.median(rec[ok])),
            "median_excess_over_true_need_mg": float(np.nanmedian(rec[ok] - true_need[ok])),
            "within_2se": bool(frac >= p - 2 * se),
        }
    # reliability over all patient x dose pairs with 0 < P < 1
    P = np.stack([t.probability(THRESHOLD) for t in tables])  # (n, doses)
    truth_ok = true_mx < THRESHOLD
    bins = np.linspace(0, 1, 11)
    which = np.clip(np.digitize(P, bins) - 1, 0, 9)
    rel = []
    for b in range(10):
        sel = (which == b) & (P > 0) & (P < 1)
        if sel.sum() >= 20:
            rel.append(
                {
                    "bin": [float(bins[b]), float(bins[b + 1])],
                    "mean_predicted": float(P[sel].mean()),
                    "observed": float(truth_ok[sel].mean()),
                    "n": int(sel.sum()),
                }
            )
    summary["reliability"] = rel
    summary["wall_s"] = time.perf_counter() - t0
    return summary


# ---------------------------------------------------------------------------- output
def _plot(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(11, 4.2))
    a = res["active"]
    for arm, style in (("fixed", "s-"), ("active", "o-")):
        y = a["mean_sd_log_cl"][arm]
        ax[0].plot(np.arange(len(y)), y, style, label=f"{arm} schedule")
    ax[0].axhline(MAIN_TARGET, color="r", ls="--", lw=1, label=f"target {MAIN_TARGET:g}")
    ax[0].set_xlabel("concentration samples")
    ax[0].set_ylabel("mean posterior SD of log CL (~CV)")
    ax[0].set_title(f"(a) {a['n_patients']} simulated patients")
    ax[0].legend()
    ax[0].grid(alpha=0.3)
    c = res["calibration"]
    rel = c["reliability"]
    ax[1].plot([0, 1], [0, 1], "k:", lw=1)
    ax[1].plot(
        [r["mean_predicted"] for r in rel],
        [r["observed"] for r in rel],
        "o-",
        label="all patient x dose pairs",
    )
    for p, v in c["probabilities"].items():
        ax[1].plot(float(p), v["achieved_fraction"], "r*", ms=12)
        ax[1].annotate(
            f"p={p}: {v['achieved_fraction']:.3f}",
            (float(p), v["achieved_fraction"]),
            textcoords="offset points",
            xytext=(-60, 8),
            fontsize=8,
        )
    ax[1].set_xlabel("predicted probability of suppression")
    ax[1].set_ylabel("fraction truly suppressed")
    ax[1].set_title(f"(b) {c['n_patients']} patients (stars: at the recommended dose)")
    ax[1].legend(loc="upper left", fontsize=8)
    ax[1].grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _markdown(res: dict) -> str:
    a, c = res["active"], res["calibration"]
    lines = [
        "# Digital-twin studies",
        "",
        f"Command: `{res['command']}` (seed {res['seed']}).",
        "",
        "## (a) Active vs fixed Phase 1 sampling",
        "",
        f"{a['n_patients']} simulated patients, {a['regimen']}; population fixed at the truth. "
        "Samples needed until the posterior SD of log CL <= target (censored at 14).",
        "",
        "| target SD(log CL) | fixed: mean (median) | active: mean (median) | reduction "
        "| censored fixed/active | median time to target (h) fixed/active |",
        "|---|---|---|---|---|---|",
    ]
    for t, row in a["targets"].items():
        f, ac = row["fixed"], row["active"]
        lines.append(
            f"| {t} | {f['mean_samples']:.2f} ({f['median_samples']:g}) | {ac['mean_samples']:.2f} "
            f"({ac['median_samples']:g}) | {100 * row['reduction']:.0f}% | {f['censored']}/{ac['censored']} "
            f"| {f.get('median_time_to_target_h')}/{ac.get('median_time_to_target_h')} |"
        )
    lines += [
        "",
        f"Coverage of the true CL by the final 90% Laplace interval: fixed "
        f"{a['coverage90_final']['fixed']:.2f}, active {a['coverage90_final']['active']:.2f}. "
        "Median first active sampling times (h): "
        f"{[round(x, 1) for x in a['first_active_times_h']['median']]}.",
        "",
        "## (b) Calibration of the dose recommendation",
        "",
        f"{c['n_patients']} simulated patients; {c['design']}; threshold {c['threshold']}; "
        f"{c['posterior_draws']} posterior draws per patient.",
        "",
        "| stated p | truly suppressed at the recommended dose | ±2 SE | mean predicted P | median dose (mg) "
        "| no recommendation |",
        "|---|---|---|---|---|---|",
    ]
    for p, v in c["probabilities"].items():
        lines.append(
            f"| {p} | {v['achieved_fraction']:.3f} | {2 * v['binomial_se_at_p']:.3f} | "
            f"{v['mean_predicted_probability']:.3f} | {v['median_recommended_dose']:g} | "
            f"{v['no_recommendation']} |"
        )
    lines += [
        "",
        "Reliability (patient x dose pairs with 0 < P < 1):",
        "",
        "| predicted | observed | n |",
        "|---|---|---|",
    ]
    lines += [
        f"| {r['mean_predicted']:.3f} | {r['observed']:.3f} | {r['n']} |" for r in c["reliability"]
    ]
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--quick", action="store_true", help="20 + 100 patients (nox-sized)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n-active", type=int, default=None)
    ap.add_argument("--n-calib", type=int, default=None)
    ap.add_argument("--skip", choices=("active", "calibration"), default=None)
    ap.add_argument(
        "--active-window",
        type=float,
        default=None,
        help="each next active sample within this many hours of the previous one",
    )
    ap.add_argument(
        "--active-max-time",
        type=float,
        default=None,
        help="restrict active candidates to times <= this (h), e.g. 311.5 = before the last dose",
    )
    args = ap.parse_args(argv)
    from pkpd_jax._x64 import enable_x64

    enable_x64()
    from pkpd_jax.data.example import example_paths
    from pkpd_jax.twin.posterior import TwinPopulation

    truth = json.loads(example_paths()[1].read_text())
    pop = TwinPopulation.from_truth(truth)
    n_a = args.n_active or (20 if args.quick else 100)
    n_c = args.n_calib or (100 if args.quick else 500)
    args.out.mkdir(parents=True, exist_ok=True)
    cmd = (
        "python experiments/twin_study.py OUT"
        + (" --quick" if args.quick else "")
        + f" --seed {args.seed}"
        + ("" if args.active_max_time is None else f" --active-max-time {args.active_max_time:g}")
        + ("" if args.active_window is None else f" --active-window {args.active_window:g}")
    )
    res = {"command": cmd, "seed": args.seed}
    t0 = time.perf_counter()
    if args.skip != "active":
        print(f"(a) active vs fixed sampling, {n_a} patients")
        res["active"] = study_active(
            pop, truth, n_a, args.seed, max_time=args.active_max_time, window=args.active_window
        )
        (args.out / "twin_study_active.json").write_text(json.dumps(res["active"], indent=2) + "\n")
    if args.skip != "calibration":
        print(f"(b) calibration, {n_c} patients")
        res["calibration"] = study_calibration(pop, truth, n_c, args.seed)
    res["wall_s"] = time.perf_counter() - t0
    (args.out / "twin_study.json").write_text(json.dumps(res, indent=2) + "\n")
    if "active" in res and "calibration" in res:
        (args.out / "twin_study.md").write_text(_markdown(res))
        _plot(res, args.out / "twin_study.png")
    print(json.dumps({k: v for k, v in res.items() if k in ("active", "calibration")}, indent=1)[:4000])
    return res


if __name__ == "__main__":
    main()
