"""Run the command line in-process, as `pkpd-jax ARGS...` would (typer's test runner).

A subprocess per call costs a Python start and the import of JAX (~3 s each on 2 cores), which
adds up over the suite's few dozen command-line checks. In-process calls skip the console
script's own set-up (`pkpd_jax.cli.main`: one JAX device per core, the on-disk compilation
cache); `test_cli.py` runs the installed entry point itself in a subprocess.

The result mimics `subprocess.CompletedProcess`: an exception that escaped the command (which
the console script would print as a traceback) is appended to ``stderr`` as a formatted
traceback, so checks such as ``"Traceback" not in res.stderr`` keep their meaning.
"""

from __future__ import annotations

import traceback
from dataclasses import dataclass


@dataclass(frozen=True)
class CliResult:
    returncode: int
    stdout: str
    stderr: str


def invoke(*args: str) -> CliResult:
    from typer.testing import CliRunner

    from pkpd_jax.cli import app

    res = CliRunner().invoke(app, [str(a) for a in args])
    err = res.stderr
    if res.exception is not None and not isinstance(res.exception, SystemExit):
        err += "".join(traceback.format_exception(res.exception))
    return CliResult(res.exit_code, res.stdout, err)
