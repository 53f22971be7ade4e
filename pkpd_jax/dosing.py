"""Dosing regimens as fixed-size, padded arrays.

A [`Regimen`][] holds one row per dose: start time (h), amount (mg), duration (h; 0 means
bolus, > 0 a zero-order infusion over ``[time, time + duration)``) and target compartment (0-based
state index, or ``-1`` for the model's own dose compartment). Regimens of different lengths are
padded with zero-amount doses so that a population stacks into one array and ``jax.vmap`` runs
over it; padding rows have no effect on a simulation.

Semantics used by the simulator (documented here once):

- a bolus at time ``t`` is applied *after* any observation recorded at ``t`` (pre-dose sample);
- an infusion adds ``amount / duration`` per hour to its compartment over ``[t, t + duration)``;
- a model with a lag time shifts every dose by ``tlag``; doses shifted past the simulation horizon
  are dropped.
"""

from __future__ import annotations

from collections.abc import Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int

from .errors import PkpdError


__all__ = [
    "Regimen",
    "DosingError",
    "stack_regimens",
    "event_grid",
    "stable_argsort",
    "inverse_permutation",
    "count_le",
]


class DosingError(PkpdError, ValueError):
    """A regimen that cannot be simulated (negative amount, bad string, mismatched lengths)."""


def _is_concrete(x) -> bool:
    try:
        np.asarray(x)
        return True
    except Exception:  # a tracer inside jit/vmap
        return False


