"""`pkpd-jax trial` and `parse_bw_range` now live in [`pkpd_jax.cli.trials`][]."""

from ..cli.trials import parse_bw_range as parse_bw_range, trial as trial


__all__ = ["parse_bw_range", "trial"]
