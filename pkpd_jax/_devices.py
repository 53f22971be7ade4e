"""One JAX host device per CPU core, for the command line.

XLA runs a CPU computation such as a batched ODE loop on one core. Splitting the host into one
device per core (``--xla_force_host_platform_device_count``) lets the work that is already laid
out over devices use them all: the chains of a population fit (``jax.shard_map`` over chains) and
the corpus shards. Must happen before JAX starts its CPU backend, so the command line calls
:func:`use_host_devices` first thing; library users set ``XLA_FLAGS`` themselves (or call it
before their first JAX computation).
"""

from __future__ import annotations

import os
import sys


_FLAG = "xla_force_host_platform_device_count"


def cpu_count() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _backends_started() -> bool:
    if "jax" not in sys.modules:
        return False
    try:
        from jax._src import xla_bridge

        return bool(xla_bridge.backends_are_initialized())
    except (ImportError, AttributeError):  # an unknown JAX: assume the worst
        return True


def use_host_devices(n: int | None = None) -> bool:
    """Split the CPU into `n` host devices (default: one per core). Returns whether the flag was
    set; a no-op when `n` <= 1, when the user's ``XLA_FLAGS`` already name a device count, or when
    JAX's backends have already started (the count is fixed by then)."""
    n = cpu_count() if n is None else int(n)
    flags = os.environ.get("XLA_FLAGS", "")
    if n <= 1 or _FLAG in flags or _backends_started():
        return False
    os.environ["XLA_FLAGS"] = f"{flags} --{_FLAG}={n}".strip()
    return True


def use_compilation_cache(path: str | None = None) -> str | None:
    """Keep JAX's compiled programs on disk (``jax_compilation_cache_dir``), so that a second fit or
    run of the same study and model skips compilation (about a minute for a PK/PD population
    model). Default location: ``$PKPD_JAX_CACHE`` or ``~/.cache/pkpd_jax/xla``; set
    ``PKPD_JAX_CACHE=off`` to disable. Returns the directory, or ``None`` when disabled."""
    path = path or os.environ.get("PKPD_JAX_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"),
        "pkpd_jax", "xla",
    )
    if path.lower() in ("off", "0", "none", ""):
        return None
    try:
        os.makedirs(path, exist_ok=True)
    except OSError:  # a read-only home: run without the cache
        return None
    import jax

    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    return path
