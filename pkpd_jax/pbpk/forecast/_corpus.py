"""The forecaster's corpus: random drugs and subjects, their descriptors, and their exact plasma
curves (see the "Corpus" and "Inputs" paragraphs of `pkpd_jax.pbpk.forecast`)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import jax.numpy as jnp
import numpy as np

from ..._x64 import x64
from ...dosing import Regimen
from ...models import get_model
from ...solve import SolverConfig, simulate_population
from ..model import (
    IV_CMT,
    ORAL_CMT,
    STATES,
    clearance_analytic,
    oral_bioavailability,
    pbpk_params,
    vss_analytic,
)
from ..partition import Drug, blood_plasma_ratio
from ..physiology import SPECIES, physiology


_HUMAN_BW = 73.0
_SPLITS = ("train", "val", "test")
DESCRIPTOR_NAMES = (
    "logp", "log10_fu", "acid", "base", "pka_minus_7", "log10_clint", "log10_ka", "fa", "log10_bp",
    *(f"species_{s}" for s in SPECIES), "log10_bw", "log10_dose", "oral",
    "log10_cl_per_kg", "log10_vss_per_kg", "log10_f", "log10_kel",
)  # fmt: skip
#: How many leading entries of `DESCRIPTOR_NAMES` are raw inputs (the rest: `derived_features`).
N_RAW_DESCRIPTORS = len(DESCRIPTOR_NAMES) - 4
_VENOUS = STATES.index("venous")


# ------------------------------------------------------------------------------------------ corpus
@dataclass(frozen=True)
class CorpusConfig:
    """What the corpus holds (defaults: the study's full corpus).

    - `n_drugs`, `subjects_per_drug`: corpus size; `split`: fractions of drugs for train / val /
      test (the rest of the drugs after train and val are the test drugs).
    - Drug ranges (uniform on the scale stated): `logp` (logP), `log10_fu`, `log10_clint` (L/h
      per kg liver), `log10_ka` (1/h), `fa`, `pka_acid`, `pka_base`; `kind_probs` the
      probabilities of neutral, acid, base.
    - Subjects: `bw_cv` (log-normal body-weight CV around the species reference),
      `log10_dose_per_kg` (mg/kg), `p_oral` (probability of the oral route).
    - Sampling: `n_times` log-spaced times from `t_min` to `t_max` h (human; other species scaled
      by ``(BW_ref / 73)**0.25``), of which the first `k_obs` are observed; `noise_sd` the SD of
      the log-scale (proportional) observation error; `lloq_frac` the LLOQ as a fraction of the
      subject's C_max.
    """

    n_drugs: int = 3000
    subjects_per_drug: int = 5
    seed: int = 0
    split: tuple[float, float] = (0.8, 0.1)
    logp: tuple[float, float] = (-1.0, 5.0)
    log10_fu: tuple[float, float] = (-2.0, 0.0)
    log10_clint: tuple[float, float] = (-1.5, 2.5)
    log10_ka: tuple[float, float] = (-0.7, 0.7)
    fa: tuple[float, float] = (0.3, 1.0)
    pka_acid: tuple[float, float] = (3.0, 6.5)
    pka_base: tuple[float, float] = (7.0, 10.5)
    kind_probs: tuple[float, float, float] = (0.4, 0.3, 0.3)
    bw_cv: float = 0.15
    log10_dose_per_kg: tuple[float, float] = (-1.0, 1.0)
    p_oral: float = 0.5
    n_times: int = 20
    t_min: float = 0.25
    t_max: float = 48.0
    k_obs: int = 5
    noise_sd: float = 0.1
    lloq_frac: float = 1e-4

    def __post_init__(self):
        for name in ("n_drugs", "subjects_per_drug", "n_times", "k_obs"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"`CorpusConfig({name}=...)` must be a positive int; got {v!r}.")
        if not 1 <= self.k_obs < self.n_times:
            raise ValueError(
                f"`CorpusConfig(k_obs=...)` must be in [1, n_times={self.n_times}); got {self.k_obs}."
            )
        if not 0.0 < self.t_min < self.t_max:
            raise ValueError(f"Need 0 < t_min < t_max; got t_min={self.t_min}, t_max={self.t_max}.")
        tr, va = self.split
        if not (0 < tr and 0 <= va and tr + va < 1):
            raise ValueError(f"`CorpusConfig(split=...)` must be (train, val) with train + val < 1; "
                             f"got {self.split}.")
        if not (self.noise_sd >= 0 and 0 < self.lloq_frac < 1 and 0 <= self.p_oral <= 1):
            raise ValueError(
                f"Need noise_sd >= 0, 0 < lloq_frac < 1, 0 <= p_oral <= 1; got {self.noise_sd}, "
                f"{self.lloq_frac}, {self.p_oral}."
            )
        if not (len(self.kind_probs) == 3 and min(self.kind_probs) >= 0
                and abs(sum(self.kind_probs) - 1) < 1e-9):
            raise ValueError(f"`kind_probs` must be 3 probabilities summing to 1; got {self.kind_probs}.")
        if self.log10_fu[1] > 0 or self.fa[1] > 1 or self.fa[0] <= 0:
            raise ValueError("`log10_fu` must be <= 0 and `fa` in (0, 1].")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> CorpusConfig:
        kw = {f.name: d[f.name] for f in dataclasses.fields(cls) if f.name in d}
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in kw.items()})


def sample_drugs(config: CorpusConfig, rng: np.random.Generator) -> list[Drug]:
    """`config.n_drugs` random drugs from the ranges of `config` (one draw of `rng` per field)."""
    c, n = config, config.n_drugs
    kinds = rng.choice(np.array(["neutral", "acid", "base"]), size=n, p=np.asarray(c.kind_probs))
    logp = rng.uniform(*c.logp, n)
    fu = 10.0 ** rng.uniform(*c.log10_fu, n)
    clint = 10.0 ** rng.uniform(*c.log10_clint, n)
    ka = 10.0 ** rng.uniform(*c.log10_ka, n)
    fa = rng.uniform(*c.fa, n)
    pka_a, pka_b = rng.uniform(*c.pka_acid, n), rng.uniform(*c.pka_base, n)
    out = []
    for i in range(n):
        kind = str(kinds[i])
        pka = None if kind == "neutral" else float(pka_a[i] if kind == "acid" else pka_b[i])
        out.append(Drug(logp=float(logp[i]), fu=float(min(fu[i], 1.0)), pka=pka, kind=kind,
                        clint=float(clint[i]), ka=float(ka[i]), fa=float(min(fa[i], 1.0)),
                        name=f"drug{i:05d}"))
    return out


def species_grid(species: str, config: CorpusConfig) -> np.ndarray:
    """The sampling times (h) of `species`: the human log-spaced grid scaled by
    ``(BW_ref / 73 kg)**0.25``."""
    scale = (physiology(species).bw / _HUMAN_BW) ** 0.25
    return np.geomspace(config.t_min, config.t_max, config.n_times) * scale


def _derived(theta, bw):
    cl, vss, f = clearance_analytic(theta), vss_analytic(theta), oral_bioavailability(theta)
    out = jnp.stack([cl / bw, vss / bw, f, cl / vss], axis=-1)
    return jnp.log10(jnp.maximum(out, 1e-12))


def derived_features(theta: np.ndarray, bw: np.ndarray) -> np.ndarray:
    """``[n, 4]``: log10 of the analytic plasma clearance per kg (L/h/kg), the steady-state volume
    per kg (L/kg), the oral bioavailability and ``CL / Vss`` (1/h), from the subjects'
    ``pbpk_whole_body`` parameters `theta` ``[n, 43]`` (closed forms of `pkpd_jax.pbpk.model`; no
    ODE) and body weights `bw` ``[n]`` (kg)."""
    theta = np.asarray(theta, np.float64)
    if theta.ndim != 2:
        raise ValueError(f"`theta` must have shape (n, params); got {theta.shape}.")
    with x64():
        out = _derived(jnp.asarray(theta), jnp.asarray(np.asarray(bw, np.float64).reshape(-1)))
        return np.asarray(out, np.float64)


def descriptors(drug: Drug, species: str, bw: float, dose: float, route: str) -> np.ndarray:
    """The 21 raw (unstandardised) input features of one subject, ordered as
    ``DESCRIPTOR_NAMES``: the drug's properties, species, body weight, dose and route, and the
    four `derived_features`. `dose` in mg, `bw` in kg, `route` ``"iv"`` or ``"oral"``."""
    raw = _raw_descriptors(drug, species, bw, dose, route)
    p = pbpk_params(species, drug, bw)
    theta = np.array([[p[k] for k in get_model("pbpk_whole_body").param_names]])
    return np.concatenate([raw, derived_features(theta, np.array([bw]))[0]])


def _raw_descriptors(drug: Drug, species: str, bw: float, dose: float, route: str) -> np.ndarray:
    if not isinstance(drug, Drug):
        raise TypeError(f"`drug` must be a pkpd_jax.pbpk.Drug; got {type(drug).__name__}.")
    key = str(species).strip().lower()
    if key not in SPECIES:
        raise ValueError(f"unknown species {species!r}; available: {', '.join(SPECIES)}.")
    if route not in ("iv", "oral"):
        raise ValueError(f"`route` must be 'iv' or 'oral'; got {route!r}.")
    if not (math.isfinite(dose) and dose > 0 and math.isfinite(bw) and bw > 0):
        raise ValueError(f"`dose` (mg) and `bw` (kg) must be positive; got dose={dose}, bw={bw}.")
    onehot = [1.0 if s == key else 0.0 for s in SPECIES]
    return np.array([
        drug.logp, math.log10(drug.fu), float(drug.kind == "acid"), float(drug.kind == "base"),
        0.0 if drug.pka is None else drug.pka - 7.0, math.log10(max(drug.clint, 1e-6)),
        math.log10(drug.ka), drug.fa, math.log10(blood_plasma_ratio(drug, key)),
        *onehot, math.log10(bw), math.log10(dose), float(route == "oral"),
    ])  # fmt: skip


@dataclass
class ForecastCorpus:
    """Simulated subjects (arrays with a leading subject axis ``n``) and their split.

    - `desc` ``[n, 21]`` raw input features; `times` ``[n, T]`` h; `log_conc` ``[n, T]`` true
      ln C (mg/L); `log_obs` ``[n, T]`` ln C with observation noise; `quantified` ``[n, T]``
      True above the LLOQ; `log_dose_per_kg` ``[n]`` ln(dose / BW) (the normalising offset).
    - `theta` ``[n, 43]`` the subjects' ``pbpk_whole_body`` parameters; `dose` mg; `route_cmt`
      the dose compartment; `species`, `drug_id` ints; `split` ``[n]`` 0/1/2 (train/val/test).
    - `drugs`: the drugs, indexed by `drug_id`.
    """

    config: CorpusConfig
    desc: np.ndarray
    times: np.ndarray
    log_conc: np.ndarray
    log_obs: np.ndarray
    quantified: np.ndarray
    log_dose_per_kg: np.ndarray
    theta: np.ndarray
    dose: np.ndarray
    route_cmt: np.ndarray
    species: np.ndarray
    bw: np.ndarray
    drug_id: np.ndarray
    split: np.ndarray
    drugs: list[Drug] = field(repr=False)

    def __len__(self) -> int:
        return int(self.desc.shape[0])

    def indices(self, split: str) -> np.ndarray:
        if split not in _SPLITS:
            raise ValueError(f"`split` must be one of {_SPLITS}; got {split!r}.")
        return np.flatnonzero(self.split == _SPLITS.index(split))


def single_dose_curves(theta: np.ndarray, dose: np.ndarray, cmt: np.ndarray, times: np.ndarray,
                       names: tuple[str, ...]) -> np.ndarray:
    """Plasma concentrations (mg/L) after one bolus of `dose` mg into state `cmt` at t = 0.

    **Arguments:** `theta` ``[n, P]`` the subjects' ``pbpk_whole_body`` parameters (columns named
    `names`); `dose` ``[n]`` mg; `cmt` ``[n]`` the dosed state; `times` ``[n, T]`` h,
    non-decreasing and >= 0 in each row.

    **Returns:** ``[n, T]`` concentrations: the exact solution of the linear model by the one
    solve layer (`pkpd_jax.solve.simulate_population` with ``method="expm"``: matrix
    exponentials of the model's generator `PKPDModel.linear_generator`), in float64.
    """
    theta = np.asarray(theta, np.float64)
    times = np.asarray(times, np.float64)
    n = theta.shape[0]
    if times.ndim != 2 or times.shape[0] != n:
        raise ValueError(f"`times` must have shape ({n}, T); got {times.shape}.")
    if times.size and (times.min() < 0 or (np.diff(times, axis=1) < 0).any()):
        raise ValueError("`times` must be >= 0 and non-decreasing along each row.")
    model = get_model("pbpk_whole_body")
    if tuple(names) != tuple(model.param_names):
        raise ValueError(f"`names` must be the model's parameters {model.param_names}; got {names}.")
    # The dose is the initial state at t = 0 (so a sample at t = 0 sees it, as a bolus given just
    # before); the regimen is empty (one zero-amount padding dose).
    y0 = np.zeros((n, len(STATES)))
    y0[np.arange(n), np.asarray(cmt)] = np.asarray(dose, np.float64)
    with x64():
        empty = Regimen(jnp.zeros((n, 1)), jnp.zeros((n, 1)), jnp.zeros((n, 1)), jnp.full((n, 1), -1))
        sol = simulate_population(model, jnp.asarray(theta), empty, jnp.asarray(times), y0=jnp.asarray(y0),
                                  t0=0.0, config=SolverConfig(method="expm"))
        return np.asarray(sol.conc)


def build_corpus(
    config: CorpusConfig = CorpusConfig(), *, progress: Callable | None = None
) -> ForecastCorpus:
    """Draw drugs and subjects from `config` (seeded by ``config.seed``) and simulate them."""
    c = config
    rng = np.random.default_rng([c.seed, 7001])
    drugs = sample_drugs(c, rng)
    names = tuple(get_model("pbpk_whole_body").param_names)
    n = c.n_drugs * c.subjects_per_drug
    drug_id = np.repeat(np.arange(c.n_drugs), c.subjects_per_drug)
    species = rng.integers(0, len(SPECIES), n)
    sd = math.sqrt(math.log1p(c.bw_cv**2))
    bw_ref = np.array([physiology(s).bw for s in SPECIES])
    bw = bw_ref[species] * np.exp(sd * rng.standard_normal(n))
    dose = bw * 10.0 ** rng.uniform(*c.log10_dose_per_kg, n)
    oral = rng.uniform(size=n) < c.p_oral
    noise = rng.standard_normal((n, c.n_times))
    perm = rng.permutation(c.n_drugs)
    n_tr, n_va = round(c.split[0] * c.n_drugs), round(c.split[1] * c.n_drugs)
    drug_split = np.zeros(c.n_drugs, np.int8)
    drug_split[perm[n_tr:n_tr + n_va]] = 1
    drug_split[perm[n_tr + n_va:]] = 2

    grids = {s: species_grid(s, c) for s in SPECIES}
    theta = np.empty((n, len(names)))
    desc = np.empty((n, len(DESCRIPTOR_NAMES)))
    times = np.empty((n, c.n_times))
    for i in range(n):
        sp, drug = SPECIES[species[i]], drugs[drug_id[i]]
        p = pbpk_params(sp, drug, float(bw[i]))
        theta[i] = [p[k] for k in names]
        desc[i, :N_RAW_DESCRIPTORS] = _raw_descriptors(drug, sp, float(bw[i]), float(dose[i]),
                                            "oral" if oral[i] else "iv")
        times[i] = grids[sp]
        if progress is not None and (i + 1) % 1000 == 0:
            progress(i + 1, n)
    desc[:, N_RAW_DESCRIPTORS:] = derived_features(theta, bw)
    cmt = np.where(oral, ORAL_CMT, IV_CMT)
    conc = single_dose_curves(theta, dose, cmt, times, names)
    cmax = conc.max(axis=1, keepdims=True)
    quantified = conc >= c.lloq_frac * cmax
    log_conc = np.log(np.maximum(conc, 1e-300))
    return ForecastCorpus(
        config=c, desc=desc, times=times, log_conc=log_conc,
        log_obs=log_conc + c.noise_sd * noise, quantified=quantified,
        log_dose_per_kg=np.log(dose / bw), theta=theta, dose=dose, route_cmt=cmt,
        species=species, bw=bw, drug_id=drug_id, split=drug_split[drug_id], drugs=drugs,
    )
