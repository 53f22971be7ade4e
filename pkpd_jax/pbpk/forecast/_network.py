"""The forecasting network, [`PBPKForecaster`][pkpd_jax.pbpk.forecast.PBPKForecaster], and its
size and training settings (see the "Network" paragraph of `pkpd_jax.pbpk.forecast`)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array, ArrayLike, Bool, Float, PRNGKeyArray

from ...amortized.encoder import EncoderBlock, TimeEncoding


DTYPE = jnp.float32


# ------------------------------------------------------------------------------------------ network
@dataclass(frozen=True)
class ForecastConfig:
    """Network size and training settings of a [`PBPKForecaster`][].

    `d_model`, `n_heads`, `n_layers`, `d_ff`: width, attention heads, Transformer blocks,
    feed-forward width (the defaults are the study's network, sized so that a forecast costs
    well under 1% of a PBPK ODE solve; see `experiments/pbpk_forecast_study.py`); `min_period`,
    `max_period` (h) of the time encoding. `epochs`, `batch_size`, `lr` (peak), `weight_decay`,
    `warmup_frac`, `clip_norm`: optimisation.
    """

    d_model: int = 32
    n_heads: int = 2
    n_layers: int = 1
    d_ff: int = 64
    min_period: float = 0.05
    max_period: float = 500.0
    epochs: int = 4
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 1e-4
    warmup_frac: float = 0.03
    clip_norm: float = 1.0

    def __post_init__(self):
        for name in ("d_model", "n_heads", "n_layers", "d_ff", "epochs", "batch_size"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"`ForecastConfig({name}=...)` must be a positive int; got {v!r}.")
        if self.d_model % self.n_heads:
            raise ValueError(f"`ForecastConfig(d_model=...)` must be divisible by n_heads; got "
                             f"{self.d_model} and {self.n_heads}.")
        if not (self.lr > 0 and self.weight_decay >= 0 and 0 < self.min_period < self.max_period):
            raise ValueError("Need lr > 0, weight_decay >= 0 and 0 < min_period < max_period.")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ForecastConfig:
        return cls(**{f.name: d[f.name] for f in dataclasses.fields(cls) if f.name in d})


class PBPKForecaster(eqx.Module):
    """The forecasting network for one subject (see the module docstring).

    **Arguments** (`__call__`): `desc` ``[D]`` standardised descriptors; `times` ``[T]`` grid times
    (h); `values` ``[T]`` standardised dose-normalised log concentrations (read where
    `observed`); `observed` ``[T]`` bool.

    **Returns:** ``[T]`` standardised dose-normalised log concentrations at every grid time.
    """

    ctx_in: eqx.nn.Linear
    ctx_out: eqx.nn.Linear
    token_embed: eqx.nn.Linear
    time_encoding: TimeEncoding
    blocks: tuple[EncoderBlock, ...]
    final_norm: eqx.nn.LayerNorm
    head_hidden: eqx.nn.Linear
    head_out: eqx.nn.Linear
    n_desc: int = eqx.field(static=True)

    def __init__(self, n_desc: int, config: ForecastConfig, *, key: PRNGKeyArray):
        c, d = config, config.d_model
        k = jr.split(key, 6)
        self.ctx_in = eqx.nn.Linear(n_desc, d, dtype=DTYPE, key=k[0])
        self.ctx_out = eqx.nn.Linear(d, d, dtype=DTYPE, key=k[1])
        self.token_embed = eqx.nn.Linear(3, d, dtype=DTYPE, key=k[2])
        self.time_encoding = TimeEncoding(d, float(c.min_period), float(c.max_period))
        self.blocks = tuple(EncoderBlock(d, c.n_heads, c.d_ff, 0.0, key=kb)
                            for kb in jr.split(k[3], c.n_layers))
        self.final_norm = eqx.nn.LayerNorm(d, dtype=DTYPE)
        self.head_hidden = eqx.nn.Linear(d, d, dtype=DTYPE, key=k[4])
        self.head_out = eqx.nn.Linear(d, 1, dtype=DTYPE, key=k[5])
        self.n_desc = n_desc

    def __call__(
        self,
        desc: Float[ArrayLike, " D"],
        times: Float[ArrayLike, " T"],
        values: Float[ArrayLike, " T"],
        observed: Bool[ArrayLike, " T"],
    ) -> Float[Array, " T"]:
        desc, times = jnp.asarray(desc, DTYPE), jnp.asarray(times, DTYPE)
        values, observed = jnp.asarray(values, DTYPE), jnp.asarray(observed, bool)
        if desc.shape != (self.n_desc,):
            raise ValueError(f"`desc` must have shape ({self.n_desc},); got {desc.shape}.")
        if times.ndim != 1 or values.shape != times.shape or observed.shape != times.shape:
            raise ValueError(f"`times`, `values`, `observed` must share one shape [T]; got "
                             f"{times.shape}, {values.shape}, {observed.shape}.")
        ctx = self.ctx_out(jax.nn.gelu(self.ctx_in(desc)))
        obs = observed.astype(DTYPE)
        y = jnp.where(observed, values, 0.0)  # unobserved values (even NaN) never enter
        feats = jnp.stack([y, obs, jnp.log(jnp.maximum(times, 1e-3)) / 3.0], axis=-1)
        tokens = jax.vmap(self.token_embed)(feats) + self.time_encoding(times)
        x = jnp.concatenate([ctx[None, :], tokens], axis=0)
        mask = jnp.ones(x.shape[0], bool)
        for block in self.blocks:
            x = block(x, mask, inference=True)
        x = jax.vmap(self.final_norm)(x[1:])
        h = jax.nn.gelu(jax.vmap(self.head_hidden)(x))
        return jax.vmap(self.head_out)(h)[:, 0]
