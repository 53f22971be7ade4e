"""Former home of the population model; its names now live in `pkpd_jax.population` (covariates,
residual error, predictions, errors) and `pkpd_jax.inference` (`likelihood`, `optimize`,
`predictive`, `priors`). Kept so that existing imports keep working."""

from ..population import (
    DEFAULT_CONFIG as DEFAULT_CONFIG,
    REFERENCE_BW as REFERENCE_BW,
    CovariateEffect as CovariateEffect,
    CovariateSpec as CovariateSpec,
    CovariateSpecError as CovariateSpecError,
    PopulationDataError as PopulationDataError,
    PopulationDataWarning as PopulationDataWarning,
)
from .likelihood import PopulationModel as PopulationModel
from .optimize import (
    StartingPoints as StartingPoints,
    curvature_diagonal as curvature_diagonal,
    curvature_matrix as curvature_matrix,
    fit_map as fit_map,
)
from .predictive import PredictiveSample as PredictiveSample, simulate_predictive as simulate_predictive
from .priors import (
    OMEGA_PRIOR_SCALE as OMEGA_PRIOR_SCALE,
    SIGMA_ADD_PRIOR_FRACTION as SIGMA_ADD_PRIOR_FRACTION,
    SIGMA_PROP_PRIOR_SCALE as SIGMA_PROP_PRIOR_SCALE,
    TYPICAL_PRIOR_INFLATION as TYPICAL_PRIOR_INFLATION,
)


__all__ = [
    "CovariateSpec",
    "CovariateEffect",
    "CovariateSpecError",
    "PopulationDataError",
    "PopulationDataWarning",
    "PopulationModel",
    "PredictiveSample",
    "StartingPoints",
    "curvature_diagonal",
    "curvature_matrix",
    "fit_map",
    "simulate_predictive",
    "DEFAULT_CONFIG",
]
