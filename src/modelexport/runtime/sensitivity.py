"""Which modules lose accuracy when quantized, and quantization that keeps an accuracy target.

Every number is an end-output comparison of real ONNX Runtime runs of the float folder and of a
quantized one (Optimum's dynamic int8 through ``quantize_folder``, with tags restored), on the
user's inputs: cosine similarity (per input, all outputs of all files concatenated) and max
|float - quantized|.
"""
from __future__ import annotations

import fnmatch
import math
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from modelexport.errors import ModelExportError


@dataclass
class Accuracy:
    cosine_min: float
    cosine_mean: float
    max_abs: float

    def meets(self, target_cosine: float | None, max_abs_error: float | None) -> bool:
        return (target_cosine is None or self.cosine_min >= target_cosine) and \
            (max_abs_error is None or self.max_abs <= max_abs_error)


def run_outputs(folder: Path, feeds_by_file: dict[str, list[dict]]) -> dict[str, list[list[np.ndarray]]]:
    """Every graph output of every file, per feed."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 4
    runs = {}
    for name, feeds in feeds_by_file.items():
        session = ort.InferenceSession(str(Path(folder) / name), options, providers=["CPUExecutionProvider"])
        inputs = {i.name for i in session.get_inputs()}
        runs[name] = [session.run(None, {k: v for k, v in feed.items() if k in inputs}) for feed in feeds]
    return runs


def accuracy(reference: dict[str, list[list[np.ndarray]]], other: dict[str, list[list[np.ndarray]]]) -> Accuracy:
    cosines, max_abs = [], 0.0
    for name, runs in reference.items():
        for ref_outputs, got_outputs in zip(runs, other[name]):
            a = np.concatenate([np.asarray(x, np.float64).ravel() for x in ref_outputs if np.size(x)])
            b = np.concatenate([np.asarray(x, np.float64).ravel() for x in got_outputs if np.size(x)])
            if not np.all(np.isfinite(b)):
                cosines.append(-1.0)
                max_abs = math.inf
                continue
            max_abs = max(max_abs, float(np.max(np.abs(a - b))) if a.size else 0.0)
            norm = float(np.linalg.norm(a) * np.linalg.norm(b))
            cosines.append(float(a @ b) / norm if norm else 1.0)
    return Accuracy(min(cosines), float(np.mean(cosines)), max_abs)


def modules_with_nodes(modules: list[dict]) -> list[str]:
    return [row["module_path"] for row in modules if row.get("nodes_total")]


def candidate_modules(modules: list[dict], depth: int | None, patterns: list[str]) -> list[str]:
    """The modules to rank: those matching ``patterns``, or those at ``depth``, or (default) the
    items of the model's largest ModuleList (its layers)."""
    paths = modules_with_nodes(modules)
    if patterns:
        chosen = [p for p in paths if any(fnmatch.fnmatchcase(p, g) for g in patterns)]
    elif depth is not None:
        chosen = [p for p in paths if p and p.count(".") + 1 == depth]
    else:
        lists = [row["module_path"] for row in modules if row.get("class") == "ModuleList"]
        children = {m: [p for p in paths if p.rpartition(".")[0] == m] for m in lists}
        best = max(children.values(), key=len, default=[])
        chosen = best
    if not chosen:
        raise ModelExportError("no module to rank: pass --depth N or --modules GLOB (see `modelexport analyze`)")
    # an ancestor and its descendant would both be excluded anyway: keep the outermost
    return [p for p in chosen if not any(q != p and p.startswith(q + ".") for q in chosen)]


@dataclass
class SensitivityRow:
    module_path: str
    cosine_only_this: float  # only this module quantized
    max_abs_only_this: float
    cosine_all_but_this: float  # everything but this module quantized
    max_abs_all_but_this: float

    def as_dict(self) -> dict:
        return asdict(self)


def _quantized_accuracy(src: Path, work: Path, exclude: list[str], reference, feeds_by_file) -> Accuracy:
    from modelexport.runtime.transform import quantize_folder

    out = Path(tempfile.mkdtemp(dir=work)) / "q"
    quantize_folder(src, out, exclude, validate=False)
    return accuracy(reference, run_outputs(out, feeds_by_file))


def everything_but(module: str, paths: list[str]) -> list[str]:
    """Module paths whose subtrees cover every module outside ``module``'s subtree except its
    ancestors themselves: the siblings of ``module`` and of each of its ancestors."""
    chain = [module]
    while chain[-1]:
        chain.append(chain[-1].rpartition(".")[0])
    on_path = set(chain)
    inside = module + "."
    return sorted(p for p in paths if p and p not in on_path and not p.startswith(inside)
                  and p.rpartition(".")[0] in on_path)


