"""Option types and parsers shared by the commands (thresholds, seeds, ranges, `--json`, choices).

Choices are listed in `--help` (the option's metavar) but checked by the commands themselves, so
a bad value is the usual one-line ``error:`` with exit status 1 naming the option and the choices.
"""

from __future__ import annotations

from enum import Enum
from typing import Annotated

import typer


__all__ = [
    "AsJson",
    "Family",
    "RegimenName",
    "Seed",
    "Threshold",
    "choices",
    "parse_bw_range",
    "parse_floats",
    "parse_kv",
    "parse_range",
]


class Family(str, Enum):
    """Model families (`--family`)."""

    pk = "pk"
    pd = "pd"


class RegimenName(str, Enum):
    """Dosing regimens of the trials and the twin (`--regimen`): daily (0.5 mg grid, 24 h) and
    weekly (5 mg grid, 168 h); the same names as `pkpd_jax.trials.dose_search.REGIMENS`."""

    daily = "daily"
    weekly = "weekly"


def choices(enum: type[Enum]) -> str:
    """The metavar listing an Enum's values, e.g. ``[daily|weekly]``."""
    return "[" + "|".join(m.value for m in enum) + "]"


AsJson = Annotated[bool, typer.Option("--json", help="Machine-readable output (JSON).")]
Seed = Annotated[int, typer.Option(help="Seed of every random step: the same seed gives the same result.")]
Threshold = Annotated[float, typer.Option(help="Biomarker threshold to stay below (biomarker unit), > 0.")]


def parse_kv(text: str, what: str) -> dict[str, float]:
    """``"CL=5,V=50"`` -> ``{"CL": 5.0, "V": 50.0}``; `ValueError` naming `what` otherwise."""
    out: dict[str, float] = {}
    for item in filter(None, (s.strip() for s in text.split(","))):
        if "=" not in item:
            raise ValueError(f"{what}: {item!r} is not NAME=VALUE (e.g. 'CL=5,V=50').")
        k, v = item.split("=", 1)
        try:
            out[k.strip()] = float(v)
        except ValueError:
            raise ValueError(f"{what}: value of {k.strip()!r} is not a number: {v!r}.") from None
    if not out:
        raise ValueError(f"{what}: no values given (e.g. 'CL=5,V=50').")
    return out


def parse_floats(text: str, what: str) -> list[float]:
    """``"0,0.5,1"`` -> ``[0.0, 0.5, 1.0]``; `ValueError` naming `what` otherwise."""
    try:
        vals = [float(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise ValueError(f"{what}: expected comma-separated numbers, got {text!r}.") from None
    if not vals:
        raise ValueError(f"{what}: no values given.")
    return vals


def parse_bw_range(text: str) -> tuple[float, float]:
    """``"70,140"`` (or ``"70-140"``) -> ``(70.0, 140.0)``; `ValueError` unless ``0 < lo < hi``."""
    sep = "," if "," in text else "-"
    parts = [p.strip() for p in text.split(sep)]
    try:
        vals = [float(p) for p in parts]
    except ValueError:
        raise ValueError(f"--bw-range must be two weights in kg, e.g. '70,140'; got {text!r}.") from None
    if len(vals) != 2:
        raise ValueError(f"--bw-range must be two weights in kg, e.g. '70,140'; got {text!r}.")
    lo, hi = vals
    if not 0 < lo < hi:
        raise ValueError(
            f"--bw-range {text!r} is empty or reversed: it needs 0 < lo < hi (kg), e.g. '70,140'."
        )
    return lo, hi


def parse_range(text: str | None, name: str) -> tuple[float, float] | None:
    """``"LO,HI"`` -> ``(LO, HI)`` (`None` stays `None`); `typer.BadParameter` unless LO < HI."""
    if text is None:
        return None
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        raise typer.BadParameter(f"{name} must be 'LO,HI' (e.g. 70,140); got {text!r}.") from None
    if not lo < hi:
        raise typer.BadParameter(f"{name} needs LO < HI; got {text!r}.")
    return lo, hi
