"""Speed benchmark of the pkpd_jax population simulator (see benchmarks/README.md).

Sections (each timed as best-of-``--repeats`` after a warm-up call that also compiles):

1. ``pkpd``: ``simulate_population`` of ``pk_2c_iv_infusion + pd_indirect_inhib_kin`` (Tsit5,
   rtol 1e-6, atol 1e-9, float64), for every ``--n`` and a few ``chunk_size`` values; once on the
   default device set, once re-launched in a subprocess with 2 forced host devices (sharded).
2. ``scipy``: ``solve_ivp(method="LSODA")`` one subject at a time on a random subset, integrated
   piecewise between infusion starts/stops; speed ratio and agreement with pkpd_jax.
3. ``pk``: the linear PK part alone: pkpd_jax ``method="expm"`` and ``"ode"`` against a
   vectorised closed-form two-compartment infusion superposition written in JAX below.

Usage::

    python benchmarks/bench_simulate.py                 # 10k and 100k subjects (several minutes)
    python benchmarks/bench_simulate.py --quick         # 2k subjects, 30 scipy subjects (<2 min)
    python benchmarks/bench_simulate.py --n 10000 --out benchmarks/results

Results go to ``<out>/simulate.json`` and ``<out>/simulate.md``. Progress goes to stderr.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from rich.console import Console


console = Console(stderr=True, width=110, log_path=False)

# ----------------------------------------------------------------------------- the scenario
PKPD = ("pk_2c_iv_infusion", "pd_indirect_inhib_kin")
# Typical values in the joint model's parameter order (CL, V1, Q, V2, R0, kout, IC50).
TYPICAL = {"CL": 3.0, "V1": 20.0, "Q": 4.0, "V2": 150.0, "R0": 10.0, "kout": 0.05, "IC50": 0.01}
CV = 0.30  # between-subject variability (log-normal, 30% CV on every parameter)
DOSE, TAU, N_DOSES, T_INF = 10.0, 24.0, 7, 1.0  # 10 mg as 1 h infusions, once daily, 7 days
TS = np.linspace(0.0, 168.0, 25)  # 25 observations over 0-168 h (every 7 h)
RTOL, ATOL = 1e-6, 1e-9
SHARD_DEVICES = 2  # forced host devices in the sharded configuration (= the CPU cores here)


def population(n: int, seed: int) -> np.ndarray:
    """(n, 7) parameters, log-normal around TYPICAL with 30% CV. The first n rows of a larger
    population are the same subjects (one generator, one draw per size)."""
    omega = np.sqrt(np.log1p(CV**2))
    z = np.random.default_rng(seed).standard_normal((n, len(TYPICAL)))
    return np.asarray(list(TYPICAL.values())) * np.exp(omega * z)


def dose_table():
    """Dose start times, amounts and durations as numpy arrays (for scipy and the closed form)."""
    t = TAU * np.arange(N_DOSES)
    return t, np.full(N_DOSES, DOSE), np.full(N_DOSES, T_INF)


# ----------------------------------------------------------------------------- timing helpers
# JAX reports how long it spends tracing, lowering and compiling (jax.monitoring events); their
# sum over the first call is the compile time, measured apart from the run (and from the noise of
# a loaded machine).
_COMPILE_EVENTS = (
    "/jax/core/compile/jaxpr_trace_duration",
    "/jax/core/compile/jaxpr_to_mlir_module_duration",
    "/jax/core/compile/backend_compile_duration",
)
_compile_seconds = [0.0]


def _on_duration_event(event: str, duration: float, **_):
    if event in _COMPILE_EVENTS:
        _compile_seconds[0] += duration


def timed(fn, repeats: int, min_total: float = 3.0, max_repeats: int = 15):
    """Call `fn` once (warm-up: trace + compile + run), then at least `repeats` times, and more
    (up to `max_repeats`) while the timed runs add up to less than `min_total` seconds, so that
    fast configurations get more samples against background load.

    Returns (first_s, compile_s, [run_s], output); report min(run_s). `fn` must block until its
    result is ready."""
    _compile_seconds[0] = 0.0
    t0 = time.perf_counter()
    out = fn()
    first = time.perf_counter() - t0
    compile_s = _compile_seconds[0]
    runs = []
    while len(runs) < repeats or (sum(runs) < min_total and len(runs) < max_repeats):
        t0 = time.perf_counter()
        out = fn()
        runs.append(time.perf_counter() - t0)
    return first, compile_s, runs, out


def max_rel_err(a, ref, floor: float = 1e-12) -> float:
    """max |a - ref| / max(|ref|, floor) (both zero at pre-dose t = 0 counts as 0)."""
    a, ref = np.asarray(a, float), np.asarray(ref, float)
    return float(np.max(np.abs(a - ref) / np.maximum(np.abs(ref), floor)))


def record(name, n, first, compile_s, runs, **extra):
    """One configuration's timing entry (throughput from the best run)."""
    best = min(runs)
    return {
        "config": name,
        "n": n,
        "traj_per_s": n / best,
        "run_s": best,
        "runs_s": runs,
        "first_call_s": first,  # trace + compile + one run
        "compile_s": compile_s,  # trace + lowering + XLA compile (jax.monitoring)
        "loadavg_1min": os.getloadavg()[0],  # background load right after the measurement
        **extra,
    }


