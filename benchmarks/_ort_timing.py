"""Per-run ONNX Runtime latency, shared by the benchmark scripts."""
from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path


def run_latency_ms(path: Path, feed: dict | None = None, runs: int = 30, profiling: bool = False,
                   warmup: int = 5) -> list[float]:
    """Milliseconds of each of ``runs`` session runs after ``warmup`` (dummy inputs by default)."""
    import onnxruntime as ort

    from modelexport.runtime.dummy_inputs import make_inputs

    options = ort.SessionOptions()
    options.log_severity_level = 4
    if profiling:
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(tempfile.mkdtemp()) / "p")
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    if feed is None:
        feed = make_inputs(session, None, 1, 32)
    for _ in range(warmup):
        session.run(None, feed)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        session.run(None, feed)
        times.append((time.perf_counter() - start) * 1000)
    if profiling:
        os.remove(session.end_profiling())
    return times
