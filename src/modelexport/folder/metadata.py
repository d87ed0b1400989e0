"""``modelexport_metadata.json``: what was exported, how, and how well it was tagged."""
from __future__ import annotations

import json
import platform
from pathlib import Path

SCHEMA_VERSION = 1
METADATA_FILE = "modelexport_metadata.json"


def tool_versions() -> dict:
    from modelexport.compat import installed_version

    return {
        "modelexport": installed_version("modelexport"),
        "python": platform.python_version(),
        **{p: installed_version(p) for p in ("torch", "transformers", "optimum", "optimum-onnx", "onnx",
                                             "onnxruntime", "onnxscript", "sentence-transformers")},
    }


def node_totals(node_counts_by_file: dict[str, dict[str, int]]) -> dict[str, dict[str, int]]:
    """Nodes of each module and its descendants, per file: each module's own count is added to
    itself and every ancestor (module paths are dotted, so ancestors are their prefixes)."""
    totals: dict[str, dict[str, int]] = {}
    for file, counts in node_counts_by_file.items():
        for path, n in counts.items():
            atoms = path.split(".") if path else []
            for i in range(len(atoms) + 1):
                per_file = totals.setdefault(".".join(atoms[:i]), {})
                per_file[file] = per_file.get(file, 0) + n
    return totals


def module_table(tree, node_counts_by_file: dict[str, dict[str, int]]) -> list[dict]:
    totals = node_totals(node_counts_by_file)
    rows = []
    for info in tree:
        counts = {f: c[info.path] for f, c in node_counts_by_file.items() if info.path in c}
        rows.append({
            "module_path": info.path,
            "class": info.class_name,
            "hierarchy_tag": info.tag,
            "parent": info.parent,
            "parameters": info.parameters,
            "own_parameters": info.own_parameters,
            "nodes": counts,  # nodes tagged with exactly this module, per file
            "nodes_total": totals.get(info.path, {}),  # this module and its descendants, per file
        })
    return rows


# -- the one writer ----------------------------------------------------------------------------
# Every verb that writes ``modelexport_metadata.json`` goes through ``write_metadata`` (a new
# document: export), ``derive_metadata`` (a folder made from another: optimize, quantize) or
# ``update_metadata`` (a change to a folder's own file: what a quantization search decided).


def _write_document(path: Path, document: dict) -> Path:
    """Schema keys first, written to a temporary file and renamed: a reader never sees half a file."""
    document = {"schema": "modelexport.metadata", "schema_version": SCHEMA_VERSION,
                **{k: v for k, v in document.items() if k not in ("schema", "schema_version")}}
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(document, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    tmp.replace(path)
    return path


def write_metadata(output_dir: Path, document: dict) -> Path:
    """Write a new metadata file for ``output_dir`` (the export's document, without the schema keys)."""
    return _write_document(Path(output_dir) / METADATA_FILE, document)


def derive_metadata(source: Path, output_dir: Path, step: dict, files: dict[str, dict],
                    node_counts: dict[str, dict[str, int]]) -> Path:
    """The metadata of a folder made from ``source`` (optimize, quantize): the source's document
    with ``step`` appended to ``transforms``, each file's entry updated with ``files[name]``, and
    the per-module node counts (``nodes``, ``nodes_total``) recomputed from ``node_counts`` (file ->
    module path -> nodes tagged with exactly it). A source without metadata starts an empty one."""
    meta, _ = read_metadata(source)
    document = json.loads(json.dumps(meta.raw)) if meta is not None else {"modules": []}
    document.setdefault("transforms", []).append(step)
    totals = node_totals(node_counts)
    for row in document.get("modules", []):
        path = row["module_path"]
        row["nodes"] = {name: c[path] for name, c in node_counts.items() if path in c}
        row["nodes_total"] = totals.get(path, {})
    entries = document.setdefault("files", {})
    for name, entry in files.items():
        entries.setdefault(name, {}).update(entry)
    for name in [n for n in entries if n not in files and not (Path(output_dir) / n).is_file()]:
        del entries[name]  # a file the step left out (optimize: a merged decoder)
    return _write_document(Path(output_dir) / METADATA_FILE, document)


def update_metadata(folder: Path, change) -> Path:
    """Apply ``change(document)`` (a function editing the dict in place) to ``folder``'s metadata
    file and write it back."""
    path = Path(folder) / METADATA_FILE
    document = json.loads(path.read_text(encoding="utf-8"))
    change(document)
    return _write_document(path, document)


def update_last_transform(folder: Path, **fields) -> Path:
    """Add ``fields`` to the last entry of ``transforms`` (the step that made ``folder``)."""
    def change(document: dict) -> None:
        steps = document.setdefault("transforms", [])
        if not steps:
            steps.append({})
        steps[-1].update(fields)

    return update_metadata(folder, change)


class ExportMetadata:
    """Typed reads of ``modelexport_metadata.json`` (written by ``write_metadata`` above): every
    verb that reads the file goes through here, so its keys are spelled in one place."""

    def __init__(self, raw: dict):
        self.raw = raw

    def _dict(self, key: str) -> dict:
        value = self.raw.get(key)
        return value if isinstance(value, dict) else {}

    @property
    def task(self) -> str | None:
        return self.raw.get("task")

    @property
    def library(self) -> str | None:
        return self.raw.get("library")

    @property
    def ort_model_class(self) -> str | None:
        return self.raw.get("ort_model_class")

    @property
    def exporter(self) -> str:
        """The trace that wrote the files; folders from before the dynamo path are TorchScript."""
        return self.raw.get("exporter") or "torchscript"

    @property
    def opset(self) -> int | None:
        return self.raw.get("opset")

    @property
    def static_shapes(self) -> dict:
        return self._dict("static_shapes")

    @property
    def source(self) -> dict:
        return self._dict("source")

    @property
    def tool_versions(self) -> dict:
        return self._dict("tool_versions")

    @property
    def files(self) -> dict[str, dict]:
        return self._dict("files")

    def file(self, name: str) -> dict | None:
        entry = self.files.get(name)
        return entry if isinstance(entry, dict) else None

    @property
    def modules(self) -> list[dict]:
        rows = self.raw.get("modules")
        return [r for r in rows if isinstance(r, dict) and "module_path" in r] if isinstance(rows, list) else []

    def modules_by_path(self) -> dict[str, dict]:
        return {row["module_path"]: row for row in self.modules}

    @property
    def artifacts(self) -> list[dict]:
        rows = self.raw.get("artifacts")
        return [r for r in rows if isinstance(r, dict)] if isinstance(rows, list) else []


def read_metadata(folder: Path) -> tuple[ExportMetadata | None, str | None]:
    """The folder's metadata, or None and why not (absent, not JSON, not ours)."""
    path = Path(folder) / METADATA_FILE
    if not path.is_file():
        return None, f"no {METADATA_FILE} in {folder}"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        return None, f"{path} is not valid JSON ({e})"
    except OSError as e:
        return None, f"cannot read {path}: {e.strerror or e}"
    if not isinstance(data, dict) or data.get("schema") != "modelexport.metadata":
        return None, f"{path} is not a modelexport metadata file"
    return ExportMetadata(data), None
