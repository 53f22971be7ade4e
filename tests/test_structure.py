"""The one-core layout: every numerical core has one home, and files hold one concept.

- Solving a model with doses (diffrax `diffeqsolve`, matrix exponentials, fixed-step Runge-Kutta,
  eigendecompositions of a kinetic matrix) happens only in `pkpd_jax/solve/`; every stage calls
  `pkpd_jax.solve`.
- A model's Jacobian is taken only by the model itself (`PKPDModel.jacobian`,
  `linear_generator`, `pk_generator`) and by the sensitivity engine: no stage differentiates a
  vector field by hand.
- (A symmetric `eigh`, as the mass matrix and the kernel regression use, is linear algebra, not
  solving a kinetic system, and is allowed anywhere.)
- A module over 25 KB says in its docstring which one concept it holds.

(Import cycles and private imports across packages are checked in `tests/test_imports.py`.)
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pkpd_jax


PACKAGE = Path(pkpd_jax.__file__).parent

#: Code that solves an ODE or propagates a linear system: belongs in pkpd_jax/solve/.
SOLVING = re.compile(
    r"\bdiffeqsolve\(|linalg\.expm\(|\bexpm_small\(|np\.linalg\.eig\(|jnp\.linalg\.eig\(|def _?rk4"
)
#: Differentiating a vector field by hand: belongs in the model (pkpd_jax/models/) or the
#: sensitivity engine (pkpd_jax/solve/).
JACOBIAN = re.compile(r"jac(fwd|rev)\(\s*lambda[^)]*:\s*[\w.]*vector_field\(")
#: Large modules must declare their single concept in the module docstring.
MAX_BYTES = 25_000
ONE_CONCEPT = re.compile(r"one concept", re.IGNORECASE)


def _code(path: Path) -> str:
    """The source without docstrings and comments (a docstring may name what it does not do)."""
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr) and isinstance(
            getattr(body[0], "value", None), ast.Constant
        ) and isinstance(body[0].value.value, str):
            body[0] = ast.Pass()
    return ast.unparse(tree)


def _modules(under: Path = PACKAGE):
    return sorted(p for p in under.rglob("*.py"))


def _offenders(pattern: re.Pattern, allowed: tuple[str, ...]) -> list[str]:
    bad = []
    for path in _modules():
        rel = path.relative_to(PACKAGE.parent).as_posix()
        if rel.startswith(allowed):
            continue
        hits = pattern.findall(_code(path))
        if hits:
            bad.append(f"{rel}: {sorted(set(map(str, hits)))}")
    return bad


def test_the_scanners_see_what_they_look_for():
    assert SOLVING.search("sol = dfx.diffeqsolve(term, solver)")
    assert SOLVING.search("E = jax.scipy.linalg.expm(K * dt)")
    assert SOLVING.search("w, v = np.linalg.eig(K)")
    assert SOLVING.search("def _rk4_step(y, h):")
    assert not SOLVING.search("from .solve import simulate")
    assert not SOLVING.search("w, v = np.linalg.eigh(S)")
    assert JACOBIAN.search("K = jax.jacfwd(lambda y: model.vector_field(0.0, y, th, zero))(zero)")
    assert not JACOBIAN.search("K = model.linear_generator(theta)")
    # docstrings and comments are not code
    src = '"""Uses diffeqsolve(...) inside pkpd_jax.solve."""\n# expm_small(A) lives in solve\nx = 1\n'
    path = PACKAGE.parent / "_structure_probe.py"
    try:
        path.write_text(src)
        assert not SOLVING.search(_code(path))
    finally:
        path.unlink()


def test_solving_happens_only_in_the_solve_package():
    bad = _offenders(SOLVING, ("pkpd_jax/solve/",))
    assert not bad, "ODE / matrix-exponential solving outside pkpd_jax/solve/:\n" + "\n".join(bad)


def test_no_stage_differentiates_a_vector_field_by_hand():
    bad = _offenders(JACOBIAN, ("pkpd_jax/solve/", "pkpd_jax/models/"))
    assert not bad, "hand-written Jacobians (use PKPDModel.jacobian / linear_generator):\n" + "\n".join(bad)


def test_large_modules_hold_one_declared_concept():
    bad = []
    for path in _modules():
        size = path.stat().st_size
        if size <= MAX_BYTES:
            continue
        doc = ast.get_docstring(ast.parse(path.read_text())) or ""
        if not ONE_CONCEPT.search(doc):
            bad.append(f"{path.relative_to(PACKAGE.parent).as_posix()} ({size // 1000} KB)")
    assert not bad, (
        f"modules over {MAX_BYTES // 1000} KB whose docstring does not say which one concept they hold "
        "(split them, or say 'One concept: ...'):\n" + "\n".join(bad)
    )
