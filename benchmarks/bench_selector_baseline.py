"""Likelihood + BIC baseline for PK model selection, next to the shipped Transformer selector.

For a random subset of the test split of a PK corpus (`pkpd-jax corpus --family pk`), every one
of the 10 PK classes is fitted to every subject by maximum likelihood from ``--starts`` starting
points (the prior median, then draws from the class's prior), and the class with the lowest BIC
among the candidates the subject's dose record allows (`candidates`: infusions rule out the
absorption models) is selected. The shipped Transformer (`pkpd_jax/amortized/pretrained/pk`)
classifies the same subjects from the same stored features. Accuracy and wall time per subject
are reported for both.

**Likelihood.** Log-transform-both-sides with a proportional error: for the quantified
concentrations of a subject (BLQ records are left out), ``log C_obs = log C(θ) + σ·ε``; with σ
profiled out, ``-2 log L = n log(RSS/n) + const`` and ``BIC = n log(RSS/n) + (p + 1) log n``
(``p`` structural parameters plus σ; the constant is the same for every class of a subject).
The corpus's error model is proportional plus a small additive part near the LLOQ, so this is the
usual pragmatic likelihood rather than the generating one.

**Optimiser.** A batched Levenberg-Marquardt (all subjects × starts of a class advance together),
in the class's normalised log-parameters ``z = (log θ − μ)/σ_prior`` (clipped to ±8 prior SDs),
with the Jacobian from the forward sensitivities of the simulator's one-loop Runge-Kutta path
(`pkpd_jax.simulate._solve_erk`, Tsit5, float64, rtol 1e-6, atol 1e-9), ``--iters`` iterations;
a step is kept only when it lowers the residual sum of squares (per-subject damping: ÷3 on
success, ×4 on failure). A failed simulation counts as an infinite RSS; a predicted concentration
below 1e-12 mg/L at a quantified observation (e.g. before a lag time) is floored there.

Usage (the defaults are the recorded run; the results file states the size used)::

    python benchmarks/bench_selector_baseline.py --corpus runs/selectors/corpus_pk
    python benchmarks/bench_selector_baseline.py --corpus CORPUS --n 200 --starts 2 --iters 20  # quicker

Results: ``<out>/selector_baseline.json`` and ``<out>/selector_baseline.md``.
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


ROOT = Path(__file__).resolve().parents[1]
Z_MAX = 8.0
C_FLOOR = 1e-12  # mg/L


def load_test_subjects(corpus: Path, n: int, seed: int) -> dict:
    """`n` random rows of the test split: raw observations, doses, labels and stored features."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pkpd_jax.amortized.batches import _fixed, _manifest, corpus_info

    info = corpus_info(corpus)
    if info.family != "pk":
        raise SystemExit(f"{corpus} is a {info.family!r} corpus; the baseline needs a PK corpus.")
    cols = ["label", "times", "conc", "conc_blq", "mask", "values", "dose_time", "dose_amount",
            "dose_duration"]
    parts = []
    for shard in _manifest(corpus)["shards"]:
        rg = shard["splits"]["test"]["row_group"]
        if rg is not None:
            parts.append(pq.ParquetFile(corpus / shard["file"]).read_row_group(rg, columns=cols))
    table = pa.concat_tables(parts)
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(table.num_rows, size=min(n, table.num_rows), replace=False))
    table = table.take(pick)
    T, F, D = info.n_times, info.n_features, table.schema.field("dose_time").type.list_size
    return {
        "class_names": info.class_names,
        "label": table.column("label").to_numpy().astype(int),
        "times": _fixed(table, "times", (T,), np.float64),
        "conc": _fixed(table, "conc", (T,), np.float64),
        "blq": _fixed(table, "conc_blq", (T,), bool),
        "mask": _fixed(table, "mask", (T,), bool),
        "values": _fixed(table, "values", (T, F), np.float32),
        "dose_time": _fixed(table, "dose_time", (D,), np.float64),
        "dose_amount": _fixed(table, "dose_amount", (D,), np.float64),
        "dose_duration": _fixed(table, "dose_duration", (D,), np.float64),
    }


