"""``report --html`` in a real browser (headless Chromium): the rendered DOM, the console, a
screenshot kept as a test artifact, and names from the model that must stay text."""
from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from pathlib import Path

import onnx
import pytest
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
    assert all(s > 0 for s in shares) and sum(shares) < 100  # each layer took time (no timed thresholds)
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
    pytest.importorskip("model_explorer_onnx", reason="the view extra (Model Explorer) is not installed here")
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


# -- issue 23 ----------------------------------------------------------------------------------
LAYOUT = """
function lines(el){ var r = doc.createRange(); r.selectNodeContents(el); return Array.from(r.getClientRects()); }
function textRect(el){ var r = doc.createRange(); r.selectNodeContents(el); return r.getBoundingClientRect(); }
var heads = Array.from(doc.querySelectorAll('#head th')).map(function(th){
  var t = textRect(th); return {text: th.textContent, left: t.left, right: t.right, lines: lines(th).length}; });
var box = doc.querySelector('.tablebox') || doc.querySelector('table').parentNode;
var rows = Array.from(doc.querySelectorAll('#rows tr')).filter(function(tr){ return !tr.classList.contains('hide'); });
var cut = rows.filter(function(tr){ var c = tr.lastElementChild.getBoundingClientRect(); return c.right > win.innerWidth; }).length;
return {heads: heads, width: win.innerWidth, scrolls: box.scrollWidth > box.clientWidth, cut: cut,
        bytes: rows.slice(0, 3).map(function(tr){ return tr.children[5].textContent; })};
"""


def test_table_headers_and_numbers_fit_a_1400px_window(minilm_export, tmp_path, capsys):
    from browser import measure

    out, _ = minilm_export
    assert cli(["profile", str(out), "--runs", "1", "--warmup", "0", "--format", "json"]) == 0
    (tmp_path / "p.json").write_text(capsys.readouterr().out)
    assert cli(["diff", str(out), str(out), "--format", "json"]) == 0
    (tmp_path / "d.json").write_text(capsys.readouterr().out)
    page = tmp_path / "r.html"
    assert cli(["report", str(out), "--html", "--profile", str(tmp_path / "p.json"), "--diff",
                str(tmp_path / "d.json"), "-o", str(page)]) == 0
    capsys.readouterr()
    got = measure(page, LAYOUT, "1400,900")
    heads = got["heads"]
    assert [h["text"] for h in heads][-2:] == ["rel L2", "added rel L2"]
    for a, b in zip(heads, heads[1:]):  # each header on one line, apart from the next one
        assert a["lines"] == 1 and b["left"] - a["right"] >= 8, (a, b)
    assert heads[-1]["right"] <= got["width"] and not got["scrolls"] and got["cut"] == 0
    # bytes in binary units, as analyze prints them (86.1 MiB of weights for MiniLM)
    assert got["bytes"][0] == "86.1 MiB" and all(b.endswith(("MiB", "KiB", " B")) for b in got["bytes"])


def test_fused_module_shows_where_it_was_compared_not_another_modules_error(tiny_bert_export, tmp_path, capsys):
    out, _ = tiny_bert_export
    assert cli(["optimize", str(out), "-o", str(tmp_path / "o2"), "--level", "O2"]) == 0
    capsys.readouterr()
    assert cli(["diff", str(out), str(tmp_path / "o2"), "--format", "json"]) == 0
    text = capsys.readouterr().out
    (tmp_path / "d.json").write_text(text)
    modules = json.loads(text)["files"]["model.onnx"]["modules"]
    fused = [m for m in modules if m["boundary"] == "fused" and m["compared_at"]]
    assert fused
    page = tmp_path / "r.html"
    assert cli(["report", str(out), "--html", "--diff", str(tmp_path / "d.json"), "-o", str(page)]) == 0
    capsys.readouterr()
    dom, console = render(page)
    assert console == [], console
    parsed = Rows()
    parsed.feed(dom)
    for m in fused:
        cells = parsed.rows[m["module_path"]]
        assert cells[-1] == f"fused in B: compared at {m['compared_at']}", (m["module_path"], cells)
    own = next(m for m in modules if m["boundary"] == "own" and m["state"] == "ok" and m["module_path"])
    assert float(parsed.rows[own["module_path"]][-2]) == pytest.approx(own["rel_l2"], rel=1e-2, abs=1e-3)


def test_a_module_named_with_a_comment_opener_does_not_break_the_page(tmp_path, capsys):
    node = helper.make_node("Relu", ["x"], ["y"], name="n")
    node.metadata_props.add(key="module_path", value="enc.<!--x")
    node.metadata_props.add(key="hierarchy_tag", value="/M/<!--x")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    path = tmp_path / "comment.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    assert cli(["report", str(path), "--html"]) == 0
    capsys.readouterr()
    assert "<!--" not in (tmp_path / "comment.html").read_text().split("modelexport-data")[1]
    dom, console = render(tmp_path / "comment.html")
    assert console == [], console
    parsed = Rows()
    parsed.feed(dom)
    assert "enc.<!--x" in parsed.rows and parsed.render_ms is not None
