"""Evaluation of a trained model-selection network, and prediction for new trajectories.

[`evaluate`][] runs a checkpoint over a held-out split and reports

- accuracy and the confusion matrix (rows: true class, columns: predicted class), as numbers and
  as a PNG;
- per class, the regression error in the normalised log space (the network's parameter row of
  the **true** class, as in the training loss, over the parameters that class has): MSE, and RMSE
  per parameter;
- per class and parameter, the median fold-error in natural units, ``exp(|log θ̂ − log θ|)``
  (1 = exact, 2 = off by a factor of two), after undoing the normalisation with
  `denormalise_params` (the corpus's per-parameter prior location and scale);
- calibration: the expected calibration error (ECE) of the top-class probability over
  equal-width confidence bins, with a reliability diagram.

[`predict`][] turns a batch into class probabilities and natural-unit parameters (the row of the
predicted class), for classifying real subjects.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


__all__ = [
    "Prediction",
    "predict",
    "evaluate",
    "confusion_matrix",
    "expected_calibration_error",
    "plot_confusion",
    "plot_reliability",
    "EVALUATION_FILE",
    "CONFUSION_PNG",
    "RELIABILITY_PNG",
]

EVALUATION_FILE = "evaluation.json"
CONFUSION_PNG = "confusion.png"
RELIABILITY_PNG = "reliability.png"

Denormalise = Callable[[str, np.ndarray], dict]


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


# ------------------------------------------------------------------------------------ pure metrics
def confusion_matrix(labels: Sequence[int], predicted: Sequence[int], n_classes: int) -> np.ndarray:
    """``[n_classes, n_classes]`` counts; entry ``[i, j]`` = examples of class ``i`` predicted ``j``."""
    labels, predicted = np.asarray(labels, int), np.asarray(predicted, int)
    if labels.shape != predicted.shape:
        raise ValueError(f"labels {labels.shape} and predictions {predicted.shape} differ in shape.")
    cm = np.zeros((n_classes, n_classes), np.int64)
    np.add.at(cm, (labels, predicted), 1)
    return cm


def expected_calibration_error(
    probs: np.ndarray, labels: Sequence[int], n_bins: int = 15
) -> tuple[float, list]:
    """``(ece, bins)`` of the top-class probability over `n_bins` equal-width bins on [0, 1].

    ``ECE = Σ_b (n_b / N) · |accuracy_b − mean confidence_b|`` (Guo et al. 2017). A confidence on
    a bin edge goes to the upper bin (the last bin includes 1). `bins` lists, per bin, its edges,
    count, accuracy and mean confidence (None when empty).
    """
    probs = np.asarray(probs, float)
    labels = np.asarray(labels, int)
    if probs.ndim != 2 or probs.shape[0] != labels.shape[0]:
        raise ValueError(f"probs must be [N, C] with N = len(labels); got {probs.shape}, {labels.shape}.")
    conf = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    idx = np.clip(np.floor(conf * n_bins).astype(int), 0, n_bins - 1)
    n = conf.size
    ece, bins = 0.0, []
    for b in range(n_bins):
        sel = idx == b
        k = int(sel.sum())
        acc = float(correct[sel].mean()) if k else None
        mean_conf = float(conf[sel].mean()) if k else None
        if k:
            ece += k / n * abs(acc - mean_conf)
        bins.append({"lo": float(edges[b]), "hi": float(edges[b + 1]), "count": k, "accuracy": acc,
                     "confidence": mean_conf})
    return float(ece), bins


def plot_confusion(cm: np.ndarray, class_names: Sequence[str], path: str | Path) -> None:
    """Row-normalised confusion matrix with the counts written in the cells."""
    plt = _plt()
    cm = np.asarray(cm)
    frac = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    k = len(class_names)
    size = max(4.0, 0.55 * k + 2.0)
    fig, ax = plt.subplots(figsize=(size + 1.0, size))
    im = ax.imshow(frac, cmap="Blues", vmin=0.0, vmax=1.0)
    ax.set_xticks(range(k), class_names, rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(k), class_names, fontsize=7)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    for i in range(k):
        for j in range(k):
            if cm[i, j]:
                ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=6,
                        color="white" if frac[i, j] > 0.5 else "black")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class")
    acc = np.trace(cm) / max(cm.sum(), 1)
    ax.set_title(f"confusion matrix (accuracy {acc:.3f}, n = {cm.sum()})", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_reliability(bins: list, ece: float, path: str | Path) -> None:
    """Reliability diagram: accuracy against mean confidence per bin, with the diagonal."""
    plt = _plt()
    fig, (ax, ax_n) = plt.subplots(2, 1, figsize=(4.5, 5.2), sharex=True,
                                   gridspec_kw={"height_ratios": [3, 1]})
    lo = np.array([b["lo"] for b in bins])
    width = bins[0]["hi"] - bins[0]["lo"]
    acc = np.array([b["accuracy"] if b["accuracy"] is not None else np.nan for b in bins])
    conf = np.array([b["confidence"] if b["confidence"] is not None else np.nan for b in bins])
    ax.bar(lo, np.nan_to_num(acc), width=width, align="edge", edgecolor="k", lw=0.5, label="accuracy")
    ax.plot([0, 1], [0, 1], "k--", lw=0.8, label="perfect calibration")
    ax.plot(conf, acc, "o", color="C3", ms=3, label="mean confidence")
    ax.set_ylabel("accuracy")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7, loc="upper left")
    ax.set_title(f"reliability (ECE = {ece:.3f})", fontsize=9)
    ax_n.bar(lo, [b["count"] for b in bins], width=width, align="edge", color="0.6")
    ax_n.set_xlabel("top-class probability")
    ax_n.set_ylabel("count")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _fold_errors(pred: dict, true: dict) -> dict[str, float]:
    out = {}
    for name, t in true.items():
        p = pred.get(name)
        if p is not None and p > 0 and t > 0 and math.isfinite(p) and math.isfinite(t):
            out[name] = math.exp(abs(math.log(p) - math.log(t)))
        else:
            out[name] = math.nan
    return out


# ---------------------------------------------------------------------------------------- predict
@dataclass(frozen=True)
class Prediction:
    """Output of [`predict`][] for a batch of ``B`` trajectories.

    - `probs`: ``[B, C]`` class probabilities; `class_names` names the columns.
    - `predicted`: the most probable class of each trajectory.
    - `params`: per trajectory, the natural-unit parameters of its predicted class.
    - `params_normalised`: ``[B, C, P]`` the raw parameter head (normalised log space, all classes).
    - `params_by_class`: with ``all_classes=True``, per trajectory ``{class: {param: value}}``.
    """

    probs: np.ndarray
    class_names: tuple[str, ...]
    predicted: list[str]
    params: list[dict[str, float]]
    params_normalised: np.ndarray
    params_by_class: list[dict[str, dict[str, float]]] | None = None


@functools.cache
def _forward_fn():
    """The jitted inference forward pass, built once on first use (keeps JAX out of import)."""
    import equinox as eqx
    import jax

    from .encoder import apply_batch

    @eqx.filter_jit
    def fwd(model, times, values, mask):
        logits, params = apply_batch(model, times, values, mask, inference=True)
        return jax.nn.softmax(logits, axis=-1), params

    return fwd


def _forward(model, times, values, mask):
    """Jitted inference forward pass ``-> (probs [B, C], params [B, C, P])``."""
    fwd = _forward_fn()
    probs, params = fwd(model, np.asarray(times, np.float32), np.asarray(values, np.float32),
                        np.asarray(mask, bool))
    return np.asarray(probs, np.float64), np.asarray(params, np.float64)


def _load(checkpoint):
    from .train import Checkpoint, load_checkpoint

    return checkpoint if isinstance(checkpoint, Checkpoint) else load_checkpoint(checkpoint)


def _default_denormalise() -> Denormalise:
    from .batches import denormalise_params

    return denormalise_params


def predict(checkpoint: Any, batch: Any, *, denormalise: Denormalise | None = None,
            all_classes: bool = False) -> Prediction:
    """Class probabilities and natural-unit parameters for the trajectories of `batch`.

    **Arguments:**

    - `checkpoint`: a training output directory, a checkpoint file, or a loaded `Checkpoint`
      (load once with `load_checkpoint` when predicting many batches).
    - `batch`: anything with `times` ``[B, T]``, `values` ``[B, T, F]`` and `mask` ``[B, T]``
      (normalised like the training corpus).
    - `denormalise`: ``(class_name, vector) -> {param: value}``; defaults to the corpus module's
      `denormalise_params`.
    - `all_classes`: also return every class's parameters (`params_by_class`).
    """
    ckpt = _load(checkpoint)
    denormalise = denormalise or _default_denormalise()
    times, values, mask = np.asarray(batch.times), np.asarray(batch.values), np.asarray(batch.mask)
    if values.ndim != 3 or values.shape[-1] != ckpt.config.n_features:
        raise ValueError(f"batch.values must be [B, T, {ckpt.config.n_features}] (the features the model "
                         f"was trained on); got {values.shape}.")
    probs, params = _forward(ckpt.model, times, values, mask)
    names = ckpt.class_names
    top = probs.argmax(axis=1)
    predicted = [names[i] for i in top]
    nat = [dict(denormalise(names[c], params[b, c])) for b, c in enumerate(top)]
    by_class = None
    if all_classes:
        by_class = [{name: dict(denormalise(name, params[b, c])) for c, name in enumerate(names)}
                    for b in range(params.shape[0])]
    return Prediction(probs=probs, class_names=names, predicted=predicted, params=nat,
                      params_normalised=params, params_by_class=by_class)


# --------------------------------------------------------------------------------------- evaluate
def evaluate(
    checkpoint: Any,
    source: Any,
    *,
    split: str = "test",
    out: str | Path | None = None,
    denormalise: Denormalise | None = None,
    n_bins: int = 15,
    progress: bool = False,
) -> dict:
    """Metrics of a trained model on the `split` of `source` (a `BatchSource`, see `train.py`).

    With `out`, writes `evaluation.json`, `confusion.png` and `reliability.png` there. Returns
    the same dictionary as the JSON (see the module docstring for the metrics).
    """
    ckpt = _load(checkpoint)
    denormalise = denormalise or _default_denormalise()
    names = ckpt.class_names
    n_classes = len(names)
    probs_l, labels_l, pred_l, true_l, mask_l = [], [], [], [], []
    batches = source(split, 0)
    bar = None
    if progress:
        from ..progress import progress_display

        bar = progress_display()
        bar.start()
        total = source.n_batches(split) if hasattr(source, "n_batches") else None
        task = bar.add_task(f"evaluating {split}", total=total)
    try:
        for batch in batches:
            probs, params = _forward(ckpt.model, batch.times, batch.values, batch.mask)
            label = np.asarray(batch.label, int)
            probs_l.append(probs)
            labels_l.append(label)
            pred_l.append(params[np.arange(label.size), label])
            true_l.append(np.asarray(batch.params, np.float64))
            mask_l.append(np.asarray(batch.param_mask, bool))
            if bar is not None:
                bar.update(task, advance=1)
    finally:
        if bar is not None:
            bar.stop()
    if not labels_l:
        raise ValueError(f"split {split!r} has no examples.")
    probs = np.concatenate(probs_l)
    labels = np.concatenate(labels_l)
    pred_p, true_p, pmask = np.concatenate(pred_l), np.concatenate(true_l), np.concatenate(mask_l)
    predicted = probs.argmax(axis=1)
    cm = confusion_matrix(labels, predicted, n_classes)
    ece, bins = expected_calibration_error(probs, labels, n_bins)

    per_class = {}
    for c, name in enumerate(names):
        sel = labels == c
        k = int(sel.sum())
        entry: dict[str, Any] = {
            "n": k,
            "recall": float(cm[c, c] / k) if k else None,
            "precision": float(cm[c, c] / cm[:, c].sum()) if cm[:, c].sum() else None,
        }
        if k:
            m = pmask[sel]
            diff = np.where(m, pred_p[sel] - np.where(m, true_p[sel], 0.0), 0.0)
            entry["mse_normalised"] = float((diff**2).sum() / max(m.sum(), 1))
            slots = np.flatnonzero(m.any(axis=0))
            slot_names = _slot_names(ckpt.info, name, slots)
            entry["rmse_normalised"] = {
                slot_names[i]: float(np.sqrt((diff[:, j] ** 2).sum() / max(m[:, j].sum(), 1)))
                for i, j in enumerate(slots)
            }
            folds: dict[str, list[float]] = {}
            for p_vec, t_vec, m_vec in zip(pred_p[sel], true_p[sel], m):
                p_nat = denormalise(name, np.where(m_vec, p_vec, 0.0))
                t_nat = denormalise(name, np.where(m_vec, t_vec, 0.0))
                for pname, fe in _fold_errors(dict(p_nat), dict(t_nat)).items():
                    folds.setdefault(pname, []).append(fe)
            entry["median_fold_error"] = {
                p: (float(np.nanmedian(v)) if np.isfinite(v).any() else None) for p, v in folds.items()
            }
        per_class[name] = entry

    result = {
        "split": split,
        "n": int(labels.size),
        "accuracy": float(np.mean(predicted == labels)),
        "class_names": list(names),
        "confusion_matrix": cm.tolist(),
        "confusion_matrix_normalised": (cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)).round(6).tolist(),
        "per_class": per_class,
        "mse_normalised": float(
            (np.where(pmask, pred_p - np.where(pmask, true_p, 0.0), 0.0) ** 2).sum() / max(pmask.sum(), 1)
        ),
        "ece": ece,
        "calibration_bins": bins,
        "checkpoint": {"epoch": ckpt.meta.get("epoch"), "step": ckpt.meta.get("step"),
                       "preset": ckpt.meta.get("train_config", {}).get("preset", {}).get("name"),
                       "model_config": ckpt.config.to_dict()},
    }
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        (out / EVALUATION_FILE).write_text(json.dumps(result, indent=2))
        plot_confusion(cm, names, out / CONFUSION_PNG)
        plot_reliability(bins, ece, out / RELIABILITY_PNG)
    return result


def _slot_names(info: dict, class_name: str, slots: np.ndarray) -> list[str]:
    """Names for the parameter slots a class uses: the class's parameter names when their number
    matches, else ``slot<j>``."""
    names = list((info.get("param_names") or {}).get(class_name, ()))
    if len(names) == len(slots):
        return names
    return [f"slot{j}" for j in slots]