def _make_residuals(name: str):
    """Jitted ``(z [B, P], subject data) -> (r [B, T], J [B, T, P], ok [B])`` for class `name`."""
    import jax
    import jax.numpy as jnp

    from pkpd_jax.dosing import Regimen
    from pkpd_jax.models import get_model
    from pkpd_jax.simulate import SolverConfig, _solve_erk

    model = get_model(name)
    loc = jnp.array([p.prior_loc for p in model.params])
    sd = jnp.array([p.log_sd for p in model.params])
    unit = jnp.array([p.constraint == "unit" for p in model.params])
    cfg = SolverConfig(method="ode", rtol=1e-6, atol=1e-9)

    def conc_of(y, th):
        return model.observe(y, th)[0]

    def one(z, ts, y_obs, w, dt_, da, dd):
        u = loc + sd * z
        theta = jnp.where(unit, jax.nn.sigmoid(u), jnp.exp(u))
        dtheta_dz = sd * jnp.where(unit, theta * (1.0 - theta), theta)
        reg = Regimen(dt_, da, dd, -jnp.ones(dt_.shape, jnp.int32))
        states, dstates, status, _ = _solve_erk(model, theta, reg, ts, cfg, True)
        conc = jax.vmap(conc_of, in_axes=(0, None))(states, theta)
        gy, gth = jax.vmap(jax.grad(conc_of, argnums=(0, 1)), in_axes=(0, None))(states, theta)
        dconc = jnp.einsum("tn,tnp->tp", gy, dstates) + gth  # (T, P) w.r.t. theta
        # a prediction below the floor (e.g. before a lag time) is floored: a large, finite
        # residual with no gradient through it, instead of an infinite one
        pos = conc > C_FLOOR
        safe = jnp.where(pos, conc, C_FLOOR)
        r = w * (jnp.log(jnp.where(w > 0, y_obs, 1.0)) - jnp.log(safe))
        J = -(w * pos / safe)[:, None] * dconc * dtheta_dz[None, :]
        ok = (status == 0) & jnp.all(jnp.isfinite(r)) & jnp.all(jnp.isfinite(J))
        return jnp.where(jnp.isfinite(r), r, 0.0), jnp.where(jnp.isfinite(J), J, 0.0), ok

    return jax.jit(jax.vmap(one)), len(model.params)


def fit_class(name: str, data: dict, starts: int, iters: int, seed: int) -> dict:
    """Best BIC over the starts for every subject, for one class."""
    f, P = _make_residuals(name)
    N, T = data["times"].shape
    w = (data["mask"] & ~data["blq"] & (data["conc"] > 0)).astype(float)
    n_obs = w.sum(axis=1)
    # padded observation rows repeat the last real time so that times stay sorted
    last = np.take_along_axis(data["times"], np.maximum(data["mask"].sum(1) - 1, 0)[:, None], 1)
    ts = np.where(data["mask"], data["times"], last)
    rep = lambda a: np.repeat(a, starts, axis=0)
    args = [rep(ts), rep(np.where(w > 0, data["conc"], 1.0)), rep(w), rep(data["dose_time"]),
            rep(data["dose_amount"]), rep(data["dose_duration"])]
    rng = np.random.default_rng([seed, P])
    z = rng.standard_normal((N * starts, P))
    z[::starts] = 0.0  # the first start of each subject: the prior median
    t0 = time.perf_counter()
    r, J, ok = (np.asarray(a) for a in f(z, *args))
    compile_s = time.perf_counter() - t0
    rss = np.where(ok, (r**2).sum(1), np.inf)
    lam = np.full(N * starts, 1e-2)
    t0 = time.perf_counter()
    for _ in range(iters):
        JtJ = np.einsum("btp,btq->bpq", J, J)
        g = np.einsum("btp,bt->bp", J, r)
        diag = np.einsum("bpp->bp", JtJ) + 1e-9
        A = JtJ + lam[:, None, None] * np.eye(P)[None] * diag[:, :, None]
        try:
            step = -np.linalg.solve(A, g[..., None])[..., 0]
        except np.linalg.LinAlgError:
            step = -g / diag
        step = np.where(np.isfinite(step), step, 0.0)
        z_new = np.clip(z + step, -Z_MAX, Z_MAX)
        r2, J2, ok2 = (np.asarray(a) for a in f(z_new, *args))
        rss2 = np.where(ok2, (r2**2).sum(1), np.inf)
        better = rss2 < rss
        z = np.where(better[:, None], z_new, z)
        r = np.where(better[:, None], r2, r)
        J = np.where(better[:, None, None], J2, J)
        rss = np.where(better, rss2, rss)
        lam = np.clip(np.where(better, lam / 3.0, lam * 4.0), 1e-7, 1e7)
    fit_s = time.perf_counter() - t0
    rss = rss.reshape(N, starts).min(axis=1)
    n = np.maximum(n_obs, 1.0)
    bic = n * np.log(np.maximum(rss, 1e-300) / n) + (P + 1) * np.log(n)
    bic = np.where(np.isfinite(rss), bic, np.inf)
    return {"bic": bic, "compile_s": compile_s, "fit_s": fit_s, "n_failed": int(np.sum(~np.isfinite(rss)))}


