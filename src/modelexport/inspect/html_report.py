"""``report --html``: one self-contained HTML file to look at the model by module.

Everything is inline (no network, no CDN): the data as JSON in a ``<script type="application/json">``
block, the page's script and style. The script inserts every name from the model as text
(``textContent``, or HTML-escaped in the one string the tree rows are built from), never as
markup, so a module called ``<script>`` shows as text. Per file (one
tab each): a collapsible, searchable module tree with the numbers of ``analyze --format json``,
and an icicle of the hierarchy sized by parameters or nodes. With ``--profile`` (from
``profile --format json``) and ``--diff`` (from ``diff --format json``) time and error become
columns and can colour the icicle.
"""
from __future__ import annotations

import html
import json
import math

_STYLE = """
body{font:13px/1.4 system-ui,sans-serif;margin:16px;color:#1b1f24}
h1{font-size:18px;margin:0 0 4px} .sub{color:#57606a;margin-bottom:12px}
.tabs button{border:1px solid #d0d7de;background:#f6f8fa;padding:4px 10px;cursor:pointer;margin-right:4px}
.tabs button.on{background:#0969da;color:#fff}
.bar{margin:10px 0;display:flex;gap:12px;align-items:center;flex-wrap:wrap}
input[type=search]{width:320px;padding:3px 6px}
#icicle{position:relative;height:260px;border:1px solid #d0d7de;overflow:hidden;margin-bottom:12px}
.blk{position:absolute;box-sizing:border-box;border:1px solid #fff;overflow:hidden;white-space:nowrap;
font-size:11px;padding:1px 3px;color:#1b1f24;cursor:default}
#tip{position:fixed;pointer-events:none;background:#1b1f24;color:#fff;padding:6px 8px;border-radius:4px;
font-size:12px;display:none;max-width:520px;z-index:9;white-space:pre-wrap}
.tablebox{overflow-x:auto;max-width:100%}
table{border-collapse:collapse;width:100%;table-layout:auto}
th,td{text-align:right;padding:2px 6px 2px 12px;border-bottom:1px solid #eaeef2;font-variant-numeric:tabular-nums;
white-space:nowrap}
th{vertical-align:bottom} td.path,td.ops,td.cls{white-space:normal;overflow-wrap:anywhere}
td.path{min-width:18em} td.ops{min-width:12em}
th.l,td.path,td.cls,td.ops{text-align:left} td.ops{color:#57606a} td.note{color:#57606a;white-space:normal}
td.bad{color:#b42318;font-weight:600;white-space:normal}
tr.hide{display:none} .tog{cursor:pointer;display:inline-block;width:14px;color:#57606a}
.path{font-family:ui-monospace,monospace}
"""

