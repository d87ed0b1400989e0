"""``validate``: real checks of an exported file or folder, each pass / fail / skip with a reason."""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from modelexport.hierarchy.tags import iter_nodes, node_tag

PASS, FAIL, SKIP = "pass", "fail", "skip"
# The checks that only a folder modelexport wrote can pass (an untagged ONNX file fails them).
TAG_CHECKS = ("modelexport_metadata.json present and readable", "every node tagged",
              "tags match modelexport_metadata.json", "module paths exist in the module tree")


@dataclass
class Check:
    name: str
    status: str
    detail: str = ""
    file: str | None = None

    def as_dict(self) -> dict:
        return asdict(self)


def _checker(f) -> Check:
    import onnx

    from modelexport.inspect.checker import check_file

    try:
        ort_ops = check_file(f.path, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError, ValueError, RuntimeError) as e:
        return Check("onnx checker (full)", FAIL, str(e).strip().splitlines()[0][:300], f.name)
    detail = f"{', '.join(ort_ops)}: ONNX Runtime's op in the ONNX domain, checked as its contrib op" if ort_ops else ""
    return Check("onnx checker (full)", PASS, detail, f.name)


def _tags(f, meta) -> list[Check]:
    from modelexport.hierarchy.fingerprint import graph_fingerprint

    tags = [node_tag(n, p) for n, p in iter_nodes(f.model.graph)]
    untagged = [t for t in tags if t.module_path is None or t.hierarchy_tag is None]
    checks = [Check("every node tagged", FAIL if untagged or not tags else PASS,
                    f"{len(untagged)} of {len(tags)} nodes have no module_path/hierarchy_tag" if untagged
                    else f"{len(tags)} nodes", f.name)]
    if meta is None:
        checks.append(Check("tags match modelexport_metadata.json", SKIP, "no metadata for this file", f.name))
        checks.append(Check("module paths exist in the module tree", SKIP, "no metadata for this file", f.name))
        return checks
    file_meta = meta.file(f.name)
    if file_meta is None:
        checks.append(Check("tags match modelexport_metadata.json", FAIL, "file not listed in the metadata", f.name))
        return checks
    problems = []
    if file_meta.get("nodes") != len(tags):
        problems.append(f"metadata says {file_meta.get('nodes')} nodes, the graph has {len(tags)}")
    expected_sha = file_meta.get("graph_sha256")
    if expected_sha and graph_fingerprint(f.model.graph) != expected_sha:
        problems.append("graph structure differs from the exported one (file replaced or edited)")
    counts = Counter(t.module_path for t in tags if t.module_path is not None)
    modules = meta.modules_by_path()
    for path, row in modules.items():
        want = row.get("nodes", {}).get(f.name, 0)
        if counts.get(path, 0) != want:
            problems.append(f"module {path or '(root)'!r}: metadata {want} nodes, graph {counts.get(path, 0)}")
    checks.append(Check("tags match modelexport_metadata.json", FAIL if problems else PASS,
                        "; ".join(problems[:5]) + (f" (+{len(problems) - 5} more)" if len(problems) > 5 else ""),
                        f.name))
    unknown = sorted({t.module_path for t in tags if t.module_path is not None and t.module_path not in modules})
    wrong_tag = sorted({t.module_path for t in tags if t.module_path in modules
                        and t.hierarchy_tag != modules[t.module_path].get("hierarchy_tag")})
    detail = []
    if unknown:
        detail.append(f"{len(unknown)} module paths not in the tree, e.g. {unknown[0]!r}")
    if wrong_tag:
        detail.append(f"{len(wrong_tag)} modules with a hierarchy_tag other than the tree's, e.g. {wrong_tag[0]!r}")
    checks.append(Check("module paths exist in the module tree", FAIL if detail else PASS, "; ".join(detail),
                        f.name))
    return checks


