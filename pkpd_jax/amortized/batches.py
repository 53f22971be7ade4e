"""Features, parameter normalisation and the streaming batch loader of the model-selection corpora.

This module is the one place where an observed subject becomes network input: the corpus
generator ([`pkpd_jax.amortized.corpus`][]) and classification of real subjects both call
[`featurize`][] / [`featurize_batch`][], so training data and real data are normalised alike.

**Features** (per observation time, float32; padding rows are all 0 with ``mask == False``).
Times are h since the subject's first dose. "Before t" means strictly before: an observation at
a dose time is pre-dose (the simulator's rule), so that dose does not count yet.

PK family (``F = 7``), from the dose record and the observed concentration:

| # | name | value |
|---|---|---|
| 0 | `log_conc` | ``log(C · 50 L / D_ref) / 4``; ``D_ref`` = the subject's largest dose (mg); 0 when BLQ |
| 1 | `conc_blq` | 1 when the concentration is below the quantification limit (or <= 0) |
| 2 | `tsld` | ``log1p(time since the last dose started before t, h) / log1p(168)``; 0 before any dose |
| 3 | `last_dose` | ``log1p(amount of that dose / 10 mg) / log1p(100)``; 0 before any dose |
| 4 | `infusion` | 1 when that dose is an infusion (duration > 0) |
| 5 | `inf_duration` | ``log1p(its duration, h) / log1p(24)`` |
| 6 | `cum_dose` | ``(sum of doses started before t) / D_ref / 10`` |

PD family (``F = 7``), from the observed concentration (the driver) and the biomarker (``R_base``
is the first observed biomarker, the pre-dose baseline in the corpora):

| # | name | value |
|---|---|---|
| 0 | `log_conc` | ``log(C / 1 mg/L) / 4``; 0 when BLQ or missing |
| 1 | `conc_blq` | 1 when the concentration is BLQ (or <= 0) |
| 2 | `conc_missing` | 1 when no concentration was taken at this time |
| 3 | `resp_rel` | ``R / R_base - 1``, clipped to [-10, 10]; 0 when missing |
| 4 | `resp_missing` | 1 when no biomarker was taken at this time |
| 5 | `log_baseline` | ``log(|R_base|) / 4`` (the same on every row; the absolute level, needed for ``R0``) |
| 6 | `tsld` | as in PK |

Concentrations are never logged at zero: a value <= 0 or a BLQ flag sets the BLQ flag and a 0
feature. NaN means not measured (a PK time without a concentration is dropped).

**Parameters** are regressed in a normalised log space: for parameter ``θ`` of a class with
declared prior ``log θ ~ N(μ, σ²)`` (logit for fractions, e.g. ``Imax``), the target is
``(log θ - μ) / σ`` ([`normalise_params`][], inverse [`denormalise_params`][]). Slot ``p`` of the
``P``-vector is the ``p``-th parameter of the class (``P`` = the most parameters of any class of
the family: 6 for PK, 4 for PD); unused slots are 0 with ``param_mask == False``.

**Loader.** [`iter_batches`][] streams one split of a corpus directory: shards in an order
shuffled by ``(seed, epoch)``, rows shuffled within a buffer of a few shards, never the whole
corpus in memory. Each shard stores its train, val and test rows as separate parquet row groups,
so a split reads only its own rows.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np


__all__ = [
    "Batch",
    "CorpusInfo",
    "corpus_info",
    "iter_batches",
    "read_split",
    "featurize",
    "featurize_batch",
    "normalise_params",
    "denormalise_params",
    "class_names",
    "param_names",
    "param_mask",
    "n_params",
    "feature_names",
    "PK_FEATURES",
    "PD_FEATURES",
    "SPLITS",
]

SPLITS = ("train", "val", "test")
MANIFEST = "manifest.json"

PK_FEATURES = ("log_conc", "conc_blq", "tsld", "last_dose", "infusion", "inf_duration", "cum_dose")
PD_FEATURES = ("log_conc", "conc_blq", "conc_missing", "resp_rel", "resp_missing", "log_baseline", "tsld")

# Feature scales (fixed constants, so that real subjects are featurised as the corpus was).
_V_REF = 50.0  # L: dose-normalised concentration C·V_REF/D is ~1 right after a bolus into 50 L
_LOG_SCALE = 4.0
_TSLD_SCALE = math.log1p(168.0)  # a week
_DOSE_UNIT, _DOSE_SCALE = 10.0, math.log1p(100.0)  # 10 mg, and 1000 mg -> 1
_DUR_SCALE = math.log1p(24.0)
_CUM_SCALE = 10.0
_RESP_CLIP = 10.0


# ----------------------------------------------------------------------------- data classes
@dataclass(frozen=True)
class Batch:
    """One batch of trajectories (numpy arrays).

    - `times`: float32 ``[B, T]`` observation times in h since the first dose (padding 0).
    - `values`: float32 ``[B, T, F]`` normalised features (padding 0).
    - `mask`: bool ``[B, T]``, True where a real observation exists (real rows come first).
    - `label`: int32 ``[B]`` class index into `CorpusInfo.class_names`.
    - `params`: float32 ``[B, P]`` normalised log-parameters of the true class, 0 where absent.
    - `param_mask`: bool ``[B, P]``, True for the class's parameters.
    """

    times: np.ndarray
    values: np.ndarray
    mask: np.ndarray
    label: np.ndarray
    params: np.ndarray
    param_mask: np.ndarray


@dataclass(frozen=True)
class CorpusInfo:
    """What a corpus holds: family, classes (label order), parameter names per class, shapes
    ``T``, ``F``, ``P``, feature names and the number of trajectories per split."""

    family: str
    class_names: tuple[str, ...]
    param_names: dict[str, tuple[str, ...]]
    n_times: int
    n_features: int
    n_params: int
    feature_names: tuple[str, ...]
    counts: dict[str, int]


# ----------------------------------------------------------------------------- classes and priors
def _check_family(family: str) -> str:
    if family not in ("pk", "pd"):
        raise ValueError(f"`family` must be 'pk' or 'pd'; got {family!r}.")
    return family


@functools.cache
def _class_table(family: str) -> dict:
    """``{class name: (param names, constraints, prior loc, prior sd)}`` from the model library."""
    from ..models import PD_MODELS, PK_MODELS

    models = PK_MODELS if _check_family(family) == "pk" else PD_MODELS
    return {
        cls.name: (
            tuple(p.name for p in cls.params),
            tuple(p.constraint for p in cls.params),
            np.array([p.prior_loc for p in cls.params]),
            np.array([p.log_sd for p in cls.params]),
        )
        for cls in models
    }


def class_names(family: str) -> tuple[str, ...]:
    """The 10 class names of a family, in the library's (and the corpus labels') order."""
    return tuple(_class_table(family))


def n_params(family: str) -> int:
    """``P``: the most parameters of any class of the family (6 for PK, 4 for PD)."""
    return max(len(v[0]) for v in _class_table(family).values())


def feature_names(family: str) -> tuple[str, ...]:
    return PK_FEATURES if _check_family(family) == "pk" else PD_FEATURES


def _family_of(class_name: str) -> str:
    for family in ("pk", "pd"):
        if class_name in _class_table(family):
            return family
    known = ", ".join(class_names("pk") + class_names("pd"))
    raise ValueError(f"unknown model class {class_name!r}; known classes: {known}.")


def param_names(class_name: str) -> tuple[str, ...]:
    """The parameter names of a class, in slot order."""
    return _class_table(_family_of(class_name))[class_name][0]


def _unconstrain(constraint: str, x: np.ndarray) -> np.ndarray:
    """numpy version of `Param.to_unconstrained` (float64, no JAX dtype rules)."""
    if constraint == "positive":
        return np.log(x)
    if constraint == "unit":
        return np.log(x) - np.log1p(-x)
    return x


def _constrain(constraint: str, u: np.ndarray) -> np.ndarray:
    if constraint == "positive":
        return np.exp(u)
    if constraint == "unit":
        return 1.0 / (1.0 + np.exp(-u))
    return u


def normalise_params(class_name: str, theta_natural) -> np.ndarray:
    """Natural parameter values -> the ``P``-vector of normalised log-parameters (float64).

    `theta_natural` is ``{name: value}`` (every parameter of the class) or an array whose last
    axis lists the class's parameters in declaration order (leading axes are kept). Slot ``p``
    holds ``(u(θ_p) - μ_p) / σ_p`` with ``u`` = log (logit for fractions) and ``μ_p``, ``σ_p``
    the class's declared prior; slots beyond the class's parameters are 0.
    """
    family = _family_of(class_name)
    names, constraints, loc, sd = _class_table(family)[class_name]
    if isinstance(theta_natural, Mapping):
        missing = [n for n in names if n not in theta_natural]
        unknown = sorted(set(theta_natural) - set(names))
        if missing or unknown:
            raise ValueError(
                f"{class_name} takes parameters {list(names)}; missing {missing}, unknown {unknown}."
            )
        theta = np.stack([np.asarray(theta_natural[n], float) for n in names], axis=-1)
    else:
        theta = np.asarray(theta_natural, float)
        if theta.ndim == 0 or theta.shape[-1] != len(names):
            raise ValueError(
                f"{class_name} has {len(names)} parameters {list(names)}; got an array of shape "
                f"{theta.shape} (the last axis must list them in this order)."
            )
    u = np.stack([_unconstrain(c, theta[..., i]) for i, c in enumerate(constraints)], axis=-1)
    out = np.zeros(theta.shape[:-1] + (n_params(family),))
    out[..., : len(names)] = (u - loc) / sd
    return out


def denormalise_params(class_name: str, vec) -> dict[str, float]:
    """The inverse of [`normalise_params`][]: ``{name: natural value}`` for the class's slots.

    `vec` is a ``P``-vector (floats are returned) or an array ``[..., P]`` (arrays are returned);
    slots beyond the class's parameters are ignored.
    """
    family = _family_of(class_name)
    names, constraints, loc, sd = _class_table(family)[class_name]
    v = np.asarray(vec, float)
    if v.ndim == 0 or v.shape[-1] < len(names):
        raise ValueError(f"{class_name} needs a vector of at least {len(names)} slots; got shape {v.shape}.")
    out = {}
    for i, (name, c) in enumerate(zip(names, constraints)):
        x = _constrain(c, loc[i] + sd[i] * v[..., i])
        out[name] = float(x) if v.ndim == 1 else x
    return out


def param_mask(class_name: str) -> np.ndarray:
    """bool ``[P]``: True for the slots the class uses."""
    family = _family_of(class_name)
    m = np.zeros(n_params(family), bool)
    m[: len(param_names(class_name))] = True
    return m


# ----------------------------------------------------------------------------- features
def _last_dose_features(t, dose_t, dose_a, dose_d):
    """For each observation: (has a dose before, time since it, its amount, its duration,
    cumulative amount before), all ``[B, M]``. A dose counts when it starts strictly before t."""
    real = dose_a > 0
    before = real[:, None, :] & (dose_t[:, None, :] < t[:, :, None])  # [B, M, D]
    any_before = before.any(axis=-1)
    start = np.where(before, dose_t[:, None, :], -np.inf)
    last = np.argmax(start, axis=-1)  # the latest start (ties: the first)
    take = lambda a: np.take_along_axis(a[:, None, :].repeat(t.shape[1], 1), last[..., None], -1)[..., 0]
    tsld = np.where(any_before, t - take(dose_t), 0.0)
    amount = np.where(any_before, take(dose_a), 0.0)
    dur = np.where(any_before, take(dose_d), 0.0)
    cum = np.sum(np.where(before, dose_a[:, None, :], 0.0), axis=-1)
    return any_before, tsld, amount, dur, cum


def featurize_batch(
    family: str,
    times,
    mask,
    conc,
    dose_times,
    dose_amounts,
    dose_durations=None,
    *,
    conc_blq=None,
    resp=None,
    conc_missing=None,
    resp_missing=None,
    n_times: int | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Featurise a batch of subjects (see the module docstring for the features).

    **Arguments** (numpy-like; ``B`` subjects, ``M`` observation slots, ``D`` dose slots):

    - `family`: ``"pk"`` or ``"pd"``.
    - `times`: ``[B, M]`` observation times in h (any origin: they are shifted so that each
      subject's first dose is at 0), `mask`: ``[B, M]`` bool, True for real observations.
    - `conc`: ``[B, M]`` observed concentrations in mg/L; values <= 0 (and NaN for PK) are BLQ.
    - `dose_times`, `dose_amounts` (mg; 0 = padding row), `dose_durations` (h; 0 = bolus, default
      all 0): ``[B, D]``.
    - `conc_blq`: optional ``[B, M]`` bool, explicit below-quantification flags.
    - PD only: `resp` ``[B, M]`` biomarker values; `conc_missing`, `resp_missing` optional
      ``[B, M]`` bool (NaN also marks a missing value). The baseline is the earliest observed
      biomarker. A time with neither a concentration nor a biomarker is dropped.
    - `n_times`: pad the output to this many times (default: the largest count of real rows).

    **Returns:** ``(times [B, T] float32, values [B, T, F] float32, mask [B, T] bool)``; each
    subject's real observations sorted by time and first, padding rows all 0.
    """
    _check_family(family)
    t = np.asarray(times, float)
    if t.ndim != 2:
        raise ValueError(f"`times` must be [B, M]; got shape {t.shape}.")
    B, M = t.shape
    m = np.asarray(mask, bool).copy()
    c = np.asarray(conc, float)
    dt_ = np.asarray(dose_times, float).reshape(B, -1)
    da = np.asarray(dose_amounts, float).reshape(B, -1)
    dd = np.zeros_like(dt_) if dose_durations is None else np.asarray(dose_durations, float).reshape(B, -1)
    for name, arr in (("mask", m), ("conc", c)):
        if arr.shape != (B, M):
            raise ValueError(f"`{name}` must have the shape of `times` {(B, M)}; got {arr.shape}.")
    if dt_.shape != da.shape or dd.shape != da.shape:
        raise ValueError(f"dose arrays must share one shape; got {dt_.shape}, {da.shape}, {dd.shape}.")
    if np.any(da < 0) or np.any(dd < 0) or not np.all(np.isfinite(da)) or not np.all(np.isfinite(dt_)):
        raise ValueError("dose amounts and durations must be finite and >= 0, dose times finite.")
    m &= np.isfinite(t)

    flagged = np.zeros((B, M), bool) if conc_blq is None else np.asarray(conc_blq, bool)
    c_missing = ~np.isfinite(c) & ~flagged
    if conc_missing is not None:
        c_missing |= np.asarray(conc_missing, bool)
    blq = ~c_missing & (flagged | (np.nan_to_num(c, nan=0.0) <= 0))
    if family == "pk":
        m &= ~c_missing | blq  # a PK row needs a concentration (or a BLQ record)
    else:
        if resp is None:
            raise ValueError("the PD family needs `resp` (biomarker observations).")
        r = np.asarray(resp, float)
        if r.shape != (B, M):
            raise ValueError(f"`resp` must have the shape of `times` {(B, M)}; got {r.shape}.")
        r_missing = ~np.isfinite(r)
        if resp_missing is not None:
            r_missing |= np.asarray(resp_missing, bool)
        m &= ~(c_missing & r_missing)

    # time origin: the first real dose
    real_dose = da > 0
    t0 = np.where(real_dose.any(axis=1), np.min(np.where(real_dose, dt_, np.inf), axis=1), 0.0)
    t = t - t0[:, None]
    dt_ = dt_ - t0[:, None]

    # real rows first, sorted by time (stable)
    order = np.lexsort((np.where(m, t, 0.0), ~m), axis=-1)
    g = lambda a: np.take_along_axis(a, order, axis=1)
    t, m, c, c_missing, blq = g(t), g(m), g(c), g(c_missing), g(blq)
    n_real = m.sum(axis=1)
    T = int(n_real.max(initial=0)) if n_times is None else int(n_times)
    if n_real.max(initial=0) > T:
        raise ValueError(f"a subject has {int(n_real.max())} observations, more than n_times={T}.")

    has_dose, tsld, last_amt, last_dur, cum = _last_dose_features(np.where(m, t, -np.inf), dt_, da, dd)
    tsld_f = np.log1p(np.maximum(tsld, 0.0)) / _TSLD_SCALE

    if family == "pk":
        d_ref = np.max(np.where(real_dose, da, 0.0), axis=1, keepdims=True)
        d_ref = np.where(d_ref > 0, d_ref, 1.0)
        ok = ~blq & ~c_missing
        log_c = np.where(ok, np.log(np.where(ok, c, 1.0) * _V_REF / d_ref) / _LOG_SCALE, 0.0)
        feats = [
            log_c,
            blq.astype(float),
            tsld_f,
            np.log1p(last_amt / _DOSE_UNIT) / _DOSE_SCALE,
            (has_dose & (last_dur > 0)).astype(float),
            np.log1p(last_dur) / _DUR_SCALE,
            cum / d_ref / _CUM_SCALE,
        ]
    else:
        r, r_missing = g(r), g(r_missing)
        ok = ~blq & ~c_missing
        log_c = np.where(ok, np.log(np.where(ok, c, 1.0)) / _LOG_SCALE, 0.0)
        seen = m & ~r_missing
        first = np.argmax(seen, axis=1)
        base = np.take_along_axis(r, first[:, None], axis=1)[:, 0]
        base = np.where(seen.any(axis=1), np.abs(base), 1.0)
        base = np.where(base > 0, base, 1.0)
        rel = np.where(r_missing, 0.0, np.clip(np.where(r_missing, 0.0, r) / base[:, None] - 1.0,
                                                 -_RESP_CLIP, _RESP_CLIP))
        feats = [
            log_c,
            blq.astype(float),
            (c_missing & ~blq).astype(float),
            rel,
            r_missing.astype(float),
            np.broadcast_to(np.log(base)[:, None] / _LOG_SCALE, (B, M)),
            tsld_f,
        ]
    values = np.stack(feats, axis=-1) * m[..., None]
    out_t = np.zeros((B, T), np.float32)
    out_v = np.zeros((B, T, len(feats)), np.float32)
    out_m = np.zeros((B, T), bool)
    k = min(T, M)
    out_t[:, :k] = np.where(m, t, 0.0)[:, :k]
    out_v[:, :k] = values[:, :k]
    out_m[:, :k] = m[:, :k]
    return out_t, out_v, out_m


