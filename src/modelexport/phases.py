"""Timing of export phases, with an optional reporter that shows progress to a person."""
from __future__ import annotations

import contextlib
import time
from typing import Iterator, Protocol


class PhaseReporter(Protocol):
    def start(self, description: str) -> None: ...

    def end(self, description: str, seconds: float) -> None: ...

    def fail(self, description: str) -> None: ...


class Phases:
    def __init__(self, reporter: PhaseReporter | None = None):
        self.timings: dict[str, float] = {}
        self.reporter = reporter

    @contextlib.contextmanager
    def __call__(self, name: str, description: str) -> Iterator[None]:
        if self.reporter:
            self.reporter.start(description)
        start = time.perf_counter()
        try:
            yield
        except BaseException:
            if self.reporter:
                self.reporter.fail(description)
            raise
        seconds = time.perf_counter() - start
        self.timings[name] = self.timings.get(name, 0.0) + seconds
        if self.reporter:
            self.reporter.end(description, seconds)
