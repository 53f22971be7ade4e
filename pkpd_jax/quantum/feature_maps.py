"""Covariate encoding and quantum feature maps (PennyLane QNodes, JAX interface, ``default.qubit``).

**Encoding** ([`Encoding`][]). Covariates are standardised with the training mean and SD, except
binary (0/1) columns, which are kept as 0/1 and handled explicitly: a binary covariate gets its
own qubit, rotated by a fixed angle `binary_angle` (not by the bandwidth) when the flag is 1, so
that two subjects that differ only in that flag have a fixed, interpretable overlap
(``cos²(binary_angle/2)`` = 0.5 for the default π/2 in the angle map).

**Qubit layout.** Binary covariates take one qubit each; the remaining qubits are dealt out to the
continuous covariates in turn (with BW, COMED and 4 qubits: BW on qubits 0-2, COMED on qubit 3).
Each qubit ``q`` carries the angle ``a_q = bandwidth·z_j(q)`` (continuous) or
``binary_angle·b_j(q)`` (binary).

**Maps** ([`FeatureMap`][]):

- ``"angle"`` (the "RBF-inspired" map): ``RY(a_q)`` on every qubit (``qml.AngleEmbedding``,
  rotation Y). With one layer the state is a product state and the fidelity kernel is exactly
  ``Π_q cos²((a_q − a'_q)/2)``; a continuous covariate on ``m`` qubits contributes
  ``cos^{2m}(γΔz/2) ≈ exp(−mγ²Δz²/4)``, so the bandwidth γ plays the role of an inverse RBF
  length scale (and must be chosen: too large and the kernel concentrates on its diagonal).
  With ``layers > 1`` a ring of CNOTs separates repeated embeddings (data re-uploading), which
  entangles the qubits and removes the closed form.
- ``"iqp"``: ``qml.IQPEmbedding`` (Havlíček et al. 2019): Hadamards, ``RZ(a_q)`` and
  ``MultiRZ(a_q·a_r)`` (ZZ) on every pair, repeated `layers` times.

A map's QNode takes the per-qubit angles only; the bandwidth is applied outside it, so one
compiled function serves every bandwidth of a cross-validation grid.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


__all__ = ["Encoding", "FeatureMap", "MAP_KINDS"]

MAP_KINDS = ("angle", "iqp")
#: Largest register simulated as a statevector (2^n amplitudes per subject).
MAX_QUBITS = 14


@dataclass(frozen=True)
class Encoding:
    """Standardisation of the covariate columns `names` (fitted on the training table).

    `binary[j]` is True for a 0/1 column (kept as 0/1); `mean`/`scale` standardise the others.
    """

    names: tuple[str, ...]
    binary: tuple[bool, ...]
    mean: tuple[float, ...]
    scale: tuple[float, ...]

    @classmethod
    def fit(cls, X: np.ndarray, names: Sequence[str]) -> Encoding:
        X = np.asarray(X, float)
        if X.ndim != 2 or X.shape[1] != len(names):
            raise ValueError(f"covariates must be (N, {len(names)}) for {list(names)}; got {X.shape}.")
        if X.shape[0] < 2:
            raise ValueError(
                f"need at least 2 training subjects to standardise covariates; got {X.shape[0]}."
            )
        _check_finite(X, names)
        binary, mean, scale = [], [], []
        for j, name in enumerate(names):
            col = X[:, j]
            is_bin = bool(np.all((col == 0) | (col == 1)))
            sd = float(np.std(col))
            if sd == 0.0:
                raise ValueError(
                    f"covariate {name!r} has the same value ({col[0]:g}) for every training subject; "
                    "it carries no information - drop it from --features."
                )
            binary.append(is_bin)
            mean.append(0.0 if is_bin else float(np.mean(col)))
            scale.append(1.0 if is_bin else sd)
        return cls(tuple(names), tuple(binary), tuple(mean), tuple(scale))

    def transform(self, X: np.ndarray) -> np.ndarray:
        """Standardised covariates ``(N, d)``: z-scores, binary columns as 0/1."""
        X = self.check(X)
        return (X - np.asarray(self.mean)) / np.asarray(self.scale)

    def check(self, X: np.ndarray) -> np.ndarray:
        """`X` as a float array, after checking its shape, finiteness and the 0/1 columns."""
        X = np.asarray(X, float)
        if X.ndim != 2 or X.shape[1] != len(self.names):
            raise ValueError(
                f"covariates must be (N, {len(self.names)}) for {list(self.names)}; got {X.shape}."
            )
        _check_finite(X, self.names)
        for j, name in enumerate(self.names):
            if self.binary[j]:
                bad = np.flatnonzero((X[:, j] != 0) & (X[:, j] != 1))
                if bad.size:
                    raise ValueError(
                        f"row {bad[0] + 1}, column {name}: value {X[bad[0], j]:g} is not 0 or 1, but "
                        f"{name} is binary (0/1) in the training data."
                    )
        return X

    @property
    def n_binary(self) -> int:
        return sum(self.binary)

    def to_dict(self) -> dict:
        return {
            "names": list(self.names),
            "binary": list(self.binary),
            "mean": list(self.mean),
            "scale": list(self.scale),
        }


def _check_finite(X: np.ndarray, names) -> None:
    bad = np.argwhere(~np.isfinite(X))
    if bad.size:
        i, j = bad[0]
        raise ValueError(f"row {i + 1}, column {names[j]}: value {X[i, j]} is not a finite number.")


def qubit_layout(binary: Sequence[bool], n_qubits: int) -> tuple[int, ...]:
    """Feature index carried by each qubit: the continuous features share the first
    ``n_qubits − n_binary`` qubits in turn (copies of a feature on neighbouring wires), then one
    qubit per binary feature."""
    binary = list(binary)
    d = len(binary)
    cont = [j for j in range(d) if not binary[j]]
    bins = [j for j in range(d) if binary[j]]
    if n_qubits < d:
        raise ValueError(f"need at least one qubit per feature: {d} features but n_qubits={n_qubits}.")
    if n_qubits > MAX_QUBITS:
        raise ValueError(f"n_qubits={n_qubits} is above {MAX_QUBITS} (2^n amplitudes per subject).")
    if not cont:
        if n_qubits != d:
            raise ValueError(f"all {d} features are binary: n_qubits must be {d}, got {n_qubits}.")
        return tuple(bins)
    n_cont = n_qubits - len(bins)
    per = [cont[k % len(cont)] for k in range(n_cont)]
    # group the copies of one feature on neighbouring wires: BW, BW, BW, COMED
    per.sort(key=cont.index)
    return tuple(per + bins)


def default_qubits(binary: Sequence[bool]) -> int:
    """Default register: 3 qubits per continuous covariate plus 1 per binary one (at most 10)."""
    n_bin = sum(binary)
    return min(max(len(binary), 3 * (len(binary) - n_bin) + n_bin), 10)


@dataclass(frozen=True)
class FeatureMap:
    """A quantum feature map ``x -> |ψ(x)⟩`` over `n_qubits` qubits.

    **Arguments:**

    - `kind`: ``"angle"`` or ``"iqp"`` (see the module docstring).
    - `binary`: which features are 0/1 flags ([`Encoding.binary`][]).
    - `n_qubits`: register size (default [`default_qubits`][]).
    - `layers`: repetitions of the embedding (IQP ``n_repeats``; angle re-uploading with CNOTs).
    - `binary_angle`: rotation applied for a flag equal to 1.
    """

    kind: str
    binary: tuple[bool, ...]
    n_qubits: int
    layers: int = 1
    binary_angle: float = math.pi / 2

    def __post_init__(self):
        if self.kind not in MAP_KINDS:
            raise ValueError(f"feature map must be one of {MAP_KINDS}; got {self.kind!r}.")
        if self.layers < 1:
            raise ValueError(f"layers must be >= 1; got {self.layers}.")
        qubit_layout(self.binary, self.n_qubits)  # validates the register size

    @classmethod
    def create(
        cls,
        kind: str,
        binary: Sequence[bool],
        n_qubits: int | None = None,
        layers: int = 1,
        binary_angle: float = math.pi / 2,
    ) -> FeatureMap:
        binary = tuple(bool(b) for b in binary)
        n = default_qubits(binary) if n_qubits is None else int(n_qubits)
        return cls(kind, binary, n, int(layers), float(binary_angle))

    @property
    def layout(self) -> tuple[int, ...]:
        return qubit_layout(self.binary, self.n_qubits)

    @property
    def dim(self) -> int:
        return 2**self.n_qubits

    def angles(self, Z, bandwidth):
        """Per-qubit rotation angles ``(..., n_qubits)`` for standardised covariates `Z`."""
        import jax.numpy as jnp

        idx = np.asarray(self.layout)
        is_bin = np.asarray([self.binary[j] for j in idx])
        scale = jnp.where(jnp.asarray(is_bin), self.binary_angle, bandwidth)
        return jnp.asarray(Z)[..., idx] * scale

    def circuit(self, angles) -> None:
        """Apply the map's gates for per-qubit `angles` (a PennyLane quantum function)."""
        _apply(self.kind, self.n_qubits, self.layers, angles)

    def states(self, Z, bandwidth: float, *, batch: int = 4096) -> np.ndarray:
        """Statevectors ``(N, 2^n)`` (complex128 under x64), one circuit simulation per subject,
        jit-compiled and vmapped over batches of `batch` subjects."""
        import jax.numpy as jnp

        Z = np.asarray(Z, float)
        n = Z.shape[0]
        fn = _state_fn(self.kind, self.n_qubits, self.layers)
        ang = np.asarray(self.angles(Z, bandwidth))
        b = min(batch, _bucket(n))  # few distinct shapes: few compilations
        out = np.empty((n, self.dim), dtype=np.result_type(jnp.zeros(0).dtype, np.complex64))
        for s in range(0, n, b):
            chunk = ang[s : s + b]
            m = chunk.shape[0]
            if m < b:  # pad so that every call has the compiled shape
                chunk = np.concatenate([chunk, np.zeros((b - m, chunk.shape[1]))])
            out[s : s + m] = np.asarray(fn(jnp.asarray(chunk)))[:m]
        if not np.all(np.isfinite(out.view(float))):
            raise FloatingPointError("non-finite amplitudes in the simulated feature states")
        return out

    def overlap_circuit(self, jit: bool = True):
        """``f(angles_1, angles_2) -> |⟨ψ_2|ψ_1⟩|²`` by the inversion test: run ``U(x_1)`` then
        ``U(x_2)†`` and read the probability of ``|0…0⟩`` (one circuit per pair; jit-compiled
        unless `jit` is False)."""
        if jit:
            return _overlap_fn(self.kind, self.n_qubits, self.layers)
        return _overlap_qnode(self.kind, self.n_qubits, self.layers)


