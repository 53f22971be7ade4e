"""Plots and reports.

- `pkpd_jax.report.fit_plots`: trace, pair, VPC and individual-fit plots of a population fit
  (`fit_plots`, passed to `pkpd_jax.inference.fit.fit` as ``plots=``);
- `pkpd_jax.report.html`: the HTML report; `pkpd_jax.report.overview`: the study overview.

The submodules load matplotlib and the fit; import them directly (importing this package loads
nothing).
"""

__all__: list[str] = []
