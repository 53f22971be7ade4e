"""Kernels over standardised covariates: quantum fidelity and projected kernels, and classical ones.

**Fidelity kernel from states.** ``K_ij = |⟨ψ(x_i)|ψ(x_j)⟩|²``. The reference approach builds
one inversion-test circuit per pair (``N²`` circuit simulations, see
[`circuit_by_circuit_kernel`][]). Here the ``N`` statevectors are simulated once (``O(N)``
circuits, [`FeatureMap.states`][pkpd_jax.quantum.feature_maps.FeatureMap.states]) and the kernel is
the squared modulus of their Gram matrix ``S_A S_Bᴴ``, formed block by block
([`fidelity_gram`][]): only one ``block × block`` complex tile is alive at a time, so memory is the
output matrix itself (N = 20,000: 3.2 GB in float64) and a symmetric kernel computes only the
upper blocks and mirrors them (exactly symmetric).

**Kernels** (each has ``represent(Z, **hyper)`` and ``gram(R_a, R_b=None)``; the hyper-parameters
are what cross-validation searches):

- [`FidelityKernel`][] (``"angle"``, ``"iqp"``): hyper ``bandwidth``;
- [`ProjectedKernel`][] (``"projected"``, Huang et al. 2021): the one-qubit reduced density
  matrices of the angle-map states, ``K = exp(−γ Σ_q ‖ρ_q(x) − ρ_q(x')‖_F²)``; hyper
  ``bandwidth`` (of the map) and ``gamma``;
- [`RBFKernel`][] (``"rbf"``): ``exp(−‖z − z'‖²/(2ℓ²))``, hyper ``lengthscale``;
- [`LinearKernel`][] (``"linear"``): ``1 + z·z'`` (ridge regression on the standardised
  covariates; no hyper-parameters).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import numpy as np

from .feature_maps import FeatureMap, _bucket


__all__ = [
    "KERNELS",
    "FidelityKernel",
    "ProjectedKernel",
    "RBFKernel",
    "LinearKernel",
    "make_kernel",
    "fidelity_gram",
    "gaussian_gram",
    "bloch_vectors",
    "density_features",
    "circuit_by_circuit_kernel",
    "product_of_cosines",
]

KERNELS = ("angle", "iqp", "projected", "rbf", "linear")
DEFAULT_BLOCK = 2048


# ============================================================================ block products
@functools.lru_cache(maxsize=8)
def _tile_fn(kind: str):
    import jax
    import jax.numpy as jnp

    if kind == "fidelity":

        def tile(a, b, _):
            g = a @ jnp.conj(b).T
            return g.real**2 + g.imag**2

    else:  # gaussian on real features; third argument: gamma

        def tile(a, b, gamma):
            d2 = jnp.sum(a**2, 1)[:, None] + jnp.sum(b**2, 1)[None, :] - 2.0 * (a @ b.T)
            return jnp.exp(-gamma * jnp.maximum(d2, 0.0))

    return jax.jit(tile)


def _pad_rows(x: np.ndarray, n: int) -> np.ndarray:
    if x.shape[0] == n:
        return x
    return np.concatenate([x, np.zeros((n - x.shape[0],) + x.shape[1:], x.dtype)])


def _blocked(kind: str, A: np.ndarray, B: np.ndarray | None, param: float, block: int, dtype) -> np.ndarray:
    import jax.numpy as jnp

    sym = B is None
    B = A if sym else B
    na, nb = A.shape[0], B.shape[0]
    out = np.empty((na, nb), dtype=dtype)
    if na == 0 or nb == 0:
        return out
    fn = _tile_fn(kind)
    ba, bb = min(block, _bucket(na)), min(block, _bucket(nb))
    for i in range(0, na, ba):
        a = jnp.asarray(_pad_rows(A[i : i + ba], ba))
        ia = min(ba, na - i)
        for j in range(i if sym else 0, nb, bb):
            jb = min(bb, nb - j)
            t = np.asarray(fn(a, jnp.asarray(_pad_rows(B[j : j + bb], bb)), param))[:ia, :jb]
            out[i : i + ia, j : j + jb] = t
            if sym and j != i:
                out[j : j + jb, i : i + ia] = t.T
    if not np.all(np.isfinite(out)):
        raise FloatingPointError(f"non-finite entries in the {kind} kernel matrix")
    return out


def fidelity_gram(
    SA: np.ndarray, SB: np.ndarray | None = None, *, block: int = DEFAULT_BLOCK, dtype=np.float64
) -> np.ndarray:
    """``|S_A S_Bᴴ|²`` for statevectors `SA` ``(N, D)`` and `SB` ``(M, D)`` (default `SA`,
    symmetric), in ``block × block`` tiles. Returns ``(N, M)`` numpy array of `dtype`."""
    SA = np.asarray(SA)
    SB = None if SB is None else np.asarray(SB)
    if SB is not None and SB.shape[1] != SA.shape[1]:
        raise ValueError(f"state dimensions differ: {SA.shape} vs {SB.shape}")
    return _blocked("fidelity", SA, SB, 0.0, block, dtype)


def gaussian_gram(
    FA: np.ndarray,
    FB: np.ndarray | None = None,
    gamma: float = 1.0,
    *,
    block: int = DEFAULT_BLOCK,
    dtype=np.float64,
) -> np.ndarray:
    """``exp(−γ ‖f_a − f_b‖²)`` for real feature rows, in tiles (default `FB` = `FA`)."""
    FA = np.asarray(FA, float)
    FB = None if FB is None else np.asarray(FB, float)
    return _blocked("gaussian", FA, FB, float(gamma), block, dtype)


# ============================================================================ analytic / reference
def product_of_cosines(angles_a: np.ndarray, angles_b: np.ndarray) -> np.ndarray:
    """Closed-form fidelity kernel of a one-layer angle embedding (product state):
    ``K_ij = Π_q cos²((a_iq − b_jq)/2)`` for per-qubit angles ``(N, n)`` and ``(M, n)``."""
    a = np.asarray(angles_a, float)[:, None, :]
    b = np.asarray(angles_b, float)[None, :, :]
    return np.prod(np.cos((a - b) / 2.0) ** 2, axis=-1)


def circuit_by_circuit_kernel(
    fmap: FeatureMap, Z: np.ndarray, bandwidth: float, *, Z2: np.ndarray | None = None, batched: bool = False
) -> np.ndarray:
    """The reference computation: one inversion-test circuit per pair (``U(x_j)† U(x_i)|0⟩``,
    probability of ``|0…0⟩``). Symmetric case: the ``N(N+1)/2`` upper pairs, mirrored.

    `batched=False` calls the jit-compiled QNode once per pair from Python (as a study that
    "evaluates the kernel circuit by circuit" does); `batched=True` vmaps the same ``N²``-pair
    circuits in one call (no Python overhead; still one circuit per pair)."""
    import jax
    import jax.numpy as jnp

    fn = fmap.overlap_circuit()
    a = np.asarray(fmap.angles(np.asarray(Z, float), bandwidth))
    sym = Z2 is None
    b = a if sym else np.asarray(fmap.angles(np.asarray(Z2, float), bandwidth))
    n, m = a.shape[0], b.shape[0]
    pairs = [(i, j) for i in range(n) for j in (range(i, m) if sym else range(m))]
    K = np.empty((n, m))
    if batched:
        ii = np.array([p[0] for p in pairs])
        jj = np.array([p[1] for p in pairs])
        vals = np.asarray(jax.jit(jax.vmap(fn))(jnp.asarray(a[ii]), jnp.asarray(b[jj])))
    else:
        aj, bj = jnp.asarray(a), jnp.asarray(b)
        vals = np.array([float(fn(aj[i], bj[j])) for i, j in pairs])
    for (i, j), v in zip(pairs, vals):
        K[i, j] = v
        if sym:
            K[j, i] = v
    return K


def density_features(S: np.ndarray) -> np.ndarray:
    """Real features ``Φ`` ``(N, 4^n)`` of the density matrices ``ρ = |ψ⟩⟨ψ|`` with
    ``Φ(x)·Φ(x') = Tr(ρ ρ') = |⟨ψ|ψ'⟩|²``: the diagonal ``ρ_aa`` and ``√2·Re ρ_ab``, ``√2·Im ρ_ab``
    for ``a < b``. The fidelity kernel is exactly ``Φ Φᵀ``, so its rank is at most ``4^n``."""
    S = np.asarray(S)
    D = S.shape[1]
    iu, ju = np.triu_indices(D, 1)
    rho_off = S[:, iu] * np.conj(S[:, ju])
    out = np.concatenate([np.abs(S) ** 2, math.sqrt(2.0) * rho_off.real, math.sqrt(2.0) * rho_off.imag], 1)
    return np.ascontiguousarray(out)


def bloch_vectors(S: np.ndarray) -> np.ndarray:
    """One-qubit Bloch vectors ``(N, 3n)`` (⟨X⟩, ⟨Y⟩, ⟨Z⟩ of each qubit) of statevectors ``(N, 2^n)``
    (wire 0 is the most significant bit, as in PennyLane)."""
    S = np.asarray(S)
    N, D = S.shape
    n = int(round(math.log2(D)))
    out = np.empty((N, 3 * n))
    for q in range(n):
        psi = S.reshape(N, 2**q, 2, 2 ** (n - q - 1))
        rho00 = np.sum(np.abs(psi[:, :, 0, :]) ** 2, axis=(1, 2))
        rho11 = np.sum(np.abs(psi[:, :, 1, :]) ** 2, axis=(1, 2))
        rho01 = np.sum(psi[:, :, 0, :] * np.conj(psi[:, :, 1, :]), axis=(1, 2))
        out[:, 3 * q] = 2.0 * rho01.real
        out[:, 3 * q + 1] = -2.0 * rho01.imag
        out[:, 3 * q + 2] = rho00 - rho11
    return out


# ============================================================================ kernels
class FidelityKernel:
    """Fidelity kernel ``|⟨ψ(x)|ψ(x')⟩|²`` of a [`FeatureMap`][] (hyper-parameter: ``bandwidth``)."""

    quantum = True
    hyper_names = ("bandwidth",)

    def __init__(self, fmap: FeatureMap, *, block: int = DEFAULT_BLOCK):
        self.fmap = fmap
        self.name = fmap.kind
        self.block = block

    def grid(self) -> list[dict]:
        return [{"bandwidth": float(b)} for b in np.geomspace(0.01, 2.0, 7)]

    def represent(self, Z, *, bandwidth: float) -> np.ndarray:
        return self.fmap.states(Z, bandwidth)

    def gram(self, RA, RB=None, **_) -> np.ndarray:
        return fidelity_gram(RA, RB, block=self.block)

    def primal_dim(self, n_features: int) -> int | None:
        """Dimension of the explicit feature map ([`density_features`][]): ``4^n``."""
        return 4**self.fmap.n_qubits

    def features(self, R) -> np.ndarray:
        return density_features(R)

    def describe(self) -> dict:
        return {
            "map": self.fmap.kind,
            "n_qubits": self.fmap.n_qubits,
            "layers": self.fmap.layers,
            "binary_angle": self.fmap.binary_angle,
            "layout": list(self.fmap.layout),
        }


class ProjectedKernel(FidelityKernel):
    """Projected quantum kernel on one-qubit reduced density matrices (hyper: ``bandwidth`` of
    the map, ``gamma``). ``‖ρ − ρ'‖_F² = ½‖b − b'‖²`` for Bloch vectors ``b``."""

    hyper_names = ("bandwidth", "gamma")

    def __init__(self, fmap: FeatureMap, *, block: int = DEFAULT_BLOCK):
        super().__init__(fmap, block=block)
        self.name = "projected"

    def grid(self) -> list[dict]:
        return [
            {"bandwidth": float(b), "gamma": float(g)} for b in np.geomspace(0.05, 2.0, 4) for g in (0.1, 1.0)
        ]

    def represent(self, Z, *, bandwidth: float, gamma: float = 1.0) -> np.ndarray:
        return bloch_vectors(self.fmap.states(Z, bandwidth))

    def gram(self, RA, RB=None, *, gamma: float = 1.0, **_) -> np.ndarray:
        return gaussian_gram(RA, RB, 0.5 * gamma, block=self.block)

    def primal_dim(self, n_features: int) -> None:
        return None  # a Gaussian of the Bloch vectors: no finite feature map


class RBFKernel:
    """Classical Gaussian kernel on standardised covariates (hyper: ``lengthscale``)."""

    quantum = False
    name = "rbf"
    hyper_names = ("lengthscale",)

    def __init__(self, *, block: int = DEFAULT_BLOCK):
        self.block = block

    def grid(self) -> list[dict]:
        return [{"lengthscale": float(s)} for s in np.geomspace(0.5, 64.0, 7)]

    def represent(self, Z, *, lengthscale: float) -> np.ndarray:
        return np.asarray(Z, float)

    def gram(self, RA, RB=None, *, lengthscale: float = 1.0, **_) -> np.ndarray:
        return gaussian_gram(RA, RB, 0.5 / lengthscale**2, block=self.block)

    def primal_dim(self, n_features: int) -> None:
        return None

    def describe(self) -> dict:
        return {}


class LinearKernel:
    """``1 + z·z'`` on standardised covariates (kernel ridge = ridge regression)."""

    quantum = False
    name = "linear"
    hyper_names = ()

    def grid(self) -> list[dict]:
        return [{}]

    def represent(self, Z) -> np.ndarray:
        return np.asarray(Z, float)

    def gram(self, RA, RB=None, **_) -> np.ndarray:
        RB = RA if RB is None else RB
        return 1.0 + RA @ RB.T

    def primal_dim(self, n_features: int) -> int:
        return n_features + 1

    def features(self, R) -> np.ndarray:
        R = np.asarray(R, float)
        return np.concatenate([np.ones((R.shape[0], 1)), R], 1)

    def describe(self) -> dict:
        return {}


def make_kernel(
    name: str,
    binary: Sequence[bool],
    *,
    n_qubits: int | None = None,
    layers: int = 1,
    binary_angle: float = math.pi / 2,
    block: int = DEFAULT_BLOCK,
):
    """Kernel `name` (one of [`KERNELS`][]) for features with the given `binary` flags."""
    if name not in KERNELS:
        raise ValueError(f"unknown kernel {name!r}; choose one of {', '.join(KERNELS)}.")
    if name in ("angle", "iqp"):
        return FidelityKernel(FeatureMap.create(name, binary, n_qubits, layers, binary_angle), block=block)
    if name == "projected":
        return ProjectedKernel(
            FeatureMap.create("angle", binary, n_qubits, layers, binary_angle), block=block
        )
    if name == "rbf":
        return RBFKernel(block=block)
    return LinearKernel()
