"""Plain Optimum, as a user without modelexport runs it: the comparison the breadth table and the
benchmarks draw. Here so that the rest of modelexport (``testing/breadth.py`` included) never
imports Optimum."""
from __future__ import annotations

import contextlib
import logging
from pathlib import Path


def preload() -> None:
    """Import Optimum's exporter and ORTModel classes (a fork server's workers then share them)."""
    import optimum.exporters.onnx  # noqa: F401
    import optimum.onnxruntime  # noqa: F401


def preferred_head(model_type: str, task: str) -> str:
    """Name of the transformers class Optimum builds for ``model_type`` and ``task``."""
    from optimum.exporters.tasks import TasksManager

    cls = TasksManager.get_model_class_for_task(task.replace("-with-past", ""), framework="pt",
                                                model_type=model_type, library="transformers")
    name = cls.__name__
    if name.startswith("Auto"):  # the class the Auto class builds for this type
        names = cls._model_mapping._model_mapping.get(model_type)
        name = names if isinstance(names, str) else names[0]
    return name


def export(model, output: Path, task: str) -> list[str]:
    """``onnx_export_from_model`` with its own validation; returns the warnings that validation
    logged (values above its tolerance are a warning in Optimum, not an error)."""
    from optimum.exporters.onnx import onnx_export_from_model

    with _validation_warnings() as warned:
        onnx_export_from_model(model, output, task=task, do_validation=True)
    return warned


def ort_model_class(name: str):
    """Optimum's ``ORTModelForXxx`` class called ``name``, or None."""
    import optimum.onnxruntime as ortm

    return getattr(ortm, name, None)


@contextlib.contextmanager
def _validation_warnings():
    caught: list[str] = []

    class Catch(logging.Handler):
        def emit(self, record):
            text = record.getMessage()
            if "succeeded with the warning" in text:
                caught.append(text.split("warning:", 1)[-1].strip().splitlines()[0][:160])

    handler = Catch(logging.WARNING)
    logger = logging.getLogger("optimum")
    disabled = logging.root.manager.disable
    logging.disable(logging.NOTSET)
    logger.addHandler(handler)
    try:
        yield caught
    finally:
        logger.removeHandler(handler)
        logging.disable(disabled)
