"""The non-ONNX files an Optimum-loadable folder needs: config, preprocessors, generation config.

Each is tried on its own and recorded: which files it wrote, or why it wrote none. Only the
exceptions the loaders raise for "this model has none" are caught; anything else is a bug and
propagates.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
import os
import shutil
import tempfile
from pathlib import Path

# What transformers' Auto* loaders raise when a model has no such preprocessor.
_ABSENT = (OSError, ValueError, KeyError, TypeError, AttributeError, ImportError)


@dataclass
class ArtifactRecord:
    kind: str  # config, tokenizer, image_processor, feature_extractor, processor, generation_config
    status: str  # "written" or "skipped"
    files: list[str] = field(default_factory=list)
    reason: str = ""


def _save(kind: str, obj, output_dir: Path, records: list[ArtifactRecord]) -> None:
    # Save into an empty scratch folder first so the record names exactly this object's files,
    # even where Optimum already wrote a file of the same name.
    with tempfile.TemporaryDirectory(dir=output_dir, prefix=".artifact-") as scratch:
        obj.save_pretrained(scratch)
        names = sorted(p.name for p in Path(scratch).iterdir())
        for name in names:
            target = output_dir / name
            if target.is_dir():
                shutil.rmtree(target)
            os.replace(Path(scratch) / name, target)
    records.append(ArtifactRecord(kind, "written", names))


def _first_line(text: str) -> str:
    return next((line.strip() for line in text.splitlines() if line.strip()), "")


def _skip(kind: str, reason: str, records: list[ArtifactRecord]) -> None:
    records.append(ArtifactRecord(kind, "skipped", reason=_first_line(reason)[:300]))


_WHAT = {"tokenizer": "tokenizer files", "image_processor": "image processor (preprocessor_config.json)",
         "feature_extractor": "feature extractor (preprocessor_config.json)",
         "processor": "processor", "generation_config": "generation_config.json"}


def _absent(kind: str, e: Exception, source_path: str) -> str:
    """Why a preprocessor was not written, in words. transformers answers "not there" with an
    OSError whose text is a Hub URL built from the local path: that is noise to a user."""
    where = "the folder" if Path(source_path).is_dir() else "the model"
    if isinstance(e, ImportError):
        return f"{where} has a {kind.replace('_', ' ')} that needs a missing package: {_first_line(str(e))}"
    if isinstance(e, OSError) or "does not appear to have" in str(e) or "Unrecognized" in str(e):
        return f"{where} has no {_WHAT[kind]}"
    return f"{where} has no usable {_WHAT[kind]} ({type(e).__name__}: {_first_line(str(e))})"


# Files a saved tokenizer leaves; a folder with none of them has no tokenizer.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json", "merges.txt",
                   "spiece.model", "sentencepiece.bpe.model", "tokenizer.model", "special_tokens_map.json")


def has_tokenizer_files(folder: Path) -> bool:
    return any((folder / name).is_file() for name in TOKENIZER_FILES) or any(folder.glob("*.tiktoken"))


def write_artifacts(source_path: str | None, config, output_dir: Path, trust_remote_code: bool = False,
                    generation_config=None) -> list[ArtifactRecord]:
    """Write config.json and every preprocessor the model has into ``output_dir``."""
    from transformers import (
        AutoFeatureExtractor,
        AutoImageProcessor,
        AutoProcessor,
        AutoTokenizer,
        GenerationConfig,
    )
    from transformers.tokenization_utils_base import PreTrainedTokenizerBase

    records: list[ArtifactRecord] = []
    _save("config", config, output_dir, records)

    if source_path is None:
        for kind in ("tokenizer", "image_processor", "feature_extractor", "processor"):
            _skip(kind, "model was passed as an object: no folder to read preprocessors from", records)
    else:
        loaded = []
        for kind, loader in (
            ("tokenizer", AutoTokenizer),
            ("image_processor", AutoImageProcessor),
            ("feature_extractor", AutoFeatureExtractor),
        ):
            if kind == "feature_extractor" and any(r.kind == "image_processor" and r.status == "written"
                                                   for r in records):
                # For vision models AutoFeatureExtractor returns the deprecated *FeatureExtractor
                # alias of the image processor and would overwrite its preprocessor_config.json
                # with that class name (transformers 5 removes those aliases).
                _skip(kind, "the image processor already written is this model's preprocessor", records)
                continue
            if kind == "tokenizer" and Path(source_path).is_dir() and not has_tokenizer_files(Path(source_path)):
                # transformers 5 answers a folder without tokenizer files with an empty default
                # tokenizer of the model's class (T5: 104 special tokens): not the model's own
                _skip(kind, "the folder has no tokenizer files", records)
                continue
            try:
                obj = loader.from_pretrained(source_path, trust_remote_code=trust_remote_code)
            except _ABSENT as e:
                _skip(kind, _absent(kind, e, source_path), records)
                continue
            loaded.append(type(obj))
            _save(kind, obj, output_dir, records)
        # AutoProcessor falls back to the tokenizer / feature extractor it finds, so a processor
        # adds something only when it combines parts or has its own config file.
        has_processor_file = Path(source_path, "processor_config.json").is_file()
        if len(loaded) < 2 and not has_processor_file and Path(source_path).is_dir():
            _skip("processor", "no multi-part processor (at most one preprocessor and no processor_config.json)",
                  records)
        else:
            try:
                processor = AutoProcessor.from_pretrained(source_path, trust_remote_code=trust_remote_code)
            except _ABSENT as e:
                _skip("processor", _absent("processor", e, source_path), records)
            else:
                if isinstance(processor, PreTrainedTokenizerBase) or type(processor) in loaded:
                    _skip("processor", f"same as the {type(processor).__name__} already written", records)
                else:
                    _save("processor", processor, output_dir, records)

    if generation_config is None and source_path is not None:
        try:
            generation_config = GenerationConfig.from_pretrained(source_path)
        except _ABSENT as e:
            _skip("generation_config", _absent("generation_config", e, source_path), records)
    if generation_config is not None:
        _save("generation_config", generation_config, output_dir, records)
    elif source_path is None:
        _skip("generation_config", "model has none", records)
    return records


def records_as_dicts(records: list[ArtifactRecord]) -> list[dict]:
    return [asdict(r) for r in records]


# Files of an exported folder that a derived folder (optimized, quantized) writes anew.
def _is_model_file(relative: Path) -> bool:
    name = relative.name
    return len(relative.parts) == 1 and (name.endswith((".onnx", ".onnx_data", ".onnx.data"))
                                         or name.startswith("modelexport_"))


def copy_side_files(src: Path, dst: Path) -> list[str]:
    """Copy every file of ``src`` into ``dst`` except its ONNX files, their weights and our own
    metadata and reports, subfolders included (a sentence-transformers folder's ``1_Pooling/``,
    ``2_Normalize/``): a derived folder loads wherever the source did. Returns what was copied."""
    copied = []
    for path in sorted(Path(src).rglob("*")):
        relative = path.relative_to(src)
        if relative.parts[0].startswith(".") or _is_model_file(relative):
            continue  # hidden: staging folders and probes of a run in progress
        target = Path(dst) / relative
        if path.is_dir():
            target.mkdir(parents=True, exist_ok=True)
        elif path.is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)
            copied.append(str(relative))
    return copied
