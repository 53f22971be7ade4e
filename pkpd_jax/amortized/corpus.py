"""Synthetic training corpora for amortized model selection: priors × designs -> parquet shards.

[`generate_corpus`][] writes ``n`` simulated, noisy, featurised trajectories of one family to a
directory of parquet shards plus ``manifest.json``. Every row is one subject of one model class.

**Classes and labels.** PK family: the 10 PK classes; a trajectory is (doses, concentrations).
PD family: the 10 PD classes, each driven by a random PK *driver* (default ``pk_2c_oral``, its
parameters drawn from its own priors, dosed orally, as an IV bolus or as an IV infusion into the
central compartment, so that the driver spans one- to two-exponential, absorption-limited and
infusion profiles); the joint model is simulated, the features are the observed concentration and
biomarker, the label is the PD class. Within a shard the classes are balanced (counts differ by at
most one) and the rows are shuffled.

**Parameters** are drawn from each class's declared priors (`Param.median`, `Param.log_sd`:
log-normal; logit-normal for fractions), untruncated, with one exception in PD corpora (default
``pd_potency="exposure"``): the potency of the drug is drawn relative to the subject's exposure,
``EC50`` (or ``IC50``) ``= C_ref·exp(1.5·z)`` and ``slope = 0.5·R0/C_ref·exp(z)`` with
``C_ref = dose / V1`` of the driver and ``z ~ N(0, 1)``. A fixed potency prior (median 1 mg/L)
against exposures that span four decades left most subjects either without a visible effect or
fully saturated, and a study whose potency sits far below the prior median (the bundled example:
IC50 0.01 mg/L) outside anything the selector had seen; drawn this way, potency spans the same
range as the exposures (5-95%: about 0.05-110 mg/L) and each subject's doses sit somewhere on
its concentration-effect curve, as a dose-ranging study intends.

**Designs** (Phase 1 like, each drawn with equal probability; nominal times in h, 25 samples,
the first pre-dose at 0):

- ``single``: one dose; samples to 336 h.
- ``daily``: 7 doses every 24 h; dense day 1 and day 7, troughs in between, then 168 and 192 h.
- ``weekly``: 4 doses every 168 h; a dense first week, troughs and a dense last week to 672 h.
- ``daily14``: 14 doses every 24 h (a typical multiple-ascending-dose cohort); dense day 1 and
  day 14, troughs every second day, washout to 576 h.

``designs=("single", "daily", "weekly")`` (with ``pd_sampling="shared"``, ``pd_potency="prior"``
for PD) reproduces corpora made before ``daily14`` existed, row for row.

Dose: one level per subject from ``DOSE_LEVELS_MG`` (5-1000 mg). ``pk_2c_iv_infusion`` (and PD
drivers given as infusions) get an infusion duration from ``INFUSION_DURATIONS_H``; other classes
are dosed as the class declares (bolus into its dose compartment). Sampling times are jittered:
the time after the most recent nominal dose is multiplied by ``exp(0.1·ε)``, capped at the next
dose (a trough stays pre-dose); 0 stays 0. Each sample is missing with probability 0.05 (PD:
a whole time 0.03, concentration only 0.05, biomarker only 0.05; the pre-dose biomarker, the
baseline, is always kept). PD corpora (default ``pd_sampling="mixed"``) give half the subjects
largely separate concentration and biomarker sampling instead, as most Phase 1 protocols do:
per subject, a fraction ``U(0.2, 0.5)`` of the times has the concentration only and a disjoint
fraction ``U(0.2, 0.5)`` the biomarker only (``PD_SEPARATE``); ``pd_sampling="shared"`` gives
every subject the shared design.

**Residual error** (per subject; ε ~ N(0, 1) independent):

- concentration: ``C_obs = C·(1 + σ_p·ε₁) + σ_a·ε₂`` with ``σ_p ~ U(0.05, 0.25)``, an assay
  limit ``LLOQ = max C(t_i) · 10^U(-3, -1.5)`` and ``σ_a = 0.2·LLOQ`` (20% CV at the LLOQ, the
  usual bioanalytical acceptance limit). ``C_obs < LLOQ`` is recorded as BLQ (value 0, flag set).
- biomarker (PD): ``R_obs = R·(1 + σ_p·ε₁) + σ_a·ε₂`` with ``σ_p ~ U(0.02, 0.10)``,
  ``σ_a = U(0.005, 0.03)·|R(0)|``; no quantification limit.

**Features and parameter targets**: see `pkpd_jax.amortized.batches` (the same [`featurize_batch`][]
is used for real subjects).

**Splits** by global trajectory index ``i`` (shard ``s`` holds ``i = s·shard_size + j``):
``i % 20 == 18`` is val, ``i % 20 == 19`` is test, the rest train (90/5/5).

**Simulation.** For each shard and class, subjects are sorted by design and by the stiffness of
their model (spectral radius of the Jacobian at the baseline state) and simulated in batches of
256 (one compilation per class), vmapped and split over all JAX devices with `jax.shard_map`.
The integrator is the simulator's batched one-loop Runge-Kutta path
(`pkpd_jax.solve.solve_erk`: Tsit5, one adaptive loop per subject over the whole horizon,
observations pre-dose; the path the population likelihood uses), in float32 with
``rtol=1e-4, atol=1e-6``. On these designs (``benchmarks/bench_corpus.py``, mix of 10 classes)
it was measured 3.5x (PK) and 16x (PD) faster than `simulate_population` in float64
(per-interval `diffeqsolve`, or matrix exponentials for linear models), float32 1.4-1.5x faster
than float64, with concentration errors ~2e-4 relative at the 99th percentile and < 2e-3 at
most, far below the >= 2% residual error. Sorting matters (1.7-1.9x) because a batched loop
runs until its slowest subject is done. While shard ``s + 1`` is simulated, a writer thread adds
noise, featurises and writes shard ``s``.

A few subjects per 10,000 make the fast path fail (its step size underflows in some long, stiff
decays, e.g. weekly IV doses with fast elimination); they are simulated again with `simulate` in
float64 (`FALLBACK`, counted as ``fallback`` in the manifest). A subject that fails both, or is
not finite, is dropped and counted; nothing non-finite is written. ``method="simulate"`` uses
`simulate` for everything.

**Determinism and resume.** All randomness of shard ``s`` comes from
``fold_in(fold_in(fold_in(key(seed), family), s), stream)`` (one stream each for classes and
designs, parameters, and noise), so a shard does not depend on which shards were made before it
or in which process. Shards are written to a temporary file, renamed, then recorded in the
manifest (atomically replaced) with their SHA-256; a rerun with the same arguments skips the
recorded shards whose checksum matches and makes the rest, so an interrupted run resumes where
it stopped and the result is byte-identical to an uninterrupted run (same platform and library
versions; measured identical with 1 and 2 devices). Arguments that change the content are
refused on resume.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .batches import (
    MANIFEST,
    SPLITS,
    _class_table,
    _constrain,
    class_names as family_class_names,
    feature_names,
    featurize_batch,
    n_params,
    normalise_params,
)


__all__ = [
    "CorpusConfig",
    "Design",
    "DESIGNS",
    "DEFAULT_DESIGNS",
    "DOSE_LEVELS_MG",
    "INFUSION_DURATIONS_H",
    "N_TIMES",
    "MAX_DOSES",
    "generate_corpus",
    "sample_shard",
    "simulate_shard",
    "split_of",
]

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
_STREAMS = {"design": 0, "params": 1, "noise": 2}


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


def _content_spec(cfg: CorpusConfig) -> dict:
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


def _fingerprint(spec: dict) -> str:
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()


# ----------------------------------------------------------------------------- randomness
def _rng(cfg: CorpusConfig, shard: int, stream: str) -> np.random.Generator:
    """numpy generator for one (shard, stream), seeded from a JAX key derived with `fold_in`."""
    import jax

    key = jax.random.key(cfg.seed)
    for k in (("pk", "pd").index(cfg.family), shard, _STREAMS[stream]):
        key = jax.random.fold_in(key, k)
    words = np.asarray(jax.random.key_data(key)).astype(np.uint64).tolist()
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(words)))


def _draw_prior(names_constraints_loc_sd, z: np.ndarray) -> np.ndarray:
    _, constraints, loc, sd = names_constraints_loc_sd
    u = loc + sd * z[:, : len(loc)]
    return np.stack([_constrain(c, u[:, i]) for i, c in enumerate(constraints)], axis=-1)


def _jitter(rng, m: int, design_idx: np.ndarray, designs: Sequence[Design]) -> np.ndarray:
    """Jittered sampling times [m, N_TIMES] (see the module docstring)."""
    eps = rng.standard_normal((m, N_TIMES))
    out = np.zeros((m, N_TIMES))
    for d, design in enumerate(designs):
        rows = design_idx == d
        nominal = np.asarray(design.sample_times, float)
        doses = np.asarray(design.dose_times, float)
        # most recent dose strictly before the sample (a sample at a dose time is pre-dose)
        k = np.searchsorted(doses, nominal, side="left") - 1
        ref = np.where(k >= 0, doses[np.maximum(k, 0)], 0.0)
        nxt = np.where(k + 1 < doses.size, doses[np.minimum(k + 1, doses.size - 1)], np.inf)
        tad = nominal - ref
        t = ref + tad * np.exp(JITTER_LOG_SD * eps[rows])
        out[rows] = np.minimum(t, nxt)
    return np.sort(out, axis=1)


def sample_shard(cfg: CorpusConfig, shard: int) -> dict[str, np.ndarray]:
    """Draw everything random about one shard (classes, designs, parameters, noise deviates).

    Returns numpy arrays with a leading axis of ``cfg.shard_rows(shard)`` rows.
    """
    if not 0 <= shard < cfg.n_shards:
        raise ValueError(f"shard {shard} is out of range: the corpus has {cfg.n_shards} shards.")
    m = cfg.shard_rows(shard)
    K = len(cfg.classes)
    table = _class_table(cfg.family)
    P = n_params(cfg.family)
    out: dict[str, np.ndarray] = {"index": shard * cfg.shard_size + np.arange(m, dtype=np.int64)}

    rng = _rng(cfg, shard, "design")
    label = rng.permutation(np.arange(m) % K).astype(np.int32)
    designs = cfg.design_list
    design = rng.integers(0, len(designs), m).astype(np.int8)
    level = rng.integers(0, len(DOSE_LEVELS_MG), m)
    inf_dur = np.asarray(INFUSION_DURATIONS_H)[rng.integers(0, len(INFUSION_DURATIONS_H), m)]
    if cfg.family == "pd":
        names = list(PD_DRIVER_ROUTE_P)
        route = 1 + rng.choice(len(names), size=m, p=list(PD_DRIVER_ROUTE_P.values()))
    else:  # the class's own dose compartment; infusions for the infusion class
        infusion_class = np.isin(np.asarray(cfg.classes)[label], INFUSION_CLASSES)
        route = np.where(infusion_class, ROUTES.index("iv infusion"), ROUTES.index("class default"))
    out["times"] = _jitter(rng, m, design, designs)
    u_miss = rng.random((m, N_TIMES, 3))
    out.update(label=label, design=design, route=route.astype(np.int8))

    dose_time = np.zeros((m, cfg.max_doses))
    dose_amount = np.zeros((m, cfg.max_doses))
    for d, des in enumerate(designs):
        rows = design == d
        nd = len(des.dose_times)
        dose_time[rows, :nd] = des.dose_times
        dose_time[rows, nd:] = des.dose_times[-1]
        dose_amount[rows, :nd] = np.asarray(DOSE_LEVELS_MG)[level[rows], None]
    infused = route == ROUTES.index("iv infusion")
    out["dose_time"] = dose_time
    out["dose_amount"] = dose_amount
    out["dose_duration"] = np.where(infused[:, None] & (dose_amount > 0), inf_dur[:, None], 0.0)

    # missing observations (never the pre-dose biomarker of PD: the baseline)
    if cfg.family == "pk":
        out["obs_mask"] = u_miss[..., 0] >= MISSING["pk"]
    else:
        row = u_miss[..., 0] < MISSING["pd_row"]
        c_miss = u_miss[..., 1] < MISSING["pd_conc"]
        r_miss = u_miss[..., 2] < MISSING["pd_resp"]
        if cfg.pd_sampling == "mixed":  # drawn after everything above: "shared" is unchanged
            sep = rng.random(m) < PD_SEPARATE["p"]
            f_c = rng.uniform(*PD_SEPARATE["conc_only"], m)[:, None]
            f_r = rng.uniform(*PD_SEPARATE["resp_only"], m)[:, None]
            u = rng.random((m, N_TIMES))  # disjoint: conc-only u < f_c, resp-only u > 1 - f_r
            c_miss = np.where(sep[:, None], u > 1.0 - f_r, c_miss)
            r_miss = np.where(sep[:, None], u < f_c, r_miss)
        row[:, 0] = False
        r_miss[:, 0] = False
        out["obs_mask"] = ~(row | (c_miss & r_miss))
        out["conc_missing"] = c_miss & ~r_miss
        out["resp_missing"] = r_miss & ~c_miss

    rng = _rng(cfg, shard, "params")
    z = rng.standard_normal((m, P))
    theta = np.zeros((m, P))
    for k, name in enumerate(cfg.classes):
        rows = label == k
        theta[rows, : len(table[name][0])] = _draw_prior(table[name], z[rows])
    out["theta"] = theta
    if cfg.family == "pd":
        driver = _class_table("pk")[cfg.pd_driver]
        out["driver_theta"] = _draw_prior(driver, rng.standard_normal((m, len(driver[0]))))
        if cfg.pd_potency == "exposure":  # drawn after the above: "prior" is unchanged
            _exposure_potency(cfg, out, table, driver[0], rng.standard_normal(m))

    rng = _rng(cfg, shard, "noise")
    out["conc_prop_sd"] = rng.uniform(*NOISE["conc_prop_sd"], m)
    out["lloq_rel"] = 10.0 ** rng.uniform(*NOISE["lloq_over_cmax_log10"], m)
    out["eps_conc"] = rng.standard_normal((m, N_TIMES, 2))
    if cfg.family == "pd":
        out["resp_prop_sd"] = rng.uniform(*NOISE["resp_prop_sd"], m)
        out["resp_add_rel"] = rng.uniform(*NOISE["resp_add_sd_over_baseline"], m)
        out["eps_resp"] = rng.standard_normal((m, N_TIMES, 2))
    return out


def _exposure_potency(cfg: CorpusConfig, out: dict, table: dict, driver_names, z: np.ndarray) -> None:
    """Redraw the potency parameters of PD subjects relative to their exposure (in place)."""
    volume = "V1" if "V1" in driver_names else "V"
    c_ref = out["dose_amount"][:, 0] / out["driver_theta"][:, list(driver_names).index(volume)]
    for k, name in enumerate(cfg.classes):
        rows = out["label"] == k
        names = table[name][0]
        for i, p in enumerate(names):
            if p in PD_POTENCY["potency_params"]:
                out["theta"][rows, i] = c_ref[rows] * np.exp(PD_POTENCY["log_sd"] * z[rows])
            elif p == "slope":
                r0 = out["theta"][rows, names.index("R0")]
                out["theta"][rows, i] = r0 / c_ref[rows] * PD_POTENCY["slope_effect_at_cref"] * np.exp(
                    PD_POTENCY["slope_log_sd"] * z[rows])


# ----------------------------------------------------------------------------- simulation
_SIM_CACHE: dict = {}


def _model(cfg: CorpusConfig, name: str):
    from ..models import get_model

    return get_model(name) if cfg.family == "pk" else get_model(cfg.pd_driver, name)


def _sim_fn(cfg: CorpusConfig, name: str, n_dev: int):
    """Jitted ``(theta, dose_time, dose_amount, dose_duration, dose_cmt, ts) -> (conc, resp,
    status)`` over a batch, split over `n_dev` devices; one per class and configuration."""
    key = ("sim", cfg.family, cfg.pd_driver, name, cfg.dtype, cfg.rtol, cfg.atol, cfg.max_steps, cfg.method,
           n_dev)
    if key in _SIM_CACHE:
        return _SIM_CACHE[key]
    import jax
    import numpy as onp
    from jax.sharding import Mesh, PartitionSpec

    from ..dosing import Regimen
    from ..solve import SolverConfig, erk_supported, simulate, solve_erk

    model = _model(cfg, name)
    method = cfg.method
    scfg = SolverConfig(rtol=cfg.rtol, atol=cfg.atol, max_steps=cfg.max_steps,
                        method="ode" if method == "erk" else "auto")
    if method == "erk" and not erk_supported(model, scfg):
        method = "simulate"

    def one(th, t, a, d, c, ts):
        reg = Regimen(t, a, d, c)
        if method == "erk":
            states, _, status, _ = solve_erk(model, th, reg, ts, scfg)
        else:
            sol = simulate(model, th, reg, ts, config=scfg)
            states, status = sol.states, sol.status
        conc, resp = jax.vmap(lambda y: model.observe(y, th))(states)
        return conc, resp, status

    body = jax.vmap(one)
    if n_dev > 1:
        mesh = Mesh(onp.asarray(jax.devices()[:n_dev]), ("subjects",))
        spec = PartitionSpec("subjects")
        body = jax.shard_map(body, mesh=mesh, in_specs=spec, out_specs=spec, check_vma=False)
    fn = jax.jit(body)
    _SIM_CACHE[key] = fn
    return fn


def _radius_fn(cfg: CorpusConfig, name: str):
    """Jitted batch of spectral-radius proxies: the Jacobian at the baseline state, zero input."""
    key = ("radius", cfg.family, cfg.pd_driver, name, cfg.dtype)
    if key in _SIM_CACHE:
        return _SIM_CACHE[key]
    import jax
    import jax.numpy as jnp

    model = _model(cfg, name)

    def jac(th):
        y0 = model.init(th)
        return jax.jacfwd(lambda y: model.vector_field(0.0, y, th, jnp.zeros_like(y)))(y0)

    fn = jax.jit(jax.vmap(jac))
    _SIM_CACHE[key] = fn
    return fn


def _x64_ctx(cfg: CorpusConfig):
    import jax

    return jax.enable_x64(cfg.dtype == "float64")


def _batch_size(cfg: CorpusConfig, n_dev: int) -> int:
    """Subjects per compiled call: fixed for a configuration (so one compilation per class)."""
    largest_group = -(-cfg.shard_size // len(cfg.classes))
    b = min(cfg.batch_size, largest_group)
    return -(-b // n_dev) * n_dev


def _class_args(cfg: CorpusConfig, draw: dict, name: str, rows: np.ndarray, np_dtype) -> list[np.ndarray]:
    """Simulator inputs of one class's rows: theta, dose time/amount/duration/compartment, times."""
    model = _model(cfg, name)
    p = len(_class_table(cfg.family)[name][0])
    theta = draw["theta"][rows, :p]
    if cfg.family == "pd":
        theta = np.concatenate([draw["driver_theta"][rows], theta], axis=1)
    route = draw["route"][rows]
    cmt = np.where(route == ROUTES.index("oral"), model.pk.dose_cmt, model.pk.central)
    cmt = np.where(route == ROUTES.index("class default"), -1, cmt)
    cmt = np.broadcast_to(cmt[:, None], draw["dose_amount"][rows].shape)
    cmt = np.where(draw["dose_amount"][rows] > 0, cmt, -1).astype(np.int32)
    args = [theta, draw["dose_time"][rows], draw["dose_amount"][rows], draw["dose_duration"][rows], cmt,
            draw["times"][rows]]
    return [a if a.dtype == np.int32 else a.astype(np_dtype) for a in args]


