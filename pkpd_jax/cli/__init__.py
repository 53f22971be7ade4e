"""The ``pkpd-jax`` command line: thin typer commands over the library, grouped by stage.

Every command prints a specific one-line error (naming the row/column/argument) and exits with
status 1 on bad input, never a traceback ([`friendly`][pkpd_jax.cli._errors.friendly]). Commands
that simulate enable float64 first. Importing this package is cheap: each command imports JAX
and the library inside its function.

Commands: `models`, `simulate`, `example`, `validate`, `run`, `fit` ([`core`][]); `selector
corpus|train|evaluate|classify` ([`selector`][]; also as the top-level `corpus`, `train`,
`evaluate` and `classify` of earlier releases); `trial` ([`trials`][]); `twin` ([`twin`][]);
`qkernel` ([`quantum`][]); `virtual-patients` ([`virtual_patients`][]); `allometry
train|predict|evaluate` ([`pbpk`][]).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Annotated

import typer

from .. import __version__
from . import core, pbpk, quantum, selector, trials, twin, virtual_patients
from ._errors import friendly


__all__ = ["app", "main"]

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="pkpd-jax: differentiable PK/PD models, population inference and virtual trials in JAX.",
)


@app.callback(invoke_without_command=True)
def _main(
    version: Annotated[bool, typer.Option("--version", help="Print the version and exit.")] = False,
):
    if version:
        typer.echo(__version__)
        raise typer.Exit()


def _add(group: typer.Typer, name: str, fn: Callable, *, hidden: bool = False) -> None:
    group.command(name, hidden=hidden)(friendly(fn))


for _name, _fn in (("models", core.models), ("simulate", core.simulate), ("example", core.example),
                   ("validate", core.validate), ("run", core.run), ("fit", core.fit)):
    _add(app, _name, _fn)

_SELECTOR = (("corpus", selector.corpus_command), ("train", selector.train_command),
             ("evaluate", selector.evaluate_command), ("classify", selector.classify_command))
selector_app = typer.Typer(no_args_is_help=True, help="Amortized model selection: simulate a corpus, "
                           "train and evaluate the selector, classify a study.")
for _name, _fn in _SELECTOR:
    _add(selector_app, _name, _fn)
    _add(app, _name, _fn, hidden=True)  # the top-level names of earlier releases (users' scripts)
app.add_typer(selector_app, name="selector")

_add(app, "trial", trials.trial)
_add(app, "twin", twin.twin_command)
_add(app, "qkernel", quantum.qkernel)
_add(app, "virtual-patients", virtual_patients.virtual_patients_command)

allometry_app = typer.Typer(no_args_is_help=True,
                            help="Neural allometry: interspecies scaling of CL and Vss.")
for _name, _fn in (("train", pbpk.train_command), ("predict", pbpk.predict_command),
                   ("evaluate", pbpk.evaluate_command)):
    _add(allometry_app, _name, _fn)
app.add_typer(allometry_app, name="allometry")


def main() -> None:
    """Console-script entry point (`pkpd-jax`): one JAX device per core, the compilation cache."""
    from ..devices import use_compilation_cache, use_host_devices

    use_host_devices()  # one JAX device per core: a fit's chains run on all cores
    use_compilation_cache()  # a second fit/run of the same study skips compilation
    try:
        app()
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)
