"""Multi-output kernel regression of log-parameters on covariates, with cross-validated hyper-parameters.

[`KernelRegressor`][] fits either

- ``method="krr"``: kernel ridge regression in JAX (targets standardised, each with its own ridge
  ``λ``). Two exact solvers: *dual*, ``α = (K + λI)⁻¹ y`` by Cholesky of the ``N × N`` kernel (one
  factorisation per distinct ``λ``); *primal*, for kernels with a small explicit feature map
  ``K = Φ Φᵀ`` (the fidelity kernel of ``n`` qubits: ``Φ`` = the ``4^n`` real coordinates of
  ``|ψ⟩⟨ψ|``; the linear kernel), ``w = (ΦᵀΦ + λI)⁻¹ Φᵀ y`` from one eigendecomposition of the
  ``D × D`` matrix ``ΦᵀΦ``, ``O(N D²)`` instead of ``O(N³)``. ``solver="auto"`` takes the primal
  path when ``D ≤ 1024`` (up to 5 qubits) and ``D < N``; the predictions agree to rounding.
- ``method="svr"``: ε-insensitive support-vector regression on the precomputed kernel
  (scikit-learn ``SVR(kernel="precomputed")``), one per target.

**Cross-validation** (same protocol for every kernel, quantum or classical). On a random subset of
``cv_subset`` training subjects (all of them when fewer):

- kernel ridge: for every kernel hyper-parameter on the kernel's grid (bandwidth, RBF length
  scale, ...) the exact leave-one-out error, ``e_i = α_i / [(K + λI)⁻¹]_ii``, is evaluated from one
  eigendecomposition for the whole ridge grid and every target at once (the constant predictor,
  ``λ = ∞``, is a candidate too). The kernel hyper-parameter with the smallest LOO error (mean over
  targets, standardised scale) wins; each target keeps its own best ``λ``. The final model is
  fitted on all training subjects with the same ``λ`` (the penalty of ``‖y − f‖² + λ‖f‖²_H`` is
  not rescaled with N: for these smooth, low-rank kernels the effective number of parameters is
  what should stay put);
- SVR: 3-fold CV over kernel hyper-parameter × ``C`` × ``ε`` on at most ``SVR_CV_MAX`` subjects
  of that subset; the kernel hyper-parameter is shared by the targets (one kernel matrix), ``C``
  and ``ε`` are per target. (The kernel ridge's choice does not transfer: its optimum is often a
  very flat kernel with a tiny ridge, which SVR's box constraint ``|α_i| ≤ C`` cannot follow.)

Hyper-parameters on the edge of their grid are reported in ``info["warnings"]``.

[`CovariateEquation`][] is the population model's own covariate model as a baseline: per target,
ordinary least squares of ``log θ`` on ``1``, ``log x`` (continuous, positive covariates: power
effects) and ``x`` (0/1 covariates: factor effects).
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Mapping, Sequence

import numpy as np

from .feature_maps import Encoding
from .kernel import KERNELS, make_kernel


__all__ = ["KernelRegressor", "CovariateEquation", "make_regressor", "loo_errors", "METHODS"]

METHODS = ("krr", "svr")
RIDGE_GRID = tuple(float(x) for x in np.geomspace(1e-6, 1e4, 21))
SVR_C_GRID = (1.0, 10.0, 100.0, 1000.0)
SVR_EPS_GRID = (0.2, 0.6)
#: Subjects used by the SVR grid search (its cost grows ~quadratically with them).
SVR_CV_MAX = 1000
#: Largest explicit feature dimension used by the primal kernel-ridge path (4^5 = 1024: 5 qubits).
MAX_PRIMAL_DIM = 1024


def loo_errors(K: np.ndarray, Y: np.ndarray, ridges: Sequence[float]) -> np.ndarray:
    """Exact leave-one-out mean squared errors of kernel ridge, ``(len(ridges), P)``.

    One eigendecomposition ``K = U diag(w) Uᵀ``; for each ``λ``: ``α = U diag(1/(w+λ)) Uᵀ y``,
    ``[(K+λI)⁻¹]_ii = Σ_k U_ik²/(w_k+λ)`` and the LOO residual is ``α_i / [(K+λI)⁻¹]_ii``."""
    import jax.numpy as jnp

    out = np.asarray(_loo_fns()[0](jnp.asarray(K), jnp.asarray(Y), jnp.asarray(ridges, float)))
    if not np.all(np.isfinite(out)):
        raise FloatingPointError("non-finite leave-one-out errors (ill-conditioned kernel)")
    return out


def loo_errors_primal(Phi: np.ndarray, Y: np.ndarray, ridges: Sequence[float]) -> np.ndarray:
    """Same as [`loo_errors`][] for ``K = Φ Φᵀ`` with an explicit feature matrix ``Φ`` ``(n, D)``:
    ``Φᵀ Φ = V diag(s) Vᵀ``, ``P = Φ V``, fitted values ``P diag(1/(s+λ)) Pᵀ y``, leverages
    ``h_i = Σ_k P_ik²/(s_k+λ)`` and LOO residuals ``(y_i − ŷ_i)/(1 − h_i)``; ``O(n D²)``."""
    import jax.numpy as jnp

    out = np.asarray(_loo_fns()[1](jnp.asarray(Phi), jnp.asarray(Y), jnp.asarray(ridges, float)))
    if not np.all(np.isfinite(out)):
        raise FloatingPointError("non-finite leave-one-out errors (ill-conditioned features)")
    return out


@functools.lru_cache(maxsize=1)
def _loo_fns():
    import jax
    import jax.numpy as jnp

    def dual(K, Y, ridges):
        w, U = jnp.linalg.eigh(K)
        w = jnp.maximum(w, 0.0)
        UTy = U.T @ Y
        U2 = U**2

        def one(lam):
            inv = 1.0 / (w + lam)
            alpha = U @ (inv[:, None] * UTy)
            diag = U2 @ inv
            return jnp.mean((alpha / diag[:, None]) ** 2, axis=0)

        return jax.lax.map(one, ridges)

    def primal(Phi, Y, ridges):
        s, V = jnp.linalg.eigh(Phi.T @ Phi)
        s = jnp.maximum(s, 0.0)
        P = Phi @ V
        PTy = P.T @ Y
        P2 = P**2

        def one(lam):
            inv = 1.0 / (s + lam)
            fitted = P @ (inv[:, None] * PTy)
            h = P2 @ inv
            return jnp.mean(((Y - fitted) / (1.0 - h)[:, None]) ** 2, axis=0)

        return jax.lax.map(one, ridges)

    return jax.jit(dual), jax.jit(primal)


def _primal_solve(Phi: np.ndarray, Y: np.ndarray, ridges: np.ndarray) -> np.ndarray:
    """Weights ``(D, P)``: ``w_p = (ΦᵀΦ + λ_p I)⁻¹ Φᵀ y_p`` (one eigendecomposition of ``ΦᵀΦ``);
    identical to the dual solution, ``f(x) = Φ(x)·w = k(x)ᵀ(K + λI)⁻¹ y``."""
    import jax.numpy as jnp

    Phi = jnp.asarray(Phi)
    s, V = jnp.linalg.eigh(Phi.T @ Phi)
    s = np.maximum(np.asarray(s), 0.0)
    V = np.asarray(V)
    VtPy = V.T @ np.asarray(Phi.T @ jnp.asarray(Y))
    W = np.zeros((V.shape[0], Y.shape[1]))
    for p, lam in enumerate(ridges):
        if np.isfinite(lam):
            W[:, p] = V @ (VtPy[:, p] / (s + lam))
    if not np.all(np.isfinite(W)):
        raise FloatingPointError("kernel ridge (primal) gave non-finite weights")
    return W


def _krr_solve(K: np.ndarray, Y: np.ndarray, ridges: np.ndarray) -> np.ndarray:
    """Dual coefficients ``(N, P)``: target p solves ``(K + ridges[p] I) α_p = Y[:, p]``."""
    import jax.numpy as jnp
    from jax.scipy.linalg import cho_factor, cho_solve

    Kj = jnp.asarray(K)
    alpha = np.empty_like(Y)
    n = K.shape[0]
    alpha[:, np.isinf(ridges)] = 0.0  # constant predictor (the training mean)
    for lam in np.unique(ridges[np.isfinite(ridges)]):
        cols = np.flatnonzero(ridges == lam)
        c = cho_factor(Kj + lam * jnp.eye(n, dtype=Kj.dtype), lower=True)
        alpha[:, cols] = np.asarray(cho_solve(c, jnp.asarray(Y[:, cols])))
        del c
    if not np.all(np.isfinite(alpha)):
        raise FloatingPointError("kernel ridge solve gave non-finite coefficients (kernel not PSD?)")
    return alpha


class KernelRegressor:
    """Kernel ridge or SVR from covariates to (log-)parameters, hyper-parameters by CV.

    **Arguments:**

    - `kernel`: one of ``angle``, ``iqp``, ``projected`` (quantum), ``rbf``, ``linear``.
    - `method`: ``"krr"`` or ``"svr"``.
    - `n_qubits`, `layers`, `binary_angle`: feature-map settings (quantum kernels).
    - `hyper`: fixed kernel hyper-parameters (e.g. ``{"bandwidth": 0.4}``) instead of CV.
    - `ridge`: a fixed ridge for every target instead of CV (kernel ridge only).
    - `cv_subset`: subjects used for cross-validation; `seed`: which ones (and SVR folds).
    """

    def __init__(
        self,
        kernel: str = "angle",
        method: str = "krr",
        *,
        n_qubits: int | None = None,
        layers: int = 1,
        binary_angle: float = math.pi / 2,
        hyper: Mapping | None = None,
        ridge: float | None = None,
        cv_subset: int = 2000,
        seed: int = 0,
        ridges: Sequence[float] = RIDGE_GRID,
        block: int = 2048,
        solver: str = "auto",
    ):
        if kernel not in KERNELS:
            raise ValueError(f"unknown kernel {kernel!r}; choose one of {', '.join(KERNELS)} or 'covariate'.")
        if method not in METHODS:
            raise ValueError(f"unknown method {method!r}; choose 'krr' or 'svr'.")
        if cv_subset < 10:
            raise ValueError(f"cv_subset must be >= 10; got {cv_subset}.")
        if solver not in ("auto", "primal", "dual"):
            raise ValueError(f"solver must be 'auto', 'primal' or 'dual'; got {solver!r}.")
        if ridge is not None and not ridge > 0:
            raise ValueError(f"ridge must be > 0; got {ridge}.")
        self.kernel_name = kernel
        self.method = method
        self.map_options = {"n_qubits": n_qubits, "layers": layers, "binary_angle": binary_angle}
        self.fixed_hyper = None if hyper is None else dict(hyper)
        self.fixed_ridge = ridge
        self.cv_subset = int(cv_subset)
        self.seed = int(seed)
        self.ridges = tuple(ridges)
        self.block = block
        self.solver = solver
        self.info: dict = {}

    def _primal(self, n: int) -> bool:
        """Solve with the explicit feature map (exact, ``O(n D²)``) rather than the ``n × n`` kernel?"""
        dim = self.kernel.primal_dim(len(self.feature_names))
        if self.solver == "primal" and dim is None:
            raise ValueError(f"the {self.kernel_name} kernel has no finite feature map; use solver='dual'.")
        if self.solver == "dual" or dim is None:
            return False
        return self.solver == "primal" or (dim <= MAX_PRIMAL_DIM and dim < n)

    # ------------------------------------------------------------------ fit
    def fit(
        self, X: np.ndarray, Y: np.ndarray, feature_names: Sequence[str], target_names: Sequence[str]
    ) -> KernelRegressor:
        from .._x64 import enable_x64

        enable_x64()  # tiny ridges and flat kernels need float64
        t_start = time.perf_counter()
        X = np.asarray(X, float)
        Y = np.asarray(Y, float)
        n = X.shape[0]
        if Y.ndim != 2 or Y.shape[0] != n or Y.shape[1] != len(target_names):
            raise ValueError(f"targets must be ({n}, {len(target_names)}); got {Y.shape}.")
        if n < 10:
            raise ValueError(f"need at least 10 training subjects; got {n}.")
        bad = np.argwhere(~np.isfinite(Y))
        if bad.size:
            i, j = bad[0]
            raise ValueError(f"row {i + 1}, target {target_names[j]}: value {Y[i, j]} is not finite.")
        self.feature_names, self.target_names = tuple(feature_names), tuple(target_names)
        self.encoding = Encoding.fit(X, feature_names)
        self.kernel = make_kernel(
            self.kernel_name, self.encoding.binary, block=self.block, **self.map_options
        )
        Z = self.encoding.transform(X)
        self.y_mean = Y.mean(0)
        self.y_scale = np.where(Y.std(0) > 0, Y.std(0), 1.0)
        Ys = (Y - self.y_mean) / self.y_scale
        warnings: list[str] = []

        # ---- cross-validation on a subset
        t0 = time.perf_counter()
        rng = np.random.default_rng(self.seed)
        sub = np.sort(rng.choice(n, self.cv_subset, replace=False)) if n > self.cv_subset else np.arange(n)
        grid = [self.fixed_hyper] if self.fixed_hyper is not None else self.kernel.grid()
        ridges = np.asarray([self.fixed_ridge] if self.fixed_ridge is not None else self.ridges)
        # the constant predictor (λ = ∞: the training mean) is a candidate too; its LOO error is
        # exact: the left-out residual is y_i·m/(m-1) for centred y
        if self.method == "svr":
            self.ridge = None
            self.hyper, self.svr_params, scores = self._svr_cv(Z, Ys, sub, grid, warnings)
        else:
            ys_sub = Ys[sub] - Ys[sub].mean(0)
            m = sub.size
            loo_const = np.mean(ys_sub**2, 0) * (m / (m - 1)) ** 2
            scores, best_ridge_idx = [], []
            primal_cv = self._primal(sub.size)
            for h in grid:
                R_sub = self.kernel.represent(Z[sub], **h)
                if primal_cv:
                    loo = loo_errors_primal(self.kernel.features(R_sub), Ys[sub], ridges)
                else:
                    loo = loo_errors(self.kernel.gram(R_sub, **h), Ys[sub], ridges)
                loo = np.vstack([loo, loo_const])  # (R + 1, P)
                scores.append(float(np.mean(loo.min(0))))
                best_ridge_idx.append(loo.argmin(0))
            k = int(np.argmin(scores))
            self.hyper = dict(grid[k])
            self.ridge = np.append(ridges, np.inf)[best_ridge_idx[k]]
            self.constant = tuple(t for t, r in zip(target_names, self.ridge) if np.isinf(r))
            if len(grid) > 1 and k in (0, len(grid) - 1):
                warnings.append(f"kernel hyper-parameter {self.hyper} is on the edge of its CV grid")
            if self.constant:
                warnings.append(
                    f"no covariate signal found for {', '.join(self.constant)}: predicted as the "
                    "training mean (leave-one-out error of every ridge was larger)"
                )
            if len(ridges) > 1:
                for p, j in enumerate(best_ridge_idx[k]):
                    if j == 0:
                        warnings.append(
                            f"ridge {ridges[j]:g} for {target_names[p]} is on the lower edge of its CV grid"
                        )
                    elif j == len(ridges) - 1:
                        warnings.append(
                            f"ridge {ridges[j]:g} for {target_names[p]} is on the upper edge of its CV grid: "
                            "the prediction is nearly constant (little covariate signal)"
                        )
        cv_s = time.perf_counter() - t0

        # ---- full fit
        t0 = time.perf_counter()
        self.R_train = self.kernel.represent(Z, **self.hyper)
        t1 = time.perf_counter()
        self.primal = self.method == "krr" and self._primal(n)
        if self.primal:
            Phi = self.kernel.features(self.R_train)
            t2 = time.perf_counter()
            self.weights = _primal_solve(Phi, Ys, self.ridge)
        else:
            K = self.kernel.gram(self.R_train, **self.hyper)
            t2 = time.perf_counter()
            if self.method == "krr":
                self.alpha = _krr_solve(K, Ys, self.ridge)
            else:
                self.models = self._svr_fit(K, Ys)
            del K
        t3 = time.perf_counter()
        self.info = {
            "kernel": self.kernel_name,
            "method": self.method,
            "n_train": n,
            "hyperparameters": self.hyper,
            "ridge": (
                {
                    t: (float(r) if np.isfinite(r) else "inf (constant)")
                    for t, r in zip(target_names, self.ridge)
                }
                if self.method == "krr"
                else None
            ),
            "svr": getattr(self, "svr_params", None),
            "solver": "primal" if self.primal else ("dual" if self.method == "krr" else "svr"),
            "cv": {"subset": int(sub.size), "grid": len(grid), "loo_mse_standardised": scores},
            "encoding": self.encoding.to_dict(),
            "feature_map": self.kernel.describe(),
            "timings_s": {
                "cv": cv_s,
                "represent": t1 - t0,
                "gram" if not self.primal else "features": t2 - t1,
                "solve": t3 - t2,
                "total": time.perf_counter() - t_start,
            },
            "warnings": warnings,
        }
        return self

    def _svr_cv(self, Z, Ys, sub, grid, warnings) -> tuple[dict, dict, list]:
        """Kernel hyper-parameter (shared by the targets: one kernel) and per-target ``C``, ``ε`` by
        3-fold CV on at most `SVR_CV_MAX` subjects of the CV subset."""
        from sklearn.model_selection import GridSearchCV, KFold
        from sklearn.svm import SVR

        rng = np.random.default_rng(self.seed + 1)
        sub = np.sort(rng.choice(sub, SVR_CV_MAX, replace=False)) if sub.size > SVR_CV_MAX else sub
        folds = KFold(3, shuffle=True, random_state=self.seed)
        scores, params = [], []
        for h in grid:
            K = self.kernel.gram(self.kernel.represent(Z[sub], **h), **h)
            mse, best = [], {}
            for p, t in enumerate(self.target_names):
                gs = GridSearchCV(
                    SVR(kernel="precomputed"),
                    {"C": SVR_C_GRID, "epsilon": SVR_EPS_GRID},
                    cv=folds,
                    scoring="neg_mean_squared_error",
                )
                gs.fit(K, Ys[sub, p])
                mse.append(-gs.best_score_)
                best[t] = {k: float(v) for k, v in gs.best_params_.items()}
            scores.append(float(np.mean(mse)))
            params.append(best)
        k = int(np.argmin(scores))
        if len(grid) > 1 and k in (0, len(grid) - 1):
            warnings.append(f"kernel hyper-parameter {grid[k]} is on the edge of its CV grid")
        for t, bp in params[k].items():
            if bp["C"] == max(SVR_C_GRID):
                warnings.append(f"C = {bp['C']:g} for {t} is on the upper edge of its CV grid")
        return dict(grid[k]), params[k], scores

    def _svr_fit(self, K: np.ndarray, Ys: np.ndarray) -> list:
        from sklearn.svm import SVR

        models = []
        for p, t in enumerate(self.target_names):
            m = SVR(kernel="precomputed", cache_size=1000, **self.svr_params[t])
            models.append(m.fit(K, Ys[:, p]))
        return models

    # ------------------------------------------------------------------ predict
    def predict(self, X: np.ndarray) -> np.ndarray:
        """Predicted targets ``(M, P)`` (the scale they were given in, e.g. log θ)."""
        if not hasattr(self, "R_train"):
            raise RuntimeError("call fit() before predict()")
        Z = self.encoding.transform(np.asarray(X, float))
        R = self.kernel.represent(Z, **self.hyper)
        if self.primal:
            Ys = self.kernel.features(R) @ self.weights
        elif self.method == "krr":
            Ys = self.kernel.gram(R, self.R_train, **self.hyper) @ self.alpha
        else:
            Kt = self.kernel.gram(R, self.R_train, **self.hyper)
            Ys = np.stack([m.predict(Kt) for m in self.models], axis=1)
        out = self.y_mean + self.y_scale * Ys
        if not np.all(np.isfinite(out)):
            raise FloatingPointError("non-finite predictions")
        return out


class CovariateEquation:
    """Baseline: the population model's covariate equation, ``log θ_p = a_p + Σ_c b_pc·g(x_c)``
    with ``g = log`` for continuous (positive) covariates and ``g(x) = x`` for 0/1 ones, fitted by
    least squares. `structure` maps a target to the covariates acting on it (default: all)."""

    kernel_name = "covariate"
    method = "ols"

    def __init__(self, structure: Mapping[str, Sequence[str]] | None = None):
        self.structure = None if structure is None else {k: tuple(v) for k, v in structure.items()}
        self.info: dict = {}

    def _design(self, X: np.ndarray) -> np.ndarray:
        cols = [np.ones(X.shape[0])]
        for j, name in enumerate(self.feature_names):
            x = X[:, j]
            if self.binary[j]:
                cols.append(x)
            else:
                bad = np.flatnonzero(~(x > 0))
                if bad.size:
                    raise ValueError(
                        f"row {bad[0] + 1}, column {name}: value {x[bad[0]]:g} is not > 0; the covariate "
                        "equation uses log(covariate) for continuous covariates (power effects)."
                    )
                cols.append(np.log(x))
        return np.stack(cols, 1)

    def fit(self, X, Y, feature_names, target_names) -> CovariateEquation:
        t0 = time.perf_counter()
        X, Y = np.asarray(X, float), np.asarray(Y, float)
        self.feature_names, self.target_names = tuple(feature_names), tuple(target_names)
        self.encoding = Encoding.fit(X, feature_names)
        self.binary = self.encoding.binary
        D = self._design(X)
        self.coef = np.zeros((D.shape[1], len(target_names)))
        for p, t in enumerate(target_names):
            use = [0] + [
                j + 1
                for j, f in enumerate(feature_names)
                if self.structure is None or f in self.structure.get(t, ())
            ]
            sol, *_ = np.linalg.lstsq(D[:, use], Y[:, p], rcond=None)
            self.coef[use, p] = sol
        self.info = {
            "kernel": "covariate",
            "method": "ols",
            "n_train": X.shape[0],
            "coefficients": {
                t: dict(zip(["intercept", *feature_names], self.coef[:, p].tolist()))
                for p, t in enumerate(target_names)
            },
            "timings_s": {"total": time.perf_counter() - t0},
            "warnings": [],
        }
        return self

    def predict(self, X) -> np.ndarray:
        X = self.encoding.check(X)
        return self._design(X) @ self.coef


def make_regressor(kernel: str, method: str = "krr", *, structure=None, **options):
    """[`CovariateEquation`][] for ``kernel="covariate"``, else a [`KernelRegressor`][]."""
    if kernel == "covariate":
        return CovariateEquation(structure)
    return KernelRegressor(kernel, method, **options)