_SCRIPT = r"""
(function(){
const t0 = performance.now();
const data = JSON.parse(document.getElementById('modelexport-data').textContent);
const el = (tag, attrs, text) => { const e = document.createElement(tag);
  for (const k in (attrs||{})) e.setAttribute(k, attrs[k]); if (text !== undefined) e.textContent = text; return e; };
const fmt = n => n >= 1e9 ? (n/1e9).toFixed(1)+'G' : n >= 1e6 ? (n/1e6).toFixed(1)+'M' : n >= 1e3 ? (n/1e3).toFixed(1)+'k' : String(n);
// bytes in binary units, as `analyze` prints them
const fmtBytes = n => n >= 1073741824 ? (n/1073741824).toFixed(1)+' GiB' : n >= 1048576 ? (n/1048576).toFixed(1)+' MiB' :
  n >= 1024 ? (n/1024).toFixed(1)+' KiB' : n + ' B';
const tip = document.getElementById('tip');
let current = null, sizeBy = 'params', colorBy = 'none';
function showTip(ev, m) {
  const lines = [m.module_path || '(root)', m.class || '', 'nodes ' + m.nodes_own + ' own / ' + m.nodes_total + ' total',
    'parameters ' + fmt(m.parameters_total) + ' (' + fmtBytes(m.parameter_bytes_total) + ')'];
  if (m.time_ms !== undefined) lines.push('time ' + m.time_ms.toFixed(3) + ' ms (' + m.time_share.toFixed(1) + '%)');
  if (m.rel_l2 !== undefined && m.rel_l2 !== null) lines.push('rel L2 ' + m.rel_l2.toPrecision(3) + ', added ' + (m.added_rel_l2 === null ? '—' : m.added_rel_l2.toPrecision(3)));
  if (m.error_note) lines.push('error: ' + m.error_note);
  tip.textContent = lines.join('\n'); tip.style.display = 'block';
  tip.style.left = (ev.clientX + 12) + 'px'; tip.style.top = (ev.clientY + 12) + 'px';
}
function hideTip(){ tip.style.display = 'none'; }
function colour(m, file) {
  if (colorBy === 'time' && m.time_share !== undefined) return 'hsl(10,80%,' + (95 - 0.45 * Math.min(100, m.time_share * 2)) + '%)';
  if (colorBy === 'error' && m.added_rel_l2 !== undefined && m.added_rel_l2 !== null) {
    const top = file.max_added || 1; return 'hsl(280,70%,' + (95 - 45 * Math.min(1, m.added_rel_l2 / top)) + '%)'; }
  return 'hsl(' + (205 + 25 * (m.depth % 4)) + ',55%,' + (88 - 4 * (m.depth % 5)) + '%)';
}
function icicle(file) {
  const box = document.getElementById('icicle'); box.textContent = '';
  const W = box.clientWidth || 1000, depth = Math.max(1, ...file.modules.map(m => m.depth)) + 1, H = 260 / depth;
  const byPath = {}; file.modules.forEach(m => byPath[m.module_path] = m);
  const weight = m => Math.max(0, sizeBy === 'params' ? m.parameters_total : m.nodes_total);
  function place(m, x, w) {
    if (w < 0.5) return;
    const b = el('div', {class: 'blk', 'data-path': m.module_path}, m.module_path.split('.').pop() || '(root)');
    b.style.left = x + 'px'; b.style.top = (m.depth * H) + 'px'; b.style.width = w + 'px'; b.style.height = H + 'px';
    b.style.background = colour(m, file);
    b.addEventListener('mousemove', ev => showTip(ev, m)); b.addEventListener('mouseleave', hideTip);
    box.appendChild(b);
    const kids = m.children.map(c => byPath[c]).filter(Boolean), total = weight(m);
    let cx = x; kids.forEach(k => { const kw = total ? w * weight(k) / total : 0; place(k, cx, kw); cx += kw; });
  }
  if (byPath['']) place(byPath[''], 0, W);
}
const esc = v => String(v).replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;').replace(/'/g, '&#39;');
function tree(file) {
  // One HTML string for all rows, every model-provided text through esc(): thousands of rows
  // render in one parse instead of tens of thousands of createElement calls.
  const body = document.getElementById('rows');
  const head = document.getElementById('head'); head.textContent = '';
  const cols = ['module', 'class', 'nodes own', 'nodes total', 'params', 'bytes', 'top op types'];
  if (file.has_time) cols.push('time ms', 'time %');
  if (file.has_error) cols.push('rel L2', 'added rel L2');
  const left = new Set(['module', 'class', 'top op types']);
  cols.forEach(c => head.appendChild(el('th', left.has(c) ? {class: 'l'} : {}, c)));
  const num = (v, f) => v === undefined || v === null ? '' : f(v);
  const parts = [];
  file.modules.forEach(m => {
    let row = '<tr data-path="' + esc(m.module_path) + '"><td class="path" style="padding-left:' + (4 + 14 * m.depth) +
      'px"><span class="tog">' + (m.children.length ? (expanded.has(m.module_path) ? '▾' : '▸') : '') + '</span>' +
      esc(m.module_path || '(root)') + '</td>' +
      '<td class="cls">' + esc(m.class || '') + '</td><td>' + m.nodes_own + '</td><td>' + m.nodes_total + '</td><td>' +
      fmt(m.parameters_total) + '</td><td>' + fmtBytes(m.parameter_bytes_total) + '</td><td class="ops">' +
      esc(Object.entries(m.ops_total).slice(0, 3).map(([k, v]) => k + '×' + v).join(', ')) + '</td>';
    if (file.has_time) row += '<td>' + num(m.time_ms, v => v.toFixed(3)) + '</td><td>' + num(m.time_share, v => v.toFixed(1)) + '</td>';
    if (file.has_error) row += m.error_note ?
      '<td colspan="2" class="' + (m.error_bad ? 'bad' : 'note') + '">' + esc(m.error_note) + '</td>' :
      '<td>' + num(m.rel_l2, v => v.toPrecision(3)) + '</td><td>' + num(m.added_rel_l2, v => v.toPrecision(3)) + '</td>';
    parts.push(row + '</tr>');
  });
  body.innerHTML = parts.join('');
  refresh();
}
// Thousands of visible rows cost seconds of layout: the tree opens collapsed below the depth at
// which about 600 rows show, and each click opens one level.
const MAX_OPEN_ROWS = 600;
let expanded = new Set();
function initialExpansion(file) {
  const perDepth = {}; file.modules.forEach(m => perDepth[m.depth] = (perDepth[m.depth] || 0) + 1);
  let shown = 0, depth = 0;
  // open every level whose rows still fit; the root is always open
  for (; perDepth[depth + 1] !== undefined && shown + perDepth[depth + 1] <= MAX_OPEN_ROWS; depth++) shown += perDepth[depth + 1];
  expanded = new Set(file.modules.filter(m => (m.depth < depth || m.depth === 0) && m.children.length).map(m => m.module_path));
}
function refresh() {
  const q = document.getElementById('search').value.trim().toLowerCase();
  const visible = {}, rows = document.querySelectorAll('#rows tr');
  current.modules.forEach((m, i) => {
    const parentOk = m.parent === null || m.parent === undefined ? true : (visible[m.parent] && expanded.has(m.parent));
    visible[m.module_path] = parentOk;
    const show = q ? m.module_path.toLowerCase().includes(q) : parentOk;
    rows[i].classList.toggle('hide', !show);
  });
  document.querySelectorAll('#icicle .blk').forEach(b => b.style.opacity = (q === '' || b.getAttribute('data-path').toLowerCase().includes(q)) ? 1 : 0.25);
}
document.getElementById('rows').addEventListener('click', ev => {
  const tog = ev.target.closest('.tog'); if (!tog || !tog.textContent) return;
  const path = tog.closest('tr').getAttribute('data-path');
  if (expanded.has(path)) { expanded.delete(path); tog.textContent = '▸'; } else { expanded.add(path); tog.textContent = '▾'; }
  refresh();
});
const timings = {};
function timed(name, f) { const t = performance.now(); f(); timings[name] = (timings[name] || 0) + performance.now() - t; }
function show(index) {
  current = data.files[index];
  document.querySelectorAll('.tabs button').forEach((b, i) => b.classList.toggle('on', i === index));
  initialExpansion(current);
  timed('tree', () => tree(current)); timed('icicle', () => icicle(current));
}
document.getElementById('title').textContent = data.title;
document.getElementById('subtitle').textContent = data.subtitle;
const tabs = document.getElementById('tabs');
data.files.forEach((f, i) => { const b = el('button', {type: 'button'}, f.name); b.addEventListener('click', () => show(i)); tabs.appendChild(b); });
document.getElementById('search').addEventListener('input', () => refresh());
document.getElementById('size').addEventListener('change', ev => { sizeBy = ev.target.value; icicle(current); });
const colourSelect = document.getElementById('colour');
if (!data.files.some(f => f.has_time)) colourSelect.querySelector('[value=time]').disabled = true;
if (!data.files.some(f => f.has_error)) colourSelect.querySelector('[value=error]').disabled = true;
colourSelect.addEventListener('change', ev => { colorBy = ev.target.value; icicle(current); });
if (data.files.some(f => f.has_time)) { colorBy = 'time'; colourSelect.value = 'time'; }
else if (data.files.some(f => f.has_error)) { colorBy = 'error'; colourSelect.value = 'error'; }
show(0);
document.body.offsetHeight;  // layout now, so the time below includes it
document.body.setAttribute('data-render-ms', (performance.now() - t0).toFixed(1));
document.body.setAttribute('data-render-parts', JSON.stringify(timings));
})();
"""


