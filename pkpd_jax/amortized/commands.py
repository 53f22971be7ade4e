"""`pkpd-jax train` and `evaluate` now live in [`pkpd_jax.cli.selector`][] (`pkpd-jax selector ...`)."""

from ..cli.selector import evaluate_command as evaluate_command, train_command as train_command


__all__ = ["evaluate_command", "train_command"]