def chunk_candidates(n: int, override: list[int] | None) -> list[int | None]:
    """chunk_size values to try: everything at once, and chunks of 25k/10k for big populations."""
    if override is not None:
        return [None if c <= 0 else c for c in override]
    return [None] + [c for c in (25_000, 10_000) if c < n] if n > 25_000 else [None]


# ----------------------------------------------------------------------------- 1. pkpd_jax
def bench_pkpd(sizes, seed, repeats, chunks_override, subset, label):
    """Joint PK/PD model through `simulate_population`; returns (records, subset solution)."""
    import jax

    from pkpd_jax.dosing import Regimen
    from pkpd_jax.models import get_model
    from pkpd_jax.solve import SolverConfig, simulate_population

    model = get_model(*PKPD)
    assert model.param_names == tuple(TYPICAL), model.param_names
    regimen = Regimen.repeated(DOSE, TAU, N_DOSES, duration=T_INF)
    config = SolverConfig(rtol=RTOL, atol=ATOL)
    n_dev = jax.device_count()
    out, subset_sol = [], None
    for n in sizes:
        theta = population(n, seed)
        results = []
        for chunk in chunk_candidates(n, chunks_override):

            def run():
                sol = simulate_population(model, theta, regimen, TS, config=config, chunk_size=chunk)
                return jax.block_until_ready(sol)

            first, compile_s, runs, sol = timed(run, repeats)
            rec = record(label, n, first, compile_s, runs, chunk_size=chunk, devices=n_dev)
            results.append(rec)
            console.log(
                f"[{label}] n={n} chunk={chunk} devices={n_dev}: {rec['traj_per_s']:,.0f} traj/s "
                f"(run {rec['run_s']:.2f} s, compile {compile_s:.2f} s, load {rec['loadavg_1min']:.1f})"
            )
            if subset_sol is None:  # keep the smallest population's subset for the comparisons
                subset_sol = {"conc": np.asarray(sol.conc)[subset], "resp": np.asarray(sol.resp)[subset]}
        best = max(results, key=lambda r: r["traj_per_s"])
        for r in results:
            r["best_chunk"] = r is best
        out += results
    return out, subset_sol


def run_sharded_subprocess(args, subset) -> tuple[list, dict | None]:
    """Re-launch this script with 2 forced host devices (XLA_FLAGS must precede `import jax`)."""
    env = dict(os.environ)
    flag = f"--xla_force_host_platform_device_count={SHARD_DEVICES}"
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " " + flag).strip()
    cmd = [sys.executable, __file__, "--worker-sharded", "--seed", str(args.seed)]
    cmd += ["--repeats", str(args.repeats), "--n", *map(str, args.n)]
    cmd += ["--subset", ",".join(map(str, subset))]
    if args.chunk_sizes is not None:
        cmd += ["--chunk-sizes", *map(str, args.chunk_sizes)]
    console.log(f"re-launching with XLA_FLAGS={flag!r} for the sharded configuration")
    proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, text=True, check=True)
    payload = json.loads(proc.stdout.strip().splitlines()[-1])
    return payload["records"], payload["subset"]


