"""Sharded and chunked population simulation give the same numbers as one plain batch.

The sharded run needs several devices, and XLA fixes the number of host (CPU) devices when the
backend starts, so it runs in a subprocess with
``XLA_FLAGS=--xla_force_host_platform_device_count=4``: 103 subjects (not divisible by 4), one
regimen and time grid per subject, `shard=True` vs `shard=False`, and checks inside the script
that the batch really was laid out over the 4 devices.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pkpd_jax.dosing import Regimen
from pkpd_jax.models import get_model
from pkpd_jax.solve import simulate_population


# Sharded / chunked vs one batch: the same per-subject float operations.
SAME_ATOL = 1e-12

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = r"""
import json
import jax
import jax.numpy as jnp
import numpy as np

import pkpd_jax.solve as S
import pkpd_jax.solve._population as P
from pkpd_jax.devices import shard_leading
from pkpd_jax.dosing import Regimen
from pkpd_jax.models import get_model

assert jax.config.jax_enable_x64, "run with JAX_ENABLE_X64=1"
assert jax.device_count() == 4 and len(jax.devices()) == 4, jax.devices()

N = 103
model = get_model("pk_2c_oral", "pd_indirect_stim_kout")
rng = np.random.default_rng(0)
loc = np.array([p.prior_loc for p in model.params])
sd = np.array([p.log_sd for p in model.params])
theta = jnp.asarray(np.exp(loc + sd * np.clip(rng.standard_normal((N, loc.size)), -1.5, 1.5)))
regimen = Regimen(
    time=jnp.asarray(np.sort(rng.uniform(0.0, 24.0, (N, 3)), axis=1)),
    amount=jnp.asarray(rng.uniform(10.0, 200.0, (N, 3))),
    duration=jnp.asarray(np.where(rng.random((N, 3)) < 0.5, 0.0, 1.5)),
    cmt=-jnp.ones((N, 3), int),
)
ts = jnp.asarray(rng.uniform(0.0, 48.0, (N, 8)))

# Record how the library lays out each compiled batch (inputs and outputs, before slicing).
layout = []
batch = P._simulate_batch


def spy(model, theta, regimen, ts, *rest):
    sol = batch(model, theta, regimen, ts, *rest)
    layout.append({
        "rows": int(theta.shape[0]),
        "theta_devices": len(theta.sharding.device_set),
        "ts_devices": len(ts.sharding.device_set),
        "out_devices": len(sol.conc.sharding.device_set),
    })
    return sol


P._simulate_batch = spy
sharded = S.simulate_population(model, theta, regimen, ts, shard=True)
layout_sharded, layout = layout, []
plain = S.simulate_population(model, theta, regimen, ts, shard=False)
layout_plain, layout = layout, []
chunked = S.simulate_population(model, theta, regimen, ts, shard=True, chunk_size=30)
layout_chunked = layout
P._simulate_batch = batch

# The library's one placement helper spreads a padded batch over the 4 devices.
placed = shard_leading(jnp.concatenate([theta, theta[-1:]]), 4)
assert len(placed.sharding.device_set) == 4

def maxdiff(a, b):
    return max(float(jnp.max(jnp.abs(getattr(a, f) - getattr(b, f))))
               for f in ("states", "conc", "resp", "ts"))