def candidates(names, data: dict) -> np.ndarray:
    """``[N, C]`` bool: the classes a modeller would consider given each subject's dose record.

    Infused subjects: the IV classes only (no absorption depot), with `pk_2c_iv_infusion` in
    place of `pk_2c_iv` (with the same infusions the two are the same model, so their likelihoods
    tie). Subjects given boluses: every class but `pk_2c_iv_infusion` (which would turn boluses into
    1 h infusions)."""
    from pkpd_jax.models import get_pk

    infused = np.any((data["dose_amount"] > 0) & (data["dose_duration"] > 0), axis=1)
    depot = np.array([get_pk(n).dose_cmt != get_pk(n).central for n in names])
    is_inf = np.array([n == "pk_2c_iv_infusion" for n in names])
    is_2c = np.array([n == "pk_2c_iv" for n in names])
    return np.where(infused[:, None], (~depot & ~is_2c)[None, :], (~is_inf)[None, :])


def merged_accuracy(names, labels, predicted, groups) -> float:
    """Accuracy when the classes of each group count as one."""
    m = np.arange(len(names))
    for g in groups:
        ids = [names.index(n) for n in g]
        m[ids] = ids[0]
    return float(np.mean(m[labels] == m[predicted]))


def transformer(data: dict, checkpoint) -> dict:
    from pkpd_jax.amortized.evaluate import predict
    from pkpd_jax.amortized.train import load_checkpoint

    ckpt = load_checkpoint(checkpoint)

    class B:
        times = data["times"].astype(np.float32)
        values = data["values"]
        mask = data["mask"]

    predict(ckpt, B)  # compile
    t0 = time.perf_counter()
    pred = predict(ckpt, B)
    wall = time.perf_counter() - t0
    idx = {c: i for i, c in enumerate(ckpt.class_names)}
    return {"predicted": np.array([idx[c] for c in pred.predicted]), "wall_s": wall}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--corpus", type=Path, required=True, help="a PK corpus directory")
    ap.add_argument("--n", type=int, default=1000, help="test subjects")
    ap.add_argument("--starts", type=int, default=3)
    ap.add_argument("--iters", type=int, default=30)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--checkpoint", type=Path, default=None, help="default: the shipped PK selector")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = ap.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    import jax

    jax.config.update("jax_enable_x64", True)
    from pkpd_jax.amortized.classify import pretrained_checkpoint
    from pkpd_jax.amortized.evaluate import confusion_matrix

    data = load_test_subjects(args.corpus, args.n, args.seed)
    names, labels = data["class_names"], data["label"]
    N = labels.size
    print(f"{N} test subjects, {len(names)} classes, {args.starts} starts, {args.iters} LM iterations",
          flush=True)
    bics, per_class = [], {}
    t_all = time.perf_counter()
    for name in names:
        res = fit_class(name, data, args.starts, args.iters, args.seed)
        bics.append(res["bic"])
        per_class[name] = {k: v for k, v in res.items() if k != "bic"}
        print(f"  {name}: compile {res['compile_s']:.1f} s, fit {res['fit_s']:.1f} s, "
              f"failed {res['n_failed']}", flush=True)
    bic_wall = time.perf_counter() - t_all
    bic_all = np.stack(bics, 1)
    bic_pred = np.argmin(np.where(candidates(names, data), bic_all, np.inf), axis=1)
    fit_only = sum(v["fit_s"] for v in per_class.values())
    tr = transformer(data, args.checkpoint or pretrained_checkpoint("pk"))
    acc = lambda p: float(np.mean(p == labels))
    recall = lambda cm: {n: float(cm[i, i] / max(cm[i].sum(), 1)) for i, n in enumerate(names)}
    # classes with the same likelihood family (they differ only in their priors): ML cannot tell them apart
    same = [("pk_1c_oral", "pk_1c_oral_flipflop")]
    merged = lambda p: merged_accuracy(list(names), labels, p, same)
    cm_bic = confusion_matrix(labels, bic_pred, len(names))
    cm_tr = confusion_matrix(labels, tr["predicted"], len(names))
    result = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(), "jax": jax.__version__,
                    "loadavg": list(os.getloadavg())},
        "arguments": {"n": N, "starts": args.starts, "iters": args.iters, "seed": args.seed,
                      "corpus_split": "test"},
        "class_names": list(names),
        "same_likelihood_groups": same,
        "bic": {"accuracy": acc(bic_pred), "accuracy_merging_same_likelihood": merged(bic_pred),
                "confusion_matrix": cm_bic.tolist(),
                "wall_s": bic_wall, "wall_s_per_subject": bic_wall / N,
                "fit_s_per_subject_excluding_compilation": fit_only / N, "per_class": per_class,
                "recall": recall(cm_bic)},
        "transformer": {"accuracy": acc(tr["predicted"]),
                        "accuracy_merging_same_likelihood": merged(tr["predicted"]),
                        "confusion_matrix": cm_tr.tolist(),
                        "wall_s": tr["wall_s"], "wall_s_per_subject": tr["wall_s"] / N,
                        "recall": recall(cm_tr)},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "selector_baseline.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        "# PK model selection: likelihood + BIC baseline vs the shipped Transformer",
        "",
        f"{result['date']} · {platform.platform()} · {os.cpu_count()} CPUs (shared) · jax {jax.__version__}",
        "",
        f"{N} random subjects of the PK corpus's test split"
        + (" (fewer than the 1000 the issue asks for)" if N < 1000 else "")
        + f", 10 classes, {args.starts} starts per class, {args.iters} "
        f"Levenberg-Marquardt iterations (see the script's docstring).",
        "",
        "Candidates follow the dose record (infused subjects: IV classes only; see `candidates`). "
        "`pk_1c_oral` and `pk_1c_oral_flipflop` are one likelihood (they differ in their priors only), "
        "so maximum likelihood cannot separate them; the last accuracy column counts them as one.",
        "",
        "| method | accuracy | accuracy, oral = flip-flop | wall s per subject |",
        "|---|---:|---:|---:|",
        f"| ML fit of every class + BIC | {result['bic']['accuracy']:.3f} | "
        f"{result['bic']['accuracy_merging_same_likelihood']:.3f} | "
        f"{result['bic']['wall_s_per_subject']:.3f} (fits only, no compilation: "
        f"{result['bic']['fit_s_per_subject_excluding_compilation']:.3f}) |",
        f"| Transformer (shipped `pk` selector) | {result['transformer']['accuracy']:.3f} | "
        f"{result['transformer']['accuracy_merging_same_likelihood']:.3f} | "
        f"{result['transformer']['wall_s_per_subject']:.2e} |",
        "",
        "Recall per class:",
        "",
        "| class | BIC | Transformer |",
        "|---|---:|---:|",
    ]
    for n in names:
        lines.append(f"| {n} | {result['bic']['recall'][n]:.3f} | {result['transformer']['recall'][n]:.3f} |")
    (args.out / "selector_baseline.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines[6:14]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
