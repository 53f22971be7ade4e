"""The one solve layer: every simulation of a model with doses goes through here.

Public names (re-exported; see each for its documentation):

- [`simulate`][]: one subject, pure and jit/vmap/grad-compatible, with the engine chosen by
  `SolverConfig.method` (``"auto"``, ``"ode"``, ``"expm"``, ``"erk"``) and optional
  sensitivities ∂/∂θ;
- [`simulate_population`][]: many subjects, vmapped, sharded, chunked, failures reported;
- [`steady_state`][] / [`simulate_steady_state`][]: the state at steady state of a repeated
  dosing interval, and the trajectory over one interval at steady state;
- [`solve_erk`][] / [`erk_supported`][]: the one-loop explicit Runge-Kutta engine with forward
  sensitivities (the likelihood's and the corpus's engine);
- the periodic steady-state engine of a repeated dosing interval for models with linear PK
  (`periodic`: exact unit-dose PK by superposition, one RK4 pass for the response, Newton on
  the interval map; [`periodic_extremes`][], [`periodic_profile`][], [`interval_grid`][], ...),
  the trials' fast path, with `linalg` (the small-matrix exponential and the exact affine step);
- [`SolverConfig`][], [`Solution`][], [`SteadyState`][], [`SimulationError`][],
  `STATUS_MESSAGES` (the one status enumeration), `METHODS` (the engine names).

Modules, one concept each: `_config` (settings, statuses, result types), `_simulate` (the merged
observation/event grid and the dispatch to an engine), `_ode` (diffrax per interval), `_expm`
(exact, linear systems), `_erk` (one adaptive loop with sensitivities), `_population`
(vmapped, sharded, chunked), `_steady` (steady state by repeated intervals, any model),
`periodic` (steady state of a linear-PK model, the trials' engine), `linalg` (small dense
matrix functions).

**Failures.** Each subject carries a status (0 success, 1 max steps reached, 2 non-finite state,
3 other solver failure, 4 not steady). `simulate_population(throw=True)` raises on any failure;
`throw=False` returns the status for the caller to handle (e.g. HMC treats a failed trajectory
as zero likelihood). Failed trajectories are never returned silently.
"""

from ._config import (
    MAX_STEPS as MAX_STEPS,
    METHODS as METHODS,
    NONFINITE as NONFINITE,
    NOT_STEADY as NOT_STEADY,
    SOLVER_FAILURE as SOLVER_FAILURE,
    STATUS_MESSAGES as STATUS_MESSAGES,
    SUCCESS as SUCCESS,
    SimulationError as SimulationError,
    Solution as Solution,
    SolverConfig as SolverConfig,
    Status as Status,
    SteadyState as SteadyState,
)
from ._erk import erk_supported as erk_supported, solve_erk as solve_erk
from ._population import simulate_population as simulate_population
from ._simulate import simulate as simulate
from ._steady import simulate_steady_state as simulate_steady_state, steady_state as steady_state
from .linalg import affine_propagator as affine_propagator, expm_small as expm_small
from .periodic import (
    STIFFNESS_LIMIT as STIFFNESS_LIMIT,
    IntervalGrid as IntervalGrid,
    fast_path_applies as fast_path_applies,
    interval_grid as interval_grid,
    periodic_extremes as periodic_extremes,
    periodic_profile as periodic_profile,
    unit_dose_regimen as unit_dose_regimen,
    unit_pk_steady_state as unit_pk_steady_state,
)


__all__ = [
    "MAX_STEPS",
    "METHODS",
    "NONFINITE",
    "NOT_STEADY",
    "SOLVER_FAILURE",
    "SUCCESS",
    "Status",
    "STATUS_MESSAGES",
    "SimulationError",
    "Solution",
    "SolverConfig",
    "SteadyState",
    "erk_supported",
    "simulate",
    "simulate_population",
    "simulate_steady_state",
    "solve_erk",
    "steady_state",
    "affine_propagator",
    "expm_small",
    "STIFFNESS_LIMIT",
    "IntervalGrid",
    "fast_path_applies",
    "interval_grid",
    "periodic_extremes",
    "periodic_profile",
    "unit_dose_regimen",
    "unit_pk_steady_state",
]
