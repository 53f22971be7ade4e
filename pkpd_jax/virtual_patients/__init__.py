"""Virtual patients: a reference adult population, its physiological constraints, and a diffusion model.

- [`schema`](schema.py): the covariate columns, units, organs and tissue densities both others use.
- [`reference`](reference.py): a seeded generator of physiological covariates from published relations.
- [`constraints`](constraints.py): the constraints as per-sample violation magnitudes (JAX, differentiable).
- [`diffusion`](diffusion.py): a denoising diffusion model of the covariate vector, trained with a
  physics penalty on the constraint violations.
"""