# ----------------------------------------------------------------------------- 2. scipy peer
def scipy_subject(theta, ts, rtol=RTOL, atol=ATOL, method="LSODA"):
    """One subject with scipy, as a careful user writes it: integrate piecewise between dose
    events (infusion starts and stops) with a constant input rate in each piece, restart the
    solver at every event, and read the observations with `t_eval`. Observations at an event
    time belong to the piece that ends there (pre-dose rule; the state is continuous here since
    all doses are infusions). Returns (conc, resp) at `ts`."""
    from scipy.integrate import solve_ivp

    CL, V1, Q, V2, R0, kout, IC50 = map(float, theta)
    kin = R0 * kout

    def rhs(t, y, rate):
        a1, a2, r = y
        c1 = a1 / V1
        flow = Q * (c1 - a2 / V2)
        return [rate - CL * c1 - flow, flow, kin * (1.0 - c1 / (IC50 + c1)) - kout * r]

    t_dose, amt, dur = dose_table()
    t_end = t_dose + dur
    rate_of = amt / dur
    horizon = float(ts[-1])
    bounds = np.unique(np.concatenate([[min(ts[0], t_dose[0])], t_dose, t_end, [horizon]]))
    bounds = bounds[bounds <= horizon]
    y = np.array([0.0, 0.0, R0])
    states = np.empty((ts.size, 3))
    states[ts <= bounds[0]] = y  # observations at the first event: pre-dose baseline
    for a, b in zip(bounds[:-1], bounds[1:]):
        rate = float(np.sum(rate_of[(t_dose <= a) & (a < t_end)]))
        inside = (ts > a) & (ts < b)
        t_eval = np.append(ts[inside], b)  # always end on b to carry the state on
        sol = solve_ivp(rhs, (a, b), y, method=method, t_eval=t_eval, rtol=rtol, atol=atol,
                        args=(rate,))
        if not sol.success:
            raise RuntimeError(f"solve_ivp failed: {sol.message}")
        states[inside] = sol.y[:, :-1].T
        y = sol.y[:, -1]
        states[ts == b] = y  # recorded before any bolus at b (pre-dose)
    conc = states[:, 0] / V1
    return conc, states[:, 2]


def bench_scipy(theta_subset, repeats):
    """Time scipy on the subset (best of `repeats` passes); return (record, conc, resp)."""

    def run():
        return [scipy_subject(th, TS) for th in theta_subset]

    # No compilation: every pass is a measured pass (repeats passes in total).
    runs, out = [], None
    for _ in range(max(repeats, 1)):
        t0 = time.perf_counter()
        out = run()
        runs.append(time.perf_counter() - t0)
    n = len(theta_subset)
    rec = record("scipy LSODA (1 subject at a time)", n, runs[0], 0.0, runs)
    conc = np.stack([o[0] for o in out])
    resp = np.stack([o[1] for o in out])
    console.log(f"[scipy] {n} subjects: {rec['traj_per_s']:,.1f} traj/s (best {min(runs):.2f} s)")
    return rec, conc, resp


def tight_reference(theta_subset):
    """A much tighter solution (DOP853, rtol 1e-12) to tell which of the two solvers is closer."""
    out = [scipy_subject(th, TS, rtol=1e-12, atol=1e-14, method="DOP853") for th in theta_subset]
    return np.stack([o[0] for o in out]), np.stack([o[1] for o in out])


