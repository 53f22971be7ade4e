"""Throughput of the model-selection corpus generator (see benchmarks/README.md).

For each family (the mix of its 10 classes, the default designs, noise and shard layout) and each
device count (``XLA_FLAGS=--xla_force_host_platform_device_count=K``, set in a subprocess before
JAX starts):

1. **end to end**: `generate_corpus` of ``--shards`` shards of ``--shard-size`` trajectories in a
   fresh directory, wall time from call to return (sampling, simulation, noise, features,
   parquet, checksums, manifest). The same corpus is made twice: the first call compiles
   (every class, and the fallback integrator for the classes that hit it), the second is timed;
   the difference is the one-time compile cost. Extrapolation to the reference study's 10M
   trajectories: one-time compile + 10M / rate.
2. **simulation only, per class**: `simulate_shard` on one shard's rows of each class (default
   path: float32 one-loop Runge-Kutta, stiffness-sorted batches) and the harmonic mix.
3. **alternatives** (full run only, largest device count, ``--alt-subjects`` per class): the same
   path unsorted and in float64, and `simulate_population` (float64, rtol 1e-6, atol 1e-9,
   matrix exponentials for linear models), compile excluded.
4. **accuracy** (full run only): the default path against `simulate_population` at rtol 1e-10,
   atol 1e-12 (float64) on ``--acc-subjects`` per class: relative error of concentrations above
   the subject's LLOQ (the values the features use) and, for PD, of the biomarker relative to
   its baseline.

Usage::

    python benchmarks/bench_corpus.py            # 5 shards x 20k per family, 2 and 1 devices (~15 min)
    python benchmarks/bench_corpus.py --quick    # 2 shards x 5k, 2 devices, no alternatives (~3 min)

Results: ``<out>/corpus.json`` and ``corpus.md`` (``corpus_quick.*`` with ``--quick``).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


REFERENCE_N = 10_000_000
TARGET_S = 15 * 60


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- worker
def _classes(family):
    from pkpd_jax.amortized.batches import class_names

    return class_names(family)


def end_to_end(family: str, shard_size: int, shards: int, workdir: Path) -> dict:
    """Make the corpus twice in fresh directories: the first call compiles (every class, and the
    fallback for the classes that need it), the second runs compiled; the one-time compile cost is
    their difference and is added to the 10M extrapolation."""
    from pkpd_jax.amortized.corpus import generate_corpus

    n = shard_size * shards
    t0 = time.perf_counter()
    generate_corpus(workdir / "first", family, n, 0, shard_size=shard_size, progress=False)
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    man = generate_corpus(workdir / "timed", family, n, 0, shard_size=shard_size, progress=False)
    wall = time.perf_counter() - t0
    size = sum(s["bytes"] for s in man["shards"])
    compile_s = max(first - wall, 0.0)
    rec = {
        "n": n,
        "shard_size": shard_size,
        "seconds": wall,
        "traj_per_s": n / wall,
        "first_call_s": first,
        "compile_once_s": compile_s,
        "failed": man["counts"]["failed"],
        "fallback": sum(s["fallback"] for s in man["shards"]),
        "bytes_per_traj": size / n,
        "extrapolated_10M_min": (compile_s + REFERENCE_N / (n / wall)) / 60,
        "loadavg_1min": os.getloadavg()[0],
    }
    log(f"[{family}] end to end: {rec['traj_per_s']:,.0f} traj/s (first call {first:.1f} s) -> 10M in "
        f"{rec['extrapolated_10M_min']:.1f} min (failed {rec['failed']}, fallback {rec['fallback']}, "
        f"load {rec['loadavg_1min']:.1f})")
    return rec


def per_class(family: str, shard_size: int) -> dict:
    """Simulation-only rate per class on one shard's rows (compiled by the warm-up)."""
    from pkpd_jax.amortized.corpus import CorpusConfig, sample_shard, simulate_shard

    cfg = CorpusConfig(family=family, n=shard_size * 2, seed=0, shard_size=shard_size)
    draw = sample_shard(cfg, 1)
    out = {}
    for k, name in enumerate(cfg.classes):
        rows = draw["label"] == k
        sub = {key: v[rows] for key, v in draw.items()}
        sub["label"] = np.zeros(rows.sum(), np.int32)
        one = dataclasses.replace(cfg, classes=(name,))
        simulate_shard(one, sub)  # compile this batch shape
        t0 = time.perf_counter()
        sim = simulate_shard(one, sub)
        sec = time.perf_counter() - t0
        out[name] = {"n": int(rows.sum()), "traj_per_s": rows.sum() / sec,
                     "failed_fast_path": int(sim["fallback"].sum())}
    total = sum(v["n"] for v in out.values()) / sum(v["n"] / v["traj_per_s"] for v in out.values())
    log(f"[{family}] simulation only, harmonic mix: {total:,.0f} traj/s")
    return {"classes": out, "mix_traj_per_s": total}