class Regimen(eqx.Module):
    """Doses for one subject (shape ``(n_doses,)``) or a population (``(n_subjects, n_doses)``).

    **Arguments:**

    - `time`: dose start times in h.
    - `amount`: amounts in mg; 0 marks a padding row.
    - `duration`: infusion durations in h; 0 = bolus.
    - `cmt`: 0-based compartment index of the model state, or -1 for the model's dose compartment.
    """

    time: Float[Array, "*batch doses"] = eqx.field(converter=jnp.asarray)
    amount: Float[Array, "*batch doses"] = eqx.field(converter=jnp.asarray)
    duration: Float[Array, "*batch doses"] = eqx.field(converter=jnp.asarray)
    cmt: Int[Array, "*batch doses"] = eqx.field(converter=jnp.asarray)

    def __check_init__(self):
        shapes = {k: getattr(self, k).shape for k in ("time", "amount", "duration", "cmt")}
        if len(set(shapes.values())) != 1:
            raise DosingError(f"`Regimen` fields must have the same shape; got {shapes}.")
        if self.time.ndim == 0:
            raise DosingError("`Regimen` fields must be at least one-dimensional (doses).")
        # Value checks only where values are known (not under jit/vmap tracing).
        if all(_is_concrete(getattr(self, k)) for k in ("time", "amount", "duration")):
            t, a, d = (np.asarray(getattr(self, k)) for k in ("time", "amount", "duration"))
            for name, arr in (("time", t), ("amount", a), ("duration", d)):
                if not np.all(np.isfinite(arr)):
                    idx = np.argwhere(~np.isfinite(arr))[0].tolist()
                    raise DosingError(
                        f"`Regimen({name}=...)` must be finite; got {arr[tuple(idx)]} at "
                        f"index {idx}."
                    )
            for name, arr in (("amount", a), ("duration", d)):
                if np.any(arr < 0):
                    idx = np.argwhere(arr < 0)[0].tolist()
                    raise DosingError(
                        f"`Regimen({name}=...)` must be non-negative; got {arr[tuple(idx)]} at "
                        f"index {idx}."
                    )

    # ------------------------------------------------------------------ constructors
    @classmethod
    def make(
        cls,
        times: Sequence[float],
        amounts: Sequence[float],
        durations: Sequence[float] | None = None,
        cmts: Sequence[int] | None = None,
        *,
        size: int | None = None,
    ) -> Regimen:
        """Build one subject's regimen from lists, padded to `size` doses (default: no padding)."""
        t = np.asarray(times, dtype=float).reshape(-1)
        a = np.asarray(amounts, dtype=float).reshape(-1)
        if t.shape != a.shape:
            raise DosingError(
                f"`times` and `amounts` must have the same length; got {t.size} and {a.size}."
            )
        d = np.zeros_like(t) if durations is None else np.asarray(durations, float).reshape(-1)
        c = -np.ones(t.shape, int) if cmts is None else np.asarray(cmts, int).reshape(-1)
        if d.shape != t.shape or c.shape != t.shape:
            raise DosingError(
                f"`durations`/`cmts` must have one entry per dose ({t.size}); got "
                f"{d.size} and {c.size}."
            )
        n = t.size if size is None else size
        if n < t.size:
            raise DosingError(f"`size={size}` is smaller than the number of doses ({t.size}).")
        pad = n - t.size
        last = float(t.max()) if t.size else 0.0
        return cls(
            time=jnp.asarray(np.concatenate([t, np.full(pad, last)])),
            amount=jnp.asarray(np.concatenate([a, np.zeros(pad)])),
            duration=jnp.asarray(np.concatenate([d, np.zeros(pad)])),
            cmt=jnp.asarray(np.concatenate([c, -np.ones(pad, int)])),
        )

    @classmethod
    def repeated(
        cls,
        amount: float,
        interval: float,
        n_doses: int,
        *,
        start: float = 0.0,
        duration: float = 0.0,
        cmt: int = -1,
        size: int | None = None,
    ) -> Regimen:
        """`n_doses` doses of `amount` mg every `interval` h from `start` (e.g. once daily: 24)."""
        if n_doses < 1:
            raise DosingError(f"`n_doses` must be >= 1; got {n_doses}.")
        if interval <= 0 and n_doses > 1:
            raise DosingError(f"`interval` must be > 0 for repeated doses; got {interval}.")
        times = start + interval * np.arange(n_doses)
        return cls.make(
            times,
            np.full(n_doses, amount),
            np.full(n_doses, duration),
            np.full(n_doses, cmt),
            size=size,
        )

    @classmethod
    def parse(cls, text: str, *, size: int | None = None) -> Regimen:
        """Parse ``"AMT@TIME[:DUR],..."``, e.g. ``"100@0,100@24:2"`` (second dose a 2 h infusion)."""
        times, amounts, durs = [], [], []
        for k, item in enumerate(t.strip() for t in text.split(",")):
            if not item:
                continue
            try:
                amt_s, rest = item.split("@")
                time_s, dur_s = rest.split(":") if ":" in rest else (rest, "0")
                amounts.append(float(amt_s))
                times.append(float(time_s))
                durs.append(float(dur_s))
            except ValueError:
                raise DosingError(
                    f"dose {k + 1} ({item!r}) is not of the form AMT@TIME or AMT@TIME:DUR "
                    "(e.g. '100@0' or '100@24:2')."
                ) from None
        if not times:
            raise DosingError(f"no doses found in {text!r}; expected e.g. '100@0,100@24'.")
        return cls.make(times, amounts, durs, size=size)

    # ------------------------------------------------------------------ helpers
    @property
    def n_doses(self) -> int:
        return self.time.shape[-1]

    def pad_to(self, size: int) -> Regimen:
        """Pad with zero-amount rows (at the last dose time) to `size` doses."""
        pad = size - self.n_doses
        if pad < 0:
            raise DosingError(f"cannot pad {self.n_doses} doses down to {size}.")
        if pad == 0:
            return self
        last = jnp.max(self.time, axis=-1, keepdims=True)
        widths = [(0, 0)] * (self.time.ndim - 1) + [(0, pad)]
        fill = jnp.broadcast_to(last, self.time.shape[:-1] + (pad,))
        return Regimen(
            time=jnp.concatenate([self.time, fill], axis=-1),
            amount=jnp.pad(self.amount, widths),
            duration=jnp.pad(self.duration, widths),
            cmt=jnp.pad(self.cmt, widths, constant_values=-1),
        )

    def scaled(self, factor) -> Regimen:
        """The same schedule with every amount multiplied by `factor` (used in dose search)."""
        return Regimen(self.time, self.amount * factor, self.duration, self.cmt)

    # ------------------------------------------------------------------ host-side summaries
    # These read concrete values (numpy), for the stages that plan doses; not under jit.
    def subject(self, i: int) -> Regimen:
        """Subject `i` of a population regimen (shape ``(doses,)``)."""
        if self.time.ndim != 2:
            raise DosingError(
                f"`subject` needs a population regimen (2-D); this one has shape {self.time.shape}."
            )
        return Regimen(self.time[i], self.amount[i], self.duration[i], self.cmt[i])

    def real_doses(self) -> Regimen:
        """One subject's doses without the padding rows (amount 0), in their given order."""
        self._one_subject("real_doses")
        real = np.asarray(self.amount) > 0
        fields = ("time", "amount", "duration", "cmt")
        return Regimen(*(jnp.asarray(np.asarray(getattr(self, k))[real]) for k in fields))

    def median_duration(self) -> float:
        """The median infusion duration (h) of the real doses (all subjects); 0 for boluses or
        no doses (0 also means "the model's default duration" in a simulation)."""
        real = np.asarray(self.amount) > 0
        return float(np.median(np.asarray(self.duration)[real])) if real.any() else 0.0

    def interval(self) -> float | None:
        """The dosing interval (h) of one subject: the median gap between consecutive real doses
        (the interval of a regular regimen), or None with fewer than two doses."""
        t = np.sort(np.asarray(self.real_doses().time))
        return float(np.median(np.diff(t))) if t.size > 1 else None

    def continued(
        self,
        n: int | None = None,
        tau: float | None = None,
        *,
        until: float | None = None,
        amount: float | None = None,
        start: float | None = None,
        duration: float | None = None,
        cmt: int = -1,
    ) -> Regimen:
        """One subject's real doses followed by more doses every `tau` h (no padding).

        **Arguments:**

        - `n`: how many doses to add; or `until`: add the doses that start before `until` h
          (exactly one of the two).
        - `tau`: the interval (default: [`interval`][], which needs two doses).
        - `amount`: mg per new dose (default: the last dose's amount).
        - `start`: the first new dose's time (default: the last dose + `tau`, or 0 with no doses).
        - `duration`: of each new dose (default: [`median_duration`][]); `cmt`: its compartment
          (default -1, the model's dose compartment).

        **Returns:** a [`Regimen`][] (shape ``(doses,)``); with ``until`` before `start`, the
        real doses alone.
        """
        if (n is None) == (until is None):
            raise DosingError("`continued` needs exactly one of `n` (doses to add) and `until` (h).")
        past = self.real_doses()
        t_past, amt_past = np.asarray(past.time), np.asarray(past.amount)
        tau = self.interval() if tau is None else float(tau)
        if tau is None or not tau > 0:
            raise DosingError(
                f"`continued` needs an interval `tau` > 0; got {tau} (pass `tau` for a regimen "
                "with fewer than two doses)."
            )
        if start is None:
            start = float(t_past.max()) + tau if t_past.size else 0.0
        if amount is None:
            if not amt_past.size:
                raise DosingError("`continued` of a regimen without doses needs `amount`.")
            amount = float(amt_past[-1])
        dur = self.median_duration() if duration is None else float(duration)
        if n is not None:
            if n < 0:
                raise DosingError(f"`n` must be >= 0; got {n}.")
            t_new = start + tau * np.arange(n)
        else:
            t_new = np.arange(start, until, tau)
        k = t_new.size
        return Regimen.make(
            np.concatenate([t_past, t_new]),
            np.concatenate([amt_past, np.full(k, float(amount))]),
            np.concatenate([np.asarray(past.duration), np.full(k, dur)]),
            np.concatenate([np.asarray(past.cmt), np.full(k, int(cmt))]),
        )

    def _one_subject(self, what: str) -> None:
        if self.time.ndim != 1:
            raise DosingError(
                f"`{what}` needs one subject's regimen (1-D); this one has shape {self.time.shape} "
                "(use `.subject(i)`)."
            )


