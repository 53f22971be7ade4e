"""The one checkpoint format of pkpd_jax's equinox models.

A checkpoint is one file: a JSON header line (UTF-8, ending in ``\\n``) followed by
``equinox.tree_serialise_leaves`` of a pytree (a model, a list of models, a training state). The
header says what the file is (its ``"format"`` string, e.g. ``"pkpd_jax.pbpk.forecaster/1"``)
and carries everything needed to rebuild the tree's skeleton (configurations, normalisation,
training record), so a loader reads the header first, builds a skeleton of the right shapes, then
reads the leaves into it.

[`save`][] writes to ``<name>.tmp`` next to the target, syncs it to disk and renames it over the
target, so a reader never sees a half-written file and an interruption (or an exception while
serialising) leaves the previous checkpoint, if any, untouched and no temporary file behind.

```python
from pkpd_jax.nn import checkpoint
checkpoint.save("net.eqx", {"format": "my.model/1", "width": 8}, net)
header = checkpoint.read_header("net.eqx", format="my.model/1")
header, net = checkpoint.load("net.eqx", skeleton_from(header))
```
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any, BinaryIO

import equinox as eqx

from ..errors import PkpdError


__all__ = ["CheckpointError", "CheckpointNotFoundError", "save", "read_header", "load"]


class CheckpointError(PkpdError, ValueError):
    """A checkpoint file cannot be read: not a checkpoint, another format, or truncated/corrupt."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """The checkpoint file does not exist."""


def save(path: str | Path, header: dict, tree: Any) -> Path:
    """Write `header` and the leaves of `tree` to `path` atomically (parent folders are created).

    **Arguments:**

    - `path`: the file to write (replaced if it exists).
    - `header`: a JSON-serialisable dict; by convention it has a ``"format"`` entry naming what
      the file holds, which [`read_header`][] can check.
    - `tree`: any pytree equinox can serialise (its array leaves are written, in order).

    **Returns:** `path` as a `Path`.
    """
    path = Path(path)
    if not isinstance(header, dict):
        raise TypeError(f"`header` must be a dict; got {type(header).__name__}.")
    line = (json.dumps(header) + "\n").encode()  # before opening: a bad header leaves no file
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(line)
            eqx.tree_serialise_leaves(f, tree)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    return path


def _header(f: BinaryIO, path: Path, what: str) -> dict:
    try:
        header = json.loads(f.readline())
    except (json.JSONDecodeError, UnicodeDecodeError):
        header = None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path} is not a {what} (its first line is not a JSON header); "
                              "check the path.")
    return header


def _open(path: Path) -> BinaryIO:
    if not path.is_file():
        raise CheckpointNotFoundError(f"checkpoint {path} does not exist.")
    return open(path, "rb")


def _check_format(header: dict, path: Path, format: str | None, what: str) -> None:
    if format is not None and header.get("format") != format:
        raise CheckpointError(f"{path} is not a {what} (format {header.get('format')!r}, "
                              f"expected {format!r}).")


def read_header(path: str | Path, *, format: str | None = None, what: str = "pkpd_jax checkpoint") -> dict:
    """The JSON header of the checkpoint at `path`.

    **Arguments:**

    - `path`: a file written by [`save`][].
    - `format`: if given, the header's ``"format"`` must equal it.
    - `what`: how the error message names the expected kind of file.

    **Returns:** the header dict.

    **Raises:** [`CheckpointNotFoundError`][] if `path` is not a file; [`CheckpointError`][] if its
    first line is not a JSON object or the format differs (the message names the path).
    """
    path = Path(path)
    with _open(path) as f:
        header = _header(f, path, what)
    _check_format(header, path, format, what)
    return header


def load(path: str | Path, like: Any, *, format: str | None = None,
         what: str = "pkpd_jax checkpoint") -> tuple[dict, Any]:
    """Read the checkpoint at `path` into a tree shaped like `like`.

    **Arguments:**

    - `path`: a file written by [`save`][].
    - `like`: a pytree with the structure, shapes and dtypes of the saved one (e.g.
      ``eqx.filter_eval_shape(Model, config, key=...)``); build it from [`read_header`][] when it
      depends on the header.
    - `format`, `what`: as in [`read_header`][].

    **Returns:** ``(header, tree)``.

    **Raises:** as [`read_header`][], and [`CheckpointError`][] if the leaves do not match `like`
    or the file is truncated.
    """
    path = Path(path)
    with _open(path) as f:
        header = _header(f, path, what)
        _check_format(header, path, format, what)
        try:
            tree = eqx.tree_deserialise_leaves(f, like)
        except Exception as e:  # equinox/numpy raise several types for a short or mismatched file
            raise CheckpointError(f"cannot read the saved arrays of {path} ({type(e).__name__}: {e}); "
                                  "the file is truncated or was saved from a different model.") from e
    return header, tree
