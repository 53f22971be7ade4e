"""The one solve layer: every simulation of a model with doses goes through here.

Public names (re-exported; see each for its documentation):

- [`simulate`][]: one subject, pure and jit/vmap/grad-compatible;
- [`simulate_population`][]: many subjects, vmapped, sharded, chunked, failures reported;
- [`steady_state`][] / [`simulate_steady_state`][]: the state at steady state of a repeated
  dosing interval, and the trajectory over one interval at steady state;
- [`solve_erk`][] / [`erk_supported`][]: the one-loop explicit Runge-Kutta engine with forward
  sensitivities (the likelihood's and the corpus's engine);
- [`SolverConfig`][], [`Solution`][], [`SteadyState`][], [`SimulationError`][],
  `STATUS_MESSAGES` (the one status enumeration).
"""

from ..simulate import (
    MAX_STEPS as MAX_STEPS,
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
    _erk_supported as erk_supported,
    _solve_erk as solve_erk,
    simulate as simulate,
    simulate_population as simulate_population,
    simulate_steady_state as simulate_steady_state,
    steady_state as steady_state,
)


__all__ = [
    "MAX_STEPS",
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
]
