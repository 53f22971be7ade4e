"""float64 switches. Simulation and inference need float64; entry points enable it explicitly."""

from __future__ import annotations

import contextlib

import jax


def enable_x64() -> None:
    """Turn on float64 for the whole process (CLI commands and scripts call this first)."""
    jax.config.update("jax_enable_x64", True)


def x64():
    """Context manager: float64 inside the block (for library functions called from float32 code)."""
    if hasattr(jax, "enable_x64"):
        return jax.enable_x64(True)
    from jax.experimental import enable_x64 as _ctx  # older JAX

    return _ctx() if _ctx is not None else contextlib.nullcontext()
