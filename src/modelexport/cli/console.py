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

    if sys.stdout.isatty():
        console = Console(highlight=False)
    else:
        console = Console(width=_PIPE_WIDTH, color_system=None, highlight=False, emoji=False, soft_wrap=True)
    console.on_broken_pipe = _closed_pipe
    return console


def table(*columns: str, title: str | None = None, right: tuple[str, ...] = ()):
    """A rich Table whose cells fold instead of ending in an ellipsis."""
    from rich.table import Table

    t = Table(title=title, title_justify="left")
    for col in columns:
        t.add_column(col, justify="right" if col in right else "left", overflow="fold")
    return t
