"""The shape every pass over tags has (as onnx-ir's passes do): a callable taking a model (or a
graph) and returning a ``PassResult`` that says what it worked on and whether it changed it, with
the pass's own counts on the subclass. Passes compose with ``run_passes`` and are tested alone.

The passes: ``tagging.TaggingPass`` (scopes, parameters, neighbours: every node of an export
tagged) and ``restore.RestorePass`` (tags back on a file an optimizer or quantizer rewrote).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable


@dataclass(kw_only=True)
class PassResult:
    model: object = None  # the ModelProto or GraphProto the pass worked on (edited in place)
    modified: bool = False


def run_passes(model, passes: Iterable[Callable[[object], PassResult]]) -> list[PassResult]:
    """Run passes in order on one model; each sees what the previous one left."""
    results = []
    for step in passes:
        result = step(model)
        results.append(result)
        model = result.model if result.model is not None else model
    return results
