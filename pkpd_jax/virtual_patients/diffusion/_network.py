"""The denoiser network, its configuration and the DDPM noise schedule."""

from __future__ import annotations

import math
from dataclasses import dataclass

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np

from ..schema import VARIABLES, index


DTYPE = jnp.float32
_W, _A = index("weight"), index("age")
_CLIP = 10.0
_N_QUANTILES = 201
#: Variables the physics term perturbs (module docstring): all but ``female`` (a 0/1 coordinate, rounded at
#: the end, whose range [0, 1] a perturbation would violate for half the patients).
PHYSICS_PERTURB = tuple(v for v in VARIABLES if v != "female")


@dataclass(frozen=True)
class DiffusionConfig:
    """Network and schedule: ``n_vars`` covariates, ``depth`` × ``width`` MLP, ``n_steps`` diffusion
    steps, ``emb_dim`` time-embedding size."""

    n_vars: int = len(VARIABLES)
    width: int = 256
    depth: int = 3
    n_steps: int = 200
    emb_dim: int = 32

    def __post_init__(self):
        for name in ("n_vars", "width", "depth", "n_steps", "emb_dim"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"`DiffusionConfig({name}=...)` must be a positive int; got {value!r}.")
        if self.emb_dim % 2:
            raise ValueError(f"`emb_dim` must be even; got {self.emb_dim}.")


N_COND = 4


class Denoiser(eqx.Module):
    """ε-prediction MLP for one example: ``(x_t (D,), t int, cond (4,)) -> ε̂ (D,)``."""

    layers: list
    out: eqx.nn.Linear
    emb_dim: int = eqx.field(static=True)
    n_steps: int = eqx.field(static=True)

    def __init__(self, config: DiffusionConfig, *, key):
        keys = jr.split(key, config.depth + 1)
        d_in = config.n_vars + config.emb_dim + N_COND
        dims = [d_in] + [config.width] * config.depth
        self.layers = [eqx.nn.Linear(dims[i], dims[i + 1], key=keys[i], dtype=DTYPE)
                       for i in range(config.depth)]
        out = eqx.nn.Linear(config.width, config.n_vars, key=keys[-1], dtype=DTYPE)
        self.out = eqx.tree_at(lambda m: m.weight, out, out.weight * 0.1)
        self.emb_dim = config.emb_dim
        self.n_steps = config.n_steps

    def __call__(self, x, t, cond):
        half = self.emb_dim // 2
        freqs = jnp.exp(-math.log(1000.0) * jnp.arange(half, dtype=DTYPE) / half)
        arg = (jnp.asarray(t, DTYPE) / self.n_steps * 1000.0) * freqs
        h = jnp.concatenate([x.astype(DTYPE), jnp.sin(arg), jnp.cos(arg), cond.astype(DTYPE)])
        for layer in self.layers:
            h = jax.nn.silu(layer(h))
        return self.out(h)


def schedule(n_steps: int) -> dict[str, jax.Array]:
    """Cosine schedule (Nichol & Dhariwal 2021): betas, alphas, ᾱ_t and ᾱ_{t-1} for t = 0..n_steps-1."""
    s = 0.008
    u = np.arange(n_steps + 1) / n_steps
    f = np.cos((u + s) / (1 + s) * np.pi / 2) ** 2
    abar = f / f[0]
    betas = np.clip(1.0 - abar[1:] / abar[:-1], 1e-5, 0.999)
    alphas = 1.0 - betas
    abar = np.cumprod(alphas)
    abar_prev = np.concatenate([[1.0], abar[:-1]])
    return {k: jnp.asarray(v, DTYPE) for k, v in
            dict(betas=betas, alphas=alphas, abar=abar, abar_prev=abar_prev).items()}


def _cond(x0_std, mask_w, mask_a):
    return jnp.stack([x0_std[..., _W] * mask_w, mask_w, x0_std[..., _A] * mask_a, mask_a], axis=-1)
