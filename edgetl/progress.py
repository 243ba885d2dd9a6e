"""Progress and status lines for long work (epochs, calibration, benchmarks), on stderr via rich."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.console import Console

Update = Callable[..., None]


class Reporter:
    """Prints status lines and progress bars; `enabled=False` makes it silent (library use, tests)."""

    def __init__(self, enabled: bool = True, console: Console | None = None) -> None:
        self.enabled = enabled
        self._console = console

    @property
    def console(self) -> Console:
        """The rich console (stderr); rich is imported only when something is printed, so a silent reporter works
        on a device that has only numpy, Pillow and a runtime."""
        if self._console is None:
            from rich.console import Console

            # soft_wrap: long paths stay on one line in CI logs instead of being wrapped at 80 columns.
            self._console = Console(stderr=True, highlight=False, soft_wrap=True)
        return self._console

    def info(self, message: str) -> None:
        """One status line."""
        if self.enabled:
            self.console.print(message)

    @contextlib.contextmanager
    def task(self, description: str, total: int | None) -> Iterator[Update]:
        """A progress bar; yields `update(advance=1, description=None)`."""
        if not self.enabled:
            yield lambda advance=1, description=None: None
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   TextColumn("eta"), TimeRemainingColumn()]
        with Progress(*columns, console=self.console, transient=False) as bar:
            task_id = bar.add_task(description, total=total)

            def update(advance: int = 1, description: str | None = None) -> None:
                bar.update(task_id, advance=advance, **({"description": description} if description else {}))

            yield update


SILENT = Reporter(enabled=False)
