"""`pkpd-jax allometry train|predict|evaluate`: neural allometry (interspecies scaling of CL and Vss).

Cheap to import: JAX and the network are loaded inside the commands.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Annotated

import typer

from ._options import AsJson


__all__ = ["evaluate_command", "parse_drug", "parse_observed", "predict_command", "read_csv", "train_command"]

_SPECIES = ("mouse", "rat", "dog", "monkey", "human")


def _number(text: str, what: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise ValueError(f"{what}: {text!r} is not a number.") from None
    if not math.isfinite(v):
        raise ValueError(f"{what}: {text!r} is not a finite number.")
    return v


def parse_drug(text: str) -> dict:
    """``'logp=2.5,fu=0.1,kind=base,pka=9.2'`` -> dict (``kind`` stays a string)."""
    out: dict = {}
    for item in filter(None, (s.strip() for s in text.split(","))):
        if "=" not in item:
            raise ValueError(f"--drug: {item!r} is not NAME=VALUE (e.g. 'logp=2.5,fu=0.1,kind=base,pka=9').")
        k, v = (s.strip() for s in item.split("=", 1))
        k = k.lower()
        out[k] = v.lower() if k == "kind" else _number(v, f"--drug {k}")
    return out


def parse_observed(text: str) -> dict:
    """``'rat:CL=0.5,V=0.3,fu=0.1;dog:CL=10,V=8'`` -> ``{species: {CL, V, fu, bw}}``."""
    out: dict = {}
    for block in filter(None, (s.strip() for s in text.split(";"))):
        if ":" not in block:
            raise ValueError(f"--observed: {block!r} is not SPECIES:CL=..,V=.. (blocks separated by ';').")
        sp, rest = (s.strip() for s in block.split(":", 1))
        sp = sp.lower()
        if sp in out:
            raise ValueError(f"--observed: species {sp!r} given twice.")
        vals = {}
        for item in filter(None, (s.strip() for s in rest.split(","))):
            if "=" not in item:
                raise ValueError(f"--observed {sp}: {item!r} is not NAME=VALUE (CL, V, fu, bw).")
            k, v = (s.strip() for s in item.split("=", 1))
            key = {"cl": "CL", "v": "V", "vss": "V", "fu": "fu", "bw": "bw"}.get(k.lower())
            if key is None:
                raise ValueError(f"--observed {sp}: unknown field {k!r}; use CL, V, fu, bw.")
            vals[key] = _number(v, f"--observed {sp} {k}")
        out[sp] = vals
    return out


def read_csv(path: Path) -> list[tuple[str, dict, dict]]:
    """Rows ``(name, drug, observed)`` of a CSV with columns ``name`` (optional), ``logp``, ``fu``
    (target species), ``kind``, ``pka`` and, per observed species, ``CL_<sp>``, ``V_<sp>`` and
    optionally ``fu_<sp>``, ``BW_<sp>`` (empty cells: not observed / default)."""
    if not path.is_file():
        raise FileNotFoundError(f"no CSV file {path}")
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        cols = [c.strip() for c in (reader.fieldnames or [])]
        for need in ("logp", "fu"):
            if need not in cols:
                raise ValueError(f"{path}: needs a column {need!r}; has {cols}.")
        rows = []
        for i, raw in enumerate(reader, start=2):
            r = {k.strip(): (v or "").strip() for k, v in raw.items() if k is not None}
            where = f"{path} line {i}"
            drug: dict = {"logp": _number(r["logp"], f"{where} logp"), "fu": _number(r["fu"], f"{where} fu")}
            if r.get("kind"):
                drug["kind"] = r["kind"].lower()
            if r.get("pka"):
                drug["pka"] = _number(r["pka"], f"{where} pka")
            observed = {}
            for sp in _SPECIES:
                cl, v = r.get(f"CL_{sp}", ""), r.get(f"V_{sp}", "")
                if not cl and not v:
                    continue
                if not (cl and v):
                    raise ValueError(f"{where}: {sp} needs both CL_{sp} and V_{sp}.")
                vals = {"CL": _number(cl, f"{where} CL_{sp}"), "V": _number(v, f"{where} V_{sp}")}
                if r.get(f"fu_{sp}"):
                    vals["fu"] = _number(r[f"fu_{sp}"], f"{where} fu_{sp}")
                if r.get(f"BW_{sp}"):
                    vals["bw"] = _number(r[f"BW_{sp}"], f"{where} BW_{sp}")
                observed[sp] = vals
            rows.append((r.get("name") or f"row{i - 1}", drug, observed))
    if not rows:
        raise ValueError(f"{path}: no data rows.")
    return rows


def _predict_one(model, name, drug, observed, target, target_bw):
    from ..pbpk import allometry as A

    obs, notes = A.make_observations(drug, observed, target, target_bw, name=name)
    sources = tuple(s for s in _SPECIES if s in observed)
    p = A.predict(model, obs, sources, target)
    out = {
        "name": name,
        "target": target,
        "bw": float(obs.bw[0, _SPECIES.index(target)]),
        "sources": list(sources),
        "neural": {"CL": float(p["cl"][0]), "Vss": float(p["vss"][0])},
        "simple_allometry": {"CL": float(p["cl_allometry"][0]), "Vss": float(p["vss_allometry"][0])},
        "correction_factor": {"CL": float(p["correction_cl"][0]), "Vss": float(p["correction_vss"][0])},
    }
    if notes:
        out["notes"] = notes
    return out


def train_command(
    out: Annotated[Path, typer.Option("--out", help="Checkpoint file to write.")],
    n_drugs: Annotated[int, typer.Option("--n-drugs", help="Simulated training drugs.")] = 2000,
    protocol: Annotated[
        str,
        typer.Option(
            help="'loso' (human never a training target) or 'human' (human targets of training drugs)."
        ),
    ] = "loso",
    physiology: Annotated[
        bool, typer.Option("--physiology/--no-physiology", help="Species physiology as network input.")
    ] = False,
    steps: Annotated[int, typer.Option(help="Optimiser steps per ensemble member.")] = 3000,
    ensemble: Annotated[int, typer.Option(help="Ensemble members (averaged in log space).")] = 3,
    seed: Annotated[int, typer.Option(help="Seed of the drug library and of training.")] = 0,
    as_json: AsJson = False,
):
    """Train the neural-allometry network on a simulated drug library (PBPK truth) and save it."""
    from ..pbpk import allometry as A

    if n_drugs < 10:
        raise ValueError(f"--n-drugs must be >= 10; got {n_drugs}.")
    cfg = A.TrainConfig(protocol=protocol, physiology=physiology, steps=steps, ensemble=ensemble, seed=seed)
    data = A.sample_drugs(n_drugs, seed=seed)
    model = A.train(data, cfg, log=None if as_json else typer.echo)
    model.meta["library"] = {"n_drugs": n_drugs, "seed": seed}
    A.save(model, out)
    rec = {"checkpoint": str(out), **model.meta}
    rec.pop("features", None)
    if as_json:
        typer.echo(json.dumps(rec, indent=2))
    else:
        typer.echo(
            f"wrote {out} (validation loss {min(model.meta['val_loss_best']):.4f} vs allometry "
            f"{model.meta['val_loss_allometry']:.4f})"
        )


def predict_command(
    model_path: Annotated[Path, typer.Option("--model", help="Checkpoint from `allometry train`.")],
    drug: Annotated[
        str | None, typer.Option(help="Drug 'logp=..,fu=..,kind=..,pka=..' (fu: target species).")
    ] = None,
    observed: Annotated[
        str | None,
        typer.Option(help="Preclinical data 'rat:CL=..,V=..[,fu=..,bw=..];dog:...' (L/h, L, kg)."),
    ] = None,
    csv_path: Annotated[
        Path | None, typer.Option("--csv", help="CSV of drugs instead of --drug/--observed (see docs).")
    ] = None,
    target: Annotated[str, typer.Option(help="Species to predict.")] = "human",
    bw: Annotated[float | None, typer.Option(help="Target body weight, kg (default: reference).")] = None,
    out: Annotated[Path | None, typer.Option(help="Write the predictions as CSV here.")] = None,
    as_json: AsJson = False,
):
    """Predict CL and Vss of the target species from preclinical CL/Vss: neural allometry and
    simple allometry side by side."""
    from ..pbpk import allometry as A

    if csv_path is not None and (drug is not None or observed is not None):
        raise ValueError("give either --csv or --drug/--observed, not both.")
    if csv_path is None and (drug is None or observed is None):
        raise ValueError("give --drug and --observed (or --csv).")
    target = target.strip().lower()
    if target not in _SPECIES:
        raise ValueError(f"--target must be one of {', '.join(_SPECIES)}; got {target!r}.")
    rows = (
        read_csv(csv_path) if csv_path is not None else [("drug", parse_drug(drug), parse_observed(observed))]
    )
    model = A.load(model_path)
    answers = [_predict_one(model, *r, target, bw) for r in rows]
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        with open(out, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(
                [
                    "name",
                    "target",
                    "bw",
                    "sources",
                    "CL_neural",
                    "Vss_neural",
                    "CL_allometry",
                    "Vss_allometry",
                ]
            )
            for a in answers:
                w.writerow(
                    [
                        a["name"],
                        a["target"],
                        a["bw"],
                        "+".join(a["sources"]),
                        a["neural"]["CL"],
                        a["neural"]["Vss"],
                        a["simple_allometry"]["CL"],
                        a["simple_allometry"]["Vss"],
                    ]
                )
    if as_json:
        typer.echo(json.dumps(answers if csv_path is not None else answers[0], indent=2))
        return
    for a in answers:
        typer.echo(
            f"{a['name']}: {a['target']} ({a['bw']:g} kg) from {'+'.join(a['sources'])}: "
            f"CL {a['neural']['CL']:.4g} L/h, Vss {a['neural']['Vss']:.4g} L "
            f"(simple allometry: CL {a['simple_allometry']['CL']:.4g}, "
            f"Vss {a['simple_allometry']['Vss']:.4g})"
        )
        for n in a.get("notes", []):
            typer.echo(f"  note: {n}")
    if out is not None:
        typer.echo(f"wrote {out}")


def evaluate_command(
    model_path: Annotated[Path, typer.Option("--model", help="Checkpoint from `allometry train`.")],
    n_drugs: Annotated[int, typer.Option("--n-drugs", help="Simulated held-out drugs.")] = 500,
    seed: Annotated[int, typer.Option(help="Seed of the held-out library (use one not trained on).")] = 12345,
    sources: Annotated[str, typer.Option(help="Source species, comma-separated.")] = "rat,dog,monkey",
    target: Annotated[str, typer.Option(help="Species to predict.")] = "human",
    as_json: AsJson = False,
):
    """Fold errors on freshly simulated drugs: neural vs simple allometry vs single species."""
    from ..pbpk import allometry as A

    model = A.load(model_path)
    lib = model.meta.get("library", {})
    if lib.get("seed") == seed:
        raise ValueError(f"--seed {seed} is the training library's seed: those drugs are not held out.")
    src = tuple(s.strip().lower() for s in sources.split(",") if s.strip())
    data = A.sample_drugs(n_drugs, seed=seed)
    res = A.evaluate({"neural allometry": model}, data, src, target)
    if as_json:
        typer.echo(
            json.dumps(
                {
                    "n_drugs": n_drugs,
                    "seed": seed,
                    "target": target,
                    "sources": list(src),
                    "metrics": res["metrics"],
                },
                indent=2,
            )
        )
        return
    typer.echo(f"{target} from {'+'.join(src)}, {n_drugs} held-out drugs (within 2-fold / GMFE)")
    for k, v in res["metrics"].items():
        typer.echo(
            f"  {k:38s} CL {v['CL']['within_2fold']:.3f} / {v['CL']['gmfe']:.3f}   "
            f"Vss {v['Vss']['within_2fold']:.3f} / {v['Vss']['gmfe']:.3f}"
        )