def _subset(family: str, name: str, m: int, seed: int):
    from pkpd_jax.amortized.corpus import CorpusConfig, sample_shard

    cfg = CorpusConfig(family=family, n=m, seed=seed, shard_size=m, classes=(name,))
    return cfg, sample_shard(cfg, 0)


def _population(cfg, draw, name, rtol, atol):
    """`simulate_population` (float64) on a class subset: (conc, resp, status, seconds, first_s)."""
    import jax

    from pkpd_jax.amortized.corpus import class_args, class_model
    from pkpd_jax.dosing import Regimen
    from pkpd_jax.solve import SolverConfig, simulate_population

    model = class_model(cfg, name)
    rows = np.arange(draw["label"].size)
    with jax.enable_x64(True):
        th, t, a, d, c, ts = class_args(cfg, draw, name, rows, np.float64)
        reg = Regimen(t, a, d, c)
        conf = SolverConfig(rtol=rtol, atol=atol)
        run = lambda: jax.block_until_ready(simulate_population(model, th, reg, ts, config=conf, throw=False))
        t0 = time.perf_counter()
        run()
        first = time.perf_counter() - t0
        t0 = time.perf_counter()
        sol = run()
        sec = time.perf_counter() - t0
    return np.asarray(sol.conc), np.asarray(sol.resp), np.asarray(sol.status), sec, first


def alternatives(family: str, m: int) -> dict:
    from pkpd_jax.amortized.corpus import simulate_shard

    out = {}
    for name in _classes(family):
        cfg, draw = _subset(family, name, m, 5)
        rec = {}
        for label, kw in (("default (float32, sorted)", {}), ("unsorted", {"sort": False})):
            simulate_shard(cfg, draw, **kw)
            t0 = time.perf_counter()
            simulate_shard(cfg, draw, **kw)
            rec[label] = m / (time.perf_counter() - t0)
        c64 = dataclasses.replace(cfg, dtype="float64")
        simulate_shard(c64, draw)
        t0 = time.perf_counter()
        simulate_shard(c64, draw)
        rec["float64"] = m / (time.perf_counter() - t0)
        *_, sec, first = _population(cfg, draw, name, 1e-6, 1e-9)
        rec["simulate_population (float64)"] = m / sec
        rec["simulate_population compile+first s"] = first
        out[name] = rec
        log(f"[{family}] {name}: " + ", ".join(f"{k} {v:,.0f}" for k, v in rec.items()))
    return out


def accuracy(family: str, m: int) -> dict:
    from pkpd_jax.amortized.corpus import simulate_shard

    out = {}
    for name in _classes(family):
        cfg, draw = _subset(family, name, m, 9)
        sim = simulate_shard(cfg, draw)
        c_ref, r_ref, st_ref, *_ = _population(cfg, draw, name, 1e-10, 1e-12)
        ok = (sim["status"] == 0) & (st_ref == 0)
        lloq = draw["lloq_rel"] * c_ref.max(axis=1)
        above = ok[:, None] & (c_ref > lloq[:, None])
        err = (np.abs(sim["conc"] - c_ref) / np.where(above, c_ref, 1.0))[above]
        rec = {"n": m, "conc_rel_err_p50": float(np.median(err)),
               "conc_rel_err_p99": float(np.percentile(err, 99)), "conc_rel_err_max": float(err.max()),
               "reference_failed": int((st_ref != 0).sum()), "fallback": int(sim["fallback"].sum())}
        if family == "pd":
            rerr = (np.abs(sim["resp"] - r_ref) / np.abs(r_ref[:, :1]))[ok]
            rec["resp_err_over_baseline_max"] = float(rerr.max())
        out[name] = rec
        log(f"[{family}] accuracy {name}: conc p99 {rec['conc_rel_err_p99']:.1e}, "
            f"max {rec['conc_rel_err_max']:.1e}")
    return out