def _runs(f, config: dict | None) -> Check:
    from modelexport.runtime.dummy_inputs import make_inputs
    from modelexport.runtime.sessions import new_session

    try:
        session = new_session(Path(f.path))  # ORT's log lines off: the failure is reported in the check
        feed = make_inputs(f.model, config)
        outputs = session.run(None, feed)
    except Exception as e:  # noqa: BLE001 - ORT raises its own exception types for every failure
        return Check("ONNX Runtime runs on dummy inputs", FAIL, f"{type(e).__name__}: {str(e)[:300]}", f.name)
    bad = [o.name for o, v in zip(session.get_outputs(), outputs)
           if np.issubdtype(np.asarray(v).dtype, np.floating) and np.isnan(v).any()] if outputs else []
    if bad:
        return Check("ONNX Runtime runs on dummy inputs", FAIL, f"NaN in outputs {bad[:3]}", f.name)
    shapes = ", ".join(f"{k}{list(v.shape)}" for k, v in list(feed.items())[:3])
    return Check("ONNX Runtime runs on dummy inputs", PASS, f"inputs {shapes}", f.name)


def _folder_checks(target, load_in_optimum: bool) -> list[Check]:
    folder = Path(target.folder)
    checks = []
    meta = target.metadata
    checks.append(Check("modelexport_metadata.json present and readable", PASS if meta else FAIL,
                        "" if meta else target.metadata_problem or ""))
    config_path = folder / "config.json"
    config = None
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
        checks.append(Check("config.json present and parseable", PASS, config.get("model_type", "")))
    except (OSError, ValueError) as e:
        checks.append(Check("config.json present and parseable", FAIL, f"{type(e).__name__}: {e}"[:300]))
    if meta:
        missing = [name for a in meta.artifacts if a.get("status") == "written"
                   for name in a.get("files", []) if not (folder / name).is_file()]
        checks.append(Check("config and preprocessor files the export wrote are present", FAIL if missing else PASS,
                            f"missing: {', '.join(missing)}" if missing else ""))
        missing_onnx = [name for name in meta.files if not (folder / name).is_file()]
        checks.append(Check("every ONNX file in the metadata is present", FAIL if missing_onnx else PASS,
                            f"missing: {', '.join(missing_onnx)}" if missing_onnx else ""))
        if load_in_optimum:
            checks.append(_ort_model_loads(folder, meta.ort_model_class))
        else:  # Optimum brings torch and transformers: seconds of imports that --no-run promises to skip
            checks.append(Check("Optimum ORTModel class loads the folder", SKIP, "not run (--no-run)"))
    return checks


def _ort_model_loads(folder: Path, class_name: str | None) -> Check:
    name = "Optimum ORTModel class loads the folder"
    if not class_name:
        return Check(name, SKIP, "the task has no Optimum ORTModel class")
    from modelexport.exporter.optimum import unavailable_reason

    reason = unavailable_reason()
    if reason is not None:  # not installed here is not a broken folder
        return Check(name, SKIP, f"not run: {reason}")
    try:
        from modelexport.exporter.optimum.ort_class import load_ort_model

        load_ort_model(folder, class_name)
    except Exception as e:  # report whatever Optimum raises, it is the answer to the check
        return Check(name, FAIL, f"{class_name}: {type(e).__name__}: {str(e).strip().splitlines()[0][:300]}")
    return Check(name, PASS, class_name)


def validate_target(target, run_onnxruntime: bool = True) -> list[Check]:
    checks: list[Check] = _folder_checks(target, run_onnxruntime) if target.is_folder else []
    try:
        config = json.loads((Path(target.folder) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        config = None
    for f in target.files:
        checker = _checker(f)
        checks.append(checker)
        checks += _tags(f, target.metadata)
        if run_onnxruntime and checker.status == FAIL:
            # A model the checker rejects is not handed to ONNX Runtime: malformed graphs are
            # where native code is least defended.
            checks.append(Check("ONNX Runtime runs on dummy inputs", SKIP, "not run: the checker failed", f.name))
        elif run_onnxruntime:
            checks.append(_runs(f, config if isinstance(config, dict) else None))
        else:  # said, not dropped: a skipped check is not a passed one
            checks.append(Check("ONNX Runtime runs on dummy inputs", SKIP, "not run (--no-run)", f.name))
    return checks
