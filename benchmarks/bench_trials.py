"""Throughput of the in-silico trial's dose search (pkpd_jax.trials), and the example study's
true optimal doses.

Sections:

1. ``extremes``: `steady_state_extremes` on the fast path (exact unit-dose PK + Newton on the PD
   interval map + RK4 on 96 steps) for draws × virtual subjects × doses of one dose chunk (8
   doses), once daily and once weekly; best of ``--repeats`` after a compiling warm-up. Reported
   as (subject, dose) steady states per second = virtual subjects × doses × draws / s.
2. ``generic``: the simulator's generic steady state (iterated intervals, adaptive diffrax) on a
   small subset, for the speed-up of the fast path, and the largest difference between them.
3. ``search``: one full `search_doses` (virtual population, adaptive grid, coverage per draw)
   wall time, compile included and excluded.
4. ``truth`` (``--truth N``): the twelve true optimal doses of the bundled example study
   (`true_doses`, N virtual subjects at the truth) and their wall time.

Model: the example study's pk_2c_iv_infusion + pd_indirect_inhib_kin (1 h infusions), population
values at its truth with 5% posterior-like jitter per draw, threshold 3.3.

Usage::

    python benchmarks/bench_trials.py                     # 100 draws x 1000 subjects (a few minutes)
    python benchmarks/bench_trials.py --quick             # 10 x 200, writes trials_quick.{json,md}
    python benchmarks/bench_trials.py --truth 100000      # add the true doses (another few minutes)
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def posterior(n_draws: int, seed: int):
    from pkpd_jax.data.example import example_paths
    from pkpd_jax.trials.virtual import Posterior

    post = Posterior.from_truth(example_paths()[1], n_study=20_000, seed=seed)
    rng = np.random.default_rng(seed)
    vals = {}
    for k, v in post.values.items():
        if k in ("BW_CL", "BW_V"):
            vals[k] = v[0] + rng.normal(0.0, 0.05, n_draws)
        else:
            vals[k] = v[0] * np.exp(rng.normal(0.0, 0.05, n_draws))
    post.values = vals
    return post


def best_of(fn, repeats: int) -> tuple[float, list[float]]:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times), times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--draws", type=int, default=100)
    ap.add_argument("--virtual", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--generic-subjects", type=int, default=16)
    ap.add_argument("--truth", type=int, default=0, help="virtual subjects for the true doses (0 = skip)")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = ap.parse_args()
    if args.quick:
        args.draws, args.virtual, args.repeats, args.generic_subjects = 10, 200, 2, 4

    from pkpd_jax._x64 import enable_x64

    enable_x64()
    import jax

    from pkpd_jax.trials.dose_search import search_doses, true_doses
    from pkpd_jax.trials.exposure import steady_state_extremes
    from pkpd_jax.trials.virtual import CovariateDistribution, virtual_parameters

    info = {
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "jax": jax.__version__,
        "devices": [str(d) for d in jax.devices()],
        "loadavg_start": list(os.getloadavg()),
        "draws": args.draws,
        "virtual": args.virtual,
    }
    post = posterior(args.draws, args.seed)
    theta, _ = virtual_parameters(post, CovariateDistribution(), args.virtual, jax.random.key(args.seed))
    flat = theta.reshape(-1, theta.shape[-1])
    n_sub = flat.shape[0]
    results: dict = {"extremes": [], "generic": [], "search": []}

    for name, tau, step in (("daily", 24.0, 0.5), ("weekly", 168.0, 5.0)):
        doses = step * np.arange(1, 9)
        run = lambda: steady_state_extremes(post.model, flat, tau, doses, duration=1.0)  # noqa: E731
        t0 = time.perf_counter()
        ext = run()
        first = time.perf_counter() - t0
        best, times = best_of(run, args.repeats)
        rate = n_sub * doses.size / best
        log(
            f"{name}: {n_sub} subjects x {doses.size} doses: {best:.2f} s ({rate:,.0f} steady states/s; "
            f"first call {first:.1f} s)"
        )
        results["extremes"].append(
            {
                "regimen": name,
                "subjects": n_sub,
                "doses": int(doses.size),
                "best_s": best,
                "times_s": times,
                "first_call_s": first,
                "steady_states_per_s": rate,
                "generic_fallbacks": int(np.sum(np.asarray(ext.path))),
                "loadavg_1min": os.getloadavg()[0],
            }
        )
        sub = flat[: args.generic_subjects]
        gen = lambda: steady_state_extremes(post.model, sub, tau, doses, duration=1.0, method="generic")  # noqa: E731
        g_ext = gen()
        g_best, g_times = best_of(gen, 1)
        f_sub = steady_state_extremes(post.model, sub, tau, doses, duration=1.0)
        diff = float(
            np.max(
                np.abs(np.asarray(g_ext.max_resp) - np.asarray(f_sub.max_resp)) / np.asarray(g_ext.max_resp)
            )
        )
        g_rate = sub.shape[0] * doses.size / g_best
        log(
            f"{name} generic: {g_rate:,.1f} steady states/s (fast path {rate / g_rate:,.0f}x); "
            f"max rel. difference of the interval maximum {diff:.1e}"
        )
        results["generic"].append(
            {
                "regimen": name,
                "subjects": int(sub.shape[0]),
                "doses": int(doses.size),
                "best_s": g_best,
                "steady_states_per_s": g_rate,
                "speedup_fast": rate / g_rate,
                "max_rel_diff_max": diff,
            }
        )

    for name in ("daily", "weekly"):
        t0 = time.perf_counter()
        res = search_doses(post, name, theta=theta, threshold=3.3)
        wall = time.perf_counter() - t0
        t0 = time.perf_counter()
        res = search_doses(post, name, theta=theta, threshold=3.3)
        warm = time.perf_counter() - t0
        a90 = res.answer(0.9)
        work = n_sub * res.grid.size
        log(
            f"search {name}: grid up to {res.grid[-1]:g} mg ({res.grid.size} doses), {warm:.1f} s warm "
            f"({work / warm:,.0f} subject-doses/s), 90%: {a90['dose']} mg {a90['dose_interval']}"
        )
        results["search"].append(
            {
                "regimen": name,
                "grid_max": float(res.grid[-1]),
                "grid_doses": int(res.grid.size),
                "wall_first_s": wall,
                "wall_warm_s": warm,
                "subject_doses_per_s": work / warm,
                "dose_90": a90["dose"],
                "interval_90": a90["dose_interval"],
            }
        )

    if args.truth:
        results["truth"] = {}
        for cov in ("study", "generating"):
            t0 = time.perf_counter()
            truth = true_doses(n_virtual=args.truth, seed=1, covariates=cov)
            results["truth"][cov] = {
                "n_virtual": args.truth,
                "wall_s": time.perf_counter() - t0,
                "doses": truth,
            }
            log(f"true doses ({cov} covariates, {args.truth} virtual subjects): {json.dumps(truth)}")

    info["loadavg_end"] = list(os.getloadavg())
    payload = {"info": info, **results}
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "trials_quick" if args.quick else "trials"
    (args.out / f"{stem}.json").write_text(json.dumps(payload, indent=2) + "\n")
    md = [
        "# In-silico trial: dose-search throughput",
        "",
        f"{info['date']} · {info['platform']} · {info['cpus']} CPUs · jax {info['jax']} · load "
        f"{info['loadavg_start'][0]:.2f} → {info['loadavg_end'][0]:.2f} · {args.draws} draws × "
        f"{args.virtual} virtual subjects",
        "",
        f"Steady-state interval maxima (fast path), best of {args.repeats}; one chunk of 8 doses:",
        "",
        "| regimen | subjects × doses | time (s) | steady states / s | first call (s) |",
        "|---|---|---|---|---|",
    ]
    for r in results["extremes"]:
        md.append(
            f"| {r['regimen']} | {r['subjects']} × {r['doses']} | {r['best_s']:.2f} | "
            f"{r['steady_states_per_s']:,.0f} | {r['first_call_s']:.1f} |"
        )
    md += [
        "",
        "Generic path (iterated intervals, adaptive diffrax) on a subset:",
        "",
        "| regimen | subjects × doses | steady states / s | fast path speed-up | max rel. diff of max |",
        "|---|---|---|---|---|",
    ]
    for r in results["generic"]:
        md.append(
            f"| {r['regimen']} | {r['subjects']} × {r['doses']} | {r['steady_states_per_s']:,.1f} | "
            f"{r['speedup_fast']:,.0f}× | {r['max_rel_diff_max']:.1e} |"
        )
    md += [
        "",
        "Full dose search (adaptive grid, coverage per draw):",
        "",
        "| regimen | grid | first call (s) | warm (s) | subject-doses / s | 90% dose (interval) |",
        "|---|---|---|---|---|---|",
    ]
    for r in results["search"]:
        md.append(
            f"| {r['regimen']} | {r['grid_doses']} doses to {r['grid_max']:g} mg | {r['wall_first_s']:.1f} | "
            f"{r['wall_warm_s']:.1f} | {r['subject_doses_per_s']:,.0f} | {r['dose_90']} "
            f"({r['interval_90'][0]}–{r['interval_90'][1]}) |"
        )
    if "truth" in results:
        ts = results["truth"]
        n_t = ts["study"]["n_virtual"]
        md += [
            "",
            f"True optimal doses of the example study ({n_t} virtual subjects at the truth; covariates "
            "resampled from the study's subjects, as the fit-based answers do, or drawn from the "
            "generating distribution, BW uniform 50-100 kg and COMED 35%):",
            "",
            "| question | dose (mg), study covariates | coverage | dose (mg), generating | coverage |",
            "|---|---|---|---|---|",
        ]
        for k, v in ts["study"]["doses"].items():
            g = ts["generating"]["doses"][k]
            md.append(
                f"| {k} | {v['dose']} | {v['coverage_at_dose']:.4f} | {g['dose']} | "
                f"{g['coverage_at_dose']:.4f} |"
            )
    (args.out / f"{stem}.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
