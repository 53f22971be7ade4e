"""The errors and the warning of the population model (data and covariate specification)."""

from __future__ import annotations

from ..errors import PkpdError


class CovariateSpecError(PkpdError, ValueError):
    """A covariate specification that does not fit the model or the data."""


class PopulationDataError(PkpdError, ValueError):
    """A data set that cannot be fitted with the requested model (checked before sampling)."""


class PopulationDataWarning(UserWarning):
    """Data that can be fitted but not as given, or that cannot inform some parameter."""
