"""``report --html`` in a real browser (headless Chromium): the rendered DOM, the console, a
screenshot kept as a test artifact, and names from the model that must stay text."""
from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from pathlib import Path

import onnx
from onnx import TensorProto, helper

from browser import render, screenshot
from modelexport.cli.main import main as cli

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"


class Rows(HTMLParser):
    """The tree rows and icicle blocks of the rendered page, with each row's cell texts."""

    def __init__(self):
        super().__init__()
        self.rows: dict[str, list[str]] = {}
        self.blocks: list[str] = []
        self._row = None
        self._cell = None
        self.render_ms = None
        self.body: dict = {}

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "body":
            self.body = a
            self.render_ms = float(a["data-render-ms"]) if "data-render-ms" in a else None
        if tag == "tr" and "data-path" in a:
            self._row = a["data-path"]
            self.rows[self._row] = []
        elif tag == "td" and self._row is not None:
            self._cell = []
        elif tag == "div" and "blk" in (a.get("class") or "").split():
            self.blocks.append(a.get("data-path"))

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)

    def handle_endtag(self, tag):
        if tag == "td" and self._cell is not None and self._row is not None:
            self.rows[self._row].append("".join(self._cell).strip())
            self._cell = None
        elif tag == "tr":
            self._row = None


def test_minilm_report_with_profile_in_chromium(minilm_export, tmp_path, capsys):
    out, _ = minilm_export
    assert cli(["profile", str(out), "--runs", "3", "--warmup", "1", "--format", "json"]) == 0
    (tmp_path / "profile.json").write_text(capsys.readouterr().out)
    page = tmp_path / "report.html"
    assert cli(["report", str(out), "--html", "--profile", str(tmp_path / "profile.json"), "-o", str(page)]) == 0
    capsys.readouterr()
    text = page.read_text()
    assert "http://" not in text.replace("http://www.w3.org", "") and "https://" not in text  # nothing fetched
    dom, console = render(page)
    assert console == [], console
    parsed = Rows()
    parsed.feed(dom)
    analysis = json.loads(_analysis_json(out, capsys))
    assert set(parsed.rows) == {m["module_path"] for m in analysis["files"]["model.onnx"]["modules"]}
    layers = [f"0.model.encoder.layer.{i}" for i in range(6)]
    shares = []
    for layer in layers:
        cells = parsed.rows[layer]
        assert cells[1] == "BertLayer" and int(cells[3]) > 0  # class, nodes total
        shares.append(float(cells[-1]))  # time % of the run
    assert all(s > 5 for s in shares) and sum(shares) < 100
    assert set(layers) <= set(parsed.blocks) and "" in parsed.blocks
    assert parsed.render_ms is not None
    screenshot(page, ARTIFACTS / "report-minilm.png")
    assert (ARTIFACTS / "report-minilm.png").stat().st_size > 10_000


def _analysis_json(out, capsys) -> str:
    assert cli(["analyze", str(out), "--format", "json"]) == 0
    return capsys.readouterr().out


HOSTILE = '<script>document.body.setAttribute("data-pwned","1")</script></script><img src=x onerror=alert(1)>'


def test_hostile_names_show_as_text(tmp_path, capsys):
    node = helper.make_node("Relu", ["x"], ["y"], name="n")
    node.metadata_props.add(key="module_path", value=f"enc.{HOSTILE}")
    node.metadata_props.add(key="hierarchy_tag", value=f"/M/{HOSTILE}")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    path = tmp_path / "hostile.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    assert cli(["report", str(path), "--html"]) == 0
    capsys.readouterr()
    dom, console = render(tmp_path / "hostile.html")
    assert console == [], console
    parsed = Rows()
    parsed.feed(dom)
    assert "data-pwned" not in parsed.body and parsed.render_ms is not None  # no injected script ran
    assert f"enc.{HOSTILE}" in parsed.rows  # the whole name, as text
    assert any(HOSTILE in cell for cell in parsed.rows[f"enc.{HOSTILE}"])


def test_overlays_load_in_model_explorer_and_map_to_its_nodes(tiny_bert_export, tmp_path, capsys):
    from model_explorer.node_data_builder import GradientItem, GraphNodeData, NodeDataResult
    from model_explorer_onnx.main import ONNXAdapter

    out, _ = tiny_bert_export
    assert cli(["profile", str(out), "--runs", "2", "--overlay", str(tmp_path / "time.json"), "--format", "json"]) == 0
    assert cli(["diff", str(out), str(out), "--overlay", str(tmp_path / "error.json"), "--format", "json"]) == 0
    capsys.readouterr()
    graphs = ONNXAdapter().convert(str(out / "model.onnx"), {})["graphs"]
    node_ids = {n.id for g in graphs for n in g.nodes}
    for overlay in ("time.json", "error.json"):
        doc = json.loads((tmp_path / overlay).read_text())
        assert set(doc) == {g.id for g in graphs}
        for data in doc.values():
            # Model Explorer's own dataclasses take the document as it is
            built = GraphNodeData(results={k: NodeDataResult(**v) for k, v in data["results"].items()},
                                  name=data["name"], gradient=[GradientItem(**g) for g in data["gradient"]])
            assert built.results and set(built.results) <= node_ids
    time_values = json.loads((tmp_path / "time.json").read_text())["main_graph"]["results"]
    assert any(v["value"] > 0 for v in time_values.values())


def test_multi_file_folder_gets_one_tab_per_file(t5_export, tmp_path, capsys):
    page = tmp_path / "t5.html"
    assert cli(["report", str(t5_export), "--html", "-o", str(page)]) == 0
    capsys.readouterr()
    dom, console = render(page)
    assert console == [], console
    tabs = re.findall(r'<button type="button"[^>]*>([^<]+)</button>', dom)
    assert tabs == sorted(p.name for p in t5_export.glob("*.onnx"))
    parsed = Rows()
    parsed.feed(dom)
    assert "decoder.block.0" in parsed.rows and "encoder.block.0" not in parsed.rows  # the first tab: decoder_model


def test_error_columns_from_a_diff(tiny_bert_export, tmp_path, capsys):
    out, _ = tiny_bert_export
    assert cli(["quantize", str(out), "-o", str(tmp_path / "q")]) == 0
    capsys.readouterr()
    assert cli(["diff", str(out), str(tmp_path / "q"), "--format", "json"]) == 0
    (tmp_path / "diff.json").write_text(capsys.readouterr().out)
    page = tmp_path / "r.html"
    assert cli(["report", str(out), "--html", "--diff", str(tmp_path / "diff.json"), "-o", str(page)]) == 0
    capsys.readouterr()
    dom, console = render(page)
    assert console == [], console
    assert "<th>added rel L2</th>" in dom
    parsed = Rows()
    parsed.feed(dom)
    assert float(parsed.rows["bert.encoder.layer.0"][-2]) > 0  # rel L2 of the layer, from the diff
