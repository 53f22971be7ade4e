"""Moved to `pkpd_jax.solve` (kept so that ``from pkpd_jax.simulate import simulate`` still works)."""

from .solve import (
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
    simulate as simulate,
    simulate_population as simulate_population,
    simulate_steady_state as simulate_steady_state,
    steady_state as steady_state,
)


__all__ = [
    "SolverConfig",
    "Solution",
    "SteadyState",
    "SimulationError",
    "simulate",
    "simulate_population",
    "steady_state",
    "simulate_steady_state",
    "STATUS_MESSAGES",
    "Status",
]
