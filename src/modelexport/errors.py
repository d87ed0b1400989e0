"""Errors a user can act on. The CLI prints their message as one line, without a traceback."""
import errno


class ModelExportError(Exception):
    """A problem with the user's input or environment, explained in one line."""


class OutputExistsError(ModelExportError):
    pass


class ModelSourceError(ModelExportError):
    pass


class TaskError(ModelExportError):
    pass


class Terminated(BaseException):
    """SIGTERM arrived: unwinds like KeyboardInterrupt so staged output is cleaned up."""


_DISK_ERRORS = {errno.ENOSPC: "no space left on the device", errno.EROFS: "the file system is read-only",
                errno.EACCES: "permission denied", errno.EDQUOT: "disk quota exceeded"}


def disk_error_message(e: BaseException) -> str | None:
    """A one-line message when a full, read-only or forbidden disk is behind ``e``, else None."""
    seen: BaseException | None = e
    for _ in range(20):
        if seen is None:
            break
        if isinstance(seen, OSError) and seen.errno in _DISK_ERRORS:
            where = f" ({seen.filename})" if seen.filename else ""
            return f"cannot write the output: {_DISK_ERRORS[seen.errno]}{where}; nothing was left half-written"
        if "No space left on device" in str(seen) or "file write failed" in str(seen):
            return "cannot write the output: no space left on the device; nothing was left half-written"
        seen = seen.__cause__ or seen.__context__
    return None