def _pad_rows(args: list[np.ndarray], idx: np.ndarray, size: int) -> list[np.ndarray]:
    """Rows `idx` of every argument, padded to `size` rows by repeating the last one."""
    pad = size - idx.size
    return [np.concatenate([a[idx], np.repeat(a[idx[-1:]], pad, axis=0)]) for a in args]


#: The fallback for the few subjects the fast path cannot integrate (its step size underflows on
#: some long, stiff decays): `simulate` in float64 (matrix exponentials for linear models,
#: diffrax Tsit5 per dosing interval otherwise), in calls of this many subjects.
FALLBACK = {"method": "simulate", "dtype": "float64", "rtol": 1e-6, "atol": 1e-9, "batch": 16}


def simulate_shard(
    cfg: CorpusConfig,
    draw: dict[str, np.ndarray],
    *,
    n_dev: int | None = None,
    on_batch: Callable[[int], None] | None = None,
    fallback: bool = True,
    sort: bool = True,
) -> dict[str, np.ndarray]:
    """Noise-free concentrations ``[m, T]``, responses ``[m, T]``, statuses ``[m]`` (0 = success)
    and ``fallback`` ``[m]`` (True where the fallback integrator was used) of a shard.

    `n_dev`: devices to split each batch over (default all); `on_batch(k)`: called as batches of
    `k` subjects finish; `fallback`: re-simulate failures with `FALLBACK`; `sort`: batch subjects
    by design and stiffness (False only to measure what sorting gains)."""
    import jax

    n_dev = len(jax.devices()) if n_dev is None else n_dev
    m = draw["label"].shape[0]
    conc = np.zeros((m, N_TIMES))
    resp = np.zeros((m, N_TIMES))
    status = np.zeros(m, np.int32)
    used_fallback = np.zeros(m, bool)
    B = _batch_size(cfg, n_dev)
    np_dtype = np.float32 if cfg.dtype == "float32" else np.float64
    pending = []
    with _x64_ctx(cfg):
        for k, name in enumerate(cfg.classes):
            rows = np.flatnonzero(draw["label"] == k)
            if rows.size == 0:
                continue
            args = _class_args(cfg, draw, name, rows, np_dtype)
            # sort by design, then by stiffness: a batched loop runs as long as its slowest subject
            jac = np.asarray(_radius_fn(cfg, name)(args[0]), float)
            radius = np.max(np.abs(np.linalg.eigvals(jac)), axis=-1)
            order = np.lexsort((radius, draw["design"][rows])) if sort else np.arange(rows.size)
            fn = _sim_fn(cfg, name, n_dev)
            for lo in range(0, rows.size, B):  # dispatched asynchronously, collected below
                idx = order[lo : lo + B]
                pending.append((rows[idx], fn(*_pad_rows(args, idx, B))))
        for dest, result in pending:
            c, r, s = (np.asarray(x) for x in jax.block_until_ready(result))
            n = dest.size
            conc[dest], resp[dest], status[dest] = c[:n], r[:n], s[:n]
            if on_batch is not None:
                on_batch(n)
    bad = (status != 0) | ~np.all(np.isfinite(conc), axis=1) | ~np.all(np.isfinite(resp), axis=1)
    if fallback and bad.any():
        fb = dataclasses.replace(cfg, **{k: FALLBACK[k] for k in ("method", "dtype", "rtol", "atol")})
        size = -(-FALLBACK["batch"] // n_dev) * n_dev
        with _x64_ctx(fb):
            for k, name in enumerate(cfg.classes):
                rows = np.flatnonzero(bad & (draw["label"] == k))
                if rows.size == 0:
                    continue
                args = _class_args(fb, draw, name, rows, np.float64)
                fn = _sim_fn(fb, name, n_dev)
                for lo in range(0, rows.size, size):
                    idx = np.arange(lo, min(lo + size, rows.size))
                    c, r, s = (np.asarray(x) for x in fn(*_pad_rows(args, idx, size)))
                    dest = rows[idx]
                    conc[dest], resp[dest], status[dest] = c[: idx.size], r[: idx.size], s[: idx.size]
                    used_fallback[dest] = True
    return {"conc": conc, "resp": resp, "status": status, "fallback": used_fallback}


# ----------------------------------------------------------------------------- noise and rows
def _observe(cfg: CorpusConfig, draw: dict, sim: dict) -> dict[str, np.ndarray]:
    """Residual error, BLQ, missingness, featurisation and targets; failed rows removed."""
    c_true = np.maximum(sim["conc"], 0.0)
    finite = np.all(np.isfinite(sim["conc"]), axis=1) & np.all(np.isfinite(sim["resp"]), axis=1)
    ok = (sim["status"] == 0) & finite
    cmax = np.max(np.where(np.isfinite(c_true), c_true, 0.0), axis=1)
    lloq = draw["lloq_rel"] * cmax
    ok &= lloq > 0
    sp, sa = draw["conc_prop_sd"][:, None], (NOISE["conc_add_sd_over_lloq"] * lloq)[:, None]
    e = draw["eps_conc"]
    c_obs = c_true * (1.0 + sp * e[..., 0]) + sa * e[..., 1]
    blq = c_obs < lloq[:, None]
    mask = draw["obs_mask"].copy()
    extra = {}
    if cfg.family == "pd":
        r_true = sim["resp"]
        base = np.abs(r_true[:, 0])
        r_sp = draw["resp_prop_sd"][:, None]
        r_sa = (draw["resp_add_rel"] * base)[:, None]
        r_obs = r_true * (1.0 + r_sp * draw["eps_resp"][..., 0]) + r_sa * draw["eps_resp"][..., 1]
        c_missing, r_missing = draw["conc_missing"], draw["resp_missing"]
        blq &= ~c_missing
        extra = {"resp": np.where(r_missing, np.nan, r_obs), "conc_missing": c_missing,
                 "resp_missing": r_missing}
    else:
        c_missing = np.zeros_like(blq)
    conc = np.where(blq | c_missing, 0.0, c_obs)

    # real observations first, in time order (the featuriser's order, so raw columns align)
    order = np.lexsort((np.where(mask, draw["times"], 0.0), ~mask), axis=-1)
    g = lambda a: np.take_along_axis(a, order, axis=1)
    times, mask, conc, blq, c_missing = g(draw["times"]), g(mask), g(conc), g(blq), g(c_missing)
    extra = {k: g(v) for k, v in extra.items()}
    t_f, v_f, m_f = featurize_batch(
        cfg.family, times, mask, conc, draw["dose_time"], draw["dose_amount"], draw["dose_duration"],
        conc_blq=blq, n_times=N_TIMES, **extra,
    )
    ok &= np.all(np.isfinite(v_f), axis=(1, 2))

    P = n_params(cfg.family)
    params = np.zeros((len(ok), P))
    pmask = np.zeros((len(ok), P), bool)
    for k, name in enumerate(cfg.classes):
        rows = draw["label"] == k
        p = len(_class_table(cfg.family)[name][0])
        params[rows] = normalise_params(name, draw["theta"][rows, :p])
        pmask[rows, :p] = True
    rows = {
        "index": draw["index"],
        "split": split_of(draw["index"]),
        "label": draw["label"].astype(np.int32),
        "design": draw["design"],
        "route": draw["route"],
        "n_obs": m_f.sum(axis=1).astype(np.int16),
        "times": t_f,
        "values": v_f,
        "mask": m_f,
        "params": params.astype(np.float32),
        "param_mask": pmask,
        "theta": draw["theta"],
        "conc": (conc * mask).astype(np.float32),
        "conc_blq": blq & mask,
        "dose_time": draw["dose_time"].astype(np.float32),
        "dose_amount": draw["dose_amount"].astype(np.float32),
        "dose_duration": draw["dose_duration"].astype(np.float32),
        "conc_prop_sd": draw["conc_prop_sd"].astype(np.float32),
        "conc_add_sd": (NOISE["conc_add_sd_over_lloq"] * lloq).astype(np.float32),
        "lloq": lloq.astype(np.float32),
    }
    if cfg.family == "pd":
        r = extra["resp"]
        rows.update(
            conc_missing=extra["conc_missing"] & mask,
            resp=np.where(np.isfinite(r) & mask, r, 0.0).astype(np.float32),
            resp_missing=extra["resp_missing"] & mask,
            driver_theta=draw["driver_theta"],
            resp_prop_sd=draw["resp_prop_sd"].astype(np.float32),
            resp_add_sd=(draw["resp_add_rel"] * np.abs(sim["resp"][:, 0])).astype(np.float32),
        )
    for k in ("theta", "driver_theta"):
        if k in rows:
            ok &= np.all(np.isfinite(rows[k]), axis=1)
    return {"rows": {k: v[ok] for k, v in rows.items()}, "ok": ok}


def _arrow_table(rows: dict[str, np.ndarray]):
    import pyarrow as pa

    cols = {}
    for name, arr in rows.items():
        arr = np.ascontiguousarray(arr)
        if arr.ndim == 1:
            cols[name] = pa.array(arr)
        else:
            width = int(np.prod(arr.shape[1:]))
            cols[name] = pa.FixedSizeListArray.from_arrays(pa.array(arr.reshape(-1)), width)
    return pa.table(cols)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _write_shard(out: Path, shard: int, rows: dict[str, np.ndarray], fingerprint: str) -> dict:
    """Write one shard (train, val and test rows as separate row groups); return its manifest entry."""
    import pyarrow.parquet as pq

    name = f"shard-{shard:05d}.parquet"
    order = np.lexsort((rows["index"], rows["split"]))
    table = _arrow_table({k: v[order] for k, v in rows.items()})
    split = rows["split"][order]
    meta = {b"pkpd_jax.corpus": json.dumps({"shard": shard, "fingerprint": fingerprint}).encode()}
    table = table.replace_schema_metadata(meta)
    tmp = out / (name + ".tmp")
    splits = {}
    # no dictionaries or statistics: float noise does not repeat, and the loader reads whole row groups
    with pq.ParquetWriter(tmp, table.schema, compression="zstd", use_dictionary=False,
                          write_statistics=False) as writer:
        rg = 0
        for code, s in enumerate(SPLITS):
            sel = np.flatnonzero(split == code)
            if sel.size == 0:
                splits[s] = {"row_group": None, "rows": 0}
                continue
            writer.write_table(table.slice(int(sel[0]), int(sel.size)), row_group_size=int(sel.size))
            splits[s] = {"row_group": rg, "rows": int(sel.size)}
            rg += 1
    os.replace(tmp, out / name)
    return {"index": shard, "file": name, "sha256": _sha256(out / name), "bytes": (out / name).stat().st_size,
            "splits": splits}


# ----------------------------------------------------------------------------- manifest
def _write_json(path: Path, obj: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1) + "\n")
    os.replace(tmp, path)


