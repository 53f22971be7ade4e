"""The one base class of the errors a user can act on.

Every error raised because of the user's input (a data file, an option, a parameter value, a
model name, a failed simulation of the user's parameters) derives from [`PkpdError`][], so a
caller, and the command line, can catch the whole family with one clause and print the message
instead of a traceback. Each subclass also keeps the builtin it used to be (`ValueError`,
`KeyError`, `RuntimeError`), so existing ``except ValueError`` code keeps working.
"""

from __future__ import annotations


__all__ = ["PkpdError"]


class PkpdError(Exception):
    """Base class of pkpd_jax's user-facing errors (bad input, not a bug in pkpd_jax)."""
