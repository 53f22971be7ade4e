"""The `selector` group (amortized model selection): `corpus` (simulate a labelled corpus),
`train` and `evaluate` (the model-selection Transformer) and `classify` (a study's PK and PD
class from the shipped or given selectors).

Cheap to import: JAX, equinox, optax and the selectors are imported inside the commands.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from ._options import AsJson, Family, choices


__all__ = ["classify_command", "corpus_command", "evaluate_command", "train_command"]


def corpus_command(
    family: Annotated[str, typer.Option(
        metavar=choices(Family), help="'pk' (label: PK class) or 'pd' (label: PD class).")],
    n: Annotated[int, typer.Option(help="Number of trajectories.")],
    out: Annotated[Path, typer.Option(help="Output directory (parquet shards + manifest.json).")],
    seed: Annotated[int, typer.Option(help="Seed: the same seed gives byte-identical shards.")] = 0,
    shard_size: Annotated[int, typer.Option(help="Trajectories per shard (the unit of resume).")] = 20_000,
    classes: Annotated[
        str | None, typer.Option(help="Comma-separated subset of the family's classes (default: all 10).")
    ] = None,
    devices: Annotated[
        int | None, typer.Option(help="CPU devices to split subjects over (default: one per core).")
    ] = None,
    pd_sampling: Annotated[str, typer.Option(
        help="PD only: 'mixed' (half the subjects with concentration and biomarker sampled largely at "
             "different times) or 'shared' (both at every time).")] = "mixed",
    pd_potency: Annotated[str, typer.Option(
        help="PD only: 'exposure' (EC50/IC50/slope drawn relative to the subject's exposure) or 'prior' "
             "(the class's declared prior).")] = "exposure",
    designs: Annotated[str, typer.Option(
        help="Comma-separated dosing/sampling designs to draw from: single, daily, weekly, daily14.")
    ] = "single,daily,weekly,daily14",
    progress: Annotated[bool, typer.Option(help="Show a progress bar with rate and ETA.")] = True,
):
    """Simulate a labelled corpus for amortized model selection; rerun the same command to resume."""
    if family not in ("pk", "pd"):
        raise ValueError(f"--family must be 'pk' or 'pd'; got {family!r}.")
    if n < 1:
        raise ValueError(f"--n must be >= 1; got {n}.")
    if shard_size < 1:
        raise ValueError(f"--shard-size must be >= 1; got {shard_size}.")
    from ..devices import use_host_devices

    use_host_devices(devices)  # default: one device per core
    from ..amortized.corpus import generate_corpus

    names = None if classes is None else tuple(c.strip() for c in classes.split(",") if c.strip())
    man = generate_corpus(out, family, n, seed, shard_size=shard_size, classes=names,
                          pd_sampling=pd_sampling, pd_potency=pd_potency,
                          designs=tuple(d.strip() for d in designs.split(",") if d.strip()),
                          progress=progress)
    c = man["counts"]
    rate = man["timing"].get("last_call", {}).get("traj_per_s")
    typer.echo(
        f"{'complete' if man['complete'] else 'partial'} {family} corpus in {out}: "
        f"{c['written']} trajectories "
        f"(train {c['train']}, val {c['val']}, test {c['test']}; {c['failed']} failed simulations dropped) "
        f"in {man['shards_done']}/{man['n_shards']} shards"
        + (f"; {rate:,.0f} trajectories/s in this run, compilation included" if rate else "")
    )


def _corpus_source(corpus: Path, batch_size: int, seed: int):
    if not corpus.is_dir():
        raise FileNotFoundError(f"--corpus {corpus} is not a directory.")
    try:
        from ..amortized.train import CorpusBatches

        return CorpusBatches(corpus, batch_size, seed=seed)
    except ImportError as e:  # the corpus reader is a separate module
        raise ValueError(f"cannot read corpora: {e}.") from None


def train_command(
    family: Annotated[str, typer.Option(
        metavar=choices(Family), help="Model family of the corpus: 'pk' or 'pd'.")],
    corpus: Annotated[Path, typer.Option(help="Corpus directory (see `pkpd-jax corpus`).")],
    epochs: Annotated[int, typer.Option(help="Total number of epochs (a resumed run counts those done).")],
    out: Annotated[Path, typer.Option(help="Directory for checkpoints and metrics.jsonl.")],
    preset: Annotated[str, typer.Option(
        help="Network/optimiser preset: tiny, ref64, ref128, ref128x6, ref192, ref128x8.")] = "ref64",
    batch_size: Annotated[int | None, typer.Option(help="Batch size (default: the preset's).")] = None,
    seed: Annotated[int, typer.Option(help="Seed of initialisation, dropout and batch order.")] = 0,
    resume: Annotated[bool, typer.Option(
        help="Continue from OUT/checkpoint.eqx if present (--no-resume starts afresh).")] = True,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
):
    """Train the model-selection Transformer on a corpus; resumable, one checkpoint per epoch."""
    from ..amortized.train import get_preset, train

    if family not in ("pk", "pd"):
        raise ValueError(f"--family must be 'pk' or 'pd'; got {family!r}.")
    if epochs < 1:
        raise ValueError(f"--epochs must be >= 1; got {epochs}.")
    p = get_preset(preset)
    bs = batch_size or p.batch_size
    if bs < 1:
        raise ValueError(f"--batch-size must be >= 1; got {bs}.")
    source = _corpus_source(corpus, bs, seed)
    corpus_family = getattr(source.info, "family", family)
    if corpus_family != family:
        raise ValueError(f"--family {family} but the corpus {corpus} is a {corpus_family!r} corpus.")
    log = lambda msg: typer.echo(msg, err=True)
    result = train(source, preset=p, epochs=epochs, out=out, seed=seed, resume=resume,
                   progress=progress, log=log)
    last = result.history[-1] if result.history else {}
    typer.echo(f"trained {p.name} for {last.get('epoch', epochs)} epochs; "
               f"val accuracy {last.get('val_acc', float('nan')):.3f}; checkpoints in {out}")


def evaluate_command(
    checkpoint: Annotated[Path, typer.Option(help="Training output directory (or a .eqx checkpoint).")],
    corpus: Annotated[Path, typer.Option(help="Corpus directory with the held-out split.")],
    out: Annotated[Path, typer.Option(help="Directory for evaluation.json, confusion.png, reliability.png.")],
    split: Annotated[str, typer.Option(help="Split to evaluate.")] = "test",
    batch_size: Annotated[int, typer.Option(help="Batch size.")] = 256,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
):
    """Accuracy, confusion matrix, per-class parameter errors and calibration on a held-out split."""
    from ..amortized.evaluate import CONFUSION_PNG, EVALUATION_FILE, RELIABILITY_PNG, evaluate
    from ..amortized.train import load_checkpoint

    ckpt = load_checkpoint(checkpoint)
    source = _corpus_source(corpus, batch_size, 0)
    names = list(getattr(source.info, "class_names", ()))
    if names != list(ckpt.class_names):
        raise ValueError(f"the corpus classes {names} differ from the checkpoint's {list(ckpt.class_names)}.")
    res = evaluate(ckpt, source, split=split, out=out, progress=progress)
    typer.echo(f"{split}: n = {res['n']}, accuracy {res['accuracy']:.3f}, ECE {res['ece']:.3f}, "
               f"normalised parameter MSE {res['mse_normalised']:.4f}")
    typer.echo(f"wrote {out / EVALUATION_FILE}, {out / CONFUSION_PNG}, {out / RELIABILITY_PNG}")


def classify_command(
    data: Annotated[Path, typer.Argument(help="NONMEM-style CSV file.")],
    json_out: AsJson = False,
    checkpoint_pk: Annotated[Path | None, typer.Option(
        help="PK selector (training output directory or .eqx file; default: the shipped one).")] = None,
    checkpoint_pd: Annotated[Path | None, typer.Option(
        help="PD selector (training output directory or .eqx file; default: the shipped one).")] = None,
):
    """Choose the study's PK class and PD class (amortized model selection), with probabilities."""
    if not data.exists():
        raise FileNotFoundError(f"no data file {data}")
    for name, path in (("--checkpoint-pk", checkpoint_pk), ("--checkpoint-pd", checkpoint_pd)):
        if path is not None and not path.exists():
            raise FileNotFoundError(f"{name} {path} does not exist.")
    from ..amortized.classify import classify_study, summary_lines

    result = classify_study(data, checkpoint_pk=checkpoint_pk, checkpoint_pd=checkpoint_pd)
    if json_out:
        typer.echo(json.dumps(result, indent=2))
        return
    typer.echo(f"{data}: {result['n_subjects']} subjects")
    for line in summary_lines(result):
        typer.echo(line)
