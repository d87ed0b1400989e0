"""Progress on stderr for phases that take seconds: a spinner per phase, a tick when done."""
from __future__ import annotations

from rich.console import Console


class ConsolePhaseReporter:
    def __init__(self, console: Console | None = None):
        self.console = console or Console(stderr=True)
        self._status = None

    def start(self, description: str) -> None:
        self._status = self.console.status(f"{description}…")
        self._status.start()

    def _stop(self) -> None:
        if self._status is not None:
            self._status.stop()
            self._status = None

    def fail(self, description: str) -> None:
        self._stop()

    def end(self, description: str, seconds: float) -> None:
        self._stop()
        self.console.print(f"[green]✓[/] {description} [dim]({seconds:.2f} s)[/]")
