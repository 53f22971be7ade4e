"""Speed and accuracy of the population log-density and its gradient (the HMC hot path).

Scenario: the bundled example study (48 subjects, 12 of them placebo; 14 daily 1 h infusions;
sparse PK and biomarker samples), ``get_model("pk_2c_iv_infusion", "pd_indirect_inhib_kin")``,
covariates ``"auto"`` (BW on clearances and volumes, COMED on CL): 357 unknowns. float64.

Variants, all built and timed in one process (timing rounds interleave the variants, so that load
changes on a shared machine hit them alike):

* ``before``: ``SolverConfig(method="ode", rtol=1e-6, atol=1e-9)``: one ``diffeqsolve`` (Tsit5,
  PID) per interval of the observation + dose-event grid, gradients by per-subject forward-mode
  Jacobians (diffrax ``ForwardMode``) in a custom VJP. This is what the population model did for
  every nonlinear model before the one-loop integrator, and what ``method="ode"`` still selects.
* ``reverse``: the same with ``gradient="reverse"`` (diffrax ``RecursiveCheckpointAdjoint``).
* ``after rtol=…``: ``method="auto"`` (the default): one adaptive Tsit5 loop per subject over the
  whole horizon, all subjects (and all chains, under ``vmap``) in one batched loop, forward
  sensitivities integrated alongside (``pkpd_jax.solve.solve_erk``), at the tolerances given
  (``atol = rtol/1000``); the package default (``DEFAULT_CONFIG``) is marked.

Measured, after compilation: ``logdensity`` (1 chain), ``value_and_grad`` (1 chain) and
``jit(vmap(value_and_grad))`` on 4 chains (the shape of an HMC step with 4 chains); minimum and
median over the rounds. Solver steps per subject (attempted steps; for ``before`` the sum over grid
intervals, and the number of loop iterations the subjects run in lockstep under ``vmap``: the sum
over intervals of the slowest subject). Accuracy against a tight reference (``method="ode"``,
rtol 1e-10, atol 1e-12) at the prior medians, a MAP point (``fit_map``) and jittered copies of it
(``N(0, 0.1²)`` per coordinate, as ``initial_positions`` does): ``|Δ log p|`` and
``max|Δ∇| / max|∇|``.

Usage::

    python benchmarks/bench_likelihood.py            # 7 rounds, 4 jittered positions (~5 min)
    python benchmarks/bench_likelihood.py --quick    # 3 rounds, 1 jittered position, no reverse

Results: ``<out>/likelihood.{json,md}`` (``likelihood_quick.*`` with ``--quick``); the Markdown
tables also go to stdout, progress to stderr.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
import time
import warnings
from pathlib import Path

import numpy as np


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--rounds", type=int, default=None)
    ap.add_argument("--jitters", type=int, default=None)
    ap.add_argument("--rtols", type=float, nargs="+", default=[1e-6, 1e-5, 1e-4])
    ap.add_argument("--map-steps", type=int, default=300)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = ap.parse_args(argv)
    rounds = args.rounds or (3 if args.quick else 7)
    jitters = args.jitters if args.jitters is not None else (1 if args.quick else 4)

    import diffrax as dfx
    import jax
    import jax.numpy as jnp

    jax.config.update("jax_enable_x64", True)  # before any array is made

    from pkpd_jax.data import Dataset, read_nonmem
    from pkpd_jax.data.example import example_paths
    from pkpd_jax.dosing import Regimen, count_le, event_grid, stable_argsort
    from pkpd_jax.inference.population import DEFAULT_CONFIG, PopulationModel, fit_map
    from pkpd_jax.models import get_model
    from pkpd_jax.solve import SolverConfig, solve_erk

    def vector_field(t, y, args):  # diffrax's (t, y, args) form, as the ode engine calls the model
        m, th, rate = args
        return m.vector_field(t, y, th, rate)

    warnings.simplefilter("ignore")
    load_start = os.getloadavg()
    ds = Dataset.from_frame(read_nonmem(example_paths()[0]))
    model = get_model("pk_2c_iv_infusion", "pd_indirect_inhib_kin")

    def build(**kw):
        return PopulationModel(model, ds, "auto", **kw)

    variants = {"before": dict(config=SolverConfig(method="ode", rtol=1e-6, atol=1e-9))}
    if not args.quick:
        variants["reverse"] = dict(
            config=SolverConfig(method="ode", rtol=1e-6, atol=1e-9), gradient="reverse"
        )
    for rtol in args.rtols:
        variants[f"after rtol={rtol:g}"] = dict(
            config=SolverConfig(rtol=rtol, atol=float(f"{rtol * 1e-3:.3g}"))
        )
    default_name = next(
        (k for k, v in variants.items() if v["config"] == DEFAULT_CONFIG and "gradient" not in v), None
    )
    if default_name is None:
        default_name = f"after default (rtol={DEFAULT_CONFIG.rtol:g})"
        variants[default_name] = dict(config=DEFAULT_CONFIG)
    pms = {k: build(**v) for k, v in variants.items()}
    ref = build(config=SolverConfig(method="ode", rtol=1e-10, atol=1e-12))
    log(f"{ds.n_subjects} subjects, dim {ref.dim}; variants: {list(variants)}")

    # ------------------------------------------------------------------ positions
    x0 = ref.prior_median_position()
    log(f"fit_map ({args.map_steps} steps) for a posterior-like position ...")
    x_map = fit_map(pms[default_name], x0, steps=args.map_steps)
    rng = np.random.default_rng(0)
    positions = {"prior median": x0, "MAP": x_map}
    for k in range(jitters):
        positions[f"MAP + jitter {k + 1}"] = x_map + 0.1 * rng.standard_normal(x_map.shape)
    X4 = jnp.stack([x_map + 0.1 * rng.standard_normal(x_map.shape) for _ in range(4)])

    # ------------------------------------------------------------------ accuracy
    log("reference (rtol 1e-10) ...")
    ref_vg = {k: ref.value_and_grad(x) for k, x in positions.items()}
    accuracy = {}
    for name, pm in pms.items():
        rows = {}
        for k, x in positions.items():
            v, g = pm.value_and_grad(x)
            v_only = pm.logdensity(x)
            rv, rg = ref_vg[k]
            rows[k] = {
                "logp": float(v),
                "err_logp": float(v - rv),
                "abs_err_logp": abs(float(v - rv)),
                "rel_err_grad": float(jnp.max(jnp.abs(g - rg)) / jnp.max(jnp.abs(rg))),
                "value_vs_value_and_grad": abs(float(v_only - v)),
            }
        accuracy[name] = rows
        worst = max(r["abs_err_logp"] for r in rows.values())
        log(f"  {name:22s} max |Δlogp| {worst:.2e}")

    # ------------------------------------------------------------------ timing
    fns = {}
    compile_s = {}
    for name, pm in pms.items():
        f4 = jax.jit(jax.vmap(pm.value_and_grad))
        fns[name] = {
            "value": (pm.logdensity, x_map),
            "value_and_grad": (pm.value_and_grad, x_map),
            "vg_4_chains": (f4, X4),
        }
        compile_s[name] = {}
        for what, (f, a) in fns[name].items():
            t0 = time.perf_counter()
            jax.block_until_ready(f(a))
            compile_s[name][what] = time.perf_counter() - t0
    times = {n: {w: [] for w in fns[n]} for n in fns}
    for r in range(rounds):
        log(f"timing round {r + 1}/{rounds} (load {os.getloadavg()[0]:.2f})")
        for name in fns:
            for what, (f, a) in fns[name].items():
                reps = 1 if (name in ("before", "reverse") and what == "vg_4_chains") else 3
                best = np.inf
                for _ in range(reps):
                    t0 = time.perf_counter()
                    jax.block_until_ready(f(a))
                    best = min(best, time.perf_counter() - t0)
                times[name][what].append(best)

    # ------------------------------------------------------------------ solver steps
    theta = np.asarray(ref.individual_parameters(x_map))
    times_obs, reg = jnp.asarray(ds.obs_time, float), ds.regimen

    def erk_steps(cfg):
        def one(th, t, a, b, c, d):
            return solve_erk(model, th, Regimen(a, b, c, d), t, cfg)[3]

        return np.asarray(
            jax.jit(jax.vmap(one))(theta, times_obs, reg.time, reg.amount, reg.duration, reg.cmt)
        )

    def diffrax_steps(cfg):
        """num_steps per grid interval, as the ode engine (``method="ode"``) integrates them."""

        def one(th, ts, a, b, c, d):
            regimen = Regimen(a, b, c, d)
            ts_sorted = ts[stable_argsort(ts)]
            y0 = model.init(th)
            t_begin = jnp.minimum(ts_sorted[0], jnp.min(regimen.time))
            bounds, kicks, rates = event_grid(model, th, regimen, t_begin, ts_sorted[-1])
            grid = jnp.concatenate([ts_sorted, bounds[:-1]])
            kick = jnp.concatenate([jnp.zeros((ts.shape[0], y0.shape[0])), kicks])
            g = stable_argsort(grid)
            grid, kick = grid[g], kick[g]
            rate = rates[jnp.clip(count_le(bounds[:-1], grid) - 1, 0, rates.shape[0] - 1)]
            t_next = jnp.concatenate([grid[1:], grid[-1:]])

            def step(y, k):
                sol = dfx.diffeqsolve(
                    dfx.ODETerm(vector_field),
                    cfg.solver,
                    grid[k],
                    t_next[k],
                    None,
                    y + kick[k],
                    args=(model, th, rate[k]),
                    stepsize_controller=dfx.PIDController(rtol=cfg.rtol, atol=cfg.atol),
                    max_steps=cfg.max_steps,
                    throw=False,
                )
                return sol.ys[-1], sol.stats["num_steps"]

            return jax.lax.scan(step, y0, jnp.arange(grid.shape[0]))[1]

        per_interval = np.asarray(
            jax.jit(jax.vmap(one))(theta, times_obs, reg.time, reg.amount, reg.duration, reg.cmt)
        )
        return per_interval.sum(1), int(per_interval.max(0).sum()), per_interval.shape[1]

    steps = {}
    old_sum, old_lockstep, n_intervals = diffrax_steps(variants["before"]["config"])
    steps["before"] = {
        "mean": float(old_sum.mean()),
        "max": int(old_sum.max()),
        "lockstep_iterations": old_lockstep,
        "solves_per_subject": n_intervals,
    }
    for name, v in variants.items():
        if name.startswith("after"):
            s = erk_steps(v["config"])
            steps[name] = {
                "mean": float(s.mean()),
                "max": int(s.max()),
                "lockstep_iterations": int(s.max()),
                "solves_per_subject": 1,
            }

    # ------------------------------------------------------------------ report
    load_end = os.getloadavg()
    ms = lambda v: 1e3 * np.asarray(v)
    summary = {
        n: {
            w: {"min_ms": float(ms(t).min()), "median_ms": float(np.median(ms(t))), "runs_ms": ms(t).tolist()}
            for w, t in times[n].items()
        }
        for n in times
    }
    base = summary["before"]
    lines = [
        f"# Population log-density and gradient: {model.name}, {ds.n_subjects} subjects, "
        f"dim {ref.dim}",
        "",
        f"{dt.datetime.now().isoformat(timespec='seconds')} · {platform.platform()} · "
        f"{os.cpu_count()} CPUs · "
        f"jax {jax.__version__} · load average {load_start[0]:.2f} → {load_end[0]:.2f} · {rounds} rounds · "
        f"default = `{default_name}`",
        "",
        "Time per call after compilation, ms (min / median over rounds); speed-up of the min vs `before`.",
        "",
        "| variant | value | value_and_grad | 4 chains vmapped | speed-up (vg, 4 chains) |",
        "|---|---|---|---|---|",
    ]
    for n, s in summary.items():
        cell = lambda w: f"{s[w]['min_ms']:.1f} / {s[w]['median_ms']:.1f}"
        su = (
            f"{base['value_and_grad']['min_ms'] / s['value_and_grad']['min_ms']:.0f}×, "
            f"{base['vg_4_chains']['min_ms'] / s['vg_4_chains']['min_ms']:.0f}×"
        )
        mark = " (default)" if n == default_name else ""
        lines.append(
            f"| {n}{mark} | {cell('value')} | {cell('value_and_grad')} | {cell('vg_4_chains')} | {su} |"
        )
    lines += [
        "",
        "Solver steps per subject at the MAP point (attempted steps; lockstep = loop iterations when all "
        "subjects run together under `vmap`).",
        "",
        "| variant | mean | max | lockstep iterations | solves per subject |",
        "|---|---|---|---|---|",
    ]
    for n, s in steps.items():
        lines.append(
            f"| {n} | {s['mean']:.0f} | {s['max']} | {s['lockstep_iterations']} | {s['solves_per_subject']} |"
        )
    lines += [
        "",
        'Accuracy against the reference (`method="ode"`, rtol 1e-10, atol 1e-12): max over positions '
        f"({', '.join(positions)}) of |Δ log p| and of max|Δ∇|/max|∇|; log p at the MAP ≈ "
        f"{float(ref_vg['MAP'][0]):.1f}. The spread (max − min of the signed error over the MAP and its "
        "jittered copies) is what distorts the posterior; a constant offset does not.",
        "",
        "| variant | max abs error log p | spread of the error near the MAP | max rel error gradient "
        "| value vs value_and_grad |",
        "|---|---|---|---|---|",
    ]
    for n, rows in accuracy.items():
        near = [r["err_logp"] for k, r in rows.items() if k.startswith("MAP")]
        lines.append(
            f"| {n} | {max(r['abs_err_logp'] for r in rows.values()):.1e} | {max(near) - min(near):.1e} | "
            f"{max(r['rel_err_grad'] for r in rows.values()):.1e} | "
            f"{max(r['value_vs_value_and_grad'] for r in rows.values()):.0e} |"
        )
    md = "\n".join(lines) + "\n"
    print(md)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "likelihood_quick" if args.quick else "likelihood"
    (args.out / f"{stem}.md").write_text(md)
    (args.out / f"{stem}.json").write_text(
        json.dumps(
            {
                "machine": {
                    "platform": platform.platform(),
                    "python": platform.python_version(),
                    "cpus": os.cpu_count(),
                    "jax": jax.__version__,
                    "loadavg_start": list(load_start),
                    "loadavg_end": list(load_end),
                    "date": dt.datetime.now().isoformat(timespec="seconds"),
                },
                "model": model.name,
                "subjects": ds.n_subjects,
                "dim": ref.dim,
                "rounds": rounds,
                "default": default_name,
                "variants": {
                    k: {
                        "rtol": v["config"].rtol,
                        "atol": v["config"].atol,
                        "method": v["config"].method,
                        "gradient": v.get("gradient", "forward"),
                    }
                    for k, v in variants.items()
                },
                "timing": summary,
                "compile_s": compile_s,
                "steps": steps,
                "accuracy": accuracy,
            },
            indent=1,
        )
    )
    log(f"wrote {args.out / stem}.{{md,json}}")


if __name__ == "__main__":
    main()
