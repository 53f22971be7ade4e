"""`pkpd-jax qkernel` now lives in [`pkpd_jax.cli.quantum`][]."""

from ..cli.quantum import qkernel as qkernel


__all__ = ["qkernel"]
