"""A Transformer that forecasts the rest of a PBPK plasma curve from drug, species, dose and a few
early concentrations.

**Task.** A subject receives one dose (IV bolus into the venous blood or oral into the gut lumen)
and is sampled on a fixed log-spaced grid of ``n_times`` times. Given the drug's properties, the
species and body weight, the dose and route, and the first ``k_obs`` observed concentrations
(with a proportional measurement error), the network predicts the log concentration at the
remaining grid times.

**Corpus** ([`build_corpus`][]). Random drugs (kind neutral / acid / base, logP, fu, pKa, CLint,
ka, fa; ranges in [`CorpusConfig`][]) × random subjects (species uniform over ``SPECIES``, body
weight log-normal around the species reference, dose per kg log-uniform, route IV or oral with
equal probability), simulated with the whole-body model ``pbpk_whole_body``. Since that model is
linear and every subject gets one dose, the plasma curve is the exact solution
``C(t) = e_venous^T exp(K t) e_dose · dose / (V_venous · BP)`` with ``K`` the Jacobian of the model's
own vector field (the matrix the simulator's ``method="expm"`` path uses), evaluated through the
eigen-decomposition of ``K``: thousands of subjects in seconds. `tests/test_pbpk_forecast.py` checks it
against ``scipy.linalg.expm`` and the study against the simulator's ODE solve. The grid of a species
is the human grid (``t_min``-``t_max`` h) scaled by ``(BW_ref / 73 kg)**0.25`` (physiological time:
a mouse is sampled over 0.03-6 h). Points below ``lloq_frac`` × the subject's C_max are *below
the limit of quantification*: they are not fed to the network, not in the loss and not scored.
Observations are ``log C + N(0, noise_sd²)``; the targets are the noise-free log concentrations.
Drugs are split into train / validation / test, so test drugs are never seen in training.

**Inputs** (per subject): 21 features, standardised with the training-set mean and SD: the drug
(logP, log10 fu, acid / base flags, pKa - 7 for ionisable drugs, log10 CLint, log10 ka, fa, log10
of the predicted blood:plasma ratio), the species (one-hot), log10 body weight, log10 dose, an oral
flag, and four closed-form summaries of the subject's PBPK parameters ([`derived_features`][]:
analytic clearance and Vss per kg, bioavailability, CL / Vss; algebra on the parameters, no ODE);
the grid times; the dose-normalised log concentrations ``log C - log(dose / BW)`` where observed.

**Network** ([`PBPKForecaster`][]): one context token (the descriptors through a two-layer MLP)
followed by one token per grid time: ``W·[y, observed, log t] + PE(t)``, where ``y`` is the
standardised observed value (0 for the times to forecast), ``observed`` a flag and ``PE`` the
continuous-time sinusoidal encoding of the amortized model-selection encoder. Pre-norm
Transformer blocks from the same encoder (`pkpd_jax.amortized.encoder.EncoderBlock`) attend over
all tokens; a final layer norm and a GELU head read one standardised log concentration per time
token. The network is float32 and handles one subject (equinox convention); [`predict`][] vmaps.

**Training** ([`train_forecaster`][]): mean squared error of the standardised log concentration
at the forecast times above the LLOQ; AdamW with warm-up and cosine decay and gradient clipping
(`pkpd_jax.amortized.train.make_optimizer`); the observation noise is redrawn every epoch
(seeded by ``(seed, epoch)``); the model with the best validation loss is kept. Deterministic
given the seeds.

**Metrics** ([`evaluate`][]): fold error ``exp|log C_pred - log C_true|`` over every forecast
point above the LLOQ of the held-out subjects; the median and the fraction within 2-fold, next
to a log-linear extrapolation of the last two observations as a naive baseline.

```python
from pkpd_jax.pbpk.forecast import CorpusConfig, ForecastConfig, build_corpus, train_forecaster
corpus = build_corpus(CorpusConfig(n_drugs=200, subjects_per_drug=4, seed=0))
result = train_forecaster(corpus, ForecastConfig(epochs=5), seed=0)
metrics = evaluate(result.model, corpus, "test")
```
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jaxtyping import Array, ArrayLike, Bool, Float, PRNGKeyArray

from ..amortized.encoder import EncoderBlock, TimeEncoding
from .model import IV_CMT, ORAL_CMT, STATES, pbpk_params
from .partition import Drug, blood_plasma_ratio
from .physiology import SPECIES, physiology


__all__ = [
    "CorpusConfig",
    "ForecastCorpus",
    "ForecastConfig",
    "PBPKForecaster",
    "TrainResult",
    "DESCRIPTOR_NAMES",
    "sample_drugs",
    "species_grid",
    "descriptors",
    "derived_features",
    "single_dose_curves",
    "build_corpus",
    "train_forecaster",
    "predict",
    "forecast_fn",
    "evaluate",
    "save_forecaster",
    "load_forecaster",
]

DTYPE = jnp.float32
_FORMAT = "pkpd_jax.pbpk.forecaster/1"
_HUMAN_BW = 73.0
_SPLITS = ("train", "val", "test")
DESCRIPTOR_NAMES = (
    "logp", "log10_fu", "acid", "base", "pka_minus_7", "log10_clint", "log10_ka", "fa", "log10_bp",
    *(f"species_{s}" for s in SPECIES), "log10_bw", "log10_dose", "oral",
    "log10_cl_per_kg", "log10_vss_per_kg", "log10_f", "log10_kel",
)  # fmt: skip
_N_RAW = len(DESCRIPTOR_NAMES) - 4
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
    from .model import clearance_analytic, oral_bioavailability, vss_analytic

    cl, vss, f = clearance_analytic(theta), vss_analytic(theta), oral_bioavailability(theta)
    out = jnp.stack([cl / bw, vss / bw, f, cl / vss], axis=-1)
    return jnp.log10(jnp.maximum(out, 1e-12))


def derived_features(theta: np.ndarray, bw: np.ndarray) -> np.ndarray:
    """``[n, 4]``: log10 of the analytic plasma clearance per kg (L/h/kg), the steady-state volume
    per kg (L/kg), the oral bioavailability and ``CL / Vss`` (1/h), from the subjects'
    ``pbpk_whole_body`` parameters `theta` ``[n, 43]`` (closed forms of `pkpd_jax.pbpk.model`; no
    ODE) and body weights `bw` ``[n]`` (kg)."""
    from .._x64 import x64

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
    from ..models import get_model

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


@jax.jit
def _kinetic_matrices(theta):
    from ..models import get_model

    model = get_model("pbpk_whole_body")
    n = len(STATES)

    def one(th):
        zero = jnp.zeros(n, th.dtype)
        return jax.jacfwd(lambda y: model.vector_field(0.0, y, th, zero))(zero)

    return jax.vmap(one)(theta)


def single_dose_curves(theta: np.ndarray, dose: np.ndarray, cmt: np.ndarray, times: np.ndarray,
                       names: tuple[str, ...]) -> np.ndarray:
    """Plasma concentrations (mg/L) after one bolus of `dose` mg into state `cmt` at t = 0,
    at `times` ``[n, T]``, for subjects `theta` ``[n, P]`` (columns named `names`): the exact
    solution of the linear model through the eigen-decomposition of its Jacobian ``K``."""
    from .._x64 import x64

    theta = np.asarray(theta, np.float64)
    with x64():
        K = np.asarray(_kinetic_matrices(jnp.asarray(theta, jnp.float64)))
    lam, vec = np.linalg.eig(K)
    n = theta.shape[0]
    rhs = np.zeros((n, len(STATES)), complex)
    rhs[np.arange(n), np.asarray(cmt)] = 1.0
    coef = np.linalg.solve(vec, rhs[..., None])[..., 0]  # V^{-1} e_dose
    w = vec[:, _VENOUS, :] * coef  # [n, modes]
    amount = np.real(np.einsum("nm,ntm->nt", w, np.exp(lam[:, None, :] * times[:, :, None])))
    col = {k: i for i, k in enumerate(names)}
    scale = np.asarray(dose) / (theta[:, col["V_venous"]] * theta[:, col["BP"]])
    return amount * scale[:, None]


def build_corpus(
    config: CorpusConfig = CorpusConfig(), *, progress: Callable | None = None
) -> ForecastCorpus:
    """Draw drugs and subjects from `config` (seeded by ``config.seed``) and simulate them."""
    from ..models import get_model

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
        desc[i, :_N_RAW] = _raw_descriptors(drug, sp, float(bw[i]), float(dose[i]),
                                            "oral" if oral[i] else "iv")
        times[i] = grids[sp]
        if progress is not None and (i + 1) % 1000 == 0:
            progress(i + 1, n)
    desc[:, _N_RAW:] = derived_features(theta, bw)
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


# ------------------------------------------------------------------------------------------ network
@dataclass(frozen=True)
class ForecastConfig:
    """Network size and training settings of a [`PBPKForecaster`][].

    `d_model`, `n_heads`, `n_layers`, `d_ff`: width, attention heads, Transformer blocks,
    feed-forward width (the defaults are the study's network, sized so that a forecast costs
    well under 1% of a PBPK ODE solve; see `experiments/pbpk_forecast_study.py`); `min_period`,
    `max_period` (h) of the time encoding. `epochs`, `batch_size`, `lr` (peak), `weight_decay`,
    `warmup_frac`, `clip_norm`: optimisation.
    """

    d_model: int = 32
    n_heads: int = 2
    n_layers: int = 1
    d_ff: int = 64
    min_period: float = 0.05
    max_period: float = 500.0
    epochs: int = 4
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 1e-4
    warmup_frac: float = 0.03
    clip_norm: float = 1.0

    def __post_init__(self):
        for name in ("d_model", "n_heads", "n_layers", "d_ff", "epochs", "batch_size"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"`ForecastConfig({name}=...)` must be a positive int; got {v!r}.")
        if self.d_model % self.n_heads:
            raise ValueError(f"`ForecastConfig(d_model=...)` must be divisible by n_heads; got "
                             f"{self.d_model} and {self.n_heads}.")
        if not (self.lr > 0 and self.weight_decay >= 0 and 0 < self.min_period < self.max_period):
            raise ValueError("Need lr > 0, weight_decay >= 0 and 0 < min_period < max_period.")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ForecastConfig:
        return cls(**{f.name: d[f.name] for f in dataclasses.fields(cls) if f.name in d})


class PBPKForecaster(eqx.Module):
    """The forecasting network for one subject (see the module docstring).

    **Arguments** (`__call__`): `desc` ``[D]`` standardised descriptors; `times` ``[T]`` grid times
    (h); `values` ``[T]`` standardised dose-normalised log concentrations (read where
    `observed`); `observed` ``[T]`` bool.

    **Returns:** ``[T]`` standardised dose-normalised log concentrations at every grid time.
    """

    ctx_in: eqx.nn.Linear
    ctx_out: eqx.nn.Linear
    token_embed: eqx.nn.Linear
    time_encoding: TimeEncoding
    blocks: tuple[EncoderBlock, ...]
    final_norm: eqx.nn.LayerNorm
    head_hidden: eqx.nn.Linear
    head_out: eqx.nn.Linear
    n_desc: int = eqx.field(static=True)

    def __init__(self, n_desc: int, config: ForecastConfig, *, key: PRNGKeyArray):
        c, d = config, config.d_model
        k = jr.split(key, 6)
        self.ctx_in = eqx.nn.Linear(n_desc, d, dtype=DTYPE, key=k[0])
        self.ctx_out = eqx.nn.Linear(d, d, dtype=DTYPE, key=k[1])
        self.token_embed = eqx.nn.Linear(3, d, dtype=DTYPE, key=k[2])
        self.time_encoding = TimeEncoding(d, float(c.min_period), float(c.max_period))
        self.blocks = tuple(EncoderBlock(d, c.n_heads, c.d_ff, 0.0, key=kb)
                            for kb in jr.split(k[3], c.n_layers))
        self.final_norm = eqx.nn.LayerNorm(d, dtype=DTYPE)
        self.head_hidden = eqx.nn.Linear(d, d, dtype=DTYPE, key=k[4])
        self.head_out = eqx.nn.Linear(d, 1, dtype=DTYPE, key=k[5])
        self.n_desc = n_desc

    def __call__(
        self,
        desc: Float[ArrayLike, " D"],
        times: Float[ArrayLike, " T"],
        values: Float[ArrayLike, " T"],
        observed: Bool[ArrayLike, " T"],
    ) -> Float[Array, " T"]:
        desc, times = jnp.asarray(desc, DTYPE), jnp.asarray(times, DTYPE)
        values, observed = jnp.asarray(values, DTYPE), jnp.asarray(observed, bool)
        if desc.shape != (self.n_desc,):
            raise ValueError(f"`desc` must have shape ({self.n_desc},); got {desc.shape}.")
        if times.ndim != 1 or values.shape != times.shape or observed.shape != times.shape:
            raise ValueError(f"`times`, `values`, `observed` must share one shape [T]; got "
                             f"{times.shape}, {values.shape}, {observed.shape}.")
        ctx = self.ctx_out(jax.nn.gelu(self.ctx_in(desc)))
        obs = observed.astype(DTYPE)
        y = jnp.where(observed, values, 0.0)  # unobserved values (even NaN) never enter
        feats = jnp.stack([y, obs, jnp.log(jnp.maximum(times, 1e-3)) / 3.0], axis=-1)
        tokens = jax.vmap(self.token_embed)(feats) + self.time_encoding(times)
        x = jnp.concatenate([ctx[None, :], tokens], axis=0)
        mask = jnp.ones(x.shape[0], bool)
        for block in self.blocks:
            x = block(x, mask, inference=True)
        x = jax.vmap(self.final_norm)(x[1:])
        h = jax.nn.gelu(jax.vmap(self.head_hidden)(x))
        return jax.vmap(self.head_out)(h)[:, 0]


# ---------------------------------------------------------------------------------------- training
@dataclass
class TrainResult:
    """What [`train_forecaster`][] returns: the model (by default the one with the lowest
    validation loss), its normalisation and configs, and one record per epoch."""

    model: PBPKForecaster
    norm: dict
    config: ForecastConfig
    corpus_config: CorpusConfig
    history: list[dict]


def _normalisation(corpus: ForecastCorpus) -> dict:
    idx = corpus.indices("train")
    desc = corpus.desc[idx]
    sd = desc.std(axis=0)
    y = (corpus.log_conc - corpus.log_dose_per_kg[:, None])[idx][corpus.quantified[idx]]
    return {"desc_mean": desc.mean(axis=0).tolist(), "desc_sd": np.where(sd > 0, sd, 1.0).tolist(),
            "y_mean": float(y.mean()), "y_sd": float(y.std()), "k_obs": corpus.config.k_obs,
            "descriptor_names": list(DESCRIPTOR_NAMES)}


def _inputs(norm: dict, desc, times, log_obs, quantified, log_dose_per_kg, k_obs: int):
    """Network inputs (float32 numpy) from raw arrays: standardised descriptors and values, and
    the observed mask (the first `k_obs` times, where quantified)."""
    desc = (np.asarray(desc) - np.asarray(norm["desc_mean"])) / np.asarray(norm["desc_sd"])
    y = (np.asarray(log_obs) - np.asarray(log_dose_per_kg)[:, None] - norm["y_mean"]) / norm["y_sd"]
    first = np.arange(np.shape(times)[1]) < k_obs
    observed = first[None, :] & np.asarray(quantified, bool)
    y = np.where(observed, y, 0.0)
    return (desc.astype(np.float32), np.asarray(times, np.float32), y.astype(np.float32), observed)


def _targets(norm: dict, corpus: ForecastCorpus, idx, k_obs: int):
    y = (corpus.log_conc[idx] - corpus.log_dose_per_kg[idx, None] - norm["y_mean"]) / norm["y_sd"]
    scored = corpus.quantified[idx] & (np.arange(corpus.config.n_times) >= k_obs)[None, :]
    return np.where(scored, y, 0.0).astype(np.float32), scored


def _apply(model, desc, times, values, observed):
    return jax.vmap(model)(desc, times, values, observed)


def _loss(model, batch):
    desc, times, values, observed, target, scored = batch
    pred = _apply(model, desc, times, values, observed)
    w = scored.astype(DTYPE)
    return jnp.sum(w * (pred - target) ** 2) / jnp.maximum(jnp.sum(w), 1.0)


def train_forecaster(
    corpus: ForecastCorpus,
    config: ForecastConfig = ForecastConfig(),
    *,
    seed: int = 0,
    keep_best: bool = True,
    log: Callable[[str], None] | None = None,
) -> TrainResult:
    """Train a [`PBPKForecaster`][] on the ``train`` split of `corpus`, keeping the model with the
    best ``val`` loss (`keep_best`; else the last). Deterministic given `seed` (initialisation,
    batch order, noise redraws)."""
    import optax

    from ..amortized.train import Preset, make_optimizer

    tr, va = corpus.indices("train"), corpus.indices("val")
    if tr.size < config.batch_size:
        raise ValueError(f"the training split has {tr.size} subjects, fewer than one batch "
                         f"(batch_size={config.batch_size}).")
    c, k = corpus.config, corpus.config.k_obs
    norm = _normalisation(corpus)
    steps_per_epoch = tr.size // config.batch_size
    preset = Preset("pbpk_forecast", config.d_model, config.n_heads, config.n_layers, config.d_ff, 0.0,
                    config.lr, config.weight_decay, 1.0, batch_size=config.batch_size,
                    warmup_frac=config.warmup_frac, clip_norm=config.clip_norm)
    optim, _ = make_optimizer(preset, steps_per_epoch * config.epochs)
    model = PBPKForecaster(len(DESCRIPTOR_NAMES), config, key=jr.PRNGKey(seed))
    opt_state = optim.init(eqx.filter(model, eqx.is_inexact_array))

    @eqx.filter_jit
    def step(model, opt_state, batch):
        loss, grads = eqx.filter_value_and_grad(_loss)(model, batch)
        updates, opt_state = optim.update(grads, opt_state, eqx.filter(model, eqx.is_inexact_array))
        return eqx.apply_updates(model, updates), opt_state, loss, optax.global_norm(grads)

    eval_loss = eqx.filter_jit(_loss)
    target_tr, scored_tr = _targets(norm, corpus, tr, k)
    target_va, scored_va = _targets(norm, corpus, va, k)
    val_in = _inputs(norm, corpus.desc[va], corpus.times[va], corpus.log_obs[va], corpus.quantified[va],
                     corpus.log_dose_per_kg[va], k)
    best, best_val, history = model, math.inf, []
    for epoch in range(config.epochs):
        rng = np.random.default_rng([seed, epoch])
        log_obs = corpus.log_conc[tr] + c.noise_sd * rng.standard_normal((tr.size, c.n_times))
        x = _inputs(norm, corpus.desc[tr], corpus.times[tr], log_obs, corpus.quantified[tr],
                    corpus.log_dose_per_kg[tr], k)
        order = rng.permutation(tr.size)
        losses = []
        for b in range(steps_per_epoch):
            j = order[b * config.batch_size:(b + 1) * config.batch_size]
            batch = tuple(a[j] for a in x) + (target_tr[j], scored_tr[j])
            model, opt_state, loss, gnorm = step(model, opt_state, batch)
            losses.append(loss)
        train_loss = float(np.mean(jax.device_get(losses)))
        if not math.isfinite(train_loss):
            raise FloatingPointError(f"the training loss became {train_loss} at epoch {epoch + 1}; "
                                     "lower `lr` or raise `clip_norm`.")
        val = _batched_loss(eval_loss, model, val_in + (target_va, scored_va), 1024)
        history.append({"epoch": epoch + 1, "train_loss": train_loss, "val_loss": val})
        if val < best_val or not keep_best:
            best, best_val = model, val
        if log is not None:
            log(f"epoch {epoch + 1}/{config.epochs}: train {train_loss:.4f}, val {val:.4f}")
    return TrainResult(model=best, norm=norm, config=config, corpus_config=c, history=history)


def _batched_loss(fn, model, arrays, size):
    n = arrays[0].shape[0]
    total, weight = 0.0, 0.0
    for lo in range(0, n, size):
        part = tuple(a[lo:lo + size] for a in arrays)
        w = float(np.sum(part[-1]))
        total += float(fn(model, part)) * w
        weight += w
    return total / max(weight, 1.0)


# ------------------------------------------------------------------------------- predict / evaluate
@eqx.filter_jit
def _predict_jit(model, desc, times, values, observed):
    return _apply(model, desc, times, values, observed)


def predict(
    model: PBPKForecaster,
    norm: dict,
    desc: np.ndarray,
    times: np.ndarray,
    log_obs: np.ndarray,
    log_dose_per_kg: np.ndarray,
    *,
    quantified: np.ndarray | None = None,
    k_obs: int | None = None,
    batch_size: int = 4096,
) -> np.ndarray:
    """Forecast ln C (mg/L) at every grid time for a batch of subjects.

    **Arguments:** `desc` ``[n, 21]`` raw input features (`descriptors`); `times` ``[n, T]`` h;
    `log_obs` ``[n, T]`` observed ln C (only the first `k_obs` columns are read, default the
    training ``k_obs``); `log_dose_per_kg` ``[n]`` ln(dose mg / BW kg); `quantified` ``[n, T]``
    (False drops an observation below the LLOQ; default all True).

    **Returns:** ``[n, T]`` predicted ln C; the first `k_obs` columns are the network's
    reconstruction of the observed times, the rest the forecast.
    """
    desc, times, log_obs = (np.asarray(a, np.float64) for a in (desc, times, log_obs))
    log_dose_per_kg = np.asarray(log_dose_per_kg, np.float64).reshape(-1)
    n_desc = len(norm["desc_mean"])
    if desc.ndim != 2 or desc.shape[1] != n_desc:
        raise ValueError(f"`desc` must have shape (n, {n_desc}); got {desc.shape}.")
    n = desc.shape[0]
    if times.ndim != 2 or times.shape[0] != n or log_obs.shape != times.shape:
        raise ValueError(f"`times` and `log_obs` must have shape (n={n}, T); got {times.shape} and "
                         f"{log_obs.shape}.")
    if log_dose_per_kg.shape != (n,):
        raise ValueError(f"`log_dose_per_kg` must have shape ({n},); got {log_dose_per_kg.shape}.")
    k = norm["k_obs"] if k_obs is None else int(k_obs)
    if not 1 <= k < times.shape[1]:
        raise ValueError(f"`k_obs` must be in [1, {times.shape[1]}); got {k}.")
    if not np.all(np.isfinite(desc)) or not np.all(np.isfinite(times)) or np.any(times < 0):
        raise ValueError("`desc` and `times` must be finite and `times` >= 0.")
    if not np.all(np.isfinite(log_obs[:, :k])):
        bad = np.argwhere(~np.isfinite(log_obs[:, :k]))[0].tolist()
        raise ValueError(f"the observed log concentrations must be finite; got {log_obs[tuple(bad)]} "
                         f"at [subject, time] {bad}.")
    q = np.ones(times.shape, bool) if quantified is None else np.asarray(quantified, bool)
    x = _inputs(norm, desc, times, log_obs, q, log_dose_per_kg, k)
    out = [np.asarray(_predict_jit(model, *(a[lo:lo + batch_size] for a in x)))
           for lo in range(0, n, batch_size)]
    y = np.concatenate(out).astype(np.float64)
    return y * norm["y_sd"] + norm["y_mean"] + log_dose_per_kg[:, None]


def forecast_fn(model: PBPKForecaster, norm: dict) -> Callable:
    """A jitted ``f(raw_desc, theta, bw, times, log_obs, log_dose_per_kg) -> ln C [n, T]``: the
    whole forecast path in one compiled call, from the 17 raw descriptors ``[n, 17]`` (the first
    columns of `descriptors`), the PBPK parameters ``theta [n, 43]`` (for `derived_features`),
    body weights, grid times, observed ln C (the first ``norm["k_obs"]`` columns are read) and
    ln(dose / BW). Inputs are not checked (use [`predict`][] for checked calls); the throughput
    study times this path."""
    k = int(norm["k_obs"])
    mean, sd = np.asarray(norm["desc_mean"], np.float32), np.asarray(norm["desc_sd"], np.float32)
    y_mean, y_sd = float(norm["y_mean"]), float(norm["y_sd"])

    @jax.jit
    def run(raw, theta, bw, times, log_obs, off):
        desc = jnp.concatenate([raw, _derived(theta, bw)], axis=-1).astype(DTYPE)
        desc = (desc - mean) / sd
        observed = jnp.broadcast_to(jnp.arange(times.shape[-1]) < k, times.shape)
        y = ((log_obs - off[:, None] - y_mean) / y_sd).astype(DTYPE)
        out = _apply(model, desc, times.astype(DTYPE), jnp.where(observed, y, 0.0), observed)
        return out * y_sd + y_mean + off[:, None]

    return run


def fold_error_summary(log_pred: np.ndarray, log_true: np.ndarray, scored: np.ndarray) -> dict:
    """Median fold error, fraction within 2-fold (and 1.25-, 3-fold) over the `scored` points."""
    fe = np.exp(np.abs(np.asarray(log_pred) - np.asarray(log_true)))[np.asarray(scored, bool)]
    if fe.size == 0:
        raise ValueError("no scored points (every forecast point is below the LLOQ?).")
    return {"n_points": int(fe.size), "median_fold_error": float(np.median(fe)),
            "gmfe": float(np.exp(np.mean(np.log(fe)))), "p90_fold_error": float(np.quantile(fe, 0.9)),
            "within_1.25": float(np.mean(fe <= 1.25)), "within_2": float(np.mean(fe <= 2.0)),
            "within_3": float(np.mean(fe <= 3.0))}


def evaluate(model: PBPKForecaster, norm: dict, corpus: ForecastCorpus, split: str = "test") -> dict:
    """Forecast accuracy on `split` (default the held-out drugs): overall, by route and by species,
    against the truth, and the naive baseline (log-linear extrapolation of the last two observed
    points). Also returns the arrays (``log_pred``, ``scored``, ``fold_error``) for plots."""
    idx = corpus.indices(split)
    if idx.size == 0:
        raise ValueError(f"split {split!r} is empty.")
    k = norm["k_obs"]
    pred = predict(model, norm, corpus.desc[idx], corpus.times[idx], corpus.log_obs[idx],
                   corpus.log_dose_per_kg[idx], quantified=corpus.quantified[idx], k_obs=k)
    truth, q = corpus.log_conc[idx], corpus.quantified[idx]
    scored = q & (np.arange(truth.shape[1]) >= k)[None, :]
    out = {"split": split, "n_subjects": int(idx.size), "n_drugs": int(np.unique(corpus.drug_id[idx]).size),
           "k_obs": k, "overall": fold_error_summary(pred, truth, scored)}
    oral = corpus.route_cmt[idx] == ORAL_CMT
    out["by_route"] = {name: fold_error_summary(pred[m], truth[m], scored[m])
                       for name, m in (("iv", ~oral), ("oral", oral)) if np.any(scored[m])}
    out["by_species"] = {s: fold_error_summary(pred[m], truth[m], scored[m])
                         for i, s in enumerate(SPECIES)
                         if np.any(scored[m := corpus.species[idx] == i])}
    # Naive baseline: the line through the last two observed (noisy) points in (t, ln C).
    t, yo = corpus.times[idx], corpus.log_obs[idx]
    slope = (yo[:, k - 1] - yo[:, k - 2]) / (t[:, k - 1] - t[:, k - 2]) if k >= 2 else np.zeros(idx.size)
    base = yo[:, [k - 1]] + slope[:, None] * (t - t[:, [k - 1]])
    out["baseline_loglinear"] = fold_error_summary(base, truth, scored)
    out["arrays"] = {"index": idx, "log_pred": pred, "scored": scored,
                     "fold_error": np.exp(np.abs(pred - truth))[scored]}
    return out


# -------------------------------------------------------------------------------------- save / load
def save_forecaster(path: str | Path, result: TrainResult) -> Path:
    """Write the model, its normalisation and configs to `path` (one JSON header line, then the
    equinox-serialised leaves)."""
    from ..amortized.train import _write_atomic

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    header = {"format": _FORMAT, "config": result.config.to_dict(), "norm": result.norm,
              "corpus_config": result.corpus_config.to_dict(), "n_desc": result.model.n_desc,
              "history": result.history}
    _write_atomic(path, header, result.model)
    return path


def load_forecaster(path: str | Path) -> TrainResult:
    """Load what [`save_forecaster`][] wrote."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"forecaster file {path} does not exist.")
    with open(path, "rb") as f:
        try:
            header = json.loads(f.readline())
        except (json.JSONDecodeError, UnicodeDecodeError):
            header = {}
        if not isinstance(header, dict) or header.get("format") != _FORMAT:
            raise ValueError(f"{path} is not a PBPK forecaster file (expected format {_FORMAT!r}).")
        config = ForecastConfig.from_dict(header["config"])
        like = eqx.filter_eval_shape(PBPKForecaster, header["n_desc"], config, key=jr.PRNGKey(0))
        model = eqx.tree_deserialise_leaves(f, like)
    return TrainResult(model=model, norm=header["norm"], config=config,
                       corpus_config=CorpusConfig.from_dict(header["corpus_config"]),
                       history=header["history"])
