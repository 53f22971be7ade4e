"""QHMC against NUTS on the bundled example study's posterior (the check of the population-
inference issue: posterior means within 2 Monte-Carlo standard errors), with truth coverage,
R-hat, divergences and effective samples per second of both.

Both fits use the `pkpd-jax fit` defaults (QHMC: low-rank metric, auto parametrisation; NUTS:
blackjax window adaptation) with the same chains, warm-up, draws and seed. They run in two
processes at once (one core each on a 2-core machine), each writing its fit directory; a fit
directory that already holds a finished fit with the same settings is reused, so an interrupted
study resumes with the sampler that had not finished.

Usage::

    python experiments/sampler_agreement.py OUT_DIR [--chains 4] [--warmup 1000] [--samples 1000]
        [--seed 2026]

writes ``OUT_DIR/fit_qhmc/``, ``OUT_DIR/fit_nuts/``, ``OUT_DIR/sampler_agreement.json`` and
``OUT_DIR/sampler_agreement.md``.

Multiplicity: with ``n`` parameters compared at |z| <= 2, about ``0.046 n`` exceed it when both
samplers are right (0.6 of the 13 typical values and covariate effects, 1 of the 24 population
parameters); the table reports every z and that expectation next to the count.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


SAMPLERS = ("qhmc", "nuts")


def _finished(fit_dir: Path, settings: dict) -> bool:
    path = fit_dir / "summary.json"
    if not path.exists():
        return False
    s = json.loads(path.read_text())
    return (not s.get("interrupted") and s.get("chains") == settings["chains"]
            and s.get("warmup") == settings["warmup"] and s.get("draws_per_chain") == settings["samples"]
            and s.get("seed") == settings["seed"])


def run_one(sampler: str, out: Path, settings: dict) -> None:
    """One fit in this process (called by the subprocesses)."""
    from pkpd_jax.data.example import example_paths
    from pkpd_jax.inference.fit import fit
    from pkpd_jax.report.fit_plots import fit_plots

    fit(example_paths()[0], pk="pk_2c_iv_infusion", pd="pd_indirect_inhib_kin", sampler=sampler,
        chains=settings["chains"], warmup=settings["warmup"], samples=settings["samples"],
        seed=settings["seed"], out=out / f"fit_{sampler}", progress=False, plots=fit_plots)


def compare(out: Path, settings: dict) -> dict:
    from pkpd_jax.data.example import example_paths
    from pkpd_jax.inference.diagnostics import ess, mcse_mean
    from pkpd_jax.inference.fit import load_fit

    truth = json.loads(example_paths()[1].read_text())
    true_vals = dict(truth["population"])
    true_vals.update({k: truth["covariates"][k] for k in ("BW_CL", "BW_V", "COMED_CL")})
    draws, summaries = {}, {}
    for s in SAMPLERS:
        pm, positions, summary = load_fit(out / f"fit_{s}")
        vals = pm.unflatten(positions)
        draws[s] = {k: np.asarray(v) for k, v in vals.items()}
        summaries[s] = summary
    names = list(draws["qhmc"])
    rows = []
    for n in names:
        a, b = draws["qhmc"][n], draws["nuts"][n]
        se = float(np.hypot(mcse_mean(a), mcse_mean(b)))
        z = float((a.mean() - b.mean()) / se)
        rows.append({
            "name": n, "truth": true_vals.get(n), "qhmc_mean": float(a.mean()), "nuts_mean": float(b.mean()),
            "qhmc_sd": float(a.std()), "nuts_sd": float(b.std()), "mcse": se, "z": z,
            "qhmc_rhat": summaries["qhmc"]["params"][n]["rhat"],
            "nuts_rhat": summaries["nuts"]["params"][n]["rhat"],
            "qhmc_ess": float(ess(a)), "nuts_ess": float(ess(b)),
        })
    key = [r for r in rows if r["truth"] is not None]
    per = {}
    for s in SAMPLERS:
        sm = summaries[s]
        min_ess = min(sm["params"][n]["ess_bulk"] for n in names)
        per[s] = {
            "wall_s": sm["wall_s"], "warmup_s": sm["warmup_s"], "divergences": sm["divergences"],
            "max_rhat": max(sm["params"][n]["rhat"] for n in names),
            "min_ess_bulk": min_ess, "min_ess_tail": min(sm["params"][n]["ess_tail"] for n in names),
            "ess_per_s": min_ess / sm["wall_s"],
            "truth_missed": [n for n in true_vals
                             if not sm["params"][n]["q2.5"] <= true_vals[n] <= sm["params"][n]["q97.5"]],
        }
    return {
        "settings": settings,
        "command": "python experiments/sampler_agreement.py OUT_DIR " + " ".join(
            f"--{k} {v}" for k, v in settings.items()),
        "samplers": per,
        "key_params_beyond_2se": [r["name"] for r in key if abs(r["z"]) > 2],
        "expected_beyond_2se_key": round(0.0455 * len(key), 2),
        "all_params_beyond_2se": [r["name"] for r in rows if abs(r["z"]) > 2],
        "expected_beyond_2se_all": round(0.0455 * len(rows), 2),
        "max_abs_z": max(abs(r["z"]) for r in rows),
        "rows": rows,
    }


def markdown(res: dict) -> str:
    lines = [
        "# QHMC against NUTS on the example study's posterior", "",
        f"`{res['command']}`", "",
        "| sampler | wall s | warm-up s | divergences | max R-hat | min bulk ESS | min tail ESS "
        "| ESS/s | truth outside 95% |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for s, p in res["samplers"].items():
        lines.append(f"| {s} | {p['wall_s']:.0f} | {p['warmup_s']:.0f} | {p['divergences']} | "
                     f"{p['max_rhat']:.3f} | {p['min_ess_bulk']:.0f} | {p['min_ess_tail']:.0f} | "
                     f"{p['ess_per_s']:.2f} | {', '.join(p['truth_missed']) or 'none'} |")
    lines += [
        "",
        f"Typical values and covariate effects beyond 2 MC SEs: "
        f"{', '.join(res['key_params_beyond_2se']) or 'none'} (expected by chance: "
        f"{res['expected_beyond_2se_key']}); all population parameters: "
        f"{', '.join(res['all_params_beyond_2se']) or 'none'} (expected {res['expected_beyond_2se_all']}); "
        f"max |z| {res['max_abs_z']:.2f}.", "",
        "| parameter | truth | QHMC mean | NUTS mean | QHMC sd | NUTS sd | MC SE of the difference "
        "| z | R-hat QHMC / NUTS |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in res["rows"]:
        t = "" if r["truth"] is None else f"{r['truth']:.4g}"
        lines.append(f"| {r['name']} | {t} | {r['qhmc_mean']:.4g} | {r['nuts_mean']:.4g} | "
                     f"{r['qhmc_sd']:.3g} | {r['nuts_sd']:.3g} | {r['mcse']:.3g} | {r['z']:+.2f} | "
                     f"{r['qhmc_rhat']:.3f} / {r['nuts_rhat']:.3f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--chains", type=int, default=4)
    ap.add_argument("--warmup", type=int, default=1000)
    ap.add_argument("--samples", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=2026)
    ap.add_argument("--only", choices=SAMPLERS, help=argparse.SUPPRESS)  # one fit (subprocess)
    args = ap.parse_args(argv)
    settings = {"chains": args.chains, "warmup": args.warmup, "samples": args.samples, "seed": args.seed}
    args.out.mkdir(parents=True, exist_ok=True)
    if args.only:
        run_one(args.only, args.out, settings)
        return
    t0 = time.perf_counter()
    procs = {}
    for s in SAMPLERS:
        if _finished(args.out / f"fit_{s}", settings):
            print(f"{s}: reusing the finished fit in {args.out / f'fit_{s}'}")
            continue
        flags = [a for k, v in settings.items() for a in (f"--{k}", str(v))]
        cmd = [sys.executable, __file__, str(args.out), *flags, "--only", s]
        log = open(args.out / f"fit_{s}.log", "w")  # noqa: SIM115 (kept open for the child)
        procs[s] = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        print(f"{s}: fitting (log {args.out / f'fit_{s}.log'})")
    failed = [s for s, p in procs.items() if p.wait() != 0]
    if failed:
        sys.exit(f"fit failed for {failed}; see the logs in {args.out}")
    res = compare(args.out, settings)
    res["study_wall_s"] = time.perf_counter() - t0
    (args.out / "sampler_agreement.json").write_text(json.dumps(res, indent=2) + "\n")
    (args.out / "sampler_agreement.md").write_text(markdown(res))
    print(markdown(res))


if __name__ == "__main__":
    main()
