"""Data: NONMEM-style tables (read, validate, write) and padded JAX data sets."""

from .dataset import Dataset
from .nonmem import (
    CANONICAL_COLUMNS,
    REQUIRED_COLUMNS,
    DataSummary,
    DataValidationError,
    read_nonmem,
    summarize,
    validate,
    write_nonmem,
)


__all__ = [
    "CANONICAL_COLUMNS",
    "REQUIRED_COLUMNS",
    "DataSummary",
    "DataValidationError",
    "Dataset",
    "read_nonmem",
    "summarize",
    "validate",
    "write_nonmem",
]
