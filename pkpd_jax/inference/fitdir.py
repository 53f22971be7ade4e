"""The fit directory: the one on-disk format of a population fit, written by `save_fit` and read
back by `load_fit` (no plotting here; the fit plots live in `pkpd_jax.report.fit_plots`).

Files (`FIT_FILES`):

- ``summary.json``: ``{"params": {name: {mean, sd, q2.5, q50, q97.5, rhat, ess_bulk, ess_tail,
  prior_sd_ratio}}, "sampler", "chains", "draws_per_chain", "divergences", "wall_s", "warnings",
  "model", "covariates", ...}`` with population parameters named as in the model registry plus
  ``BW_CL``, ``BW_V``, ``COMED_CL``, ``omega_*``, ``sigma_*``; ``prior_sd_ratio`` is the
  posterior SD over the prior SD on the unconstrained scale (``diagnostics.prior_sd_ratio``);
- ``draws.parquet``: one row per draw (columns ``chain``, ``draw``, every population parameter,
  and every individual parameter as ``<param>[<ID>]``);
- ``positions.npy``: the unconstrained positions ``(chains, draws, dim)`` (exact reload);
- ``fit.json``: how to rebuild the population model (model names, covariate spec, priors,
  parametrization, metric, data file);
- ``data.csv``: the validated data set the fit used.

A fit run with plots (``pkpd-jax fit``) adds ``trace.png``, ``pairs.png``, ``vpc.png`` and
``individual_fits.png`` (`pkpd_jax.report.fit_plots.FIT_PLOTS`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from ..data import Dataset, write_nonmem
from ..models import get_model
from ..population import PopulationDraws
from .diagnostics import divergences
from .likelihood import PopulationModel
from .result import MCMCResult


__all__ = ["FIT_FILES", "REQUIRED_FILES", "FitResult", "summary_json", "draws_frame", "parametrization_meta",
           "save_fit", "load_fit", "load_draws"]

#: The files `save_fit` writes.
FIT_FILES = ("summary.json", "draws.parquet", "positions.npy", "fit.json", "data.csv")
#: The files `load_fit` needs.
REQUIRED_FILES = ("fit.json", "positions.npy", "summary.json", "data.csv")


@dataclass
class FitResult:
    """What `fit` returns: the population model, the sampler's result, the summary table, the
    diagnostics' warnings and the fit directory (``None`` when not saved)."""

    population: PopulationModel
    result: MCMCResult
    summary: pl.DataFrame
    warnings: list[str]
    out: Path | None

    def population_draws(self) -> dict[str, np.ndarray]:
        """Natural-unit population values, each ``(chains, draws)``."""
        vals = self.population.unflatten(self.result.draws)
        return {k: np.asarray(v) for k, v in vals.items()}

    def individual_draws(self) -> np.ndarray:
        """Individual parameters ``(chains, draws, subjects, params)``."""
        return np.asarray(self.population.individual_parameters(self.result.draws))


def summary_json(fr: FitResult, extra: dict) -> dict:
    params = {
        row["name"]: {
            "mean": row["mean"],
            "sd": row["sd"],
            "q2.5": row["q2.5"],
            "q50": row["q50"],
            "q97.5": row["q97.5"],
            "rhat": row["rhat"],
            "ess_bulk": row["ess_bulk"],
            "ess_tail": row["ess_tail"],
            "prior_sd_ratio": row.get("prior_sd_ratio"),
        }
        for row in fr.summary.iter_rows(named=True)
    }
    r = fr.result
    return {
        "params": params,
        "sampler": r.sampler,
        "chains": r.num_chains,
        "draws_per_chain": r.num_draws,
        "warmup": r.num_warmup,
        "thin": r.thin,
        "seed": r.seed,
        "divergences": divergences(r),
        "mean_acceptance": float(np.mean(r.acceptance)) if r.acceptance.size else float("nan"),
        # gradients spent: leapfrog steps per kept draw (sampling), and in all of the warm-up
        "leapfrog_steps_per_draw": float(np.mean(r.num_integration_steps)) if r.num_integration_steps.size
        else float("nan"),
        "warmup_leapfrog_steps": None if r.warmup_steps is None else int(np.sum(r.warmup_steps)),
        "step_size": np.asarray(r.step_size).tolist(),
        "wall_s": r.wall_s,
        "warmup_s": r.warmup_s,
        "interrupted": r.interrupted,
        "warnings": fr.warnings,
        **extra,
    }


