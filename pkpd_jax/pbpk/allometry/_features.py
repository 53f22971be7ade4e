"""The network's inputs: species and drug features, the per-example input matrix, and one
drug's observations from plain values."""

from __future__ import annotations

import math

import numpy as np

from ..partition import Drug
from ..physiology import SPECIES, physiology
from ._data import (
    _SP,
    EXPONENTS,
    KINDS,
    AllometryError,
    Observations,
    _check_target,
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