def featurize(
    times,
    conc,
    dose_times,
    dose_amounts,
    dose_durations=None,
    *,
    family: str,
    resp=None,
    blq=None,
    n_times: int | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Featurise one subject: the same normalisation as the training corpora.

    **Arguments:**

    - `times`: observation times in h (any order, any origin: shifted so that the first dose is
      at 0). An observation at a dose time is pre-dose.
    - `conc`: observed concentrations (mg/L) at `times`; <= 0 or flagged by `blq` is below the
      quantification limit, NaN is missing (PD) or dropped (PK).
    - `dose_times` (h), `dose_amounts` (mg), `dose_durations` (h, 0 = bolus; default all bolus).
    - `family`: ``"pk"`` or ``"pd"``; PD needs `resp` (biomarker at `times`, NaN = missing).
    - `n_times`: pad to this many rows (e.g. the corpus ``T``); default: no padding.

    **Returns:** ``(times [T], values [T, F], mask [T])``, float32/float32/bool.
    """
    t = np.asarray(times, float).reshape(1, -1)
    as_row = lambda x, dtype=float: None if x is None else np.asarray(x, dtype).reshape(1, -1)
    out = featurize_batch(
        family,
        t,
        np.ones_like(t, bool),
        as_row(conc),
        as_row(dose_times),
        as_row(dose_amounts),
        as_row(dose_durations),
        conc_blq=as_row(blq, bool),
        resp=as_row(resp),
        n_times=n_times,
    )
    return tuple(a[0] for a in out)


# ----------------------------------------------------------------------------- corpus reading
def _manifest(corpus_dir) -> dict:
    path = Path(corpus_dir) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"no corpus at {corpus_dir}: {MANIFEST} is missing (see `pkpd-jax corpus`).")
    return json.loads(path.read_text())


def corpus_info(corpus_dir) -> CorpusInfo:
    """Read a corpus's manifest into a [`CorpusInfo`][] (counts are of the shards written so far)."""
    man = _manifest(corpus_dir)
    counts = {s: 0 for s in SPLITS}
    for shard in man["shards"]:
        for s in SPLITS:
            counts[s] += int(shard["splits"][s]["rows"])
    return CorpusInfo(
        family=man["family"],
        class_names=tuple(man["classes"]),
        param_names={k: tuple(v) for k, v in man["class_params"].items()},
        n_times=int(man["n_times"]),
        n_features=int(man["n_features"]),
        n_params=int(man["n_params"]),
        feature_names=tuple(man["features"]["names"]),
        counts=counts,
    )


_COLUMNS = ("times", "values", "mask", "label", "params", "param_mask")


def _fixed(table, name: str, shape: Sequence[int], dtype) -> np.ndarray:
    col = table.column(name).combine_chunks()
    flat = col.flatten().to_numpy(zero_copy_only=False)
    return np.asarray(flat, dtype).reshape((len(col),) + tuple(shape))


def read_split(corpus_dir, shard: Mapping, split: str, info: CorpusInfo) -> dict[str, np.ndarray]:
    """The `split` rows of one shard (a manifest entry) as the arrays of a [`Batch`][]."""
    import pyarrow.parquet as pq

    T, F, P = info.n_times, info.n_features, info.n_params
    rg = shard["splits"][split]["row_group"]
    if rg is None:
        return {
            "times": np.zeros((0, T), np.float32), "values": np.zeros((0, T, F), np.float32),
            "mask": np.zeros((0, T), bool), "label": np.zeros(0, np.int32),
            "params": np.zeros((0, P), np.float32), "param_mask": np.zeros((0, P), bool),
        }
    table = pq.ParquetFile(Path(corpus_dir) / shard["file"]).read_row_group(rg, columns=list(_COLUMNS))
    return {
        "times": _fixed(table, "times", (T,), np.float32),
        "values": _fixed(table, "values", (T, F), np.float32),
        "mask": _fixed(table, "mask", (T,), bool),
        "label": table.column("label").to_numpy().astype(np.int32),
        "params": _fixed(table, "params", (P,), np.float32),
        "param_mask": _fixed(table, "param_mask", (P,), bool),
    }


def iter_batches(
    corpus_dir,
    split: str,
    batch_size: int,
    *,
    seed: int,
    epoch: int = 0,
    drop_last: bool = True,
    shuffle: bool = True,
    buffer_shards: int = 4,
) -> Iterator[Batch]:
    """Stream batches of one split of a corpus directory.

    **Arguments:**

    - `split`: ``"train"``, ``"val"`` or ``"test"`` (fixed per trajectory, see the manifest).
    - `batch_size`: rows per batch.
    - `seed`, `epoch`: the shuffle is a function of both (the same pair gives the same batches).
    - `drop_last`: drop the final incomplete batch (else yield it, smaller).
    - `shuffle`: with False, shards and rows come in corpus order (seed and epoch unused).
    - `buffer_shards`: rows are shuffled across this many shards at a time (memory: one
      split's rows of that many shards).

    Every row of the split is yielded exactly once per pass (all but the last
    ``n % batch_size`` with `drop_last`), so a pass has ``n // batch_size`` batches.
    """
    if split not in SPLITS:
        raise ValueError(f"`split` must be one of {SPLITS}; got {split!r}.")
    if batch_size < 1:
        raise ValueError(f"`batch_size` must be >= 1; got {batch_size}.")
    info = corpus_info(corpus_dir)
    shards = [s for s in _manifest(corpus_dir)["shards"] if s["splits"][split]["rows"] > 0]
    rng = np.random.default_rng([int(seed), int(epoch), SPLITS.index(split)])
    if shuffle:
        shards = [shards[i] for i in rng.permutation(len(shards))]
    carry: dict[str, np.ndarray] | None = None
    for lo in range(0, len(shards), max(1, buffer_shards)):
        parts = [read_split(corpus_dir, s, split, info) for s in shards[lo : lo + max(1, buffer_shards)]]
        if carry is not None:
            parts.insert(0, carry)
        buf = {k: np.concatenate([p[k] for p in parts]) for k in _COLUMNS}
        n = len(buf["label"])
        order = rng.permutation(n) if shuffle else np.arange(n)
        n_full = n // batch_size
        for b in range(n_full):
            idx = order[b * batch_size : (b + 1) * batch_size]
            yield Batch(**{k: buf[k][idx] for k in _COLUMNS})
        rest = order[n_full * batch_size :]
        carry = {k: buf[k][rest] for k in _COLUMNS}
    if carry is not None and len(carry["label"]) and not drop_last:
        yield Batch(**carry)