def draws_frame(fr: FitResult) -> pl.DataFrame:
    r = fr.result
    chains, n = r.num_chains, r.num_draws
    cols: dict[str, np.ndarray] = {
        "chain": np.repeat(np.arange(chains), n),
        "draw": np.tile(np.arange(n), chains),
    }
    for k, v in fr.population_draws().items():
        cols[k] = v.reshape(-1)
    ind = fr.individual_draws().reshape(chains * n, fr.population.n_subjects, -1)
    for s, sid in enumerate(fr.population.dataset.ids):
        for p, name in enumerate(fr.population.param_names):
            cols[f"{name}[{sid}]"] = ind[:, s, p]
    return pl.DataFrame(cols)


def parametrization_meta(pm: PopulationModel):
    """The ``parametrization`` entry of ``fit.json`` (what `load_fit` passes back to
    [`PopulationModel`][]): the word, or the centred random effects when mixed."""
    return list(pm.centered_params) if pm.parametrization == "mixed" else pm.parametrization


def save_fit(fr: FitResult, out, *, data_frame=None, meta: dict) -> None:
    """Write the fit directory `out` (every file listed in `FIT_FILES`; no plots).

    **Arguments:** `fr` (the fit), `out` (created if missing), `data_frame` (the data as read, to
    save verbatim; default: the validated data set), `meta` (what `load_fit` needs to rebuild the
    population model: ``pk``, ``pd``, ``covariates``, ``priors``, ``parametrization``, and
    ``metric``).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    pm = fr.population
    extra = {
        "model": pm.model.name,
        "covariates": [e.name for e in pm.effects],
        "n_subjects": pm.n_subjects,
    }
    (out / "summary.json").write_text(json.dumps(summary_json(fr, extra), indent=2) + "\n")
    draws_frame(fr).write_parquet(out / "draws.parquet")
    np.save(out / "positions.npy", np.asarray(fr.result.draws))
    frame = data_frame if data_frame is not None else pm.dataset.to_frame()
    write_nonmem(frame, out / "data.csv")
    (out / "fit.json").write_text(json.dumps({**meta, "data": "data.csv"}, indent=2) + "\n")


def load_fit(path) -> tuple[PopulationModel, np.ndarray, dict]:
    """Rebuild a fit from its directory.

    **Arguments:** `path`, a directory written by `save_fit` (``pkpd-jax fit``).

    **Returns:** ``(population model, positions (chains, draws, dim), summary dict)``: the
    [`PopulationModel`][] with the saved settings (model, covariates, priors, parametrization,
    data), the unconstrained draws exactly as sampled, and ``summary.json``.
    """
    from .._x64 import enable_x64

    enable_x64()
    path = Path(path)
    for name in REQUIRED_FILES:
        if not (path / name).exists():
            raise FileNotFoundError(
                f"{path} is not a fit directory (missing {name}); create one with `pkpd-jax fit`."
            )
    meta = json.loads((path / "fit.json").read_text())
    dataset = Dataset.load(path / meta["data"])
    pm = PopulationModel(get_model(meta["pk"], meta["pd"]), dataset, meta["covariates"],
                         meta.get("priors"), parametrization=meta.get("parametrization", "noncentered"))
    positions = np.load(path / "positions.npy")
    return pm, positions, json.loads((path / "summary.json").read_text())


def load_draws(fit_dir, *, n_draws: int | None = None, seed: int = 0, cls: type | None = None):
    """The posterior draws of a fit directory (`pkpd-jax fit`) as a
    [`PopulationDraws`][pkpd_jax.population.PopulationDraws] (or the subclass `cls`), `n_draws`
    of them picked at random without replacement (seeded; default all)."""
    cls = PopulationDraws if cls is None else cls
    pm, positions, summary = load_fit(fit_dir)
    flat = np.asarray(positions).reshape(-1, pm.dim)
    if n_draws is not None:
        if n_draws < 1:
            raise ValueError(f"`n_draws` must be >= 1; got {n_draws}.")
        rng = np.random.default_rng(seed)
        pick = np.sort(rng.choice(flat.shape[0], size=min(n_draws, flat.shape[0]), replace=False))
        flat = flat[pick]
    draws = cls.from_population_model(
        pm,
        flat,
        source=str(fit_dir),
        meta={
            "sampler": summary.get("sampler"),
            "draws_total": int(np.asarray(positions).shape[0] * np.asarray(positions).shape[1]),
        },
    )
    if not all(np.all(np.isfinite(v)) for v in draws.values.values()):
        raise ValueError(f"the draws in {fit_dir} contain non-finite values; refit.")
    return draws
