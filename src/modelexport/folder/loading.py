"""Open what a user points an inspect command at: one ONNX file, or an exported folder.

Only ``onnx`` is imported (no torch/transformers/optimum), so read-only commands start fast.
Weights in external data files are not loaded: tags, nodes and tensor shapes live in the graph.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from modelexport.errors import ModelExportError
from modelexport.folder.metadata import METADATA_FILE, ExportMetadata, read_metadata


@dataclass
class OnnxFile:
    name: str  # relative to the folder (or the file name)
    path: Path
    model: object  # onnx.ModelProto


@dataclass
class Target:
    path: Path
    folder: Path  # the folder holding the files (the file's parent for a single file)
    files: list[OnnxFile]
    metadata: ExportMetadata | None = None
    metadata_problem: str | None = None  # why metadata is None, when a folder was given
    is_folder: bool = False
    notes: list[str] = field(default_factory=list)


def load_onnx(path: Path):
    import onnx
    from google.protobuf.message import DecodeError

    try:
        model = onnx.load(str(path), load_external_data=False)
    except (DecodeError, ValueError, RuntimeError, TypeError, UnicodeDecodeError) as e:
        raise ModelExportError(f"{path} is not an ONNX model ({type(e).__name__}: {str(e)[:120]})") from e
    except OSError as e:
        raise ModelExportError(f"cannot read {path}: {e.strerror or e}") from e
    # Random bytes can parse as an (almost) empty ModelProto: a real one has a graph.
    if not model.HasField("graph") or model.ir_version <= 0:
        raise ModelExportError(f"{path} is not an ONNX model (no graph or IR version in it)")
    return model


def load_target(path) -> Target:
    path = Path(path)
    if not path.exists():
        raise ModelExportError(f"no such file or folder: {path}")
    if path.is_dir():
        onnx_paths = sorted(path.glob("*.onnx"))
        if not onnx_paths:
            raise ModelExportError(f"{path} holds no .onnx file")
        files = [OnnxFile(p.name, p, load_onnx(p)) for p in onnx_paths]
        metadata, problem = read_metadata(path)
        return Target(path, path, files, metadata, problem, is_folder=True)
    model = load_onnx(path)
    metadata, problem = read_metadata(path.parent)
    if metadata is not None and metadata.file(path.name) is None:
        metadata, problem = None, f"{METADATA_FILE} beside {path.name} does not describe it"
    return Target(path, path.parent, [OnnxFile(path.name, path, model)], metadata, problem)