def _children(rows: list[dict]) -> None:
    by_path = {r["module_path"]: r for r in rows}
    for r in rows:
        r["children"] = []
    for r in rows:
        parent = r.get("parent")
        if parent is not None and parent in by_path:
            by_path[parent]["children"].append(r["module_path"])


def page_data(title: str, subtitle: str, analyses, profile: dict | None, diff: dict | None) -> dict:
    files = []
    for a in analyses:
        rows = [s.as_dict() for s in a.modules.values()]
        _children(rows)
        entry = {"name": a.name, "modules": rows, "has_time": False, "has_error": False}
        timing = (profile or {}).get("files", {}).get(a.name)
        if timing:
            total = timing.get("total_ms") or 0.0
            by_path = {m["module_path"]: m for m in timing.get("modules", []) if m.get("module_path") is not None}
            for r in rows:
                if r["module_path"] in by_path:
                    r["time_ms"] = by_path[r["module_path"]]["total_ms"]
                    r["time_share"] = 100.0 * r["time_ms"] / total if total else 0.0
            entry["has_time"] = True
        errors = (diff or {}).get("files", {}).get(a.name)
        if errors:
            by_path = {m["module_path"]: m for m in errors.get("modules", []) if isinstance(m, dict)}
            for r in rows:
                if r["module_path"] in by_path:
                    _error_cells(r, by_path[r["module_path"]])
            added = [r["added_rel_l2"] for r in rows if r.get("added_rel_l2") is not None]
            entry["max_added"] = max(added, default=0.0)
            entry["has_error"] = True
        files.append(entry)
    return {"title": title, "subtitle": subtitle, "files": files}


