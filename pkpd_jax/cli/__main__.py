"""`python -m pkpd_jax.cli`: the `pkpd-jax` console script."""

from . import main


main()
