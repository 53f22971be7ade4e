"""Sessions: `nox -s tests` (what CI runs), `lint`, `bench`, `experiments`, `slow`, `studies`.

Every session installs the package into its own virtualenv; tests run on the installed package.
"""

from __future__ import annotations

import nox


nox.options.sessions = ["lint", "tests"]
nox.options.reuse_existing_virtualenvs = True


@nox.session
def tests(session: nox.Session) -> None:
    """The default test suite (excludes `slow`), as CI runs it."""
    session.install("-e", ".[test]")
    session.run("pytest", "-n", "2", "--dist", "loadfile", *session.posargs)


@nox.session
def slow(session: nox.Session) -> None:
    """Long studies marked `slow` (not run in CI)."""
    session.install("-e", ".[test]")
    session.run("pytest", "-m", "slow", *session.posargs)


@nox.session
def studies(session: nox.Session) -> None:
    """Validation studies: the example-study fit recovers the truth; QHMC agrees with NUTS."""
    session.install("-e", ".[test]")
    session.run("pytest", "-m", "slow", "tests/test_study_example_fit.py", *session.posargs)
    session.run("python", "experiments/twin_study.py", "results/twin_study", "--quick")
    session.run("python", "experiments/pbpk_forecast_study.py", "results/pbpk_forecast", "--quick")
    session.run("python", "experiments/allometry_study.py", "results/allometry_study", "--quick")


@nox.session
def lint(session: nox.Session) -> None:
    session.install("ruff>=0.5")
    session.run("ruff", "check", "pkpd_jax", "tests", "benchmarks", "experiments", "noxfile.py")


@nox.session
def bench(session: nox.Session) -> None:
    """Speed against peers (scipy solve_ivp, numpyro NUTS, circuit-by-circuit kernels, ...); writes
    benchmarks/results/. `nox -s bench -- --quick` for a short run. The model-selection baseline
    (`benchmarks/bench_selector_baseline.py --corpus DIR`) needs a corpus and runs on its own."""
    session.install("-e", ".")
    scripts = ("simulate", "samplers", "likelihood", "corpus", "train", "qkernel", "trials", "fit", "run")
    for script in scripts:
        session.run("python", f"benchmarks/bench_{script}.py", *session.posargs)


@nox.session
def experiments(session: nox.Session) -> None:
    """Reproduce the studies under experiments/ (today: the bundled example study, bit for bit)."""
    session.install("-e", ".")
    session.run("python", "experiments/make_example_study.py")