def stack_regimens(regimens: Sequence[Regimen]) -> Regimen:
    """Stack per-subject regimens into a population regimen, padding to the longest."""
    if not regimens:
        raise DosingError("`stack_regimens` needs at least one regimen.")
    size = max(r.n_doses for r in regimens)
    padded = [r.pad_to(size) for r in regimens]
    return Regimen(
        time=jnp.stack([r.time for r in padded]),
        amount=jnp.stack([r.amount for r in padded]),
        duration=jnp.stack([r.duration for r in padded]),
        cmt=jnp.stack([r.cmt for r in padded]),
    )


# ---------------------------------------------------------------------------- event grid
def stable_argsort(x):
    """Stable argsort of a short vector by counting comparisons.

    Grids here hold tens of points; under `vmap` on CPU, XLA's sort is far slower than this
    O(n²) elementwise count (which fuses into one loop). Ties keep their input order.
    """
    n = x.shape[0]
    idx = jnp.arange(n)
    before = (x[None, :] < x[:, None]) | ((x[None, :] == x[:, None]) & (idx[None, :] < idx[:, None]))
    rank = jnp.sum(before, axis=1)
    return jnp.zeros(n, idx.dtype).at[rank].set(idx, unique_indices=True)


def inverse_permutation(perm):
    """The inverse of a permutation vector."""
    return jnp.zeros_like(perm).at[perm].set(jnp.arange(perm.shape[0]), unique_indices=True)


