"""Chains over devices: the hashable static log-density wrapper, the chain map (``vmap``, split
over devices with ``jax.shard_map`` on the ``"chains"`` mesh of `pkpd_jax.devices.device_mesh`),
how many devices the chains use, and where a warm-up carry is placed between calls.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import jax
import numpy as np

from ..devices import device_mesh


__all__ = ["StaticFn", "chain_map", "chain_shards", "place_carry", "carry_shardings", "initial_logdensity"]


class StaticFn:
    """Hashable wrapper so that ``logdensity_fn`` can be a static jit argument (cache hits for
    the same function object, even if the function itself is unhashable), together with the
    number of devices the chains are split over (``shards``; part of the cache key)."""

    __slots__ = ("fn", "shards")

    def __init__(self, fn: Callable, shards: int = 1):
        self.fn = fn
        self.shards = int(shards)

    def __hash__(self) -> int:
        return hash((id(self.fn), self.shards))

    def __eq__(self, other) -> bool:
        return isinstance(other, StaticFn) and other.fn is self.fn and other.shards == self.shards

    def __call__(self, x):
        return self.fn(x)


def chain_map(fn: StaticFn, f: Callable, in_axes) -> Callable:
    """``jax.vmap(f, in_axes)`` over chains, split over ``fn.shards`` devices with
    ``jax.shard_map`` when there are several: each device runs its chains' vmapped transitions
    (its own batched ODE loops) independently, so the two cores of a CPU host (with
    ``--xla_force_host_platform_device_count=2``) each take half of the chains. Arguments with
    ``in_axes`` ``None`` are replicated; every output carries the chain axis first. The numbers
    are those of the plain ``vmap`` (each chain's arithmetic does not depend on its neighbours)."""
    vf = jax.vmap(f, in_axes=in_axes)
    if fn.shards <= 1:
        return vf
    from jax.sharding import PartitionSpec as P

    mesh = device_mesh("chains", fn.shards)
    specs = tuple(P() if a is None else P("chains") for a in in_axes)
    # check_vma=False: the ODE solver's while loops mix per-chain and replicated carries.
    return jax.shard_map(vf, mesh=mesh, in_specs=specs, out_specs=P("chains"), check_vma=False)


def chain_shards(num_chains: int, requested: int | None = None) -> int:
    """How many devices :func:`sample` splits ``num_chains`` chains over: ``requested`` if given
    (it must divide the chains and not exceed the devices), else the largest divisor of
    ``num_chains`` that is at most the number of local devices (1 on a default CPU set-up; 2 on
    a 2-core host split with ``--xla_force_host_platform_device_count=2``, as the command line
    does)."""
    n_dev = jax.local_device_count()
    if requested is not None:
        if requested < 1 or num_chains % requested or requested > n_dev:
            raise ValueError(
                f"sample: chain_devices={requested} must divide the {num_chains} chains and be at "
                f"most the {n_dev} available device(s)"
            )
        return int(requested)
    return max(k for k in range(1, min(n_dev, num_chains) + 1) if num_chains % k == 0)


def place_carry(carry, shards: int):
    """The warm-up carry in the placement every chunk call receives it in: with the chains on
    several devices, the chain states split over them and everything else replicated (the
    layout the chunk program returns); on one device, host arrays.

    The carry comes back from the initial, chunk, window-end and low-rank programs with
    different placements; jit keys its compiled programs on the arguments' shardings, so
    without this the chunk program, the largest of a fit, was compiled again after the first
    chunk and after the first low-rank estimate (2-3 compilations of ~15 s each on the example
    study, chains split over 2 CPU devices; each recompilation mostly overlapped the previous
    chunk's execution, so this saves CPU time more than wall time on a 2-core host)."""
    carry = jax.tree.map(np.asarray, carry)  # (also drops weak types: one signature)
    if shards <= 1:
        return carry
    chains, rest = carry_shardings(shards)
    return carry._replace(
        states=jax.device_put(carry.states, chains),
        **{f: jax.device_put(getattr(carry, f), rest) for f in carry._fields if f != "states"},
    )


def carry_shardings(shards: int):
    """``(chain-split, replicated)`` shardings over the chains' mesh of :func:`chain_map`."""
    from jax.sharding import NamedSharding, PartitionSpec as P

    mesh = device_mesh("chains", shards)
    return NamedSharding(mesh, P("chains")), NamedSharding(mesh, P())


@partial(jax.jit, static_argnames=("logdensity_fn",))
def initial_logdensity(logdensity_fn, positions):
    """The log density at each chain's starting point (compiled)."""
    return jax.vmap(logdensity_fn)(positions)
