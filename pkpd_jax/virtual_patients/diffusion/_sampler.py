"""The trained diffusion model (`VirtualPatientDiffusion`) and its guided, conditioned sampler."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np

from .. import constraints as C
from ..schema import index
from ._network import (
    _A,
    _CLIP,
    _W,
    DTYPE,
    N_COND,
    Denoiser,
    DiffusionConfig,
    schedule,
)


# --------------------------------------------------------------------------------------------- model
@dataclass
class VirtualPatientDiffusion:
    """A trained model with its standardisation and the conditioning quantile tables."""

    model: Denoiser
    config: DiffusionConfig
    mean: np.ndarray
    std: np.ndarray
    weight_quantiles: np.ndarray
    age_quantiles: np.ndarray
    meta: dict = dataclasses.field(default_factory=dict)

    def to_natural(self, z):
        return z * self.std + self.mean

    def _target(self, quantiles, lo, hi, n, key):
        probs = np.linspace(0.0, 1.0, len(quantiles))
        p_lo, p_hi = np.interp([lo, hi], quantiles, probs)
        if p_hi <= p_lo:
            raise ValueError(f"range [{lo}, {hi}] lies outside the training population "
                             f"([{quantiles[0]:.4g}, {quantiles[-1]:.4g}]).")
        u = np.asarray(jr.uniform(key, (n,), minval=p_lo, maxval=p_hi))
        return np.interp(u, probs, quantiles)

    def sample(self, n: int, seed: int = 0, *, bw_range: tuple[float, float] | None = None,
               age_range: tuple[float, float] | None = None, guidance: float | None = None,
               guidance_iters: int | None = None, final_iters: int | None = None, cfg_scale: float = 0.0,
               enforce_range: bool = True, return_info: bool = False):
        """`n` virtual patients, shape ``(n, D)``, natural units (float64 numpy), ``female`` rounded.

        `bw_range`, `age_range`: condition on a body-weight range (kg) / age band (y) (module docstring).
        `guidance`: constraint-guidance step size (0 = off; None = the checkpoint's ``default_guidance``,
        0 if it has none), `guidance_iters` gradient steps on x̂0 per sampling step (None = the
        checkpoint's ``default_guidance_iters``, else 4), and `final_iters` more on the final sample
        (None = the checkpoint's ``default_final_iters``, else 0). `cfg_scale`:
        classifier-free guidance strength (0 = the conditional model alone). With `return_info`, also
        returns a dict with the raw fraction of patients inside the requested ranges and the number of
        sampling rounds.
        """
        if n < 0:
            raise ValueError(f"`n` must be >= 0; got {n}.")
        if guidance is None:
            guidance = float(self.meta.get("default_guidance", 0.0))
        if guidance_iters is None:
            guidance_iters = int(self.meta.get("default_guidance_iters", 4))
        if final_iters is None:
            final_iters = int(self.meta.get("default_final_iters", 0))
        key = jr.PRNGKey(seed)
        out, raw_in, raw_total, rounds = [], 0, 0, 0
        need = n
        while need > 0:
            rounds += 1
            key, k_w, k_a, k_s = jr.split(key, 4)
            m = need if not (enforce_range and (bw_range or age_range)) else int(need * 1.1) + 8
            m = -(-m // 256) * 256   # batch sizes in steps of 256: fewer compilations of the sampler
            cond = np.zeros((m, N_COND))
            if bw_range is not None:
                w = self._target(self.weight_quantiles, *bw_range, m, k_w)
                cond[:, 0], cond[:, 1] = (w - self.mean[_W]) / self.std[_W], 1.0
            if age_range is not None:
                a = self._target(self.age_quantiles, *age_range, m, k_a)
                cond[:, 2], cond[:, 3] = (a - self.mean[_A]) / self.std[_A], 1.0
            with jax.enable_x64(False):   # the network and the guidance are float32
                z = _sample_jit(self.model, jnp.asarray(cond, DTYPE), k_s, self.config.n_steps,
                                jnp.asarray(self.mean, DTYPE), jnp.asarray(self.std, DTYPE),
                                float(guidance), int(guidance_iters), int(final_iters), float(cfg_scale))
            x = self.to_natural(np.asarray(z, np.float64))
            x[:, index("female")] = (x[:, index("female")] > 0.5).astype(float)
            ok = np.ones(m, bool)
            if bw_range is not None:
                ok &= (x[:, _W] >= bw_range[0]) & (x[:, _W] <= bw_range[1])
            if age_range is not None:
                ok &= (x[:, _A] >= age_range[0]) & (x[:, _A] <= age_range[1])
            raw_in += int(ok.sum())
            raw_total += m
            if enforce_range:
                x = x[ok]
                if rounds > 50:
                    raise RuntimeError("could not generate enough patients inside the requested range.")
            out.append(x[:need])
            need -= len(out[-1])
        x = np.concatenate(out) if out else np.zeros((0, self.config.n_vars))
        if return_info:
            return x, {"raw_in_range": raw_in / max(raw_total, 1), "rounds": rounds}
        return x


@eqx.filter_jit
def _sample_jit(model, cond, key, n_steps, mean, std, guidance, guidance_iters, final_iters, cfg_scale):
    sch = schedule(n_steps)
    n, d = cond.shape[0], mean.shape[0]
    key, k0 = jr.split(key)
    x = jr.normal(k0, (n, d), DTYPE)
    uncond = jnp.zeros_like(cond)
    net = jax.vmap(model, in_axes=(0, None, 0))

    def grad_penalty(x0):
        return jax.grad(lambda z: C.penalty(z * std + mean).sum())(x0)

    def step(carry, t):
        x, key = carry
        key, kz = jr.split(key)
        eps = net(x, t, cond)
        if cfg_scale != 0.0:
            eps = (1 + cfg_scale) * eps - cfg_scale * net(x, t, uncond)
        ab, abp, beta, alpha = sch["abar"][t], sch["abar_prev"][t], sch["betas"][t], sch["alphas"][t]
        x0 = jnp.clip((x - jnp.sqrt(1 - ab) * eps) / jnp.sqrt(ab), -_CLIP, _CLIP)
        if guidance > 0.0:
            x0 = jax.lax.fori_loop(0, guidance_iters, lambda _, z: z - guidance * grad_penalty(z), x0)
        mu = (jnp.sqrt(abp) * beta / (1 - ab)) * x0 + (jnp.sqrt(alpha) * (1 - abp) / (1 - ab)) * x
        var = beta * (1 - abp) / (1 - ab)
        z = jr.normal(kz, x.shape, DTYPE)
        x = mu + jnp.where(t > 0, jnp.sqrt(var), 0.0) * z
        return (x, key), None

    (x, _), _ = jax.lax.scan(step, (x, key), jnp.arange(n_steps - 1, -1, -1))
    if guidance > 0.0 and final_iters > 0:   # the last step's x̂0 is the sample: finish its descent
        x = jax.lax.fori_loop(0, final_iters, lambda _, z: z - guidance * grad_penalty(z), x)
    return x
