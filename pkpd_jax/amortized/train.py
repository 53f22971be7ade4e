"""Training of the amortized model-selection Transformer: presets, loss, optimiser, epochs, checkpoints.

**Loss.** ``L = CE(logits, label) + λ · masked-MSE``: the cross-entropy of the class logits plus the
mean squared error of the normalised log-parameters, read from the true class's row of the
parameter head and averaged over the parameters that class has (``param_mask``). Parameters the
class does not have contribute nothing, whatever the target or the prediction holds there.

**Optimiser.** ``optax.chain(clip_by_global_norm(clip_norm), adamw(schedule, weight_decay, mask))``
with a linear warm-up over the first ``warmup_frac`` of the steps and a cosine decay to
``end_lr_frac · lr`` at the last step. Weight decay applies to weight matrices only (not to biases
or layer-norm scales).

**Data.** Anything that satisfies [`BatchSource`][]: ``source(split, epoch)`` yields batches (the
[`Batch`][pkpd_jax.amortized.batches.Batch], or any object with the same array attributes) and
``source.n_batches(split)`` says how many. [`CorpusBatches`][] streams a corpus directory;
[`ArrayBatches`][] serves in-memory arrays (tests, notebooks).

**Checkpoints.** ``OUT/checkpoint.eqx`` holds the whole training state after the last finished
epoch (model, optimiser state, dropout key, epoch, step, history) and ``OUT/best.eqx`` the model
with the lowest validation loss so far. Each file is one JSON header line followed by the
equinox-serialised leaves, written to a temporary file and renamed, so an interruption loses at
most the epoch in progress. Training again with the same `out` resumes from the checkpoint and
gives bit-for-bit the parameters of an uninterrupted run: the batch order depends only on
``(seed, epoch)`` and the dropout key of step ``s`` is ``fold_in(key, s)``.
``OUT/metrics.jsonl`` gets one JSON line per epoch.
"""

from __future__ import annotations

import functools
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax

from ..errors import PkpdError
from ..nn import checkpoint
from ..progress import progress_display
from .encoder import ModelConfig, TransformerEncoder, apply_batch
from .presets import PRESETS as PRESETS, Preset as Preset, get_preset as get_preset
from .sources import (
    ArrayBatches as ArrayBatches,
    BatchSource as BatchSource,
    CorpusBatches as CorpusBatches,
    _arrays,
    _check_batch,
    _info_dict,
)


__all__ = [
    "Preset",
    "PRESETS",
    "get_preset",
    "BatchSource",
    "ArrayBatches",
    "CorpusBatches",
    "NonFiniteLossError",
    "TrainResult",
    "Checkpoint",
    "loss_terms",
    "make_optimizer",
    "make_steps",
    "train",
    "load_checkpoint",
    "CHECKPOINT_FILE",
    "BEST_FILE",
    "METRICS_FILE",
]

CHECKPOINT_FILE = "checkpoint.eqx"
BEST_FILE = "best.eqx"
METRICS_FILE = "metrics.jsonl"
_FORMAT = "pkpd_jax.amortized.checkpoint/1"


# ------------------------------------------------------------------------------------------- loss
def loss_terms(logits, params_pred, label, params, param_mask):
    """``(ce, mse, accuracy)`` of a batch, each a scalar.

    - `logits` ``[B, C]``, `params_pred` ``[B, C, P]`` (network outputs);
    - `label` ``[B]`` int, `params` ``[B, P]`` normalised log-parameters, `param_mask` ``[B, P]``.

    `mse` is the squared error of the true class's parameter row averaged over the ``True``
    entries of `param_mask` (0 when there are none). Absent entries are selected away with
    `jnp.where` before squaring, so even a NaN target or prediction there changes neither the
    value nor the gradient.
    """
    label = jnp.asarray(label)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, label).mean()
    pred = jnp.take_along_axis(params_pred, label[:, None, None], axis=1)[:, 0, :]
    present = jnp.asarray(param_mask, bool)
    diff = jnp.where(present, pred - jnp.where(present, params, 0.0), 0.0)
    n = jnp.sum(present)
    mse = jnp.sum(diff**2) / jnp.maximum(n, 1).astype(diff.dtype)
    acc = jnp.mean(jnp.argmax(logits, axis=-1) == label)
    return ce, mse, acc


def _loss(model, arrays, key, lam):
    times, values, mask, label, params, pmask = arrays
    logits, params_pred = apply_batch(model, times, values, mask, key=key)
    ce, mse, acc = loss_terms(logits, params_pred, label, params, pmask)
    return ce + lam * mse, (ce, mse, acc)


def _decay_mask(params):
    """Weight decay on matrices only: biases and layer-norm scales are left alone."""
    return jax.tree.map(lambda x: x.ndim >= 2, params)


