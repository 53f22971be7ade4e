"""Train the model selectors shipped in `pkpd_jax/amortized/pretrained/` (PK and PD).

For each family: generate a corpus (`pkpd_jax.amortized.corpus.generate_corpus`, resumable),
train the Transformer (`pkpd_jax.amortized.train.train`, resumable, best-validation checkpoint),
evaluate it on the held-out test split (`pkpd_jax.amortized.evaluate.evaluate`), and with
``--ship`` copy the model (``best.eqx``), its ``evaluation.json`` and ``confusion.png`` into the
package. A summary (sizes, wall times, throughput, accuracy, confusion matrices, the bundled
example study's classification) goes to ``selectors.json`` in the package directory with
``--ship``, and always to ``WORK/selectors.json``.

The shipped PK selector: 1,000,000 trajectories of the default designs, preset ``cpu64``
(ref64's shape, no dropout, 209k weights), 4 epochs, batch 256, seed 0, about an hour on 2 CPU
cores. The shipped PD selector: the same size, preset and epochs on the default corpus (four designs
including ``daily14``, mixed concentration/biomarker sampling, potency relative to exposure)::

    python experiments/train_selectors.py --ship --families pk --n-pk 1000000 --epochs-pk 4 \
        --preset cpu64 --shard-size 50000
    python experiments/train_selectors.py --ship --families pd --n-pd 1000000 --epochs-pd 4 \
        --preset cpu64 --shard-size 50000

The first PD selector (200,000 trajectories of the original PD design, preset ``cpu48``, 5 epochs)
is reproduced by ``--families pd --designs single daily weekly --pd-sampling shared
--pd-potency prior``.

Everything is deterministic given the arguments (corpus seed, training seed, batch order).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
PACKAGE_DIR = ROOT / "pkpd_jax" / "amortized" / "pretrained"


def _use_host_devices() -> None:
    """One JAX CPU device per core for the corpus simulation (must precede importing JAX)."""
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    flags = os.environ.get("XLA_FLAGS", "")
    if n > 1 and "xla_force_host_platform_device_count" not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={n}".strip()


def run_family(family: str, args, work: Path, log) -> dict:
    import equinox as eqx
    import jax

    from pkpd_jax.amortized.corpus import generate_corpus
    from pkpd_jax.amortized.evaluate import evaluate
    from pkpd_jax.amortized.train import CorpusBatches, get_preset, load_checkpoint, train

    corpus_dir, train_dir = work / f"corpus_{family}", work / f"train_{family}"
    eval_dir = work / f"eval_{family}"
    n = args.n_pk if family == "pk" else args.n_pd
    epochs = args.epochs_pk if family == "pk" else args.epochs_pd
    preset = get_preset(args.preset)
    batch_size = args.batch_size or preset.batch_size

    t0 = time.perf_counter()
    log(f"[{family}] corpus: {n} trajectories -> {corpus_dir.name}/")
    design = {"designs": tuple(args.designs), "pd_sampling": args.pd_sampling, "pd_potency": args.pd_potency}
    man = generate_corpus(corpus_dir, family, n, args.seed, shard_size=args.shard_size, progress=False,
                          **design)
    corpus_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    log(f"[{family}] training {preset.name}, {epochs} epochs, batch {batch_size}")
    source = CorpusBatches(corpus_dir, batch_size, seed=args.seed)
    result = train(source, preset=preset, epochs=epochs, out=train_dir, seed=args.seed, resume=True,
                   progress=False, log=lambda m: log(f"[{family}]   {m}"))
    train_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    ckpt = load_checkpoint(train_dir)  # best.eqx: the lowest validation loss
    ev = evaluate(ckpt, CorpusBatches(corpus_dir, 512, seed=0), split="test", out=eval_dir)
    eval_s = time.perf_counter() - t0
    log(f"[{family}] test accuracy {ev['accuracy']:.4f} (n = {ev['n']}), ECE {ev['ece']:.4f}; "
        f"best epoch {ckpt.meta['epoch']}")

    n_weights = sum(int(x.size) for x in jax.tree.leaves(eqx.filter(ckpt.model, eqx.is_inexact_array)))
    names = ev["class_names"]
    cm = ev["confusion_matrix"]
    confusions = sorted(
        ((cm[i][j], names[i], names[j]) for i in range(len(names)) for j in range(len(names)) if i != j),
        reverse=True,
    )[:8]
    return {
        "family": family,
        "corpus": {"n": n, "seed": args.seed, "shard_size": args.shard_size, "counts": man["counts"],
                   "wall_s": corpus_s,
                   **{k: list(v) if isinstance(v, tuple) else v for k, v in design.items()}},
        "training": {
            "preset": preset.to_dict(), "batch_size": batch_size, "epochs": epochs, "seed": args.seed,
            "weights": n_weights, "wall_s": train_s, "best_epoch": ckpt.meta["epoch"],
            "history": result.history,
            "trajectories_per_s": [h["trajectories_per_s"] for h in result.history],
        },
        "test": {
            "n": ev["n"], "accuracy": ev["accuracy"], "ece": ev["ece"],
            "mse_normalised": ev["mse_normalised"],
            "class_names": names, "confusion_matrix": cm,
            "recall": {k: v["recall"] for k, v in ev["per_class"].items()},
            "median_fold_error": {k: v.get("median_fold_error") for k, v in ev["per_class"].items()},
            "largest_confusions": [{"true": t, "predicted": p, "count": int(c)} for c, t, p in confusions],
            "wall_s": eval_s,
        },
    }


def ship(family: str, work: Path) -> Path:
    """Copy the best model, its evaluation and confusion plot into the package."""
    from pkpd_jax.amortized.train import BEST_FILE

    dest = PACKAGE_DIR / family
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(work / f"train_{family}" / BEST_FILE, dest / BEST_FILE)
    for name in ("evaluation.json", "confusion.png"):
        shutil.copyfile(work / f"eval_{family}" / name, dest / name)
    return dest


def check_example(checkpoints: dict) -> dict:
    """The bundled example study classified by the new selectors (truth: its documented classes)."""
    from pkpd_jax.amortized.classify import classify_study
    from pkpd_jax.data.example import PD_MODEL, PK_MODEL, example_paths

    t0 = time.perf_counter()
    res = classify_study(example_paths()[0], checkpoint_pk=checkpoints["pk"], checkpoint_pd=checkpoints["pd"])
    out = {"wall_s": time.perf_counter() - t0, "truth": {"pk": PK_MODEL, "pd": PD_MODEL}}
    for fam in ("pk", "pd"):
        r = res[fam]
        if r is None:
            out[fam] = {"note": res["pd_note"]}
            continue
        top = dict(list(r["probabilities"].items())[:3])
        out[fam] = {"selected": r["selected"], "correct": r["selected"] == out["truth"][fam],
                    "top_probabilities": top, "votes": r["votes"], "n_subjects": r["n_subjects"],
                    "params": r["params"]}
    return out


def main(argv=None) -> int:
    from pkpd_jax.amortized.corpus import DEFAULT_DESIGNS, DESIGNS

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n-pk", type=int, default=200_000, help="PK corpus size (trajectories)")
    ap.add_argument("--n-pd", type=int, default=200_000, help="PD corpus size (trajectories)")
    ap.add_argument("--epochs-pk", type=int, default=5)
    ap.add_argument("--epochs-pd", type=int, default=5)
    ap.add_argument("--preset", default="cpu48", help="network preset (pkpd_jax.amortized.train.PRESETS)")
    ap.add_argument("--batch-size", type=int, default=None, help="default: the preset's")
    ap.add_argument("--shard-size", type=int, default=20_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--families", nargs="+", default=["pk", "pd"], choices=["pk", "pd"])
    ap.add_argument("--designs", nargs="+", default=list(DEFAULT_DESIGNS), choices=[d.name for d in DESIGNS],
                    help="corpus dosing/sampling designs (default: all)")
    ap.add_argument("--pd-sampling", default="mixed", choices=["mixed", "shared"],
                    help="PD corpus: concentration and biomarker times (see pkpd_jax.amortized.corpus)")
    ap.add_argument("--pd-potency", default="exposure", choices=["exposure", "prior"],
                    help="PD corpus: EC50/IC50/slope relative to exposure or from the declared prior")
    ap.add_argument("--work", type=Path, default=ROOT / "runs" / "selectors",
                    help="corpora, training checkpoints and evaluations (default: runs/selectors)")
    ap.add_argument("--ship", action="store_true",
                    help="copy the results into pkpd_jax/amortized/pretrained/")
    args = ap.parse_args(argv)

    _use_host_devices()
    sys.path.insert(0, str(ROOT))
    import jax

    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    log = lambda m: print(f"{dt.datetime.now():%H:%M:%S} {m}", flush=True)
    summary = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(), "jax": jax.__version__,
                    "devices": len(jax.devices()), "loadavg_start": list(os.getloadavg())},
        "arguments": {k: v for k, v in vars(args).items() if k not in ("work", "ship")},
        "families": {},
    }
    for family in args.families:
        summary["families"][family] = run_family(family, args, work, log)
        if args.ship:
            ship(family, work)
    checkpoints = {f: (PACKAGE_DIR / f if args.ship else work / f"train_{f}") for f in ("pk", "pd")}
    if all((Path(c) / "best.eqx").is_file() for c in checkpoints.values()):
        summary["example_study"] = check_example(checkpoints)
        chosen = {k: summary["example_study"][k].get("selected") for k in ("pk", "pd")}
        log(f"example study: {json.dumps(chosen)}")
    summary["machine"]["loadavg_end"] = list(os.getloadavg())
    summary["wall_s"] = time.perf_counter() - start
    text = json.dumps(summary, indent=2) + "\n"
    (work / "selectors.json").write_text(text)
    if args.ship:
        if set(args.families) != {"pk", "pd"}:
            prev = PACKAGE_DIR / "selectors.json"
            if prev.is_file():  # keep the other family's record
                old = json.loads(prev.read_text())
                summary["families"] = {**old.get("families", {}), **summary["families"]}
                text = json.dumps(summary, indent=2) + "\n"
        (PACKAGE_DIR / "selectors.json").write_text(text)
    log(f"done in {summary['wall_s']:.0f} s; summary in {work.name}/selectors.json"
        + (" and the package" if args.ship else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
