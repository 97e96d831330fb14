"""Progress reporting for long stages: a rich bar on a terminal, nothing with --quiet.

Library code reports through this small interface; only the rich implementation imports rich.
"""

from __future__ import annotations

from typing import Any


class Progress:
    """Silent progress: the interface, and what library callers get by default."""

    def start(self, stage: str, total: int | None = None) -> None:
        """Begin a stage; `total` is None while the count is unknown (listing a tree)."""

    def advance(self, steps: int = 1, quarantined: int = 0) -> None:
        """Count finished items, and how many of them were quarantined."""

    def stats(self, text: str) -> None:
        """A short line of running figures for the current stage (requests, tokens, cost)."""

    def finish(self) -> None:
        """End the current stage."""

    def close(self) -> None:
        """Stop drawing."""


class RichProgress(Progress):
    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            SpinnerColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )
        from rich.progress import Progress as Bar

        self._bar = Bar(
            SpinnerColumn(),
            TextColumn("[bold]{task.description:<10}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[quarantined]} quarantined"),
            TextColumn("{task.fields[stats]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            transient=False,
        )
        self._bar.start()
        self._task: Any = None
        self._quarantined = 0

    def start(self, stage: str, total: int | None = None) -> None:
        self._quarantined = 0
        self._task = self._bar.add_task(stage, total=total, quarantined=0, stats="")

    def advance(self, steps: int = 1, quarantined: int = 0) -> None:
        self._quarantined += quarantined
        self._bar.update(self._task, advance=steps, quarantined=self._quarantined)

    def stats(self, text: str) -> None:
        if self._task is not None:
            self._bar.update(self._task, stats=text)

    def finish(self) -> None:
        if self._task is not None:
            task = self._bar.tasks[self._task]
            self._bar.update(self._task, total=task.completed)
        self._task = None

    def close(self) -> None:
        self._bar.stop()


class StatsOnly(Progress):
    """Passes a worker's stats line to the caller's bar, which counts the items itself.

    The describe bar advances once per sample in the pipeline; the LLM engine underneath
    would count the same items again through `advance`.
    """

    def __init__(self, inner: Progress) -> None:
        self.inner = inner

    def stats(self, text: str) -> None:
        self.inner.stats(text)
