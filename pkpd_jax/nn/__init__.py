"""Shared neural-network infrastructure: the one checkpoint format ([`checkpoint`](checkpoint.py))."""

from . import checkpoint as checkpoint
from .checkpoint import (
    CheckpointError as CheckpointError,
    CheckpointNotFoundError as CheckpointNotFoundError,
)


__all__ = ["checkpoint", "CheckpointError", "CheckpointNotFoundError"]
