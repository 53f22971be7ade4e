"""Corpus randomness: everything random about one shard (classes, designs, dose levels,
sampling-time jitter, missingness, parameters from the priors, noise deviates)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ._corpus_design import (
    DOSE_LEVELS_MG,
    INFUSION_CLASSES,
    INFUSION_DURATIONS_H,
    JITTER_LOG_SD,
    MISSING,
    N_TIMES,
    NOISE,
    PD_DRIVER_ROUTE_P,
    PD_POTENCY,
    PD_SEPARATE,
    ROUTES,
    STREAMS,
    CorpusConfig,
    Design,
)
from .batches import _class_table, _constrain, n_params


def _rng(cfg: CorpusConfig, shard: int, stream: str) -> np.random.Generator:
    """numpy generator for one (shard, stream), seeded from a JAX key derived with `fold_in`."""
    import jax

    key = jax.random.key(cfg.seed)
    for k in (("pk", "pd").index(cfg.family), shard, STREAMS[stream]):
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
