"""Training presets of the model-selection Transformer (architecture and optimiser settings by name)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from .encoder import ModelConfig


__all__ = ["Preset", "PRESETS", "get_preset"]


# --------------------------------------------------------------------------------------- presets
@dataclass(frozen=True)
class Preset:
    """Network size and optimisation hyper-parameters.

    `lam` is the weight λ of the masked parameter MSE in the loss; `batch_size` is the default
    batch size of the `train` command.
    """

    name: str
    d_model: int
    n_heads: int
    n_layers: int
    d_ff: int
    dropout: float
    lr: float
    weight_decay: float
    lam: float
    batch_size: int = 256
    warmup_frac: float = 0.05
    end_lr_frac: float = 0.01
    clip_norm: float = 1.0

    def model_config(self, n_features: int, n_classes: int, n_params: int) -> ModelConfig:
        return ModelConfig(
            n_features=n_features, n_classes=n_classes, n_params=n_params, d_model=self.d_model,
            n_heads=self.n_heads, n_layers=self.n_layers, d_ff=self.d_ff, dropout=self.dropout,
        )

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        # For tests and CPU smoke runs.
        Preset("tiny", 32, 2, 2, 64, 0.0, 1e-3, 1e-2, 1.0, batch_size=64),
        # Sized to train on 2 CPU cores in minutes (the first shipped PD selector, 200k trajectories).
        Preset("cpu48", 48, 4, 3, 96, 0.0, 1e-3, 1e-2, 1.0, batch_size=128),
        # ref64's shape without dropout (which costs 2.2x per step on CPU; 1M trajectories seen a
        # few times each do not overfit): the shipped PK and PD selectors, 1M trajectories each on CPU.
        Preset("cpu64", 64, 4, 4, 256, 0.0, 1e-3, 1e-2, 1.0, batch_size=256),
        # The five configurations of the reference study (d_model/heads/layers/FF/dropout/lr/wd/λ).
        Preset("ref64", 64, 4, 4, 256, 0.10, 3e-4, 1e-2, 1.0),
        Preset("ref128", 128, 8, 4, 512, 0.10, 3e-4, 1e-2, 1.0),
        Preset("ref128x6", 128, 8, 6, 512, 0.15, 2e-4, 2e-2, 0.7),
        Preset("ref192", 192, 8, 6, 768, 0.15, 2e-4, 1e-2, 1.2),
        Preset("ref128x8", 128, 8, 8, 512, 0.10, 2e-4, 1e-2, 1.0),
    )
}


def get_preset(name: str | Preset) -> Preset:
    """The preset called `name` (a [`Preset`][] passes through)."""
    if isinstance(name, Preset):
        return name
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}.")
    return PRESETS[name]


