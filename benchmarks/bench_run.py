"""Wall time of the whole pipeline, `pkpd-jax run`, on the bundled example study, per stage.

Targets (issue: in-silico trials and the end-to-end run): ``pkpd-jax run`` in at most 10 minutes on
2 CPU cores, ``pkpd-jax run --fast`` in at most 3 minutes. Each setting runs the installed command line
in a fresh output directory (no fit to reuse) as a user would, in a subprocess (``python -m
pkpd_jax.cli run``, a thin command over ``pkpd_jax.pipeline.run_pipeline``), and reads the stage
times the pipeline writes to ``OUT/timings.json`` (validate, model selection, fit, optional
quantum-kernel stage, trials, report) plus the process's own wall time (Python start-up and imports
included). The persistent compilation cache of the command line is pointed at a fresh directory
for the ``cold`` runs (every program compiled, a first run) and reused by the ``warm`` runs (a
second run of the same study: compilation skipped); the dose answers are checked against the
study's true doses (from ``benchmarks/results/trials.json`` when present).

Usage::

    python benchmarks/bench_run.py                  # --fast cold and warm, full cold
    python benchmarks/bench_run.py --settings fast  # only --fast (cold and warm)

Results: ``<out>/run.{json,md}`` (``run_quick.*`` with ``--quick``).
"""

from __future__ import annotations

import argparse
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

from _results import cpu_probe, public_args


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def one_run(setting: str, cache: Path, extra: list[str]) -> dict:
    out = Path(tempfile.mkdtemp(prefix=f"run_{setting}_"))
    cmd = [sys.executable, "-m", "pkpd_jax.cli", "run", "--out", str(out), *extra]
    if setting == "fast":
        cmd.append("--fast")
    env = {**os.environ, "PKPD_JAX_CACHE": str(cache)}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"`{' '.join(cmd)}` failed:\n{proc.stderr[-3000:]}")
    timings = json.loads((out / "timings.json").read_text())
    answers = json.loads((out / "answers.json").read_text())
    selection = json.loads((out / "model_selection.json").read_text())
    summary = json.loads((out / "fit" / "summary.json").read_text())
    params = summary["params"].values()
    fit = {
        "chains": summary["chains"],
        "warmup": summary["warmup"],
        "draws_per_chain": summary["draws_per_chain"],
        "divergences": summary["divergences"],
        "max_rhat": max(p["rhat"] for p in params),
        "min_ess_bulk": min(p["ess_bulk"] for p in params),
        "min_ess_tail": min(p.get("ess_tail", float("inf")) for p in params),
        "leapfrog_steps_per_draw": summary.get("leapfrog_steps_per_draw"),
    }
    shutil.rmtree(out, ignore_errors=True)
    return {"setting": setting, "wall_s": wall, "timings": timings, "answers": answers, "fit": fit,
            "model": f"{selection['pk']} + {selection['pd']}", "loadavg_end": list(os.getloadavg())}



def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--settings", nargs="+", default=["fast", "full"], choices=["fast", "full"])
    ap.add_argument("--quick", action="store_true", help="only `run --fast` (cold and warm)")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    ap.add_argument("--extra", nargs=argparse.REMAINDER, default=[],
                    help="more `pkpd-jax run` arguments (e.g. --qkernel)")
    args = ap.parse_args(argv)
    if args.quick:
        args.settings = ["fast"]
    truth_path = Path(__file__).parent / "results" / "trials.json"  # the shipped reference
    true = None
    if truth_path.exists():
        doses = json.loads(truth_path.read_text()).get("truth", {}).get("study", {}).get("doses", {})
        true = {k: v["dose"] for k, v in doses.items()} or None
    probe = cpu_probe()  # the machine's speed today (see _results.cpu_probe)
    load_start = list(os.getloadavg())
    cache = Path(tempfile.mkdtemp(prefix="pkpd_xla_cache_"))
    runs = []
    for setting in args.settings:
        for temp in ("cold", "warm") if setting == "fast" else ("cold",):
            if temp == "cold":
                shutil.rmtree(cache, ignore_errors=True)
                cache.mkdir()
            log(f"pkpd-jax run{' --fast' if setting == 'fast' else ''} ({temp} compilation cache) ...")
            r = one_run(setting, cache, args.extra)
            r["cache"] = temp
            if true:
                r["truth_in_interval"] = {
                    k: (lo is not None and hi is not None and lo <= true[k] <= hi)
                    for k, a in r["answers"].items() if k in true
                    for lo, hi in [a["dose_interval"]]
                }
            log(f"  {r['wall_s']:.0f} s: " + ", ".join(f"{k} {v:.0f}" for k, v in r["timings"].items()))
            runs.append(r)
    shutil.rmtree(cache, ignore_errors=True)
    info = {
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "loadavg_start": load_start,
        "cpu_probe_s": probe,
        "command": "python benchmarks/bench_run.py "
        + " ".join(public_args(argv if argv is not None else sys.argv[1:])),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "run_quick" if args.quick else "run"
    (args.out / f"{stem}.json").write_text(json.dumps({"info": info, "runs": runs}, indent=2) + "\n")
    stages = sorted({k for r in runs for k in r["timings"]} - {"total_s"})
    lines = [
        "# `pkpd-jax run` on the bundled example study",
        "",
        f"{info['date']} · {info['platform']} · {info['cpus']} CPUs · CPU probe {probe:.3f} s "
        f"(`_results.cpu_probe`: the day's machine speed; compare it before comparing files) · "
        f"command `{info['command']}`",
        "",
        "Each row: the installed command line in a fresh output directory (no fit reused); *cold*: "
        "empty compilation cache (a first run), *warm*: the cache of the previous run (a second run "
        "of the same study). Targets on 2 CPU cores: full <= 600 s, `--fast` <= 180 s.",
        "",
        "| setting | cache | model | wall s (process) | " + " | ".join(stages)
        + " | truth in 90% interval | fit (chains × warm-up + draws) | max R-hat | min bulk / tail ESS "
        "| divergences |",
        "|---|---|---|---:|" + "---:|" * len(stages) + "---|---|---:|---:|---:|",
    ]
    for r in runs:
        hit = r.get("truth_in_interval")
        lines.append(
            f"| {r['setting']} | {r['cache']} | {r['model']} | {r['wall_s']:.0f} | "
            + " | ".join(f"{r['timings'].get(s, float('nan')):.0f}" for s in stages)
            + f" | {'' if hit is None else f'{sum(hit.values())}/{len(hit)}'} | "
            + (f"{f['chains']} × {f['warmup']} + {f['draws_per_chain']} | {f['max_rhat']:.3f} | "
               f"{f['min_ess_bulk']:.0f} / {f['min_ess_tail']:.0f} | {f['divergences']} |"
               if (f := r.get("fit")) else " | | | |")
        )
    md = "\n".join(lines) + "\n"
    (args.out / f"{stem}.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
