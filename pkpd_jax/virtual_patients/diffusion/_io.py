"""The diffusion model's checkpoint file and the shipped pretrained model."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import equinox as eqx
import jax.random as jr
import numpy as np

from ...nn import checkpoint
from ..schema import VARIABLES
from ._network import (
    Denoiser,
    DiffusionConfig,
)
from ._sampler import VirtualPatientDiffusion


_FORMAT = "pkpd_jax.virtual_patients.diffusion/1"


# ---------------------------------------------------------------------------------------- checkpoints
def save(diffusion: VirtualPatientDiffusion, path: str | Path) -> Path:
    """Write `diffusion` to one file (JSON header line + equinox-serialised denoiser), atomically."""
    header = {
        "format": _FORMAT, "config": dataclasses.asdict(diffusion.config), "variables": list(VARIABLES),
        "mean": diffusion.mean.tolist(), "std": diffusion.std.tolist(),
        "weight_quantiles": diffusion.weight_quantiles.tolist(),
        "age_quantiles": diffusion.age_quantiles.tolist(), "meta": diffusion.meta,
    }
    return checkpoint.save(path, header, diffusion.model)


def load(path: str | Path) -> VirtualPatientDiffusion:
    """Read a checkpoint written by [`save`][]."""
    what = "virtual-patient diffusion checkpoint"
    header = checkpoint.read_header(path, format=_FORMAT, what=what)
    if tuple(header["variables"]) != VARIABLES:
        raise checkpoint.CheckpointError(f"{path} was trained on variables {header['variables']}, "
                                         f"not {list(VARIABLES)}.")
    config = DiffusionConfig(**header["config"])
    like = eqx.filter_eval_shape(Denoiser, config, key=jr.PRNGKey(0))
    _, model = checkpoint.load(path, like, format=_FORMAT, what=what)
    return VirtualPatientDiffusion(
        model=model, config=config, mean=np.asarray(header["mean"]), std=np.asarray(header["std"]),
        weight_quantiles=np.asarray(header["weight_quantiles"]),
        age_quantiles=np.asarray(header["age_quantiles"]),
        meta=header.get("meta", {}),
    )


def pretrained_path() -> Path:
    """The shipped checkpoint (package data)."""
    return Path(__file__).parent.parent / "pretrained" / "diffusion_physics.eqx"


def load_pretrained() -> VirtualPatientDiffusion:
    """The shipped physics-constrained model (trained by ``experiments/virtual_patients.py``)."""
    return load(pretrained_path())
