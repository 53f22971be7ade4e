"""Solver settings, the one status enumeration, and the result types of every engine."""

from __future__ import annotations

import enum

import diffrax as dfx
import equinox as eqx
import numpy as np
from jaxtyping import Array, Bool, Float, Int

from ..errors import PkpdError


class Status(enum.IntEnum):
    """The one status enumeration of every engine (an `int32` code per subject in results)."""

    SUCCESS = 0
    MAX_STEPS = 1
    NONFINITE = 2
    SOLVER_FAILURE = 3
    NOT_STEADY = 4


SUCCESS, MAX_STEPS, NONFINITE, SOLVER_FAILURE, NOT_STEADY = (int(s) for s in Status)
STATUS_MESSAGES = {
    SUCCESS: "success",
    MAX_STEPS: "the ODE solver reached max_steps; increase `max_steps`, or use a stiff solver "
    "(solver=diffrax.Kvaerno5()) if the parameters make the system stiff",
    NONFINITE: "the state became non-finite (NaN/inf); check the parameters (all positive and "
    "of plausible size?) and the doses",
    SOLVER_FAILURE: "the ODE solver failed (step size underflow or a non-finite vector field)",
    NOT_STEADY: "steady state was not reached within `max_intervals` dosing intervals; increase "
    "`max_intervals` or loosen `tol`",
}

METHODS = ("auto", "ode", "expm", "erk")


class SimulationError(PkpdError, RuntimeError):
    """A simulation failed for some subjects; `.subjects` and `.status` say which and why."""

    def __init__(self, subjects: np.ndarray, status: np.ndarray):
        self.subjects = np.asarray(subjects)
        self.status = np.asarray(status)
        lines = []
        for code in np.unique(self.status):
            who = self.subjects[self.status == code]
            shown = ", ".join(map(str, who[:10])) + (" ..." if who.size > 10 else "")
            lines.append(f"  {who.size} subject(s) [{shown}]: {STATUS_MESSAGES[int(code)]}")
        super().__init__("simulation failed for\n" + "\n".join(lines))


class SolverConfig(eqx.Module):
    """Solver settings (static under jit).

    Defaults are ``rtol=1e-6, atol=1e-9`` with Tsit5 and a PID step-size controller, which gives
    about 6 significant digits on concentrations. Pass ``solver=diffrax.Kvaerno5()`` for stiff
    systems (very fast absorption or turnover next to slow elimination).

    `method` picks the engine of [`simulate`][]:

    - ``"ode"``: diffrax, one `diffeqsolve` per interval between observations and dose events
      (any diffrax solver, `y0`/`t0`, reverse-mode differentiable);
    - ``"expm"``: exact propagation of linear systems with matrix exponentials of
      `PKPDModel.linear_generator` (linear models only);
    - ``"erk"``: one adaptive explicit Runge-Kutta loop per subject over the whole horizon, with
      forward sensitivities (`solve_erk`; explicit solvers with an error estimate, baseline
      initial state, not differentiable by JAX: ask for ``sensitivities=True`` instead). Fastest
      for batches of nonlinear models; the population likelihood and the corpus ask for it;
    - ``"auto"`` (default): ``"expm"`` when the joint model is linear, ``"ode"`` otherwise. It
      never picks ``"erk"``, so that `simulate` stays reverse-mode differentiable by default.

    `adjoint`: how diffrax differentiates the ODE path. The default (checkpointed reverse mode)
    supports `jax.grad` but not forward mode; pass ``adjoint=diffrax.ForwardMode()`` for
    `jax.jacfwd` / `jax.jvp`.
    """

    solver: dfx.AbstractSolver = dfx.Tsit5()
    rtol: float = 1e-6
    atol: float = 1e-9
    max_steps: int = 4096
    method: str = "auto"
    adjoint: dfx.AbstractAdjoint = dfx.RecursiveCheckpointAdjoint()

    def __check_init__(self):
        if self.method not in METHODS:
            raise ValueError(
                f"`method` must be 'auto', 'ode', 'expm' or 'erk'; got {self.method!r}."
            )
        if not (self.rtol > 0 and self.atol > 0):
            raise ValueError(f"`rtol` and `atol` must be > 0; got {self.rtol}, {self.atol}.")
        if self.max_steps < 1:
            raise ValueError(f"`max_steps` must be >= 1; got {self.max_steps}.")


class Solution(eqx.Module):
    """Trajectory at the observation times (leading batch axis for populations).

    `dstates` ``(*batch, times, states, params)``, `dconc` and `dresp` ``(*batch, times,
    params)`` are the derivatives with respect to `theta`, present when `simulate` was asked for
    ``sensitivities=True`` (else None).
    """

    ts: Float[Array, "*batch times"]
    states: Float[Array, "*batch times states"]
    conc: Float[Array, "*batch times"]
    resp: Float[Array, "*batch times"]
    status: Int[Array, "*batch"]
    dstates: Float[Array, "*batch times states params"] | None = None
    dconc: Float[Array, "*batch times params"] | None = None
    dresp: Float[Array, "*batch times params"] | None = None

    @property
    def ok(self) -> Bool[Array, "*batch"]:
        return self.status == SUCCESS


class SteadyState(eqx.Module):
    """Pre-dose state at steady state, whether the tolerance was met, and intervals used."""

    state: Float[Array, "*batch states"]
    converged: Bool[Array, "*batch"]
    n_intervals: Int[Array, "*batch"]
    status: Int[Array, "*batch"]
