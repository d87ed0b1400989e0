"""Time per module: ONNX Runtime's profiler, each node event mapped to the node's module tags.

At optimization levels above "disabled" ONNX Runtime runs a rewritten graph whose fused nodes
have generated names (``BiasGelu_token_15``): the rewritten graph is saved
(``optimized_model_filepath``), tags are restored on it (hierarchy/restore.py), and events are
mapped through it. Time in nodes that map to no module is reported as such, not dropped.

An If/Loop/Scan node's event spans the run of its body, whose nodes have events of their own
(a merged decoder's ``If`` holds the whole decoder): the control-flow node is not counted, its
body's nodes are, so nothing is counted twice.
"""
from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from modelexport.hierarchy import paths

CONTROL_FLOW = {"If", "Loop", "Scan"}  # their event spans their body's nodes, which are counted themselves


@dataclass
class ModuleTime:
    module_path: str | None  # None: time in nodes that map to no module
    hierarchy_tag: str
    self_us: float = 0.0
    total_us: float = 0.0
    calls: int = 0  # node executions per run

    def as_dict(self, runs: int) -> dict:
        return {"module_path": self.module_path, "hierarchy_tag": self.hierarchy_tag,
                "self_ms": self.self_us / runs / 1000, "total_ms": self.total_us / runs / 1000,
                "calls": self.calls // runs}


@dataclass
class FileProfile:
    file: str
    runs: int
    total_us: float  # kernel time summed over the profiled runs
    modules: dict  # path (or None) -> ModuleTime
    unmapped_us: float
    optimization: str
    median_node_us: float = 0.0  # the median node execution's kernel time: near ORT's own cost per event, the
    # times are mostly that cost (tiny models)
    # (module path, op type) -> kernel time (us) summed over the runs, for the flame graph: one
    # aggregate per stack, not one sample per node execution
    samples: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        rows = sorted(self.modules.values(), key=lambda m: (m.total_us, m.self_us), reverse=True)
        return {"total_ms": self.total_us / self.runs / 1000, "runs": self.runs, "optimization": self.optimization,
                "unmapped_ms": self.unmapped_us / self.runs / 1000, "median_node_us": self.median_node_us,
                "modules": [m.as_dict(self.runs) for m in rows]}


def _fold(path: str, depth: int | None) -> str:
    if depth is None or paths.depth(path) <= depth:
        return path
    return paths.chain(path)[depth]


def profile_model(onnx_path: Path, original, feed, runs: int = 10, warmup: int = 3,
                  optimization: str = "all", depth: int | None = None,
                  metadata_modules: list[dict] | None = None) -> FileProfile:
    """``feed``: one feed, or a list of feeds the runs go through in turn (several texts)."""
    import onnx

    from modelexport.hierarchy.restore import ModuleIndex, restore_tags
    from modelexport.hierarchy.tags import iter_nodes, node_tag
    from modelexport.runtime.sessions import new_session, session_options

    feeds = feed if isinstance(feed, list) else [feed]
    with tempfile.TemporaryDirectory(prefix="modelexport-profile-") as tmp:
        options = session_options(optimization)
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(tmp) / "profile")
        optimized_path = Path(tmp) / "optimized.onnx"
        if optimization != "disabled":
            options.optimized_model_filepath = str(optimized_path)
        session = new_session(Path(onnx_path), options=options)
        for i in range(warmup + runs):
            session.run(None, feeds[i % len(feeds)])
        events = json.loads(Path(session.end_profiling()).read_text())
        ran = onnx.load(str(optimized_path), load_external_data=False) if optimized_path.exists() else original
        index = ModuleIndex(original, metadata_modules)
        if ran is not original:
            restore_tags(original, ran, index=index)

    tags = {t.node_name: t for t in (node_tag(n, p) for n, p in iter_nodes(ran.graph))}
    # Only the last `runs` model runs count: warm-up runs are profiled too.
    windows = sorted((e["ts"], e["ts"] + e["dur"]) for e in events
                     if e.get("cat") == "Session" and e.get("name") == "model_run")[-runs:]
    start = windows[0][0] if windows else 0
    modules: dict = {}
    total = unmapped = 0.0
    samples: dict = {}
    durations: list[float] = []
    for e in events:
        if e.get("cat") != "Node" or not e.get("name", "").endswith("_kernel_time") or e["ts"] < start:
            continue
        op = e.get("args", {}).get("op_name", "?")
        if op in CONTROL_FLOW:
            continue  # its body's nodes have their own events: counting it too would count them twice
        name = e["name"][: -len("_kernel_time")]
        dur = float(e["dur"])
        durations.append(dur)
        total += dur
        tag = tags.get(name)
        path = None if tag is None or tag.module_path is None else index.known(_fold(tag.module_path, depth))
        if path is None:
            unmapped += dur
        entry = modules.get(path)
        if entry is None:
            entry = modules[path] = ModuleTime(path, index.tag.get(path, "") if path is not None else "(unmapped)")
        entry.self_us += dur
        entry.calls += 1
        samples[(path, op)] = samples.get((path, op), 0.0) + dur
    # Totals: each module's self time added to itself and every ancestor present in the tree.
    for path, entry in list(modules.items()):
        if path is None:
            entry.total_us += entry.self_us
            continue
        for p in paths.chain(path):
            anc = modules.get(p)
            if anc is None:
                anc = modules[p] = ModuleTime(p, index.tag.get(p, ""))
            anc.total_us += entry.self_us
    import statistics

    median = statistics.median(durations) if durations else 0.0
    return FileProfile(Path(onnx_path).name, runs, total, modules, unmapped, optimization, median, samples)


def speedscope(profiles: list[FileProfile]) -> dict:
    """A speedscope file (https://www.speedscope.app): one sampled profile per ONNX file whose
    stacks are the module chain, then the op type; weights are microseconds summed over the runs
    (one sample per stack: the flame graph and its totals, not a timeline)."""
    frames: list[dict] = []
    frame_index: dict[str, int] = {}

    def frame(name: str) -> int:
        if name not in frame_index:
            frame_index[name] = len(frames)
            frames.append({"name": name})
        return frame_index[name]

    out = []
    for prof in profiles:
        stacks, weights = [], []
        for (path, op), dur in prof.samples.items():
            chain = ["(unmapped)"] if path is None else ["(root)"] + paths.chain(path)[1:]
            stacks.append([frame(c) for c in chain] + [frame(f"op:{op}")])
            weights.append(dur)
        out.append({"type": "sampled", "name": prof.file, "unit": "microseconds", "startValue": 0,
                    "endValue": sum(weights), "samples": stacks, "weights": weights})
    return {"$schema": "https://www.speedscope.app/file-format-schema.json", "shared": {"frames": frames},
            "profiles": out, "name": "modelexport profile", "exporter": "modelexport"}
