"""Training throughput of the model-selection Transformer, per preset.

For every preset, the jitted training step of `pkpd_jax.amortized.train` (forward, masked loss,
backward, clipping, AdamW) runs on random batches shaped like a corpus batch (batch 256 by
default; ``--n-times`` 25 timesteps, half or more of them real, and ``--n-features`` 7 features,
as in the PK corpora; 10 classes, 6 parameter slots). The first step (which compiles) is timed
separately; then ``--steps`` steps are timed and the median step time gives the throughput in
trajectories per second. float32, the default devices (CPU here).

Usage::

    python benchmarks/bench_train.py                     # all presets, 10 timed steps each
    python benchmarks/bench_train.py --quick             # 2 timed steps each (smoke run)
    python benchmarks/bench_train.py --presets tiny ref64 --batch-size 128

Results go to ``<out>/train.json`` and ``<out>/train.md`` (``train_quick.*`` with ``--quick``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from rich.console import Console


console = Console(stderr=True, width=110, log_path=False)
N_CLASSES, N_PARAMS = 10, 6


def make_batch(batch_size: int, n_times: int, n_features: int, seed: int) -> tuple[np.ndarray, ...]:
    """Random arrays in the layout of a corpus batch (times, values, mask, label, params, mask)."""
    rng = np.random.default_rng(seed)
    n_real = rng.integers(n_times // 2, n_times + 1, batch_size)
    mask = np.arange(n_times)[None, :] < n_real[:, None]
    times = np.where(mask, np.sort(rng.uniform(0.0, 168.0, (batch_size, n_times)), axis=1), 0.0)
    values = np.where(mask[..., None], rng.standard_normal((batch_size, n_times, n_features)), 0.0)
    label = rng.integers(0, N_CLASSES, batch_size)
    n_par = rng.integers(2, N_PARAMS + 1, batch_size)
    pmask = np.arange(N_PARAMS)[None, :] < n_par[:, None]
    params = np.where(pmask, rng.standard_normal((batch_size, N_PARAMS)), 0.0)
    return (times.astype(np.float32), values.astype(np.float32), mask, label.astype(np.int32),
            params.astype(np.float32), pmask)


def bench_preset(name: str, batch_size: int, n_times: int, n_features: int, steps: int, seed: int) -> dict:
    import equinox as eqx
    import jax
    import jax.random as jr

    from pkpd_jax.amortized.encoder import TransformerEncoder
    from pkpd_jax.amortized.train import PRESETS, make_steps

    preset = PRESETS[name]
    config = preset.model_config(n_features, N_CLASSES, N_PARAMS)
    total = 1 + steps
    optim, _, train_step, _ = make_steps(preset, 10_000)  # long schedule: lr > 0 throughout
    model = TransformerEncoder(config, key=jr.PRNGKey(seed))
    opt_state = optim.init(eqx.filter(model, eqx.is_inexact_array))
    n_weights = sum(x.size for x in jax.tree.leaves(eqx.filter(model, eqx.is_inexact_array)))
    batches = [make_batch(batch_size, n_times, n_features, seed + i) for i in range(min(total, 4))]

    t0 = time.perf_counter()
    model, opt_state, stats = train_step(model, opt_state, batches[0], jr.PRNGKey(0))
    jax.block_until_ready(stats)
    first = time.perf_counter() - t0
    times = []
    for s in range(1, total):
        t0 = time.perf_counter()
        model, opt_state, stats = train_step(model, opt_state, batches[s % len(batches)], jr.PRNGKey(s))
        jax.block_until_ready(stats)
        times.append(time.perf_counter() - t0)
    if not np.all(np.isfinite(np.asarray(stats))):
        raise RuntimeError(f"{name}: non-finite loss in the benchmark")
    step = statistics.median(times)
    return {"preset": name, "d_model": preset.d_model, "n_heads": preset.n_heads, "n_layers": preset.n_layers,
            "d_ff": preset.d_ff, "weights": int(n_weights), "batch_size": batch_size, "n_times": n_times,
            "n_features": n_features, "first_step_s": first, "step_s_median": step,
            "step_s_all": times, "trajectories_per_s": batch_size / step}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--presets", nargs="*", default=None, help="default: all")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--n-times", type=int, default=25)
    ap.add_argument("--n-features", type=int, default=7)
    ap.add_argument("--steps", type=int, default=10, help="timed steps per preset")
    ap.add_argument("--quick", action="store_true", help="2 timed steps per preset")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = ap.parse_args(argv)

    import jax

    from pkpd_jax.amortized.train import PRESETS

    presets = args.presets or list(PRESETS)
    steps = 2 if args.quick else args.steps
    rows = []
    for name in presets:
        console.log(f"{name}: batch {args.batch_size}, T={args.n_times}, F={args.n_features}, {steps} steps")
        r = bench_preset(name, args.batch_size, args.n_times, args.n_features, steps, args.seed)
        console.log(f"  first step {r['first_step_s']:.2f} s, step {r['step_s_median'] * 1e3:.1f} ms, "
                    f"{r['trajectories_per_s']:.0f} trajectories/s")
        rows.append(r)

    machine = {"platform": platform.platform(), "python": sys.version.split()[0], "jax": jax.__version__,
               "devices": [str(d) for d in jax.devices()], "cpu_count": os.cpu_count()}
    payload = {"date": dt.datetime.now().isoformat(timespec="seconds"), "machine": machine,
               "args": {k: v for k, v in vars(args).items() if not isinstance(v, Path)},  # no machine paths
               "results": rows}
    lines = [f"Training throughput, batch {args.batch_size}, T = {args.n_times}, F = {args.n_features}, "
             f"{N_CLASSES} classes, {N_PARAMS} parameter slots, float32 on {jax.devices()[0].platform} "
             f"({os.cpu_count()} cores); median of {steps} steps after a compiling first step.", "",
             "| preset | d_model/heads/layers/FF | weights | first step (s) | step (ms) | trajectories/s |",
             "|---|---|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['preset']} | {r['d_model']}/{r['n_heads']}/{r['n_layers']}/{r['d_ff']} | "
                     f"{r['weights']:,} | {r['first_step_s']:.1f} | {r['step_s_median'] * 1e3:.0f} | "
                     f"{r['trajectories_per_s']:.0f} |")
    md = "\n".join(lines) + "\n"
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "train_quick" if args.quick else "train"
    (args.out / f"{stem}.json").write_text(json.dumps(payload, indent=2))
    (args.out / f"{stem}.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
