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


def cpu_probe(repeats: int = 3) -> float:
    """Seconds of a fixed single-threaded workload (a pure-Python loop; best of `repeats`).

    The shared 2-core machines these benchmarks run on differ in speed from day to day by up to
    about 2x (the same test suite took 6 min 45 s on one day and 15 min on another), so a result
    file records this probe next to its timings: compare wall times across files only after
    comparing their probes."""
    import time

    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        acc = 0
        for i in range(2_000_000):
            acc += i * i % 7
        best = min(best, time.perf_counter() - t)
    return best