# ----------------------------------------------------------------------------- 3. linear PK
def make_closed_form():
    """Two-compartment IV infusion concentrations, closed form (Gabrielsson & Weiner ch. 2-3).

    Unit-impulse response C(t) = A e^{-αt} + B e^{-βt} with A = (α - k21)/(V1 (α - β)),
    B = (k21 - β)/(V1 (α - β)). An infusion of rate R over [0, T) gives, at time τ after its
    start, Σ_{λ∈{α,β}} R·coef_λ/λ · (1 - e^{-λ min(τ,T)}) · e^{-λ max(τ-T, 0)} (zero for τ ≤ 0,
    which also gives pre-dose values at a dose time); doses superpose. jit + vmap over subjects.
    """
    import jax
    import jax.numpy as jnp

    def one(theta, t_dose, amt, dur, ts):
        CL, V1, Q, V2 = theta[0], theta[1], theta[2], theta[3]
        k10, k12, k21 = CL / V1, Q / V1, Q / V2
        s = k10 + k12 + k21
        alpha = 0.5 * (s + jnp.sqrt(s * s - 4.0 * k10 * k21))
        beta = k10 * k21 / alpha  # αβ = k10 k21; avoids cancellation in (s - sqrt(...)) / 2
        a = (alpha - k21) / (V1 * (alpha - beta))
        b = (k21 - beta) / (V1 * (alpha - beta))
        tau = ts[:, None] - t_dose[None, :]  # (observations, doses)
        t_in = jnp.clip(tau, 0.0, dur)  # time spent infusing so far
        t_post = jnp.maximum(tau - dur, 0.0)  # time since the infusion stopped

        def term(coef, lam):
            return coef / lam * -jnp.expm1(-lam * t_in) * jnp.exp(-lam * t_post)

        rate = amt / dur
        return jnp.sum(rate * (term(a, alpha) + term(b, beta)), axis=1)

    return jax.jit(jax.vmap(one, in_axes=(0, None, None, None, None)))


def bench_pk(sizes, seed, repeats):
    import jax
    import jax.numpy as jnp

    from pkpd_jax.dosing import Regimen
    from pkpd_jax.models import get_model
    from pkpd_jax.solve import SolverConfig, simulate_population

    model = get_model(PKPD[0])
    regimen = Regimen.repeated(DOSE, TAU, N_DOSES, duration=T_INF)
    closed_form = make_closed_form()
    doses = [jnp.asarray(x) for x in dose_table()]
    out = []
    for n in sizes:
        theta = population(n, seed)[:, :4]  # CL, V1, Q, V2
        theta_j = jnp.asarray(theta)
        ts_j = jnp.asarray(TS)
        first, compile_s, runs, ref = timed(
            lambda: jax.block_until_ready(closed_form(theta_j, *doses, ts_j)), repeats
        )
        cf = record("closed form (JAX, jit+vmap)", n, first, compile_s, runs)
        console.log(f"[pk] n={n} closed form: {cf['traj_per_s']:,.0f} traj/s")
        ref = np.asarray(ref)
        out.append(cf)
        for method in ("expm", "ode"):
            config = SolverConfig(rtol=RTOL, atol=ATOL, method=method)

            def run():
                sol = simulate_population(model, theta, regimen, TS, config=config)
                return jax.block_until_ready(sol)

            first, compile_s, runs, sol = timed(run, repeats)
            rec = record(f"pkpd_jax PK only, method={method!r}", n, first, compile_s, runs,
                         devices=jax.device_count())
            rec["closed_form_over_pkpd_jax"] = cf["traj_per_s"] / rec["traj_per_s"]
            rec["max_rel_err_vs_closed_form"] = max_rel_err(sol.conc, ref)
            console.log(
                f"[pk] n={n} {method}: {rec['traj_per_s']:,.0f} traj/s, closed form is "
                f"{rec['closed_form_over_pkpd_jax']:.1f}x faster, max rel err "
                f"{rec['max_rel_err_vs_closed_form']:.1e}"
            )
            out.append(rec)
    return out


