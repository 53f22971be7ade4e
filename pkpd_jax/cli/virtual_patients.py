"""`pkpd-jax virtual-patients`: sample physiological virtual patients.

Cheap to import: JAX and the model are loaded inside the command.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from ._options import parse_range


__all__ = ["virtual_patients_command"]


def virtual_patients_command(
    n: Annotated[int, typer.Option("--n", help="Number of virtual patients.")] = 1000,
    out: Annotated[Path, typer.Option(help="Output directory (virtual_patients.csv + summary.json).")] = Path(
        "virtual_patients"),
    bw_range: Annotated[str | None, typer.Option(help="Body-weight range in kg, e.g. '70,140'.")] = None,
    age_range: Annotated[str | None, typer.Option(help="Age band in years, e.g. '65,85'.")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the sampler.")] = 0,
    checkpoint: Annotated[Path | None, typer.Option(
        help="Diffusion checkpoint (.eqx; default: the shipped physics-constrained model).")] = None,
    reference: Annotated[bool, typer.Option(
        "--reference", help="Draw from the reference generator instead of the diffusion model.")] = False,
    guidance: Annotated[float, typer.Option(
        help="Constraint-guidance step size while sampling (0 = off).")] = 0.0,
):
    """Sample virtual patients (sex, age, anthropometry, organ volumes, blood flows, GFR, haematocrit,
    albumin) from the physics-constrained diffusion model, optionally within a body-weight range or an
    age band."""
    if n < 1:
        raise typer.BadParameter(f"--n must be >= 1; got {n}.")
    bw = parse_range(bw_range, "--bw-range")
    age = parse_range(age_range, "--age-range")
    import numpy as np
    import polars as pl

    from ..virtual_patients import constraints as C, diffusion as D, reference as R

    info: dict = {}
    if reference:
        x = R.generate(max(n * 20, 10000), seed)
        keep = np.ones(len(x), bool)
        if bw is not None:
            keep &= (x[:, R.index("weight")] >= bw[0]) & (x[:, R.index("weight")] <= bw[1])
        if age is not None:
            keep &= (x[:, R.index("age")] >= age[0]) & (x[:, R.index("age")] <= age[1])
        x = x[keep][:n]
        if len(x) < n:
            raise typer.BadParameter("the requested range is too rare in the reference population.")
        source = "reference generator"
    else:
        path = checkpoint or D.pretrained_path()
        if not path.exists():
            raise FileNotFoundError(f"no diffusion checkpoint at {path}; pass --checkpoint or --reference.")
        model = D.load(path)
        x, info = model.sample(n, seed, bw_range=bw, age_range=age, guidance=guidance, return_info=True)
        source = f"diffusion model {path.name}"
    out.mkdir(parents=True, exist_ok=True)
    table = pl.DataFrame({name: x[:, j] for j, name in enumerate(R.VARIABLES)}).with_columns(
        pl.col("female").cast(pl.Int64))
    table.write_csv(out / "virtual_patients.csv")
    rates = C.violation_rate(x)
    summary = {"n": int(len(x)), "source": source, "seed": seed, "bw_range": bw, "age_range": age,
               "violation_rate": rates, "units": R.UNITS, **info,
               "mean": {v: float(x[:, j].mean()) for j, v in enumerate(R.VARIABLES)}}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    typer.echo(f"{len(x)} virtual patients from the {source}: violation rate {100 * rates['any']:.2f} %, "
               f"weight {x[:, R.index('weight')].min():.1f}-{x[:, R.index('weight')].max():.1f} kg, "
               f"age {x[:, R.index('age')].min():.0f}-{x[:, R.index('age')].max():.0f} y")
    typer.echo(f"wrote {out / 'virtual_patients.csv'} and {out / 'summary.json'}")
