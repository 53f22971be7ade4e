"""Digital twin / precision dosing: a patient's records ([`patient`][]), their posterior under a
population model ([`posterior`][]), forecasts and dose recommendations ([`forecast`][]), and the
next most informative sampling time ([`active`][]). The command is `pkpd-jax twin`
(`commands.py`)."""

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
]
