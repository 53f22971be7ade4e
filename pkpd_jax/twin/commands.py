"""`pkpd-jax twin` and `run_twin` now live in [`pkpd_jax.cli.twin`][]."""

from ..cli.twin import run_twin as run_twin, twin_command as twin_command


__all__ = ["run_twin", "twin_command"]