print(json.dumps({
    "devices": jax.device_count(),
    "shape": list(sharded.conc.shape),
    "status": [int(np.max(s.status)) for s in (sharded, plain, chunked)],
    "diff_sharded": maxdiff(sharded, plain),
    "diff_chunked": maxdiff(chunked, plain),
    "finite": bool(np.all(np.isfinite(np.asarray(sharded.resp)))),
    "range_conc": float(jnp.max(plain.conc)),
    "layout_sharded": layout_sharded,
    "layout_plain": layout_plain,
    "layout_chunked": layout_chunked,
}))
"""


def _run_on_host_devices(script: str, devices: int, timeout: int) -> dict:
    """Run `script` in a fresh Python with `devices` CPU devices (float64); its last stdout line
    is JSON."""
    env = {
        **os.environ,
        "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
        "JAX_ENABLE_X64": "1",
        "JAX_PLATFORMS": "cpu",
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    proc = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_sharded_population_equals_unsharded_on_four_devices():
    out = _run_on_host_devices(SCRIPT, 4, timeout=600)
    assert out["devices"] == 4
    assert out["shape"] == [103, 8]
    assert out["status"] == [0, 0, 0]
    assert out["finite"] and out["range_conc"] > 0
    assert out["diff_sharded"] <= SAME_ATOL
    assert out["diff_chunked"] <= SAME_ATOL
    # shard=True: one batch of 104 rows (103 padded to a multiple of 4) over all 4 devices.
    assert out["layout_sharded"] == [
        {"rows": 104, "theta_devices": 4, "ts_devices": 4, "out_devices": 4}
    ]
    # shard=False: one batch of 103 rows on a single device.
    assert out["layout_plain"] == [
        {"rows": 103, "theta_devices": 1, "ts_devices": 1, "out_devices": 1}
    ]
    # chunk_size=30 rounds up to 32 per chunk (4 devices): 4 chunks, all sharded.
    assert out["layout_chunked"] == [
        {"rows": 32, "theta_devices": 4, "ts_devices": 4, "out_devices": 4}
    ] * 4


def test_chunked_population_equals_one_chunk():
    """In-process (however many devices): chunks of 10 over 23 subjects = one batch of 23."""
    model = get_model("pk_1c_oral", "pd_direct_emax")
    rng = np.random.default_rng(1)
    n = 23
    base = np.asarray(model.pack(model.prior_medians()))
    theta = jnp.asarray(base * rng.uniform(0.6, 1.6, (n, base.size)))
    regimen = Regimen.make([0.0, 12.0], [100.0, 50.0], [0.0, 2.0])
    ts = jnp.asarray(rng.uniform(0.0, 36.0, (n, 6)))
    calls = []
    whole = simulate_population(model, theta, regimen, ts)
    chunked = simulate_population(model, theta, regimen, ts, chunk_size=10,
                                  progress=lambda done, total: calls.append((done, total)))
    n_dev = jax.device_count()
    size = -(-10 // n_dev) * n_dev
    assert calls == [(min(hi, n), n) for hi in range(size, n + size, size)][: len(calls)]
    assert calls[-1] == (n, n)
    for field in ("states", "conc", "resp"):
        np.testing.assert_allclose(getattr(chunked, field), getattr(whole, field), rtol=0,
                                   atol=SAME_ATOL, err_msg=field)
    np.testing.assert_array_equal(chunked.status, 0)
    assert chunked.conc.shape == (n, 6) and float(jnp.max(whole.resp)) > float(jnp.min(whole.resp))


SAMPLER_SCRIPT = r"""
import json
import jax
import jax.numpy as jnp
import numpy as np

from pkpd_jax.data import Dataset, read_nonmem
from pkpd_jax.data.example import example_paths
from pkpd_jax.inference.population import PopulationModel
from pkpd_jax.inference.chains import StaticFn, chain_map
from pkpd_jax.inference.samplers import sample
from pkpd_jax.models import get_model

assert jax.device_count() == 2, jax.devices()

# The chain map really lays the chains out over both devices.
out = jax.jit(lambda x: chain_map(StaticFn(None, 2), lambda a, s: a * s, (0, None))(x, 2.0))(
    jnp.arange(8.0).reshape(4, 2))
layout = len(out.sharding.device_set)

# A small population model (the ODE-free closed-form path would not exercise the batched solver
# loop inside shard_map, so use a nonlinear PK/PD pair): 4 subjects of the example study.
frame = read_nonmem(example_paths()[0])
ids = sorted(set(frame["ID"].to_list()))[12:16]
ds = Dataset.from_frame(frame.filter(frame["ID"].is_in(ids)))
pm = PopulationModel(get_model("pk_1c_iv", "pd_indirect_inhib_kin"), ds, "auto", None)
x0 = jnp.asarray(pm.prior_median_position())[None] + 0.01 * jax.random.normal(
    jax.random.key(0), (4, pm.dim))
