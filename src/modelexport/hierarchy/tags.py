"""Reading and writing module tags on ONNX nodes: the only place that touches the keys.

Tags live in the node's standard ``metadata_props`` so every ONNX tool accepts the file.
Import cost matters here: this module needs only ``onnx``, never torch.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import onnx

MODULE_PATH_KEY = "module_path"
HIERARCHY_TAG_KEY = "hierarchy_tag"
# Model Explorer's ONNX adapter (model-explorer-onnx 0.4: get_node_namespace) groups nodes into
# layers by this key, split on "/": writing it makes the viewer's layers follow the modules.
NAMESPACE_KEY = "namespace"
TAG_KEYS = (MODULE_PATH_KEY, HIERARCHY_TAG_KEY, NAMESPACE_KEY)


@dataclass(frozen=True)
class NodeTag:
    node_name: str
    op_type: str
    module_path: str | None  # None when the node carries no tag
    hierarchy_tag: str | None
    graph_path: str  # "" for the main graph, "If_0/then_branch" for a subgraph
    namespace: str | None = None  # Model Explorer's layer path


def iter_nodes(graph: onnx.GraphProto, graph_path: str = "") -> Iterator[tuple[onnx.NodeProto, str]]:
    """Every node of a graph and of its subgraphs (If/Loop/Scan bodies), depth first."""
    for node in graph.node:
        yield node, graph_path
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from iter_nodes(attr.g, f"{graph_path}{text(node.name)}/{text(attr.name)}/")
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for i, sub in enumerate(attr.graphs):
                    yield from iter_nodes(sub, f"{graph_path}{text(node.name)}/{text(attr.name)}.{i}/")


def write_tag(node: onnx.NodeProto, module_path: str, hierarchy_tag: str, namespace: str | None = None) -> None:
    """Set our tags on a node, replacing earlier values of our keys and keeping any others."""
    kept = [(p.key, p.value) for p in node.metadata_props if p.key not in TAG_KEYS]
    del node.metadata_props[:]
    for key, value in kept:
        node.metadata_props.add(key=key, value=value)
    node.metadata_props.add(key=MODULE_PATH_KEY, value=module_path)
    node.metadata_props.add(key=HIERARCHY_TAG_KEY, value=hierarchy_tag)
    if namespace is not None:
        node.metadata_props.add(key=NAMESPACE_KEY, value=namespace)


def namespace_for(root_class: str, module_path: str) -> str:
    """Model Explorer namespace: the root class, then one layer per module name.

    Module names, not class names, so that siblings of one class (query/key/value, all
    ``Linear``) stay separate layers; a ModuleList index stays with its name (``layer.1``).
    """
    parts = [root_class]
    for atom in module_path.split(".") if module_path else ():
        if atom.isnumeric() and len(parts) > 1:
            parts[-1] = f"{parts[-1]}.{atom}"
        else:
            parts.append(atom)
    return "/".join(parts)


def text(value) -> str:
    """A string field as ``str``. ONNX's string fields are proto2 (no UTF-8 check on parse): for a
    file whose bytes are not valid UTF-8 there, protobuf hands back ``bytes``."""
    return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else value


def node_tag(node: onnx.NodeProto, graph_path: str = "") -> NodeTag:
    props = {text(p.key): text(p.value) for p in node.metadata_props}
    return NodeTag(
        text(node.name), text(node.op_type), props.get(MODULE_PATH_KEY), props.get(HIERARCHY_TAG_KEY),
        text(graph_path).rstrip("/"), props.get(NAMESPACE_KEY)
    )


def read_tags(model: onnx.ModelProto | str) -> list[NodeTag]:
    """The tags of every node (subgraphs included) of a model or an ONNX file path.

    External weights are not loaded: tags live in the graph, not in the data.
    """
    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(str(model), load_external_data=False)
    return [node_tag(node, path) for node, path in iter_nodes(model.graph)]
