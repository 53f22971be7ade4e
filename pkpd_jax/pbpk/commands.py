"""`pkpd-jax allometry` and its parsers now live in [`pkpd_jax.cli.pbpk`][]."""

from ..cli.pbpk import (
    evaluate_command as evaluate_command,
    parse_drug as parse_drug,
    parse_observed as parse_observed,
    predict_command as predict_command,
    read_csv as read_csv,
    train_command as train_command,
)


__all__ = ["evaluate_command", "parse_drug", "parse_observed", "predict_command", "read_csv", "train_command"]
