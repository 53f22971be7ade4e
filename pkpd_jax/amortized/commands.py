"""`pkpd-jax train` and `pkpd-jax evaluate`: the model-selection Transformer from the command line.

Cheap to import: JAX, equinox and optax are imported inside the commands.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def _corpus_source(corpus: Path, batch_size: int, seed: int):
    if not corpus.is_dir():
        raise FileNotFoundError(f"--corpus {corpus} is not a directory.")
    try:
        from .train import CorpusBatches

        return CorpusBatches(corpus, batch_size, seed=seed)
    except ImportError as e:  # the corpus reader is a separate module
        raise ValueError(f"cannot read corpora: {e}.") from None


def train_command(
    family: Annotated[str, typer.Option(help="Model family of the corpus: 'pk' or 'pd'.")],
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
    from .train import get_preset, train

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
    from .evaluate import CONFUSION_PNG, EVALUATION_FILE, RELIABILITY_PNG, evaluate
    from .train import load_checkpoint

    ckpt = load_checkpoint(checkpoint)
    source = _corpus_source(corpus, batch_size, 0)
    names = list(getattr(source.info, "class_names", ()))
    if names != list(ckpt.class_names):
        raise ValueError(f"the corpus classes {names} differ from the checkpoint's {list(ckpt.class_names)}.")
    res = evaluate(ckpt, source, split=split, out=out, progress=progress)
    typer.echo(f"{split}: n = {res['n']}, accuracy {res['accuracy']:.3f}, ECE {res['ece']:.3f}, "
               f"normalised parameter MSE {res['mse_normalised']:.4f}")
    typer.echo(f"wrote {out / EVALUATION_FILE}, {out / CONFUSION_PNG}, {out / RELIABILITY_PNG}")


def register(app: typer.Typer, friendly) -> None:
    """Add `train` and `evaluate` to the `pkpd-jax` app."""
    app.command("train")(friendly(train_command))
    app.command("evaluate")(friendly(evaluate_command))
