"""Silence the libraries below us (tracer warnings, Optimum's and transformers' info logs,
ONNX Runtime's optimizer prints) so the user sees our progress and what they can act on.

The CLI silences them for the whole process (``--debug`` keeps them); the Python API does it
around each call (``verbose=True`` keeps them) and restores the caller's settings afterwards.
"""
from __future__ import annotations

import contextlib
import io
import logging
import os
import warnings
from typing import Iterator

def silence_process() -> None:
    """For the CLI: quiet for the rest of the process."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_VERBOSITY", "error")  # huggingface_hub resets its logger level on import
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # transformers 5 draws a progress bar on stderr for every weight load; it follows huggingface_hub's switch
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    warnings.filterwarnings("ignore")
    # Not per-logger levels: Optimum and transformers reset their root logger's level when first
    # imported, which for us is after this call.
    logging.disable(logging.WARNING)


@contextlib.contextmanager
def _no_progress_bars() -> Iterator[None]:
    """transformers 5 draws a progress bar on stderr for every weight load: off inside the block,
    as the caller had it after."""
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:
        yield
        return
    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


@contextlib.contextmanager
def silenced(enabled: bool = True) -> Iterator[None]:
    """For the API: quiet inside the block, the caller's warning filters and log levels after."""
    if not enabled:
        yield
        return
    disabled = logging.root.manager.disable
    with warnings.catch_warnings(), _no_progress_bars():
        warnings.simplefilter("ignore")
        logging.disable(max(disabled, logging.WARNING))
        try:
            yield
        finally:
            logging.disable(disabled)


@contextlib.contextmanager
def stdout_swallowed(enabled: bool = True) -> Iterator[io.StringIO]:
    """Catch what a library ``print``s (onnxruntime.transformers' "failed in shape inference"):
    it is about the library's internals, not something the user can act on."""
    buffer = io.StringIO()
    if not enabled:
        yield buffer
        return
    with contextlib.redirect_stdout(buffer):
        yield buffer