_STATE_WORDS = {"nonfinite": "NaN/Inf on one side", "uncompared": "nothing compared",
                "zero_reference": "reference all zeros", "unexposed": "inside If branches: not measured"}


def _error_cells(row: dict, m: dict) -> None:
    """A module's own error, never another's: a fused module (B fused its boundary away) shows
    where it was compared instead of the enclosing module's numbers; a module whose values could
    not be measured shows why (diff's ``state``), never a number."""
    state = m.get("state") or "ok"
    if m.get("boundary") == "fused":
        row["error_note"] = f"fused in B: compared at {m.get('compared_at') or '(nothing)'}"
    elif m.get("boundary") == "none" or state == "unexposed":
        row["error_note"] = _STATE_WORDS["unexposed"]
    elif state != "ok":
        row["error_note"] = _STATE_WORDS.get(state, str(state)) + (
            f" ({m['nonfinite']} values)" if state == "nonfinite" and m.get("nonfinite") else "")
        row["error_bad"] = True
    else:
        row["rel_l2"] = m.get("rel_l2")
        row["added_rel_l2"] = m.get("added_rel_l2")


def _finite(value):
    """JSON has no NaN or Infinity: those numbers become null (shown empty)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def _json_for_script(data: dict) -> str:
    # Inside <script>, "</script" ends the block and "<!--" starts script-data escapes: no "<"
    # (nor ">" or "&") is written at all. In JSON, "<" can only be inside a string, where
    # \u003c is the same character to JSON.parse ("<\\!--" was not a JSON escape).
    text = json.dumps(_finite(data), ensure_ascii=False, allow_nan=False, default=str)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def html_report(title: str, subtitle: str, analyses, profile: dict | None = None, diff: dict | None = None) -> str:
    data = page_data(title, subtitle, analyses, profile, diff)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>{_STYLE}</style></head>
<body>
<h1 id="title"></h1><div class="sub" id="subtitle"></div>
<div class="tabs" id="tabs"></div>
<div class="bar"><input type="search" id="search" placeholder="filter by module path">
<label>size by <select id="size"><option value="params">parameters</option><option value="nodes">nodes</option></select></label>
<label>colour by <select id="colour"><option value="none">depth</option><option value="time">time</option>
<option value="error">added error</option></select></label></div>
<div id="icicle"></div><div id="tip"></div>
<div class="tablebox"><table><thead><tr id="head"></tr></thead><tbody id="rows"></tbody></table></div>
<script type="application/json" id="modelexport-data">{_json_for_script(data)}</script>
<script>{_SCRIPT}</script>
</body></html>
"""
