"""`simulate_population`: many subjects, vmapped, sharded over devices, chunked, failures raised."""

from __future__ import annotations

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import ArrayLike, Float

from ..devices import shard_leading
from ..dosing import Regimen
from ..models.coupling import PKPDModel
from ..progress import progress_bar
from ._config import SUCCESS, SimulationError, Solution, SolverConfig
from ._simulate import simulate


@eqx.filter_jit
def _simulate_batch(model, theta, regimen, ts, y0, t0, config, sensitivities):
    def one(th, reg, t, y):
        return simulate(model, th, reg, t, y0=y, t0=t0, config=config, sensitivities=sensitivities)

    return jax.vmap(one, in_axes=(0, 0, 0, None if y0 is None else 0))(theta, regimen, ts, y0)


def _broadcast_regimen(regimen: Regimen, n: int) -> Regimen:
    if regimen.time.ndim == 1:
        return jax.tree.map(lambda a: jnp.broadcast_to(a, (n,) + a.shape), regimen)
    if regimen.time.shape[0] != n:
        raise ValueError(f"`regimen` has {regimen.time.shape[0]} subjects but `theta` has {n} rows.")
    return regimen


def simulate_population(
    model: PKPDModel,
    theta: Float[ArrayLike, "subjects params"],
    regimen: Regimen,
    ts: Float[ArrayLike, "*subjects times"],
    *,
    y0: Float[ArrayLike, "subjects states"] | None = None,
    t0: float | None = None,
    config: SolverConfig = SolverConfig(),
    shard: bool = True,
    chunk_size: int | None = None,
    throw: bool = True,
    progress: bool | Callable[[int, int], None] = False,
    sensitivities: bool = False,
) -> Solution:
    """Simulate a population: `vmap` over subjects, sharded over every JAX device.

    **Arguments:**

    - `theta`: `(subjects, params)` in natural units.
    - `regimen`: one regimen for everybody (`(doses,)`) or one per subject (`(subjects, doses)`).
    - `ts`: shared observation times `(times,)` or per subject `(subjects, times)`.
    - `y0`, `t0`, `config`, `sensitivities`: as for [`simulate`][] (per subject).
    - `shard`: split the subject axis across `jax.devices()` with `jax.sharding` (no-op on one
      device). Results are identical to the unsharded run.
    - `chunk_size`: simulate this many subjects per compiled call (bounds memory; every chunk
      reuses one compilation). Default: all at once.
    - `throw`: raise [`SimulationError`][] naming the failed subjects; with `False` inspect
      `solution.status` instead.
    - `progress`: show a progress bar over chunks (or a callback `(done, total)`).

    **Returns:** a [`Solution`][] with a leading subject axis.
    """
    theta = jnp.asarray(theta)
    if theta.ndim != 2 or theta.shape[1] != len(model.param_names):
        raise ValueError(
            f"`theta` must have shape (subjects, {len(model.param_names)}) for {model.name} "
            f"(params {list(model.param_names)}); got {theta.shape}."
        )
    n = theta.shape[0]
    regimen = _broadcast_regimen(regimen, n)
    ts = jnp.asarray(ts, theta.dtype)
    ts = jnp.broadcast_to(ts, (n, ts.shape[-1])) if ts.ndim == 1 else ts
    if ts.shape[0] != n:
        raise ValueError(f"`ts` has {ts.shape[0]} rows but `theta` has {n} subjects.")
    if y0 is not None:
        y0 = jnp.broadcast_to(jnp.asarray(y0, theta.dtype), (n, model.n_states))

    n_dev = jax.device_count() if shard else 1
    size = n if chunk_size is None else max(1, min(chunk_size, n))
    size = -(-size // n_dev) * n_dev  # whole number of subjects per device
    inputs = (theta, regimen, ts, y0)
    pieces = []
    with progress_bar(f"simulating {n} subjects", n, enabled=progress) as update:
        for lo in range(0, n, size):
            hi = min(lo + size, n)
            chunk = jax.tree.map(lambda a: a[lo:hi], inputs)
            pad = size - (hi - lo)
            if pad:  # repeat the last subject so every chunk has the compiled shape
                chunk = jax.tree.map(lambda a: jnp.concatenate([a, jnp.repeat(a[-1:], pad, axis=0)]), chunk)
            if n_dev > 1:
                chunk = shard_leading(chunk, n_dev)
            sol = _simulate_batch(model, *chunk, t0, config, sensitivities)
            pieces.append(jax.tree.map(lambda a: a[: hi - lo], sol))
            update(hi)
    sol = pieces[0] if len(pieces) == 1 else jax.tree.map(lambda *a: jnp.concatenate(a), *pieces)
    if throw:
        status = np.asarray(sol.status)
        bad = np.flatnonzero(status != SUCCESS)
        if bad.size:
            raise SimulationError(bad, status[bad])
    return sol
