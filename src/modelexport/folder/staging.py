"""An output folder that appears only when complete.

Work happens in a temporary folder beside OUTPUT_DIR (same filesystem, so the final move is a
rename); an existing OUTPUT_DIR is replaced only after the new one is complete, and only with
``force``. On failure the temporary folder is removed and OUTPUT_DIR is as it was.
"""
from __future__ import annotations

import contextlib
import glob
import os
import signal
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Iterator

from modelexport.errors import OutputExistsError
from modelexport.folder.metadata import METADATA_FILE


def _relation(a: Path, b: Path) -> str | None:
    """How folder ``a`` lies to folder ``b``: "is", "is inside", "contains", or None."""
    if a == b:
        return "is"
    if b in a.parents:
        return "is inside"
    if a in b.parents:
        return "contains"
    return None


def check_output_dir(output_dir: Path, force: bool, sources=()) -> None:
    """Refuse early, before any expensive work, when OUTPUT_DIR cannot be used.

    ``sources``: the folders the command reads (the model folder, the folder being quantized).
    An output folder that is, lies inside or contains one of them is refused even with
    ``force``: replacing it would delete what is being read (``export m m --force`` lost the
    weights). ``force`` replaces only a folder modelexport wrote (it holds our metadata file):
    ``--force`` on any other non-empty folder (a home folder, a model) is refused too.
    """
    output_dir = Path(output_dir).resolve()
    for source in sources:
        if source is None:
            continue
        source = Path(source).resolve()
        relation = _relation(output_dir, source)
        if relation is not None:
            raise OutputExistsError(f"output folder {output_dir} {relation} {source}, which this command reads; "
                                    "choose another output folder (nothing was changed)")
    if output_dir.exists() and not output_dir.is_dir():
        raise OutputExistsError(f"output path {output_dir} exists and is not a folder")
    if output_dir.is_dir() and any(output_dir.iterdir()):
        if not force:
            raise OutputExistsError(f"output folder {output_dir} is not empty; pass --force to replace it")
        if not (output_dir / METADATA_FILE).is_file():
            raise OutputExistsError(f"output folder {output_dir} is not empty and was not written by modelexport (no "
                                    f"{METADATA_FILE}): --force replaces only modelexport's folders; remove it "
                                    "yourself or choose another output folder")
    parent = output_dir.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent  # the folder that will hold the new ones
    if os.statvfs(parent).f_flag & os.ST_RDONLY:
        raise OutputExistsError(f"cannot write to {parent}: the file system is read-only")
    if not os.access(parent, os.W_OK):
        raise OutputExistsError(f"cannot write to {parent}: permission denied")


# Our temporary folders beside OUTPUT_DIR carry the pid of the export that made them, so a later
# export can tell its own stale leftovers (process gone) from a concurrent export's live ones.
_STAGING = ".{name}.modelexport-{pid}-"
_BACKUP = ".{name}.old-{pid}-"
_SWAP_SIGNALS = {signal.SIGINT, signal.SIGTERM}

# Output folders this process has put in place, complete: an interrupt that lands after the swap
# (while the summary is printed) must not be reported as "nothing was written".
completed: list[Path] = []


@contextlib.contextmanager
def staged_output_dir(output_dir: Path, force: bool, sources=()) -> Iterator[Path]:
    """Yield a temporary folder; on success it becomes ``output_dir``."""
    output_dir = Path(output_dir).resolve()
    recover_leftovers(output_dir)
    check_output_dir(output_dir, force, sources)
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=_STAGING.format(name=output_dir.name, pid=os.getpid()),
                                    dir=output_dir.parent))
    # mkdtemp makes the folder private (0700); the result should have ordinary permissions.
    umask = os.umask(0)
    os.umask(umask)
    staging.chmod(0o777 & ~umask)
    try:
        yield staging
        _replace(staging, output_dir)
        completed.append(output_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _replace(staging: Path, output_dir: Path) -> None:
    """Move the staged folder into place. Ctrl-C and SIGTERM are held back until the swap and the
    removal of the old folder are both done: an interrupt then finds either the old folder or the
    new one in place, never a hidden backup of the old one beside it."""
    with _signals_held():
        if not output_dir.exists():
            staging.rename(output_dir)
            return
        # Keep the old folder until the new one is in place, so a failure loses nothing.
        backup = Path(tempfile.mkdtemp(prefix=_BACKUP.format(name=output_dir.name, pid=os.getpid()),
                                       dir=output_dir.parent))
        backup.rmdir()
        output_dir.rename(backup)
        try:
            staging.rename(output_dir)
        except BaseException:
            backup.rename(output_dir)
            raise
        shutil.rmtree(backup, ignore_errors=True)


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    """Hold Ctrl-C and SIGTERM back until the block is done, then act on them.

    Not ``pthread_sigmask``: torch's and ONNX Runtime's worker threads do not block the signals,
    so the kernel hands a process-wide signal to one of them and Python still raises in the main
    thread. Swapping the Python-level handlers holds the signal wherever it lands.
    """
    if threading.current_thread() is not threading.main_thread():
        yield  # handlers can only be changed (and only run) in the main thread
        return
    caught: list[int] = []
    previous = {s: signal.signal(s, lambda signum, frame: caught.append(signum)) for s in _SWAP_SIGNALS}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        if caught:
            handler = previous[caught[0]]
            if callable(handler):
                handler(caught[0], None)  # KeyboardInterrupt, or the CLI's Terminated
            elif handler == signal.SIG_DFL:
                signal.raise_signal(caught[0])


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):  # no such process, or a number no pid can be
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def _stale(parent: Path, pattern: str, name: str) -> list[Path]:
    prefix = pattern.partition("{pid}")[0].format(name=name)
    found = []
    for entry in parent.glob(glob.escape(prefix) + "*"):
        pid = entry.name[len(prefix):].partition("-")[0]
        if entry.is_dir() and pid.isdigit() and not _pid_alive(int(pid)):
            found.append(entry)
    return found


def recover_leftovers(output_dir: Path) -> list[str]:
    """Clean up after an earlier export to ``output_dir`` that was killed (SIGKILL, power loss).

    Its staging folders are removed. A backup of the old folder is removed when OUTPUT_DIR is in
    place, and moved back to OUTPUT_DIR when it is not (the kill came between the two renames):
    what the user had is never lost. Returns what was done, for the log.
    """
    parent = output_dir.parent
    if not parent.is_dir():
        return []
    done = []
    for staging in _stale(parent, _STAGING, output_dir.name):
        shutil.rmtree(staging, ignore_errors=True)
        done.append(f"removed {staging.name}")
    backups = sorted(_stale(parent, _BACKUP, output_dir.name), key=lambda p: p.stat().st_mtime)
    if backups and not output_dir.exists():
        backups.pop().rename(output_dir)  # the newest backup is the folder the user last had
        done.append(f"restored {output_dir.name}")
    for backup in backups:
        shutil.rmtree(backup, ignore_errors=True)
        done.append(f"removed {backup.name}")
    return done
