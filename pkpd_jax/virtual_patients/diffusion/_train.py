"""Training of the diffusion model with the physics term."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax

from .. import constraints as C
from ..schema import VARIABLES
from ._network import (
    _A,
    _CLIP,
    _N_QUANTILES,
    _W,
    DTYPE,
    PHYSICS_PERTURB,
    Denoiser,
    DiffusionConfig,
    _cond,
    schedule,
)
from ._sampler import VirtualPatientDiffusion


# --------------------------------------------------------------------------------------------- train
def _loss(model, x0, key, sch, mean, std, lam, cond_drop, n_phys, sigma_off, perturb, physics_grad):
    n = x0.shape[0]
    k_t, k_e, k_w, k_a, k_tp, k_ep, k_s, k_d = jr.split(key, 8)
    t = jr.randint(k_t, (n,), 0, sch["abar"].shape[0])
    eps = jr.normal(k_e, x0.shape, DTYPE)
    ab = sch["abar"][t][:, None]
    xt = jnp.sqrt(ab) * x0 + jnp.sqrt(1 - ab) * eps
    cond = _cond(x0, jr.bernoulli(k_w, 1 - cond_drop, (n,)).astype(DTYPE),
                 jr.bernoulli(k_a, 1 - cond_drop, (n,)).astype(DTYPE))
    net = jax.vmap(model)
    mse = jnp.mean((net(xt, t, cond) - eps) ** 2)
    # physics term: x̂0 denoised from a perturbed input (module docstring), small t favoured
    tp = jnp.floor(n_phys * jr.uniform(k_tp, (n,)) ** 2).astype(t.dtype)
    abp = sch["abar"][tp][:, None]
    x0p = x0 + sigma_off * jr.uniform(k_s, (n, 1), DTYPE) * perturb * jr.normal(k_d, x0.shape, DTYPE)
    xtp = jnp.sqrt(abp) * x0p + jnp.sqrt(1 - abp) * jr.normal(k_ep, x0.shape, DTYPE)
    x0_hat = jnp.clip((xtp - jnp.sqrt(1 - abp) * net(xtp, tp, cond)) / jnp.sqrt(abp), -_CLIP, _CLIP)
    phys = jnp.mean(C.penalty(x0_hat * std + mean))
    if not physics_grad:   # λ = 0: the term is only logged; no gradient through it
        phys = jax.lax.stop_gradient(phys)
    return mse + lam * phys, (mse, phys)


@dataclass
class TrainResult:
    """What [`train`][] returns: the trained model (EMA weights) and the loss record."""

    diffusion: VirtualPatientDiffusion
    history: list[dict]
    seconds: float


def train(x: np.ndarray, config: DiffusionConfig | None = None, *, steps: int = 4000, batch_size: int = 512,
          lr: float = 2e-3, lam: float = 0.0, cond_drop: float = 0.6, ema: float = 0.999, seed: int = 0,
          physics_start: float = 0.3, physics_ramp: float = 0.2, min_abar: float = 0.98,
          physics_sigma: float = 0.3, physics_perturb: tuple[str, ...] | None = None, log_every: int = 100,
          log: Callable[[str], None] | None = None) -> TrainResult:
    """Train a denoiser on reference patients `x` (natural units, shape ``(N, D)``).

    `lam` is the physics weight λ (0 = no physics term). The physics term is switched on after a fraction
    `physics_start` of the steps and ramped linearly to `lam` over the next `physics_ramp` (an untrained
    denoiser's x̂0 is noise, and a hinge penalty on it overwhelms the denoising loss); it is evaluated on
    x̂0 from inputs whose variables `physics_perturb` (None = [`PHYSICS_PERTURB`][]) are perturbed by up
    to `physics_sigma` (standardised units) off the data, at noise levels with ``ᾱ_t >= min_abar`` (where
    x̂0 is near a single patient), small t favoured (module docstring).
    Adam with linear warm-up (first 5 % of steps) and cosine decay to 1 % of `lr`; the returned model holds
    the exponential moving average (`ema`) of the weights (with the usual warm-up
    ``min(ema, (1+i)/(10+i))``). `seed` fixes the
    initialisation, the batches, times and noises: the same seed and steps give the same model. `history`
    has the mean denoising loss and physics term every `log_every` steps (the physics term is computed, not
    optimised, when ``lam == 0``).
    """
    config = config or DiffusionConfig()
    x = np.asarray(x, np.float64)
    if x.ndim != 2 or x.shape[1] != config.n_vars:
        raise ValueError(f"`x` must have shape (N, {config.n_vars}); got {x.shape}.")
    mean, std = x.mean(0), x.std(0)
    std = np.where(std > 0, std, 1.0)
    if not physics_sigma >= 0:
        raise ValueError(f"`physics_sigma` must be >= 0; got {physics_sigma!r}.")
    if physics_perturb is None:
        physics_perturb = PHYSICS_PERTURB
    unknown = sorted(set(physics_perturb) - set(VARIABLES))
    if unknown:
        raise ValueError(f"`physics_perturb` names unknown variables {unknown}; known: {list(VARIABLES)}.")
    perturb = np.array([v in physics_perturb for v in VARIABLES], float)
    if not 0.0 < min_abar < 1.0:
        raise ValueError(f"`min_abar` must lie in (0, 1); got {min_abar!r}.")
    with jax.enable_x64(False):   # float32 throughout, also when the caller runs in float64 (2-3x faster)
        return _train(x, mean, std, config, steps, batch_size, lr, lam, cond_drop, ema, seed, physics_start,
                      physics_ramp, min_abar, physics_sigma, perturb, log_every, log)


def _train(x, mean, std, config, steps, batch_size, lr, lam, cond_drop, ema, seed, physics_start,
           physics_ramp, min_abar, physics_sigma, perturb, log_every, log):
    z = jnp.asarray((x - mean) / std, DTYPE)
    key = jr.PRNGKey(seed)
    key, k_init = jr.split(key)
    model = Denoiser(config, key=k_init)
    sched = optax.warmup_cosine_decay_schedule(0.0, lr, max(1, steps // 20), max(steps, 2), lr * 0.01)
    optim = optax.adam(sched)
    opt_state = optim.init(eqx.filter(model, eqx.is_inexact_array))
    ema_model = model
    sch = schedule(config.n_steps)
    mean_j, std_j = jnp.asarray(mean, DTYPE), jnp.asarray(std, DTYPE)
    n_phys = max(1, int((np.asarray(sch["abar"]) >= min_abar).sum()))   # steps with ᾱ_t >= min_abar

    @eqx.filter_jit
    def step(model, ema_model, opt_state, key, i):
        k_b, k_l = jr.split(key)
        idx = jr.randint(k_b, (batch_size,), 0, z.shape[0])
        ramp = jnp.clip((i / steps - physics_start) / max(physics_ramp, 1e-9), 0.0, 1.0)
        (loss, (mse, phys)), grads = eqx.filter_value_and_grad(_loss, has_aux=True)(
            model, z[idx], k_l, sch, mean_j, std_j, lam * ramp, cond_drop, n_phys, physics_sigma,
            jnp.asarray(perturb, DTYPE), lam != 0)
        updates, opt_state = optim.update(grads, opt_state, eqx.filter(model, eqx.is_inexact_array))
        model = eqx.apply_updates(model, updates)
        decay = jnp.minimum(ema, (1.0 + i) / (10.0 + i))   # EMA warm-up: early averages forget the init
        ema_model = jax.tree.map(lambda e, p: decay * e + (1 - decay) * p if eqx.is_inexact_array(p) else p,
                                 ema_model, model)
        return model, ema_model, opt_state, mse, phys

    history, acc, t0 = [], [], time.perf_counter()
    for i in range(steps):
        key, k = jr.split(key)
        model, ema_model, opt_state, mse, phys = step(model, ema_model, opt_state, k, jnp.asarray(i, DTYPE))
        acc.append((mse, phys))
        if (i + 1) % log_every == 0 or i + 1 == steps:
            a = np.asarray(jnp.stack([jnp.stack(p) for p in acc]))
            history.append({"step": i + 1, "mse": float(a[:, 0].mean()), "physics": float(a[:, 1].mean())})
            acc = []
            if log is not None:
                log(f"step {i + 1}/{steps}: denoising {history[-1]['mse']:.4f}, "
                    f"physics {history[-1]['physics']:.5f}")
    seconds = time.perf_counter() - t0
    q = np.linspace(0, 1, _N_QUANTILES)
    diffusion = VirtualPatientDiffusion(
        model=ema_model, config=config, mean=mean, std=std,
        weight_quantiles=np.quantile(x[:, _W], q), age_quantiles=np.quantile(x[:, _A], q),
        meta={"train": {"steps": steps, "batch_size": batch_size, "lr": lr, "lam": lam,
                        "cond_drop": cond_drop, "ema": ema, "seed": seed,
                        "physics_start": physics_start, "physics_ramp": physics_ramp, "min_abar": min_abar,
                        "physics_sigma": physics_sigma,
                        "physics_perturb": [v for v, p in zip(VARIABLES, perturb) if p],
                        "n_train": int(len(x)),
                        "seconds": seconds, "final": history[-1] if history else None}},
    )
    return TrainResult(diffusion=diffusion, history=history, seconds=seconds)