def count_le(sorted_points, x):
    """``searchsorted(sorted_points, x, side="right")`` as an elementwise count."""
    return jnp.sum(sorted_points[None, :] <= x[:, None], axis=1)


def event_grid(model, theta, regimen: Regimen, t_begin, horizon):
    """The one encoding of a regimen as events, consumed by every engine (one subject).

    **Arguments:** `model` (a `PKPDModel`: states, lag time, dose compartment and default
    infusion duration), `theta` (its parameters), `regimen` (padded; zero-amount doses are
    padding), `t_begin` and `horizon` (doses outside ``[t_begin, horizon]`` are ignored).

    **Returns:** ``(bounds, kicks, rates)``: `bounds` (2·doses + 2,) the sorted segment
    boundaries from `t_begin` to `horizon` (each dose contributes its start, shifted by the lag
    time, and its infusion end; unused events sit at the horizon as zero-length segments);
    `kicks` (2·doses + 1, states) the bolus applied at each segment start; `rates`
    (2·doses + 1, states) the zero-order input during each segment. Segments never straddle an
    event, so an infusion is on for a whole segment or not at all. A dose's compartment is
    `regimen.cmt`, or the model's dose compartment where `cmt < 0`; its duration is
    `regimen.duration`, or the model's default where it is 0 (an infusion model).
    """
    n = model.n_states
    dtype = theta.dtype
    start = regimen.time.astype(dtype) + model.lag_time(theta)
    dur = jnp.where(regimen.duration > 0, regimen.duration, model.pk.default_duration).astype(dtype)
    real = (regimen.amount > 0) & (start >= t_begin) & (start <= horizon)
    amt = jnp.where(real, regimen.amount, 0.0).astype(dtype)
    cmt = jnp.where(regimen.cmt < 0, model.pk.dose_cmt, regimen.cmt)
    onehot = jax.nn.one_hot(cmt, n, dtype=dtype)
    is_inf = dur > 0
    zeros = jnp.zeros_like(amt)

    # Events: one start and one end per dose; unused events sit at the horizon (zero-length).
    ev_start = jnp.where(real, start, horizon)
    ev_end = jnp.where(real & is_inf, jnp.minimum(start + dur, horizon), horizon)
    ev_time = jnp.concatenate([ev_start, ev_end])
    bolus = jnp.where(is_inf, zeros, amt)[:, None] * onehot
    ev_bolus = jnp.concatenate([bolus, jnp.zeros_like(bolus)])
    order = stable_argsort(ev_time)
    bounds = jnp.concatenate([t_begin[None], ev_time[order], horizon[None]])
    kicks = jnp.concatenate([jnp.zeros((1, n), dtype), ev_bolus[order]])

    # Segments never straddle an event, so an infusion is on for a whole segment or not at all.
    inf_rate = jnp.where(is_inf, amt / jnp.where(is_inf, dur, 1.0), 0.0)
    seg_start = bounds[:-1]
    active = (start[None, :] <= seg_start[:, None]) & (seg_start[:, None] < (start + dur)[None, :])
    rates = (active * inf_rate[None, :]) @ onehot
    return bounds, kicks, rates
