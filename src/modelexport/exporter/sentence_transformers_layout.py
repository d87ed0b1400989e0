"""Make a sentence-transformers export load in ``SentenceTransformer(folder, backend="onnx")`` too.

Optimum exports a sentence-transformers model as one graph with outputs ``token_embeddings`` and
``sentence_embedding`` (loaded by ``ORTModelForCustomTasks``). sentence-transformers' ONNX
backend instead loads the file with ``ORTModelForFeatureExtraction``, reads its
``last_hidden_state`` and runs its own Pooling / Normalize modules, configured by
``modules.json`` and each module's folder. So the folder gets:
- one more graph output, ``last_hidden_state``: an Identity of ``token_embeddings``, tagged with
  the module that produced it (no weights are copied; the Optimum outputs are unchanged);
- the sentence-transformers files of the source: ``modules.json``, its configs, and the folder
  of every module after the first (Pooling, Normalize, Dense...).
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

TOKEN_OUTPUT, ALIAS_OUTPUT = "token_embeddings", "last_hidden_state"
_TOP_FILES = ("modules.json", "config_sentence_transformers.json", "sentence_bert_config.json")


def add_last_hidden_state(splice) -> bool:
    """Append ``last_hidden_state = Identity(token_embeddings)`` to an open ``NodeSplice`` (written
    with the tags, in one rewrite); False when the graph has no ``token_embeddings`` output or
    already has the alias."""
    import onnx

    outputs = {o.name: o for o in splice.graph_outputs()}
    if TOKEN_OUTPUT not in outputs or ALIAS_OUTPUT in outputs:
        return False
    producer = next((n for n in splice.graph.node if TOKEN_OUTPUT in n.output), None)
    # Named in the producer's scope, so the tagging pass (which runs after) gives the alias
    # the module of the value it repeats.
    scope = producer.name.rpartition("/")[0] if producer is not None and producer.name.startswith("/") else ""
    splice.graph.node.append(onnx.helper.make_node("Identity", [TOKEN_OUTPUT], [ALIAS_OUTPUT],
                                                   name=f"{scope}/Identity_{ALIAS_OUTPUT}"))
    alias = onnx.ValueInfoProto()
    alias.CopyFrom(outputs[TOKEN_OUTPUT])
    alias.name = ALIAS_OUTPUT
    splice.added_outputs.append(alias)
    return True


def copy_module_files(source: Path, output_dir: Path) -> list[str]:
    """Copy modules.json, the sentence-transformers configs and the later modules' folders."""
    written = []
    modules_file = source / "modules.json"
    if not modules_file.is_file():
        return written
    for name in _TOP_FILES:
        if (source / name).is_file():
            shutil.copyfile(source / name, output_dir / name)
            written.append(name)
    try:
        modules = json.loads(modules_file.read_text(encoding="utf-8"))
    except ValueError:
        return written
    for module in modules if isinstance(modules, list) else []:
        sub = module.get("path") if isinstance(module, dict) else None
        if not sub or not isinstance(sub, str) or Path(sub).is_absolute() or ".." in Path(sub).parts:
            continue  # the transformer itself lives at the top (config and tokenizer written already)
        src = source / sub
        if not src.is_dir():
            continue
        for path in sorted(src.rglob("*")):
            if path.is_file():  # weights too: sentence-transformers runs these modules in PyTorch
                target = output_dir / sub / path.relative_to(src)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, target)
                written.append(str(target.relative_to(output_dir)))
        if not (output_dir / sub).exists():
            (output_dir / sub).mkdir(parents=True)  # an empty module folder stays a folder
    return written
