"""The bundled example study: a simulated Phase 1 multiple-ascending-dose trial with known truth.

Design (documented truth, also written to ``truth.json``):

- 48 subjects in 4 cohorts of 12: placebo, 1, 3 and 10 mg once daily for 14 days, each dose a
  1 h IV infusion; placebo subjects have no dose rows and no concentrations (so 36 subjects have
  PK), every subject has the biomarker.
- Covariates: body weight ``BW`` uniform on 50-100 kg; concomitant medication ``COMED`` (0/1,
  probability 0.35), a metabolic inhibitor that lowers clearance by 40%.
- PK ``pk_2c_iv_infusion`` (CL 3 L/h, V1 20 L, Q 4 L/h, V2 150 L at 70 kg without co-medication;
  terminal half-life about 60 h); PD ``pd_indirect_inhib_kin`` (R0 10, kout 0.05 1/h,
  IC50 0.01 mg/L).
- Covariate model: ``CL_i = CL·(BW/70)^0.75·0.6^COMED·exp(η_CL)``, ``Q_i = Q·(BW/70)^0.75·exp(η_Q)``,
  ``V1_i = V1·(BW/70)^1·exp(η_V1)``, ``V2_i = V2·(BW/70)^1·exp(η_V2)``; PD parameters
  ``θ_i = θ·exp(η)``. η independent normal with standard deviations ``omega_<param>``.
- Residual error: ``DV = F·(1 + sigma_prop·ε1) + sigma_add·ε2`` per observation type (DVID 1 =
  concentration in mg/L, DVID 2 = biomarker). Concentrations below LLOQ = 0.001 mg/L are reported
  as ``DV = LLOQ`` with ``BLQ = 1``.
- Sparse sampling: PK at a random subset of 8 of 13 nominal times, biomarker at 12 nominal times,
  jittered as in `_jitter` (never across a dose).

Everything random flows from one seed through `numpy.random.default_rng`; simulation is float64.
`experiments/make_example_study.py` regenerates the shipped files bit for bit.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import polars as pl

from .._x64 import x64
from ..dosing import Regimen, stack_regimens
from ..models import get_model
from ..population import simulate_residual
from ..solve import SolverConfig, simulate_population


__all__ = [
    "EXAMPLE_SEED", "TRUTH", "generate_example_study", "example_paths", "load_example",
    "individual_parameters",
]

EXAMPLE_SEED = 20261125
PK_MODEL, PD_MODEL = "pk_2c_iv_infusion", "pd_indirect_inhib_kin"

TRUTH: dict = {
    "pk_model": PK_MODEL,
    "pd_model": PD_MODEL,
    "population": {
        "CL": 3.0,
        "V1": 20.0,
        "Q": 4.0,
        "V2": 150.0,
        "R0": 10.0,
        "kout": 0.05,
        "IC50": 0.01,
    },
    "covariates": {
        "reference_BW": 70.0,
        "BW_CL": 0.75,
        "BW_V": 1.0,
        "COMED_CL": 0.6,
        "equations": {
            "CL": "CL*(BW/70)^BW_CL*COMED_CL^COMED*exp(eta_CL)",
            "Q": "Q*(BW/70)^BW_CL*exp(eta_Q)",
            "V1": "V1*(BW/70)^BW_V*exp(eta_V1)",
            "V2": "V2*(BW/70)^BW_V*exp(eta_V2)",
            "R0": "R0*exp(eta_R0)",
            "kout": "kout*exp(eta_kout)",
            "IC50": "IC50*exp(eta_IC50)",
        },
        "BW_distribution": "uniform(50, 100) kg",
        "COMED_probability": 0.35,
    },
    "omega": {
        "omega_CL": 0.30,
        "omega_V1": 0.20,
        "omega_Q": 0.20,
        "omega_V2": 0.20,
        "omega_R0": 0.10,
        "omega_kout": 0.20,
        "omega_IC50": 0.30,
    },
    "residual": {
        "sigma_prop_PK": 0.15,
        "sigma_add_PK": 0.0005,
        "sigma_prop_PD": 0.05,
        "sigma_add_PD": 0.05,
        "model": "DV = F*(1 + sigma_prop*eps1) + sigma_add*eps2",
    },
    "design": {
        "n_subjects": 48,
        "cohorts_mg": [0.0, 1.0, 3.0, 10.0],
        "subjects_per_cohort": 12,
        "n_doses": 14,
        "interval_h": 24.0,
        "infusion_h": 1.0,
        "lloq_mg_per_L": 0.001,
    },
    "seed": EXAMPLE_SEED,
}

PK_TIMES = np.array(
    [0.5, 1.5, 4.0, 8.0, 23.5, 71.5, 167.5, 311.5, 313.0, 318.0, 336.0, 360.0, 408.0]
)
PD_TIMES = np.array([0.0, 8.0, 24.0, 72.0, 120.0, 168.0, 240.0, 312.0, 318.0, 336.0, 360.0, 408.0])


def _jitter(rng, times, frac=0.05):
    """Realistic sampling-time deviations that never cross a dose.

    Post-dose samples move by up to ±`frac` of their time after the preceding dose; samples at a
    whole day (pre-dose troughs) are taken up to 15 min early. Time 0 (baseline) is kept.
    """
    day = np.floor(times / 24.0) * 24.0
    offset = times - day
    post = np.minimum(day + offset * (1.0 + rng.uniform(-frac, frac, times.shape)), day + 23.9)
    trough = times - rng.uniform(0.0, 0.25, times.shape)
    return np.where(times == 0, 0.0, np.where(offset > 0, post, trough))


def individual_parameters(rng, bw, comed, truth: dict | None = None) -> dict[str, np.ndarray]:
    """True individual parameters of subjects with body weights `bw` and co-medication `comed`
    under `truth` (default [`TRUTH`][]): covariate model times log-normal variability."""
    truth = TRUTH if truth is None else truth
    pop, cov, om = truth["population"], truth["covariates"], truth["omega"]
    n = bw.size
    eta = {k: rng.normal(0.0, om[f"omega_{k}"], n) for k in pop}
    wr = bw / cov["reference_BW"]
    return {
        "CL": pop["CL"] * wr ** cov["BW_CL"] * cov["COMED_CL"] ** comed * np.exp(eta["CL"]),
        "Q": pop["Q"] * wr ** cov["BW_CL"] * np.exp(eta["Q"]),
        "V1": pop["V1"] * wr ** cov["BW_V"] * np.exp(eta["V1"]),
        "V2": pop["V2"] * wr ** cov["BW_V"] * np.exp(eta["V2"]),
        "R0": pop["R0"] * np.exp(eta["R0"]),
        "kout": pop["kout"] * np.exp(eta["kout"]),
        "IC50": pop["IC50"] * np.exp(eta["IC50"]),
    }


def generate_example_study(seed: int = EXAMPLE_SEED) -> tuple[pl.DataFrame, dict]:
    """Simulate the example study. Returns the NONMEM-style table and the truth (with the
    individual parameters of every subject under ``truth["individual"]``)."""
    with x64():
        return _generate(seed)


def _generate(seed: int) -> tuple[pl.DataFrame, dict]:
    rng = np.random.default_rng(seed)
    des, res = TRUTH["design"], TRUTH["residual"]
    n = des["n_subjects"]
    dose = np.repeat(des["cohorts_mg"], des["subjects_per_cohort"])
    bw = np.round(rng.uniform(50.0, 100.0, n), 1)
    comed = (rng.uniform(size=n) < TRUTH["covariates"]["COMED_probability"]).astype(float)
    ind = individual_parameters(rng, bw, comed)

    model = get_model(PK_MODEL, PD_MODEL)
    theta = model.pack({k: jnp.asarray(v) for k, v in ind.items()})
    dose_times = des["interval_h"] * np.arange(des["n_doses"])
    regimens = stack_regimens(
        [
            Regimen.repeated(
                float(d), des["interval_h"], des["n_doses"], duration=des["infusion_h"]
            )
            for d in dose
        ]
    )
    pk_t = [np.sort(_jitter(rng, rng.choice(PK_TIMES, 8, replace=False))) for _ in range(n)]
    pd_t = [_jitter(rng, PD_TIMES) for _ in range(n)]
    ts = np.stack([np.concatenate([a, b]) for a, b in zip(pk_t, pd_t)])
    sol = simulate_population(
        model, theta, regimens, jnp.asarray(ts), config=SolverConfig(rtol=1e-10, atol=1e-12)
    )
    conc, resp = np.asarray(sol.conc), np.asarray(sol.resp)
    n_pk = pk_t[0].size

    rows = []
    lloq = des["lloq_mg_per_L"]
    for i in range(n):
        sid = i + 1
        base = {"ID": sid, "BW": bw[i], "COMED": comed[i]}
        if dose[i] > 0:
            for t in dose_times:
                rows.append(
                    {
                        **base,
                        "TIME": t,
                        "AMT": dose[i],
                        "DV": 0.0,
                        "EVID": 1,
                        "MDV": 1,
                        "CMT": 1,
                        "DVID": 0,
                        "DUR": des["infusion_h"],
                        "BLQ": 0,
                    }
                )
            for j in range(n_pk):
                f = conc[i, j]
                dv = simulate_residual(f, res["sigma_prop_PK"], res["sigma_add_PK"],
                                       rng.normal(), rng.normal())
                blq = int(dv < lloq)
                rows.append(
                    {
                        **base,
                        "TIME": ts[i, j],
                        "AMT": 0.0,
                        "DV": lloq if blq else dv,
                        "EVID": 0,
                        "MDV": 0,
                        "CMT": 1,
                        "DVID": 1,
                        "DUR": 0.0,
                        "BLQ": blq,
                    }
                )
        for j in range(n_pk, ts.shape[1]):
            f = resp[i, j]
            dv = simulate_residual(f, res["sigma_prop_PD"], res["sigma_add_PD"], rng.normal(), rng.normal())
            rows.append(
                {
                    **base,
                    "TIME": ts[i, j],
                    "AMT": 0.0,
                    "DV": dv,
                    "EVID": 0,
                    "MDV": 0,
                    "CMT": 0,
                    "DVID": 2,
                    "DUR": 0.0,
                    "BLQ": 0,
                }
            )

    df = pl.DataFrame(rows).with_columns(
        pl.col("TIME").round(3), pl.col("DV").map_elements(_sig6, return_dtype=pl.Float64)
    )
    # Within a time, doses come after observations (pre-dose sampling is the convention).
    df = df.sort(["ID", "TIME", "EVID"]).select(
        "ID", "TIME", "AMT", "DV", "EVID", "MDV", "CMT", "DVID", "DUR", "BLQ", "BW", "COMED"
    )
    truth = json.loads(json.dumps(TRUTH))
    truth["seed"] = seed
    truth["individual"] = {
        "ID": list(range(1, n + 1)),
        "BW": bw.tolist(),
        "COMED": comed.astype(int).tolist(),
        "dose_mg": dose.tolist(),
        **{k: [float(_sig6(x)) for x in v] for k, v in ind.items()},
    }
    return df, truth


def _sig6(x: float) -> float:
    return float(f"{x:.6g}")


def example_paths() -> tuple[Path, Path]:
    """Paths of the shipped ``study.csv`` and ``truth.json``."""
    root = resources.files("pkpd_jax.data") / "example"
    return Path(str(root / "study.csv")), Path(str(root / "truth.json"))


def write_example(out_dir: str | Path, seed: int = EXAMPLE_SEED) -> tuple[Path, Path]:
    """Regenerate the study into `out_dir` (``study.csv``, ``truth.json``)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    df, truth = generate_example_study(seed)
    csv, js = out / "study.csv", out / "truth.json"
    df.write_csv(csv, float_precision=None)
    js.write_text(json.dumps(truth, indent=2) + "\n")
    return csv, js


def load_example() -> tuple[pl.DataFrame, dict]:
    """The shipped study table (as read from CSV) and its truth."""
    csv, js = example_paths()
    return pl.read_csv(csv), json.loads(js.read_text())
