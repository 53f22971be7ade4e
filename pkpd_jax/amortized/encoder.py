"""Transformer encoder for amortized model selection: one trajectory in, class logits and parameters out.

The network reads one subject's observations, a padded sequence of ``T`` timesteps, each with an
observation time (h since the first dose) and ``F`` normalised features, and returns

- class logits over the ``C`` model classes of a family, and
- normalised log-parameters for **every** class, shape ``(C, P)``: row ``c`` is the parameter
  vector the network would report if the class were ``c``. The loss reads the row of the true class
  (masked to the parameters that class has); inference reads the row of the predicted class.

Architecture (pre-norm, as in "On Layer Normalization in the Transformer Architecture", Xiong et al.
2020): ``x_t = W·features_t + PE(time_t)`` with a continuous-time sinusoidal encoding ``PE``, then
``n_layers`` blocks of ``x + Dropout(MHA(LN(x)))`` and ``x + Dropout(FF(LN(x)))``, a final layer
norm, a masked mean over the real timesteps, and two linear heads on a shared GELU layer.

Padded timesteps (``mask == False``) never reach a real one: their inputs are zeroed, attention
keys are masked, and pooling averages real timesteps only, so the outputs do not depend on what
the padding holds or on how much padding there is.

Every module handles one example (equinox convention); [`apply_batch`][] vmaps over a batch and
splits the dropout key per example. The network is float32 whatever ``jax_enable_x64`` says.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jaxtyping import Array, ArrayLike, Bool, Float, PRNGKeyArray


__all__ = ["ModelConfig", "TimeEncoding", "EncoderBlock", "TransformerEncoder", "apply_batch"]

DTYPE = jnp.float32


@dataclass(frozen=True)
class ModelConfig:
    """Shape and size of a [`TransformerEncoder`][]; stored (as JSON) in every checkpoint.

    - `n_features`, `n_classes`, `n_params`: the corpus dimensions ``F``, ``C``, ``P``.
    - `d_model`, `n_heads`, `n_layers`, `d_ff`: width, attention heads, blocks, feed-forward width.
    - `dropout`: dropout probability (attention weights, both residual branches, the FF hidden).
    - `min_period`, `max_period`: shortest and longest period (h) of the time encoding; periods are
      spaced geometrically in between, so both a 15-min absorption phase and a weekly
      regimen are resolved.
    """

    n_features: int
    n_classes: int
    n_params: int
    d_model: int = 64
    n_heads: int = 4
    n_layers: int = 4
    d_ff: int = 256
    dropout: float = 0.1
    min_period: float = 0.25
    max_period: float = 2000.0

    def __post_init__(self):
        for name in ("n_features", "n_classes", "n_params", "d_model", "n_heads", "n_layers", "d_ff"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"`ModelConfig({name}=...)` must be a positive int; got {value!r}.")
        if self.d_model % self.n_heads:
            raise ValueError(
                f"`ModelConfig(d_model=...)` must be divisible by `n_heads`; got d_model={self.d_model}, "
                f"n_heads={self.n_heads}."
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"`ModelConfig(dropout=...)` must be in [0, 1); got {self.dropout}.")
        if not 0.0 < self.min_period < self.max_period:
            raise ValueError(
                f"Need 0 < min_period < max_period; got {self.min_period}, {self.max_period}."
            )

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        return cls(**{f.name: d[f.name] for f in dataclasses.fields(cls) if f.name in d})


class TimeEncoding(eqx.Module):
    """Continuous-time sinusoidal encoding of observation times (no trainable weights).

    ``PE(t) = [sin(2πt/p_1), …, sin(2πt/p_k), cos(2πt/p_1), …, cos(2πt/p_k)]`` with ``k = d/2``
    periods ``p_i`` spaced geometrically from `min_period` to `max_period` (h): the transformer
    positional encoding of Vaswani et al. (2017) evaluated at real times instead of integer positions,
    so irregular sampling is represented as it is. An odd `d_model` gets one trailing zero.
    """

    d_model: int = eqx.field(static=True)
    min_period: float = eqx.field(static=True)
    max_period: float = eqx.field(static=True)

    def __call__(self, t: Float[Array, " seq"]) -> Float[Array, "seq d_model"]:
        k = self.d_model // 2
        # Constants, not fields: the optimiser must never see (or decay) them.
        periods = np.geomspace(self.min_period, self.max_period, max(k, 1))[:k]
        omega = jnp.asarray(2.0 * math.pi / periods, DTYPE)
        angle = t.astype(DTYPE)[:, None] * omega[None, :]
        out = jnp.concatenate([jnp.sin(angle), jnp.cos(angle)], axis=-1)
        if self.d_model % 2:
            out = jnp.pad(out, ((0, 0), (0, 1)))
        return out


class EncoderBlock(eqx.Module):
    """Pre-norm transformer block: ``x + Drop(MHA(LN(x)))`` then ``x + Drop(W2·Drop(GELU(W1·LN(x))))``.

    `mask` (``[seq]``, True = real timestep) removes padded timesteps as attention keys; padded
    rows are still computed (cheaply) but never read by a real row.
    """

    norm_attn: eqx.nn.LayerNorm
    attn: eqx.nn.MultiheadAttention
    norm_ff: eqx.nn.LayerNorm
    ff_in: eqx.nn.Linear
    ff_out: eqx.nn.Linear
    dropout: eqx.nn.Dropout

    def __init__(self, d_model: int, n_heads: int, d_ff: int, dropout: float, *, key: PRNGKeyArray):
        k_attn, k_in, k_out = jr.split(key, 3)
        self.norm_attn = eqx.nn.LayerNorm(d_model, dtype=DTYPE)
        self.attn = eqx.nn.MultiheadAttention(
            n_heads, d_model, use_query_bias=True, use_key_bias=True, use_value_bias=True,
            use_output_bias=True, dropout_p=dropout, dtype=DTYPE, key=k_attn,
        )
        self.norm_ff = eqx.nn.LayerNorm(d_model, dtype=DTYPE)
        self.ff_in = eqx.nn.Linear(d_model, d_ff, dtype=DTYPE, key=k_in)
        self.ff_out = eqx.nn.Linear(d_ff, d_model, dtype=DTYPE, key=k_out)
        self.dropout = eqx.nn.Dropout(dropout)

    def __call__(
        self,
        x: Float[Array, "seq d_model"],
        mask: Bool[Array, " seq"],
        *,
        key: PRNGKeyArray | None = None,
        inference: bool | None = None,
    ) -> Float[Array, "seq d_model"]:
        keys = (None,) * 4 if key is None else tuple(jr.split(key, 4))
        seq = x.shape[0]
        attn_mask = jnp.broadcast_to(mask[None, :], (seq, seq))
        h = jax.vmap(self.norm_attn)(x)
        h = self.attn(h, h, h, attn_mask, key=keys[0], inference=inference)
        x = x + self.dropout(h, key=keys[1], inference=inference)
        h = jax.vmap(self.norm_ff)(x)
        h = jax.nn.gelu(jax.vmap(self.ff_in)(h))
        h = self.dropout(h, key=keys[2], inference=inference)
        h = jax.vmap(self.ff_out)(h)
        return x + self.dropout(h, key=keys[3], inference=inference)


class TransformerEncoder(eqx.Module):
    """The amortized model-selection network (one example; see the module docstring).

    **Arguments** (`__call__`):

    - `times`: ``[T]`` observation times in h (padded entries are ignored).
    - `values`: ``[T, F]`` normalised per-timestep features.
    - `mask`: ``[T]`` bool, True where a real observation exists.
    - `key`: PRNG key for dropout; required unless `inference=True` or `dropout == 0`.
    - `inference`: True turns dropout off (evaluation, prediction); None (default) defers to the
      layers' own flag, which `eqx.nn.inference_mode(model)` sets.

    **Returns:** ``(logits [C], params [C, P])``: class logits and, per class, the predicted
    normalised log-parameters.

    !!! example

        ```python
        cfg = ModelConfig(n_features=2, n_classes=3, n_params=4, d_model=32, n_heads=2,
                          n_layers=2, d_ff=64)
        net = TransformerEncoder(cfg, key=jax.random.PRNGKey(0))
        logits, params = net(times, values, mask, inference=True)
        ```
    """

    embed: eqx.nn.Linear
    time_encoding: TimeEncoding
    blocks: tuple[EncoderBlock, ...]
    final_norm: eqx.nn.LayerNorm
    head_hidden: eqx.nn.Linear
    class_head: eqx.nn.Linear
    param_head: eqx.nn.Linear
    n_classes: int = eqx.field(static=True)
    n_params: int = eqx.field(static=True)
    n_features: int = eqx.field(static=True)

    def __init__(self, config: ModelConfig, *, key: PRNGKeyArray):
        c = config
        k_embed, k_blocks, k_hidden, k_cls, k_par = jr.split(key, 5)
        self.embed = eqx.nn.Linear(c.n_features, c.d_model, dtype=DTYPE, key=k_embed)
        self.time_encoding = TimeEncoding(c.d_model, float(c.min_period), float(c.max_period))
        self.blocks = tuple(
            EncoderBlock(c.d_model, c.n_heads, c.d_ff, c.dropout, key=k)
            for k in jr.split(k_blocks, c.n_layers)
        )
        self.final_norm = eqx.nn.LayerNorm(c.d_model, dtype=DTYPE)
        self.head_hidden = eqx.nn.Linear(c.d_model, c.d_model, dtype=DTYPE, key=k_hidden)
        self.class_head = eqx.nn.Linear(c.d_model, c.n_classes, dtype=DTYPE, key=k_cls)
        self.param_head = eqx.nn.Linear(c.d_model, c.n_classes * c.n_params, dtype=DTYPE, key=k_par)
        self.n_classes, self.n_params, self.n_features = c.n_classes, c.n_params, c.n_features

    def __call__(
        self,
        times: Float[ArrayLike, " seq"],
        values: Float[ArrayLike, "seq features"],
        mask: Bool[ArrayLike, " seq"],
        *,
        key: PRNGKeyArray | None = None,
        inference: bool | None = None,
    ) -> tuple[Float[Array, " classes"], Float[Array, "classes params"]]:
        times, values, mask = jnp.asarray(times), jnp.asarray(values), jnp.asarray(mask, bool)
        if values.ndim != 2 or values.shape[-1] != self.n_features or times.shape != values.shape[:1]:
            raise ValueError(
                f"Expected times [T] and values [T, {self.n_features}]; got times {times.shape}, "
                f"values {values.shape}."
            )
        if mask.shape != times.shape:
            raise ValueError(f"mask must have shape {times.shape} (as times); got {mask.shape}.")
        # Zero the padding first: whatever it holds (even NaN) then cannot leak through 0·x products.
        values = jnp.where(mask[:, None], values.astype(DTYPE), 0.0)
        times = jnp.where(mask, times.astype(DTYPE), 0.0)
        x = jax.vmap(self.embed)(values) + self.time_encoding(times)
        keys = (None,) * len(self.blocks) if key is None else tuple(jr.split(key, len(self.blocks)))
        for block, k in zip(self.blocks, keys):
            x = block(x, mask, key=k, inference=inference)
        x = jax.vmap(self.final_norm)(x)
        w = mask.astype(DTYPE)
        pooled = jnp.sum(x * w[:, None], axis=0) / jnp.maximum(jnp.sum(w), 1.0)
        h = jax.nn.gelu(self.head_hidden(pooled))
        logits = self.class_head(h)
        params = self.param_head(h).reshape(self.n_classes, self.n_params)
        return logits, params


def apply_batch(
    model: TransformerEncoder,
    times: Float[ArrayLike, "batch seq"],
    values: Float[ArrayLike, "batch seq features"],
    mask: Bool[ArrayLike, "batch seq"],
    *,
    key: PRNGKeyArray | None = None,
    inference: bool | None = None,
) -> tuple[Float[Array, "batch classes"], Float[Array, "batch classes params"]]:
    """`model` vmapped over a batch; `key` is split into one dropout key per example."""
    times = jnp.asarray(times)
    if key is None:
        return jax.vmap(lambda t, v, m: model(t, v, m, inference=inference))(times, values, mask)
    keys = jr.split(key, times.shape[0])
    return jax.vmap(lambda t, v, m, k: model(t, v, m, key=k, inference=inference))(
        times, values, mask, keys
    )
