"""Corpus rows: residual error, BLQ, missingness, features and parameter targets of a shard."""

from __future__ import annotations

import numpy as np

from ._corpus_design import N_TIMES, NOISE, CorpusConfig, split_of
from .batches import _class_table, featurize_batch, n_params, normalise_params


def observe_rows(cfg: CorpusConfig, draw: dict, sim: dict) -> dict[str, np.ndarray]:
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
