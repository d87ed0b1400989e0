"""An output folder that appears only when complete.

Work happens in a temporary folder beside OUTPUT_DIR (same filesystem, so the final move is a
rename); an existing OUTPUT_DIR is replaced only after the new one is complete, and only with
``force``. On failure the temporary folder is removed and OUTPUT_DIR is as it was.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from modelexport.errors import OutputExistsError


def check_output_dir(output_dir: Path, force: bool) -> None:
    """Refuse early, before any expensive work, when OUTPUT_DIR cannot be used."""
    if output_dir.exists() and not output_dir.is_dir():
        raise OutputExistsError(f"output path {output_dir} exists and is not a folder")
    if output_dir.is_dir() and any(output_dir.iterdir()) and not force:
        raise OutputExistsError(f"output folder {output_dir} is not empty; pass --force to replace it")
    parent = output_dir.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent  # the folder that will hold the new ones
    if os.statvfs(parent).f_flag & os.ST_RDONLY:
        raise OutputExistsError(f"cannot write to {parent}: the file system is read-only")
    if not os.access(parent, os.W_OK):
        raise OutputExistsError(f"cannot write to {parent}: permission denied")


@contextlib.contextmanager
def staged_output_dir(output_dir: Path, force: bool) -> Iterator[Path]:
    """Yield a temporary folder; on success it becomes ``output_dir``."""
    output_dir = output_dir.resolve()
    check_output_dir(output_dir, force)
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.modelexport-", dir=output_dir.parent))
    # mkdtemp makes the folder private (0700); the result should have ordinary permissions.
    umask = os.umask(0)
    os.umask(umask)
    staging.chmod(0o777 & ~umask)
    try:
        yield staging
        _replace(staging, output_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _replace(staging: Path, output_dir: Path) -> None:
    if not output_dir.exists():
        staging.rename(output_dir)
        return
    # Keep the old folder until the new one is in place, so a failure loses nothing.
    backup = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.old-", dir=output_dir.parent))
    backup.rmdir()
    output_dir.rename(backup)
    try:
        staging.rename(output_dir)
    except BaseException:
        backup.rename(output_dir)
        raise
    shutil.rmtree(backup, ignore_errors=True)
