"""The model-selection Transformer: shapes, dtype, padding invariance, dropout keys, time encoding."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

from pkpd_jax.amortized.encoder import ModelConfig, TimeEncoding, TransformerEncoder, apply_batch


CFG = ModelConfig(n_features=3, n_classes=4, n_params=5, d_model=16, n_heads=2, n_layers=2, d_ff=32,
                  dropout=0.1)


@pytest.fixture(scope="module")
def net():
    return TransformerEncoder(CFG, key=jr.PRNGKey(0))


@eqx.filter_jit
def _run(net, t, v, m, key=None, inference=None):
    """Jitted forward pass (op-by-op dispatch of a whole transformer is slow to warm up)."""
    return net(t, v, m, key=key, inference=inference)


def _example(T=9, n_real=6, seed=0):
    rng = np.random.default_rng(seed)
    t = np.zeros(T, np.float32)
    t[:n_real] = np.sort(rng.uniform(0.0, 48.0, n_real))
    v = np.zeros((T, CFG.n_features), np.float32)
    v[:n_real] = rng.standard_normal((n_real, CFG.n_features))
    m = np.arange(T) < n_real
    return t, v, m


def test_shapes_and_float32_under_x64(net):
    assert jax.config.jax_enable_x64  # conftest: the network must stay float32 anyway
    t, v, m = _example()
    logits, params = _run(net, t, v, m, inference=True)
    assert logits.shape == (4,) and params.shape == (4, 5)
    assert logits.dtype == jnp.float32 and params.dtype == jnp.float32
    leaves = jax.tree.leaves(eqx.filter(net, eqx.is_inexact_array))
    assert {x.dtype for x in leaves} == {jnp.dtype(jnp.float32)}


def test_same_key_same_network():
    a = TransformerEncoder(CFG, key=jr.PRNGKey(3))
    b = TransformerEncoder(CFG, key=jr.PRNGKey(3))
    c = TransformerEncoder(CFG, key=jr.PRNGKey(4))
    assert eqx.tree_equal(a, b)
    assert not eqx.tree_equal(a, c)


def test_padding_contents_do_not_matter(net):
    """Whatever the padded timesteps hold (even NaN or huge times), the outputs are identical."""
    t, v, m = _example()
    ref = _run(net, t, v, m, inference=True)
    t2, v2 = t.copy(), v.copy()
    t2[~m] = 1e6
    v2[~m] = np.nan
    out = _run(net, t2, v2, m, inference=True)
    for a, b in zip(ref, out):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_padding_length_does_not_matter(net):
    """More padding gives the same outputs (up to float32 summation order)."""
    t, v, m = _example(T=9, n_real=6)
    ref = _run(net, t, v, m, inference=True)
    extra = 7
    out = _run(net, np.pad(t, (0, extra)), np.pad(v, ((0, extra), (0, 0))), np.pad(m, (0, extra)),
              inference=True)
    for a, b in zip(ref, out):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
    # ...and the real part is really used: changing a real value changes the output.
    v3 = v.copy()
    v3[2] += 1.0
    assert not np.allclose(np.asarray(_run(net, t, v3, m, inference=True)[0]), np.asarray(ref[0]))


def test_batch_padding_invariance(net):
    """In a batch, one example's padding does not affect another example's outputs."""
    t1, v1, m1 = _example(seed=1)
    t2, v2, m2 = _example(seed=2, n_real=3)
    batched = eqx.filter_jit(lambda net, t, v, m: apply_batch(net, t, v, m, inference=True))
    logits, params = batched(net, np.stack([t1, t2]), np.stack([v1, v2]), np.stack([m1, m2]))
    single = _run(net, t2, v2, m2, inference=True)
    np.testing.assert_allclose(np.asarray(logits[1]), np.asarray(single[0]), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(np.asarray(params[1]), np.asarray(single[1]), rtol=1e-6, atol=1e-6)


def test_dropout_needs_a_key_and_is_keyed(net):
    t, v, m = _example()
    ref = _run(net, t, v, m, inference=True)
    again = _run(net, t, v, m, inference=True)
    np.testing.assert_array_equal(np.asarray(ref[0]), np.asarray(again[0]))
    a = _run(net, t, v, m, key=jr.PRNGKey(1))
    b = _run(net, t, v, m, key=jr.PRNGKey(1))
    c = _run(net, t, v, m, key=jr.PRNGKey(2))
    np.testing.assert_array_equal(np.asarray(a[0]), np.asarray(b[0]))
    assert not np.array_equal(np.asarray(a[0]), np.asarray(c[0]))
    with pytest.raises(RuntimeError, match="key"):
        _run(net, t, v, m)
    # eqx.nn.inference_mode is an alternative to inference=True.
    inf_net = eqx.nn.inference_mode(net)
    np.testing.assert_array_equal(np.asarray(_run(inf_net, t, v, m)[0]), np.asarray(ref[0]))


def test_time_encoding():
    enc = TimeEncoding(7, 0.25, 2000.0)
    t = jnp.array([0.0, 0.5, 24.0, 168.0])
    pe = enc(t)
    assert pe.shape == (4, 7) and pe.dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(pe[:, -1]), 0.0)  # odd width: trailing zero
    np.testing.assert_allclose(np.asarray(pe[0, :3]), 0.0, atol=1e-7)  # sin(0)
    np.testing.assert_allclose(np.asarray(pe[0, 3:6]), 1.0, atol=1e-7)  # cos(0)
    # the shortest period is min_period: t and t + 0.25 h agree in the first channel
    np.testing.assert_allclose(np.asarray(enc(jnp.array([1.1, 1.35]))[:, 0]), np.sin(2 * np.pi * 1.1 / 0.25),
                               atol=1e-5)
    # distinct times give distinct encodings (no aliasing over a 4-week horizon)
    grid = enc(jnp.linspace(0.0, 672.0, 200))
    d = np.linalg.norm(np.asarray(grid)[:, None] - np.asarray(grid)[None], axis=-1)
    assert np.min(d + np.eye(200) * 1e9) > 1e-3


def test_config_errors():
    with pytest.raises(ValueError, match="divisible"):
        ModelConfig(n_features=1, n_classes=2, n_params=1, d_model=30, n_heads=4)
    with pytest.raises(ValueError, match="dropout"):
        ModelConfig(n_features=1, n_classes=2, n_params=1, dropout=1.0)
    with pytest.raises(ValueError, match="n_classes"):
        ModelConfig(n_features=1, n_classes=0, n_params=1)
    small = ModelConfig(n_features=2, n_classes=2, n_params=1, d_model=8, n_heads=2, n_layers=1, d_ff=8)
    net = eqx.filter_eval_shape(TransformerEncoder, small, key=jr.PRNGKey(0))  # shapes only
    with pytest.raises(ValueError, match=r"values \[T, 2\]"):
        net(np.zeros(4), np.zeros((4, 3)), np.ones(4, bool), inference=True)
