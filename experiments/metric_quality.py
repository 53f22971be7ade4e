"""How well candidate HMC metrics whiten a fitted population posterior.

For a finished fit directory (e.g. of the bundled example study, `pkpd-jax fit ... --out DIR`),
the posterior covariance ``S`` of its draws is whitened by each candidate inverse mass ``M⁻¹``
(``L⁻¹ S L⁻ᵀ`` with ``M⁻¹ = L Lᵀ``) and the square root of the whitened covariance's condition
number is reported: about the leapfrog steps per iteration an HMC trajectory needs (1 is a
perfect metric). Candidates:

- the diagonal ``1/H_ii`` of the negative Hessian at the starting points' mode (how `fit` starts);
- the full Laplace covariance ``H⁻¹`` at that mode, and its rank-64 low-rank form
  (`samplers.laplace_inverse_mass`);
- the posterior variances (the best diagonal);
- the Fisher-divergence low-rank estimate (rank 64) from 800 posterior draws and their gradients,
  what the low-rank warm-up estimates.

Usage::

    python experiments/metric_quality.py FIT_DIR [--map-steps 300] [--seed 0]

prints a Markdown table and writes ``FIT_DIR/metric_quality.json``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np


def whitened_sqrt_condition(cov: np.ndarray, inverse_mass: np.ndarray) -> float:
    chol = np.linalg.cholesky(0.5 * (inverse_mass + inverse_mass.T))
    w = np.linalg.solve(chol, np.linalg.solve(chol, cov).T)
    ev = np.linalg.eigvalsh(0.5 * (w + w.T))
    return float(np.sqrt(ev[-1] / ev[0]))


def main(argv=None) -> None:
    from pkpd_jax.inference.fit import load_fit
    from pkpd_jax.inference.metrics import inverse_mass_times, laplace_inverse_mass, low_rank_estimate
    from pkpd_jax.inference.options import QHMCOptions

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("fit_dir", type=Path)
    ap.add_argument("--map-steps", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    pm, positions, _ = load_fit(args.fit_dir)
    draws = positions.reshape(-1, pm.dim)
    cov = np.cov(draws.T)
    start = pm.starting_points(jax.random.key(args.seed), 4, map_steps=args.map_steps)
    h = np.diag(start.hessian)
    dense = lambda m: np.asarray(inverse_mass_times(m, np.eye(pm.dim)))  # noqa: E731
    rng = np.random.default_rng(args.seed)
    idx = rng.choice(draws.shape[0], min(800, draws.shape[0]), replace=False)
    grads = np.stack([np.asarray(pm.value_and_grad(jnp.asarray(draws[i]))[1]) for i in idx])
    fisher = low_rank_estimate(QHMCOptions(metric="low_rank", max_rank=64), jnp.asarray(draws[idx]),
                                jnp.asarray(grads))
    diag_start = np.diag(np.where(h > 0, 1 / np.where(h > 0, h, 1), 1e-2))
    candidates = {
        "diagonal 1/H_ii at the mode (fit's start)": diag_start,
        "Laplace H^-1 at the mode (full rank)": dense(
            laplace_inverse_mass(start.hessian, pm.dim, cutoff=1.0)),
        "Laplace at the mode, rank 64": dense(laplace_inverse_mass(start.hessian, 64)),
        "posterior variances": np.diag(np.diag(cov)),
        f"Fisher low-rank (rank 64, {idx.size} posterior draws)": dense(fisher),
    }
    rows = {name: whitened_sqrt_condition(cov, m) for name, m in candidates.items()}
    offset = np.abs(np.asarray(start.mode) - draws.mean(0)) / np.sqrt(np.diag(cov))
    result = {"fit_dir": str(args.fit_dir.name), "dim": pm.dim, "sqrt_condition": rows,
              "mode_offset_posterior_sd": {"median": float(np.median(offset)), "max": float(offset.max())}}
    (args.fit_dir / "metric_quality.json").write_text(json.dumps(result, indent=2) + "\n")
    print("| metric | sqrt(condition number) of the whitened posterior |\n|---|---:|")
    for name, v in rows.items():
        print(f"| {name} | {v:.1f} |")
    print(f"\nmode vs posterior mean: median {np.median(offset):.2f}, max {offset.max():.1f} posterior SDs")


if __name__ == "__main__":
    main()
