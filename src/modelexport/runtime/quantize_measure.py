"""Latency and size of float and quantized folders, measured so that they can be compared.

Latency is measured on realistic shapes (default: batch 1 and 8 at the model's typical sequence
length, 128 for text), every folder in the same run, alternating (float, quantized, float, ...)
so that whatever else the machine does falls on all of them alike; each figure is the median of
the rounds with its min and max. Never from a handful of short sentences: int8 pays off on the
matrix products of real batch and sequence sizes, not on 8-token inputs.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from modelexport.errors import ModelExportError

TYPICAL_TEXT_LENGTH = 128
DEFAULT_BATCHES = (1, 8)


@dataclass(frozen=True)
class Shape:
    batch: int
    sequence: int | None = None  # None: the model's typical length

    def label(self, sequence: int | None = None) -> str:
        seq = self.sequence or sequence
        return f"{self.batch}x{seq}" if seq else f"{self.batch}"


def parse_shape(text: str) -> Shape:
    """``8x128`` (batch x sequence) or ``8`` (batch at the typical sequence length)."""
    parts = text.lower().replace("*", "x").split("x")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        values = []
    if len(values) not in (1, 2) or any(v <= 0 for v in values):
        raise ModelExportError(f"--shape {text!r}: give BATCHxSEQUENCE (e.g. 8x128) or BATCH")
    return Shape(*values)


def default_shapes() -> list[Shape]:
    return [Shape(b) for b in DEFAULT_BATCHES]


def folder_config(folder: Path) -> dict:
    try:
        config = json.loads((Path(folder) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return config if isinstance(config, dict) else {}


def typical_sequence(config: dict) -> int:
    """128 for text, or the model's position limit when that is shorter (tiny test models)."""
    from modelexport.runtime.dummy_inputs import position_limit

    limit = position_limit(config)
    if limit and limit < TYPICAL_TEXT_LENGTH:
        return limit
    return TYPICAL_TEXT_LENGTH


def folder_bytes(folder: Path) -> int:
    """Bytes of the ONNX files and their external weights."""
    return sum(p.stat().st_size for p in Path(folder).iterdir()
               if p.is_file() and (p.suffix == ".onnx" or p.name.endswith((".onnx_data", ".onnx.data", ".data"))))


def latency(folders: dict[str, Path], shapes: list[Shape], rounds: int = 10, progress=None) -> dict:
    """``{shape: {label: {"median_ms", "min_ms", "max_ms", "runs"}}}``: one pass over every ONNX
    file of each folder per round, folders alternating within each round."""
    from modelexport.runtime.dummy_inputs import make_inputs
    from modelexport.runtime.sessions import new_session

    labels = list(folders)
    first = Path(folders[labels[0]])
    config = folder_config(first)
    sequence = typical_sequence(config)
    names = sorted(p.name for p in first.glob("*.onnx"))
    sessions = {label: {name: new_session(Path(folders[label]) / name) for name in names} for label in labels}
    # a sequence length is only part of the shape of models that read token ids
    text = any(i.name in ("input_ids", "decoder_input_ids", "inputs_embeds")
               for per_file in sessions[labels[0]].values() for i in per_file.get_inputs())
    results: dict[str, dict] = {}
    for shape in shapes:
        seq = (shape.sequence or sequence) if text else None
        # the same inputs for every folder: made from the first folder's sessions
        feeds = {name: make_inputs(sessions[labels[0]][name], config, shape.batch, seq or sequence)
                 for name in names}
        if progress:
            progress(f"latency at batch {shape.batch}" + (f" x sequence {seq}" if seq else "") +
                     f": {rounds} alternating rounds of {', '.join(labels)}")
        times: dict[str, list[float]] = {label: [] for label in labels}
        for label in labels:  # warm-up
            for name in names:
                sessions[label][name].run(None, feeds[name])
        for _ in range(rounds):
            for label in labels:
                start = time.perf_counter()
                for name in names:
                    sessions[label][name].run(None, feeds[name])
                times[label].append((time.perf_counter() - start) * 1000)
        results[shape.label(seq)] = {label: {"median_ms": float(np.median(t)), "min_ms": float(np.min(t)),
                                             "max_ms": float(np.max(t)), "runs": len(t)} for label, t in times.items()}
    return results


def latency_text(results: dict, reference: str = "float") -> list[str]:
    """One line per shape: each folder's median (min-max) and its ratio to ``reference``."""
    lines = []
    for shape, by_label in results.items():
        base = by_label.get(reference, {}).get("median_ms")
        parts = []
        for label, t in by_label.items():
            ratio = f", {t['median_ms'] / base:.2f}x" if base and label != reference else ""
            parts.append(f"{label} {t['median_ms']:.2f} ms ({t['min_ms']:.2f}-{t['max_ms']:.2f}{ratio})")
        lines.append(f"latency at {shape if 'x' in shape else 'batch ' + shape}: " + "; ".join(parts))
    return lines
