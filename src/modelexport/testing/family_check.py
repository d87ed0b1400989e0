"""Export one tiny family end to end and check it the way a user would.

``check_family`` builds the model folder, runs ``modelexport.export``, reads every ONNX file's
tags back, loads the folder with the family's ``ORTModelForXxx`` where Optimum is installed (else
with ``modelexport.load``, ONNX Runtime alone) and compares with PyTorch: an output tensor, or
greedy ``generate()`` tokens. It returns a ``FamilyRow`` with what was measured; the tests assert
on it and scripts/models_table.py writes it to docs/models.md.
"""
from __future__ import annotations

import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from modelexport.testing.tiny_models import Family

TEXTS = ["hello world, the cat runs fast!", "a tiny test sentence"]


@dataclass
class FamilyRow:
    family: str
    task: str
    ort_class: str
    files: list[str] = field(default_factory=list)
    nodes: int = 0
    direct: int = 0
    inferred: int = 0
    root_fallback: int = 0
    untagged_nodes: int = 0  # nodes of any file with no module_path: must be 0
    file_roots: dict[str, str] = field(default_factory=dict)  # file -> module its tags start from
    export_max_abs_diff: float | None = None  # modelexport's own validation (Optimum's dummy inputs)
    export_passed: bool | None = None  # every validated file within Optimum's tolerance for the model
    ort_max_abs_diff: float | None = None  # ORTModel vs PyTorch on processor-made inputs
    same_tokens: bool | None = None  # generate(): greedy tokens equal
    tokens: list[int] = field(default_factory=list)
    copied: list[str] = field(default_factory=list)
    missing_files: list[str] = field(default_factory=list)
    export_seconds: float = 0.0
    exporter: str = "torchscript"  # asked for ("auto" resolves to the one in `path`)
    path: str = ""  # the exporter that wrote the files
    loader: str = ""  # what ran the folder: Optimum's ORTModel class, or modelexport.load
    output: str = ""  # the exported folder
    warnings: list[str] = field(default_factory=list)  # what the export told the user about its files
    error: str | None = None

    def as_dict(self) -> dict:
        return asdict(self)


def _random_image(seed: int):
    from PIL import Image

    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8))


