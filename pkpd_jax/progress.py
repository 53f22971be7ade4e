"""The one progress-bar helper for long work (rich), shared by every stage.

`progress_bar(description, total)` returns a context manager yielding an `update(done)`
callable; with `enabled=False` (or a non-interactive stream where rich prints nothing useful)
the bar is not drawn and `update` is a no-op. A callable passed as `progress` by a caller
(``progress=lambda done, total: ...``) is wrapped the same way, so library functions accept
``progress: bool | Callable[[int, int], None]`` uniformly.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator


__all__ = ["progress_bar"]


@contextlib.contextmanager
def progress_bar(
    description: str,
    total: int,
    *,
    enabled: bool | Callable[[int, int], None] = True,
    done: int = 0,
    transient: bool = True,
    unit: str = "",
) -> Iterator[Callable[[int], None]]:
    """A rich progress bar over `total` items, starting at `done`.

    **Arguments:** `description` (shown left of the bar), `total`, `enabled` (True: draw a bar;
    False: nothing; a callable `(done, total)`: called instead of drawing), `done` (items
    already finished, e.g. when resuming), `transient` (erase the bar when finished), `unit`
    (shown after the count, e.g. "traj").

    **Yields:** `update(done)`, to call with the number of items finished so far.
    """
    if callable(enabled):
        callback = enabled
        yield lambda n: callback(int(n), int(total))
        return
    if not enabled:
        yield lambda n: None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn()]
    if unit:
        columns.append(TextColumn(unit))
    columns += [TimeElapsedColumn(), TimeRemainingColumn()]
    bar = Progress(*columns, transient=transient, console=Console(stderr=True))
    task = bar.add_task(description, total=total, completed=done)
    bar.start()
    try:
        yield lambda n: bar.update(task, completed=int(n))
    finally:
        bar.stop()
