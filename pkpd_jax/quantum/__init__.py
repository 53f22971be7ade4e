"""Quantum kernel regression: covariates -> PK/PD parameters (PennyLane QNodes, JAX interface).

- [`FeatureMap`][pkpd_jax.quantum.feature_maps.FeatureMap]: angle ("RBF-inspired", bandwidth) and
  IQP feature maps on ``default.qubit``, jit-compiled and vmapped over subjects; covariates
  standardised, binary covariates on their own qubits ([`Encoding`][]).
- [`fidelity_gram`][]: the fidelity kernel from N statevectors by block matrix products (O(N)
  circuit simulations instead of O(N²)); [`circuit_by_circuit_kernel`][] is the inversion-test
  reference; [`make_kernel`][] also builds the projected quantum kernel and the classical RBF and
  linear kernels.
- [`KernelRegressor`][]: multi-output kernel ridge (JAX) or SVR (scikit-learn, precomputed
  kernel) with cross-validated hyper-parameters; [`CovariateEquation`][] is the population
  model's covariate equation as a baseline.
- [`cohort_from_truth`][], [`cohort_from_fit`][]: synthetic cohorts from the example study's truth
  or a fit's posterior; [`evaluate_predictions`][] reports R²/RMSE against individual parameters,
  against the noise-free covariate function and the oracle ceiling;
  [`population_prediction_rmse`][] simulates the real study's subjects from predicted parameters.

The ``pkpd-jax qkernel`` command ([`pkpd_jax.cli.quantum`][]) runs all of it. Only
numpy is imported here; JAX, PennyLane and scikit-learn load on first use.
"""

from .cohort import (
    Cohort as Cohort,
    CovariateModel as CovariateModel,
    cohort_from_fit as cohort_from_fit,
    cohort_from_truth as cohort_from_truth,
)
from .evaluate import (
    evaluate_predictions as evaluate_predictions,
    population_prediction_rmse as population_prediction_rmse,
    r2_rmse as r2_rmse,
)
from .feature_maps import Encoding as Encoding, FeatureMap as FeatureMap
from .kernel import (
    KERNELS as KERNELS,
    circuit_by_circuit_kernel as circuit_by_circuit_kernel,
    density_features as density_features,
    fidelity_gram as fidelity_gram,
    make_kernel as make_kernel,
    product_of_cosines as product_of_cosines,
)
from .regression import (
    CovariateEquation as CovariateEquation,
    KernelRegressor as KernelRegressor,
    make_regressor as make_regressor,
)


__all__ = [
    "Cohort",
    "CovariateModel",
    "CovariateEquation",
    "Encoding",
    "FeatureMap",
    "KERNELS",
    "KernelRegressor",
    "circuit_by_circuit_kernel",
    "cohort_from_fit",
    "cohort_from_truth",
    "density_features",
    "evaluate_predictions",
    "fidelity_gram",
    "make_kernel",
    "make_regressor",
    "population_prediction_rmse",
    "product_of_cosines",
    "r2_rmse",
]
