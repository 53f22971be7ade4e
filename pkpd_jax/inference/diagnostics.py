r"""MCMC convergence and efficiency diagnostics (numpy; draws shaped ``(chains, draws, ...)``).

Definitions follow Vehtari, Gelman, Simpson, Carpenter & Bürkner (2021), *Rank-normalization,
folding, and localization: an improved* :math:`\widehat R` *for assessing convergence of MCMC*,
Bayesian Analysis 16(2), and the Stan reference manual (the same formulas as ArviZ and the
``posterior`` R package).

Split chains
    Each chain of ``N`` draws is cut into its first and last ``floor(N/2)`` draws (the middle
    draw is dropped when ``N`` is odd): ``M = 2C`` chains of ``n`` draws.

Classic split R-hat (:func:`split_rhat`)
    With chain means :math:`\bar\theta_m`, chain variances :math:`s_m^2`,
    :math:`W = \tfrac1M\sum_m s_m^2`, :math:`B = \tfrac{n}{M-1}\sum_m(\bar\theta_m-\bar\theta)^2`,
    :math:`\widehat{\operatorname{var}}^+ = \tfrac{n-1}{n}W + \tfrac1n B` and
    :math:`\widehat R = \sqrt{\widehat{\operatorname{var}}^+/W}` (``numpyro``'s
    ``split_gelman_rubin``).

Rank normalisation
    :math:`z = \Phi^{-1}\big((r - 3/8)/(S + 1/4)\big)` with :math:`r` the (average) rank of a
    draw among all :math:`S` draws.

Rank-normalised R-hat (:func:`rhat`)
    :math:`\max(\widehat R_{\rm bulk}, \widehat R_{\rm tail})`: split R-hat of the
    rank-normalised draws, and of the rank-normalised *folded* draws
    :math:`|\theta - \operatorname{median}\theta|`.

ESS (:func:`ess`, :func:`ess_bulk`, :func:`ess_tail`)
    From the per-chain FFT autocovariances :math:`\hat\gamma_{m,t}` (biased, divided by ``n``):
    :math:`\hat\rho_t = 1 - (W - \tfrac1M\sum_m\hat\gamma_{m,t})/\widehat{\operatorname{var}}^+`,
    truncated by Geyer's initial positive sequence (pairs :math:`\hat\rho_{2k}+\hat\rho_{2k+1}`
    summed while positive) made monotone (initial monotone sequence),
    :math:`\hat\tau = -1 + 2\sum_{t}\hat\rho_t` (floored at :math:`1/\log_{10}(Mn)`) and
    :math:`\mathrm{ESS} = Mn/\hat\tau`. *Bulk* ESS is that of the rank-normalised split draws,
    *tail* ESS the minimum of the ESS of the indicators :math:`I(\theta \le q_{0.05})` and
    :math:`I(\theta \le q_{0.95})`; :func:`ess` is the plain ESS of the (split) draws, used for
    :math:`\mathrm{MCSE}(\bar\theta) = \operatorname{sd}(\theta)/\sqrt{\mathrm{ESS}}`
    (:func:`mcse_mean`). For an AR(1) chain with coefficient :math:`\rho`,
    :math:`\mathrm{ESS} \to N(1-\rho)/(1+\rho)`.

E-BFMI (:func:`ebfmi`)
    Per chain, :math:`\sum_n (E_n - E_{n-1})^2 / \sum_n (E_n - \bar E)^2` of the Hamiltonian
    energies (Betancourt 2016, *Diagnosing suboptimal cotangent disintegrations in Hamiltonian
    Monte Carlo*); values below 0.3 indicate that momentum resampling explores the energy
    distribution poorly (heavy tails, funnels).

:func:`summarize` tabulates these per parameter as a ``polars.DataFrame``; :func:`check` turns a
result and its summary into human-readable warnings (thresholds: R-hat > 1.01, bulk/tail ESS <
``min(400, 100 * chains)``, E-BFMI < 0.3, any divergence) and :func:`warning_table` renders them
with ``rich``.

Identifiability (:func:`prior_sd_ratio`)
    Converged chains can still report a confident-looking number that the data never informed:
    the prior's. For each population parameter the ratio of its posterior SD to its prior SD,
    both on the unconstrained scale the sampler uses (log for positive parameters and for the
    half-normal ω and σ, logit for fractions, identity for real ones), measures what the data
    added: about 1 when the posterior is the prior, ``1/√(1 + I_data/I_prior)`` for a Gaussian
    prior and likelihood. :func:`check` warns for every parameter with a ratio above
    ``PRIOR_SD_RATIO_MAX = 0.5``: the data did not even halve the prior's uncertainty (they carry
    less than 3 times the prior's information); with this project's weakly informative priors
    that leaves a 95% interval spanning a factor of ~20 for a typical value (prior log-SD 1.2-1.6)
    and ~9 for a between-subject SD (prior SD of log ω: π/√8 ≈ 1.11). A ratio near or above 1
    often means a random effect the data cannot tell from 0 (its log ω then follows the prior's
    left tail).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import polars as pl
from scipy import stats


__all__ = [
    "split_rhat",
    "rhat",
    "ess",
    "ess_bulk",
    "ess_tail",
    "mcse_mean",
    "ebfmi",
    "divergences",
    "mean_acceptance",
    "summarize",
    "check",
    "warning_table",
    "prior_sd_ratio",
    "unconstrained_prior_sd",
    "PRIOR_SD_RATIO_MAX",
]

_MIN_DRAWS = 4

#: :func:`check` warns when a parameter's posterior SD is more than this fraction of its prior SD
#: (unconstrained scale): the data did not even halve the prior's uncertainty.
PRIOR_SD_RATIO_MAX = 0.5

#: SD of ``log X`` for ``X ~ HalfNormal(s)``, whatever ``s``: ``sqrt(var(log|Z|)) = π/√8``.
HALF_NORMAL_LOG_SD = float(np.pi / np.sqrt(8.0))

#: prior-table distribution -> the unconstrained transform of the natural-unit value
_LINKS = {
    "log-normal": np.log,
    "half-normal": np.log,
    "logit-normal": lambda x: np.log(x) - np.log1p(-x),
    "normal": lambda x: x,
}


def _as_chains(draws) -> tuple[np.ndarray, tuple[int, ...]]:
    """``(chains, draws, ...)`` -> float array ``(chains, draws, P)`` and the trailing shape."""
    x = np.asarray(draws)
    if x.ndim < 2:
        raise ValueError(f"diagnostics: expected draws of shape (chains, draws, ...), got shape {x.shape}")
    rest = x.shape[2:]
    return x.reshape(x.shape[0], x.shape[1], -1).astype(float), rest


def _split(x: np.ndarray) -> np.ndarray:
    """``(C, N, P)`` -> ``(2C, N//2, P)``: first and last halves (middle draw dropped if N odd)."""
    half = x.shape[1] // 2
    return np.concatenate([x[:, :half], x[:, x.shape[1] - half :]], axis=0)


def _z_scale(x: np.ndarray) -> np.ndarray:
    """Rank-normalise each parameter over all chains and draws: ``Φ⁻¹((r - 3/8)/(S + 1/4))``."""
    c, n, p = x.shape
    flat = x.reshape(c * n, p)
    ranks = stats.rankdata(flat, method="average", axis=0)
    z = stats.norm.ppf((ranks - 0.375) / (c * n + 0.25))
    return z.reshape(c, n, p)


def _rhat_basic(x: np.ndarray) -> np.ndarray:
    """Gelman-Rubin R-hat of ``(M, n, P)`` chains (no splitting)."""
    n = x.shape[1]
    chain_mean = x.mean(axis=1)
    chain_var = x.var(axis=1, ddof=1)
    w = chain_var.mean(axis=0)
    b = n * chain_mean.var(axis=0, ddof=1) if x.shape[0] > 1 else np.zeros_like(w)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.sqrt((b / w + n - 1) / n)


def _autocov(x: np.ndarray) -> np.ndarray:
    """Biased autocovariance along axis 1 of ``(M, n, P)`` via FFT (divided by ``n``)."""
    n = x.shape[1]
    centred = x - x.mean(axis=1, keepdims=True)
    size = 2 * n
    f = np.fft.rfft(centred, n=size, axis=1)
    acov = np.fft.irfft(f * np.conjugate(f), n=size, axis=1)[:, :n]
    return acov / n


def _geyer_tau(rho: np.ndarray) -> float:
    """Integrated autocorrelation time from ``rho`` (``rho[0] = 1``) with Geyer's initial
    positive and initial monotone sequences, exactly as in Stan / ArviZ."""
    n = rho.shape[0]
    r = rho.tolist()
    rho_hat = [0.0] * n
    rho_hat[0] = 1.0
    even, odd = 1.0, r[1]
    rho_hat[1] = odd
    t = 1
    while t < n - 3 and even + odd > 0.0:
        even, odd = r[t + 1], r[t + 2]
        if even + odd >= 0:
            rho_hat[t + 1], rho_hat[t + 2] = even, odd
        t += 2
    max_t = t - 2
    if even > 0:
        rho_hat[max_t + 1] = even
    t = 1
    while t <= max_t - 2:
        if rho_hat[t + 1] + rho_hat[t + 2] > rho_hat[t - 1] + rho_hat[t]:
            rho_hat[t + 1] = (rho_hat[t - 1] + rho_hat[t]) / 2.0
            rho_hat[t + 2] = rho_hat[t + 1]
        t += 2
    return -1.0 + 2.0 * sum(rho_hat[: max_t + 1]) + sum(rho_hat[max_t + 1 : max_t + 2])


def _ess_chains(x: np.ndarray) -> np.ndarray:
    """ESS of ``(M, n, P)`` chains taken as they are (no splitting, no rank transform)."""
    m, n, p = x.shape
    out = np.full(p, np.nan)
    if n < 2:
        return out
    acov = _autocov(x)  # (M, n, P)
    chain_mean = x.mean(axis=1)  # (M, P)
    mean_var = acov[:, 0].mean(axis=0) * n / (n - 1.0)
    var_plus = mean_var * (n - 1.0) / n
    if m > 1:
        var_plus = var_plus + chain_mean.var(axis=0, ddof=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        rho = 1.0 - (mean_var[None, :] - acov.mean(axis=0)) / var_plus[None, :]  # (n, P)
    total = m * n
    for j in range(p):
        col = x[:, :, j]
        if not np.all(np.isfinite(col)):
            continue
        if np.ptp(col) < np.finfo(float).resolution:
            out[j] = total
            continue
        rj = rho[:, j].copy()
        rj[0] = 1.0
        if n < 4:
            tau = -1.0 + 2.0 * rj[:2].sum() if n >= 2 else 1.0
        else:
            tau = _geyer_tau(rj)
        tau = max(tau, 1.0 / np.log10(total))
        out[j] = total / tau if np.all(np.isfinite(rj)) else np.nan
    return out


def _reshape(values: np.ndarray, rest: tuple[int, ...]) -> np.ndarray:
    return np.asarray(values).reshape(rest)


def _enough(x: np.ndarray) -> bool:
    return x.shape[1] >= _MIN_DRAWS


def split_rhat(draws) -> np.ndarray:
    """Classic split R-hat (no rank normalisation), shape ``draws.shape[2:]``."""
    x, rest = _as_chains(draws)
    if not _enough(x):
        return _reshape(np.full(x.shape[2], np.nan), rest)
    return _reshape(_rhat_basic(_split(x)), rest)


def rhat(draws) -> np.ndarray:
    """Rank-normalised split R-hat, ``max(bulk, folded tail)`` (Vehtari et al. 2021)."""
    x, rest = _as_chains(draws)
    if not _enough(x):
        return _reshape(np.full(x.shape[2], np.nan), rest)
    bulk = _rhat_basic(_z_scale(_split(x)))
    folded = np.abs(x - np.median(x.reshape(-1, x.shape[2]), axis=0))
    tail = _rhat_basic(_z_scale(_split(folded)))
    return _reshape(np.fmax(bulk, tail), rest)


def ess(draws, *, split: bool = True) -> np.ndarray:
    """Plain ESS of the draws (the ESS of the mean); ``split=False`` uses whole chains, which
    is ``numpyro.diagnostics.effective_sample_size``'s definition."""
    x, rest = _as_chains(draws)
    if not _enough(x):
        return _reshape(np.full(x.shape[2], np.nan), rest)
    return _reshape(_ess_chains(_split(x) if split else x), rest)


def ess_bulk(draws) -> np.ndarray:
    """Bulk ESS: ESS of the rank-normalised split draws."""
    x, rest = _as_chains(draws)
    if not _enough(x):
        return _reshape(np.full(x.shape[2], np.nan), rest)
    return _reshape(_ess_chains(_z_scale(_split(x))), rest)


def ess_tail(draws, probs: tuple[float, float] = (0.05, 0.95)) -> np.ndarray:
    """Tail ESS: the smaller ESS of the indicators ``θ <= q_0.05`` and ``θ <= q_0.95``."""
    x, rest = _as_chains(draws)
    if not _enough(x):
        return _reshape(np.full(x.shape[2], np.nan), rest)
    pooled = x.reshape(-1, x.shape[2])
    out = []
    for prob in probs:
        q = np.quantile(pooled, prob, axis=0)
        out.append(_ess_chains(_split((x <= q).astype(float))))
    return _reshape(np.fmin(*out) if len(out) == 2 else np.min(out, axis=0), rest)


def mcse_mean(draws) -> np.ndarray:
    """Monte Carlo standard error of the posterior mean, ``sd / sqrt(ess(split draws))``."""
    x, rest = _as_chains(draws)
    if not _enough(x):
        return _reshape(np.full(x.shape[2], np.nan), rest)
    sd = x.reshape(-1, x.shape[2]).std(axis=0, ddof=1)
    return _reshape(sd / np.sqrt(_ess_chains(_split(x))), rest)


def ebfmi(energy) -> np.ndarray:
    """E-BFMI per chain from the Hamiltonian energies ``(chains, draws)``."""
    e = np.asarray(energy, float)
    if e.ndim != 2:
        raise ValueError(f"ebfmi: expected energy of shape (chains, draws), got {e.shape}")
    if e.shape[1] < 2:
        return np.full(e.shape[0], np.nan)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.square(np.diff(e, axis=1)).mean(axis=1) / np.var(e, axis=1)


def divergences(result) -> int:
    """Number of kept draws whose transitions contained a divergence."""
    return int(np.sum(np.asarray(result.divergent)))


def mean_acceptance(result) -> float:
    """Mean acceptance probability over all chains and draws."""
    acc = np.asarray(result.acceptance, float)
    return float(np.mean(acc)) if acc.size else float("nan")


def summarize(draws, names: Sequence[str] | None = None) -> pl.DataFrame:
    """Per-parameter summary of ``draws (chains, draws, ...)`` (or an ``MCMCResult``).

    Columns: name, mean, sd, q2.5, q50, q97.5, mcse_mean, rhat (rank-normalised), ess_bulk,
    ess_tail. ``names`` has one entry per parameter (trailing dimensions flattened in C order);
    default ``x[0], x[1], ...``.
    """
    if hasattr(draws, "draws") and hasattr(draws, "divergent"):
        draws = draws.draws
    x, _ = _as_chains(draws)
    p = x.shape[2]
    if names is None:
        names = [f"x[{i}]" for i in range(p)]
    names = [str(n) for n in names]
    if len(names) != p:
        raise ValueError(f"summarize: expected {p} names (one per parameter), got {len(names)}")
    pooled = x.reshape(-1, p)
    have = pooled.shape[0] > 0
    nan = np.full(p, np.nan)
    q = np.quantile(pooled, [0.025, 0.5, 0.975], axis=0) if have else np.full((3, p), np.nan)
    return pl.DataFrame(
        {
            "name": names,
            "mean": pooled.mean(axis=0) if have else nan,
            "sd": pooled.std(axis=0, ddof=1) if pooled.shape[0] > 1 else nan,
            "q2.5": q[0],
            "q50": q[1],
            "q97.5": q[2],
            "mcse_mean": mcse_mean(x),
            "rhat": rhat(x),
            "ess_bulk": ess_bulk(x),
            "ess_tail": ess_tail(x),
        }
    )


def _worst(names, values, order: str, limit: int = 5) -> str:
    idx = np.argsort(values)
    if order == "desc":
        idx = idx[::-1]
    shown = [f"{names[i]} ({values[i]:.3g})" for i in idx[:limit]]
    more = f" and {len(idx) - limit} more" if len(idx) > limit else ""
    return ", ".join(shown) + more


def check(
    result,
    draws_summary: pl.DataFrame,
    *,
    rhat_max: float = 1.01,
    ess_min: float | None = None,
    ebfmi_min: float = 0.3,
    prior_ratio_max: float = PRIOR_SD_RATIO_MAX,
) -> list[str]:
    """Human-readable warnings for a sampling result and its :func:`summarize` table.

    Checks: interruption, divergences (any), E-BFMI per chain (< ``ebfmi_min``), rank-normalised
    R-hat (> ``rhat_max`` or not finite), bulk and tail ESS (< ``ess_min``, default
    ``min(400, 100 * chains)``) and, when the table has a ``prior_sd_ratio`` column (see
    :func:`prior_sd_ratio`), one warning per parameter the data do not inform (ratio >
    ``prior_ratio_max``). An empty list means every check passed.
    """
    warnings: list[str] = []
    chains = int(np.asarray(result.divergent).shape[0])
    n_draws = int(np.asarray(result.divergent).shape[1])
    if ess_min is None:
        ess_min = min(400, 100 * chains)
    if getattr(result, "interrupted", False):
        warnings.append(
            f"sampling was interrupted: only {n_draws} draws per chain were made; "
            "diagnostics are on the partial run"
        )
    n_div = divergences(result)
    total = chains * n_draws
    if n_div > 0:
        per_chain = np.asarray(result.divergent).sum(axis=1).tolist()
        warnings.append(
            f"{n_div} of {total} draws ({100 * n_div / max(total, 1):.2g}%) followed a divergent "
            f"transition (per chain {per_chain}): the posterior has regions the step size cannot "
            "resolve; reparameterise or raise target_acceptance_rate"
        )
    bfmi = ebfmi(result.energy)
    low = np.flatnonzero(~(bfmi >= ebfmi_min)) if n_draws >= 2 else np.array([], int)
    if low.size:
        vals = ", ".join(f"{bfmi[i]:.2f}" for i in low)
        warnings.append(
            f"E-BFMI below {ebfmi_min} in chain(s) {low.tolist()} ({vals}): momentum resampling "
            "explores the energy distribution poorly (heavy tails / funnel); reparameterise"
        )
    names = draws_summary["name"].to_list()
    for col, label in (("rhat", "R-hat"),):
        vals = draws_summary[col].to_numpy().astype(float)
        bad = np.flatnonzero(~np.isfinite(vals))
        if bad.size:
            warnings.append(
                f"{label} is not finite for {len(bad)} parameter(s): " + ", ".join(names[i] for i in bad[:5])
            )
        high = np.flatnonzero(np.isfinite(vals) & (vals > rhat_max))
        if high.size:
            warnings.append(
                f"{label} > {rhat_max} for {high.size} of {len(names)} parameter(s): "
                + _worst([names[i] for i in high], vals[high], "desc")
                + "; chains have not mixed, run longer or check for multimodality"
            )
    for col, label in (("ess_bulk", "bulk ESS"), ("ess_tail", "tail ESS")):
        vals = draws_summary[col].to_numpy().astype(float)
        low_ess = np.flatnonzero(~(vals >= ess_min))
        if low_ess.size:
            warnings.append(
                f"{label} < {ess_min:g} for {low_ess.size} of {len(names)} parameter(s): "
                + _worst([names[i] for i in low_ess], vals[low_ess], "asc")
                + "; estimates are unreliable, draw more samples"
            )
    if "prior_sd_ratio" in draws_summary.columns:
        ratio = draws_summary["prior_sd_ratio"].to_numpy().astype(float)
        for i in np.flatnonzero(np.isfinite(ratio) & (ratio > prior_ratio_max)):
            warnings.append(
                f"the data do not inform {names[i]}: its posterior SD is {ratio[i]:.2f} of its prior "
                f"SD (unconstrained scale; > {prior_ratio_max:g} means the data did not halve the "
                "prior's uncertainty), so its posterior is mostly the prior; treat its value as an "
                "assumption, not an estimate"
            )
    return warnings


def unconstrained_prior_sd(prior_table: Sequence[dict]) -> dict[str, float]:
    """``{name: prior SD on the unconstrained scale}`` from a prior table (records with ``name``,
    ``distribution`` and ``scale``, as ``PopulationModel.prior_table()`` returns them): the scale
    itself for normal, log-normal and logit-normal priors, :data:`HALF_NORMAL_LOG_SD` for
    half-normal ones (sampled as log ω / log σ)."""
    out = {}
    for row in prior_table:
        dist = row["distribution"]
        if dist not in _LINKS:
            raise ValueError(f"unknown prior distribution {dist!r} for {row['name']}")
        out[row["name"]] = HALF_NORMAL_LOG_SD if dist == "half-normal" else float(row["scale"])
    return out


def prior_sd_ratio(draws, names: Sequence[str], prior_table: Sequence[dict]) -> np.ndarray:
    """Posterior SD / prior SD per parameter, both on the unconstrained scale.

    **Arguments:**

    - `draws`: natural-unit draws ``(chains, draws, P)`` (one column per name).
    - `names`: the parameter names, one per column.
    - `prior_table`: records ``{"name", "distribution", "scale"}`` (``PopulationModel.prior_table()``);
      the distribution fixes the transform (log for log-normal and half-normal, logit for
      logit-normal, none for normal).

    **Returns:**

    ``(P,)`` ratios; NaN for a name without a prior record or with non-finite transformed draws.
    About 1 when the data do not inform the parameter, small when they determine it.
    """
    x, _ = _as_chains(draws)
    names = [str(n) for n in names]
    if len(names) != x.shape[2]:
        raise ValueError(f"prior_sd_ratio: expected {x.shape[2]} names (one per parameter), got {len(names)}")
    by_name = {row["name"]: row for row in prior_table}
    prior_sd = unconstrained_prior_sd(prior_table)
    out = np.full(len(names), np.nan)
    for j, name in enumerate(names):
        if name not in by_name:
            continue
        with np.errstate(divide="ignore", invalid="ignore"):
            u = _LINKS[by_name[name]["distribution"]](x[:, :, j].reshape(-1))
        if u.size < 2 or not np.all(np.isfinite(u)):
            continue
        out[j] = float(np.std(u, ddof=1) / prior_sd[name])
    return out


def warning_table(warnings: Sequence[str]):
    """A ``rich.table.Table`` of the warnings (one row each), or one row "all diagnostics OK"."""
    from rich.table import Table

    table = Table(title="MCMC diagnostics", show_lines=False)
    table.add_column("#", justify="right", style="dim")
    table.add_column("warning")
    if not warnings:
        table.add_row("", "[green]all diagnostics OK[/green]")
    else:
        for i, w in enumerate(warnings, 1):
            table.add_row(str(i), f"[yellow]{w}[/yellow]")
    return table
