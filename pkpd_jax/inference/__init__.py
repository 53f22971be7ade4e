"""Bayesian inference: QHMC / NUTS sampling driver and MCMC diagnostics.

- :mod:`pkpd_jax.inference.qhmc`: the quantum-inspired HMC kernel (blackjax layout).
- :mod:`pkpd_jax.inference.samplers`: warm-up + multi-chain :func:`sample` -> :class:`MCMCResult`.
- :mod:`pkpd_jax.inference.diagnostics`: rank-normalised R-hat, bulk/tail ESS, MCSE, E-BFMI,
  :func:`summarize`, :func:`check`, :func:`warning_table`.
"""

from pkpd_jax.inference import qhmc as qhmc
from pkpd_jax.inference.diagnostics import (
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
from pkpd_jax.inference.samplers import (
    SAMPLERS as SAMPLERS,
    MCMCResult as MCMCResult,
    NUTSOptions as NUTSOptions,
    QHMCOptions as QHMCOptions,
    sample as sample,
)
