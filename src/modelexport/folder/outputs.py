"""The one rule for every file a verb writes (``extract -o``, ``graphml -o``, ``report -o``,
``--overlay``, ``--trace``): an existing file is refused unless ``--force``, a file the verb reads
is never overwritten (not even with ``--force``), and the file appears only once complete
(written beside its place, then renamed), so an interrupt or a failure leaves what was there.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterable, Iterator

from modelexport.errors import OutputExistsError


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve() or (a.exists() and b.exists() and os.path.samefile(a, b))
    except OSError:
        return False


def check_new_file(path, force: bool, reads: Iterable = (), option: str = "the output") -> Path:
    """Refuse, before any work, an output file that exists (without ``force``), is a folder, or is
    one of the files the verb reads (``reads``: files or folders whose files are read)."""
    path = Path(path)
    for source in reads:
        source = Path(source)
        inside = source.is_dir() and path.resolve().parent == source.resolve() and path.suffix in (".onnx", ".onnx_data")
        if _same_file(path, source) or (inside and path.exists()):
            raise OutputExistsError(f"{option} {path} is a file this command reads; choose another path "
                                    "(nothing was written)")
    if path.is_dir():
        raise OutputExistsError(f"{option} {path} is a folder; give a file path")
    if path.exists() and not force:
        raise OutputExistsError(f"{option} {path} exists; pass --force to replace it (nothing was written)")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise OutputExistsError(f"cannot write {path}: folder {parent} does not exist")
    return path


@contextlib.contextmanager
def file_written_atomically(path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` in one rename, on
    failure (or Ctrl-C) it is removed and ``path`` is as it was."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent if str(path.parent) else ".")
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        umask = os.umask(0)
        os.umask(umask)
        tmp_path.chmod(0o666 & ~umask)  # mkstemp makes the file private; the result is an ordinary file
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def write_text(path, text: str, force: bool, reads: Iterable = (), option: str = "the output") -> Path:
    """Check ``path`` with the rule above, then write ``text`` to it atomically."""
    path = check_new_file(path, force, reads, option)
    with file_written_atomically(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path