def bench_expm_diagnostic(n, seed, repeats):
    """Why the expm path costs what it costs: time its matrix exponentials alone.

    The expm path does one `jax.scipy.linalg.expm` of the 3x3 augmented matrix
    ``[[K, r], [0, 0]]·dt`` per grid step (40 steps per subject here). Under vmap, expm's
    `lax.switch` over five Padé orders and its 16-step `lax.cond` squaring loop become selects,
    so every branch is computed for every matrix (plus a batched LU solve). For comparison, a
    fixed-cost scaling-and-squaring Taylor expm (6 squarings, degree 12; enough for
    ``‖K dt‖ ≲ 6`` to ~1e-14) on the very same matrices."""
    import jax
    import jax.numpy as jnp

    # The library's grid for this scenario: observations, the start, infusion starts and ends.
    t_dose, amt, dur = dose_table()
    grid = np.sort(np.concatenate([TS, [0.0], t_dose, t_dose + dur]))
    dts = np.diff(grid, append=grid[-1])
    infusing = np.array([((t_dose <= g) & (g < t_dose + dur)).any() for g in grid])
    rate = np.where(infusing, DOSE / T_INF, 0.0)
    CL, V1, Q, V2 = population(n, seed)[:, :4].T
    K = np.zeros((n, 3, 3))
    K[:, 0, 0], K[:, 0, 1] = -(CL + Q) / V1, Q / V2
    K[:, 1, 0], K[:, 1, 1] = Q / V1, -Q / V2
    aug = np.repeat(K[:, None], grid.size, axis=1)
    aug[:, :, 0, 2] = rate
    mats = jnp.asarray(aug * dts[None, :, None, None])  # (subjects, grid steps, 3, 3)

    def taylor_expm(a, squarings=6, degree=12):
        x = a / 2.0**squarings
        eye = jnp.eye(a.shape[-1], dtype=a.dtype)
        e = eye + x / degree
        for k in range(degree - 1, 0, -1):  # Horner: I + x/1 (I + x/2 (I + ...))
            e = eye + x @ e / k
        for _ in range(squarings):
            e = e @ e
        return e

    out = {"n": n, "matrices_per_subject": int(grid.size), "max_norm_1": float(
        np.max(np.abs(np.asarray(mats)).sum(axis=-2)))}
    ref = None
    for name, fn in (("jax_scipy_expm", jax.scipy.linalg.expm), ("taylor_fixed", taylor_expm)):
        f = jax.jit(jax.vmap(jax.vmap(fn)))
        _, _, runs, res = timed(lambda: jax.block_until_ready(f(mats)), repeats)
        out[f"{name}_s"] = min(runs)
        ref = res if ref is None else ref
        console.log(f"[expm] {n} subjects x {grid.size} x {name}: {min(runs):.3f} s")
    out["taylor_max_abs_diff"] = float(jnp.max(jnp.abs(res - ref)))
    return out


# ----------------------------------------------------------------------------- reporting
def machine_info():
    import diffrax
    import equinox
    import jax
    import jaxlib
    import scipy

    dev = jax.devices()[0]
    return {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "diffrax": diffrax.__version__,
        "equinox": equinox.__version__,
        "scipy": scipy.__version__,
        "numpy": np.__version__,
        "backend": jax.default_backend(),
        "device_kind": dev.device_kind,
        "device_count": jax.device_count(),
        "x64": bool(jax.config.jax_enable_x64),
        "loadavg_start": list(os.getloadavg()),
    }


def fmt(x, spec):
    return "" if x is None else format(x, spec)


