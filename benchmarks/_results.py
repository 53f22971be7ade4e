"""What the benchmark scripts share about recording their results."""

from __future__ import annotations


def public_args(argv) -> list[str]:
    """The command-line arguments as recorded in the results: without ``--out DIR`` (where the
    results were written is not part of how they were measured)."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--out":
            skip = True
        elif not a.startswith("--out="):
            out.append(a)
    return out
