"""`pkpd-jax virtual-patients` now lives in [`pkpd_jax.cli.virtual_patients`][]."""

from ..cli.virtual_patients import virtual_patients_command as virtual_patients_command


__all__ = ["virtual_patients_command"]
