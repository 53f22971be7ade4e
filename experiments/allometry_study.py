"""Neural allometry vs simple allometry vs single-species scaling on held-out drugs (human).

A training library and a disjoint test library of simulated drugs (`pkpd_jax.pbpk.allometry.
sample_drugs`, different seeds: the test drugs are held out) give PBPK-analytic CL and Vss in
mouse, rat, dog, monkey and human with species-specific fu and CLint and noisy "observed" values.
Human CL and Vss of each test drug are predicted from its rat, dog and monkey observations and
compared with the noiseless human truth. Methods:

- neural allometry, protocol ``loso`` (human never a training target; the species enters through
  its fu only): the main result, human held out as a species and as drugs;
- neural allometry, ``loso`` with the species physiology as input (shows the four-species
  extrapolation problem, see the module docstring);
- neural allometry, protocol ``human`` (human targets of the training drugs, physiology input):
  drugs held out, species not;
- simple allometry, fixed exponents (CL ∝ BW^0.75, Vss ∝ BW^1; the neural model with the
  correction zeroed), with exponents fitted per drug over the three species, and fu-corrected;
- single-species scaling from rat, dog, monkey (fixed exponents).

Metrics: fraction within 2-fold (and 3-fold), geometric-mean fold error (GMFE), bias; paired
bootstrap (over test drugs) 95% intervals of the neural-minus-allometry differences. A few drugs
are ODE-checked (IV bolus, dose / AUC from the whole-body model) against the analytic CL.

Usage::

    python experiments/allometry_study.py OUT_DIR [--quick] [--seed 0]

writes ``OUT_DIR/results.json``, ``OUT_DIR/results.md`` and ``OUT_DIR/allometry.png``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def _ode_check(data, n_drugs: int) -> list[dict]:
    """CL = dose / AUC of an IV bolus in the whole-body model vs the analytic CL used as truth."""
    import jax.numpy as jnp

    from pkpd_jax.dosing import Regimen
    from pkpd_jax.models import get_model
    from pkpd_jax.pbpk import SPECIES, clearance_analytic, pbpk_params
    from pkpd_jax.solve import simulate

    model = get_model("pbpk_whole_body")
    out = []
    for i in range(n_drugs):
        for j, sp in enumerate(SPECIES):
            drug = data.drugs[i][sp]
            p = pbpk_params(sp, drug, float(data.obs.bw[i, j]))
            cl = float(clearance_analytic(p))
            # time grid: ~12 terminal half-lives (Vss / CL bounds the slowest one from below)
            t_end = 12.0 * np.log(2.0) * float(data.vss_true[i, j]) / cl * 4.0
            ts = np.concatenate([[0.0], np.geomspace(1e-5, t_end, 1500)])
            sol = simulate(model, model.pack(p), Regimen.make([0.0], [100.0], size=1), jnp.asarray(ts))
            c = np.asarray(sol.conc)
            lam = np.log(c[-2] / c[-1]) / (ts[-1] - ts[-2])
            auc = float(np.trapezoid(c, ts) + c[-1] / lam)
            out.append(
                {
                    "drug": i,
                    "species": sp,
                    "cl_analytic": cl,
                    "cl_ode": 100.0 / auc,
                    "rel_diff": abs(100.0 / auc / cl - 1.0),
                }
            )
    return out


def _bootstrap(pred_a, pred_b, truth, n_boot: int, seed: int) -> dict:
    """Paired bootstrap over drugs of (a - b) in within-2-fold and of GMFE_a / GMFE_b."""
    rng = np.random.default_rng(seed)
    ea, eb = np.abs(np.log10(pred_a / truth)), np.abs(np.log10(pred_b / truth))
    w2 = np.log10(2.0) + 1e-12
    n = truth.size
    d_w, r_g = [], []
    for _ in range(n_boot):
        b = rng.integers(0, n, n)
        d_w.append(np.mean(ea[b] <= w2) - np.mean(eb[b] <= w2))
        r_g.append(10.0 ** (np.mean(ea[b]) - np.mean(eb[b])))
    return {
        "within_2fold_diff": float(np.mean(ea <= w2) - np.mean(eb <= w2)),
        "within_2fold_diff_ci95": [float(x) for x in np.percentile(d_w, [2.5, 97.5])],
        "gmfe_ratio": float(10.0 ** (np.mean(ea) - np.mean(eb))),
        "gmfe_ratio_ci95": [float(x) for x in np.percentile(r_g, [2.5, 97.5])],
    }


def _plot(path: Path, truth, preds: dict, labels: tuple[str, ...]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 5))
    for k, (ax, name, unit) in enumerate(zip(axes, ("CL", "Vss"), ("L/h", "L"))):
        t = truth[k]
        for lab, col, mk in zip(labels, ("tab:blue", "tab:orange"), ("o", "x")):
            ax.scatter(t, preds[lab][k], s=9, alpha=0.5, c=col, marker=mk, label=lab)
        lo, hi = float(np.min(t)) / 3, float(np.max(t)) * 3
        g = np.array([lo, hi])
        ax.plot(g, g, "k-", lw=1)
        ax.plot(g, 2 * g, "k--", lw=0.8)
        ax.plot(g, g / 2, "k--", lw=0.8, label="2-fold")
        ax.set(
            xscale="log",
            yscale="log",
            xlim=(lo, hi),
            ylim=(lo, hi),
            xlabel=f"true human {name} ({unit})",
            ylabel=f"predicted human {name} ({unit})",
            title=f"human {name}, held-out drugs (from rat, dog, monkey)",
        )
        ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--quick", action="store_true", help="small libraries and short training (nox)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    from pkpd_jax._x64 import enable_x64

    enable_x64()
    from pkpd_jax.pbpk import allometry as A

    size = (
        dict(n_train=300, n_test=150, steps=400, ensemble=1, n_ode=1, n_boot=200)
        if args.quick
        else dict(n_train=3000, n_test=1000, steps=3000, ensemble=3, n_ode=4, n_boot=2000)
    )
    t0 = time.perf_counter()
    train_lib = A.sample_drugs(size["n_train"], seed=args.seed)
    test_lib = A.sample_drugs(size["n_test"], seed=args.seed + 1_000_003)
    t_sample = time.perf_counter() - t0
    ode = _ode_check(test_lib, size["n_ode"])
    print(
        f"libraries {t_sample:.1f} s; ODE check max rel. diff {max(r['rel_diff'] for r in ode):.2e}",
        flush=True,
    )

    variants = {
        "neural allometry (loso)": A.TrainConfig(protocol="loso", physiology=False),
        "neural allometry (loso, physiology input)": A.TrainConfig(protocol="loso", physiology=True),
        "neural allometry (human targets of training drugs)": A.TrainConfig(
            protocol="human", physiology=True
        ),
    }
    models, train_rec = {}, {}
    for label, cfg in variants.items():
        cfg = A.TrainConfig(
            **{**cfg.__dict__, "steps": size["steps"], "ensemble": size["ensemble"], "seed": args.seed}
        )
        print(f"training {label}", flush=True)
        models[label] = A.train(train_lib, cfg, log=lambda s: print("  " + s, flush=True))
        m = models[label].meta
        train_rec[label] = {
            "config": cfg.__dict__,
            "seconds": m["seconds"],
            "n_examples": m["n_examples"],
            "val_loss_allometry": m["val_loss_allometry"],
            "val_loss_best": m["val_loss_best"],
        }
    A.save(models["neural allometry (loso)"], args.out / "neural_allometry_loso.eqx")

    res = A.evaluate(models, test_lib, A.DEFAULT_SOURCES, "human")
    main_label, base_label = "neural allometry (loso)", "simple allometry (0.75 / 1.0)"
    boot = {}
    for lab in variants:
        boot[lab] = {
            q: _bootstrap(
                res["predictions"][lab][k],
                res["predictions"][base_label][k],
                res["truth"][k],
                size["n_boot"],
                args.seed,
            )
            for k, q in enumerate(("CL", "Vss"))
        }
    # The zero-correction identity, checked on the test library.
    p0 = A.predict(models[main_label], test_lib.obs, zero_correction=True)
    s_cl, s_v = A.simple_allometry(test_lib.obs)
    identity = bool(np.array_equal(p0["cl"], s_cl) and np.array_equal(p0["vss"], s_v))

    args.out.mkdir(parents=True, exist_ok=True)
    _plot(args.out / "allometry.png", res["truth"], res["predictions"], (main_label, base_label))
    results = {
        "command": "python experiments/allometry_study.py OUT"
        + (" --quick" if args.quick else "")
        + (f" --seed {args.seed}" if args.seed else ""),
        "size": size,
        "seed": args.seed,
        "target": "human",
        "sources": list(A.DEFAULT_SOURCES),
        "sampler": A.SamplerConfig().__dict__,
        "metrics": res["metrics"],
        "bootstrap_vs_simple_allometry": boot,
        "training": train_rec,
        "zero_correction_equals_simple_allometry": identity,
        "ode_check": {"max_rel_diff": max(r["rel_diff"] for r in ode), "rows": ode},
        "seconds": round(time.perf_counter() - t0, 1),
    }
    (args.out / "results.json").write_text(json.dumps(results, indent=2, default=float) + "\n")
    (args.out / "results.md").write_text(_markdown(results))
    print(_markdown(results), flush=True)
    return results


def _markdown(r: dict) -> str:
    s = r["size"]
    lines = [
        "# Neural allometry study: human CL and Vss of held-out drugs from rat, dog and monkey",
        "",
        f"`{r['command']}`: {s['n_train']} training drugs, {s['n_test']} held-out test drugs (separate "
        f"library), {s['steps']} steps x {s['ensemble']} ensemble members; {r['seconds']:.0f} s.",
        "",
        "| method | CL within 2-fold | CL GMFE | CL bias | Vss within 2-fold | Vss GMFE | Vss bias |",
        "|---|---|---|---|---|---|---|",
    ]
    for k, v in r["metrics"].items():
        c, w = v["CL"], v["Vss"]
        lines.append(
            f"| {k} | {c['within_2fold']:.3f} | {c['gmfe']:.3f} | {c['bias']:.2f} | "
            f"{w['within_2fold']:.3f} | {w['gmfe']:.3f} | {w['bias']:.2f} |"
        )
    lines += ["", "Paired bootstrap over test drugs vs simple allometry (0.75 / 1.0), 95% intervals:", ""]
    for lab, b in r["bootstrap_vs_simple_allometry"].items():
        for q in ("CL", "Vss"):
            x = b[q]
            lines.append(
                f"- {lab}, {q}: within-2-fold {x['within_2fold_diff']:+.3f} "
                f"[{x['within_2fold_diff_ci95'][0]:+.3f}, {x['within_2fold_diff_ci95'][1]:+.3f}], "
                f"GMFE ratio {x['gmfe_ratio']:.3f} [{x['gmfe_ratio_ci95'][0]:.3f}, "
                f"{x['gmfe_ratio_ci95'][1]:.3f}]"
            )
    lines += [
        "",
        "Zero correction reproduces simple allometry exactly: "
        f"{r['zero_correction_equals_simple_allometry']}.",
        f"ODE check (IV bolus dose/AUC vs analytic CL, {len(r['ode_check']['rows'])} drug-species): max "
        f"relative difference {r['ode_check']['max_rel_diff']:.1e}.",
        "",
        "Truth: noiseless PBPK-analytic human values; the `loso` protocol never uses a human value of "
        "any drug in training.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
