"""The command line's one error handler: a user error becomes ``error: ...`` and exit status 1."""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps

import typer

from ..errors import PkpdError


__all__ = ["USER_ERRORS", "friendly"]

#: What a command reports as one ``error:`` line (never a traceback): every library error derives
#: from `PkpdError`; `FileNotFoundError` and `ValueError` are bad paths and values of options.
USER_ERRORS: tuple[type[BaseException], ...] = (PkpdError, FileNotFoundError, ValueError)


def friendly(fn: Callable) -> Callable:
    """Wrap a command: a `USER_ERRORS` exception prints ``error: MESSAGE`` on stderr and exits 1."""

    @wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except USER_ERRORS as e:
            # a KeyError subclass (e.g. an unknown model) would print its message quoted
            msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
            typer.echo(f"error: {msg}", err=True)
            raise typer.Exit(1) from None

    return wrapper