def _priors(cfg: CorpusConfig) -> dict:
    from ..models import get_pd, get_pk

    get = get_pk if cfg.family == "pk" else get_pd
    out = {name: [p.to_dict() for p in get(name).params] for name in cfg.classes}
    return out


def _new_manifest(cfg: CorpusConfig, spec: dict, fingerprint: str) -> dict:
    from .. import __version__

    man = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "fingerprint": fingerprint,
        "family": cfg.family,
        "seed": cfg.seed,
        "n": cfg.n,
        "shard_size": cfg.shard_size,
        "n_shards": cfg.n_shards,
        "classes": list(cfg.classes),
        "class_params": {c: list(_class_table(cfg.family)[c][0]) for c in cfg.classes},
        "priors": _priors(cfg),
        "n_times": N_TIMES,
        "n_features": len(feature_names(cfg.family)),
        "n_params": n_params(cfg.family),
        "max_doses": cfg.max_doses,
        "features": {"names": list(feature_names(cfg.family)),
                     "doc": "pkpd_jax.amortized.batches (module docstring): definitions and scales"},
        "params": "normalised log space: (u(theta) - prior_loc) / prior_log_sd, u = log (logit for "
                  "'unit' parameters); slot p = p-th parameter of the class",
        "spec": spec,
        "splits": {"rule": SPLIT_RULE, "fractions": {"train": 0.9, "val": 0.05, "test": 0.05}},
        "library": {"pkpd_jax": __version__},
        "complete": False,
        "shards": [],
        "counts": {},
        "timing": {},
    }
    if cfg.family == "pd":
        from ..models import get_pk

        man["pd_driver"] = {"class": cfg.pd_driver, "routes": PD_DRIVER_ROUTE_P,
                            "priors": [p.to_dict() for p in get_pk(cfg.pd_driver).params]}
    return man