def worker(args) -> None:
    import jax

    workdir = Path(tempfile.mkdtemp(prefix="bench_corpus_"))
    try:
        rec = {"family": args.family, "devices": jax.device_count(),
               "end_to_end": end_to_end(args.family, args.shard_size, args.shards, workdir),
               "per_class": per_class(args.family, args.shard_size)}
        if args.alt_subjects:
            rec["alternatives"] = alternatives(args.family, args.alt_subjects)
        if args.acc_subjects:
            rec["accuracy"] = accuracy(args.family, args.acc_subjects)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(json.dumps(rec))


# ----------------------------------------------------------------------------- driver
def machine_info() -> dict:
    import jax
    import pyarrow

    return {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "jax": jax.__version__,
        "pyarrow": pyarrow.__version__,
        "numpy": np.__version__,
        "loadavg_start": list(os.getloadavg()),
    }


def run_worker(family: str, devices: int, args, alt: int, acc: int) -> dict:
    env = dict(os.environ)
    flags = env.get("XLA_FLAGS", "").replace("--xla_force_host_platform_device_count", "--ignored")
    env["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={devices}".strip()
    cmd = [sys.executable, __file__, "--worker", "--family", family, "--shard-size", str(args.shard_size),
           "--shards", str(args.shards), "--alt-subjects", str(alt), "--acc-subjects", str(acc)]
    log(f"{family}: {devices} device(s)")
    proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def markdown(result: dict) -> str:
    m = result["machine"]
    lines = [
        "# Corpus generator throughput",
        "",
        f"{m['date']} · {m['platform']} · {m['cpu_count']} CPUs · jax {m['jax']} · pyarrow {m['pyarrow']} · "
        f"load avg {m['loadavg_start'][0]:.1f} → {m['loadavg_end'][0]:.1f} (the machine is shared; rates "
        "scale with the share of the cores this run got)",
        "",
        f"Mix of the 10 classes of each family, default designs/noise/features, float32 one-loop Tsit5 "
        f"(rtol 1e-4, atol 1e-6), stiffness-sorted batches of 256. Target: {REFERENCE_N:,} trajectories in "
        f"<= {TARGET_S // 60} min, i.e. >= {REFERENCE_N / TARGET_S:,.0f} trajectories/s.",
        "",
        "## End to end (`generate_corpus`: sampling, simulation, noise, features, parquet, checksums)",
        "",
        "Device counts are measured one after the other (each in its own process); compare them with the "
        "background load in the last column.",
        "",
        "| family | devices | trajectories | wall s | traj/s | one-time compile s | 10M extrapolated "
        "| target | failed | fallback | bytes/traj | load |",
        "|---|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|",
    ]
    for r in result["runs"]:
        e = r["end_to_end"]
        ok = "met" if e["extrapolated_10M_min"] <= TARGET_S / 60 else "not met"
        lines.append(
            f"| {r['family']} | {r['devices']} | {e['n']:,} | {e['seconds']:.1f} | {e['traj_per_s']:,.0f} | "
            f"{e['compile_once_s']:.0f} | {e['extrapolated_10M_min']:.1f} min | {ok} | "
            f"{e['failed']} | {e['fallback']} | {e['bytes_per_traj']:.0f} | {e['loadavg_1min']:.1f} |"
        )
    lines += ["", "## Simulation only, per class (traj/s)", ""]
    runs = [r for r in result["runs"]]
    for fam in dict.fromkeys(r["family"] for r in runs):
        rs = [r for r in runs if r["family"] == fam]
        lines += [f"### {fam}", "", "| class | " + " | ".join(f"{r['devices']} device(s)" for r in rs) + " |",
                  "|---|" + "---:|" * len(rs)]
        for name in rs[0]["per_class"]["classes"]:
            lines.append(f"| {name} | " + " | ".join(f"{r['per_class']['classes'][name]['traj_per_s']:,.0f}"
                                                    for r in rs) + " |")
        lines.append("| **harmonic mix** | " + " | ".join(f"**{r['per_class']['mix_traj_per_s']:,.0f}**"
                                                         for r in rs) + " |")
        lines.append("")
        alt = next((r["alternatives"] for r in rs if "alternatives" in r), None)
        if alt:
            cols = [k for k in next(iter(alt.values())) if not k.endswith(" s")]
            lines += [f"Alternatives ({fam}, {rs[0]['devices']} devices, compile excluded, traj/s):", "",
                      "| class | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
            for name, rec in alt.items():
                lines.append(f"| {name} | " + " | ".join(f"{rec[c]:,.0f}" for c in cols) + " |")
            hm = {c: len(alt) / sum(1 / rec[c] for rec in alt.values()) for c in cols}
            lines.append("| **harmonic mix** | " + " | ".join(f"**{hm[c]:,.0f}**" for c in cols) + " |")
            lines.append("")
        acc = next((r["accuracy"] for r in rs if "accuracy" in r), None)
        if acc:
            extra = " resp err / baseline max |" if fam == "pd" else ""
            lines += [f"Accuracy ({fam}) of the default path against simulate_population at rtol 1e-10 "
                      "(concentrations above the LLOQ):", "",
                      "| class | n | conc rel err p50 | p99 | max |" + extra,
                      "|---|---:|---:|---:|---:|" + ("---:|" if extra else "")]
            for name, a in acc.items():
                row = (f"| {name} | {a['n']} | {a['conc_rel_err_p50']:.1e} | {a['conc_rel_err_p99']:.1e} | "
                       f"{a['conc_rel_err_max']:.1e} |")
                if extra:
                    row += f" {a['resp_err_over_baseline_max']:.1e} |"
                lines.append(row)
            lines.append("")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="2 shards of 5k, 2 devices, no alternatives")
    ap.add_argument("--families", nargs="+", default=["pk", "pd"])
    ap.add_argument("--shard-size", type=int, default=None)
    ap.add_argument("--shards", type=int, default=None)
    ap.add_argument("--devices", type=int, nargs="+", default=None)
    ap.add_argument("--alt-subjects", type=int, default=None)
    ap.add_argument("--acc-subjects", type=int, default=None)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--family", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args)
        return
    args.shard_size = args.shard_size or (5_000 if args.quick else 20_000)
    args.shards = args.shards or (2 if args.quick else 5)
    devices = args.devices or ([2] if args.quick else [2, 1])
    alt = args.alt_subjects if args.alt_subjects is not None else (0 if args.quick else 1000)
    acc = args.acc_subjects if args.acc_subjects is not None else (0 if args.quick else 200)
    info = machine_info()
    runs = []
    for fam in args.families:
        for k, nd in enumerate(devices):
            first = k == 0  # alternatives and accuracy once per family, on the first device count
            runs.append(run_worker(fam, nd, args, alt if first else 0, acc if first else 0))
    info["loadavg_end"] = list(os.getloadavg())
    bench_args = {"shard_size": args.shard_size, "shards": args.shards, "devices": devices,
                  "alt_subjects": alt, "acc_subjects": acc, "quick": args.quick}
    result = {"machine": info, "args": bench_args, "reference_n": REFERENCE_N, "target_s": TARGET_S,
              "runs": runs}
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "corpus_quick" if args.quick else "corpus"
    (args.out / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    md = markdown(result)
    (args.out / f"{stem}.md").write_text(md)
    log(f"wrote {args.out / stem}.json and .md")
    print(md)


if __name__ == "__main__":
    main()
