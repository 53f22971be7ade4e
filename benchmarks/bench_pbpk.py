"""Throughput of the whole-body PBPK model next to a compartmental model (see benchmarks/README.md).

Scenario: ``n`` virtual adult humans (default 10,000), 100 mg once daily for 7 days, 25
observations over 0-168 h, float64, both models through the same `simulate_population` (default
``method="auto"``: both are linear, so both use the exact matrix-exponential path).

- ``pbpk_whole_body`` (15 states, 43 parameters), oral doses into the gut lumen. Physiology varies
  by body weight (log-normal, median 73 kg, 20% CV; volumes ∝ BW, flows and GFR ∝ BW^0.75, exactly
  as `pkpd_jax.pbpk.physiology(species, bw)`) with 10% CV log-normal noise on every organ volume
  and flow on top, and 30% CV on CLint; the drug is `REFERENCE_DRUG`.
- ``pk_2c_iv`` (2 states, 4 parameters), IV bolus doses, 30% CV on CL, V1, Q, V2.

Timing is best of ``--repeats`` runs after a warm-up call that also compiles.

Usage::

    nice -n 15 python benchmarks/bench_pbpk.py            # 10,000 subjects
    nice -n 15 python benchmarks/bench_pbpk.py --quick    # 1,000 subjects (smoke run)

Results go to ``<out>/pbpk.json`` and ``<out>/pbpk.md`` (``pbpk_quick.*`` with ``--quick``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import time
from pathlib import Path

import numpy as np


DOSE, TAU, N_DOSES = 100.0, 24.0, 7
TS = np.linspace(0.0, 168.0, 25)
BW_MEDIAN, BW_CV, PHYS_CV, CLINT_CV, PK_CV = 73.0, 0.20, 0.10, 0.30, 0.30
TYPICAL_2C = {"CL": 3.0, "V1": 20.0, "Q": 4.0, "V2": 150.0}


def _lognormal(rng, shape, cv):
    return np.exp(np.sqrt(np.log1p(cv**2)) * rng.standard_normal(shape))


def pbpk_population(n: int, seed: int) -> tuple[np.ndarray, list[str]]:
    from pkpd_jax.models import get_model
    from pkpd_jax.pbpk import REFERENCE_DRUG, pbpk_params

    model = get_model("pbpk_whole_body")
    names = list(model.param_names)
    ref = pbpk_params("human", REFERENCE_DRUG)
    rng = np.random.default_rng(seed)
    bw = BW_MEDIAN * _lognormal(rng, n, BW_CV)
    theta = np.tile(np.array([ref[k] for k in names]), (n, 1))
    s = bw / 73.0
    for j, k in enumerate(names):
        if k.startswith("V_"):
            theta[:, j] *= s * _lognormal(rng, n, PHYS_CV)
        elif k.startswith("Q_") or k == "GFR":
            theta[:, j] *= s**0.75 * _lognormal(rng, n, PHYS_CV)
        elif k == "CLint":
            theta[:, j] *= _lognormal(rng, n, CLINT_CV)
    # The body-weight scaling is the library's own (checked on one subject without noise).
    check = pbpk_params("human", REFERENCE_DRUG, bw=90.0)
    assert abs(check["V_liver"] / ref["V_liver"] - 90.0 / 73.0) < 1e-12
    assert abs(check["Q_muscle"] / ref["Q_muscle"] - (90.0 / 73.0) ** 0.75) < 1e-12
    return theta, names


def compartmental_population(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed + 1)
    return np.asarray(list(TYPICAL_2C.values())) * _lognormal(rng, (n, 4), PK_CV)


def timed(fn, repeats):
    t0 = time.perf_counter()
    out = fn()
    first = time.perf_counter() - t0
    runs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        runs.append(time.perf_counter() - t0)
    return first, runs, out


def bench(n: int, seed: int, repeats: int, chunk: int | None):
    import jax
    import jax.numpy as jnp

    from pkpd_jax.dosing import Regimen
    from pkpd_jax.models import get_model
    from pkpd_jax.pbpk import ORAL_CMT, clearance_analytic
    from pkpd_jax.solve import simulate_population

    records = []
    cases = {
        "pbpk_whole_body (oral)": (get_model("pbpk_whole_body"), pbpk_population(n, seed)[0],
                                   Regimen.repeated(DOSE, TAU, N_DOSES, cmt=ORAL_CMT)),
        "pk_2c_iv (IV bolus)": (get_model("pk_2c_iv"), compartmental_population(n, seed),
                                Regimen.repeated(DOSE, TAU, N_DOSES)),
    }
    for label, (model, theta, reg) in cases.items():
        theta = jnp.asarray(theta)
        ts = jnp.asarray(TS)

        def run():
            sol = simulate_population(model, theta, reg, ts, chunk_size=chunk)
            return jax.block_until_ready(sol)

        first, runs, sol = timed(run, repeats)
        best = min(runs)
        rec = {
            "config": label,
            "model": model.name,
            "n": n,
            "n_states": model.n_states,
            "n_params": len(model.param_names),
            "traj_per_s": n / best,
            "run_s": best,
            "runs_s": runs,
            "first_call_s": first,
            "compile_s_approx": first - best,
            "failed": int(np.sum(np.asarray(sol.status) != 0)),
            "loadavg_1min": os.getloadavg()[0],
        }
        if model.name == "pbpk_whole_body":
            cl = np.asarray(clearance_analytic(theta))
            rec["clearance_L_h_median"] = float(np.median(cl))
            rec["cmax_mg_L_median"] = float(np.median(np.max(np.asarray(sol.conc), axis=1)))
        records.append(rec)
        print(f"{label}: {rec['traj_per_s']:,.0f} subjects/s (run {best:.2f} s, first call "
              f"{first:.2f} s)", flush=True)
    ratio = records[1]["traj_per_s"] / records[0]["traj_per_s"]
    return records, ratio


def machine_info():
    import diffrax
    import jax

    return {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "jax": jax.__version__,
        "diffrax": diffrax.__version__,
        "backend": jax.default_backend(),
        "device_count": jax.device_count(),
        "x64": bool(jax.config.jax_enable_x64),
        "loadavg_start": list(os.getloadavg()),
    }


def markdown(result) -> str:
    m, a = result["machine"], result["args"]
    lines = [
        "# PBPK simulation throughput",
        "",
        f"{m['date']} · {m['platform']} · {m['cpu_count']} CPUs · {m['backend']} · jax {m['jax']} "
        f"· diffrax {m['diffrax']} · load avg {m['loadavg_start'][0]:.2f} → {m['loadavg_end'][0]:.2f}",
        "",
        f"Scenario: {a['n']:,} virtual adults, {N_DOSES} × {DOSE:g} mg every {TAU:g} h, "
        f"{TS.size} observations over 0–{TS[-1]:g} h, float64, `simulate_population` with the default "
        "method (exact matrix exponentials for both linear models). PBPK: body weight log-normal "
        f"(median {BW_MEDIAN:g} kg, {BW_CV:.0%} CV; volumes ∝ BW, flows and GFR ∝ BW^0.75), "
        f"{PHYS_CV:.0%} CV on every volume and flow, {CLINT_CV:.0%} CV on CLint; pk_2c_iv: "
        f"{PK_CV:.0%} CV on CL, V1, Q, V2. Best of {a['repeats']} runs after a warm-up call.",
        "",
        "| model | states | params | n | subjects/s | run s | first call s | failed |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["records"]:
        lines.append(
            f"| {r['config']} | {r['n_states']} | {r['n_params']} | {r['n']:,} | "
            f"{r['traj_per_s']:,.0f} | {r['run_s']:.2f} | {r['first_call_s']:.2f} | {r['failed']} |"
        )
    lines += [
        "",
        f"Compartmental ÷ PBPK throughput: **{result['ratio_compartmental_over_pbpk']:.1f}×**.",
        "",
    ]
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--quick", action="store_true", help="1,000 subjects, 2 repeats")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--chunk-size", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = ap.parse_args(argv)
    if args.quick:
        args.n, args.repeats = min(args.n, 1000), 2

    from pkpd_jax._x64 import enable_x64

    enable_x64()
    info = machine_info()
    records, ratio = bench(args.n, args.seed, args.repeats, args.chunk_size)
    info["loadavg_end"] = list(os.getloadavg())
    result = {
        "machine": info,
        "args": {"n": args.n, "repeats": args.repeats, "seed": args.seed, "quick": args.quick,
                 "chunk_size": args.chunk_size},
        "scenario": {"dose_mg": DOSE, "interval_h": TAU, "n_doses": N_DOSES, "times_h": TS.tolist(),
                     "bw_median_kg": BW_MEDIAN, "bw_cv": BW_CV, "physiology_cv": PHYS_CV,
                     "clint_cv": CLINT_CV, "compartmental_typical": TYPICAL_2C,
                     "compartmental_cv": PK_CV},
        "records": records,
        "ratio_compartmental_over_pbpk": ratio,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "pbpk_quick" if args.quick else "pbpk"
    (args.out / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    md = markdown(result)
    (args.out / f"{stem}.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
