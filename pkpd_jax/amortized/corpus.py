"""Synthetic training corpora for amortized model selection: priors × designs -> parquet shards.

[`generate_corpus`][] writes ``n`` simulated, noisy, featurised trajectories of one family to a
directory of parquet shards plus ``manifest.json``. Every row is one subject of one model class.

**Classes and labels.** PK family: the 10 PK classes; a trajectory is (doses, concentrations).
PD family: the 10 PD classes, each driven by a random PK *driver* (default ``pk_2c_oral``, its
parameters drawn from its own priors, dosed orally, as an IV bolus or as an IV infusion into the
central compartment, so that the driver spans one- to two-exponential, absorption-limited and
infusion profiles); the joint model is simulated, the features are the observed concentration and
biomarker, the label is the PD class. Within a shard the classes are balanced (counts differ by at
most one) and the rows are shuffled.

**Parameters** are drawn from each class's declared priors (`Param.median`, `Param.log_sd`:
log-normal; logit-normal for fractions), untruncated, with one exception in PD corpora (default
``pd_potency="exposure"``): the potency of the drug is drawn relative to the subject's exposure,
``EC50`` (or ``IC50``) ``= C_ref·exp(1.5·z)`` and ``slope = 0.5·R0/C_ref·exp(z)`` with
``C_ref = dose / V1`` of the driver and ``z ~ N(0, 1)``. A fixed potency prior (median 1 mg/L)
against exposures that span four decades left most subjects either without a visible effect or
fully saturated, and a study whose potency sits far below the prior median (the bundled example:
IC50 0.01 mg/L) outside anything the selector had seen; drawn this way, potency spans the same
range as the exposures (5-95%: about 0.05-110 mg/L) and each subject's doses sit somewhere on
its concentration-effect curve, as a dose-ranging study intends.

**Designs** (Phase 1 like, each drawn with equal probability; nominal times in h, 25 samples,
the first pre-dose at 0):

- ``single``: one dose; samples to 336 h.
- ``daily``: 7 doses every 24 h; dense day 1 and day 7, troughs in between, then 168 and 192 h.
- ``weekly``: 4 doses every 168 h; a dense first week, troughs and a dense last week to 672 h.
- ``daily14``: 14 doses every 24 h (a typical multiple-ascending-dose cohort); dense day 1 and
  day 14, troughs every second day, washout to 576 h.

``designs=("single", "daily", "weekly")`` (with ``pd_sampling="shared"``, ``pd_potency="prior"``
for PD) reproduces corpora made before ``daily14`` existed, row for row.

Dose: one level per subject from ``DOSE_LEVELS_MG`` (5-1000 mg). ``pk_2c_iv_infusion`` (and PD
drivers given as infusions) get an infusion duration from ``INFUSION_DURATIONS_H``; other classes
are dosed as the class declares (bolus into its dose compartment). Sampling times are jittered:
the time after the most recent nominal dose is multiplied by ``exp(0.1·ε)``, capped at the next
dose (a trough stays pre-dose); 0 stays 0. Each sample is missing with probability 0.05 (PD:
a whole time 0.03, concentration only 0.05, biomarker only 0.05; the pre-dose biomarker, the
baseline, is always kept). PD corpora (default ``pd_sampling="mixed"``) give half the subjects
largely separate concentration and biomarker sampling instead, as most Phase 1 protocols do:
per subject, a fraction ``U(0.2, 0.5)`` of the times has the concentration only and a disjoint
fraction ``U(0.2, 0.5)`` the biomarker only (``PD_SEPARATE``); ``pd_sampling="shared"`` gives
every subject the shared design.

**Residual error** (per subject; ε ~ N(0, 1) independent):

- concentration: ``C_obs = C·(1 + σ_p·ε₁) + σ_a·ε₂`` with ``σ_p ~ U(0.05, 0.25)``, an assay
  limit ``LLOQ = max C(t_i) · 10^U(-3, -1.5)`` and ``σ_a = 0.2·LLOQ`` (20% CV at the LLOQ, the
  usual bioanalytical acceptance limit). ``C_obs < LLOQ`` is recorded as BLQ (value 0, flag set).
- biomarker (PD): ``R_obs = R·(1 + σ_p·ε₁) + σ_a·ε₂`` with ``σ_p ~ U(0.02, 0.10)``,
  ``σ_a = U(0.005, 0.03)·|R(0)|``; no quantification limit.

**Features and parameter targets**: see `pkpd_jax.amortized.batches` (the same [`featurize_batch`][]
is used for real subjects).

**Splits** by global trajectory index ``i`` (shard ``s`` holds ``i = s·shard_size + j``):
``i % 20 == 18`` is val, ``i % 20 == 19`` is test, the rest train (90/5/5).

**Simulation.** For each shard and class, subjects are sorted by design and by the stiffness of
their model (spectral radius of the Jacobian at the baseline state) and simulated in batches of
256 (one compilation per class), vmapped and split over all JAX devices with `jax.shard_map`.
The integrator is the simulator's batched one-loop Runge-Kutta path
(`simulate` with ``SolverConfig(method="erk")``: Tsit5, one adaptive loop per subject over the whole horizon,
observations pre-dose; the path the population likelihood uses), in float32 with
``rtol=1e-4, atol=1e-6``. On these designs (``benchmarks/bench_corpus.py``, mix of 10 classes)
it was measured 3.5x (PK) and 16x (PD) faster than `simulate_population` in float64
(per-interval `diffeqsolve`, or matrix exponentials for linear models), float32 1.4-1.5x faster
than float64, with concentration errors ~2e-4 relative at the 99th percentile and < 2e-3 at
most, far below the >= 2% residual error. Sorting matters (1.7-1.9x) because a batched loop
runs until its slowest subject is done. While shard ``s + 1`` is simulated, a writer thread adds
noise, featurises and writes shard ``s``.

A few subjects per 10,000 make the fast path fail (its step size underflows in some long, stiff
decays, e.g. weekly IV doses with fast elimination); they are simulated again with `simulate` in
float64 (`FALLBACK`, counted as ``fallback`` in the manifest). A subject that fails both, or is
not finite, is dropped and counted; nothing non-finite is written. ``method="simulate"`` uses
`simulate` for everything.

**Determinism and resume.** All randomness of shard ``s`` comes from
``fold_in(fold_in(fold_in(key(seed), family), s), stream)`` (one stream each for classes and
designs, parameters, and noise), so a shard does not depend on which shards were made before it
or in which process. Shards are written to a temporary file, renamed, then recorded in the
manifest (atomically replaced) with their SHA-256; a rerun with the same arguments skips the
recorded shards whose checksum matches and makes the rest, so an interrupted run resumes where
it stopped and the result is byte-identical to an uninterrupted run (same platform and library
versions; measured identical with 1 and 2 devices). Arguments that change the content are
refused on resume.

**Modules** (one concept each): `_corpus_design` (designs, constants, configuration, split rule,
fingerprint), `_corpus_sampling` (the randomness of a shard), `_corpus_simulation` (its noise-free
trajectories), `_corpus_rows` (noise, features, targets), `_corpus_store` (parquet shards,
manifest, resume); this module drives them ([`generate_corpus`][]) and re-exports the public names.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from ..progress import progress_bar
from ._corpus_design import (
    DEFAULT_DESIGNS as DEFAULT_DESIGNS,
    DESIGNS as DESIGNS,
    DOSE_LEVELS_MG as DOSE_LEVELS_MG,
    FORMAT as FORMAT,
    FORMAT_VERSION as FORMAT_VERSION,
    INFUSION_CLASSES as INFUSION_CLASSES,
    INFUSION_DURATIONS_H as INFUSION_DURATIONS_H,
    JITTER_LOG_SD as JITTER_LOG_SD,
    MAX_DOSES as MAX_DOSES,
    MISSING as MISSING,
    N_TIMES as N_TIMES,
    NOISE as NOISE,
    PD_DRIVER_ROUTE_P as PD_DRIVER_ROUTE_P,
    PD_POTENCY as PD_POTENCY,
    PD_SEPARATE as PD_SEPARATE,
    ROUTES as ROUTES,
    SPLIT_RULE as SPLIT_RULE,
    CorpusConfig as CorpusConfig,
    Design as Design,
    content_fingerprint,
    content_spec,
    split_of as split_of,
)
from ._corpus_rows import observe_rows
from ._corpus_sampling import sample_shard as sample_shard
from ._corpus_simulation import (
    FALLBACK as FALLBACK,
    class_args as class_args,
    class_model as class_model,
    simulate_shard as simulate_shard,
)
from ._corpus_store import load_for_resume, new_manifest, update_counts, write_json, write_shard
from .batches import MANIFEST


__all__ = [
    "CorpusConfig",
    "Design",
    "DESIGNS",
    "DEFAULT_DESIGNS",
    "DOSE_LEVELS_MG",
    "INFUSION_DURATIONS_H",
    "N_TIMES",
    "MAX_DOSES",
    "generate_corpus",
    "sample_shard",
    "simulate_shard",
    "split_of",
]


def generate_corpus(
    out,
    family: str,
    n: int,
    seed: int,
    *,
    shard_size: int = 20_000,
    classes: Sequence[str] | None = None,
    pd_driver: str = "pk_2c_oral",
    dtype: str = "float32",
    rtol: float = 1e-4,
    atol: float = 1e-6,
    max_steps: int = 4096,
    method: str = "erk",
    batch_size: int = 256,
    pd_sampling: str = "mixed",
    pd_potency: str = "exposure",
    designs: Sequence[str] = DEFAULT_DESIGNS,
    progress: bool | Callable[[int, int], None] = True,
    max_shards: int | None = None,
    stop: Callable[[], bool] | None = None,
    verify: bool = True,
) -> dict:
    """Generate (or resume) a corpus in directory `out`; return the manifest.

    **Arguments:** `family`, `n`, `seed`, `shard_size`, `classes`, `pd_driver`, `dtype`, `rtol`,
    `atol`, `max_steps`, `method`, `batch_size`, `pd_sampling`, `pd_potency`, `designs`: see
    [`CorpusConfig`][] and the module docstring.

    **Other arguments:**

    - `progress`: a rich progress bar with elapsed time and ETA (True), none (False), or a callback
      ``(done, total)`` called as trajectories finish.
    - `max_shards`: make at most this many new shards in this call, then return (the manifest
      says ``complete: false``; call again to go on).
    - `stop`: called between shards; returning True ends the call like `max_shards`.
    - `verify`: re-check the SHA-256 of existing shards before resuming (a shard that does not
      match is made again).

    Shards are independent of each other and of the order they are made in; a second call with
    the same arguments resumes (or, when complete, returns the manifest unchanged).
    """
    import jax

    cfg = CorpusConfig(family=family, n=int(n), seed=int(seed), shard_size=int(shard_size),
                       classes=None if classes is None else tuple(classes), pd_driver=pd_driver, dtype=dtype,
                       rtol=float(rtol), atol=float(atol), max_steps=int(max_steps), method=method,
                       batch_size=int(batch_size), pd_sampling=pd_sampling, pd_potency=pd_potency,
                       designs=tuple(designs))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for tmp in out.glob("*.tmp"):
        tmp.unlink()
    spec = content_spec(cfg)
    fingerprint = content_fingerprint(spec)
    man = load_for_resume(out, fingerprint, spec, verify)
    if man is None:
        man = new_manifest(cfg, spec, fingerprint)
    n_dev = len(jax.devices())
    man["library"].update(jax=jax.__version__, platform=jax.devices()[0].platform, devices=n_dev)
    done = {s["index"] for s in man["shards"]}
    todo = [s for s in range(cfg.n_shards) if s not in done]
    update_counts(man)
    write_json(out / MANIFEST, man)

    total_done = sum(cfg.shard_rows(s) for s in done)
    def finish(shard: int, draw: dict, sim: dict, t0: float) -> None:
        """Noise, features, the shard file and its manifest entry (runs on the writer thread)."""
        obs = observe_rows(cfg, draw, sim)
        entry = write_shard(out, shard, obs["rows"], fingerprint)
        ok, label, status = obs["ok"], draw["label"], sim["status"]
        entry.update(
            requested=int(label.size),
            rows=int(ok.sum()),
            failed=int((~ok).sum()),
            per_class={c: int(np.sum(ok & (label == k))) for k, c in enumerate(cfg.classes)},
            failed_per_class={c: int(np.sum(~ok & (label == k))) for k, c in enumerate(cfg.classes)},
            failed_by_status={str(int(v)): int(np.sum(~ok & (status == v))) for v in np.unique(status[~ok])},
            fallback=int(sim["fallback"].sum()),
        )
        man["shards"] = sorted(man["shards"] + [entry], key=lambda s: s["index"])
        man["timing"][str(shard)] = round(time.perf_counter() - t0, 3)
        update_counts(man)
        write_json(out / MANIFEST, man)

    # The host work of shard s (noise, features, parquet, checksum) runs on one writer thread
    # while shard s + 1 is simulated; shards are recorded one at a time, in order.
    made = 0
    t_start = time.perf_counter()
    writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="corpus-writer")
    pending = None
    counter = [total_done]
    with progress_bar(f"corpus {family} seed {seed}", cfg.n, enabled=progress if todo else False,
                      done=total_done, transient=False, unit="traj") as update:

        def on_batch(k):
            counter[0] += k
            update(counter[0])

        try:
            for shard in todo:
                if (max_shards is not None and made >= max_shards) or (stop is not None and stop()):
                    break
                t0 = time.perf_counter()
                draw = sample_shard(cfg, shard)
                sim = simulate_shard(cfg, draw, n_dev=n_dev, on_batch=on_batch)
                if pending is not None:
                    pending.result()  # raises the writer's error, if any
                pending = writer.submit(finish, shard, draw, sim, t0)
                made += 1
            if pending is not None:
                pending.result()
        finally:
            writer.shutdown(wait=True)  # an interrupted run still records the shard being written
    elapsed = time.perf_counter() - t_start
    if made:
        n_made = sum(cfg.shard_rows(s) for s in todo[:made])
        man["timing"]["last_call"] = {"shards": made, "trajectories": n_made, "seconds": round(elapsed, 3),
                                      "traj_per_s": round(n_made / elapsed, 1)}
        write_json(out / MANIFEST, man)
    return man
