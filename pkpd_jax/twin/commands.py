"""`pkpd-jax twin` now lives in [`pkpd_jax.cli.twin`][] and `run_twin` in [`pkpd_jax.twin.answer`][]."""

from ..cli.twin import twin_command as twin_command
from .answer import run_twin as run_twin


__all__ = ["run_twin", "twin_command"]
