"""Devices: one JAX host device per CPU core, the compilation cache, and the one sharding helper.

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
from typing import Any


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


def device_mesh(axis: str, n: int | None = None):
    """A one-axis `jax.sharding.Mesh` named `axis` over the first `n` devices (default: all)."""
    import jax
    import numpy as np
    from jax.sharding import Mesh

    devices = jax.devices()
    n = len(devices) if n is None else int(n)
    if not 1 <= n <= len(devices):
        raise ValueError(f"device_mesh: n={n} must be between 1 and the {len(devices)} JAX devices.")
    return Mesh(np.asarray(devices[:n]), (axis,))


def shard_leading(tree: Any, n: int | None = None, axis: str = "subjects") -> Any:
    """Place the leading axis of every array in `tree` across `n` devices (the one sharding
    helper: populations over subjects, trials over virtual subjects, corpora over rows).

    The leading axis must be a multiple of `n`; pad first (callers repeat the last row). With
    `n` = 1 the tree is returned unchanged.
    """
    import jax
    from jax.sharding import NamedSharding, PartitionSpec

    mesh = device_mesh(axis, n)
    if mesh.devices.size == 1:
        return tree
    return jax.device_put(tree, NamedSharding(mesh, PartitionSpec(axis)))