def _bucket(n: int) -> int:
    """Smallest power of two >= n (at least 32): padded batch sizes, so that calls with different
    numbers of subjects reuse a handful of compiled shapes."""
    return max(32, 1 << max(0, int(n) - 1).bit_length())


def _apply(kind: str, n_qubits: int, layers: int, angles) -> None:
    import pennylane as qml

    wires = list(range(n_qubits))
    if kind == "iqp":
        qml.IQPEmbedding(angles, wires=wires, n_repeats=layers)
        return
    for layer in range(layers):
        if layer > 0 and n_qubits > 1:
            for q in range(n_qubits if n_qubits > 2 else 1):
                qml.CNOT(wires=[q, (q + 1) % n_qubits])
        qml.AngleEmbedding(angles, wires=wires, rotation="Y")


@functools.lru_cache(maxsize=32)
def _state_fn(kind: str, n_qubits: int, layers: int):
    import jax
    import pennylane as qml

    dev = qml.device("default.qubit", wires=n_qubits)

    @qml.qnode(dev, interface="jax")
    def state(angles):
        _apply(kind, n_qubits, layers, angles)
        return qml.state()

    return jax.jit(jax.vmap(state))


@functools.lru_cache(maxsize=32)
def _overlap_qnode(kind: str, n_qubits: int, layers: int):
    import pennylane as qml

    dev = qml.device("default.qubit", wires=n_qubits)

    @qml.qnode(dev, interface="jax")
    def probs(a1, a2):
        _apply(kind, n_qubits, layers, a1)
        qml.adjoint(_apply)(kind, n_qubits, layers, a2)
        return qml.probs(wires=range(n_qubits))

    return lambda a1, a2: probs(a1, a2)[0]


@functools.lru_cache(maxsize=32)
def _overlap_fn(kind: str, n_qubits: int, layers: int):
    import jax

    return jax.jit(_overlap_qnode(kind, n_qubits, layers))