def _update_counts(man: dict) -> None:
    classes = man["classes"]
    c = {"requested": 0, "written": 0, "failed": 0, **{s: 0 for s in SPLITS},
         "per_class": {k: 0 for k in classes}, "failed_per_class": {k: 0 for k in classes}}
    for s in man["shards"]:
        c["requested"] += s["requested"]
        c["written"] += s["rows"]
        c["failed"] += s["failed"]
        for sp in SPLITS:
            c[sp] += s["splits"][sp]["rows"]
        for k in classes:
            c["per_class"][k] += s["per_class"][k]
            c["failed_per_class"][k] += s["failed_per_class"][k]
    man["counts"] = c
    man["shards_done"] = len(man["shards"])
    man["complete"] = len(man["shards"]) == man["n_shards"]


def _load_for_resume(out: Path, fingerprint: str, spec: dict, verify: bool) -> dict | None:
    """The existing manifest of `out` (None if there is none) with the shards that are intact."""
    path = out / MANIFEST
    if not path.is_file():
        return None
    man = json.loads(path.read_text())
    if man.get("fingerprint") != fingerprint:
        old = (man.get("spec") or {}).get("config", {})
        diff = [f"{k} {old.get(k)!r} (existing) vs {v!r} (requested)" for k, v in spec["config"].items()
                if old.get(k) != v]
        raise ValueError(
            f"{out} holds a corpus made with other settings ({'; '.join(diff) or 'another format version'}); "
            "use another output directory, or the original settings to resume it."
        )
    kept = []
    for s in man["shards"]:
        f = out / s["file"]
        if f.is_file() and f.stat().st_size == s["bytes"] and (not verify or _sha256(f) == s["sha256"]):
            kept.append(s)
    man["shards"] = kept
    return man


