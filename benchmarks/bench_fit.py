"""Whole population fit of the bundled example study: wall time, where it goes, and quality.

The issue's target: 4 chains, 1000 warm-up + 1000 draws of the default model
(``pk_2c_iv_infusion`` + ``pd_indirect_inhib_kin``, covariates BW and COMED) in at most 10 minutes on
2 CPU cores. This runs :func:`pkpd_jax.inference.fit.fit` exactly as ``pkpd-jax fit`` does (the
command line splits the CPU into one JAX device per core, so the chains run on all cores via
``jax.shard_map``), once per ``--chain-devices`` value, in the same process:

* ``1``: the chains vmapped on one device (one core does the work);
* ``auto``: as many devices as divide the chains (2 on a 2-core host).

For each run: total wall time (starting points + warm-up + sampling + diagnostics, compilation
included, plots off), warm-up and sampling time, leapfrog steps (warm-up total, sampling per
iteration), minimum bulk/tail ESS over the population parameters and ESS per second, max R-hat,
divergences, and whether the 95% intervals contain the true typical values and covariate effects.

Usage::

    python benchmarks/bench_fit.py                       # 4 chains, 1000 + 1000, 1 and auto
    python benchmarks/bench_fit.py --quick               # 4 chains, 200 + 200
    python benchmarks/bench_fit.py --chain-devices auto  # only the command line's set-up

Results: ``<out>/fit.{json,md}`` (``fit_quick.*`` with ``--quick``).
"""

from __future__ import annotations

import os
import sys


def _early_devices() -> None:
    # One JAX host device per core, before JAX starts (as the command line does).
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
    from pkpd_jax.devices import use_host_devices

    use_host_devices()


_early_devices()

import argparse  # noqa: E402
import datetime as dt  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
from _results import public_args  # noqa: E402


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def _truth_values(truth: dict) -> dict[str, float]:
    vals = dict(truth["population"])
    vals.update({k: truth["covariates"][k] for k in ("BW_CL", "BW_V", "COMED_CL")})
    return vals


def _metric_text(info) -> str:
    if not info.get("metric"):
        return ""
    rank = f", rank {info['max_rank']}" if info.get("max_rank") else ""
    return f" (metric {info['metric']}{rank})"


def _sampler_options(args) -> dict | None:
    opts = {}
    if args.target_accept:
        opts["target_acceptance_rate"] = args.target_accept
    if args.sampler == "qhmc" and args.metric != "diag":
        opts.update(metric=args.metric, max_rank=args.max_rank)
    if args.sampler == "qhmc" and args.max_warmup_steps is not None:
        opts["max_warmup_steps"] = args.max_warmup_steps
    return opts or None


