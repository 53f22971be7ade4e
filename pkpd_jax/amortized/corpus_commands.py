"""`pkpd-jax corpus`: generate (or resume) a synthetic model-selection corpus.

Cheap to import: JAX and the simulator are imported inside the command.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def corpus_command(
    family: Annotated[str, typer.Option(help="'pk' (label: PK class) or 'pd' (label: PD class).")],
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
    from .corpus import generate_corpus

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


def register(app: typer.Typer, friendly) -> None:
    app.command("corpus")(friendly(corpus_command))