def _audio(seed: int, seconds: float = 1.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (0.1 * rng.standard_normal(int(16000 * seconds))).astype(np.float32)


def _inputs(family: Family, folder: Path):
    from transformers import AutoFeatureExtractor, AutoImageProcessor, AutoProcessor, AutoTokenizer

    if family.inputs == "text":
        tok = AutoTokenizer.from_pretrained(folder)
        if family.task == "question-answering":
            return tok(["what runs fast?"], ["the cat runs fast"], return_tensors="pt")
        return tok(TEXTS, padding=True, return_tensors="pt")
    if family.inputs == "image":
        return AutoImageProcessor.from_pretrained(folder)(images=[_random_image(0), _random_image(1)],
                                                          return_tensors="pt")
    if family.inputs == "text+image":
        return AutoProcessor.from_pretrained(folder)(text=["the cat", "a model on onnx"],
                                                     images=[_random_image(0)], padding=True, return_tensors="pt")
    if family.inputs == "audio":
        # Equal lengths: Optimum's audio exports take no attention_mask, so padded batches
        # would differ from PyTorch by design, not by export error.
        extractor = AutoFeatureExtractor.from_pretrained(folder)
        return extractor([_audio(0), _audio(1)], sampling_rate=16000, return_tensors="pt")
    raise ValueError(family.inputs)


def _loader(family: Family, out: Path, row: FamilyRow):
    """Optimum's class for the family where Optimum is installed, else ``modelexport.load``."""
    from modelexport.exporter.optimum import available

    if available():
        from modelexport.exporter.optimum.ort_class import load_ort_model

        row.loader = family.ort_class
        return load_ort_model(out, family.ort_class)
    import modelexport

    row.loader = "modelexport.load"
    return modelexport.load(out)


def _compare_outputs(family: Family, folder: Path, out: Path, row: FamilyRow) -> None:
    import torch
    import transformers

    inputs = _inputs(family, out)  # preprocessors from the exported folder: proves they were copied
    reference = getattr(transformers, family.torch_class).from_pretrained(folder).eval()
    ort_model = _loader(family, out, row)
    with torch.no_grad():
        expected = getattr(reference(**inputs), family.output).numpy()
    outputs = ort_model(**inputs)
    got = outputs[family.output] if isinstance(outputs, dict) else getattr(outputs, family.output)
    got = got.numpy() if hasattr(got, "numpy") else np.asarray(got)
    if got.shape != expected.shape:
        raise AssertionError(f"{family.output}: ONNX shape {got.shape} vs PyTorch {expected.shape}")
    row.ort_max_abs_diff = float(np.max(np.abs(got - expected)))


def _compare_generate(family: Family, folder: Path, out: Path, row: FamilyRow) -> None:
    import torch
    import transformers

    reference = getattr(transformers, family.torch_class).from_pretrained(folder).eval()
    ort_model = _loader(family, out, row)
    if family.inputs == "audio":
        extractor = transformers.AutoFeatureExtractor.from_pretrained(out)
        inputs = {"input_features": extractor(_audio(0), sampling_rate=16000, return_tensors="pt").input_features}
    else:
        ids = torch.tensor([[5, 6, 7, 8, 9, 10]])
        inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    settings = dict(max_new_tokens=12, do_sample=False, num_beams=1)
    with torch.no_grad():
        expected = reference.generate(**inputs, **settings)
    got = ort_model.generate(**inputs, **settings)
    row.tokens = [int(t) for t in expected[0]]
    row.same_tokens = expected.tolist() == np.asarray(got).tolist()


def build_family(family: Family, workdir: Path, nudge: bool = False) -> Path:
    """The family's model folder under ``workdir``; ``nudge``: every parameter made unique (see
    ``breadth.nudge_parameters``) so the parameter oracle can follow each one."""
    folder = workdir / (family.name.replace("/", "_") + "-model")
    folder.mkdir(parents=True, exist_ok=True)
    family.build(folder)
    if nudge:
        import transformers

        from modelexport.testing.breadth import nudge_parameters

        model = getattr(transformers, family.torch_class).from_pretrained(folder)
        nudge_parameters(model)
        model.save_pretrained(folder)
    return folder


def check_family(family: Family, workdir: Path, exporter: str = "auto", folder: Path | None = None) -> FamilyRow:
    """Build (unless ``folder`` is given), export and check one family; failures are recorded in
    the row, not raised."""
    import modelexport
    from modelexport.hierarchy.tags import read_tags

    row = FamilyRow(family.name, family.task, family.ort_class, exporter=exporter)
    out = workdir / f"{family.name.replace('/', '_')}-onnx-{exporter}"
    row.output = str(out)
    try:
        if folder is None:
            folder = build_family(family, workdir)
        start = time.perf_counter()
        result = modelexport.export(str(folder), out, task=family.task, exporter=exporter)
        row.export_seconds = time.perf_counter() - start
        row.path = result.exporter
        row.export_max_abs_diff = result.max_abs_diff
        row.export_passed = all(f.validation["passed"] for f in result.files if f.validation)
        for report in result.files:
            row.warnings += report.warnings
            tags = read_tags(out / report.name)
            row.files.append(report.name)
            row.file_roots[report.name] = report.root_module
            row.nodes += report.nodes
            row.direct += report.coverage["direct"]
            row.inferred += report.coverage["inferred"]
            row.root_fallback += report.coverage["root_fallback"]
            row.untagged_nodes += sum(t.module_path is None or t.hierarchy_tag is None for t in tags)
        row.copied = sorted(name for a in result.artifacts if a["status"] == "written" for name in a["files"])
        row.missing_files = [f for f in family.expect_files if not (out / f).is_file()]
        if family.check == "generate":
            _compare_generate(family, folder, out, row)
        else:
            _compare_outputs(family, folder, out, row)
    except Exception as e:  # recorded: the table lists failures with their error
        row.error = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"[:300]
        row.error += "\n" + traceback.format_exc(limit=3)[-600:]
    return row
