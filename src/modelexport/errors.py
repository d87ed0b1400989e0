"""Errors a user can act on. The CLI prints their message as one line, without a traceback."""


class ModelExportError(Exception):
    """A problem with the user's input or environment, explained in one line."""


class OutputExistsError(ModelExportError):
    pass


class ModelSourceError(ModelExportError):
    pass


class TaskError(ModelExportError):
    pass
