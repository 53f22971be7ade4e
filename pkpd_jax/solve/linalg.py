"""Small dense linear algebra for the exact (matrix-exponential) engines: [`expm_small`][] and
[`affine_propagator`][].

The one home of the small-matrix exponential (a handful of compartments, batched over subjects
and time steps), where `jax.scipy.linalg.expm` would compile every Padé degree it may pick.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float


__all__ = ["affine_propagator", "expm_small"]


def expm_small(A: Float[Array, "n n"], order: int = 14) -> Float[Array, "n n"]:
    """Matrix exponential of a small matrix: scaling and squaring with a Taylor polynomial.

    ``‖A/2^s‖₁ ≤ 1/2`` and order 14 bound the truncation error by ``0.5^15/15! < 3e-17``
    (relative). It agrees with `jax.scipy.linalg.expm` to ~1e-14 (tests) and compiles in a
    fraction of the time (that one compiles every Padé degree it may pick).

    **Arguments:** `A` (a square matrix; `vmap` for a batch), `order` (Taylor degree).

    **Returns:** ``exp(A)``, same shape and dtype.
    """
    n = A.shape[0]
    norm = jnp.max(jnp.sum(jnp.abs(A), axis=0))
    s = jnp.clip(jnp.ceil(jnp.log2(jnp.maximum(norm, 1e-300) / 0.5)), 0, 60).astype(jnp.int32)
    X = A / (2.0 ** s.astype(A.dtype))
    eye = jnp.eye(n, dtype=A.dtype)
    E = eye
    for k in range(order, 0, -1):  # Horner: I + X/1 (I + X/2 (I + ...))
        E = eye + _mm(X, E) / k
    return jax.lax.fori_loop(0, s, lambda _, M: _mm(M, M), E)


def _mm(A, B):
    # tiny matrices: a broadcast product fuses into one loop (a `dot` per product compiles slowly)
    return jnp.sum(A[:, :, None] * B[None, :, :], axis=1)


def affine_propagator(
    K: Float[Array, "n n"], u: Float[Array, " n"], dt: Float[Array, ""]
) -> Float[Array, "n+1 n+1"]:
    """The exact flow of ``dA/dt = K·A + u`` over `dt`, as one matrix.

    ``E = expm([[K, u], [0, 0]]·dt)`` (by [`expm_small`][]), so that ``A(dt) = E[:n, :n]·A(0) +
    E[:n, n]``: the propagator ``e^{K dt}`` and the input's contribution ``∫₀^dt e^{Ks} ds·u``.

    **Arguments:** `K` (the generator, e.g. `PKPDModel.pk_generator`), `u` (a constant input
    rate), `dt` (the time step).

    **Returns:** `E`, ``(n + 1, n + 1)``.
    """
    n = K.shape[0]
    m = jnp.zeros((n + 1, n + 1), K.dtype).at[:n, :n].set(K).at[:n, n].set(u)
    return expm_small(m * dt)
