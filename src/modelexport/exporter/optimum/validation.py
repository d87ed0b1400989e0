"""Compare each exported file with PyTorch on the task's dummy inputs, in ONNX Runtime.

Same procedure as Optimum's own validation (its OnnxConfig builds the inputs, patches the
model, and maps outputs), but it returns the max absolute difference per output instead of
only raising past a tolerance, so the summary can report it.
"""
from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field
from pathlib import Path


from modelexport.runtime.numeric import output_difference, past_allclose

# Optimum's check is ``np.allclose(ref, ort, atol=atol)``: numpy's default rtol, per element.
OPTIMUM_RTOL = 1e-5

@dataclass
class FileValidation:
    file: str
    atol: float
    max_abs_diff: float
    outputs: dict[str, float] = field(default_factory=dict)  # output name -> max abs diff
    rtol: float = OPTIMUM_RTOL
    # Outputs with an element past atol + rtol * |PyTorch| (Optimum's np.allclose fails on them).
    above_tolerance: list[str] = field(default_factory=list)
    shape_mismatches: list[str] = field(default_factory=list)
    # Outputs where ONNX Runtime gave NaN or Inf and PyTorch a finite value: a failure whatever
    # the finite differences are (max(0.0, nan) is 0.0, so they must be counted apart).
    nonfinite: list[str] = field(default_factory=list)
    # Where a top-k's candidates tie at float precision and ONNX Runtime chose others than PyTorch:
    # what the replay of its choice found (``runtime.topk_ties``), the differences before it.
    topk_ties: list[dict] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.shape_mismatches and not self.nonfinite and not self.above_tolerance

    def as_dict(self) -> dict:
        d = asdict(self)
        d["passed"] = self.passed
        return d


def optimum_atol(onnx_config, task: str) -> float:
    """The tolerance Optimum validates this model and task with."""
    atol = onnx_config.ATOL_FOR_VALIDATION
    if isinstance(atol, dict):
        atol = atol.get(task.replace("-with-past", ""), max(atol.values()))
    return float(atol)


def _flatten(onnx_config, name: str, value, into: dict) -> None:
    if isinstance(value, (list, tuple)):
        into.update(onnx_config.flatten_output_collection_property(name, value))
    elif isinstance(value, dict):
        into.update(value)
    else:
        into[name] = value


def validation_session(onnx_path: Path):
    """The ONNX Runtime session validation runs a file in (one per file: a merged decoder's two
    branches are validated in the same session)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    return ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])


def validate_file(onnx_path: Path, submodel, onnx_config, atol: float | None = None,
                  output_names: list[str] | None = None, input_shapes: dict | None = None,
                  session=None) -> FileValidation:
    import torch

    if atol is None:
        atol = optimum_atol(onnx_config, getattr(onnx_config, "task", ""))
    from optimum.utils import DEFAULT_DUMMY_SHAPES

    # Every dummy shape, as Optimum's export passes them (RT-DETR's config reads `height`
    # unconditionally); the static shapes, when given, override the defaults.
    inputs = onnx_config.generate_dummy_inputs(framework="pt", **{**DEFAULT_DUMMY_SHAPES, **(input_shapes or {})})
    reference_inputs = onnx_config.rename_ambiguous_inputs(copy.deepcopy(inputs))

    def forward() -> dict:
        with onnx_config.patch_model_for_export(submodel, model_kwargs={}), torch.inference_mode():
            reference = submodel(**copy.deepcopy(reference_inputs))
        expected: dict = {}
        for name, value in reference.items():
            if name == "past_key_values":
                name = "present"
            _flatten(onnx_config, onnx_config.torch_to_onnx_output_map.get(name, name), value, expected)
        return expected

    expected = forward()
    session = session or validation_session(onnx_path)
    input_names = [i.name for i in session.get_inputs()]
    feed_torch: dict = {}
    for name, value in onnx_config.generate_dummy_inputs_for_validation(inputs, input_names).items():
        _flatten(onnx_config, name, value, feed_torch)
    feed = {k: v.cpu().numpy() for k, v in feed_torch.items() if k in input_names}

    # Only the outputs the submodel's own export produced, as Optimum validates: a merged
    # decoder's with-past branch also returns empty placeholders for outputs it does not compute.
    wanted = set(output_names) if output_names is not None else None
    output_names = [o.name for o in session.get_outputs() if wanted is None or o.name in wanted]
    onnx_to_torch = {v: k for k, v in onnx_config.torch_to_onnx_output_map.items()}

    def compared(expected: dict, got: list) -> FileValidation:
        result = FileValidation(onnx_path.name, float(atol), 0.0)
        for name, value in zip(output_names, got):
            ref = expected.get(name, expected.get(onnx_to_torch.get(name, name)))
            if ref is None:
                result.shape_mismatches.append(f"{name}: no PyTorch output of that name")
                continue
            ref = ref.detach().cpu().numpy()
            if ref.shape != value.shape:
                result.shape_mismatches.append(f"{name}: {value.shape} vs PyTorch {ref.shape}")
                continue
            diff, nonfinite = output_difference(ref, value)
            if nonfinite:
                result.nonfinite.append(f"{name}: {nonfinite}")
            if past_allclose(ref, value, float(atol), OPTIMUM_RTOL):
                result.above_tolerance.append(f"{name}: {diff:.3g}")  # its max |diff|
            result.outputs[name] = diff
            result.max_abs_diff = max(result.max_abs_diff, diff)
        return result

    result = compared(expected, session.run(output_names, feed))
    if not result.passed and not result.shape_mismatches and not result.nonfinite:
        # a top-k whose candidates tie at float precision: ONNX Runtime's choice replayed in PyTorch
        from modelexport.runtime.topk_ties import replayed_run

        replay = replayed_run(onnx_path, output_names, feed, forward, float(atol), OPTIMUM_RTOL)
        if replay is not None and replay[2].complete:
            again = compared(replay[1], replay[0])
            if again.passed:
                again.topk_ties.append({**replay[2].as_dict(), "before_replay": result.outputs})
                result = again
    return result


def merge_validations(results: list[tuple[str, FileValidation]]) -> dict:
    """One report for a file validated several times (each branch of a merged decoder)."""
    if len(results) == 1:
        return results[0][1].as_dict()
    merged = FileValidation(results[0][1].file, max(r.atol for _, r in results), 0.0)
    for label, r in results:
        merged.max_abs_diff = max(merged.max_abs_diff, r.max_abs_diff)
        merged.outputs.update({f"{label}:{k}": v for k, v in r.outputs.items()})
        merged.shape_mismatches.extend(f"{label}:{m}" for m in r.shape_mismatches)
        merged.nonfinite.extend(f"{label}:{m}" for m in r.nonfinite)
        merged.above_tolerance.extend(f"{label}:{m}" for m in r.above_tolerance)
        merged.topk_ties.extend({"branch": label, **t} for t in r.topk_ties)
    d = merged.as_dict()
    d["passed"] = all(r.passed for _, r in results)
    d["branches"] = [label for label, _ in results]
    return d
