"""Batch sources for training: the protocol, in-memory arrays and a streamed corpus directory."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from .batches import Batch


__all__ = ["BatchSource", "ArrayBatches", "CorpusBatches"]


# ----------------------------------------------------------------------------------- batch sources
class BatchSource(Protocol):
    """Where training batches come from: `info` (a `CorpusInfo`-like object), `batch_size`,
    ``__call__(split, epoch)`` -> batches (deterministic given the epoch) and ``n_batches(split)``."""

    info: Any
    batch_size: int

    def __call__(self, split: str, epoch: int) -> Iterable[Any]: ...

    def n_batches(self, split: str) -> int: ...


_FIELDS = ("times", "values", "mask", "label", "params", "param_mask")
_DTYPES = (np.float32, np.float32, np.bool_, np.int32, np.float32, np.bool_)


class ArrayBatches:
    """In-memory [`BatchSource`][]: ``splits[split]`` maps the six batch fields to arrays.

    The ``"train"`` split is shuffled by ``default_rng([seed, epoch])`` and its last incomplete
    batch dropped; other splits come in order, with the last batch kept.
    """

    def __init__(self, info: Any, splits: Mapping[str, Mapping[str, np.ndarray]], batch_size: int,
                 *, seed: int = 0):
        self.info, self.batch_size, self.seed = info, int(batch_size), int(seed)
        self.splits: dict[str, dict[str, np.ndarray]] = {}
        for split, arrays in splits.items():
            missing = [f for f in _FIELDS if f not in arrays]
            if missing:
                raise ValueError(f"split {split!r} lacks the arrays {missing}.")
            conv = {f: np.asarray(arrays[f], dt) for f, dt in zip(_FIELDS, _DTYPES)}
            n = {f: a.shape[0] for f, a in conv.items()}
            if len(set(n.values())) != 1:
                raise ValueError(f"split {split!r}: arrays disagree on the number of examples: {n}.")
            self.splits[split] = conv

    def _n(self, split: str) -> int:
        if split not in self.splits:
            raise ValueError(f"no split {split!r}; have {sorted(self.splits)}.")
        return self.splits[split]["label"].shape[0]

    def n_batches(self, split: str) -> int:
        n = self._n(split)
        return n // self.batch_size if split == "train" else -(-n // self.batch_size)

    def __call__(self, split: str, epoch: int) -> Iterator[Any]:
        n = self._n(split)
        arrays = self.splits[split]
        order = (np.random.default_rng([self.seed, epoch]).permutation(n) if split == "train"
                 else np.arange(n))
        for b in range(self.n_batches(split)):
            idx = order[b * self.batch_size:(b + 1) * self.batch_size]
            yield Batch(**{f: arrays[f][idx] for f in _FIELDS})


class CorpusBatches:
    """[`BatchSource`][] over a corpus directory (`pkpd_jax.amortized.batches.iter_batches`).

    Training batches are shuffled by ``(seed, epoch)`` and drop the last incomplete batch; the
    validation and test splits come in corpus order and keep it.
    """

    def __init__(self, corpus_dir: str | Path, batch_size: int, *, seed: int = 0):
        from .batches import corpus_info

        self.corpus_dir, self.batch_size, self.seed = Path(corpus_dir), int(batch_size), int(seed)
        self.info = corpus_info(self.corpus_dir)
        self._n_batches: dict[str, int] = {}

    def __call__(self, split: str, epoch: int) -> Iterator[Any]:
        from .batches import iter_batches

        return iter_batches(self.corpus_dir, split, self.batch_size, seed=self.seed, epoch=epoch,
                            drop_last=split == "train", shuffle=split == "train")

    def n_batches(self, split: str) -> int:
        if split not in self._n_batches:
            counts = getattr(self.info, "counts", {}) or {}
            if split in counts:
                n = int(counts[split])
                self._n_batches[split] = (n // self.batch_size if split == "train"
                                          else -(-n // self.batch_size))
            else:  # no count in the manifest: one pass to count
                self._n_batches[split] = sum(1 for _ in self(split, 0))
        return self._n_batches[split]


def _info_dict(info: Any) -> dict:
    """The JSON-able part of a `CorpusInfo`-like object (stored in checkpoints)."""
    if dataclasses.is_dataclass(info):
        d = dataclasses.asdict(info)
    elif isinstance(info, Mapping):
        d = dict(info)
    else:
        d = {k: getattr(info, k) for k in ("family", "class_names", "param_names", "n_times",
                                           "n_features", "n_params", "feature_names", "counts")
             if hasattr(info, k)}
    d["class_names"] = list(d["class_names"])
    d["param_names"] = {k: list(v) for k, v in dict(d.get("param_names") or {}).items()}
    if "feature_names" in d:
        d["feature_names"] = list(d["feature_names"])
    return json.loads(json.dumps(d, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)))


def _check_batch(batch: Any, info: dict, where: str) -> None:
    """Shapes and dtypes of one batch against the corpus info; a specific error otherwise."""
    try:
        times, values, mask = batch.times, batch.values, batch.mask
        label, params, pmask = batch.label, batch.params, batch.param_mask
    except AttributeError as e:
        raise ValueError(f"{where}: a batch must have the attributes {_FIELDS}; {e}.") from None
    if np.ndim(times) != 2:
        raise ValueError(f"{where}: batch.times must be [B, T]; got shape {np.shape(times)}.")
    b, t = np.shape(times)
    expect = {"values": (b, t, info["n_features"]), "mask": (b, t), "label": (b,),
              "params": (b, info["n_params"]), "param_mask": (b, info["n_params"])}
    for name, shape in expect.items():
        if np.shape(getattr(batch, name)) != shape:
            raise ValueError(f"{where}: batch.{name} has shape {np.shape(getattr(batch, name))}, "
                             f"expected {shape} (times {np.shape(times)}).")
    lab = np.asarray(label)
    if lab.size and (lab.min() < 0 or lab.max() >= len(info["class_names"])):
        raise ValueError(f"{where}: labels must be in [0, {len(info['class_names'])}); got "
                         f"{lab.min()}..{lab.max()}.")
    del values, mask, params, pmask


def _arrays(batch: Any) -> tuple[np.ndarray, ...]:
    return tuple(np.asarray(getattr(batch, f), dt) for f, dt in zip(_FIELDS, _DTYPES))


