"""`pkpd-jax classify` now lives in [`pkpd_jax.cli.selector`][] (`pkpd-jax selector classify`)."""

from ..cli.selector import classify_command as classify_command


__all__ = ["classify_command"]