# ----------------------------------------------------------------------------- driver
def _progress_bar(description: str, total: int, done: int):
    """A rich progress bar: trajectories done, rate (trajectories/s), elapsed time and ETA."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        ProgressColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )
    from rich.text import Text

    class Rate(ProgressColumn):
        def render(self, task):
            speed = task.finished_speed or task.speed
            return Text("-- traj/s" if speed is None else f"{speed:,.0f} traj/s", style="progress.data.speed")

    bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), Rate(),
                   TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), speed_estimate_period=60.0)
    task = bar.add_task(description, total=total, completed=done)
    return bar, task


def generate_corpus(
    out,
    family: str,
    n: int,
    seed: int,
    *,
    shard_size: int = 20_000,
    classes: Sequence[str] | None = None,
    pd_driver: str = "pk_2c_oral",
    dtype: str = "float32",
    rtol: float = 1e-4,
    atol: float = 1e-6,
    max_steps: int = 4096,
    method: str = "erk",
    batch_size: int = 256,
    pd_sampling: str = "mixed",
    pd_potency: str = "exposure",
    designs: Sequence[str] = DEFAULT_DESIGNS,
    progress: bool | Callable[[int, int], None] = True,
    max_shards: int | None = None,
    stop: Callable[[], bool] | None = None,
    verify: bool = True,
) -> dict:
    """Generate (or resume) a corpus in directory `out`; return the manifest.

    **Arguments:** `family`, `n`, `seed`, `shard_size`, `classes`, `pd_driver`, `dtype`, `rtol`,
    `atol`, `max_steps`, `method`, `batch_size`, `pd_sampling`, `pd_potency`, `designs`: see
    [`CorpusConfig`][] and the module docstring.

    **Other arguments:**

    - `progress`: a rich progress bar with rate and ETA (True), none (False), or a callback
      ``(done, total)`` called as trajectories finish.
    - `max_shards`: make at most this many new shards in this call, then return (the manifest
      says ``complete: false``; call again to go on).
    - `stop`: called between shards; returning True ends the call like `max_shards`.
    - `verify`: re-check the SHA-256 of existing shards before resuming (a shard that does not
      match is made again).

    Shards are independent of each other and of the order they are made in; a second call with
    the same arguments resumes (or, when complete, returns the manifest unchanged).
    """
    import jax

    cfg = CorpusConfig(family=family, n=int(n), seed=int(seed), shard_size=int(shard_size),
                       classes=None if classes is None else tuple(classes), pd_driver=pd_driver, dtype=dtype,
                       rtol=float(rtol), atol=float(atol), max_steps=int(max_steps), method=method,
                       batch_size=int(batch_size), pd_sampling=pd_sampling, pd_potency=pd_potency,
                       designs=tuple(designs))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for tmp in out.glob("*.tmp"):
        tmp.unlink()
    spec = _content_spec(cfg)
    fingerprint = _fingerprint(spec)
    man = _load_for_resume(out, fingerprint, spec, verify)
    if man is None:
        man = _new_manifest(cfg, spec, fingerprint)
    n_dev = len(jax.devices())
    man["library"].update(jax=jax.__version__, platform=jax.devices()[0].platform, devices=n_dev)
    done = {s["index"] for s in man["shards"]}
    todo = [s for s in range(cfg.n_shards) if s not in done]
    _update_counts(man)
    _write_json(out / MANIFEST, man)

    total_done = sum(cfg.shard_rows(s) for s in done)
    bar = task = None
    callback = progress if callable(progress) else None
    if progress is True and todo:
        bar, task = _progress_bar(f"corpus {family} seed {seed}", cfg.n, total_done)
        bar.start()
    counter = [total_done]

    def on_batch(k):
        counter[0] += k
        if bar is not None:
            bar.update(task, completed=counter[0])
        if callback is not None:
            callback(counter[0], cfg.n)

    def finish(shard: int, draw: dict, sim: dict, t0: float) -> None:
        """Noise, features, the shard file and its manifest entry (runs on the writer thread)."""
        obs = _observe(cfg, draw, sim)
        entry = _write_shard(out, shard, obs["rows"], fingerprint)
        ok, label, status = obs["ok"], draw["label"], sim["status"]
        entry.update(
            requested=int(label.size),
            rows=int(ok.sum()),
            failed=int((~ok).sum()),
            per_class={c: int(np.sum(ok & (label == k))) for k, c in enumerate(cfg.classes)},
            failed_per_class={c: int(np.sum(~ok & (label == k))) for k, c in enumerate(cfg.classes)},
            failed_by_status={str(int(v)): int(np.sum(~ok & (status == v))) for v in np.unique(status[~ok])},
            fallback=int(sim["fallback"].sum()),
        )
        man["shards"] = sorted(man["shards"] + [entry], key=lambda s: s["index"])
        man["timing"][str(shard)] = round(time.perf_counter() - t0, 3)
        _update_counts(man)
        _write_json(out / MANIFEST, man)

    # The host work of shard s (noise, features, parquet, checksum) runs on one writer thread
    # while shard s + 1 is simulated; shards are recorded one at a time, in order.
    made = 0
    t_start = time.perf_counter()
    writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="corpus-writer")
    pending = None
    try:
        for shard in todo:
            if (max_shards is not None and made >= max_shards) or (stop is not None and stop()):
                break
            t0 = time.perf_counter()
            draw = sample_shard(cfg, shard)
            sim = simulate_shard(cfg, draw, n_dev=n_dev, on_batch=on_batch)
            if pending is not None:
                pending.result()  # raises the writer's error, if any
            pending = writer.submit(finish, shard, draw, sim, t0)
            made += 1
        if pending is not None:
            pending.result()
    finally:
        writer.shutdown(wait=True)  # an interrupted run still records the shard being written
        if bar is not None:
            bar.stop()
    elapsed = time.perf_counter() - t_start
    if made:
        n_made = sum(cfg.shard_rows(s) for s in todo[:made])
        man["timing"]["last_call"] = {"shards": made, "trajectories": n_made, "seconds": round(elapsed, 3),
                                      "traj_per_s": round(n_made / elapsed, 1)}
        _write_json(out / MANIFEST, man)
    return man

