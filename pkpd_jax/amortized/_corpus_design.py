"""Corpus designs and configuration: the dosing/sampling designs, the constants that shape a
corpus's content, [`CorpusConfig`][], the split rule and the content fingerprint (see
`pkpd_jax.amortized.corpus` for the whole method)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass

import numpy as np

from .batches import class_names as family_class_names


FORMAT = "pkpd_jax.corpus"
FORMAT_VERSION = 1
N_TIMES = 25
MAX_DOSES = 14


@dataclass(frozen=True)
class Design:
    """A dosing and sampling design: nominal dose times and 25 nominal sampling times (h)."""

    name: str
    dose_times: tuple[float, ...]
    sample_times: tuple[float, ...]

    def __post_init__(self):
        if len(self.sample_times) != N_TIMES or len(self.dose_times) > MAX_DOSES:
            raise ValueError(f"design {self.name}: needs {N_TIMES} samples and <= {MAX_DOSES} doses.")


DESIGNS = (
    Design(
        "single",
        (0.0,),
        (0, 0.25, 0.5, 1, 1.5, 2, 3, 4, 6, 8, 10, 12, 16, 24, 32, 48, 56, 72, 96, 120, 144, 168, 216,
         264, 336),
    ),
    Design(
        "daily",
        tuple(24.0 * k for k in range(7)),
        (0, 0.5, 1, 2, 3, 4, 6, 8, 12, 24, 48, 72, 96, 120, 144, 144.5, 145, 146, 147, 148, 150, 152,
         156, 168, 192),
    ),
    Design(
        "weekly",
        tuple(168.0 * k for k in range(4)),
        (0, 1, 2, 4, 8, 24, 48, 72, 120, 168, 169, 172, 192, 336, 337, 340, 360, 504, 505, 508, 512,
         528, 552, 600, 672),
    ),
    Design(
        "daily14",
        tuple(24.0 * k for k in range(14)),
        (0, 0.5, 1, 2, 4, 8, 12, 24, 72, 120, 168, 216, 264, 312, 312.5, 313, 314, 316, 320, 324, 336,
         360, 408, 480, 576),
    ),
)
DEFAULT_DESIGNS = ("single", "daily", "weekly", "daily14")
DOSE_LEVELS_MG = (5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0)
INFUSION_DURATIONS_H = (0.5, 1.0, 2.0, 4.0)
INFUSION_CLASSES = ("pk_2c_iv_infusion",)
ROUTES = ("class default", "oral", "iv bolus", "iv infusion")
PD_DRIVER_ROUTE_P = {"oral": 0.5, "iv bolus": 0.25, "iv infusion": 0.25}
JITTER_LOG_SD = 0.1
MISSING = {"pk": 0.05, "pd_row": 0.03, "pd_conc": 0.05, "pd_resp": 0.05}
# PD sampling "mixed": this fraction of subjects has concentration and biomarker sampled largely
# at different times (per-subject fractions of concentration-only and biomarker-only rows).
PD_SEPARATE = {"p": 0.5, "conc_only": [0.2, 0.5], "resp_only": [0.2, 0.5]}
# PD potency "exposure": EC50 / IC50 = C_ref·exp(log_sd·z), slope = R0 / C_ref·exp(log(0.5) +
# slope_log_sd·z) with C_ref = dose / driver V1 (the first dose's initial concentration scale).
PD_POTENCY = {"potency_params": ["EC50", "IC50"], "log_sd": 1.5, "slope_effect_at_cref": 0.5,
              "slope_log_sd": 1.0}
NOISE = {
    "conc_prop_sd": [0.05, 0.25],
    "lloq_over_cmax_log10": [-3.0, -1.5],
    "conc_add_sd_over_lloq": 0.2,
    "resp_prop_sd": [0.02, 0.10],
    "resp_add_sd_over_baseline": [0.005, 0.03],
}
SPLIT_RULE = "index % 20 == 18 -> val, index % 20 == 19 -> test, else train"
STREAMS = {"design": 0, "params": 1, "noise": 2}


def split_of(index) -> np.ndarray:
    """Split code (0 train, 1 val, 2 test) of global trajectory indices."""
    r = np.asarray(index) % 20
    return np.where(r == 18, 1, np.where(r == 19, 2, 0)).astype(np.int8)


# ----------------------------------------------------------------------------- configuration
@dataclass(frozen=True)
class CorpusConfig:
    """Everything that determines a corpus's content (stored in the manifest; checked on resume).

    - `family`: ``"pk"`` or ``"pd"``; `n`: trajectories requested; `seed`: 0 <= seed < 2**31.
    - `shard_size`: trajectories per shard (the unit of resume and of the loader's shuffle).
    - `classes`: a subset of the family's classes (default all 10; labels index this tuple).
    - `pd_driver`: the PK class driving PD corpora.
    - `dtype`, `rtol`, `atol`, `max_steps`: integration precision (see the module docstring).
    - `method`: ``"erk"`` (default) or ``"simulate"`` (`simulate_population`).
    - `batch_size`: subjects per compiled simulation call (rounded to the device count).
    - `pd_sampling` (PD only): ``"mixed"`` (default; half the subjects have concentration and
      biomarker sampled largely at different times, as most Phase 1 studies do) or ``"shared"``
      (both at every time, up to the 5% missing; the design of earlier corpora).
    - `designs`: names of the designs drawn from (default all four; see the module docstring).
    - `pd_potency` (PD only): ``"exposure"`` (default; EC50 / IC50 / slope drawn relative to the
      subject's exposure, so potency spans the dose range) or ``"prior"`` (the class's declared
      prior; earlier corpora).
    """

    family: str
    n: int
    seed: int
    shard_size: int = 20_000
    classes: tuple[str, ...] | None = None
    pd_driver: str = "pk_2c_oral"
    dtype: str = "float32"
    rtol: float = 1e-4
    atol: float = 1e-6
    max_steps: int = 4096
    method: str = "erk"
    batch_size: int = 256
    pd_sampling: str = "mixed"
    pd_potency: str = "exposure"
    designs: tuple[str, ...] = DEFAULT_DESIGNS

    def __post_init__(self):
        if self.family not in ("pk", "pd"):
            raise ValueError(f"`family` must be 'pk' or 'pd'; got {self.family!r}.")
        if not (isinstance(self.n, int) and self.n >= 1):
            raise ValueError(f"`n` must be an integer >= 1; got {self.n!r}.")
        if not (isinstance(self.seed, int) and 0 <= self.seed < 2**31):
            raise ValueError(f"`seed` must be an integer in [0, 2**31); got {self.seed!r}.")
        if self.shard_size < 1 or self.batch_size < 1:
            raise ValueError(
                f"`shard_size` and `batch_size` must be >= 1; got {self.shard_size}, {self.batch_size}."
            )
        known = family_class_names(self.family)
        classes = known if self.classes is None else tuple(self.classes)
        bad = [c for c in classes if c not in known]
        if bad or not classes or len(set(classes)) != len(classes):
            raise ValueError(
                f"`classes` must be distinct {self.family.upper()} classes; got {list(classes)} "
                f"(unknown: {bad}). Known: {', '.join(known)}."
            )
        object.__setattr__(self, "classes", classes)
        if self.dtype not in ("float32", "float64"):
            raise ValueError(f"`dtype` must be 'float32' or 'float64'; got {self.dtype!r}.")
        if self.method not in ("erk", "simulate"):
            raise ValueError(f"`method` must be 'erk' or 'simulate'; got {self.method!r}.")
        known_designs = [d.name for d in DESIGNS]
        designs = tuple(self.designs)
        if not designs or len(set(designs)) != len(designs) or any(d not in known_designs for d in designs):
            raise ValueError(f"`designs` must be distinct names among {known_designs}; got {list(designs)}.")
        object.__setattr__(self, "designs", designs)
        if self.pd_sampling not in ("mixed", "shared"):
            raise ValueError(f"`pd_sampling` must be 'mixed' or 'shared'; got {self.pd_sampling!r}.")
        if self.pd_potency not in ("exposure", "prior"):
            raise ValueError(f"`pd_potency` must be 'exposure' or 'prior'; got {self.pd_potency!r}.")
        if self.family == "pd" and self.pd_driver not in family_class_names("pk"):
            raise ValueError(f"`pd_driver` must be a PK class; got {self.pd_driver!r}.")

    @property
    def design_list(self) -> tuple[Design, ...]:
        """The designs drawn from, in the order of the ``design`` column's codes."""
        by_name = {d.name: d for d in DESIGNS}
        return tuple(by_name[n] for n in self.designs)

    @property
    def max_doses(self) -> int:
        """Columns of the dose arrays: the most doses of any design drawn from."""
        return max(len(d.dose_times) for d in self.design_list)

    @property
    def n_shards(self) -> int:
        return -(-self.n // self.shard_size)

    def shard_rows(self, shard: int) -> int:
        return min(self.shard_size, self.n - shard * self.shard_size)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["classes"] = list(self.classes)
        d["designs"] = list(self.designs)
        return d


def content_spec(cfg: CorpusConfig) -> dict:
    """The configuration plus every constant that shapes the content (the resume fingerprint)."""
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "config": cfg.to_dict(),
        "designs": [dataclasses.asdict(d) for d in cfg.design_list],
        "dose_levels_mg": list(DOSE_LEVELS_MG),
        "infusion_durations_h": list(INFUSION_DURATIONS_H),
        "infusion_classes": list(INFUSION_CLASSES),
        "pd_driver_routes": PD_DRIVER_ROUTE_P if cfg.family == "pd" else None,
        "jitter_log_sd": JITTER_LOG_SD,
        "missing": MISSING,
        "pd_separate": PD_SEPARATE if cfg.family == "pd" and cfg.pd_sampling == "mixed" else None,
        "pd_potency": PD_POTENCY if cfg.family == "pd" and cfg.pd_potency == "exposure" else None,
        "noise": NOISE,
        "split_rule": SPLIT_RULE,
    }


def content_fingerprint(spec: dict) -> str:
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()
