"""Neural allometry: a learned correction on top of the allometric power law for interspecies
scaling of clearance (CL) and steady-state volume (Vss).

**Simple allometry** (the base). From preclinical species ``S`` with body weights ``BW_s`` and
observed ``CL_s``, ``Vss_s``, the target species ``T`` gets

    log CL_T^allo  = mean_{s in S} [log CL_s  + 0.75 (log BW_T - log BW_s)]
    log Vss_T^allo = mean_{s in S} [log Vss_s + 1.00 (log BW_T - log BW_s)]

(fixed exponents; the geometric mean of the single-species predictions).

**Neural correction.** An equinox MLP ``g`` maps one (drug, species) pair to a log-space offset
``d_s = (d_CL, d_V)``: how far that species sits from the common power law for that drug. Its
input is the species' measured ``fu``, optionally the species' physiology (flows and GFR per
``BW^0.75``, liver, adipose and blood fractions, haematocrit: the same numbers for every body
weight of a species, so the network never sees body weight itself), the drug's descriptors
(logP, ion class, ionisation at plasma pH) and a context summarising the *source* observations
(mean allometrically normalised CL and Vss, mean ``CL / Q_h`` and ``CL / (fu GFR)``, mean log
fu). The prediction removes each source's offset before scaling and
adds the target's back:

    log CL_T = log CL_T^allo + d_T - mean_{s in S} d_s        (likewise for Vss)

so with ``g == 0`` it is exactly simple allometry; the final layer starts at zero (training
starts from allometry) and each offset is bounded, ``|d| <= bound`` (default ln 10), so a
poorly extrapolating network cannot move a prediction more than ``2 · bound`` from allometry.
Known rules are special cases: ``d_s = log fu_s`` is the unbound-fraction correction of
allometry (Tang & Mayersohn 2005; Øie & Tozer 1979 for Vss).

**Training protocols** (`TrainConfig.protocol`):

- ``"loso"`` (leave one species out; the honest "species held out" protocol): every training
  example predicts one *preclinical* species (mouse, rat, dog or monkey) from two or three of
  the other preclinical species. Human is never a training target and no human value of a
  training drug is used; human is predicted at test time from rat, dog and monkey;
- ``"human"``: as ``"loso"`` plus human targets of the *training* drugs (a company's
  historical compounds with human PK); test drugs stay held out.

**Physiology inputs** (`TrainConfig.physiology`, default off). Under ``"loso"`` the network sees
four training species only: their physiology vectors are four points, which identify a species
as well as a one-hot code would, and human is a fifth point outside their hull (smallest liver
fraction, largest adipose fraction); what the network does there is an unconstrained
extrapolation (in our study it biased human CL upwards). Off, the species enters only through
its measured fu (and the drug's data), so the offset is a species-agnostic function that
transfers to any species. With human targets in training (``"human"``) the physiology inputs
can be used.

**Simulated drug library** ([`sample_drugs`][]). Truth comes from the whole-body PBPK model's
analytic CL and Vss ([`clearance_analytic`][pkpd_jax.pbpk.clearance_analytic],
[`vss_analytic`][pkpd_jax.pbpk.vss_analytic]; float64) with each species' physiology and a
species-specific version of the drug. The interspecies assumptions (`SamplerConfig`) are
modelling choices for the simulation, not fitted to data:

- ion class neutral / acid / base with probabilities 0.30 / 0.25 / 0.45; logP ~ N(2.5, 1.3)
  clipped to [-1, 6]; pKa ~ U(3, 6.5) for acids and U(6, 10.5) for bases;
- fraction unbound: a drug-level log-odds ``a = mu_class - 0.6 (logP - 2.5) + N(0, 1.2)`` with
  ``mu`` = -2.5 (acid), -1.0 (neutral), -0.3 (base) (acids bind albumin strongly, lipophilic
  drugs bind more); each species ``logit fu_s = a + shift + N(0, 0.5)`` (log-normal-like
  species-to-species scatter); for acids ``shift`` = +0.8 mouse, +0.6 rat, +0.3 dog, +0.2
  monkey, 0 human (weaker albumin binding of acids in rodent plasma, qualitatively);
- hepatic intrinsic clearance per kg liver: a drug level ``log10 c ~ U(-0.5, 3.5)`` (L/h/kg
  liver, unbound); ``CLint_s = c (BW_ref,s / BW_ref,human)^(-0.25) exp(N(0, 0.5))``: liver
  metabolic capacity per gram falling with body size (Boxenbaum 1982, J Pharmacokinet Biopharm
  10:201, clearance ∝ BW^0.75 with liver mass ∝ BW) plus drug-by-species scatter (enzyme
  differences);
- strong bases (pKa >= 7) get a measured human blood:plasma ratio ``BP ~ logU(0.7, 2.5)``; its
  erythrocyte affinity ``Kpu_BC`` is kept across species (``BP_s = 1 - H_s + H_s fu_s Kpu_BC``);
  other drugs' BP is predicted (Rodgers & Rowland);
- body weight of each study ``BW_ref,s · exp(N(0, 0.1))``;
- "observed" CL and Vss: truth × ``exp(N(0, 0.2))`` (between-study variability), measured fu:
  truth × ``exp(N(0, 0.1))`` capped at 1. The test truth is the noiseless human value.

The network is float32 (its inputs are computed in float64); every random step takes a seed.
Checkpoints are one file: a JSON header line (configuration, feature standardisation, training
record) then ``equinox.tree_serialise_leaves`` of the ensemble.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax

from ..errors import PkpdError
from .model import clearance_analytic, pbpk_params, vss_analytic
from .partition import Drug
from .physiology import SPECIES, physiology


__all__ = [
    "AllometryError",
    "SamplerConfig",
    "TrainConfig",
    "Observations",
    "AllometryData",
    "NeuralAllometry",
    "PRECLINICAL",
    "DEFAULT_SOURCES",
    "KINDS",
    "sample_drugs",
    "species_features",
    "build_inputs",
    "make_observations",
    "simple_allometry",
    "fitted_allometry",
    "single_species",
    "fold_metrics",
    "train",
    "predict",
    "evaluate",
    "save",
    "load",
]

PRECLINICAL = ("mouse", "rat", "dog", "monkey")
DEFAULT_SOURCES = ("rat", "dog", "monkey")
KINDS = ("neutral", "acid", "base")
EXPONENTS = (0.75, 1.0)  # CL, Vss
_SP = {s: i for i, s in enumerate(SPECIES)}
_FORMAT = "pkpd_jax.pbpk.allometry/1"


class AllometryError(PkpdError, ValueError):
    """Bad input to the neural-allometry functions (names the value and why)."""


# ------------------------------------------------------------------------------------ sampler
@dataclass(frozen=True)
class SamplerConfig:
    """Assumptions of the simulated drug library (see the module docstring)."""

    p_kind: tuple[float, float, float] = (0.30, 0.25, 0.45)
    logp_mean: float = 2.5
    logp_sd: float = 1.3
    logp_range: tuple[float, float] = (-1.0, 6.0)
    pka_acid: tuple[float, float] = (3.0, 6.5)
    pka_base: tuple[float, float] = (6.0, 10.5)
    fu_logit_mean: tuple[float, float, float] = (-1.0, -2.5, -0.3)  # neutral, acid, base
    fu_logit_logp: float = -0.6
    fu_logit_sd: float = 1.2
    fu_species_sd: float = 0.5
    acid_fu_shift: tuple[tuple[str, float], ...] = (
        ("mouse", 0.8),
        ("rat", 0.6),
        ("dog", 0.3),
        ("monkey", 0.2),
        ("human", 0.0),
    )
    log10_clint_range: tuple[float, float] = (-0.5, 3.5)
    clint_bw_exponent: float = -0.25
    clint_species_sd: float = 0.5
    bp_base_range: tuple[float, float] = (0.7, 2.5)
    bw_sd: float = 0.1
    obs_sd: float = 0.2
    fu_obs_sd: float = 0.1


@dataclass(frozen=True)
class Observations:
    """What is known about `n` drugs: descriptors and per-species measurements.

    Arrays over species are ``(n, len(SPECIES))`` in the order of ``SPECIES``; NaN means not
    measured. `cl` in L/h, `vss` in L, `bw` in kg, `fu` the measured fraction unbound in that
    species' plasma. `kind` holds indices into ``KINDS``; `pka` is NaN for neutral drugs.
    """

    logp: np.ndarray
    kind: np.ndarray
    pka: np.ndarray
    fu: np.ndarray
    bw: np.ndarray
    cl: np.ndarray
    vss: np.ndarray
    names: tuple[str, ...] = ()

    @property
    def n(self) -> int:
        return int(self.logp.shape[0])

    def take(self, idx) -> Observations:
        idx = np.asarray(idx)
        names = tuple(self.names[i] for i in idx) if self.names else ()
        return Observations(*(getattr(self, f.name)[idx] for f in dataclasses.fields(self)[:-1]), names=names)


@dataclass(frozen=True)
class AllometryData:
    """A simulated library: `obs` (noisy measurements) and the noiseless truth ``(n, 5)``."""

    obs: Observations
    cl_true: np.ndarray
    vss_true: np.ndarray
    fu_true: np.ndarray
    clint: np.ndarray
    bp: np.ndarray
    drugs: tuple = field(default=(), repr=False)  # per drug: {species: Drug}

    @property
    def n(self) -> int:
        return self.obs.n

    def take(self, idx) -> AllometryData:
        idx = np.asarray(idx)
        return AllometryData(
            obs=self.obs.take(idx),
            cl_true=self.cl_true[idx],
            vss_true=self.vss_true[idx],
            fu_true=self.fu_true[idx],
            clint=self.clint[idx],
            bp=self.bp[idx],
            drugs=tuple(self.drugs[i] for i in idx) if self.drugs else (),
        )


def _logit(p):
    return np.log(p) - np.log1p(-p)


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def sample_drugs(n: int, seed: int = 0, config: SamplerConfig = SamplerConfig()) -> AllometryData:
    """Simulate `n` drugs in every species of ``SPECIES``: PBPK truth (float64) and noisy
    observations (assumptions in the module docstring and `SamplerConfig`)."""
    n = int(n)
    if n < 1:
        raise AllometryError(f"`n` (number of drugs) must be >= 1; got {n}.")
    c = config
    rng = np.random.default_rng(seed)
    ns = len(SPECIES)
    bw_ref = np.array([physiology(s).bw for s in SPECIES])
    hct = np.array([physiology(s).hct for s in SPECIES])
    shift = dict(c.acid_fu_shift)
    out = {k: np.zeros((n, ns)) for k in ("bw", "fu", "clint", "bp", "cl", "vss")}
    logp = np.zeros(n)
    kind = np.zeros(n, dtype=np.int64)
    pka = np.full(n, np.nan)
    drugs = []
    for i in range(n):
        k = int(rng.choice(3, p=np.asarray(c.p_kind) / np.sum(c.p_kind)))
        kind[i] = k
        logp[i] = float(np.clip(rng.normal(c.logp_mean, c.logp_sd), *c.logp_range))
        if KINDS[k] == "acid":
            pka[i] = rng.uniform(*c.pka_acid)
        elif KINDS[k] == "base":
            pka[i] = rng.uniform(*c.pka_base)
        a = c.fu_logit_mean[k] + c.fu_logit_logp * (logp[i] - 2.5) + c.fu_logit_sd * rng.normal()
        eps_fu = rng.normal(size=ns) * c.fu_species_sd
        log10_c = rng.uniform(*c.log10_clint_range)
        eps_cl = rng.normal(size=ns) * c.clint_species_sd
        bw = bw_ref * np.exp(c.bw_sd * rng.normal(size=ns))
        strong_base = KINDS[k] == "base" and pka[i] >= 7.0
        bp_h = math.exp(rng.uniform(*np.log(c.bp_base_range))) if strong_base else None
        per_sp = {}
        fu_h = None
        for j, sp in enumerate(SPECIES):
            s_fu = shift.get(sp, 0.0) if KINDS[k] == "acid" else 0.0
            fu = float(np.clip(_sigmoid(a + s_fu + eps_fu[j]), 1e-4, 1.0))
            if sp == "human":
                fu_h = fu
            clint = float(
                10.0**log10_c
                * (bw_ref[j] / bw_ref[_SP["human"]]) ** c.clint_bw_exponent
                * math.exp(eps_cl[j])
            )
            out["fu"][i, j], out["clint"][i, j], out["bw"][i, j] = fu, clint, bw[j]
            per_sp[sp] = (fu, clint)
        for j, sp in enumerate(SPECIES):
            fu, clint = per_sp[sp]
            bp = None
            if strong_base:
                h_h = hct[_SP["human"]]
                kpu_bc = (bp_h - 1.0 + h_h) / (h_h * fu_h)
                bp = 1.0 - hct[j] + hct[j] * fu * kpu_bc
            drug = Drug(
                logp=float(logp[i]),
                fu=fu,
                kind=KINDS[k],
                pka=None if KINDS[k] == "neutral" else float(pka[i]),
                bp=bp,
                clint=clint,
                name=f"sim{i:05d}",
            )
            p = pbpk_params(sp, drug, float(bw[j]))
            out["bp"][i, j] = p["BP"]
            out["cl"][i, j] = float(clearance_analytic(p))
            out["vss"][i, j] = float(vss_analytic(p))
            per_sp[sp] = drug
        drugs.append(per_sp)
    noise = rng.normal(size=(3, n, ns))
    obs = Observations(
        logp=logp,
        kind=kind,
        pka=pka,
        fu=np.minimum(out["fu"] * np.exp(c.fu_obs_sd * noise[0]), 1.0),
        bw=out["bw"],
        cl=out["cl"] * np.exp(c.obs_sd * noise[1]),
        vss=out["vss"] * np.exp(c.obs_sd * noise[2]),
        names=tuple(f"sim{i:05d}" for i in range(n)),
    )
    return AllometryData(
        obs=obs,
        cl_true=out["cl"],
        vss_true=out["vss"],
        fu_true=out["fu"],
        clint=out["clint"],
        bp=out["bp"],
        drugs=tuple(drugs),
    )


# ----------------------------------------------------------------------------------- features
SPECIES_FEATURES = (
    "log Q_liver/BW^0.75",
    "log GFR/BW^0.75",
    "log V_liver/BW",
    "adipose fraction",
    "blood fraction",
    "hct",
)


def species_features(species: str) -> np.ndarray:
    """Body-weight-free physiology of `species` (``SPECIES_FEATURES``: what the well-stirred
    clearance and the Vss depend on; constant within a species since `physiology` scales volumes
    with BW and flows with BW^0.75). Few on purpose: the network sees only four training species,
    so each extra species feature is another direction to extrapolate along for a fifth one."""
    p = physiology(species)
    b, b75 = p.bw, p.bw**0.75
    return np.array(
        [
            math.log(p.flows["liver"] / b75),
            math.log(p.gfr / b75),
            math.log(p.volumes["liver"] / b),
            p.volumes["adipose"] / b,
            p.blood_volume / b,
            p.hct,
        ]
    )


_SPECIES_FEAT = np.stack([species_features(s) for s in SPECIES])
_Q_LIVER_75 = np.exp(_SPECIES_FEAT[:, 0])  # Q_liver / BW^0.75 (L/h/kg^0.75)
_GFR_75 = np.exp(_SPECIES_FEAT[:, 1])
FEATURES = (
    *SPECIES_FEATURES,
    "log fu",
    "log fu - source mean",
    "logP",
    "neutral",
    "acid",
    "base",
    "log10 ionisation at pH 7.4",
    "ctx log CL/BW^0.75",
    "ctx log CL/Q_liver",
    "ctx log Vss/BW",
    "ctx log CL/(fu GFR)",
    "ctx log fu",
)


def _ionisation_log10(kind, pka):
    out = np.zeros(kind.shape)
    acid, base = kind == KINDS.index("acid"), kind == KINDS.index("base")
    out[base] = np.log10(1.0 + 10.0 ** (pka[base] - 7.4))
    out[acid] = np.log10(1.0 + 10.0 ** (7.4 - pka[acid]))
    return out


def _masked_mean(x, mask):
    return np.sum(np.where(mask, x, 0.0), axis=1) / np.sum(mask, axis=1)


def build_inputs(obs: Observations, sources: np.ndarray, target: np.ndarray):
    """Network inputs for predicting species `target` (``(n,)`` indices into ``SPECIES``) from the
    species where `sources` (``(n, 5)`` bool) is set.

    Returns ``x`` ``(n, 5, len(FEATURES))`` (rows of species neither source nor target are zero)
    and the simple-allometry base ``(n, 2)`` (log CL, log Vss of the target)."""
    src = np.asarray(sources, dtype=bool)
    tgt = np.asarray(target, dtype=np.int64)
    n, ns = src.shape
    onehot = np.zeros((n, ns), dtype=bool)
    onehot[np.arange(n), tgt] = True
    if np.any(src & onehot):
        raise AllometryError("a target species is also among its sources.")
    if np.any(src.sum(1) < 1):
        raise AllometryError("every prediction needs at least one source species.")
    for name, arr in (("CL", obs.cl), ("Vss", obs.vss), ("fu", obs.fu), ("BW", obs.bw)):
        bad = src & ~(np.isfinite(arr) & (arr > 0))
        if np.any(bad):
            i, j = np.argwhere(bad)[0]
            raise AllometryError(f"source {SPECIES[j]} of drug {i} needs a positive {name}; got {arr[i, j]}.")
    for name, arr in (("fu", obs.fu), ("BW", obs.bw)):
        bad = onehot & ~(np.isfinite(arr) & (arr > 0))
        if np.any(bad):
            i, j = np.argwhere(bad)[0]
            raise AllometryError(f"target {SPECIES[j]} of drug {i} needs a positive {name}; got {arr[i, j]}.")
    with np.errstate(invalid="ignore", divide="ignore"):
        lbw, lcl, lv, lfu = np.log(obs.bw), np.log(obs.cl), np.log(obs.vss), np.log(obs.fu)
        lbw_t = lbw[np.arange(n), tgt]
        base = np.stack(
            [
                _masked_mean(lcl + EXPONENTS[0] * (lbw_t[:, None] - lbw), src),
                _masked_mean(lv + EXPONENTS[1] * (lbw_t[:, None] - lbw), src),
            ],
            axis=1,
        )
        cl75 = lcl - 0.75 * lbw
        ctx = np.stack(
            [
                _masked_mean(cl75, src),
                _masked_mean(cl75 - np.log(_Q_LIVER_75)[None], src),
                _masked_mean(lv - lbw, src),
                _masked_mean(cl75 - lfu - np.log(_GFR_75)[None], src),
                _masked_mean(lfu, src),
            ],
            axis=1,
        )
        used = src | onehot
        lfu_used = np.where(used, lfu, 0.0)
        drug = np.column_stack([obs.logp, np.eye(3)[obs.kind], _ionisation_log10(obs.kind, obs.pka)])
        x = np.concatenate(
            [
                np.broadcast_to(_SPECIES_FEAT[None], (n, ns, _SPECIES_FEAT.shape[1])),
                lfu_used[..., None],
                (lfu_used - ctx[:, 4:5])[..., None],
                np.broadcast_to(drug[:, None], (n, ns, drug.shape[1])),
                np.broadcast_to(ctx[:, None], (n, ns, ctx.shape[1])),
            ],
            axis=2,
        )
    x = np.where(used[..., None], x, 0.0)
    return x, base


def make_observations(
    drug: dict, observed: dict, target: str = "human", target_bw: float | None = None, name: str = "drug"
) -> tuple[Observations, list[str]]:
    """One drug's `Observations` from plain values.

    `drug`: ``logp``, ``fu`` (the target species' measured fraction unbound), ``kind``
    (``neutral``/``acid``/``base``, default neutral) and ``pka`` (acids and bases).
    `observed`: ``{species: {"CL": L/h, "V": L (Vss), "fu": ..., "bw": kg}}``; ``fu`` defaults
    to the target's and ``bw`` to the species' reference weight. Returns the observations and
    notes on the defaults used."""
    notes = []
    target = _check_target(target)
    unknown = set(drug) - {"logp", "fu", "kind", "pka", "bw", "name"}
    if unknown:
        raise AllometryError(f"unknown drug field(s) {sorted(unknown)}; use logp, fu, kind, pka.")
    for k in ("logp", "fu"):
        if k not in drug:
            raise AllometryError(f"the drug needs `{k}` (e.g. logp=2.5,fu=0.1,kind=base,pka=9).")
    kind = str(drug.get("kind", "neutral")).strip().lower()
    if kind not in KINDS:
        raise AllometryError(f"drug `kind` must be one of {', '.join(KINDS)}; got {kind!r}.")
    pka = drug.get("pka")
    try:  # validates logp, fu, kind and pka the way the PBPK model does
        Drug(
            logp=float(drug["logp"]),
            fu=float(drug["fu"]),
            kind=kind,
            pka=None if pka is None else float(pka),
            name=name,
        )
    except ValueError as e:
        raise AllometryError(str(e)) from None
    if not observed:
        raise AllometryError("no observed species: give CL and V of at least one preclinical species.")
    ns = len(SPECIES)
    arr = {k: np.full((1, ns), np.nan) for k in ("fu", "bw", "cl", "vss")}
    t = _SP[target]
    arr["fu"][0, t] = float(drug["fu"])
    bw_t = physiology(target).bw if target_bw is None else float(target_bw)
    if not (math.isfinite(bw_t) and bw_t > 0):
        raise AllometryError(f"the target body weight must be a positive number of kg; got {target_bw}.")
    arr["bw"][0, t] = bw_t
    for sp, vals in observed.items():
        key = str(sp).strip().lower()
        if key not in _SP:
            raise AllometryError(f"unknown observed species {sp!r}; available: {', '.join(SPECIES)}.")
        if key == target:
            raise AllometryError(f"the target species {target!r} cannot also be observed (a source).")
        extra = set(vals) - {"CL", "V", "fu", "bw"}
        if extra:
            raise AllometryError(f"{key}: unknown field(s) {sorted(extra)}; use CL, V, fu, bw.")
        for k in ("CL", "V"):
            v = vals.get(k)
            if v is None or not (math.isfinite(float(v)) and float(v) > 0):
                raise AllometryError(f"{key}: `{k}` must be a positive number; got {v!r}.")
        fu = vals.get("fu")
        if fu is None:
            fu = float(drug["fu"])
            notes.append(f"{key}: fu not given, taken equal to the target's ({fu:g})")
        if not 0.0 < float(fu) <= 1.0:
            raise AllometryError(f"{key}: `fu` must be in (0, 1]; got {fu!r}.")
        bw = vals.get("bw", physiology(key).bw)
        if not (math.isfinite(float(bw)) and float(bw) > 0):
            raise AllometryError(f"{key}: `bw` must be a positive number of kg; got {bw!r}.")
        j = _SP[key]
        arr["cl"][0, j], arr["vss"][0, j] = float(vals["CL"]), float(vals["V"])
        arr["fu"][0, j], arr["bw"][0, j] = float(fu), float(bw)
    obs = Observations(
        logp=np.array([float(drug["logp"])]),
        kind=np.array([KINDS.index(kind)]),
        pka=np.array([np.nan if pka is None else float(pka)]),
        fu=arr["fu"],
        bw=arr["bw"],
        cl=arr["cl"],
        vss=arr["vss"],
        names=(name,),
    )
    return obs, notes


# ---------------------------------------------------------------------------------- baselines
def _mask_of(species: Sequence[str], n: int) -> np.ndarray:
    m = np.zeros((n, len(SPECIES)), dtype=bool)
    for s in species:
        if s not in _SP:
            raise AllometryError(f"unknown species {s!r}; available: {', '.join(SPECIES)}.")
        m[:, _SP[s]] = True
    return m


def simple_allometry(
    obs: Observations, sources=DEFAULT_SOURCES, target: str = "human", fu_corrected: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Fixed-exponent allometry (CL ∝ BW^0.75, Vss ∝ BW^1), geometric mean over `sources`.
    `fu_corrected`: scale unbound CL and Vss (``CL/fu``, ``Vss/fu``) and multiply by the target's
    fu (Tang & Mayersohn 2005; Øie & Tozer 1979). Returns (CL, Vss) of the target."""
    t = _SP[_check_target(target)]
    src = _mask_of(sources, obs.n)
    x, base = build_inputs(obs, src, np.full(obs.n, t))
    if not fu_corrected:
        return np.exp(base[:, 0]), np.exp(base[:, 1])
    lfu = np.log(obs.fu)
    adj = lfu[:, t] - _masked_mean(lfu, src)
    return np.exp(base[:, 0] + adj), np.exp(base[:, 1] + adj)


def fitted_allometry(obs: Observations, sources=DEFAULT_SOURCES, target: str = "human"):
    """Allometry with exponents fitted per drug: least squares of log CL (log Vss) on log BW over
    the `sources` (at least two), extrapolated to the target's BW."""
    t = _SP[_check_target(target)]
    idx = [_SP[s] for s in sources]
    if len(idx) < 2:
        raise AllometryError("fitted allometry needs at least two source species.")
    lb = np.log(obs.bw[:, idx])
    xb = lb - lb.mean(1, keepdims=True)
    out = []
    for arr in (obs.cl, obs.vss):
        ly = np.log(arr[:, idx])
        slope = np.sum(xb * (ly - ly.mean(1, keepdims=True)), 1) / np.sum(xb**2, 1)
        out.append(np.exp(ly.mean(1) + slope * (np.log(obs.bw[:, t]) - lb.mean(1))))
    return out[0], out[1]


def single_species(obs: Observations, species: str, target: str = "human"):
    """Single-species scaling: ``CL_T = CL_s (BW_T / BW_s)^0.75``, ``Vss_T = Vss_s BW_T / BW_s``."""
    return simple_allometry(obs, (species,), target)


def fold_metrics(pred, true) -> dict:
    """Fraction within 2-fold and 3-fold, geometric-mean fold error ``10^mean|log10(pred/true)|``
    and the geometric-mean ratio (bias) ``10^mean log10(pred/true)``."""
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.log10(np.asarray(pred, dtype=float) / np.asarray(true, dtype=float))
    if not np.all(np.isfinite(r)):
        raise AllometryError("predictions and truths must be positive and finite.")
    a = np.abs(r)
    return {
        "within_2fold": float(np.mean(a <= math.log10(2.0) + 1e-12)),
        "within_3fold": float(np.mean(a <= math.log10(3.0) + 1e-12)),
        "gmfe": float(10.0 ** np.mean(a)),
        "bias": float(10.0 ** np.mean(r)),
        "n": int(r.size),
    }


def _check_target(target: str) -> str:
    key = str(target).strip().lower()
    if key not in _SP:
        raise AllometryError(f"unknown target species {target!r}; available: {', '.join(SPECIES)}.")
    return key


# ------------------------------------------------------------------------------------ network
class OffsetNet(eqx.Module):
    """Per (drug, species) log offsets ``(d_CL, d_V)`` from the common power law: an MLP plus a
    linear skip (so that linear rules such as the fu correction are easy to learn), bounded by
    ``bound``; the last layer and the skip start at zero."""

    mlp: eqx.nn.MLP
    linear: eqx.nn.Linear
    bound: float = eqx.field(static=True)

    def __init__(self, in_size: int, width: int, depth: int, bound: float, *, key):
        k1, k2 = jr.split(key)
        mlp = eqx.nn.MLP(in_size, 2, width, depth, activation=jax.nn.silu, dtype=jnp.float32, key=k1)
        self.mlp = eqx.tree_at(lambda m: m.layers[-1], mlp, _zeroed(mlp.layers[-1]))
        self.linear = _zeroed(eqx.nn.Linear(in_size, 2, dtype=jnp.float32, key=k2))
        self.bound = float(bound)

    def __call__(self, x):
        return self.bound * jnp.tanh((self.mlp(x) + self.linear(x)) / self.bound)


def _zeroed(layer: eqx.nn.Linear) -> eqx.nn.Linear:
    return eqx.tree_at(
        lambda lay: (lay.weight, lay.bias), layer, (jnp.zeros_like(layer.weight), jnp.zeros_like(layer.bias))
    )


@dataclass(frozen=True)
class TrainConfig:
    """Training settings. `protocol` is ``"loso"`` or ``"human"`` (module docstring)."""

    protocol: str = "loso"
    physiology: bool = False
    width: int = 64
    depth: int = 2
    bound: float = math.log(10.0)
    steps: int = 3000
    batch: int = 512
    lr: float = 2e-3
    weight_decay: float = 1e-4
    val_fraction: float = 0.15
    eval_every: int = 100
    ensemble: int = 3
    seed: int = 0

    def __post_init__(self):
        if self.protocol not in ("loso", "human"):
            raise AllometryError(f"`protocol` must be 'loso' or 'human'; got {self.protocol!r}.")
        for f in ("width", "depth", "steps", "batch", "eval_every", "ensemble"):
            if int(getattr(self, f)) < 1:
                raise AllometryError(f"`{f}` must be >= 1; got {getattr(self, f)}.")
        if not 0.0 <= self.val_fraction < 1.0:
            raise AllometryError(f"`val_fraction` must be in [0, 1); got {self.val_fraction}.")
        if not (self.bound > 0 and self.lr > 0):
            raise AllometryError(f"`bound` and `lr` must be > 0; got {self.bound}, {self.lr}.")


@dataclass(frozen=True)
class NeuralAllometry:
    """A trained ensemble with its feature standardisation."""

    nets: tuple
    x_mean: np.ndarray
    x_std: np.ndarray
    config: TrainConfig
    meta: dict = field(default_factory=dict)


def _tasks(protocol: str):
    """(target, sources) pairs of the training protocol."""
    out = []
    for t in PRECLINICAL:
        others = [s for s in PRECLINICAL if s != t]
        for r in (3, 2):
            out += [(t, c) for c in itertools.combinations(others, r)]
    if protocol == "human":
        rdm = ("rat", "dog", "monkey")
        out += [("human", c) for r in (3, 2) for c in itertools.combinations(rdm, r)]
    return out


def _examples(obs: Observations, tasks):
    xs, bases, ys, srcs, tgts = [], [], [], [], []
    for t, s in tasks:
        src = _mask_of(s, obs.n)
        tg = np.full(obs.n, _SP[t])
        x, base = build_inputs(obs, src, tg)
        xs.append(x)
        bases.append(base)
        ys.append(np.column_stack([np.log(obs.cl[:, _SP[t]]), np.log(obs.vss[:, _SP[t]])]))
        srcs.append(src)
        tgts.append(tg)
    return (
        np.concatenate(xs),
        np.concatenate(bases),
        np.concatenate(ys),
        np.concatenate(srcs),
        np.concatenate(tgts),
    )


def _forward(net, x, src, tgt_onehot, base):
    d = jax.vmap(jax.vmap(net))(x)  # (n, 5, 2)
    src_mean = jnp.sum(d * src[..., None], 1) / jnp.sum(src, 1, keepdims=True)
    d_t = jnp.sum(d * tgt_onehot[..., None], 1)
    return base + d_t - src_mean


_forward_jit = eqx.filter_jit(_forward)


def _prep(stats, x, src, tgt, physiology: bool):
    x_mean, x_std = stats
    xs = np.where(np.any(x != 0, axis=2, keepdims=True), (x - x_mean) / x_std, 0.0)
    if not physiology:  # the species' physiology columns do not reach the network
        xs[..., : len(SPECIES_FEATURES)] = 0.0
    onehot = np.eye(len(SPECIES))[tgt]
    return (jnp.asarray(xs, jnp.float32), jnp.asarray(src, jnp.float32), jnp.asarray(onehot, jnp.float32))


def train(
    data: AllometryData | Observations, config: TrainConfig = TrainConfig(), log: Callable | None = None
) -> NeuralAllometry:
    """Fit the offset network on the observations of `data` under `config.protocol` (a
    validation split of the drugs, `val_fraction`, picks each member's best step)."""
    obs = data.obs if isinstance(data, AllometryData) else data
    if obs.n < 4:
        raise AllometryError(f"training needs at least 4 drugs; got {obs.n}.")
    c = config
    rng = np.random.default_rng(c.seed)
    perm = rng.permutation(obs.n)
    n_val = int(round(c.val_fraction * obs.n))
    val_idx, tr_idx = perm[:n_val], perm[n_val:]
    tasks = _tasks(c.protocol)
    x, base, y, src, tgt = _examples(obs.take(tr_idx), tasks)
    used = np.any(x != 0, axis=2)
    rows = x[used]
    x_mean, x_std = rows.mean(0), rows.std(0)
    x_std = np.where(x_std > 1e-8, x_std, 1.0)
    xj, sj, oj = _prep((x_mean, x_std), x, src, tgt, c.physiology)
    bj, yj = jnp.asarray(base, jnp.float32), jnp.asarray(y, jnp.float32)
    if n_val:
        xv, bv, yv, sv, tv = _examples(obs.take(val_idx), tasks)
        val = (
            *_prep((x_mean, x_std), xv, sv, tv, c.physiology),
            jnp.asarray(bv, jnp.float32),
            jnp.asarray(yv, jnp.float32),
        )

    def loss_fn(net, xb, sb, ob, bb, yb):
        pred = _forward(net, xb, sb, ob, bb)
        return jnp.mean(jnp.sum((pred - yb) ** 2, axis=1))

    sched = optax.cosine_decay_schedule(c.lr, c.steps, alpha=0.05)
    opt = optax.adamw(sched, weight_decay=c.weight_decay)

    @eqx.filter_jit
    def step(net, state, b):
        batch = (xj[b], sj[b], oj[b], bj[b], yj[b])
        loss, g = eqx.filter_value_and_grad(loss_fn)(net, *batch)
        upd, state = opt.update(g, state, eqx.filter(net, eqx.is_array))
        return eqx.apply_updates(net, upd), state, loss

    eval_loss = eqx.filter_jit(loss_fn)
    n_ex = xj.shape[0]
    nets, history = [], []
    t0 = time.perf_counter()
    base_val = (
        float(eval_loss(OffsetNet(len(FEATURES), c.width, c.depth, c.bound, key=jr.PRNGKey(0)), *val))
        if n_val
        else None
    )
    for m in range(c.ensemble):
        key = jr.PRNGKey(c.seed * 1000 + m)
        net = OffsetNet(len(FEATURES), c.width, c.depth, c.bound, key=key)
        state = opt.init(eqx.filter(net, eqx.is_array))
        brng = np.random.default_rng([c.seed, m])
        best, best_loss, hist = net, math.inf, []
        for it in range(1, c.steps + 1):
            b = jnp.asarray(brng.integers(0, n_ex, size=min(c.batch, n_ex)))
            net, state, loss = step(net, state, b)
            if it % c.eval_every == 0 or it == c.steps:
                vl = float(eval_loss(net, *val)) if n_val else float(loss)
                hist.append((it, float(loss), vl))
                if vl < best_loss:
                    best, best_loss = net, vl
        if log is not None:
            log(
                f"member {m + 1}/{c.ensemble}: best validation loss {best_loss:.4f} "
                f"(allometry {base_val if base_val is None else round(base_val, 4)}), "
                f"{time.perf_counter() - t0:.0f} s"
            )
        nets.append(best)
        history.append(hist)
    meta = {
        "protocol": c.protocol,
        "physiology": c.physiology,
        "n_train_drugs": int(len(tr_idx)),
        "n_val_drugs": int(n_val),
        "n_examples": int(n_ex),
        "tasks": [[t, list(s)] for t, s in tasks],
        "val_loss_allometry": base_val,
        "val_loss_best": [min(h[2] for h in hh) for hh in history],
        "seconds": round(time.perf_counter() - t0, 1),
        "features": list(FEATURES),
    }
    return NeuralAllometry(nets=tuple(nets), x_mean=x_mean, x_std=x_std, config=c, meta=meta)


def predict(
    model: NeuralAllometry,
    obs: Observations,
    sources=DEFAULT_SOURCES,
    target: str = "human",
    zero_correction: bool = False,
) -> dict:
    """Predict the target species' CL (L/h) and Vss (L) for every drug of `obs` from `sources`.

    Returns ``{"cl", "vss", "cl_allometry", "vss_allometry", "correction_cl",
    "correction_vss"}`` (arrays; corrections are fold factors). `zero_correction` drops the
    network: the result is then exactly `simple_allometry`."""
    t = _SP[_check_target(target)]
    if target in sources:
        raise AllometryError(f"the target {target!r} cannot also be a source.")
    src = _mask_of(sources, obs.n)
    tg = np.full(obs.n, t)
    x, base = build_inputs(obs, src, tg)
    if zero_correction or not model.nets:
        log_pred = base
    else:
        xj, sj, oj = _prep((model.x_mean, model.x_std), x, src, tg, model.config.physiology)
        bj = jnp.asarray(np.zeros_like(base), jnp.float32)
        corr = np.mean(
            [np.asarray(_forward_jit(net, xj, sj, oj, bj), dtype=np.float64) for net in model.nets], axis=0
        )
        log_pred = base + corr
    return {
        "cl": np.exp(log_pred[:, 0]),
        "vss": np.exp(log_pred[:, 1]),
        "cl_allometry": np.exp(base[:, 0]),
        "vss_allometry": np.exp(base[:, 1]),
        "correction_cl": np.exp(log_pred[:, 0] - base[:, 0]),
        "correction_vss": np.exp(log_pred[:, 1] - base[:, 1]),
    }


def evaluate(models: dict, data: AllometryData, sources=DEFAULT_SOURCES, target: str = "human") -> dict:
    """Fold-error metrics of every method on `data` against the noiseless truth of `target`:
    each neural model of `models` (``{label: NeuralAllometry}``), simple allometry (fixed
    exponents; fitted exponents; fu-corrected) and single-species scaling from each source.

    Returns ``{"metrics": {method: {"CL": ..., "Vss": ...}}, "predictions": {method: (cl, vss)},
    "truth": (cl, vss)}``."""
    t = _SP[_check_target(target)]
    obs = data.obs
    preds = {}
    for label, m in models.items():
        p = predict(m, obs, sources, target)
        preds[label] = (p["cl"], p["vss"])
    preds["simple allometry (0.75 / 1.0)"] = simple_allometry(obs, sources, target)
    if len(sources) >= 2:
        preds["simple allometry (fitted exponents)"] = fitted_allometry(obs, sources, target)
    preds["simple allometry, fu-corrected"] = simple_allometry(obs, sources, target, fu_corrected=True)
    for s in sources:
        preds[f"single species ({s})"] = single_species(obs, s, target)
    truth = (data.cl_true[:, t], data.vss_true[:, t])
    metrics = {
        k: {"CL": fold_metrics(v[0], truth[0]), "Vss": fold_metrics(v[1], truth[1])} for k, v in preds.items()
    }
    return {"metrics": metrics, "predictions": preds, "truth": truth}


# -------------------------------------------------------------------------------- checkpoints
def save(model: NeuralAllometry, path: str | Path) -> Path:
    """Write `model` to one file (JSON header line + equinox-serialised ensemble), atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    header = {
        "format": _FORMAT,
        "config": dataclasses.asdict(model.config),
        "features": list(FEATURES),
        "n_nets": len(model.nets),
        "x_mean": model.x_mean.tolist(),
        "x_std": model.x_std.tolist(),
        "meta": model.meta,
    }
    from ..amortized.train import _write_atomic

    _write_atomic(path, header, list(model.nets))
    return path


def load(path: str | Path) -> NeuralAllometry:
    """Read a checkpoint written by [`save`][]."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist.")
    with open(path, "rb") as f:
        try:
            header = json.loads(f.readline())
        except (json.JSONDecodeError, UnicodeDecodeError):
            header = {}
        if not isinstance(header, dict) or header.get("format") != _FORMAT:
            raise AllometryError(
                f"{path} is not a neural-allometry checkpoint (expected format {_FORMAT!r})."
            )
        if tuple(header["features"]) != FEATURES:
            raise AllometryError(f"{path} was trained on other input features: {header['features']}.")
        cfg = dict(header["config"])
        cfg = TrainConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in cfg.items()})
        like = [
            eqx.filter_eval_shape(
                OffsetNet, len(FEATURES), cfg.width, cfg.depth, cfg.bound, key=jr.PRNGKey(0)
            )
            for _ in range(header["n_nets"])
        ]
        nets = eqx.tree_deserialise_leaves(f, like)
    return NeuralAllometry(
        nets=tuple(nets),
        x_mean=np.asarray(header["x_mean"]),
        x_std=np.asarray(header["x_std"]),
        config=cfg,
        meta=header.get("meta", {}),
    )
