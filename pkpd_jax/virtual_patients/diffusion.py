"""Physiologically constrained denoising diffusion model (DDPM) of the virtual-patient covariate vector.

**Data.** The covariate vector of [`reference.VARIABLES`][] (natural units) is standardised column-wise
with the training set's mean and SD. ``female`` is a continuous coordinate like the others; samples are
rounded to 0/1 at the end (its constraint is only the range [0, 1]).

**Model.** DDPM (Ho et al. 2020) with the cosine noise schedule (Nichol & Dhariwal 2021), ``n_steps``
diffusion steps and ε-prediction. The denoiser is an MLP (``depth`` hidden layers of ``width`` units, SiLU)
on ``[x_t, sinusoidal embedding of t, condition]``.

**Conditioning** (classifier-free, Ho & Salimans 2022): the condition is ``[w·m_w, m_w, a·m_a, m_a]``, the
standardised body weight ``w`` and age ``a`` of the patient with masks ``m``; in training each mask is
dropped (set to 0) with probability ``cond_drop``, so one network is unconditional, weight-, age- and
weight+age-conditional. To sample a body-weight range (e.g. 70-140 kg) the target weights are drawn from the
training population's weight distribution truncated to the range (inverse CDF of the stored quantiles), so
the result is the reference population *restricted* to that range, not a flat one; the same for an age
band. The network is asked for that weight; patients whose generated weight still falls outside the range
(a few %) are redrawn when ``enforce_range`` (default), and the raw in-range fraction is reported.

**Physics term.** The loss is ``E‖ε̂ - ε‖² + λ · E[P(x̂0)]`` where ``P`` is the summed constraint
violation of [`constraints.penalty`][] of the denoised estimate ``x̂0 = (x̃_s - √(1-ᾱ_s) ε̂)/√ᾱ_s``
(un-standardised to natural units), taken at an input *off* the data: ``x̃_s = √ᾱ_s (x0 + σ u m⊙δ) +
√(1-ᾱ_s) ε'`` with ``δ, ε' ~ N(0, I)``, ``u ~ U(0, 1)``, ``σ = physics_sigma`` (standardised units) and
``m`` the mask of [`PHYSICS_PERTURB`][] (all variables but ``female``), at a step ``s = ⌊n_ᾱ v²⌋``,
``v ~ U(0, 1)``, ``n_ᾱ`` the number of steps with ``ᾱ ≥ min_abar`` (the last sampling steps, the smallest
favoured). Why: the sampler's final draw is the last step's x̂0, and without the term the chain ends
slightly off the constraint set (mostly ``bmi_consistency``, a 1 % equality, and the hard age limits
18/85 y). On noised *real* data x̂0 already satisfies the constraints, so a term there (the first version)
had no gradient and changed nothing (28.3 % vs 28.8 % violations); on perturbed inputs the denoiser
learns to map near-constraint points onto the constraint set. Only small noise levels count
(``min_abar = 0.98``, the last 16 of 200 steps): at larger noise the ideal x̂0 (a posterior mean) is
legitimately off a curved constraint such as BMI = W/H², and penalising it there biased the sampler
(at ``min_abar = 0.5`` the ages were squeezed inward, Wasserstein-1 of age 2-4x that of the plain
model). λ is ramped in after 30 % of the steps (see [`train`][]). ``λ = 0`` is the same model without
the physics term (the term is then only logged); the denoising term, data, seeds and sampler are the same.

Measured (sweep: 40 000 training patients, seed 0, 4000 steps, 20 000 unguided samples, 10 000 held-out;
without physics 14.0 % violate a constraint, mean W1 0.0217, correlation error 0.0137): λ = 5,
σ = 0.3, ``min_abar = 0.98`` gives 0.25 % (W1 +6 %, correlation error +7 %); λ = 10 without
perturbing age 0.98 % (+2 %, +9 %); λ = 30 0.15 % (+17 %, +16 %; ``female`` also perturbed); λ = 100
without perturbing age 0.18 % (+19 %, +20 %); at 2000 steps and ``min_abar = 0.5``, λ = 30-300 reached
0.17-0.9 % but W1 +50-150 %. λ trades
violations against fidelity; the classifier two-sample AUC rises more (0.56 -> 0.62 at λ = 5). The study
(``experiments/virtual_patients.py``, results in ``experiments/results/virtual_patients/``) uses λ = 5:
with 100 000 unguided patients per model it gives 0.33 % violations (``bmi_consistency`` 0.03 %,
``ranges`` 0.29 %) against 13.84 % without the term (``bmi_consistency``
11.94 %, ``ranges`` 2.31 %), 42x fewer, at W1 0.0212 vs 0.0199 (+7 %) and correlation error 0.0154 vs
0.0145 (+6 %); KS +11 %, classifier AUC 0.626 vs 0.570.

**Guidance (optional).** With ``guidance > 0`` each sampling step moves ``x̂0`` by ``guidance_iters``
gradient steps ``-guidance · ∇P(x̂0)`` (standardised units) before the posterior step, and the final
sample ``final_iters`` more (in the spirit of reconstruction guidance, Chung et al. 2023, with the
constraint penalty as the loss). Off unless asked for or the checkpoint's ``meta["default_guidance"]``
sets it (the shipped one does; see the study's results).

The network is float32. Every random step takes a seed; the same seed gives the same samples.
Checkpoints are one file: a JSON header line (config, standardisation, quantiles, training record) then
``equinox.tree_serialise_leaves`` of the denoiser.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax

from ..nn import checkpoint
from . import constraints as C
from .reference import VARIABLES, index


__all__ = ["PHYSICS_PERTURB", "DiffusionConfig", "Denoiser", "VirtualPatientDiffusion", "train", "save",
           "load", "pretrained_path", "load_pretrained", "fidelity"]

_FORMAT = "pkpd_jax.virtual_patients.diffusion/1"
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


# ---------------------------------------------------------------------------------------- checkpoints
def save(diffusion: VirtualPatientDiffusion, path: str | Path) -> Path:
    """Write `diffusion` to one file (JSON header line + equinox-serialised denoiser), atomically."""
    header = {
        "format": _FORMAT, "config": dataclasses.asdict(diffusion.config), "variables": list(VARIABLES),
        "mean": diffusion.mean.tolist(), "std": diffusion.std.tolist(),
        "weight_quantiles": diffusion.weight_quantiles.tolist(),
        "age_quantiles": diffusion.age_quantiles.tolist(), "meta": diffusion.meta,
    }
    return checkpoint.save(path, header, diffusion.model)


def load(path: str | Path) -> VirtualPatientDiffusion:
    """Read a checkpoint written by [`save`][]."""
    what = "virtual-patient diffusion checkpoint"
    header = checkpoint.read_header(path, format=_FORMAT, what=what)
    if tuple(header["variables"]) != VARIABLES:
        raise checkpoint.CheckpointError(f"{path} was trained on variables {header['variables']}, "
                                         f"not {list(VARIABLES)}.")
    config = DiffusionConfig(**header["config"])
    like = eqx.filter_eval_shape(Denoiser, config, key=jr.PRNGKey(0))
    _, model = checkpoint.load(path, like, format=_FORMAT, what=what)
    return VirtualPatientDiffusion(
        model=model, config=config, mean=np.asarray(header["mean"]), std=np.asarray(header["std"]),
        weight_quantiles=np.asarray(header["weight_quantiles"]),
        age_quantiles=np.asarray(header["age_quantiles"]),
        meta=header.get("meta", {}),
    )


def pretrained_path() -> Path:
    """The shipped checkpoint (package data)."""
    return Path(__file__).parent / "pretrained" / "diffusion_physics.eqx"


def load_pretrained() -> VirtualPatientDiffusion:
    """The shipped physics-constrained model (trained by ``experiments/virtual_patients.py``)."""
    return load(pretrained_path())


# ------------------------------------------------------------------------------------------- metrics
def fidelity(real: np.ndarray, generated: np.ndarray, mean: np.ndarray, std: np.ndarray, *,
             seed: int = 0) -> dict:
    """Fidelity of `generated` to held-out `real` patients (both natural units), on standardised variables.

    - ``w1``: per-variable Wasserstein-1 distance (and its mean ``w1_mean``);
    - ``ks``: per-variable two-sample Kolmogorov-Smirnov statistic (and ``ks_mean``);
    - ``corr_error``: mean and max absolute difference of the off-diagonal correlation entries;
    - ``c2st_auc``: classifier two-sample test, ROC AUC of a gradient-boosted classifier (scikit-learn)
      telling real from generated on a held-out half (0.5 = indistinguishable).
    """
    from scipy.stats import ks_2samp, wasserstein_distance
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import train_test_split

    a = (np.asarray(real) - mean) / std
    b = (np.asarray(generated) - mean) / std
    w1 = {v: float(wasserstein_distance(a[:, j], b[:, j])) for j, v in enumerate(VARIABLES)}
    ks = {v: float(ks_2samp(a[:, j], b[:, j]).statistic) for j, v in enumerate(VARIABLES)}
    off = ~np.eye(a.shape[1], dtype=bool)
    dc = np.abs(np.corrcoef(a, rowvar=False) - np.corrcoef(b, rowvar=False))[off]
    xs = np.concatenate([a, b])
    ys = np.concatenate([np.zeros(len(a)), np.ones(len(b))])
    x_tr, x_te, y_tr, y_te = train_test_split(xs, ys, test_size=0.5, random_state=seed, stratify=ys)
    clf = HistGradientBoostingClassifier(max_iter=200, random_state=seed).fit(x_tr, y_tr)
    auc = float(roc_auc_score(y_te, clf.predict_proba(x_te)[:, 1]))
    return {"w1_mean": float(np.mean(list(w1.values()))), "ks_mean": float(np.mean(list(ks.values()))),
            "corr_error_mean": float(dc.mean()), "corr_error_max": float(dc.max()), "c2st_auc": auc,
            "w1": w1, "ks": ks}