def markdown(result) -> str:
    m = result["machine"]
    lines = [
        "# Simulator speed benchmark",
        "",
        f"{m['date']} · {m['platform']} · {m['cpu_count']} CPUs · {m['backend']} "
        f"({m['device_kind']}) · jax {m['jax']} · diffrax {m['diffrax']} · scipy {m['scipy']} · "
        f"load avg {m['loadavg_start'][0]:.2f} → {m['loadavg_end'][0]:.2f}",
        "",
        f"Scenario: {PKPD[0]} + {PKPD[1]}, {N_DOSES} × {DOSE:g} mg {T_INF:g} h infusions every "
        f"{TAU:g} h, {TS.size} observations over 0–{TS[-1]:g} h, 30% CV log-normal parameters, "
        f"float64, rtol {RTOL:g}, atol {ATOL:g}. Best of ≥ {result['args']['repeats']} timed runs (more "
        "for fast configurations, up to 3 s of runs) after a warm-up call. compile = trace + lowering + "
        "XLA compile time of the first call (jax.monitoring). traj/s = n ÷ best run.",
        "",
        "## 1-2. Joint PK/PD: pkpd_jax vs scipy LSODA",
        "",
        "| configuration | n | devices | chunk_size | traj/s | run s | compile s | first call s "
        "| load | × scipy |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["pkpd"]:
        chunk = "all" if r["chunk_size"] is None else f"{r['chunk_size']:,}"
        star = " **(best)**" if r.get("best_chunk") and len(
            [q for q in result["pkpd"] if q["config"] == r["config"] and q["n"] == r["n"]]) > 1 else ""
        lines.append(
            f"| {r['config']}{star} | {r['n']:,} | {r['devices']} | {chunk} | "
            f"{r['traj_per_s']:,.0f} | {r['run_s']:.3f} | {r['compile_s']:.2f} | "
            f"{r['first_call_s']:.2f} | {r['loadavg_1min']:.1f} | {r['speedup_vs_scipy']:,.0f}× |"
        )
    s = result["scipy"]
    lines.append(
        f"| {s['config']} | {s['n']} | 1 | – | {s['traj_per_s']:,.1f} | {s['run_s']:.3f} | – | – "
        f"| {s['loadavg_1min']:.1f} | 1× |"
    )
    acc = result["accuracy"]
    lines += [
        "",
        f"Agreement on the {s['n']} scipy subjects (max relative error, all {TS.size} times): "
        f"concentration {acc['conc_max_rel_err_pkpd_vs_scipy']:.1e}, response "
        f"{acc['resp_max_rel_err_pkpd_vs_scipy']:.1e}. Against a tight reference (DOP853, "
        f"rtol 1e-12) on {acc['tight_reference_subjects']} of them: pkpd_jax conc "
        f"{acc['conc_max_rel_err_pkpd_vs_tight']:.1e} / resp {acc['resp_max_rel_err_pkpd_vs_tight']:.1e}, "
        f"scipy LSODA conc {acc['conc_max_rel_err_scipy_vs_tight']:.1e} / resp "
        f"{acc['resp_max_rel_err_scipy_vs_tight']:.1e}.",
    ]
    if acc.get("sharded_max_abs_diff") is not None:
        lines.append(
            f"Sharded vs 1-device results on those subjects: max |diff| "
            f"{acc['sharded_max_abs_diff']:.1e}."
        )
    lines += [
        "",
        "## 3. Linear PK alone (pk_2c_iv_infusion): pkpd_jax vs closed form",
        "",
        "| configuration | n | traj/s | run s | compile s | load | closed form ÷ pkpd_jax "
        "| max rel err |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["pk"]:
        ratio = r.get("closed_form_over_pkpd_jax")
        err = r.get("max_rel_err_vs_closed_form")
        lines.append(
            f"| {r['config']} | {r['n']:,} | {r['traj_per_s']:,.0f} | {r['run_s']:.3f} | "
            f"{r['compile_s']:.2f} | {r['loadavg_1min']:.1f} | "
            f"{'–' if ratio is None else f'{ratio:.1f}×'} | "
            f"{'–' if err is None else f'{err:.1e}'} |"
        )
    if result.get("expm_diagnostic"):
        d = result["expm_diagnostic"]
        expm_path = next(r for r in result["pk"] if r["n"] == d["n"] and "expm" in r["config"])
        lines += [
            "",
            f"Diagnostic ({d['n']:,} subjects × {d['matrices_per_subject']} augmented 3×3 "
            f"matrices, the expm path's own): `jax.scipy.linalg.expm` alone takes "
            f"{d['jax_scipy_expm_s']:.3f} s of the expm path's {expm_path['run_s']:.3f} s; a "
            f"fixed-cost Taylor scaling-and-squaring expm takes {d['taylor_fixed_s']:.3f} s "
            f"(max |diff| {d['taylor_max_abs_diff']:.1e}).",
        ]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- entry point
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--n", type=int, nargs="+", default=[10_000, 100_000], help="population sizes")
    p.add_argument("--quick", action="store_true", help="2k subjects, 30 scipy subjects")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    p.add_argument("--repeats", type=int, default=3, help="timed runs after the warm-up call")
    p.add_argument("--scipy-subjects", type=int, default=200)
    p.add_argument("--tight-subjects", type=int, default=50,
                   help="scipy subjects also solved at rtol 1e-12 as an accuracy reference")
    p.add_argument("--chunk-sizes", type=int, nargs="+", default=None,
                   help="chunk_size values to try (0 = all at once); default: all, 25k, 10k "
                        "for n > 25k")
    p.add_argument("--no-sharded", action="store_true", help="skip the 2-device configuration")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--worker-sharded", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--subset", type=str, default="", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.n, args.scipy_subjects, args.tight_subjects = [2_000], 30, 10
    return args


def main(argv=None):
    args = parse_args(argv)
    import jax

    jax.config.update("jax_enable_x64", True)  # before any array is made
    jax.monitoring.register_event_duration_secs_listener(_on_duration_event)

    if args.worker_sharded:  # child process: only the sharded pkpd_jax configuration
        subset = [int(i) for i in args.subset.split(",") if i]
        label = f"pkpd_jax sharded ({jax.device_count()} host devices)"
        recs, sol = bench_pkpd(args.n, args.seed, args.repeats, args.chunk_sizes, subset, label)
        sol = None if sol is None else {k: v.tolist() for k, v in sol.items()}
        print(json.dumps({"records": recs, "subset": sol}))
        return

    info = machine_info()
    console.rule(f"pkpd_jax simulator benchmark: n = {args.n}, {info['device_count']} device(s)")
    rng = np.random.default_rng(args.seed + 1)
    n_sub = min(args.scipy_subjects, min(args.n))
    subset = np.sort(rng.choice(min(args.n), size=n_sub, replace=False))

    # 1. pkpd_jax on the default devices, then sharded over 2 forced host devices.
    pkpd, sol = bench_pkpd(args.n, args.seed, args.repeats, args.chunk_sizes, subset,
                           "pkpd_jax")
    sharded_sol = None
    if not args.no_sharded:
        recs, sharded_sol = run_sharded_subprocess(args, subset)
        pkpd += recs

    # 2. scipy on the subset (the same subjects as in the smallest population).
    theta_sub = population(min(args.n), args.seed)[subset]
    scipy_rec, s_conc, s_resp = bench_scipy(theta_sub, args.repeats)
    for r in pkpd:
        r["speedup_vs_scipy"] = r["traj_per_s"] / scipy_rec["traj_per_s"]
    n_tight = min(args.tight_subjects, n_sub)
    console.log(f"[scipy] tight reference (DOP853, rtol 1e-12) on {n_tight} subjects")
    t_conc, t_resp = tight_reference(theta_sub[:n_tight])
    accuracy = {
        "conc_max_rel_err_pkpd_vs_scipy": max_rel_err(sol["conc"], s_conc),
        "resp_max_rel_err_pkpd_vs_scipy": max_rel_err(sol["resp"], s_resp),
        "tight_reference_subjects": n_tight,
        "conc_max_rel_err_pkpd_vs_tight": max_rel_err(sol["conc"][:n_tight], t_conc),
        "resp_max_rel_err_pkpd_vs_tight": max_rel_err(sol["resp"][:n_tight], t_resp),
        "conc_max_rel_err_scipy_vs_tight": max_rel_err(s_conc[:n_tight], t_conc),
        "resp_max_rel_err_scipy_vs_tight": max_rel_err(s_resp[:n_tight], t_resp),
        "sharded_max_abs_diff": None if sharded_sol is None else float(max(
            np.max(np.abs(np.asarray(sharded_sol[k]) - sol[k])) for k in ("conc", "resp"))),
    }
    console.log("[accuracy] " + ", ".join(
        f"{k}={v:.1e}" if isinstance(v, float) else f"{k}={v}" for k, v in accuracy.items()))

    # 3. Linear PK alone against the closed form, plus the expm cost on its own.
    pk = bench_pk(args.n, args.seed, args.repeats)
    expm_diag = bench_expm_diagnostic(min(args.n), args.seed, args.repeats)

    info["loadavg_end"] = list(os.getloadavg())
    result = {
        "machine": info,
        "args": {"n": args.n, "repeats": args.repeats, "seed": args.seed, "quick": args.quick,
                 "scipy_subjects": n_sub, "rtol": RTOL, "atol": ATOL},
        "scenario": {"model": "+".join(PKPD), "typical": TYPICAL, "cv": CV, "dose_mg": DOSE,
                     "interval_h": TAU, "n_doses": N_DOSES, "infusion_h": T_INF,
                     "times_h": TS.tolist()},
        "pkpd": pkpd,
        "scipy": scipy_rec,
        "accuracy": accuracy,
        "pk": pk,
        "expm_diagnostic": expm_diag,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "simulate_quick" if args.quick else "simulate"  # a smoke run keeps the real results
    (args.out / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    md = markdown(result)
    (args.out / f"{stem}.md").write_text(md)
    console.log(f"wrote {args.out / stem}.json and .md")
    console.rule("results")
    print(md)


if __name__ == "__main__":
    main()
