"""Physics-constrained diffusion for virtual patients: the study.

Generates the reference population (train + held-out), trains the same diffusion model with and without
the physics term (same seed, same steps), samples both, and writes under OUT:

- ``results.json``: violation rates (any and per constraint), fidelity (Wasserstein-1, KS, correlation
  error, classifier two-sample AUC), conditional sampling (70-140 kg) and training times;
- ``results.md``: the same as tables;
- ``marginals.png``: marginals of held-out vs both models, and violation rates per constraint;
- ``diffusion_physics.eqx``, ``diffusion_plain.eqx``: both checkpoints.

    python experiments/virtual_patients.py OUT [--steps 4000] [--n-train 40000] [--lam LAM]
        [--physics-sigma SIGMA] [--min-abar A] [--n-generated 100000] [--n-guided 20000] [--seed 0]
        [--ship]   # also copy the physics checkpoint to pkpd_jax/virtual_patients/pretrained/

The defaults are the setting chosen by a sweep (module docstring of
``pkpd_jax.virtual_patients.diffusion``); the model without physics gets the same seed, steps, network
and sampler (λ = 0 is its only difference). Violation rates and fidelity of the unguided columns use
``--n-generated`` patients per model; the guided columns (10 gradient steps per sampling step, slower)
use ``--n-guided``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import numpy as np

from pkpd_jax.virtual_patients import constraints as C, diffusion as D, reference as R


#: The physics model's setting (chosen by the sweep in the diffusion module's docstring).
LAM, PHYSICS_SIGMA, MIN_ABAR = 5.0, 0.3, 0.98


def _compare(real, gen, mean, std, seed):
    fid = D.fidelity(real, gen, mean, std, seed=seed)
    return {"violations": C.violation_rate(gen), "fidelity": fid}


def _plot(path, real, gens, results):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    show = ["age", "height", "weight", "bmi", "v_liver", "v_muscle", "v_adipose", "co", "q_liver", "gfr",
            "hct", "albumin"]
    fig, axes = plt.subplots(4, 4, figsize=(16, 13))
    for ax, name in zip(axes.flat, show):
        j = R.index(name)
        lo, hi = np.quantile(real[:, j], [0.001, 0.999])
        bins = np.linspace(lo - 0.1 * (hi - lo), hi + 0.1 * (hi - lo), 60)
        ax.hist(real[:, j], bins, density=True, histtype="stepfilled", alpha=0.3, color="k",
                label="reference")
        for (label, g), c in zip(gens.items(), ("C0", "C3")):
            ax.hist(g[:, j], bins, density=True, histtype="step", color=c, label=label)
        ax.set_title(f"{name} ({R.UNITS[name]})")
    axes.flat[0].legend(fontsize=8)
    # BMI consistency error and violation rates
    ax = axes.flat[len(show)]
    for (label, g), c in zip(gens.items(), ("C0", "C3")):
        err = g[:, R.index("bmi")] / (g[:, R.index("weight")] / (g[:, R.index("height")] / 100) ** 2) - 1
        ax.hist(np.clip(err, -0.05, 0.05), np.linspace(-0.05, 0.05, 80), histtype="step", color=c,
                label=label)
    ax.axvspan(-C.BMI_TOLERANCE, C.BMI_TOLERANCE, color="g", alpha=0.1)
    ax.set_title("BMI / (W/H²) - 1 (green: allowed)")
    ax = axes.flat[len(show) + 1]
    names = ["any", *C.CONSTRAINTS]
    xs = np.arange(len(names))
    for k, (label, c) in enumerate(zip(gens, ("C0", "C3"))):
        rates = [100 * results[label]["violations"][n] for n in names]
        ax.bar(xs + 0.4 * k, rates, 0.4, color=c, label=label)
    ax.set_xticks(xs + 0.2, names, rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("% of patients violating")
    ax.set_title("constraint violations")
    ax.legend(fontsize=8)
    for ax in axes.flat[len(show) + 2:]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _markdown(res: dict) -> str:
    cols = ["physics", "plain", "physics+guidance", "plain+guidance"]
    m = res["models"]
    lines = [
        "# Physics-constrained diffusion for virtual patients",
        "",
        f"Reference population: {res['n_train']} training + {res['n_test']} held-out patients "
        f"(seed {res['seed']}); {res['n_generated']} generated per model ({res['n_guided']} for the "
        f"`+guidance` columns); {res['steps']} training steps, λ = {res['lam']}, physics_sigma = "
        f"{res['physics_sigma']}, min_abar = {res['min_abar']} for the physics model, the same seed, steps, "
        "network and sampler for both (λ = 0 without physics). `+guidance`: the same trained model sampled "
        "with constraint guidance.",
        "",
        "| metric | " + " | ".join(cols) + " |",
        "|---|" + "---|" * len(cols),
    ]
    row = lambda label, f: lines.append(f"| {label} | " + " | ".join(f(m[c]) for c in cols) + " |")
    row("violation rate (any constraint)", lambda r: f"{100 * r['violations']['any']:.2f} %")
    for name in C.CONSTRAINTS:
        row(f"violating `{name}`", lambda r, n=name: f"{100 * r['violations'][n]:.2f} %")
    for key, label in (("w1_mean", "mean Wasserstein-1 (standardised)"), ("ks_mean", "mean KS statistic"),
                       ("corr_error_mean", "mean abs. correlation error"),
                       ("corr_error_max", "max abs. correlation error"),
                       ("c2st_auc", "classifier 2-sample AUC")):
        row(label, lambda r, k=key: f"{r['fidelity'][k]:.4f}")
    row("training time", lambda r: f"{r['train_seconds']:.0f} s")
    row("70-140 kg: raw fraction in range", lambda r: f"{r['conditional']['raw_in_range']:.3f}")
    row("70-140 kg: violation rate", lambda r: f"{100 * r['conditional']['violation_rate']:.2f} %")
    fl = res["reference_floor"]
    lines += [
        "",
        f"Reference held-out vs a fresh reference sample (the floor of the fidelity metrics): "
        f"W1 {fl['w1_mean']:.4f}, KS {fl['ks_mean']:.4f}, correlation error {fl['corr_error_mean']:.4f}, "
        f"AUC {fl['c2st_auc']:.3f}.",
        "",
    ]
    for mode, t in res["targets"].items():
        lines.append(
            f"Targets ({mode}): physics violation rate < 0.5 %: **{t['violation_below_0.5pct']}**; "
            f"≥ 4× below the model without physics: **{t['violation_4x_lower']}** "
            f"(ratio {t['violation_ratio']:.1f}); fidelity (W1, correlation error) within 10 %: "
            f"**{t['fidelity_within_10pct']}**; also KS and AUC: **{t['all_fidelity_within_10pct']}** "
            f"({', '.join(f'{k} {100 * v:+.0f} %' for k, v in t['fidelity_relative_change'].items())}).")
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path)
    ap.add_argument("--steps", type=int, default=4000)
    ap.add_argument("--n-train", type=int, default=40000)
    ap.add_argument("--n-test", type=int, default=10000)
    ap.add_argument("--n-generated", type=int, default=100000)
    ap.add_argument("--n-guided", type=int, default=20000, help="patients per guided column")
    ap.add_argument("--lam", type=float, default=LAM, help="physics weight λ of the physics model")
    ap.add_argument("--physics-sigma", type=float, default=PHYSICS_SIGMA,
                    help="perturbation (standardised units) of the physics term's inputs")
    ap.add_argument("--guidance", type=float, default=0.2)
    ap.add_argument("--guidance-iters", type=int, default=10)
    ap.add_argument("--final-iters", type=int, default=50)
    ap.add_argument("--min-abar", type=float, default=MIN_ABAR, help="physics term only where ᾱ_t >= this")
    ap.add_argument("--width", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--ship", action="store_true", help="copy the physics checkpoint into the package")
    args = ap.parse_args(argv)
    from pkpd_jax._x64 import enable_x64

    enable_x64()   # numpy-side metrics in float64; the network itself is float32
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    train_x, rejected = R.generate(args.n_train, args.seed, return_rejected=True)
    test_x = R.generate(args.n_test, args.seed + 1)
    config = D.DiffusionConfig(width=args.width)
    res: dict = {"seed": args.seed, "n_train": args.n_train, "n_test": args.n_test, "steps": args.steps,
                 "n_generated": args.n_generated, "n_guided": args.n_guided, "lam": args.lam,
                 "physics_sigma": args.physics_sigma, "min_abar": args.min_abar,
                 "physics_perturb": list(D.PHYSICS_PERTURB), "config": vars(config) | {},
                 "reference_rejected_fraction": rejected, "models": {}}
    floor_x = R.generate(args.n_generated, args.seed + 2)
    mean, std = train_x.mean(0), train_x.std(0)
    res["reference_floor"] = {k: v for k, v in D.fidelity(test_x, floor_x, mean, std, seed=args.seed).items()
                              if not isinstance(v, dict)}
    gens, models = {}, {}
    for label, lam in (("physics", args.lam), ("plain", 0.0)):
        print(f"training the model {label} (λ = {lam}) for {args.steps} steps")
        tr = D.train(train_x, config, steps=args.steps, lam=lam, seed=args.seed, min_abar=args.min_abar,
                     physics_sigma=args.physics_sigma, log_every=500, log=print)
        models[label] = tr
        for guided, g_scale in (("", 0.0), ("+guidance", args.guidance)):
            name = label + guided
            n_gen = args.n_guided if g_scale > 0 else args.n_generated
            g = tr.diffusion.sample(n_gen, seed=args.seed + 10, guidance=g_scale,
                                    guidance_iters=args.guidance_iters, final_iters=args.final_iters)
            gens[name] = g
            r = _compare(test_x, g, tr.diffusion.mean, tr.diffusion.std, args.seed)
            r["train_seconds"] = tr.seconds
            r["guidance"] = g_scale
            r["n_generated"] = n_gen
            gc, info = tr.diffusion.sample(2000, seed=args.seed + 11, bw_range=(70.0, 140.0),
                                           guidance=g_scale, guidance_iters=args.guidance_iters,
                                           final_iters=args.final_iters,
                                           return_info=True)
            r["conditional"] = {"bw_range": [70.0, 140.0], "raw_in_range": info["raw_in_range"],
                                "violation_rate": C.violation_rate(gc)["any"],
                                "weight_min": float(gc[:, R.index("weight")].min()),
                                "weight_max": float(gc[:, R.index("weight")].max())}
            res["models"][name] = r
            print(name, json.dumps({"violations": r["violations"]["any"],
                                    **{k: v for k, v in r["fidelity"].items() if not isinstance(v, dict)}}))
        res["models"][label]["history"] = tr.history
    res["targets"] = {}
    for suffix in ("", "+guidance"):
        p, q = res["models"]["physics" + suffix], res["models"]["plain" + suffix]
        vp, vq = p["violations"]["any"], q["violations"]["any"]
        worse = {k: p["fidelity"][k] / max(q["fidelity"][k], 1e-12) - 1
                 for k in ("w1_mean", "ks_mean", "corr_error_mean")}
        auc_p, auc_q = p["fidelity"]["c2st_auc"], q["fidelity"]["c2st_auc"]
        worse["c2st_auc_excess"] = (auc_p - 0.5) / max(auc_q - 0.5, 1e-12) - 1
        res["targets"]["sampling" + (suffix or "+none")] = {
            "violation_below_0.5pct": vp < 0.005,
            "violation_ratio": vq / vp if vp > 0 else float("inf"),
            "violation_4x_lower": bool(vq >= 4 * vp and vq > 0),   # 0 vs 0 is no reduction
            "fidelity_relative_change": worse,
            # the target's fidelity: per-variable Wasserstein-1 and correlation-matrix error
            "fidelity_within_10pct": all(worse[k] <= 0.10 for k in ("w1_mean", "corr_error_mean")),
            # stricter: also the KS statistic and the classifier AUC's excess over 0.5
            "all_fidelity_within_10pct": all(v <= 0.10 for v in worse.values()),
        }
    ship_guidance = args.guidance if res["models"]["physics+guidance"]["violations"]["any"] < \
        res["models"]["physics"]["violations"]["any"] else 0.0
    models["physics"].diffusion.meta["default_guidance"] = ship_guidance
    models["physics"].diffusion.meta["default_guidance_iters"] = args.guidance_iters
    models["physics"].diffusion.meta["default_final_iters"] = args.final_iters
    models["plain"].diffusion.meta["default_guidance"] = 0.0
    for label, tr in models.items():
        D.save(tr.diffusion, out / f"diffusion_{label}.eqx")
    res["total_seconds"] = time.perf_counter() - t0
    (out / "results.json").write_text(json.dumps(res, indent=2))
    (out / "results.md").write_text(_markdown(res))
    _plot(out / "marginals.png", test_x, {"with physics": gens["physics"], "without physics": gens["plain"]},
          {"with physics": res["models"]["physics"], "without physics": res["models"]["plain"]})
    if args.ship:
        dest = D.pretrained_path()
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(out / "diffusion_physics.eqx", dest)
        print(f"shipped {dest}")
    print((out / "results.md").read_text())
    return res


if __name__ == "__main__":
    main()
