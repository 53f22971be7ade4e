"""Quantum kernel regression at scale: kernel time vs N, speed-up over circuit-by-circuit, accuracy.

Scenario: the bundled example study's true population model (``pk_2c_iv_infusion +
pd_indirect_inhib_kin``; BW on clearances and volumes, COMED on CL; ω 0.1-0.3), a synthetic cohort
drawn from it (BW uniform 50-100 kg, COMED with probability 0.35, η from the omegas), targets the
7 log-parameters, features BW and COMED (COMED binary, on its own qubit). float64 throughout.

1. **Kernel time vs N** (1k, 5k, 10k, 20k; ``--quick``: 500, 1k, 2k): the N statevectors (one
   circuit simulation each, jit + vmap, ``default.qubit``) and the N × N fidelity kernel from them
   (block matrix products, float64 output; 3.2 GB at 20k), for the angle map (4 qubits, 1 layer)
   and the IQP map (4 qubits, 2 repeats). Warm timings (the compiled functions are reused; the
   first call, compilation included, is reported too).
2. **Speed-up at N = 200** over circuit-by-circuit evaluation (one inversion-test circuit
   ``U(x_j)†U(x_i)`` per pair, the N(N+1)/2 upper pairs): (a) a Python loop over the
   jit-compiled QNode, (b) the plain (not jit-compiled) QNode, timed on a sample of pairs and
   extrapolated, (c) all pairs in one vmapped call. The kernels are checked against each other.
3. **Accuracy** at N = 10,000 training subjects (``--quick``: 1,000) and 2,000 held-out ones
   (``--quick``: 500), plus N = 100 (the reference study's size): R² and RMSE (log scale) against
   the held-out individual parameters and against the noise-free covariate function
   ``E[log θ | BW, COMED]``, the oracle ceiling, fit time (cross-validation included, first call,
   so compilation included), and the population-prediction RMSE of concentration and biomarker
   on the 48 real study subjects simulated from the predicted parameters, next to the population
   model's own (typical values, η = 0). Methods: angle / IQP / projected quantum kernels with kernel
   ridge, angle with SVR; classical RBF kernel ridge and SVR, linear-kernel ridge, and the
   population model's covariate equation (least squares, linear in log BW and COMED).

Usage::

    python benchmarks/bench_qkernel.py            # full (~15-30 min on 2 busy cores)
    python benchmarks/bench_qkernel.py --quick    # smoke run (a few minutes)

Results: ``<out>/qkernel.json`` and ``qkernel.md`` (``qkernel_quick.*`` with ``--quick``); progress
on stderr, the Markdown on stdout.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def _loadavg() -> float:
    try:
        return os.getloadavg()[0]
    except OSError:
        return float("nan")


# ============================================================================ 1. kernel time vs N
def bench_kernel_scaling(sizes, seed):
    from pkpd_jax.quantum.cohort import cohort_from_truth
    from pkpd_jax.quantum.feature_maps import Encoding, FeatureMap
    from pkpd_jax.quantum.kernel import fidelity_gram

    cohort, _, _ = cohort_from_truth(max(sizes), seed)
    enc = Encoding.fit(cohort.covariates, cohort.covariate_names)
    Z = enc.transform(cohort.covariates)
    rows = []
    for kind, layers in (("angle", 1), ("iqp", 2)):
        fmap = FeatureMap.create(kind, enc.binary, n_qubits=4, layers=layers)
        for n in sizes:
            t0 = time.perf_counter()
            S = fmap.states(Z[:n], 0.5)
            first_states = time.perf_counter() - t0
            t0 = time.perf_counter()
            S = fmap.states(Z[:n], 0.7)
            states_s = time.perf_counter() - t0
            fidelity_gram(S[: min(n, 2048)])  # compiles the tile shape that the timed call uses
            t0 = time.perf_counter()
            K = fidelity_gram(S)
            gram_s = time.perf_counter() - t0
            diag_err = float(np.max(np.abs(np.diag(K) - 1)))
            gb = K.nbytes / 1e9
            del K
            rows.append(
                {
                    "map": kind,
                    "layers": layers,
                    "n_qubits": 4,
                    "N": n,
                    "states_s": states_s,
                    "states_first_call_s": first_states,
                    "gram_s": gram_s,
                    "total_s": states_s + gram_s,
                    "kernel_GB": gb,
                    "max_diag_error": diag_err,
                }
            )
            log(
                f"  {kind:5s} N={n:6d}: states {states_s:.3f} s (first {first_states:.2f} s), "
                f"gram {gram_s:.2f} s, {gb:.2f} GB"
            )
    return rows


# ============================================================================ 2. circuit by circuit
def bench_circuit_by_circuit(n, seed, sample_pairs):
    import jax.numpy as jnp

    from pkpd_jax.quantum.cohort import cohort_from_truth
    from pkpd_jax.quantum.feature_maps import Encoding, FeatureMap
    from pkpd_jax.quantum.kernel import circuit_by_circuit_kernel, fidelity_gram

    cohort, _, _ = cohort_from_truth(n, seed)
    enc = Encoding.fit(cohort.covariates, cohort.covariate_names)
    Z = enc.transform(cohort.covariates)
    out = []
    for kind, layers in (("angle", 1), ("iqp", 2)):
        fmap = FeatureMap.create(kind, enc.binary, n_qubits=4, layers=layers)
        bw = 0.7
        pairs = n * (n + 1) // 2
        # ours (warm: compile once on the same shapes with another bandwidth)
        fidelity_gram(fmap.states(Z, 0.3))
        runs = []
        for _ in range(7):  # milliseconds: the median of 7 runs, so that a load spike does not decide
            t0 = time.perf_counter()
            K_ours = fidelity_gram(fmap.states(Z, bw))
            runs.append(time.perf_counter() - t0)
        ours = float(np.median(runs))
        # (a) Python loop over the jit-compiled inversion-test QNode
        fn = fmap.overlap_circuit()
        a = jnp.asarray(np.asarray(fmap.angles(Z, bw)))
        float(fn(a[0], a[1]))  # compile
        t0 = time.perf_counter()
        K_loop = circuit_by_circuit_kernel(fmap, Z, bw)
        loop = time.perf_counter() - t0
        # (b) the plain QNode (no jit), a sample of pairs, extrapolated
        raw = fmap.overlap_circuit(jit=False)
        rng = np.random.default_rng(seed)
        ii, jj = rng.integers(0, n, sample_pairs), rng.integers(0, n, sample_pairs)
        float(raw(a[ii[0]], a[jj[0]]))
        t0 = time.perf_counter()
        raw_vals = np.array([float(raw(a[i], a[j])) for i, j in zip(ii, jj)])
        per_pair = (time.perf_counter() - t0) / sample_pairs
        raw_err = float(np.max(np.abs(raw_vals - K_ours[ii, jj])))
        # (c) all pairs, one vmapped call (compile on first call: time the second)
        circuit_by_circuit_kernel(fmap, Z, 0.3, batched=True)
        t0 = time.perf_counter()
        K_batched = circuit_by_circuit_kernel(fmap, Z, bw, batched=True)
        batched = time.perf_counter() - t0
        row = {
            "map": kind,
            "layers": layers,
            "N": n,
            "pairs": pairs,
            "ours_s": ours,
            "loop_jit_s": loop,
            "plain_qnode_s_extrapolated": per_pair * pairs,
            "plain_qnode_per_pair_ms": 1e3 * per_pair,
            "plain_qnode_sample": sample_pairs,
            "batched_pairs_s": batched,
            "speedup_vs_loop_jit": loop / ours,
            "speedup_vs_plain_qnode": per_pair * pairs / ours,
            "speedup_vs_batched_pairs": batched / ours,
            "max_abs_diff_loop": float(np.max(np.abs(K_loop - K_ours))),
            "max_abs_diff_batched": float(np.max(np.abs(K_batched - K_ours))),
            "max_abs_diff_plain_sample": raw_err,
        }
        out.append(row)
        log(
            f"  {kind}: ours {ours * 1e3:.1f} ms; loop(jit) {loop:.1f} s "
            f"({row['speedup_vs_loop_jit']:.0f}x); "
            f"plain QNode ~{per_pair * pairs:.0f} s ({row['speedup_vs_plain_qnode']:.0f}x); "
            f"batched pairs {batched:.2f} s ({row['speedup_vs_batched_pairs']:.0f}x)"
        )
    return out


# ============================================================================ 3. accuracy
METHODS = [
    # label, kernel, method, options
    ("angle KRR", "angle", "krr", {}),
    ("angle SVR", "angle", "svr", {}),
    ("IQP (2 repeats) KRR", "iqp", "krr", {"layers": 2}),
    ("projected KRR", "projected", "krr", {}),
    ("RBF KRR", "rbf", "krr", {}),
    ("RBF SVR", "rbf", "svr", {}),
    ("linear KRR", "linear", "krr", {}),
    ("covariate equation", "covariate", "ols", {}),
]
BOOTSTRAP = 300


def _r2(y, yhat):
    return 1.0 - np.sum((y - yhat) ** 2) / np.sum((y - y.mean()) ** 2)


def bench_accuracy(n_train, n_test, seed, methods, study: bool, cv_subset: int):
    from pkpd_jax.quantum.cohort import cohort_from_truth
    from pkpd_jax.quantum.evaluate import evaluate_predictions, population_prediction_rmse
    from pkpd_jax.quantum.regression import make_regressor

    cohort, gen, pm = cohort_from_truth(max(n_train) + n_test, seed)
    train_all, test = cohort.split(n_test, seed=seed + 1)
    names = list(cohort.param_names)
    study_cov = np.stack([np.asarray(pm.dataset.covariate(c), float) for c in cohort.covariate_names], 1)
    typical = gen.noise_free(study_cov)
    res = {"oracle": evaluate_predictions(test.noise_free, test)["individual"], "rows": []}
    preds = {}
    if study:
        t0 = time.perf_counter()
        res["population_model_study"] = population_prediction_rmse(pm, typical, names)
        log(
            f"  population model on the study: {res['population_model_study']} "
            f"({time.perf_counter() - t0:.1f} s incl. compile)"
        )
    for n in n_train:
        train = train_all.take(np.arange(n))
        for label, kernel, method, opts in methods:
            if n < 1000 and method == "svr":
                continue
            reg = make_regressor(
                kernel,
                method,
                structure=gen.structure,
                **({} if kernel == "covariate" else {"cv_subset": cv_subset, "seed": seed, **opts}),
            )
            t0 = time.perf_counter()
            reg.fit(train.covariates, train.log_params, train.covariate_names, names)
            fit_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            pred = reg.predict(test.covariates)
            predict_s = time.perf_counter() - t0
            ev = evaluate_predictions(pred, test)
            row = {
                "label": label,
                "kernel": kernel,
                "method": method,
                "N": n,
                "fit_s": fit_s,
                "predict_s": predict_s,
                "hyperparameters": reg.info.get("hyperparameters"),
                "solver": reg.info.get("solver"),
                "timings_s": reg.info.get("timings_s"),
                "warnings": reg.info.get("warnings"),
                **ev,
            }
            if study:
                row["study"] = population_prediction_rmse(pm, reg.predict(study_cov), names)
            res["rows"].append(row)
            preds[(label, n)] = pred
            log(
                f"  N={n:6d} {label:22s} fit {fit_s:6.1f} s  "
                f"R² noise-free CL {ev['noise_free']['r2']['CL']:.4f} "
                f"V1 {ev['noise_free']['r2']['V1']:.4f}  individual CL {ev['individual']['r2']['CL']:.4f} "
                f"(oracle {ev['oracle']['r2']['CL']:.4f})"
            )
    # paired bootstrap of the individual-R² difference to the RBF kernel ridge on the same test set
    y = test.log_params
    rng = np.random.default_rng(seed)
    boot = rng.integers(0, y.shape[0], (BOOTSTRAP, y.shape[0]))
    for row in res["rows"]:
        ref = preds.get(("RBF KRR", row["N"]))
        if ref is None or row["label"] == "RBF KRR":
            continue
        pred = preds[(row["label"], row["N"])]
        cmp = {}
        for t in ("CL", "V1", "Q", "V2"):
            k = names.index(t)
            d = _r2(y[:, k], pred[:, k]) - _r2(y[:, k], ref[:, k])
            db = [_r2(y[b, k], pred[b, k]) - _r2(y[b, k], ref[b, k]) for b in boot]
            cmp[t] = {"diff": float(d), "se": float(np.std(db))}
        row["vs_rbf_krr"] = cmp
    return res


# ============================================================================ report
def _f(x, d=4):
    return "–" if x is None else f"{x:.{d}f}"


def markdown(res: dict) -> str:
    m = res["meta"]
    L = [
        f"# Quantum kernel regression: covariates → PK/PD parameters{' (quick)' if m['quick'] else ''}",
        "",
        f"{m['date']} · {m['platform']} · {m['cpus']} CPUs · jax {m['jax']} · pennylane {m['pennylane']} · "
        f"scikit-learn {m['sklearn']} · OPENBLAS_NUM_THREADS={m['openblas_threads']} · load average "
        f"{m['load_start']:.1f} → {m['load_end']:.1f} · total {m['wall_s'] / 60:.1f} min",
        "",
    ]
    L += [
        "## 1. Kernel time vs N (states once, kernel by block matrix products)",
        "",
        "Warm timings in seconds (compiled functions reused); `first` = first call of the state "
        "simulation at that N, compilation included. Kernel matrix N × N float64.",
        "",
        "| map | N | states (s) | states, first call (s) | kernel from states (s) | total (s) "
        "| kernel size (GB) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in res["scaling"]:
        L.append(
            f"| {r['map']} ({r['n_qubits']} qubits, {r['layers']} layer{'s' * (r['layers'] > 1)}) | "
            f"{r['N']:,} | {r['states_s']:.3f} | {r['states_first_call_s']:.2f} | {r['gram_s']:.2f} | "
            f"{r['total_s']:.2f} | {r['kernel_GB']:.2f} |"
        )
    L += [
        "",
        "## 2. Speed-up over circuit-by-circuit evaluation",
        "",
        "One inversion-test circuit per pair (N(N+1)/2 pairs) vs N state simulations + block products "
        "(`ours`: median of 7 runs; the others: one run). `plain QNode` is extrapolated from a random "
        "sample of pairs.",
        "",
        "| map | N | pairs | ours (ms) | loop over jit QNode (s) | plain QNode (s, extrapolated) | "
        "all pairs vmapped (s) | speed-up vs loop / plain / vmapped | max abs diff |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in res["circuits"]:
        diff = max(r["max_abs_diff_loop"], r["max_abs_diff_batched"], r["max_abs_diff_plain_sample"])
        L.append(
            f"| {r['map']} | {r['N']} | {r['pairs']:,} | {1e3 * r['ours_s']:.1f} | {r['loop_jit_s']:.1f} | "
            f"{r['plain_qnode_s_extrapolated']:.0f} ({r['plain_qnode_per_pair_ms']:.1f} ms/pair, "
            f"{r['plain_qnode_sample']} sampled) | {r['batched_pairs_s']:.2f} | "
            f"{r['speedup_vs_loop_jit']:.0f}× / {r['speedup_vs_plain_qnode']:.0f}× / "
            f"{r['speedup_vs_batched_pairs']:.0f}× | {diff:.1e} |"
        )
    acc = res["accuracy"]
    targets = ["CL", "V1", "Q", "V2"]
    L += [
        "",
        "## 3. Accuracy on held-out subjects (log scale)",
        "",
        f"{acc['n_test']:,} held-out subjects. R² vs the noise-free covariate function "
        "E[log θ | BW, COMED] (what a regressor can learn) and vs the individual parameters "
        "(which contain the between-subject variability); the oracle row is E[log θ | BW, COMED] "
        "itself on the individual parameters: the ceiling. R0, kout and IC50 have no covariate "
        "effect: their noise-free R² is undefined, and every method should predict their mean "
        "(individual R² ≈ 0). Fit time: first call, cross-validation and compilation included.",
        "",
        "| method | N train | fit (s) | "
        + " | ".join(f"R² {t} noise-free" for t in targets)
        + " | "
        + " | ".join(f"R² {t} indiv." for t in targets)
        + " | gap to oracle CL / V1 | RMSE CL / V1 | "
        "R² R0 / kout / IC50 indiv. |",
        "|---|---|---|" + "---|" * (2 * len(targets) + 3),
    ]
    o = acc["oracle"]
    L.append(
        "| **oracle** E[log θ\\|x] | – | – | "
        + " | ".join("1" for _ in targets)
        + " | "
        + " | ".join(_f(o["r2"][t]) for t in targets)
        + " | 0 / 0 | "
        + f"{_f(o['rmse']['CL'], 3)} / {_f(o['rmse']['V1'], 3)} | "
        + " / ".join(_f(o["r2"][t], 3) for t in ("R0", "kout", "IC50"))
        + " |"
    )
    for r in acc["rows"]:
        nf, ind, gap = r["noise_free"]["r2"], r["individual"]["r2"], r["gap_to_oracle"]
        L.append(
            f"| {r['label']} | {r['N']:,} | {r['fit_s']:.1f} | "
            + " | ".join(_f(nf[t]) for t in targets)
            + " | "
            + " | ".join(_f(ind[t]) for t in targets)
            + f" | {_f(gap['CL'])} / {_f(gap['V1'])} | {_f(r['individual']['rmse']['CL'], 3)} / "
            f"{_f(r['individual']['rmse']['V1'], 3)} | "
            + " / ".join(_f(ind[t], 3) for t in ("R0", "kout", "IC50"))
            + " |"
        )
    cmp_rows = [r for r in acc["rows"] if "vs_rbf_krr" in r]
    if cmp_rows:
        L += [
            "",
            "Individual-R² difference to the RBF kernel ridge at the same N (same test subjects; ± "
            f"paired-bootstrap SE, {BOOTSTRAP} resamples); negative = worse than RBF.",
            "",
            "| method | N train | CL | V1 | Q | V2 |",
            "|---|---|---|---|---|---|",
        ]
        for r in cmp_rows:
            c = r["vs_rbf_krr"]
            L.append(
                f"| {r['label']} | {r['N']:,} | "
                + " | ".join(f"{c[t]['diff']:+.4f} ± {c[t]['se']:.4f}" for t in ("CL", "V1", "Q", "V2"))
                + " |"
            )
    if "population_model_study" in acc:
        pm = acc["population_model_study"]
        L += [
            "",
            "### Population-prediction RMSE on the real study's subjects",
            "",
            "The 48 subjects of the bundled study simulated (their doses, their sampling times) from the "
            "parameters each method predicts from their covariates, against the observed values "
            "(quantified observations only).",
            "",
            "| method | N train | concentration RMSE (mg/L) | biomarker RMSE |",
            "|---|---|---|---|",
            f"| **population model** (true typical values, η = 0) | – | {pm['concentration']['rmse']:.5f} | "
            f"{pm['biomarker']['rmse']:.4f} |",
        ]
        for r in acc["rows"]:
            if "study" in r:
                L.append(
                    f"| {r['label']} | {r['N']:,} | {r['study']['concentration']['rmse']:.5f} | "
                    f"{r['study']['biomarker']['rmse']:.4f} |"
                )
        L.append(
            f"\n({pm['concentration']['n_obs']} concentrations, {pm['biomarker']['n_obs']} biomarker values.)"
        )
    L += ["", "## Verdict", ""] + [f"- {s}" for s in res["verdict"]]
    return "\n".join(L) + "\n"


def verdict(acc: dict, scaling: list, circuits: list) -> list[str]:
    out = []
    n_big = max(r["N"] for r in acc["rows"])
    rows = {(r["label"], r["N"]): r for r in acc["rows"]}
    for label in ("angle KRR", "angle SVR", "IQP (2 repeats) KRR", "projected KRR"):
        r = rows.get((label, n_big))
        if r is None:
            continue
        nf, gap = r["noise_free"]["r2"], r["gap_to_oracle"]
        ok = all(nf[t] >= 0.95 for t in ("CL", "V1")) and all(abs(gap[t]) <= 0.02 for t in ("CL", "V1"))
        s = (
            f"{label}, N = {n_big:,}: R² vs the noise-free function CL {nf['CL']:.4f}, V1 {nf['V1']:.4f}; "
            f"individual R² within {max(abs(gap['CL']), abs(gap['V1'])):.4f} of the oracle "
            f"({'meets' if ok else 'MISSES'} the target R² ≥ 0.95 and gap ≤ 0.02); fit {r['fit_s']:.1f} s."
        )
        cmp = r.get("vs_rbf_krr")
        if cmp is not None:
            worse = {t: c for t, c in cmp.items() if c["diff"] < 0}
            detail = ", ".join(f"{t} {c['diff']:+.4f} ± {c['se']:.4f}" for t, c in cmp.items())
            if worse:
                sig = [t for t, c in worse.items() if -c["diff"] > 2 * c["se"]]
                s += (
                    f" Compared with the classical RBF kernel ridge it is WORSE on {', '.join(worse)} in "
                    "individual R² ("
                    + (
                        f"by more than 2 bootstrap SEs on {', '.join(sig)}"
                        if sig
                        else "each within 2 bootstrap SEs"
                    )
                    + f"); differences (± paired-bootstrap SE) on CL/V1/Q/V2: {detail}."
                )
            else:
                s += f" It is not worse than the RBF kernel ridge on any of CL/V1/Q/V2 ({detail})."
        out.append(s)
    cov = rows.get(("covariate equation", n_big))
    if cov is not None:
        out.append(
            f"The population model's own covariate equation (correctly specified here) reaches noise-free "
            f"R² CL {cov['noise_free']['r2']['CL']:.4f}, V1 {cov['noise_free']['r2']['V1']:.4f}: with 2 "
            "covariates and a log-linear truth, no kernel can beat it; the kernels' job is to get there "
            "without knowing the functional form."
        )
    for r in acc["rows"]:
        if r["N"] == n_big or r.get("kernel") not in ("angle", "iqp", "projected") or "vs_rbf_krr" not in r:
            continue
        sig = {t: c for t, c in r["vs_rbf_krr"].items() if -c["diff"] > 2 * c["se"]}
        if sig:
            out.append(
                f"{r['label']}, N = {r['N']:,}: WORSE than the RBF kernel ridge by more than 2 bootstrap SEs "
                "on " + ", ".join(f"{t} ({c['diff']:+.4f} ± {c['se']:.4f})" for t, c in sig.items()) + "."
            )
    small = [r for r in acc["rows"] if r["N"] == 100 and r["label"] == "angle KRR"]
    if small:
        r = small[0]
        out.append(
            f"At N = 100 (the reference study's size) the angle-kernel ridge reaches individual R² CL "
            f"{r['individual']['r2']['CL']:.3f} (oracle ceiling {acc['oracle']['r2']['CL']:.3f}) and R² "
            f"{r['noise_free']['r2']['CL']:.3f} against the noise-free function; the reference study's "
            "held-out R² of −0.07 is below the constant predictor (0), so its shortfall was not the sample "
            "size alone (a cross-validated bandwidth and ridge matter as much here)."
        )
    k10 = [r for r in scaling if r["N"] == 10000]
    if k10:
        out.append(
            "Kernel at N = 10,000: " + ", ".join(f"{r['map']} {r['total_s']:.1f} s" for r in k10) + "."
        )
    for r in circuits:
        out.append(
            f"{r['map']} at N = {r['N']}: {r['speedup_vs_loop_jit']:.0f}× faster than a Python loop over the "
            f"jit-compiled inversion-test QNode, ~{r['speedup_vs_plain_qnode']:.0f}× faster than the plain "
            "QNode, "
            f"{r['speedup_vs_batched_pairs']:.0f}× faster than all pairs in one vmapped call."
        )
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sizes (a few minutes)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-study", action="store_true", help="skip the study simulations")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = ap.parse_args(argv)

    from pkpd_jax._x64 import enable_x64

    enable_x64()
    import jax
    import pennylane
    import sklearn

    t_start = time.perf_counter()
    load_start = _loadavg()
    sizes = [500, 1000, 2000] if args.quick else [1000, 5000, 10000, 20000]
    n_train = [100, 1000] if args.quick else [100, 10000]
    n_test = 500 if args.quick else 2000
    cv_subset = 1000 if args.quick else 2000
    sample_pairs = 50 if args.quick else 200
    n_circ = 60 if args.quick else 200

    log("1. kernel time vs N")
    scaling = bench_kernel_scaling(sizes, args.seed)
    log(f"2. circuit-by-circuit at N = {n_circ}")
    circuits = bench_circuit_by_circuit(n_circ, args.seed, sample_pairs)
    log(f"3. accuracy at N = {n_train}")
    acc = bench_accuracy(n_train, n_test, args.seed, METHODS, not args.no_study, cv_subset)
    acc["n_test"] = n_test
    res = {
        "meta": {
            "date": dt.datetime.now().isoformat(timespec="seconds"),
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "jax": jax.__version__,
            "pennylane": pennylane.__version__,
            "sklearn": sklearn.__version__,
            "openblas_threads": os.environ.get("OPENBLAS_NUM_THREADS", "default"),
            "load_start": load_start,
            "load_end": _loadavg(),
            "quick": args.quick,
            "seed": args.seed,
            "wall_s": time.perf_counter() - t_start,
            "cv_subset": cv_subset,
        },
        "scaling": scaling,
        "circuits": circuits,
        "accuracy": acc,
        "verdict": verdict(acc, scaling, circuits),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "qkernel_quick" if args.quick else "qkernel"
    (args.out / f"{stem}.json").write_text(json.dumps(res, indent=2) + "\n")
    md = markdown(res)
    (args.out / f"{stem}.md").write_text(md)
    print(md)
    log(f"wrote {args.out / (stem + '.json')} and {args.out / (stem + '.md')}")


if __name__ == "__main__":
    main()