gauss_x0 = jax.random.normal(jax.random.key(1), (4, 3))
targets = {
    "qhmc": (pm.logdensity, x0),  # through the batched ODE loop
    "nuts": (lambda x: -0.5 * jnp.sum((x / jnp.array([1.0, 2.0, 0.5])) ** 2), gauss_x0),
}
res = {}
for sampler, (fn, start) in targets.items():
    runs = [sample(fn, start, sampler=sampler, num_warmup=6, num_samples=4, seed=3,
                   progress=False, chain_devices=k) for k in (1, 2, None)]
    res[sampler] = {
        "diff_2": float(np.max(np.abs(runs[0].draws - runs[1].draws))),
        "diff_auto": float(np.max(np.abs(runs[0].draws - runs[2].draws))),
        "moved": float(np.max(np.abs(runs[1].draws[:, -1] - np.asarray(start)))),
        "finite": bool(np.all(np.isfinite(runs[1].logdensity))),
    }
try:
    sample(pm.logdensity, x0[:3], num_warmup=1, num_samples=1, progress=False, chain_devices=2)
    error = None
except ValueError as e:
    error = str(e)
print(json.dumps({"layout": layout, "res": res, "error": error}))
"""


@pytest.mark.slow  # ~100 s of compilation in a subprocess (CI time budget); `nox -s slow`
def test_chains_sharded_over_two_devices_match_one_device():
    """`sample(chain_devices=2)` (jax.shard_map over chains, as the command line runs a fit on a
    2-core host) gives the draws of the single-device vmap: QHMC through the population model's
    batched ODE loop, NUTS on a Gaussian; 3 chains cannot be split over 2 devices."""
    out = _run_on_host_devices(SAMPLER_SCRIPT, 2, timeout=900)
    assert out["layout"] == 2
    for sampler, r in out["res"].items():
        assert r["finite"], sampler
        assert r["moved"] > 1e-3, sampler  # the chains did move
        # Same arithmetic per chain; only vectorisation round-off may differ over 10 iterations.
        assert r["diff_2"] <= 1e-8, (sampler, r)
        assert r["diff_auto"] <= 1e-8, (sampler, r)
    assert out["error"] is not None and "must divide the 3 chains" in out["error"]


def test_chain_devices_beyond_available_devices_is_an_error():
    from pkpd_jax.inference.samplers import sample

    n = jax.local_device_count()
    x0 = jnp.zeros((2 * (n + 1), 2))
    try:
        sample(lambda x: -0.5 * jnp.sum(x**2), x0, num_warmup=1, num_samples=1, progress=False,
               chain_devices=n + 1)
    except ValueError as e:
        assert f"at most the {n} available device(s)" in str(e)
    else:
        raise AssertionError("chain_devices above the device count was accepted")


ONE_PROGRAM_SCRIPT = r"""
import json
import jax
import jax.numpy as jnp
import numpy as np

from pkpd_jax.inference import adaptation, samplers

assert jax.device_count() == 2, jax.devices()
scale = jnp.array([1.0, 3.0, 0.3, 2.0, 1.0, 0.5])


def logdensity(x):
    return -0.5 * jnp.sum((x / scale) ** 2)


x0 = 0.1 * jax.random.normal(jax.random.key(0), (4, 6))
sizes = {}
for metric in ("diag", "low_rank"):
    before = adaptation.chunk_jit._cache_size()
    r = samplers.sample(logdensity, x0, num_warmup=150, num_samples=40, seed=1, progress=False,
                        chain_devices=2, metric=metric, max_rank=3, chunk=20)
    sizes[metric] = adaptation.chunk_jit._cache_size() - before
    assert np.all(np.isfinite(r.draws))
print(json.dumps(sizes))
"""


def test_qhmc_chunk_program_compiled_once_with_chains_on_two_devices():
    """Regression: with the chains split over two devices, the warm-up carry came back from the
    chunk program sharded over them, from the window-end and low-rank programs on one device,
    and the chunk program (a fit's largest) was compiled again for each placement: 2-3
    compilations of ~15 s each per fit of the example study. One per fit now, through window
    ends, low-rank estimates and the sampling phase."""
    out = _run_on_host_devices(ONE_PROGRAM_SCRIPT, 2, timeout=600)
    assert out == {"diag": 1, "low_rank": 1}
