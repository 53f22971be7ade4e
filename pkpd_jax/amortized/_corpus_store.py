"""Corpus storage: parquet shards (one row group per split), checksums, the manifest and resume."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from ._corpus_design import (
    FORMAT,
    FORMAT_VERSION,
    N_TIMES,
    PD_DRIVER_ROUTE_P,
    SPLIT_RULE,
    CorpusConfig,
)
from .batches import MANIFEST, SPLITS, _class_table, feature_names, n_params


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


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_shard(out: Path, shard: int, rows: dict[str, np.ndarray], fingerprint: str) -> dict:
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
    return {"index": shard, "file": name, "sha256": sha256_of(out / name),
            "bytes": (out / name).stat().st_size, "splits": splits}


# ----------------------------------------------------------------------------- manifest
def write_json(path: Path, obj: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1) + "\n")
    os.replace(tmp, path)


def _priors(cfg: CorpusConfig) -> dict:
    from ..models import get_pd, get_pk

    get = get_pk if cfg.family == "pk" else get_pd
    out = {name: [p.to_dict() for p in get(name).params] for name in cfg.classes}
    return out


def new_manifest(cfg: CorpusConfig, spec: dict, fingerprint: str) -> dict:
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


def update_counts(man: dict) -> None:
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


def load_for_resume(out: Path, fingerprint: str, spec: dict, verify: bool) -> dict | None:
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
        if f.is_file() and f.stat().st_size == s["bytes"] and (not verify or sha256_of(f) == s["sha256"]):
            kept.append(s)
    man["shards"] = kept
    return man
