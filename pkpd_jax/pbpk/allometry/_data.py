"""The simulated drug library of neural allometry: species sets, the sampler and its data
containers (see "Simulated drug library" in `pkpd_jax.pbpk.allometry`)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import numpy as np

from ...errors import PkpdError
from ..model import clearance_analytic, pbpk_params, vss_analytic
from ..partition import Drug
from ..physiology import SPECIES, physiology


PRECLINICAL = ("mouse", "rat", "dog", "monkey")
DEFAULT_SOURCES = ("rat", "dog", "monkey")
KINDS = ("neutral", "acid", "base")
EXPONENTS = (0.75, 1.0)  # CL, Vss
_SP = {s: i for i, s in enumerate(SPECIES)}


class AllometryError(PkpdError, ValueError):
    """Bad input to the neural-allometry functions (names the value and why)."""


def _check_target(target: str) -> str:
    key = str(target).strip().lower()
    if key not in _SP:
        raise AllometryError(f"unknown target species {target!r}; available: {', '.join(SPECIES)}.")
    return key


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
