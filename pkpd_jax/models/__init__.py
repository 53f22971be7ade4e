"""The model library: 10 PK and 10 PD classes, couplings and the registry."""

from .base import AbstractPD as AbstractPD, AbstractPK as AbstractPK, Param as Param
from .coupling import ParameterError as ParameterError, PKPDModel as PKPDModel
from .pd import PD_MODELS as PD_MODELS
from .pk import PK_MODELS as PK_MODELS
from .registry import (
    UnknownModelError as UnknownModelError,
    get_model as get_model,
    get_pd as get_pd,
    get_pk as get_pk,
    list_models as list_models,
    model_catalogue as model_catalogue,
)
