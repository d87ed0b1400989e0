"""Module paths (``named_modules()`` names, "" for the root) as strings: the one place their
prefix logic is written. Imports nothing, so every verb can use it."""
from __future__ import annotations


def chain(path: str) -> list[str]:
    """The root, then each ancestor, then ``path``: "" , "a", "a.b" for "a.b"."""
    atoms = path.split(".") if path else []
    return [""] + [".".join(atoms[: i + 1]) for i in range(len(atoms))]


def parent(path: str) -> str | None:
    """The enclosing module's path; None for the root."""
    return None if not path else path.rpartition(".")[0]


def contains(ancestor: str, path: str) -> bool:
    """``path`` is ``ancestor`` or below it ("" contains everything)."""
    return not ancestor or path == ancestor or path.startswith(ancestor + ".")


def depth(path: str) -> int:
    """0 for the root, 1 for its children, ..."""
    return path.count(".") + 1 if path else 0


def with_ancestors(paths) -> set[str]:
    """Every path given and every ancestor of each (the root included)."""
    found = {""}
    for path in paths:
        found.update(chain(path))
    return found
