"""`pkpd-jax corpus` now lives in [`pkpd_jax.cli.selector`][] (`pkpd-jax selector corpus`)."""

from ..cli.selector import corpus_command as corpus_command


__all__ = ["corpus_command"]