def one_fit(args, chain_devices, truth) -> dict:
    from pkpd_jax.data.example import example_paths
    from pkpd_jax.inference.fit import fit

    t0 = time.perf_counter()
    fr = fit(
        example_paths()[0],
        pk=args.pk,
        pd=args.pd,
        chains=args.chains,
        warmup=args.warmup,
        samples=args.samples,
        seed=args.seed,
        sampler=args.sampler,
        progress=False,
        plots=False,
        chain_devices=chain_devices,
        sampler_options=_sampler_options(args),
        log=lambda m: log(f"  {m}"),
    )
    wall = time.perf_counter() - t0
    r = fr.result
    table = {row["name"]: row for row in fr.summary.iter_rows(named=True)}
    missed = {
        n: [v, table[n]["q2.5"], table[n]["q97.5"]]
        for n, v in _truth_values(truth).items()
        if n in table and not table[n]["q2.5"] <= v <= table[n]["q97.5"]
    }
    ess_bulk = {n: row["ess_bulk"] for n, row in table.items()}
    ess_tail = {n: row["ess_tail"] for n, row in table.items()}
    rhat = {n: row["rhat"] for n, row in table.items()}
    steps = np.asarray(r.num_integration_steps)  # per kept draw: summed over its `thin` iterations
    worst_ess = min(ess_bulk, key=ess_bulk.get)
    worst_rhat = max(rhat, key=rhat.get)
    out = {
        "chain_devices": "auto" if chain_devices is None else chain_devices,
        "wall_s": wall,
        "sampler_wall_s": r.wall_s,
        "warmup_s": r.warmup_s,
        "sampling_s": r.wall_s - r.warmup_s,
        "before_sampling_s": wall - r.wall_s,
        "warmup_leapfrog_steps": int(np.sum(r.warmup_steps)) if r.warmup_steps is not None else None,
        # mean leapfrog steps per warm-up iteration, per block of 100 iterations
        "warmup_steps_per_100": (
            [float(np.mean(b)) for b in np.array_split(np.asarray(r.warmup_steps).reshape(-1),
                                                       max(1, np.asarray(r.warmup_steps).size // 100))]
            if r.warmup_steps is not None and np.asarray(r.warmup_steps).size else None
        ),
        "sampling_steps_per_iteration": (
            float(np.mean(steps)) / r.thin if steps.size else None
        ),
        "min_ess_bulk": ess_bulk[worst_ess],
        "min_ess_bulk_param": worst_ess,
        "min_ess_tail": min(ess_tail.values()),
        "ess_per_s": ess_bulk[worst_ess] / wall,
        "max_rhat": rhat[worst_rhat],
        "max_rhat_param": worst_rhat,
        "divergences": int(np.sum(np.asarray(r.divergent))),
        "truth_missed": missed,
        "warnings": fr.warnings,
        "parametrization": fr.population.parametrization,
        "loadavg_end": list(os.getloadavg()),
    }
    log(
        f"chain_devices={out['chain_devices']}: {wall:.0f} s (warm-up {r.warmup_s:.0f} s, sampling "
        f"{out['sampling_s']:.0f} s), min ESS {out['min_ess_bulk']:.0f} ({worst_ess}), max R-hat "
        f"{out['max_rhat']:.3f} ({worst_rhat}), {out['divergences']} divergent, truth missed: "
        f"{list(missed) or 'none'}"
    )
    return out


def markdown(info: dict, runs: list[dict]) -> str:
    lines = [
        f"# Whole population fit of the example study{' (quick)' if info['quick'] else ''}",
        "",
        f"{info['date']} · {info['platform']} · {info['cpus']} CPUs · jax {info['jax']} · "
        f"{info['devices']} JAX devices · load average {info['loadavg_start'][0]:.2f} at start",
        "",
        f"Command: `{info['command']}`. Model {info['model']}, {info['chains']} chains, "
        f"{info['warmup']} warm-up + {info['samples']} draws per chain, sampler {info['sampler']}"
        f"{_metric_text(info)}, "
        "seed {}; wall time includes compilation ({}), starting points (MAP + curvature) and "
        "diagnostics (plots off). Target: <= 600 s on 2 CPU cores.".format(
            info["seed"], "persistent cache " + ("on" if info["compilation_cache"] else "off")),
        "",
        "| chain devices | wall s | warm-up s | sampling s | before sampling s | warm-up leapfrog steps "
        "| steps / iteration (sampling) | min bulk ESS | min tail ESS | ESS/s | max R-hat | divergent "
        "| truth outside 95% |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in runs:
        spi = r["sampling_steps_per_iteration"]
        lines.append(
            f"| {r['chain_devices']} | {r['wall_s']:.0f} | {r['warmup_s']:.0f} | {r['sampling_s']:.0f} "
            f"| {r['before_sampling_s']:.0f} | {r['warmup_leapfrog_steps']} "
            f"| {'' if spi is None else f'{spi:.1f}'} | {r['min_ess_bulk']:.0f} ({r['min_ess_bulk_param']}) "
            f"| {r['min_ess_tail']:.0f} | {r['ess_per_s']:.2f} | {r['max_rhat']:.3f} ({r['max_rhat_param']}) "
            f"| {r['divergences']} | {', '.join(r['truth_missed']) or 'none'} |"
        )
    if len(runs) > 1 and runs[0]["chain_devices"] == 1:
        base = runs[0]["wall_s"]
        lines += ["", "Speed-up of the wall time over one device: " + ", ".join(
            f"{r['chain_devices']}: {base / r['wall_s']:.2f}x" for r in runs[1:])]
    return "\n".join(lines) + "\n"



def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="200 warm-up + 200 draws")
    ap.add_argument("--chains", type=int, default=4)
    ap.add_argument("--warmup", type=int, default=None)
    ap.add_argument("--samples", type=int, default=None)
    ap.add_argument("--sampler", default="qhmc")
    ap.add_argument("--seed", type=int, default=2026)
    ap.add_argument("--pk", default="pk_2c_iv_infusion")
    ap.add_argument("--pd", default="pd_indirect_inhib_kin")
    ap.add_argument("--chain-devices", nargs="+", default=["1", "auto"],
                    help="device counts to compare ('auto' = as the command line)")
    ap.add_argument("--target-accept", type=float, default=None,
                    help="the sampler's target acceptance rate (default: its own, 0.8)")
    ap.add_argument("--metric", default="diag", choices=["diag", "low_rank"],
                    help="QHMC mass centre (see QHMCOptions.metric)")
    ap.add_argument("--max-rank", type=int, default=64, help="rank of the low-rank metric")
    ap.add_argument("--max-warmup-steps", type=int, default=None,
                    help="cap on leapfrog steps per warm-up iteration (default: fit's)")
    ap.add_argument("--cache", default=None,
                    help="persistent compilation cache directory (as the command line keeps one); "
                    "default: none, i.e. every program is compiled (a cold start)")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = ap.parse_args(argv)
    args.warmup = args.warmup if args.warmup is not None else (200 if args.quick else 1000)
    args.samples = args.samples if args.samples is not None else (200 if args.quick else 1000)

    from pkpd_jax._x64 import enable_x64

    enable_x64()
    import jax

    from pkpd_jax.data.example import example_paths

    if args.cache:
        from pkpd_jax.devices import use_compilation_cache

        use_compilation_cache(args.cache)

    truth = json.loads(example_paths()[1].read_text())
    info = {
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "jax": jax.__version__,
        "devices": jax.local_device_count(),
        "loadavg_start": list(os.getloadavg()),
        "quick": args.quick,
        "command": "python benchmarks/bench_fit.py "
        + " ".join(public_args(argv if argv is not None else sys.argv[1:])),
        "model": f"{args.pk} + {args.pd}",
        "chains": args.chains,
        "warmup": args.warmup,
        "samples": args.samples,
        "sampler": args.sampler,
        "metric": args.metric if args.sampler == "qhmc" else None,
        "max_rank": args.max_rank if args.metric == "low_rank" else None,
        "seed": args.seed,
        "compilation_cache": args.cache,
    }
    runs = []
    for cd in args.chain_devices:
        runs.append(one_fit(args, None if cd == "auto" else int(cd), truth))
    stem = ("fit_quick" if args.quick else "fit") + ("_cached" if args.cache else "")
    stem += "_low_rank" if args.sampler == "qhmc" and args.metric == "low_rank" else ""
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{stem}.json").write_text(json.dumps({"info": info, "runs": runs}, indent=2) + "\n")
    md = markdown(info, runs)
    (args.out / f"{stem}.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
