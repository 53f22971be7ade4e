"""The population (statistical) model, declared once: covariate effects and the map from
population values to individual parameters, the residual error model (with BLQ by M3), the
individual predictions of the likelihood, and population draws (from a fit or a known truth)
for trials, the digital twin and the quantum cohorts. The log-density over a fit's flat position
is `pkpd_jax.inference.likelihood.PopulationModel`."""

from ._covariates import (
    REFERENCE_BW as REFERENCE_BW,
    CovariateEffect as CovariateEffect,
    CovariateSpec as CovariateSpec,
    covariate_design as covariate_design,
    effect_matrix as effect_matrix,
    individual_parameters as individual_parameters,
    to_natural as to_natural,
    to_unconstrained as to_unconstrained,
    typical_unconstrained as typical_unconstrained,
)
from ._draws import (
    PopulationDraws as PopulationDraws,
    dataset_covariates as dataset_covariates,
    dose_duration as dose_duration,
    parse_uniform as parse_uniform,
)
from ._errors import (
    CovariateSpecError as CovariateSpecError,
    PopulationDataError as PopulationDataError,
    PopulationDataWarning as PopulationDataWarning,
)
from ._predict import (
    DEFAULT_CONFIG as DEFAULT_CONFIG,
    individual_predictor as individual_predictor,
    jacobian_predictor as jacobian_predictor,
    regimen_arrays as regimen_arrays,
    uses_one_loop as uses_one_loop,
)
from ._residual import (
    fisher_weight as fisher_weight,
    normal_logpdf as normal_logpdf,
    observation_loglik as observation_loglik,
    residual_sd as residual_sd,
    sigma_names as sigma_names,
    simulate_residual as simulate_residual,
)


__all__ = [
    "REFERENCE_BW",
    "CovariateEffect",
    "CovariateSpec",
    "CovariateSpecError",
    "DEFAULT_CONFIG",
    "PopulationDataError",
    "PopulationDataWarning",
    "PopulationDraws",
    "covariate_design",
    "dataset_covariates",
    "dose_duration",
    "effect_matrix",
    "fisher_weight",
    "individual_parameters",
    "individual_predictor",
    "jacobian_predictor",
    "normal_logpdf",
    "observation_loglik",
    "parse_uniform",
    "regimen_arrays",
    "residual_sd",
    "sigma_names",
    "simulate_residual",
    "to_natural",
    "to_unconstrained",
    "typical_unconstrained",
    "uses_one_loop",
]
