"""The consoles the verbs print with: for people in a terminal, plain text in a pipe.

Names (module paths, file names, op types) are never shortened: in a terminal a long cell
folds onto the next line, in a pipe or file the width is unbounded and no markup or colour is
written, so ``grep`` and ``cut`` see whole names.
"""
from __future__ import annotations

import sys

# Wide enough for any row we print; rich needs a number when stdout is not a terminal.
_PIPE_WIDTH = 100_000


def _closed_pipe() -> None:
    # rich answers a closed pipe with SystemExit(1); the CLI treats it as the normal end it is.
    raise BrokenPipeError()


def stdout_console():
    from rich.console import Console

    class UncroppedConsole(Console):
        """A table whose numbers and headers do not fit the terminal is printed whole (the
        terminal wraps the long line) rather than cut at the right edge."""

        def print(self, *objects, crop: bool = False, **kwargs):
            super().print(*objects, crop=crop, **kwargs)

    if sys.stdout.isatty():
        console = UncroppedConsole(highlight=False)
    else:
        console = UncroppedConsole(width=_PIPE_WIDTH, color_system=None, highlight=False, emoji=False,
                                   soft_wrap=True)
    console.on_broken_pipe = _closed_pipe
    return console


def table(*columns: str, title: str | None = None, right: tuple[str, ...] = ()):
    """A rich Table whose name cells fold instead of ending in an ellipsis, and whose numbers
    (the ``right`` columns) and headers never wrap: in a narrow terminal a number split over two
    lines (``0.97321`` / ``0``) reads as two numbers."""
    from rich.table import Table

    class WholeNumbersTable(Table):
        def __rich_console__(self, console, options):
            from rich.text import Text

            for col in self.columns:
                header = Text.from_markup(col.header).cell_len if isinstance(col.header, str) else 0
                widest = max((Text.from_markup(c).cell_len for c in col._cells if isinstance(c, str)), default=0)
                col.min_width = max(header, widest) if col.no_wrap else header
            yield from super().__rich_console__(console, options)

    t = WholeNumbersTable(title=title, title_justify="left")
    for col in columns:
        numeric = col in right
        t.add_column(col, justify="right" if numeric else "left", overflow="fold", no_wrap=numeric)
    return t
