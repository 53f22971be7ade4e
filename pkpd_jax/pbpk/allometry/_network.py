"""The offset network, its training settings and the trained ensemble (see "Neural
correction" in `pkpd_jax.pbpk.allometry`)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np

from ._data import (
    AllometryError,
)


# ------------------------------------------------------------------------------------ network
class OffsetNet(eqx.Module):
    """Per (drug, species) log offsets ``(d_CL, d_V)`` from the common power law: an MLP plus a
    linear skip (so that linear rules such as the fu correction are easy to learn), bounded by
    ``bound``; the last layer and the skip start at zero."""

    mlp: eqx.nn.MLP
    linear: eqx.nn.Linear
    bound: float = eqx.field(static=True)

    def __init__(self, in_size: int, width: int, depth: int, bound: float, *, key):
        k1, k2 = jr.split(key)
        mlp = eqx.nn.MLP(in_size, 2, width, depth, activation=jax.nn.silu, dtype=jnp.float32, key=k1)
        self.mlp = eqx.tree_at(lambda m: m.layers[-1], mlp, _zeroed(mlp.layers[-1]))
        self.linear = _zeroed(eqx.nn.Linear(in_size, 2, dtype=jnp.float32, key=k2))
        self.bound = float(bound)

    def __call__(self, x):
        return self.bound * jnp.tanh((self.mlp(x) + self.linear(x)) / self.bound)


def _zeroed(layer: eqx.nn.Linear) -> eqx.nn.Linear:
    return eqx.tree_at(
        lambda lay: (lay.weight, lay.bias), layer, (jnp.zeros_like(layer.weight), jnp.zeros_like(layer.bias))
    )


@dataclass(frozen=True)
class TrainConfig:
    """Training settings. `protocol` is ``"loso"`` or ``"human"`` (module docstring)."""

    protocol: str = "loso"
    physiology: bool = False
    width: int = 64
    depth: int = 2
    bound: float = math.log(10.0)
    steps: int = 3000
    batch: int = 512
    lr: float = 2e-3
    weight_decay: float = 1e-4
    val_fraction: float = 0.15
    eval_every: int = 100
    ensemble: int = 3
    seed: int = 0

    def __post_init__(self):
        if self.protocol not in ("loso", "human"):
            raise AllometryError(f"`protocol` must be 'loso' or 'human'; got {self.protocol!r}.")
        for f in ("width", "depth", "steps", "batch", "eval_every", "ensemble"):
            if int(getattr(self, f)) < 1:
                raise AllometryError(f"`{f}` must be >= 1; got {getattr(self, f)}.")
        if not 0.0 <= self.val_fraction < 1.0:
            raise AllometryError(f"`val_fraction` must be in [0, 1); got {self.val_fraction}.")
        if not (self.bound > 0 and self.lr > 0):
            raise AllometryError(f"`bound` and `lr` must be > 0; got {self.bound}, {self.lr}.")


@dataclass(frozen=True)
class NeuralAllometry:
    """A trained ensemble with its feature standardisation."""

    nets: tuple
    x_mean: np.ndarray
    x_std: np.ndarray
    config: TrainConfig
    meta: dict = field(default_factory=dict)
