"""PBPK Transformer forecaster: accuracy on held-out drugs and speed against the PBPK ODE solve.

1. **Corpus** (`pkpd_jax.pbpk.forecast.build_corpus`): random drugs × species × body weight × dose
   × route (IV bolus, oral), one dose each, simulated with the whole-body PBPK model on a
   log-spaced grid (20 times over 0.25-48 h in humans, scaled by (BW/73)^0.25 for other species),
   10% proportional observation noise; drugs split 80/10/10 into train / validation / test.
2. **Training** (`train_forecaster`): the Transformer forecaster reads the drug, species, body
   weight, dose, route and the first 5 observed concentrations and predicts the other 15.
3. **Accuracy** on the held-out drugs (`evaluate`): fold error ``exp|ln C_pred - ln C_true|`` over
   every forecast point above the LLOQ (1e-4 × C_max); median and fraction within 2-fold, by
   route and species, next to a log-linear extrapolation of the last two observations.
4. **Throughput** on CPU, same run, same held-out subjects: the forecaster (float32, batched,
   jitted; the time includes the closed-form features from the PBPK parameters) against the
   project's simulator solving the PBPK ODE (`simulate_population`, ``method="ode"`` with
   ``diffrax.Kvaerno5()`` as the model's docstring recommends for its fast blood pools, float64,
   vmapped and jitted), and against the simulator's exact matrix-exponential path
   (``method="expm"``, the default for this linear model). After a warm-up call that compiles,
   ``--repeats`` rounds each time the three methods back to back; the speed-up is the median over
   rounds of the paired ratios (robust to the load of a shared machine, which drifts between
   rounds), with their range. The ODE solution also checks the corpus (max relative difference
   above the LLOQ).

Usage::

    python experiments/pbpk_forecast_study.py OUT_DIR [--quick] [--seed 0] [--d-model 32 ...]

writes ``OUT_DIR/results.json``, ``OUT_DIR/results.md``, ``OUT_DIR/forecast.png`` and the trained
model ``OUT_DIR/forecaster.eqx`` (``--no-checkpoint``: not written). The network defaults to
``ForecastConfig()`` (d_model 32, 2 heads, 1 block, FF 64); ``--d-model``, ``--n-heads``,
``--n-layers``, ``--d-ff`` change it. ``--quick`` (300 drugs, 4 epochs, 32 subjects timed) is a
smoke run for the nox ``studies`` session; its accuracy is not meaningful.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np


TARGET_MFE, TARGET_SPEEDUP = 1.25, 100.0


def _clock(fn, calls: int = 1):
    """Seconds per call of `fn` (mean over `calls` back-to-back calls) and its last output."""
    t0 = time.perf_counter()
    for _ in range(calls):
        out = fn()
    return (time.perf_counter() - t0) / calls, out


def throughput(result, corpus, idx: np.ndarray, repeats: int, log=print) -> dict:
    """Forecaster vs ODE solve vs matrix-exponential solve for the subjects `idx`.

    Each method is called once to compile (``first_call_s``). Then ``repeats`` rounds each time
    the forecaster, the ODE solve and the matrix exponential back to back, so every round's
    speed-ups pair timings taken within seconds of each other: on a shared machine the load
    changes between rounds but little within one. A forecaster timing is the mean over enough
    back-to-back calls to last ~0.2 s (one call can be a few ms). Reported: the median over rounds
    of the per-subject times and of the paired speed-ups, with the speed-ups' range.
    """
    import diffrax
    import jax
    import jax.numpy as jnp

    from pkpd_jax.dosing import Regimen
    from pkpd_jax.models import get_model
    from pkpd_jax.pbpk.forecast import N_RAW_DESCRIPTORS, forecast_fn, predict
    from pkpd_jax.solve import SolverConfig, simulate_population

    n = idx.size
    model = get_model("pbpk_whole_body")
    theta = jnp.asarray(corpus.theta[idx])
    ts = jnp.asarray(corpus.times[idx])
    reg = Regimen(time=jnp.zeros((n, 1)), amount=jnp.asarray(corpus.dose[idx])[:, None],
                  duration=jnp.zeros((n, 1)), cmt=jnp.asarray(corpus.route_cmt[idx])[:, None])
    fast = forecast_fn(result.model, result.norm)
    raw = corpus.desc[idx, :N_RAW_DESCRIPTORS]
    args = tuple(jnp.asarray(a) for a in (raw, corpus.theta[idx], corpus.bw[idx],
                                          corpus.times[idx], corpus.log_obs[idx],
                                          corpus.log_dose_per_kg[idx]))

    def forecaster():
        return jax.block_until_ready(fast(*args))

    def solver(cfg):
        def solve():
            sol = simulate_population(model, theta, reg, ts, config=cfg, throw=False)
            return jax.block_until_ready(sol)
        return solve

    methods = {"forecaster": forecaster,
               "ode_kvaerno5": solver(SolverConfig(method="ode", solver=diffrax.Kvaerno5())),
               "expm": solver(SolverConfig(method="expm"))}
    first, outs = {}, {}
    for name, fn in methods.items():
        first[name], outs[name] = _clock(fn)
    calls = max(1, int(np.ceil(0.2 / max(_clock(forecaster, 3)[0], 1e-6))))
    rounds = {name: [] for name in methods}
    for _ in range(repeats):
        for name, fn in methods.items():
            rounds[name].append(_clock(fn, calls if name == "forecaster" else 1)[0])
    runs = {name: np.asarray(v) for name, v in rounds.items()}

    out = {"n_subjects": int(n), "repeats": int(repeats), "forecaster_calls_per_timing": calls}
    # The fast path agrees with the checked `predict` used for the accuracy figures.
    ref = predict(result.model, result.norm, corpus.desc[idx], corpus.times[idx], corpus.log_obs[idx],
                  corpus.log_dose_per_kg[idx])
    out["fast_path_max_abs_diff_vs_predict"] = float(np.max(np.abs(np.asarray(outs["forecaster"]) - ref)))
    for name in methods:
        med = float(np.median(runs[name]))
        out[name] = {"run_s": med, "runs_s": runs[name].tolist(), "first_call_s": first[name],
                     "per_subject_us": med / n * 1e6, "subjects_per_s": n / med}
    log(f"forecaster: {n / out['forecaster']['run_s']:,.0f} subjects/s "
        f"(first call {first['forecaster']:.1f} s)")
    for name in ("ode_kvaerno5", "expm"):
        sol = outs[name]
        conc, status = np.asarray(sol.conc), np.asarray(sol.status)
        ok = (status == 0) & np.all(np.isfinite(conc), axis=1)
        q = corpus.quantified[idx] & ok[:, None]
        rel = np.abs(conc / np.exp(corpus.log_conc[idx]) - 1.0)[q]
        out[name] |= {"failed": int(np.sum(~ok)), "failed_subjects": [int(i) for i in idx[~ok]],
                      "max_rel_diff_vs_corpus": float(np.max(rel)),
                      "median_rel_diff_vs_corpus": float(np.median(rel))}
        ratios = runs[name] / runs["forecaster"]
        out[f"speedup_vs_{name}"] = float(np.median(ratios))
        out[f"speedup_vs_{name}_rounds"] = ratios.tolist()
        log(f"{name}: {n / out[name]['run_s']:,.1f} subjects/s (first call {first[name]:.1f} s); "
            f"forecaster is {np.median(ratios):.0f}x faster (rounds {ratios.min():.0f}-{ratios.max():.0f}x); "
            f"corpus vs solver max rel diff {np.max(rel):.1e}")
    return out


def plot(path: Path, corpus, metrics: dict, k: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pkpd_jax.pbpk import ORAL_CMT, SPECIES

    arr = metrics["arrays"]
    idx, pred = arr["index"], arr["log_pred"]
    rng = np.random.default_rng(1)
    picks = []
    for oral in (False, True):
        cand = np.flatnonzero((corpus.route_cmt[idx] == ORAL_CMT) == oral)
        picks += list(rng.choice(cand, size=min(3, cand.size), replace=False))
    fig, axes = plt.subplots(2, 4, figsize=(16, 7))
    for ax, j in zip([a for row in axes for a in row[:3]], picks):
        i = idx[j]
        t, q = corpus.times[i], corpus.quantified[i]
        ax.plot(t[q], np.exp(corpus.log_conc[i][q]), "k-", lw=1, label="PBPK (truth)")
        ax.plot(t[:k], np.exp(corpus.log_obs[i][:k]), "o", color="C0", label=f"observed (first {k})")
        ax.plot(t[k:][q[k:]], np.exp(pred[j][k:][q[k:]]), "s--", ms=4, color="C3", label="forecast")
        d = corpus.drugs[corpus.drug_id[i]]
        route = "oral" if corpus.route_cmt[i] == ORAL_CMT else "IV"
        ax.set(xscale="log", yscale="log", xlabel="time (h)", ylabel="plasma conc. (mg/L)",
               title=f"{SPECIES[corpus.species[i]]}, {route}, {d.kind} logP {d.logp:.1f} fu {d.fu:.2f}")
        ax.title.set_fontsize(9)
    axes[0][0].legend(fontsize=8)
    gs = axes[0][3].get_gridspec()
    axes[0][3].remove()
    axes[1][3].remove()
    ax = fig.add_subplot(gs[:, 3])
    fe = arr["fold_error"]
    ax.hist(np.log10(np.maximum(fe, 1.0)), bins=60, color="C0")
    for v, s in ((1.25, ":"), (2.0, "--")):
        ax.axvline(np.log10(v), color="k", ls=s, label=f"{v:g}-fold")
    ov = metrics["overall"]
    ax.set(xlabel="log10 fold error (held-out drugs)", ylabel="forecast points",
           title=f"median {ov['median_fold_error']:.3f}, within 2-fold {ov['within_2']:.1%}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def markdown(res: dict) -> str:
    m, ev, tp = res["machine"], res["evaluation"], res["throughput"]
    ov, base = ev["overall"], ev["baseline_loglinear"]
    cc, fc = res["corpus_config"], res["forecast_config"]
    lines = [
        "# PBPK Transformer forecaster",
        "",
        f"{m['date']} · {m['platform']} · {m['cpu_count']} CPUs · jax {m['jax']} · load avg "
        f"{m['loadavg_start'][0]:.2f} → {m['loadavg_end'][0]:.2f} · command `{res['command']}`",
        "",
        f"Corpus: {cc['n_drugs']} drugs × {cc['subjects_per_drug']} subjects ({res['n_subjects']} "
        f"subjects; built in {res['timings_s']['corpus']:.0f} s), {cc['n_times']} times, first "
        f"{cc['k_obs']} observed, noise SD {cc['noise_sd']} (log), LLOQ {cc['lloq_frac']:g} × C_max. "
        f"Network: d_model {fc['d_model']}, {fc['n_layers']} blocks, {fc['n_heads']} heads, FF "
        f"{fc['d_ff']}; {fc['epochs']} epochs × batch {fc['batch_size']}, trained in "
        f"{res['timings_s']['train']:.0f} s.",
        "",
        f"## Accuracy on held-out drugs ({ev['n_drugs']} drugs, {ev['n_subjects']} subjects, "
        f"{ov['n_points']} forecast points)",
        "",
        "| subset | points | median fold error | within 1.25× | within 2× | within 3× | 90th pct FE |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]

    def row(name, r):
        return (f"| {name} | {r['n_points']} | {r['median_fold_error']:.3f} | {r['within_1.25']:.1%} | "
                f"{r['within_2']:.1%} | {r['within_3']:.1%} | {r['p90_fold_error']:.2f} |")

    lines.append(row("**all**", ov))
    for k, r in ev["by_route"].items():
        lines.append(row(f"route {k}", r))
    for k, r in ev["by_species"].items():
        lines.append(row(f"species {k}", r))
    lines.append(row("baseline: log-linear extrapolation", base))
    lines += [
        "",
        f"## Throughput (CPU, held-out subjects in one batch; median of {res['args']['repeats']} "
        "rounds, each timing the three methods back to back)",
        "",
        "Speed-up: median over rounds of the paired ratio (ODE or expm time / forecaster time in "
        "the same round), [range over rounds].",
        "",
        "| batch | method | µs / subject | subjects / s | first call s | forecaster speed-up [range] |",
        "|---:|---|---:|---:|---:|---:|",
    ]

    def spread(b, name):
        r = b[f"speedup_vs_{name}_rounds"]
        return f"{b[f'speedup_vs_{name}']:,.0f}× [{min(r):,.0f}–{max(r):,.0f}]"

    for b in res["throughput_by_batch"]:
        ode, ex, fo = b["ode_kvaerno5"], b["expm"], b["forecaster"]
        lines += [
            f"| {b['n_subjects']} | forecaster (float32) | {fo['per_subject_us']:,.0f} | "
            f"{fo['subjects_per_s']:,.0f} | {fo['first_call_s']:.1f} | 1 |",
            f"| {b['n_subjects']} | PBPK ODE, diffrax Kvaerno5 (float64) | {ode['per_subject_us']:,.0f} | "
            f"{ode['subjects_per_s']:,.1f} | {ode['first_call_s']:.1f} | "
            f"**{spread(b, 'ode_kvaerno5')}** |",
            f"| {b['n_subjects']} | PBPK exact matrix exponential (float64) | {ex['per_subject_us']:,.0f} | "
            f"{ex['subjects_per_s']:,.1f} | {ex['first_call_s']:.1f} | {spread(b, 'expm')} |",
        ]
    ode, ex = tp["ode_kvaerno5"], tp["expm"]
    lines += [
        "",
        f"Failed solves: ODE {ode['failed']}, matrix exponential {ex['failed']} "
        f"(subjects {ex['failed_subjects'][:10]}).",
        "",
        f"Corpus check: the ODE solve and the corpus curves differ by at most "
        f"{ode['max_rel_diff_vs_corpus']:.1e} (relative, above the LLOQ); matrix exponential "
        f"{ex['max_rel_diff_vs_corpus']:.1e}.",
        "",
        f"Targets: median fold error ≤ {TARGET_MFE} on held-out drugs — "
        f"**{'met' if ov['median_fold_error'] <= TARGET_MFE else 'not met'}** "
        f"({ov['median_fold_error']:.3f}); ≥ {TARGET_SPEEDUP:.0f}× faster than the ODE solve — "
        f"**{'met' if tp['speedup_vs_ode_kvaerno5'] >= TARGET_SPEEDUP else 'not met'}** "
        f"({tp['speedup_vs_ode_kvaerno5']:,.0f}×, median of paired rounds at batch {tp['n_subjects']}; "
        f"lowest round {min(tp['speedup_vs_ode_kvaerno5_rounds']):,.0f}×).",
        "",
        "![forecasts](forecast.png)",
        "",
    ]
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--quick", action="store_true", help="smoke run: small corpus, 4 epochs")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--n-drugs", type=int, default=None)
    ap.add_argument("--n-bench", type=int, default=None, 
                    help="subjects timed (default: all test subjects; quick 32)")
    ap.add_argument("--repeats", type=int, default=5, help="paired timing rounds")
    ap.add_argument("--d-model", type=int, default=None, help="network width (default ForecastConfig)")
    ap.add_argument("--n-heads", type=int, default=None)
    ap.add_argument("--n-layers", type=int, default=None, help="Transformer blocks")
    ap.add_argument("--d-ff", type=int, default=None, help="feed-forward width")
    ap.add_argument("--no-checkpoint", action="store_true",
                    help="do not keep OUT/forecaster.eqx (the model is still evaluated as saved)")
    ap.add_argument("--reuse", action="store_true",
                    help="evaluate OUT/forecaster.eqx of an earlier run (same settings) instead of training")
    args = ap.parse_args(argv)

    import jax

    from pkpd_jax._x64 import enable_x64
    from pkpd_jax.pbpk.forecast import (
        CorpusConfig,
        ForecastConfig,
        build_corpus,
        evaluate,
        load_forecaster,
        save_forecaster,
        train_forecaster,
    )

    enable_x64()  # simulation in float64; the network is float32 whatever this says
    log = lambda s: print(s, flush=True)
    info = {"date": time.strftime("%Y-%m-%dT%H:%M:%S"), "platform": platform.platform(),
            "cpu_count": os.cpu_count(), "jax": jax.__version__, "backend": jax.default_backend(),
            "loadavg_start": list(os.getloadavg())}
    arch = {k: v for k in ("d_model", "n_heads", "n_layers", "d_ff") if (v := getattr(args, k)) is not None}
    if args.quick:
        cc = CorpusConfig(n_drugs=args.n_drugs or 300, subjects_per_drug=4, seed=args.seed)
        fc = ForecastConfig(epochs=args.epochs or 4, **arch)
        n_bench = args.n_bench or 32
    else:
        cc = CorpusConfig(n_drugs=args.n_drugs or CorpusConfig.n_drugs, seed=args.seed)
        fc = ForecastConfig(epochs=args.epochs or ForecastConfig.epochs, **arch)
        n_bench = args.n_bench or 10**9
    args.out.mkdir(parents=True, exist_ok=True)
    timings = {}
    t0 = time.perf_counter()
    corpus = build_corpus(cc)
    timings["corpus"] = time.perf_counter() - t0
    log(f"corpus: {len(corpus)} subjects in {timings['corpus']:.0f} s")
    path = args.out / "forecaster.eqx"
    if args.reuse:
        result = load_forecaster(path)
        if result.corpus_config != cc or result.config.to_dict() != fc.to_dict():
            raise SystemExit(f"{path} was trained with another corpus or network configuration.")
        prev = args.out / "results.json"
        old = json.loads(prev.read_text()) if prev.exists() else {}
        timings["train"] = old.get("timings_s", {}).get("train", float("nan"))
    else:
        t0 = time.perf_counter()
        result = train_forecaster(corpus, fc, seed=args.seed, log=log)
        timings["train"] = time.perf_counter() - t0
        save_forecaster(path, result)
        (args.out / "results.json").write_text(json.dumps({"timings_s": timings}) + "\n")
        result = load_forecaster(path)  # evaluate what was saved
        if args.no_checkpoint:
            path.unlink()
    metrics = evaluate(result.model, result.norm, corpus, "test")
    ov = metrics["overall"]
    log(f"held-out drugs: median fold error {ov['median_fold_error']:.3f}, within 2-fold "
        f"{ov['within_2']:.1%} (baseline {metrics['baseline_loglinear']['median_fold_error']:.2f})")
    test = corpus.indices("test")
    perm = np.random.default_rng(args.seed).permutation(test)
    sizes = sorted({min(n_bench, test.size), min(128, n_bench, test.size)})
    by_batch = [throughput(result, corpus, np.sort(perm[:m]), args.repeats, log=log) for m in sizes]
    tp = by_batch[-1]
    plot(args.out / "forecast.png", corpus, metrics, cc.k_obs)
    info["loadavg_end"] = list(os.getloadavg())
    arrays = metrics.pop("arrays")
    res = {
        "command": "python experiments/pbpk_forecast_study.py OUT" + (" --quick" if args.quick else "")
        + (f" --seed {args.seed}" if args.seed else "")
        + "".join(f" --{k.replace('_', '-')} {v}" for k, v in arch.items())
        + (f" --epochs {args.epochs}" if args.epochs else "")
        + (f" --n-drugs {args.n_drugs}" if args.n_drugs else "")
        + (f" --repeats {args.repeats}" if args.repeats != 5 else "")
        + (" --no-checkpoint" if args.no_checkpoint else ""),
        "machine": info, "args": vars(args) | {"out": str(args.out)},
        "corpus_config": cc.to_dict(), "forecast_config": fc.to_dict(), "n_subjects": len(corpus),
        "timings_s": timings, "history": result.history, "evaluation": metrics, "throughput": tp,
        "throughput_by_batch": by_batch,
        "fold_error_quantiles": {str(q): float(np.quantile(arrays["fold_error"], q))
                                 for q in (0.5, 0.75, 0.9, 0.95, 0.99)},
        "targets": {"median_fold_error_max": TARGET_MFE, "speedup_min": TARGET_SPEEDUP,
                    "median_fold_error_met": ov["median_fold_error"] <= TARGET_MFE,
                    "speedup_met": tp["speedup_vs_ode_kvaerno5"] >= TARGET_SPEEDUP},
    }
    (args.out / "results.json").write_text(json.dumps(res, indent=2, default=str) + "\n")
    md = markdown(res)
    (args.out / "results.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
