"""The one checkpoint format (`pkpd_jax.nn.checkpoint`): round trip, atomic write, header,
errors, and the byte layout every shipped checkpoint uses."""

from __future__ import annotations

import json

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

from pkpd_jax.errors import PkpdError
from pkpd_jax.nn import CheckpointError, CheckpointNotFoundError, checkpoint


FORMAT = "test.mlp/1"


def _mlp(key=0):
    return eqx.nn.MLP(3, 2, width_size=5, depth=2, key=jr.PRNGKey(key))


def test_round_trip_of_an_equinox_module(tmp_path):
    net = _mlp(1)
    header = {"format": FORMAT, "width": 5, "note": "ü"}
    path = checkpoint.save(tmp_path / "sub" / "net.eqx", header, net)  # parent folders created
    assert path == tmp_path / "sub" / "net.eqx" and path.is_file()
    like = eqx.filter_eval_shape(_mlp, 0)
    got_header, got = checkpoint.load(path, like, format=FORMAT)
    assert got_header == header
    for a, b in zip(jax.tree.leaves(net), jax.tree.leaves(got)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    x = jnp.array([0.1, -0.2, 0.3])
    np.testing.assert_array_equal(np.asarray(net(x)), np.asarray(got(x)))
    # A tree of several modules and a list round-trips too.
    path2 = checkpoint.save(tmp_path / "two.eqx", {"format": FORMAT}, [net, _mlp(2)])
    _, two = checkpoint.load(path2, [like, like])
    np.testing.assert_array_equal(np.asarray(two[0](x)), np.asarray(net(x)))


def test_byte_layout_is_one_json_line_then_equinox_leaves(tmp_path):
    """The layout of the shipped checkpoints: ``json.dumps(header) + "\\n"`` then
    ``eqx.tree_serialise_leaves`` (so files written before this module still load)."""
    net, header = _mlp(3), {"format": FORMAT, "n": [1, 2]}
    path = checkpoint.save(tmp_path / "a.eqx", header, net)
    manual = tmp_path / "b.eqx"
    with open(manual, "wb") as f:
        f.write((json.dumps(header) + "\n").encode())
        eqx.tree_serialise_leaves(f, net)
    assert path.read_bytes() == manual.read_bytes()
    assert checkpoint.read_header(manual, format=FORMAT) == header


def test_read_header_checks_the_format(tmp_path):
    path = checkpoint.save(tmp_path / "net.eqx", {"format": FORMAT, "k": 1}, _mlp())
    assert checkpoint.read_header(path) == {"format": FORMAT, "k": 1}
    msg = r"is not a widget file \(format 'test.mlp/1', expected 'other/1'\)"
    with pytest.raises(CheckpointError, match=msg):
        checkpoint.read_header(path, format="other/1", what="widget file")
    with pytest.raises(CheckpointError, match="expected 'other/1'"):
        checkpoint.load(path, eqx.filter_eval_shape(_mlp, 0), format="other/1")


def test_atomic_write_leaves_no_partial_file(tmp_path, monkeypatch):
    path = tmp_path / "net.eqx"
    checkpoint.save(path, {"format": FORMAT, "v": 1}, _mlp(1))
    before = path.read_bytes()

    class Boom(Exception):
        pass

    def failing(f, tree):
        f.write(b"partial bytes")
        raise Boom

    # Serialisation fails midway: the old file is untouched and no temporary file remains.
    monkeypatch.setattr(eqx, "tree_serialise_leaves", failing)
    with pytest.raises(Boom):
        checkpoint.save(path, {"format": FORMAT, "v": 2}, _mlp(2))
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["net.eqx"]
    # A header that is not JSON fails before any file is opened.
    with pytest.raises(TypeError):
        checkpoint.save(tmp_path / "x.eqx", {"format": FORMAT, "bad": object()}, _mlp())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["net.eqx"]


def test_missing_and_corrupt_files_raise_a_clear_error(tmp_path):
    like = eqx.filter_eval_shape(_mlp, 0)
    missing = tmp_path / "missing.eqx"
    for call in (lambda: checkpoint.read_header(missing), lambda: checkpoint.load(missing, like)):
        with pytest.raises(CheckpointNotFoundError, match="missing.eqx") as e:
            call()
        assert isinstance(e.value, PkpdError) and isinstance(e.value, FileNotFoundError)
    not_ckpt = tmp_path / "text.eqx"
    not_ckpt.write_text("hello world\n")
    with pytest.raises(CheckpointError, match="text.eqx is not a pkpd_jax checkpoint"):
        checkpoint.read_header(not_ckpt)
    binary = tmp_path / "bin.eqx"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(CheckpointError, match="bin.eqx"):
        checkpoint.load(binary, like)
    # Truncated leaves, or leaves of another model: named path, PkpdError family.
    path = checkpoint.save(tmp_path / "net.eqx", {"format": FORMAT}, _mlp())
    truncated = tmp_path / "truncated.eqx"
    truncated.write_bytes(path.read_bytes()[:-40])
    with pytest.raises(CheckpointError, match="truncated.eqx") as e:
        checkpoint.load(truncated, like)
    assert isinstance(e.value, PkpdError) and isinstance(e.value, ValueError)
    other = eqx.filter_eval_shape(lambda: eqx.nn.MLP(4, 2, width_size=7, depth=2, key=jr.PRNGKey(0)))
    with pytest.raises(CheckpointError, match="net.eqx"):
        checkpoint.load(path, other)
