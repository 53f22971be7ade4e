"""The one progress-bar helper for long work (rich), shared by every stage.

[`progress_display`][] builds the project's rich display (one set of columns, stderr or stdout,
transient or kept) for callers that show several tasks at once (the sampler's warm-up and
sampling, the trainer's epochs with a live loss); [`progress_bar`][] is the one-task form on top
of it: `progress_bar(description, total)` returns a context manager yielding an `update(done)`
callable; with `enabled=False` (or a non-interactive stream where rich prints nothing useful)
the bar is not drawn and `update` is a no-op. A callable passed as `progress` by a caller
(``progress=lambda done, total: ...``) is wrapped the same way, so library functions accept
``progress: bool | Callable[[int, int], None]`` uniformly.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator


__all__ = ["progress_bar", "progress_display"]


def progress_display(
    *,
    enabled: bool = True,
    stdout: bool = False,
    transient: bool = True,
    spinner: bool = False,
    status: bool = False,
    unit: str = "",
):
    """The project's rich `Progress` display, or None when not `enabled`.

    **Arguments:** `stdout` (draw on stdout instead of stderr, for output a user keeps, such as
    a fit's sampling log), `transient` (erase when stopped), `spinner` (a spinner before the
    description, for tasks of unknown length), `status` (a text column after the bar showing
    each task's ``status`` field, e.g. the running loss: add tasks with ``status=""`` and update
    it with ``bar.update(task, status=...)``), `unit` (shown after the count).

    **Returns:** a `rich.progress.Progress` (use it as a context manager or start/stop it; add
    tasks with `add_task`), or None.
    """
    if not enabled:
        return None
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = [SpinnerColumn()] if spinner else []
    columns += [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn()]
    if unit:
        columns.append(TextColumn(unit))
    columns += [TimeElapsedColumn(), TimeRemainingColumn()]
    if status:
        columns.append(TextColumn("{task.fields[status]}"))
    return Progress(*columns, transient=transient, console=Console(stderr=not stdout))


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
    bar = progress_display(transient=transient, unit=unit)
    task = bar.add_task(description, total=total, completed=done)
    bar.start()
    try:
        yield lambda n: bar.update(task, completed=int(n))
    finally:
        bar.stop()
