"""Sampler efficiency benchmark: pkpd_jax QHMC and NUTS (blackjax) against numpyro's NUTS.

All three samplers run on the same targets, from the same starting points, in the same process
(the Markdown output explains every column):

* ``gaussian``: 4-D normal, means (1, -2, 0.5, 3), sds (1, 2, 0.5, 10), correlation 0.9 between
  the first two coordinates (as in ``tests/test_samplers.py``);
* ``funnel``: mild Neal funnel, v ~ N(0, 1), x_i | v ~ N(0, e^v), i = 1..3 (centred);
* ``population``: the hierarchical population model (``PopulationModel``, non-centred η,
  covariates ``auto``: BW on clearances and volumes, COMED on CL) of ``--pk`` (default
  ``pk_2c_iv_infusion``, the study's own; with ``--pd`` ``+ pd_indirect_inhib_kin``) on
  ``--subjects`` dosed subjects of the bundled example study, taken round-robin over the three
  dose cohorts. ``--quick`` fits the one-compartment ``pk_1c_iv`` instead (misspecified, but its
  gradient is about 3x cheaper and its posterior better conditioned, so that NUTS finishes in
  minutes on 2 cores).

Metric: effective samples per second, ``min over population-level parameters of bulk ESS / run
time``; run time = wall time of the whole call (warm-up + sampling, 4 chains in parallel: ``vmap``
for pkpd_jax, ``chain_method="vectorized"`` for numpyro) *minus* the compile time JAX reports for
that call (``jax.monitoring``: tracing + lowering + XLA compilation). Every call is also reported
with compilation included. Diagnostics (bulk ESS, R-hat) use ``pkpd_jax.inference.diagnostics`` for
all three samplers.

Usage::

    python benchmarks/bench_samplers.py            # synthetic: 1000 + 1000, 3 calls;
                                                   # population: 6 subjects, 500 + 500
    python benchmarks/bench_samplers.py --quick    # synthetic: 500 + 500, 1 call; population:
                                                   # pk_1c_iv, 12 subjects, 150 + 150

Results go to ``<out>/samplers.json`` and ``<out>/samplers.md`` (``samplers_quick.*`` with
``--quick``). Progress goes to stderr, the Markdown tables to stdout.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import time
import warnings
from pathlib import Path

import numpy as np
from rich.console import Console


console = Console(stderr=True, width=110, log_path=False)
CHAINS = 4
SAMPLERS = ("pkpd_jax qhmc", "pkpd_jax nuts", "numpyro nuts")
TARGETS = ("gaussian", "funnel", "population")
REFERENCE = "numpyro nuts"  # the population posterior has no closed form: means are compared to it

# ----------------------------------------------------------------------------- compile time
# JAX reports the time it spends tracing, lowering and compiling (jax.monitoring events, emitted
# when each step ends); they are recorded with a timestamp, so that the compile time of a call,
# or of a phase of it, is the sum of the events that ended within it.
_COMPILE_EVENTS = (
    "/jax/core/compile/jaxpr_trace_duration",
    "/jax/core/compile/jaxpr_to_mlir_module_duration",
    "/jax/core/compile/backend_compile_duration",
)
_events: list[tuple[float, float]] = []


def _on_duration_event(event: str, duration: float, **_):
    if event in _COMPILE_EVENTS:
        _events.append((time.perf_counter(), float(duration)))


def compile_between(t0: float, t1: float) -> float:
    return float(sum(d for t, d in _events if t0 <= t <= t1))


# ----------------------------------------------------------------------------- targets
class Target:
    """A log density on flat positions with its starting points and a check of the draws.

    ``population_values(draws) -> (names, (chains, draws, k) values)`` gives the quantities whose
    minimum bulk ESS is the benchmark's metric; ``truth`` (k,) are their exact means when known.
    """

    def __init__(self, name, logdensity, x0, names, truth=None, population_values=None, info=""):
        self.name, self.logdensity, self.x0 = name, logdensity, np.asarray(x0)
        self.names, self.truth, self.info = list(names), truth, info
        self.population_values = population_values or (lambda d: np.asarray(d))


def synthetic_targets() -> list[Target]:
    import jax.numpy as jnp

    mu = np.array([1.0, -2.0, 0.5, 3.0])
    sd = np.array([1.0, 2.0, 0.5, 10.0])
    corr = np.eye(4)
    corr[0, 1] = corr[1, 0] = 0.9
    prec = jnp.asarray(np.linalg.inv(corr * np.outer(sd, sd)))
    mu_j = jnp.asarray(mu)

    def gaussian(x):
        d = x - mu_j
        return -0.5 * d @ prec @ d

    def funnel(z):
        v, x = z[0], z[1:]
        return -0.5 * v**2 - 0.5 * jnp.sum(x**2) * jnp.exp(-v) - 0.5 * x.shape[0] * v

    x0 = 0.5 * np.random.default_rng(0).standard_normal((CHAINS, 4))
    return [
        Target(
            "gaussian",
            gaussian,
            x0,
            [f"x[{i}]" for i in range(4)],
            mu,
            info="4-D Gaussian, sds 0.5-10, correlation 0.9",
        ),
        Target(
            "funnel",
            funnel,
            x0,
            ["v", "x[1]", "x[2]", "x[3]"],
            np.zeros(4),
            info="mild Neal funnel, v ~ N(0,1), 3 x_i | v ~ N(0, e^v)",
        ),
    ]


def example_subjects(dataset, n: int) -> np.ndarray:
    """``n`` dosed subjects, round-robin over the dose cohorts (in data order within a cohort):
    for the example study 13, 25, 37, 14, 26, 38, ... (IDs). ``n = 0``: every subject."""
    total = np.asarray(dataset.regimen.amount).sum(axis=1)
    if n <= 0:
        return np.arange(dataset.n_subjects)
    cohorts = [np.flatnonzero(total == d) for d in np.unique(total[total > 0])]
    order = [c[i] for i in range(max(map(len, cohorts))) for c in cohorts if i < len(c)]
    if n > len(order):
        raise SystemExit(f"--subjects {n}: the example study has {len(order)} dosed subjects")
    return np.sort(np.asarray(order[:n]))


def population_target(pk: str, n_subjects: int, pd: bool, map_steps: int, seed: int = 0) -> Target:
    import jax

    from pkpd_jax.data import Dataset, read_nonmem
    from pkpd_jax.data.example import PD_MODEL, example_paths
    from pkpd_jax.inference.population import PopulationModel
    from pkpd_jax.models import get_model

    dataset = Dataset.from_frame(read_nonmem(example_paths()[0]))
    idx = example_subjects(dataset, n_subjects)
    data = dataset.subset(idx)
    model = get_model(pk, PD_MODEL if pd else None)
    with warnings.catch_warnings():  # a PK-only model ignores the biomarker rows (and says so)
        warnings.simplefilter("ignore")
        pm = PopulationModel(model, data, covariates="auto")
    t0 = time.perf_counter()
    x0 = np.asarray(pm.initial_positions(jax.random.key(seed), CHAINS, map_steps=map_steps))
    console.log(
        f"[population] {pm!r}: starting points ({map_steps} MAP steps + jitter) in "
        f"{time.perf_counter() - t0:.1f} s"
    )
    names = list(pm.names)

    def population_values(draws):
        vals = pm.unflatten(np.asarray(draws))
        return np.stack([np.asarray(vals[k]) for k in names], axis=-1)

    info = (
        f"{model.name}, {len(idx)} subjects (IDs {', '.join(data.ids)}), covariates "
        f"{[e.name for e in pm.effects]}, dim {pm.dim} ({len(names)} population-level)"
    )
    return Target("population", pm.logdensity, x0, names, None, population_values, info)


# ----------------------------------------------------------------------------- samplers
def _vectorised_grads(steps: np.ndarray) -> float:
    """Gradient evaluations actually executed by vectorised chains: the chains of one iteration
    run in lock-step (a ``while_loop`` under ``vmap``), so each costs as much as the longest."""
    return float(np.sum(np.max(steps, axis=0)))


def run_pkpd(target: Target, sampler: str, seed: int, num_warmup: int, num_samples: int) -> dict:
    from pkpd_jax.inference import sample

    t0 = time.perf_counter()
    r = sample(
        target.logdensity,
        target.x0,
        sampler=sampler,
        num_warmup=num_warmup,
        num_samples=num_samples,
        seed=seed,
        progress=False,
    )
    t2 = time.perf_counter()
    t1 = t2 - (r.wall_s - r.warmup_s)  # end of the warm-up (sample() starts its clock after
    # validating the input, which may itself compile small functions on a first call)
    steps = np.asarray(r.num_integration_steps)
    return {
        "draws": r.draws,
        "wall_s": t2 - t0,
        "warmup_wall_s": t1 - t0,
        "compile_warmup_s": compile_between(t0, t1),
        "compile_sampling_s": compile_between(t1, t2),
        "grads": float(steps.sum()),
        "vgrads": _vectorised_grads(steps),
        "divergences": int(r.divergent.sum()),
        "acceptance": float(r.acceptance.mean()),
        "step_size": float(np.mean(r.step_size)),
    }


def run_numpyro(target: Target, seed: int, num_warmup: int, num_samples: int) -> dict:
    import jax
    from numpyro.infer import MCMC, NUTS

    logdensity = target.logdensity
    kernel = NUTS(potential_fn=lambda x: -logdensity(x), target_accept_prob=0.8)
    mcmc = MCMC(
        kernel,
        num_warmup=num_warmup,
        num_samples=num_samples,
        num_chains=CHAINS,
        chain_method="vectorized",
        progress_bar=False,
    )
    key_warmup, key_sample = jax.random.split(jax.random.PRNGKey(seed))
    fields = ("num_steps", "diverging", "accept_prob")
    t0 = time.perf_counter()
    mcmc.warmup(key_warmup, init_params=jax.numpy.asarray(target.x0), extra_fields=fields)
    jax.block_until_ready(mcmc.post_warmup_state)
    t1 = time.perf_counter()
    mcmc.run(key_sample, extra_fields=fields)
    draws = np.asarray(mcmc.get_samples(group_by_chain=True))
    t2 = time.perf_counter()
    extra = mcmc.get_extra_fields(group_by_chain=True)
    steps = np.asarray(extra["num_steps"])
    return {
        "draws": draws,
        "wall_s": t2 - t0,
        "warmup_wall_s": t1 - t0,
        "compile_warmup_s": compile_between(t0, t1),
        "compile_sampling_s": compile_between(t1, t2),
        "grads": float(steps.sum()),
        "vgrads": _vectorised_grads(steps),
        "divergences": int(np.sum(extra["diverging"])),
        "acceptance": float(np.mean(extra["accept_prob"])),
        "step_size": float(np.mean(np.asarray(mcmc.last_state.adapt_state.step_size))),
    }


def record(target: Target, sampler: str, seed: int, run: dict) -> dict:
    from pkpd_jax.inference import ess_bulk, mcse_mean, rhat

    values = target.population_values(run["draws"])
    ess = ess_bulk(values)
    i_min = int(np.argmin(ess))
    compile_s = run["compile_warmup_s"] + run["compile_sampling_s"]
    run_s = run["wall_s"] - compile_s
    sampling_s = run["wall_s"] - run["warmup_wall_s"] - run["compile_sampling_s"]
    chains, n = values.shape[:2]
    rec = {
        "target": target.name,
        "sampler": sampler,
        "seed": seed,
        "min_ess_bulk": float(ess[i_min]),
        "min_ess_param": target.names[i_min],
        "ess_per_s": float(ess[i_min] / run_s),
        "ess_per_s_incl_compile": float(ess[i_min] / run["wall_s"]),
        "run_s": run_s,
        "wall_s": run["wall_s"],
        "compile_s": compile_s,
        "warmup_s": run["warmup_wall_s"] - run["compile_warmup_s"],
        "sampling_s": sampling_s,
        "ess_per_1k_grads": float(1000 * ess[i_min] / run["grads"]),
        "grads_per_draw": run["grads"] / (chains * n),
        "vmap_overhead": run["vgrads"] * chains / run["grads"],
        "ms_per_vgrad": 1000 * sampling_s / run["vgrads"],
        "max_rhat": float(np.max(rhat(values))),
        "divergences": run["divergences"],
        "acceptance": run["acceptance"],
        "step_size": run["step_size"],
        "means": values.reshape(-1, values.shape[-1]).mean(axis=0).tolist(),
        "mcse": np.asarray(mcse_mean(values)).tolist(),
        "loadavg_1min": os.getloadavg()[0],
    }
    if target.truth is not None:  # largest |mean - truth| in MCSE
        z = np.abs(np.asarray(rec["means"]) - target.truth) / np.asarray(rec["mcse"])
        rec["max_z"] = float(np.max(z))
    return rec


def compare_to_reference(records: list[dict]) -> None:
    """For targets without known means: the largest |mean - mean of the reference sampler, same
    seed| / sqrt(MCSE^2 + MCSE_ref^2) over the population-level parameters."""
    for r in records:
        if "max_z" in r:
            continue
        ref = next(
            (
                q
                for q in records
                if q["target"] == r["target"] and q["seed"] == r["seed"] and q["sampler"] == REFERENCE
            ),
            None,
        )
        if ref is None or ref is r:
            r["max_z"] = float("nan")
            continue
        diff = np.abs(np.asarray(r["means"]) - np.asarray(ref["means"]))
        r["max_z"] = float(np.max(diff / np.hypot(r["mcse"], ref["mcse"])))


# ----------------------------------------------------------------------------- reporting
def _finite(obj):
    """NaN / inf -> None, so that the JSON is strict (the reference sampler has no max z)."""
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    return obj


SUMMARY_KEYS = (
    "ess_per_s",
    "ess_per_s_incl_compile",
    "min_ess_bulk",
    "run_s",
    "wall_s",
    "compile_s",
    "warmup_s",
    "sampling_s",
    "ess_per_1k_grads",
    "grads_per_draw",
    "vmap_overhead",
    "ms_per_vgrad",
    "max_rhat",
    "divergences",
    "acceptance",
    "step_size",
    "max_z",
)


def summarise(records: list[dict], targets: list[str]) -> tuple[list[dict], list[dict]]:
    summary, ratios = [], []
    for target in targets:
        rows = {}
        for sampler in SAMPLERS:
            rs = [r for r in records if r["target"] == target and r["sampler"] == sampler]
            if not rs:
                continue
            row = {
                "target": target,
                "sampler": sampler,
                "calls": len(rs),
                "min_ess_params": sorted({r["min_ess_param"] for r in rs}),
            }
            for key in SUMMARY_KEYS:
                row[key] = float(np.median([r[key] for r in rs]))
            summary.append(row)
            rows[sampler] = row
        q = rows.get("pkpd_jax qhmc")
        for other in ("pkpd_jax nuts", "numpyro nuts"):
            o = rows.get(other)
            if q is None or o is None:
                continue
            ratios.append(
                {
                    "target": target,
                    "vs": other,
                    "ess_per_s": q["ess_per_s"] / o["ess_per_s"],
                    "ess_per_1k_grads": q["ess_per_1k_grads"] / o["ess_per_1k_grads"],
                    "grads_per_draw": q["grads_per_draw"] / o["grads_per_draw"],
                    "vmap_overhead": q["vmap_overhead"] / o["vmap_overhead"],
                    "ms_per_vgrad": q["ms_per_vgrad"] / o["ms_per_vgrad"],
                    "warmup_share": (q["warmup_s"] / q["run_s"]) / (o["warmup_s"] / o["run_s"]),
                }
            )
    return summary, ratios


def markdown(result) -> str:
    m, a = result["machine"], result["args"]
    lines = [
        "# Sampler efficiency benchmark" + (" (quick)" if a["quick"] else ""),
        "",
        f"{m['date']} · {m['platform']} · {m['cpus']} CPUs · {m['device']} · jax {m['jax']} · "
        f"blackjax {m['blackjax']} · numpyro {m['numpyro']} · load avg "
        f"{m['loadavg_start'][0]:.2f} → {m['loadavg_end'][0]:.2f}",
        "",
        f"Command: `{a['command']}`. {CHAINS} chains in parallel (pkpd_jax: `jax.vmap`; numpyro: "
        '`chain_method="vectorized"`), float64, the same starting points for every sampler, '
        "target acceptance 0.8 everywhere.",
        "",
        "Targets:",
        "",
    ]
    for t in result["targets"]:
        lines.append(
            f"- **{t['name']}**: {t['info']}; {t['num_warmup']} warm-up + "
            f"{t['num_samples']} draws per chain, {t['calls']} call(s) per sampler "
            f"(seeds 0..{t['calls'] - 1})."
        )
    lines += [
        "",
        "**ESS/s** = min bulk ESS over the population-level parameters (synthetic targets: all "
        "coordinates) ÷ **run s** (wall time of the whole call, warm-up + sampling, minus the "
        "compile time JAX reports for it); **ESS/s incl. compile** divides by the wall time. "
        "Median over the calls.",
        "",
        "| target | sampler | ESS/s | ESS/s incl. compile | min bulk ESS | run s | compile s | "
        "warm-up s | ESS / 1k grads | grads / draw | vmap overhead | ms / vgrad | max R-hat | "
        "div | accept | step size | max z |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["summary"]:
        max_z = "ref" if r["max_z"] is None or np.isnan(r["max_z"]) else f"{r['max_z']:.1f}"
        lines.append(
            f"| {r['target']} | {r['sampler']} | {r['ess_per_s']:,.1f} | "
            f"{r['ess_per_s_incl_compile']:,.1f} | {r['min_ess_bulk']:,.0f} | {r['run_s']:.2f} | "
            f"{r['compile_s']:.1f} | {r['warmup_s']:.2f} | {r['ess_per_1k_grads']:.1f} | "
            f"{r['grads_per_draw']:.1f} | {r['vmap_overhead']:.2f} | {r['ms_per_vgrad']:.3f} | "
            f"{r['max_rhat']:.3f} | {r['divergences']:.0f} | {r['acceptance']:.2f} | "
            f"{r['step_size']:.3f} | {max_z} |"
        )
    lines += [
        "",
        "Min-ESS parameter(s): "
        + "; ".join(
            f"{r['target']} / {r['sampler']}: {', '.join(r['min_ess_params'])}"
            for r in result["summary"]
            if r["target"] == "population"
        )
        + ".",
        "",
        "## QHMC ÷ NUTS",
        "",
        "ESS/s = (ESS per gradient) × (gradients per second), so the ratio splits into the "
        "sampler's statistical efficiency (ESS / 1k grads, sampling phase), the lock-step cost "
        "of vectorised chains (vmap overhead), the cost of one vectorised gradient (ms / vgrad) "
        "and the time spent in warm-up.",
        "",
        "| target | QHMC ÷ | ESS/s | ESS / 1k grads | grads / draw | vmap overhead | ms / vgrad | "
        "warm-up share of run |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["ratios"]:
        lines.append(
            f"| {r['target']} | {r['vs']} | {r['ess_per_s']:.2f}× | {r['ess_per_1k_grads']:.2f}× "
            f"| {r['grads_per_draw']:.2f}× | {r['vmap_overhead']:.2f}× | {r['ms_per_vgrad']:.2f}× "
            f"| {r['warmup_share']:.2f}× |"
        )
    lines += [
        "",
        "Columns: **compile s** = tracing + lowering + XLA compile time (jax.monitoring) within "
        "the call (numpyro compiles again on every call); **warm-up s** excludes compilation; "
        "**ESS / 1k grads** = min bulk ESS per 1000 gradient evaluations of the sampling phase "
        "(summed over chains); **grads / draw** = leapfrog steps per draw and chain; **vmap "
        "overhead** = gradients executed by the vectorised chains (each iteration costs as much "
        "as its longest chain) ÷ gradients used; **ms / vgrad** = sampling time per vectorised "
        "gradient (all chains at once); **div** = divergent transitions (all chains); "
        "**accept** = mean acceptance probability (NUTS: trajectory average); **max z** = largest "
        "|posterior mean − exact mean| ÷ MCSE (population: |mean − numpyro NUTS mean of the same "
        "seed| ÷ √(MCSE² + MCSE²ref)). All columns except the ESS/s ratios are medians over the "
        "calls. The machine is shared: compare rows of one file only.",
        "",
    ]
    return "\n".join(lines)


def machine_info():
    import blackjax
    import jax
    import numpyro

    return {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "device": str(jax.devices()[0].platform),
        "jax": jax.__version__,
        "blackjax": blackjax.__version__,
        "numpyro": numpyro.__version__,
        "loadavg_start": list(os.getloadavg()),
    }


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--quick",
        action="store_true",
        help="synthetic 500 + 500 x 1 call; population: pk_1c_iv, 12 subjects, 150 + 150",
    )
    p.add_argument("--targets", nargs="+", choices=TARGETS, default=list(TARGETS))
    p.add_argument("--num-warmup", type=int, default=1000, help="synthetic targets")
    p.add_argument("--num-samples", type=int, default=1000, help="synthetic targets")
    p.add_argument(
        "--repeats",
        type=int,
        default=3,
        help="calls per sampler on the synthetic targets (seeds 0..repeats-1)",
    )
    p.add_argument(
        "--subjects", type=int, default=6, help="dosed example subjects in the population target (0: all 48)"
    )
    p.add_argument(
        "--pd", action="store_true", help="population target with the PD model too (ODE solves: ~10x slower)"
    )
    p.add_argument(
        "--pk",
        default="pk_2c_iv_infusion",
        help="PK model of the population target (the study's own: pk_2c_iv_infusion)",
    )
    p.add_argument("--pop-warmup", type=int, default=500)
    p.add_argument("--pop-samples", type=int, default=500)
    p.add_argument("--pop-repeats", type=int, default=1)
    p.add_argument("--map-steps", type=int, default=200, help="MAP steps for the population starting points")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = p.parse_args(argv)
    if args.quick:
        args.num_warmup, args.num_samples, args.repeats = 500, 500, 1
        args.pk, args.subjects, args.pop_warmup, args.pop_samples = "pk_1c_iv", 12, 150, 150
        args.pop_repeats = 1
    return args


def main(argv=None):
    import sys

    args = parse_args(argv)
    import jax

    jax.config.update("jax_enable_x64", True)  # before any array is made
    jax.monitoring.register_event_duration_secs_listener(_on_duration_event)
    info = machine_info()
    t_start = time.perf_counter()
    targets = [t for t in synthetic_targets() if t.name in args.targets]
    if "population" in args.targets:
        targets.append(population_target(args.pk, args.subjects, args.pd, args.map_steps))
    records, target_info = [], []
    for target in targets:
        population = target.name == "population"
        num_warmup = args.pop_warmup if population else args.num_warmup
        num_samples = args.pop_samples if population else args.num_samples
        calls = args.pop_repeats if population else args.repeats
        console.rule(f"{target.name}: {target.info}")
        target_info.append(
            {
                "name": target.name,
                "info": target.info,
                "num_warmup": num_warmup,
                "num_samples": num_samples,
                "calls": calls,
                "names": target.names,
            }
        )
        for seed in range(calls):
            for sampler in SAMPLERS:
                if sampler == "numpyro nuts":
                    run = run_numpyro(target, seed, num_warmup, num_samples)
                else:
                    run = run_pkpd(target, sampler.split()[1], seed, num_warmup, num_samples)
                rec = record(target, sampler, seed, run)
                records.append(rec)
                console.log(
                    f"[{target.name}] {sampler:14s} seed {seed}: {rec['ess_per_s']:9,.1f} ESS/s "
                    f"(min ESS {rec['min_ess_bulk']:6,.0f} {rec['min_ess_param']}, run "
                    f"{rec['run_s']:6.2f} s + compile {rec['compile_s']:5.1f} s, "
                    f"{rec['grads_per_draw']:.1f} grads/draw, R-hat {rec['max_rhat']:.3f}, "
                    f"{rec['divergences']} div, load {rec['loadavg_1min']:.1f})"
                )
    compare_to_reference(records)
    summary, ratios = summarise(records, [t.name for t in targets])
    info["loadavg_end"] = list(os.getloadavg())
    info["total_s"] = time.perf_counter() - t_start
    argv_str = " ".join(sys.argv[1:] if argv is None else argv)
    result = {
        "machine": info,
        "args": {
            "quick": args.quick,
            "chains": CHAINS,
            "subjects": args.subjects,
            "pd": args.pd,
            "map_steps": args.map_steps,
            "command": f"python benchmarks/bench_samplers.py {argv_str}".strip(),
        },
        "targets": target_info,
        "summary": summary,
        "ratios": ratios,
        "records": records,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "samplers_quick" if args.quick else "samplers"  # a smoke run keeps the real results
    (args.out / f"{stem}.json").write_text(json.dumps(_finite(result), indent=2) + "\n")
    md = markdown(result)
    (args.out / f"{stem}.md").write_text(md)
    console.log(f"wrote {args.out / stem}.json and .md ({info['total_s']:.0f} s in all)")
    console.rule("results")
    print(md)


if __name__ == "__main__":
    main()
