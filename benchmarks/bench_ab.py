"""Before/after in one run: the recorded benchmarks on a base commit and on the working tree.

A refactor that must not change speed (or results) is judged by running the same benchmarks on
the commit before it and on the commit after it, on the same machine, in one session, one right
after the other (the shared 2-core machines differ by up to ~2x between days, so figures from
different days cannot be compared). For each benchmark this script runs the *base* tree's own
script on the base code and then the working tree's script on the working-tree code (each with
``PYTHONPATH`` pointing at its tree, in a subprocess), interleaved benchmark by benchmark so that
drift in machine speed hits both sides alike, and records a CPU probe before each run.

Usage::

    python benchmarks/bench_ab.py --base 239a17d            # simulate, likelihood, corpus, trials, run
    python benchmarks/bench_ab.py --base 239a17d --only simulate trials

Results: ``<out>/ab.{json,md}`` (default ``benchmarks/results``): the headline figures of each
benchmark, before and after, with their ratio; the full JSON of every run is kept alongside.
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

from _results import cpu_probe


ROOT = Path(__file__).resolve().parent.parent

#: benchmark -> (script arguments, result file written under --out): the quick setting, and the
#: full one (``--full NAME``) where a quick run is too short to time (e.g. trials: 16k
#: steady states in 0.03 s, below the machine's noise).
BENCHMARKS = {
    "simulate": (["--quick", "--no-sharded"], "simulate_quick.json"),
    "likelihood": (["--quick"], "likelihood_quick.json"),
    "corpus": (["--quick"], "corpus_quick.json"),
    "trials": (["--quick"], "trials_quick.json"),
    "run": (["--quick"], "run_quick.json"),
}
FULL = {
    "simulate": (["--n", "10000", "--no-sharded", "--scipy-subjects", "50"], "simulate.json"),
    "trials": ([], "trials.json"),
}


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def headline(name: str, d: dict) -> dict[str, float]:
    """The figures of a result file that a reader compares (higher or lower is better as named)."""
    out: dict[str, float] = {}
    if "error" in d:
        return {"FAILED (see the JSON)": float("nan")}
    if name == "simulate":
        for r in d.get("pkpd", []):
            tag = f"n={r['n']},dev={r.get('devices', 1)},chunk={r.get('chunk_size')}"
            out[f"pkpd traj/s [{tag}] (higher better)"] = r["traj_per_s"]
            out[f"pkpd compile s [{tag}] (lower better)"] = r.get("compile_s", float("nan"))
        for key in ("pk", "linear", "pk_linear"):
            for r in d.get(key, []) if isinstance(d.get(key), list) else []:
                out[f"{key} traj/s [n={r.get('n')}] (higher better)"] = r.get("traj_per_s", float("nan"))
    elif name == "likelihood":
        variant = d.get("default")
        t = d.get("timing", {}).get(variant, {})
        for k in ("value", "value_and_grad", "vg_4_chains"):
            if k in t:
                out[f"{k} median ms [{variant}] (lower better)"] = t[k]["median_ms"]
    elif name == "corpus":
        for r in d.get("runs", []):
            e = r.get("end_to_end", {})
            out[f"{r['family']} traj/s [dev={r.get('devices')}] (higher better)"] = e.get("traj_per_s")
            out[f"{r['family']} first call s [dev={r.get('devices')}] (lower better)"] = e.get("first_call_s")
    elif name == "trials":
        for r in d.get("extremes", []):
            out[f"extremes steady states/s [{r['regimen']}] (higher better)"] = r["steady_states_per_s"]
        for r in d.get("search", []):
            out[f"search subject-doses/s [{r['regimen']}] (higher better)"] = r["subject_doses_per_s"]
            out[f"search dose_90 [{r['regimen']}] (equal)"] = r["dose_90"]
    elif name == "run":
        for r in d.get("runs", []):
            tag = f"{r['setting']},{r.get('cache', '')}"
            out[f"run wall s [{tag}] (lower better)"] = r["wall_s"]
            out[f"run fit s [{tag}] (lower better)"] = r["timings"].get("fit_s")
            out[f"run max R-hat [{tag}] (equal)"] = r["fit"]["max_rhat"]
    return {k: float(v) for k, v in out.items() if v is not None}


def run_one(tree: Path, name: str, args: list[str], out: Path, result_file: str) -> tuple[dict, float, float]:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    script = tree / "benchmarks" / f"bench_{name}.py"
    probe = cpu_probe()
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, str(script), *args, "--out", str(out)], cwd=tree, env=env,
                          capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        log(f"bench_{name}.py failed in {tree.name}:\n{proc.stderr[-3000:]}")
        return {"error": proc.stderr[-3000:]}, wall, probe
    return json.loads((out / result_file).read_text()), wall, probe


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", required=True, help="the commit to compare against (before)")
    ap.add_argument("--only", nargs="+", choices=list(BENCHMARKS), default=list(BENCHMARKS))
    ap.add_argument("--full", nargs="*", choices=list(FULL), default=[],
                    help="run these benchmarks at their full size instead of --quick")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = ap.parse_args(argv)

    base_sha = subprocess.run(["git", "rev-parse", args.base], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
    head_sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
    dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                                capture_output=True, text=True).stdout.strip())
    tmp = Path(tempfile.mkdtemp(prefix="bench_ab_"))
    base_tree = tmp / "base"
    subprocess.run(["git", "worktree", "add", "--detach", str(base_tree), base_sha], cwd=ROOT, check=True,
                   capture_output=True)
    results: dict = {}
    try:
        for name in args.only:
            bargs, result_file = FULL[name] if name in args.full else BENCHMARKS[name]
            entry = {}
            for side, tree in (("before", base_tree), ("after", ROOT)):
                log(f"[{name}] {side} ...")
                out = tmp / f"{name}_{side}"
                out.mkdir()
                data, wall, probe = run_one(tree, name, bargs, out, result_file)
                entry[side] = {"wall_s": wall, "cpu_probe_s": probe, "headline": headline(name, data),
                               "result": data}
                log(f"[{name}] {side}: {wall:.0f} s")
            entry["args"] = bargs
            results[name] = entry
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(base_tree)], cwd=ROOT,
                       capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)

    import jax

    record = {
        "info": {
            "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "jax": jax.__version__,
            "command": "python benchmarks/bench_ab.py "
            + " ".join(argv if argv is not None else sys.argv[1:]),
            "before": base_sha,
            "after": head_sha + (" + uncommitted changes" if dirty else ""),
        },
        "benchmarks": results,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "ab.json").write_text(json.dumps(record, indent=2))
    lines = [
        "# Before/after on one machine, one session",
        "",
        f"{record['info']['date']}, {record['info']['platform']}, {record['info']['cpus']} CPUs, "
        f"jax {record['info']['jax']}. Before: `{base_sha[:10]}`; after: `{record['info']['after'][:10]}`"
        f"{' (+ uncommitted changes)' if dirty else ''}.",
        f"Command: `{record['info']['command']}`. Each benchmark ran before then after, back to back; "
        "the CPU probe (s of a fixed Python loop, lower = faster machine at that moment) is given "
        "for each run.",
        "",
        "| benchmark | figure | before | after | after / before |",
        "|---|---|---:|---:|---:|",
    ]
    for name, e in results.items():
        b, a = e["before"]["headline"], e["after"]["headline"]
        lines.append(f"| {name} | wall s of the script (probe {e['before']['cpu_probe_s']:.3f} / "
                     f"{e['after']['cpu_probe_s']:.3f}) | {e['before']['wall_s']:.1f} | "
                     f"{e['after']['wall_s']:.1f} | {e['after']['wall_s'] / e['before']['wall_s']:.2f} |")
        for k in sorted(set(b) | set(a)):
            vb, va = b.get(k, float("nan")), a.get(k, float("nan"))
            ratio = va / vb if vb not in (0.0,) and vb == vb else float("nan")
            lines.append(f"| {name} | {k} | {vb:.4g} | {va:.4g} | {ratio:.2f} |")
    (args.out / "ab.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
