"""QHMC's mass jitter, whitened or per coordinate, over several seeds on the example study.

QHMC draws a random mass around its adapted centre at every iteration. With the low-rank metric
the jitter is drawn either in the metric's whitened coordinates (``mass_jitter="whitened"``, the
default) or per coordinate on its diagonal scale (``"coordinates"``). One seed of each left open
whether the whitened kernel's lower tail ESS on the weakly informed ``sigma_add_PK`` was the
kernel or the seed. This runs the whole fit of the example study (default model, 4 chains,
1000 warm-up + 1000 draws, low-rank metric, as ``pkpd-jax fit``) for both kernels and several
seeds, each fit in its own process on one core (two at a time on a 2-core machine), and reports
per fit and per kernel: leapfrog steps, minimum bulk / tail ESS over the population parameters,
bulk / tail ESS of ``sigma_add_PK``, ESS per 1000 gradients, R-hat, divergences and whether the
95% intervals contain the truth.

Usage::

    python experiments/jitter_seeds.py OUT_DIR [--seeds 1 2 3] [--workers 2]

Each finished fit is written to ``OUT_DIR/<kernel>_seed<S>.json`` at once (a rerun skips it), and
the table to ``OUT_DIR/jitter_seeds.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np


KERNELS = ("whitened", "coordinates")
FOCUS = "sigma_add_PK"


def one(kernel: str, seed: int, warmup: int, samples: int) -> dict:
    """One fit in this process (one JAX device): the figures of the table."""
    from pkpd_jax._x64 import enable_x64

    enable_x64()
    from pkpd_jax.data.example import example_paths
    from pkpd_jax.inference.fit import WARMUP_MAX_STEPS, fit

    truth = json.loads(example_paths()[1].read_text())
    t0 = time.perf_counter()
    fr = fit(example_paths()[0], pk="pk_2c_iv_infusion", pd="pd_indirect_inhib_kin", chains=4,
             warmup=warmup, samples=samples, seed=seed, progress=False, plots=False,
             metric="low_rank", sampler_options={"mass_jitter": kernel}, log=lambda m: None)
    wall = time.perf_counter() - t0
    r = fr.result
    table = {row["name"]: row for row in fr.summary.iter_rows(named=True)}
    values = {**truth["population"], **{k: truth["covariates"][k] for k in ("BW_CL", "BW_V", "COMED_CL")}}
    missed = [n for n, v in values.items()
              if n in table and not table[n]["q2.5"] <= v <= table[n]["q97.5"]]
    steps = float(np.sum(r.warmup_steps)) + float(np.sum(r.num_integration_steps))
    bulk = {n: row["ess_bulk"] for n, row in table.items()}
    tail = {n: row["ess_tail"] for n, row in table.items()}
    worst = min(bulk, key=bulk.get)
    return {
        "kernel": kernel, "seed": seed, "warmup": warmup, "samples": samples,
        "max_warmup_steps": WARMUP_MAX_STEPS, "wall_s": wall,
        "warmup_steps": int(np.sum(r.warmup_steps)),
        "steps_per_iteration": float(np.mean(r.num_integration_steps)),
        "min_ess_bulk": bulk[worst], "min_ess_bulk_param": worst,
        "min_ess_tail": min(tail.values()), "min_ess_tail_param": min(tail, key=tail.get),
        "focus_ess_bulk": bulk.get(FOCUS), "focus_ess_tail": tail.get(FOCUS),
        "ess_per_1k_grads": 1000.0 * bulk[worst] / steps,
        "max_rhat": max(row["rhat"] for row in table.values()),
        "divergences": int(np.sum(np.asarray(r.divergent))),
        "truth_missed": missed,
    }


def _subprocess(kernel: str, seed: int, args, path: Path) -> dict:
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1",
           "JAX_PLATFORMS": "cpu"}
    cmd = [sys.executable, __file__, str(args.out), "--only", kernel, str(seed),
           "--warmup", str(args.warmup), "--samples", str(args.samples)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{kernel} seed {seed} failed:\n{proc.stderr[-3000:]}")
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    path.write_text(json.dumps(res, indent=2) + "\n")  # kept at once: a rerun skips it
    print(f"{kernel} seed {seed}: {res['wall_s']:.0f} s, min bulk / tail ESS "
          f"{res['min_ess_bulk']:.0f} / {res['min_ess_tail']:.0f}", flush=True)
    return res


def markdown(runs: list[dict], command: str) -> str:
    lines = [
        "# QHMC mass jitter: whitened vs per coordinate, several seeds",
        "",
        f"`{command}`",
        "",
        "Example study, pk_2c_iv_infusion + pd_indirect_inhib_kin, 4 chains, "
        f"{runs[0]['warmup']} warm-up + {runs[0]['samples']} draws, low-rank metric (rank 64), "
        f"warm-up trajectories capped at {runs[0]['max_warmup_steps']} leapfrog steps; each fit in "
        "its own process on one core, two at a time (wall times are those of one busy core). "
        "ESS / 1k gradients: min bulk ESS over the population parameters per 1000 leapfrog steps "
        "of warm-up and sampling together.",
        "",
        "| kernel | seed | wall s | warm-up steps | steps / iteration | min bulk ESS | min tail ESS "
        f"| {FOCUS} bulk / tail ESS | ESS / 1k gradients | max R-hat | divergences | truth outside 95% |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in sorted(runs, key=lambda r: (KERNELS.index(r["kernel"]), r["seed"])):
        lines.append(
            f"| {r['kernel']} | {r['seed']} | {r['wall_s']:.0f} | {r['warmup_steps']} "
            f"| {r['steps_per_iteration']:.1f} | {r['min_ess_bulk']:.0f} ({r['min_ess_bulk_param']}) "
            f"| {r['min_ess_tail']:.0f} ({r['min_ess_tail_param']}) "
            f"| {r['focus_ess_bulk']:.0f} / {r['focus_ess_tail']:.0f} | {r['ess_per_1k_grads']:.2f} "
            f"| {r['max_rhat']:.3f} | {r['divergences']} | {', '.join(r['truth_missed']) or 'none'} |"
        )
    lines += ["", "Per kernel (median over seeds):", "",
              "| kernel | fits | steps / iteration | min bulk ESS | min tail ESS "
              f"| {FOCUS} tail ESS | ESS / 1k gradients |",
              "|---|---:|---:|---:|---:|---:|---:|"]
    for k in KERNELS:
        rs = [r for r in runs if r["kernel"] == k]
        if not rs:
            continue
        med = lambda key: float(np.median([r[key] for r in rs]))  # noqa: E731
        lines.append(f"| {k} | {len(rs)} | {med('steps_per_iteration'):.1f} | {med('min_ess_bulk'):.0f} "
                     f"| {med('min_ess_tail'):.0f} | {med('focus_ess_tail'):.0f} "
                     f"| {med('ess_per_1k_grads'):.2f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=1000)
    ap.add_argument("--samples", type=int, default=1000)
    ap.add_argument("--only", nargs=2, metavar=("KERNEL", "SEED"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.only:
        print(json.dumps(one(args.only[0], int(args.only[1]), args.warmup, args.samples)))
        return
    args.out.mkdir(parents=True, exist_ok=True)
    jobs, runs = [], []
    for seed in args.seeds:
        for k in KERNELS:
            path = args.out / f"{k}_seed{seed}.json"
            if path.exists():
                runs.append(json.loads(path.read_text()))
            else:
                jobs.append((k, seed, path))
    with ThreadPoolExecutor(max_workers=args.workers) as pool:
        runs += list(pool.map(lambda j: _subprocess(j[0], j[1], args, j[2]), jobs))
    command = ("python experiments/jitter_seeds.py OUT_DIR --seeds " + " ".join(map(str, args.seeds))
               + ("" if (args.warmup, args.samples) == (1000, 1000)
                  else f" --warmup {args.warmup} --samples {args.samples}"))
    (args.out / "jitter_seeds.json").write_text(json.dumps(runs, indent=2) + "\n")
    md = markdown(runs, command)
    (args.out / "jitter_seeds.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