def make_optimizer(preset: Preset, total_steps: int) -> tuple[optax.GradientTransformation, Callable]:
    """``(optimizer, schedule)``: clipping + AdamW with warm-up and cosine decay over `total_steps`."""
    total_steps = max(int(total_steps), 1)
    warmup = min(max(1, round(preset.warmup_frac * total_steps)), total_steps)
    schedule = optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=preset.lr, warmup_steps=warmup,
        decay_steps=max(total_steps, warmup + 1), end_value=preset.lr * preset.end_lr_frac,
    )
    optim = optax.chain(
        optax.clip_by_global_norm(preset.clip_norm),
        optax.adamw(schedule, weight_decay=preset.weight_decay, mask=_decay_mask),
    )
    return optim, schedule


@functools.lru_cache(maxsize=8)
def make_steps(preset: Preset, total_steps: int):
    """``(optimizer, schedule, train_step, eval_step)`` of a `total_steps` run with `preset`:
    ``train_step(model, opt_state, arrays, key) -> (model, opt_state, [loss, ce, mse, acc,
    grad_norm])`` and ``eval_step(model, arrays)`` (sums over the batch), both jitted. Cached, so
    that runs with the same preset and length share one compilation."""
    optim, schedule = make_optimizer(preset, total_steps)
    lam = preset.lam
    @eqx.filter_jit
    def train_step(model, opt_state, arrays, key):
        (loss, (ce, mse, acc)), grads = eqx.filter_value_and_grad(_loss, has_aux=True)(
            model, arrays, key, lam
        )
        updates, opt_state = optim.update(grads, opt_state, eqx.filter(model, eqx.is_inexact_array))
        model = eqx.apply_updates(model, updates)
        # The gradient norm too: a NaN gradient with a finite loss would poison the next step.
        return model, opt_state, jnp.stack([loss, ce, mse, acc, optax.global_norm(grads)])

    @eqx.filter_jit
    def eval_step(model, arrays):
        times, values, mask, label, params, pmask = arrays
        logits, params_pred = apply_batch(model, times, values, mask, inference=True)
        n = label.shape[0]
        ce, mse, acc = loss_terms(logits, params_pred, label, params, pmask)
        n_present = jnp.sum(pmask)
        # Sums, so that batches of different sizes combine exactly.
        return jnp.stack([ce * n, mse * jnp.maximum(n_present, 1), acc * n, n_present, n])

    return optim, schedule, train_step, eval_step


class NonFiniteLossError(PkpdError, ValueError):
    """The training loss became NaN or infinite; nothing of that step was saved."""


# ------------------------------------------------------------------------------------- checkpoints
@dataclass(frozen=True)
class Checkpoint:
    """A loaded checkpoint: the model (inference-ready), its config, the corpus info and header."""

    model: TransformerEncoder
    config: ModelConfig
    info: dict
    meta: dict

    @property
    def class_names(self) -> tuple[str, ...]:
        return tuple(self.info["class_names"])


def _read_header(path: Path) -> dict:
    return checkpoint.read_header(path, format=_FORMAT, what="pkpd_jax amortized checkpoint")


def _read_tree(path: Path, like: Any) -> Any:
    return checkpoint.load(path, like, format=_FORMAT, what="pkpd_jax amortized checkpoint")[1]


