"""Bayesian inference: QHMC / NUTS sampling driver and MCMC diagnostics.

- `pkpd_jax.inference.samplers`: warm-up + multi-chain [`sample`][] -> [`MCMCResult`][] (the
  driver); its pieces: `options` ([`QHMCOptions`][], [`NUTSOptions`][]), `metrics` (mass-matrix
  algebra, [`laplace_inverse_mass`][]), `chains` (chains over devices), `step_size`,
  `adaptation` (QHMC's warm-up), `nuts`, `result`.
- `pkpd_jax.inference.qhmc`: the quantum-inspired HMC kernel (blackjax layout).
- `pkpd_jax.inference.diagnostics`: rank-normalised R-hat, bulk/tail ESS, MCSE, E-BFMI,
  [`summarize`][], [`check`][], [`warning_table`][].
- `pkpd_jax.inference.fit` (`fit`) and `pkpd_jax.inference.fitdir` (the fit directory:
  `save_fit`, `load_fit`) build on the population model and are imported from there (importing
  this package does not load them).
"""

from . import qhmc as qhmc
from .diagnostics import (
    check as check,
    divergences as divergences,
    ebfmi as ebfmi,
    ess as ess,
    ess_bulk as ess_bulk,
    ess_tail as ess_tail,
    mcse_mean as mcse_mean,
    mean_acceptance as mean_acceptance,
    rhat as rhat,
    split_rhat as split_rhat,
    summarize as summarize,
    warning_table as warning_table,
)
from .metrics import laplace_inverse_mass as laplace_inverse_mass
from .options import (
    SAMPLERS as SAMPLERS,
    NUTSOptions as NUTSOptions,
    QHMCOptions as QHMCOptions,
)
from .result import MCMCResult as MCMCResult
from .samplers import sample as sample


__all__ = [
    "SAMPLERS",
    "MCMCResult",
    "NUTSOptions",
    "QHMCOptions",
    "check",
    "divergences",
    "ebfmi",
    "ess",
    "ess_bulk",
    "ess_tail",
    "laplace_inverse_mass",
    "mcse_mean",
    "mean_acceptance",
    "qhmc",
    "rhat",
    "sample",
    "split_rhat",
    "summarize",
    "warning_table",
]
