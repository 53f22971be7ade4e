"""Coverage-vs-dose plots: posterior-median curve, 50% and 90% bands across draws, targets, answers."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path


__all__ = ["coverage_plot"]


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def coverage_plot(
    results: Sequence,
    path,
    *,
    targets: Sequence[float] = (0.9, 0.75),
    answers: dict | None = None,
    title: str | None = None,
) -> Path:
    """One panel per [`DoseSearchResult`][pkpd_jax.trials.dose_search.DoseSearchResult] (e.g. daily
    and weekly of one scenario): coverage against dose with bands over the posterior draws, the
    target lines, and the chosen doses with their 90% intervals (from `answers`
    ``{regimen: {target: answer}}``, default: computed from the results)."""
    plt = _plt()
    path = Path(path)
    results = list(results)
    fig, axes = plt.subplots(1, len(results), figsize=(5.2 * len(results), 3.8), squeeze=False)
    colours = {t: c for t, c in zip(sorted(targets, reverse=True), ("C3", "C1", "C2", "C4"))}
    for ax, res in zip(axes[0], results):
        g = res.grid
        lo90, hi90 = res.band(0.9)
        lo50, hi50 = res.band(0.5)
        ax.fill_between(g, lo90, hi90, step="post", color="C0", alpha=0.18, label="90% band (draws)")
        ax.fill_between(g, lo50, hi50, step="post", color="C0", alpha=0.35, label="50% band")
        ax.step(g, res.median_curve(), where="post", color="C0", lw=1.8, label="posterior median")
        for j, t in enumerate(targets):
            a = (answers or {}).get(res.regimen.name, {}).get(t) or res.answer(t)
            c = colours.get(t, "k")
            ax.axhline(t, color=c, ls=":", lw=1)
            if a["dose"] is not None:
                ax.axvline(a["dose"], color=c, ls="--", lw=1.2, label=f"{t:.0%}: {a['dose']:g} mg")
            lo, hi = a["dose_interval"]
            if lo is not None:
                y0 = 0.005 + 0.045 * j  # one bar per target, stacked at the bottom
                ax.axvspan(lo, hi if hi is not None else g[-1], ymin=y0, ymax=y0 + 0.035, color=c, alpha=0.6)
        ax.set_xlim(0, g[-1])
        ax.set_ylim(0, 1.02)
        ax.set_xlabel(f"dose, {res.regimen.label} (mg)")
        ax.set_ylabel(f"fraction with biomarker < {res.threshold:g}")
        ax.set_title(f"{res.regimen.label}: {res.scenario_label}", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