def _model_skeleton(config: ModelConfig) -> TransformerEncoder:
    return eqx.filter_eval_shape(TransformerEncoder, config, key=jr.PRNGKey(0))


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Load a trained model: `path` is a training output directory (its `best.eqx`, else its
    `checkpoint.eqx`) or one of those files."""
    path = Path(path)
    if path.is_dir():
        candidates = [path / BEST_FILE, path / CHECKPOINT_FILE]
        found = [p for p in candidates if p.is_file()]
        if not found:
            raise FileNotFoundError(f"no {BEST_FILE} or {CHECKPOINT_FILE} in {path}.")
        path = found[0]
    header = _read_header(path)
    config = ModelConfig.from_dict(header["model_config"])
    if header["kind"] == "model":
        model = _read_tree(path, _model_skeleton(config))
    else:
        preset = Preset(**header["train_config"]["preset"])
        optim, _ = make_optimizer(preset, header["train_config"]["total_steps"])

        def skeleton():
            model = TransformerEncoder(config, key=jr.PRNGKey(0))
            return model, optim.init(eqx.filter(model, eqx.is_inexact_array)), jr.PRNGKey(0)

        model, _, _ = _read_tree(path, eqx.filter_eval_shape(skeleton))
    return Checkpoint(model=model, config=config, info=header["info"], meta=header)


# ------------------------------------------------------------------------------------------- train
@dataclass
class TrainResult:
    """What [`train`][] returns: the final model, one record per epoch, and the output directory."""

    model: TransformerEncoder
    history: list[dict]
    out: Path | None
    config: ModelConfig
    info: dict


def _progress(enabled: bool):
    """The epoch bar with the running loss in its status column (None when disabled)."""
    return progress_display(enabled=enabled, status=True)


def _evaluate_split(eval_step, model, source, split: str, info: dict, lam: float) -> dict:
    tot = np.zeros(5)
    for i, batch in enumerate(source(split, 0)):
        if i == 0:
            _check_batch(batch, info, f"{split} batch 0")
        tot += np.asarray(eval_step(model, _arrays(batch)), float)
    ce_sum, se_sum, correct, n_present, n = tot
    if n == 0:
        return {}
    ce, mse = ce_sum / n, se_sum / max(n_present, 1.0)
    return {f"{split}_loss": ce + lam * mse, f"{split}_ce": ce, f"{split}_mse": mse,
            f"{split}_acc": correct / n}


def train(
    source: BatchSource,
    *,
    preset: str | Preset = "tiny",
    epochs: int,
    out: str | Path | None = None,
    seed: int = 0,
    resume: bool = True,
    val_split: str | None = "val",
    progress: bool = False,
    on_epoch_end: Callable[[dict], None] | None = None,
    log: Callable[[str], None] | None = None,
) -> TrainResult:
    """Train a [`TransformerEncoder`][] on the batches of `source`.

    **Arguments:**

    - `source`: a [`BatchSource`][] ([`CorpusBatches`][] for a corpus directory).
    - `preset`: a [`Preset`][] or the name of one in [`PRESETS`][].
    - `epochs`: total number of epochs (including those a resumed run has already done).
    - `out`: directory for checkpoints and `metrics.jsonl`; None keeps everything in memory.
    - `seed`: initialisation and dropout seed (the batch order is the source's).
    - `resume`: continue from `out/checkpoint.eqx` if there is one (its settings must match);
      False starts afresh and overwrites.
    - `val_split`: split evaluated after every epoch (None: none).
    - `progress`: show a progress bar per epoch.
    - `on_epoch_end`: called with each epoch's record after the checkpoint is written.
    - `log`: called with a one-line summary per epoch.

    **Returns:** a [`TrainResult`][].

    Raises [`NonFiniteLossError`][] (naming the epoch, step and batch) if the loss becomes NaN or
    infinite; the last checkpoint is then the one of the previous epoch.
    """
    preset = get_preset(preset)
    if not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be a positive int; got {epochs!r}.")
    info = _info_dict(source.info)
    for k in ("class_names", "n_features", "n_params"):
        if k not in info:
            raise ValueError(f"corpus info lacks {k!r}.")
    config = preset.model_config(int(info["n_features"]), len(info["class_names"]), int(info["n_params"]))
    steps_per_epoch = int(source.n_batches("train"))
    if steps_per_epoch < 1:
        raise ValueError(f"the training split has fewer examples than one batch "
                         f"({source.batch_size}); lower the batch size or grow the corpus.")
    total_steps = epochs * steps_per_epoch
    train_config = {"preset": preset.to_dict(), "epochs": epochs, "seed": int(seed),
                    "batch_size": int(source.batch_size), "steps_per_epoch": steps_per_epoch,
                    "total_steps": total_steps}
    optim, schedule, train_step, eval_step = make_steps(preset, total_steps)

    k_init, drop_key = jr.split(jr.PRNGKey(seed))
    model = TransformerEncoder(config, key=k_init)
    opt_state = optim.init(eqx.filter(model, eqx.is_inexact_array))
    start_epoch, step, best_val, history = 0, 0, math.inf, []

    out_dir = Path(out) if out is not None else None
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        ckpt = out_dir / CHECKPOINT_FILE
        if resume and ckpt.is_file():
            header = _read_header(ckpt)
            _check_resumable(header, config, train_config, info, ckpt)
            model, opt_state, drop_key = _read_tree(ckpt, (model, opt_state, drop_key))
            start_epoch, step = header["epoch"], header["step"]
            best_val, history = header["best_val_loss"], header["history"]
            if log is not None:
                log(f"resuming from {ckpt} after epoch {start_epoch} (step {step})")
        elif not resume:
            for name in (CHECKPOINT_FILE, BEST_FILE, METRICS_FILE):
                (out_dir / name).unlink(missing_ok=True)
        _truncate_metrics(out_dir / METRICS_FILE, start_epoch)

    bar = _progress(progress)
    if bar is not None:
        bar.start()
    try:
        for epoch in range(start_epoch, epochs):
            t0 = time.perf_counter()
            sums, n_steps, n_seen = np.zeros(5), 0, 0
            task = (bar.add_task(f"epoch {epoch + 1}/{epochs}", total=steps_per_epoch, status="")
                    if bar is not None else None)
            for i, batch in enumerate(source("train", epoch)):
                if i >= steps_per_epoch:
                    break
                if i == 0:
                    _check_batch(batch, info, f"train batch 0 of epoch {epoch + 1}")
                arrays = _arrays(batch)
                new_model, new_opt, stats = train_step(model, opt_state, arrays, jr.fold_in(drop_key, step))
                stats = np.asarray(stats, float)
                if not np.all(np.isfinite(stats)):
                    raise NonFiniteLossError(
                        f"non-finite training loss at epoch {epoch + 1}, step {step + 1} (batch {i} of the "
                        f"epoch): loss={stats[0]}, cross-entropy={stats[1]}, masked MSE={stats[2]}, "
                        f"gradient norm={stats[4]}. "
                        f"Nothing of this epoch was saved; check the corpus for non-finite values or "
                        f"lower the learning rate (preset lr {preset.lr})."
                    )
                model, opt_state = new_model, new_opt
                step += 1
                n_steps += 1
                n_seen += int(arrays[0].shape[0])
                sums += stats
                if bar is not None:
                    status = f"loss {sums[0] / n_steps:.4f} acc {sums[3] / n_steps:.3f}"
                    bar.update(task, advance=1, status=status)
            if bar is not None:
                bar.remove_task(task)
            if n_steps != steps_per_epoch:
                raise ValueError(f"epoch {epoch + 1} gave {n_steps} training batches, expected "
                                 f"{steps_per_epoch}; the source changed size during training.")
            train_time = time.perf_counter() - t0
            record = {"epoch": epoch + 1, "step": step, "lr": float(schedule(step)),
                      "train_loss": sums[0] / n_steps, "train_ce": sums[1] / n_steps,
                      "train_mse": sums[2] / n_steps, "train_acc": sums[3] / n_steps,
                      "train_grad_norm": sums[4] / n_steps,
                      "train_time_s": train_time, "trajectories_per_s": n_seen / train_time}
            if val_split is not None:
                record.update(_evaluate_split(eval_step, model, source, val_split, info, preset.lam))
            record = {k: (float(v) if isinstance(v, (np.floating, float)) else v) for k, v in record.items()}
            history.append(record)
            val_loss = record.get(f"{val_split}_loss", record["train_loss"])
            improved = val_loss < best_val
            best_val = min(best_val, val_loss)
            if out_dir is not None:
                _append_metrics(out_dir / METRICS_FILE, record)
                base = {"format": _FORMAT, "model_config": config.to_dict(), "train_config": train_config,
                        "info": info, "epoch": epoch + 1, "step": step, "best_val_loss": best_val}
                if improved:  # before the training state, so that a resume can never skip it
                    checkpoint.save(out_dir / BEST_FILE, {**base, "kind": "model"}, model)
                state = {**base, "kind": "train_state", "history": history}
                checkpoint.save(out_dir / CHECKPOINT_FILE, state, (model, opt_state, drop_key))
            if log is not None:
                log(_summary(record, epochs))
            if on_epoch_end is not None:
                on_epoch_end(record)
    finally:
        if bar is not None:
            bar.stop()
    return TrainResult(model=model, history=history, out=out_dir, config=config, info=info)


def _summary(record: dict, epochs: int) -> str:
    parts = [f"epoch {record['epoch']}/{epochs}", f"loss {record['train_loss']:.4f}",
             f"acc {record['train_acc']:.3f}"]
    if "val_loss" in record:
        parts += [f"val loss {record['val_loss']:.4f}", f"val acc {record['val_acc']:.3f}"]
    parts.append(f"{record['trajectories_per_s']:.0f} traj/s")
    return " | ".join(parts)


def _check_resumable(header: dict, config: ModelConfig, train_config: dict, info: dict, path: Path) -> None:
    diffs = []
    if header["model_config"] != config.to_dict():
        diffs.append(f"model {header['model_config']} vs {config.to_dict()}")
    for k, v in train_config.items():
        if header["train_config"].get(k) != v:
            diffs.append(f"{k} {header['train_config'].get(k)!r} vs {v!r}")
    if header["info"]["class_names"] != info["class_names"]:
        diffs.append("class names")
    if diffs:
        raise ValueError(f"{path} was written with other settings ({'; '.join(diffs)}), so it cannot be "
                         f"resumed exactly; use the same settings, another --out, or --no-resume.")


def _append_metrics(path: Path, record: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def _truncate_metrics(path: Path, last_epoch: int) -> None:
    """Drop metric lines of epochs after the checkpoint (written before an interruption)."""
    if not path.is_file():
        return
    lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
    keep = [ln for ln in lines if json.loads(ln).get("epoch", 0) <= last_epoch]
    if len(keep) != len(lines):
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("".join(ln + "\n" for ln in keep))
        os.replace(tmp, path)
