"""Options of the samplers and the checks of `sample`'s arguments (one concept: what a run may be
asked for, and the errors that name a bad value).

- [`QHMCOptions`][], [`NUTSOptions`][]: the per-sampler settings (`sample(..., **options)`);
- `validate_sample_args`: `sample`'s arguments checked and the options built;
- `check_inverse_mass_init`: QHMC's starting inverse mass checked (and a low-rank one padded).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import blackjax.mcmc.integrators as integrators
import jax.numpy as jnp
import numpy as np
from blackjax.mcmc.metrics import LowRankInverseMassMatrix


__all__ = ["SAMPLERS", "OPTIONS", "QHMCOptions", "NUTSOptions", "check_option", "validate_sample_args",
           "check_inverse_mass_init"]


SAMPLERS = ("qhmc", "nuts")


@dataclasses.dataclass(frozen=True)
class QHMCOptions:
    """Options of ``sample(..., sampler="qhmc", **options)``.

    log_mass_sd
        Spread ``s`` of the log-normal mass, ``log m = log m_c + s ξ`` (0 gives plain HMC).
    target_acceptance_rate
        Dual-averaging target for the mean acceptance probability during warm-up.
    step_jitter
        Half-width ``j`` of the path-length jitter: ``L = ceil(u T/eps)``, ``u ~ U[1-j, 1+j]``.
    trajectory_length
        Fixed integration time ``T`` (units of the adapted metric) instead of the quarter-period
        rule; ``None`` adapts it.
    num_integration_steps
        Fixed number of leapfrog steps (no jitter, overrides ``trajectory_length``); ``None``
        derives it from ``T`` and the step size.
    max_num_steps
        Upper bound on leapfrog steps per iteration.
    max_warmup_steps
        Upper bound on leapfrog steps per *warm-up* iteration (default 100). Early in warm-up,
        before the mass centre is adapted, dual averaging can drive the step size to tiny
        values for a few iterations; uncapped, ``T / eps`` then costs ``max_num_steps``
        gradients per iteration for no benefit (the warm-up needs acceptance statistics and
        positions near the typical set, not long trajectories).
    initial_step_size
        Starting point of dual averaging (and the step size if ``num_warmup == 0``).
    num_probes
        Number of power-iteration probe vectors for the path-length rule.
    divergence_threshold
        Energy error flagged as a divergence.
    integrator
        A blackjax integrator (``blackjax.mcmc.integrators.velocity_verlet`` by default).
    xi_clip
        Truncate ``ξ`` to ``[-xi_clip, xi_clip]`` (default 2; ``None``: untruncated normal).
        Any position-independent mass distribution keeps the kernel exact; the truncation stops
        the rare very light masses that make the leapfrog unstable at the adapted step size (they
        show up as divergences even on a Gaussian).
    metric
        Mass centre: ``"diag"`` (Welford variances) or ``"low_rank"`` (a diagonal scale plus a
        rank-``max_rank`` correction, estimated at the end of every slow window from the
        window's draws *and* log-density gradients pooled over chains by the Fisher-divergence
        estimator of Seyboldt et al. (nutpie; ``blackjax.adaptation.metric_estimators.
        fisher_score_low_rank``, regularisation ``low_rank_gamma``, eigenvalues within
        ``[1/low_rank_cutoff, low_rank_cutoff]`` left uncorrected; windows with fewer than 2·dim
        draws pooled over chains get only its diagonal scale). The low-rank part absorbs the
        few strongly correlated directions of a hierarchical posterior (a typical value and its
        subjects' individual values), which a diagonal mass cannot, so the quarter-period path
        length and the leapfrog count per iteration drop. The mass draw then scales the
        diagonal part (see :func:`pkpd_jax.inference.qhmc.draw_inverse_mass`).
    max_rank, low_rank_gamma, low_rank_cutoff
        Settings of the low-rank estimator (``metric="low_rank"`` only).
    mass_jitter
        Where a low-rank centre's random factor acts: ``"whitened"`` (default; in the centre's
        whitened coordinates, which keeps its decorrelation) or ``"coordinates"`` (on the
        diagonal scale ``σ``, per parameter; see
        :func:`pkpd_jax.inference.qhmc.draw_inverse_mass` for the measured cost). The diagonal
        metric is jittered per coordinate either way.
    """

    log_mass_sd: float = 0.5
    target_acceptance_rate: float = 0.8
    step_jitter: float = 0.5
    trajectory_length: float | None = None
    num_integration_steps: int | None = None
    max_num_steps: int = 1000
    max_warmup_steps: int = 100
    initial_step_size: float = 1.0
    num_probes: int = 4
    divergence_threshold: float = 1000.0
    integrator: Callable = integrators.velocity_verlet
    xi_clip: float | None = 2.0
    metric: str = "diag"
    max_rank: int = 10
    low_rank_gamma: float = 1e-5
    low_rank_cutoff: float = 2.0
    mass_jitter: str = "whitened"

    def __post_init__(self):
        check_option(self.log_mass_sd >= 0, "log_mass_sd", ">= 0", self.log_mass_sd)
        check_option(self.metric in ("diag", "low_rank"), "metric", "'diag' or 'low_rank'", self.metric)
        check_option(self.mass_jitter in ("whitened", "coordinates"), "mass_jitter",
               "'whitened' or 'coordinates'", self.mass_jitter)
        check_option(self.max_rank >= 1, "max_rank", "an integer >= 1", self.max_rank)
        check_option(self.low_rank_gamma > 0, "low_rank_gamma", "> 0", self.low_rank_gamma)
        check_option(self.low_rank_cutoff >= 1, "low_rank_cutoff", ">= 1", self.low_rank_cutoff)
        check_option(
            0 < self.target_acceptance_rate < 1,
            "target_acceptance_rate",
            "in (0, 1)",
            self.target_acceptance_rate,
        )
        check_option(0 <= self.step_jitter < 1, "step_jitter", "in [0, 1)", self.step_jitter)
        check_option(
            self.trajectory_length is None or self.trajectory_length > 0,
            "trajectory_length",
            "None or > 0",
            self.trajectory_length,
        )
        check_option(
            self.num_integration_steps is None or self.num_integration_steps >= 1,
            "num_integration_steps",
            "None or an integer >= 1",
            self.num_integration_steps,
        )
        check_option(self.max_num_steps >= 1, "max_num_steps", "an integer >= 1", self.max_num_steps)
        check_option(self.max_warmup_steps >= 1, "max_warmup_steps", "an integer >= 1", self.max_warmup_steps)
        check_option(self.initial_step_size > 0, "initial_step_size", "> 0", self.initial_step_size)
        check_option(self.num_probes >= 1, "num_probes", "an integer >= 1", self.num_probes)
        check_option(self.divergence_threshold > 0, "divergence_threshold", "> 0", self.divergence_threshold)
        check_option(self.xi_clip is None or self.xi_clip > 0, "xi_clip", "None or > 0", self.xi_clip)


@dataclasses.dataclass(frozen=True)
class NUTSOptions:
    """Options of ``sample(..., sampler="nuts", **options)``.

    target_acceptance_rate
        Dual-averaging target during ``blackjax.window_adaptation``.
    max_num_doublings
        Maximum tree depth of NUTS.
    initial_step_size
        Starting point of dual averaging (and the step size if ``num_warmup == 0``).
    divergence_threshold
        Energy error flagged as a divergence (sampling phase).
    integrator
        A blackjax integrator.
    """

    target_acceptance_rate: float = 0.8
    max_num_doublings: int = 10
    initial_step_size: float = 1.0
    divergence_threshold: float = 1000.0
    integrator: Callable = integrators.velocity_verlet

    def __post_init__(self):
        check_option(
            0 < self.target_acceptance_rate < 1,
            "target_acceptance_rate",
            "in (0, 1)",
            self.target_acceptance_rate,
        )
        check_option(self.max_num_doublings >= 1, "max_num_doublings", "an integer >= 1",
                     self.max_num_doublings)
        check_option(self.initial_step_size > 0, "initial_step_size", "> 0", self.initial_step_size)
        check_option(self.divergence_threshold > 0, "divergence_threshold", "> 0", self.divergence_threshold)


def check_option(ok: bool, name: str, expected: str, got: Any) -> None:
    if not ok:
        raise ValueError(f"sampler option {name} must be {expected}, got {got!r}")


OPTIONS = {"qhmc": QHMCOptions, "nuts": NUTSOptions}


def validate_sample_args(initial_positions, sampler, num_warmup, num_samples, thin, chunk, sampler_options):
    if sampler not in SAMPLERS:
        raise ValueError(f"sample: sampler must be one of {SAMPLERS}, got {sampler!r}")
    for name, value, low in (
        ("num_warmup", num_warmup, 0),
        ("num_samples", num_samples, 1),
        ("thin", thin, 1),
        ("chunk", chunk, 1),
    ):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < low:
            raise ValueError(f"sample: {name} must be an integer >= {low}, got {value!r}")
    cls = OPTIONS[sampler]
    allowed = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(sampler_options) - set(allowed))
    if unknown:
        raise TypeError(
            f"sample(sampler={sampler!r}): unknown option(s) {unknown}; expected some of {allowed}"
        )
    opts = cls(**sampler_options)
    positions = jnp.asarray(initial_positions)
    if positions.ndim != 2 or positions.shape[0] < 1 or positions.shape[1] < 1:
        raise ValueError(
            "sample: initial_positions must be an array of shape (chains, dim) with chains >= 1 "
            f"and dim >= 1 (flat vectors), got shape {tuple(positions.shape)}"
        )
    if not jnp.issubdtype(positions.dtype, jnp.floating):
        positions = positions.astype(jnp.result_type(float))
    if not bool(jnp.all(jnp.isfinite(positions))):
        bad = np.flatnonzero(~np.all(np.isfinite(np.asarray(positions)), axis=1)).tolist()
        raise ValueError(f"sample: initial_positions must be finite, chains {bad} are not")
    return opts, positions


def check_inverse_mass_init(inverse_mass_init, sampler, opts, dim: int, dtype):
    """`sample`'s ``inverse_mass_init``: a ``(dim,)`` positive diagonal, or (low-rank QHMC) a
    ``LowRankInverseMassMatrix`` whose rank is padded (or cut, keeping the eigenvalues furthest
    from 1) to ``min(max_rank, dim)``."""
    if sampler != "qhmc":
        raise ValueError("sample: inverse_mass_init is a QHMC option (NUTS starts from ones)")
    if isinstance(inverse_mass_init, LowRankInverseMassMatrix):
        if opts.metric != "low_rank":
            raise ValueError(
                "sample: a low-rank inverse_mass_init needs metric='low_rank' (got "
                f"{opts.metric!r}); pass its diagonal for a diagonal metric")
        sigma, u, lam = (np.asarray(a, dtype) for a in inverse_mass_init)
        r = min(opts.max_rank, dim)
        if sigma.shape != (dim,) or u.ndim != 2 or u.shape[0] != dim or lam.shape != (u.shape[1],):
            raise ValueError(
                f"sample: a low-rank inverse_mass_init needs sigma ({dim},), U ({dim}, k) and lam "
                f"(k,); got {sigma.shape}, {u.shape}, {lam.shape}")
        if not (np.all(np.isfinite(sigma)) and np.all(sigma > 0) and np.all(np.isfinite(u))
                and np.all(np.isfinite(lam)) and np.all(lam > 0)):
            raise ValueError("sample: a low-rank inverse_mass_init needs finite U and finite "
                             "positive sigma and lam")
        if u.shape[1] > r:  # keep the r directions furthest from 1 (max_rank)
            top = np.argsort(-np.abs(np.log(lam)), kind="stable")[:r]
            u, lam = u[:, top], lam[top]
        k = u.shape[1]
        u = np.concatenate([u, np.zeros((dim, r - k), dtype)], axis=1)
        lam = np.concatenate([lam, np.ones(r - k, dtype)])
        return LowRankInverseMassMatrix(sigma, u, lam)
    inverse_mass_init = np.asarray(inverse_mass_init, dtype=dtype)
    if inverse_mass_init.shape != (dim,) or not np.all(np.isfinite(inverse_mass_init)) or np.any(
        inverse_mass_init <= 0
    ):
        raise ValueError(
            f"sample: inverse_mass_init must be {dim} finite positive numbers, got shape "
            f"{inverse_mass_init.shape}"
        )
    return inverse_mass_init
