"""GraphML with one nested graph per module, so yEd or Gephi can fold the graph by module.

Written as a stream in one pass over modules and nodes (linear in the graph size), with every
name escaped for XML and characters XML 1.0 cannot hold replaced.
"""
from __future__ import annotations

import re
from xml.sax.saxutils import escape, quoteattr

from modelexport.hierarchy.tags import iter_nodes, node_tag
from modelexport.inspect.analysis import UNTAGGED, FileAnalysis

_INVALID_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff\ud800-\udfff]")

KEYS = (("d_kind", "kind"), ("d_op", "op_type"), ("d_module", "module_path"), ("d_tag", "hierarchy_tag"),
        ("d_name", "name"), ("d_tensor", "tensor"))


def _text(value) -> str:
    return escape(_INVALID_XML.sub("\ufffd", str(value)))


def _attr(value) -> str:
    return quoteattr(_INVALID_XML.sub("\ufffd", str(value)))


def write_graphml(model, analysis: FileAnalysis, out) -> dict:
    """Write GraphML for one ONNX model to the text stream ``out``; returns counts."""
    nodes_by_module: dict[str, list[tuple[int, object]]] = {}
    producers: dict[str, int] = {}
    all_nodes = []
    for i, (node, graph_path) in enumerate(iter_nodes(model.graph)):
        tag = node_tag(node, graph_path)
        path = tag.module_path if tag.module_path is not None else UNTAGGED
        nodes_by_module.setdefault(path, []).append((i, tag))
        all_nodes.append(node)
        for name in node.output:
            if name:
                producers[name] = i

    out.write('<?xml version="1.0" encoding="UTF-8"?>\n'
              '<graphml xmlns="http://graphml.graphdrawing.org/xmlns">\n')
    for key_id, name in KEYS:
        target = "edge" if name == "tensor" else "node"
        out.write(f'  <key id="{key_id}" for="{target}" attr.name="{name}" attr.type="string"/>\n')
    out.write('  <graph id="G" edgedefault="directed">\n')

    def write_module(path: str, indent: str) -> None:
        stats = analysis.modules[path]
        module_id = _attr(f"m:{path}")
        # yfiles.foldertype="group": yEd's mark of a group node (foldable), which networkx's
        # reader also needs to descend into the nested graph.
        out.write(f'{indent}<node id={module_id} yfiles.foldertype="group">\n')
        out.write(f'{indent}  <data key="d_kind">module</data>\n')
        out.write(f'{indent}  <data key="d_module">{_text(path)}</data>\n')
        if stats.hierarchy_tag:
            out.write(f'{indent}  <data key="d_tag">{_text(stats.hierarchy_tag)}</data>\n')
        out.write(f"{indent}  <graph id={_attr(f'g:{path}')} edgedefault=\"directed\">\n")
        for i, tag in nodes_by_module.get(path, ()):
            out.write(f"{indent}    <node id=\"n{i}\">"
                      f'<data key="d_kind">op</data><data key="d_op">{_text(tag.op_type)}</data>'
                      f'<data key="d_name">{_text(tag.node_name)}</data>'
                      f'<data key="d_module">{_text(tag.module_path if tag.module_path is not None else "")}</data>'
                      f'<data key="d_tag">{_text(tag.hierarchy_tag or "")}</data></node>\n')
        for child in stats.children:
            write_module(child, indent + "    ")
        out.write(f"{indent}  </graph>\n{indent}</node>\n")

    write_module("", "    ")
    edges = 0
    for j, node in enumerate(all_nodes):
        for name in node.input:
            i = producers.get(name)
            if i is not None:
                out.write(f'    <edge source="n{i}" target="n{j}"><data key="d_tensor">{_text(name)}</data></edge>\n')
                edges += 1
    out.write("  </graph>\n</graphml>\n")
    return {"nodes": len(all_nodes), "modules": len(analysis.modules), "edges": edges}
