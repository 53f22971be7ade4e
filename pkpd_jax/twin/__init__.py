"""Digital twin / precision dosing: a patient's records ([`patient`][]), their posterior under a
population model ([`posterior`][]), forecasts and dose recommendations ([`forecast`][]), and the
next most informative sampling time ([`active`][]), and the whole answer for one patient
([`run_twin`][], `answer`). The command is `pkpd-jax twin` (`pkpd_jax.cli.twin`)."""

from .answer import run_twin as run_twin
from .posterior import (
    PatientRecord,
    TwinError,
    TwinPopulation,
    TwinPosterior,
    individual_posterior,
    individual_posteriors,
)


__all__ = [
    "PatientRecord",
    "TwinError",
    "TwinPopulation",
    "TwinPosterior",
    "individual_posterior",
    "individual_posteriors",
    "run_twin",
]
