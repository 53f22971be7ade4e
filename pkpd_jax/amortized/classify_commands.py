"""`pkpd-jax classify`: the study's PK and PD class from the shipped (or given) model selectors.

Cheap to import: JAX and the selectors are loaded inside the command.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer


def classify_command(
    data: Annotated[Path, typer.Argument(help="NONMEM-style CSV file.")],
    json_out: Annotated[bool, typer.Option("--json", help="Print the full result as JSON.")] = False,
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
    from .classify import classify_study, summary_lines

    result = classify_study(data, checkpoint_pk=checkpoint_pk, checkpoint_pd=checkpoint_pd)
    if json_out:
        typer.echo(json.dumps(result, indent=2))
        return
    typer.echo(f"{data}: {result['n_subjects']} subjects")
    for line in summary_lines(result):
        typer.echo(line)


def register(app: typer.Typer, friendly) -> None:
    """Add `classify` to the `pkpd-jax` app."""
    app.command("classify")(friendly(classify_command))