def sensitivity(src: Path, candidates: list[str], feeds_by_file: dict[str, list[dict]],
                progress=None, modules_with_nodes: list[str] | None = None) -> list[SensitivityRow]:
    """Most sensitive first: the lowest cosine when only that module is quantized."""
    reference = run_outputs(src, feeds_by_file)
    paths = modules_with_nodes or candidates
    rows = []
    with tempfile.TemporaryDirectory(prefix="modelexport-sensitivity-") as tmp:
        for i, module in enumerate(candidates):
            if progress:
                progress(i, len(candidates), module)
            only = _quantized_accuracy(src, Path(tmp), everything_but(module, paths), reference, feeds_by_file)
            all_but = _quantized_accuracy(src, Path(tmp), [module], reference, feeds_by_file)
            rows.append(SensitivityRow(module, only.cosine_min, only.max_abs, all_but.cosine_min, all_but.max_abs))
    rows.sort(key=lambda r: (r.cosine_only_this, -r.max_abs_only_this))
    return rows


@dataclass
class TargetResult:
    kept_float: list[str]
    accuracy: Accuracy
    fully_quantized: Accuracy
    steps: list[dict] = field(default_factory=list)  # each greedy step: module added, accuracy
    sizes: dict[str, int] = field(default_factory=dict)  # float / fully quantized / result: bytes
    latency_ms: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return asdict(self)


def _folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in Path(folder).glob("*.onnx*"))


def _latency_ms(folder: Path, feeds_by_file: dict[str, list[dict]], reps: int = 5) -> float:
    """Median over ``reps`` of one pass over every feed of every file, in ms."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 4
    sessions = {name: ort.InferenceSession(str(Path(folder) / name), options, providers=["CPUExecutionProvider"])
                for name in feeds_by_file}
    inputs = {name: {i.name for i in s.get_inputs()} for name, s in sessions.items()}

    def one_pass():
        for name, feeds in feeds_by_file.items():
            for feed in feeds:
                sessions[name].run(None, {k: v for k, v in feed.items() if k in inputs[name]})

    one_pass()  # warm-up
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        one_pass()
        times.append(time.perf_counter() - start)
    return 1000 * float(np.median(times))


def quantize_to_target(src: Path, out: Path, candidates: list[str], feeds_by_file: dict[str, list[dict]],
                       target_cosine: float | None, max_abs_error: float | None, force: bool = False,
                       progress=None, modules_with_nodes: list[str] | None = None) -> TargetResult:
    """Keep the fewest candidate modules in float (most sensitive first, greedy, re-measured after
    each step) until the quantized folder meets the target on the given inputs."""
    from modelexport.folder.staging import check_output_dir
    from modelexport.runtime.transform import quantize_folder

    check_output_dir(Path(out).resolve(), force, [src])
    reference = run_outputs(src, feeds_by_file)
    with tempfile.TemporaryDirectory(prefix="modelexport-target-") as tmp:
        work = Path(tmp)
        full_dir = work / "full"
        quantize_folder(src, full_dir, [], validate=False)
        full = accuracy(reference, run_outputs(full_dir, feeds_by_file))
        kept: list[str] = []
        current, steps = full, []
        if not full.meets(target_cosine, max_abs_error):
            ranking = [r.module_path for r in sensitivity(src, candidates, feeds_by_file, progress, modules_with_nodes)]
            for module in ranking:
                kept.append(module)
                current = _quantized_accuracy(src, work, kept, reference, feeds_by_file)
                steps.append({"kept_float": list(kept), "cosine_min": current.cosine_min, "max_abs": current.max_abs})
                if current.meets(target_cosine, max_abs_error):
                    break
            else:
                raise ModelExportError(
                    f"the target ({_target_text(target_cosine, max_abs_error)}) is not met even with every candidate "
                    f"module in float (cosine min {current.cosine_min:.5f}, max abs {current.max_abs:.3g}); "
                    "widen the candidates (--depth, --modules) or relax the target")
        quantize_folder(src, out, kept, force=force)
        result = TargetResult(kept, current, full, steps)
        result.sizes = {"float": _folder_bytes(src), "fully_quantized": _folder_bytes(full_dir),
                        "result": _folder_bytes(out)}
        result.latency_ms = {"float": _latency_ms(src, feeds_by_file),
                             "fully_quantized": _latency_ms(full_dir, feeds_by_file),
                             "result": _latency_ms(out, feeds_by_file)}
    _record(out, result, target_cosine, max_abs_error)
    return result


def _target_text(target_cosine, max_abs_error) -> str:
    parts = []
    if target_cosine is not None:
        parts.append(f"cosine >= {target_cosine}")
    if max_abs_error is not None:
        parts.append(f"max abs error <= {max_abs_error}")
    return " and ".join(parts)


def _record(out: Path, result: TargetResult, target_cosine, max_abs_error) -> None:
    """Add what the target search decided to the folder's metadata (last transform step)."""
    import json

    from modelexport.folder.metadata import METADATA_FILE

    path = Path(out) / METADATA_FILE
    meta = json.loads(path.read_text(encoding="utf-8"))
    step = meta.setdefault("transforms", [{}])[-1]
    step["accuracy_target"] = {"target_cosine": target_cosine, "max_abs_error": max_abs_error,
                               **result.as_dict()}
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)
