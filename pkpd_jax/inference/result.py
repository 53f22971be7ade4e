"""The result of `sample`: [`MCMCResult`][] and its assembly from the driver's draw blocks."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .metrics import metric_diagonal
from .options import QHMCOptions


__all__ = ["MCMCResult", "assemble"]


class MCMCResult(NamedTuple):
    """Draws and per-draw statistics of :func:`sample` (numpy arrays).

    draws
        ``(chains, draws, dim)`` kept positions.
    logdensity
        ``(chains, draws)`` log density at the kept positions.
    divergent
        ``(chains, draws)`` bool: a divergent transition occurred in the ``thin`` iterations
        leading to the draw.
    acceptance
        ``(chains, draws)`` mean acceptance probability over those iterations (NUTS: blackjax's
        average acceptance probability over the trajectory).
    energy
        ``(chains, draws)`` Hamiltonian at the kept draw (for E-BFMI).
    step_size
        ``(chains,)`` adapted step sizes.
    num_integration_steps
        ``(chains, draws)`` leapfrog steps (gradient evaluations) spent per kept draw, i.e.
        summed over the ``thin`` iterations.
    inverse_mass_matrix
        ``(chains, dim)`` adapted diagonal inverse mass (QHMC: the centre ``1/m_c``).
    trajectory_length
        ``(chains,)`` QHMC integration time ``T`` (NaN for NUTS).
    sampler, num_warmup, thin, seed
        The settings of the run.
    wall_s
        Wall time of the whole call (warm-up, compilation and sampling).
    warmup_s
        Wall time of the warm-up (including its compilation).
    interrupted
        True when a ``KeyboardInterrupt`` stopped the run; the arrays hold the draws made so far.
    warmup_steps, warmup_step_size, warmup_acceptance
        QHMC: ``(num_warmup,)`` leapfrog steps (per chain), step size and mean acceptance
        probability of each warm-up iteration (``None`` for NUTS), to see where warm-up time goes.
    """

    draws: np.ndarray
    logdensity: np.ndarray
    divergent: np.ndarray
    acceptance: np.ndarray
    energy: np.ndarray
    step_size: np.ndarray
    num_integration_steps: np.ndarray
    inverse_mass_matrix: np.ndarray
    trajectory_length: np.ndarray
    sampler: str
    num_warmup: int
    thin: int
    seed: int
    wall_s: float
    warmup_s: float
    interrupted: bool
    warmup_steps: np.ndarray | None = None
    warmup_step_size: np.ndarray | None = None
    warmup_acceptance: np.ndarray | None = None

    @property
    def num_chains(self) -> int:
        return int(self.draws.shape[0])

    @property
    def num_draws(self) -> int:
        return int(self.draws.shape[1])


def assemble(
    outs,
    params,
    opts,
    sampler,
    num_chains,
    dim,
    dtype,
    num_warmup,
    thin,
    seed,
    wall_s,
    warmup_s,
    interrupted,
    warmup_stats=None,
) -> MCMCResult:
    dtype = np.dtype(dtype)
    if outs:
        cat = [np.concatenate([o[i] for o in outs], axis=0) for i in range(6)]
        pos, ld, div, acc, energy, steps = (np.swapaxes(c, 0, 1) for c in cat)
    else:
        pos = np.zeros((num_chains, 0, dim), dtype)
        ld, acc, energy = (np.zeros((num_chains, 0), dtype) for _ in range(3))
        div = np.zeros((num_chains, 0), bool)
        steps = np.zeros((num_chains, 0), np.int32)
    if params is None:
        step_size = np.full(num_chains, np.nan, dtype)
        inverse_mass = np.full((num_chains, dim), np.nan, dtype)
        traj = np.full(num_chains, np.nan, dtype)
    else:
        step_size = np.asarray(params.step_size)
        inverse_mass = np.asarray(metric_diagonal(params.inverse_mass))
        traj = (
            np.asarray(params.trajectory_length)
            if isinstance(opts, QHMCOptions)
            else np.full(num_chains, np.nan, dtype)
        )
    return MCMCResult(
        draws=pos,
        logdensity=ld,
        divergent=div.astype(bool),
        acceptance=acc,
        energy=energy,
        step_size=step_size,
        num_integration_steps=steps,
        inverse_mass_matrix=inverse_mass,
        trajectory_length=traj,
        sampler=sampler,
        num_warmup=int(num_warmup),
        thin=int(thin),
        seed=int(seed),
        wall_s=float(wall_s),
        warmup_s=float(warmup_s),
        interrupted=bool(interrupted),
        warmup_steps=None if warmup_stats is None else warmup_stats[0],
        warmup_step_size=None if warmup_stats is None else warmup_stats[1],
        warmup_acceptance=None if warmup_stats is None else warmup_stats[2],
    )
