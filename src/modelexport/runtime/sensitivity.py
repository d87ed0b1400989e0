"""Which modules lose accuracy when quantized, and quantization that meets an accuracy target
while keeping as little as possible in float.

Every number is an end-output comparison of real ONNX Runtime runs of the float folder and of a
quantized one (ONNX Runtime's quantizers, ``runtime/quantize_ort.py``) on the user's inputs:
cosine similarity (per input, all outputs of all files concatenated) and max |float - quantized|.

The search (``quantize_to_target``) minimises what stays float, in bytes of weights or in
latency (``objective``), not the count of modules:

1. candidates: every item of every ModuleList of the model (the encoder and decoder blocks of
   T5, not the first list found) and the modules beside them that hold quantizable weights
   (embeddings, heads);
2. each candidate is measured alone (only it quantized) and left out (everything but it
   quantized); both estimate its share of the error, averaged;
3. candidates are kept float greedily by that share per byte (or per millisecond), re-measured
   after each, until the target is met; then any that the target no longer needs go back to int8;
4. hierarchy: each module kept float is replaced by the fewest of its submodules that still meet
   the target, when they cost less (a layer's one fragile projection instead of the layer), and
   so on down;
5. all of it on the calibration inputs; the accuracy reported is measured on held-out inputs.

One work folder holds every trial quantization and is removed at the end.
"""
from __future__ import annotations

import fnmatch
import math
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from modelexport.errors import ModelExportError


@dataclass
class Accuracy:
    cosine_min: float
    cosine_mean: float
    max_abs: float

    def cosine(self, statistic: str = "min") -> float:
        return self.cosine_mean if statistic == "mean" else self.cosine_min

    def meets(self, target_cosine: float | None, max_abs_error: float | None, statistic: str = "min") -> bool:
        return self.violation(target_cosine, max_abs_error, statistic) <= 1.0

    def violation(self, target_cosine: float | None, max_abs_error: float | None, statistic: str = "min") -> float:
        """How far from the target, as a ratio of what the target allows: <= 1 meets it."""
        ratios = []
        if target_cosine is not None:
            allowed = max(1.0 - target_cosine, 1e-12)
            ratios.append(max(0.0, 1.0 - self.cosine(statistic)) / allowed)
        if max_abs_error is not None:
            ratios.append(self.max_abs / max(max_abs_error, 1e-30) if math.isfinite(self.max_abs) else math.inf)
        return max(ratios) if ratios else 0.0

    def as_dict(self) -> dict:
        return {"cosine_min": _finite(self.cosine_min), "cosine_mean": _finite(self.cosine_mean),
                "max_abs": _finite(self.max_abs), "finite": all(map(math.isfinite, (self.cosine_min, self.max_abs)))}


def _finite(x: float):
    return x if math.isfinite(x) else None  # JSON has no Infinity/NaN


def run_outputs(folder: Path, feeds_by_file: dict[str, list[dict]]) -> dict[str, list[list[np.ndarray]]]:
    """Every graph output of every file, per feed."""
    from modelexport.runtime.sessions import new_session

    runs = {}
    for name, feeds in feeds_by_file.items():
        session = new_session(Path(folder) / name)
        inputs = {i.name for i in session.get_inputs()}
        runs[name] = [session.run(None, {k: v for k, v in feed.items() if k in inputs}) for feed in feeds]
    return runs


def accuracy(reference: dict[str, list[list[np.ndarray]]], other: dict[str, list[list[np.ndarray]]]) -> Accuracy:
    cosines, max_abs = [], 0.0
    for name, runs in reference.items():
        for ref_outputs, got_outputs in zip(runs, other[name]):
            a = np.concatenate([np.asarray(x, np.float64).ravel() for x in ref_outputs if np.size(x)])
            b = np.concatenate([np.asarray(x, np.float64).ravel() for x in got_outputs if np.size(x)])
            if not np.all(np.isfinite(b)):
                cosines.append(-1.0)
                max_abs = math.inf
                continue
            max_abs = max(max_abs, float(np.max(np.abs(a - b))) if a.size else 0.0)
            norm = float(np.linalg.norm(a) * np.linalg.norm(b))
            cosines.append(float(a @ b) / norm if norm else 1.0)
    return Accuracy(min(cosines), float(np.mean(cosines)), max_abs)


def modules_with_nodes(modules: list[dict]) -> list[str]:
    return [row["module_path"] for row in modules if row.get("nodes_total")]


def _parent(path: str) -> str:
    return path.rpartition(".")[0]


def _inside(path: str, module: str) -> bool:
    return module == "" or path == module or path.startswith(module + ".")


# -- what each module holds ------------------------------------------------------------------
class ModuleWeights:
    """Per module (its subtree), the nodes of each file and the float bytes of the weights the
    quantizer would make integer, from the folder's tags."""

    def __init__(self, src: Path, names: list[str], settings):
        import onnx

        from modelexport.hierarchy.tags import iter_nodes, node_tag
        from modelexport.runtime.quantize_ort import file_weights, small_tables

        self.files = {}
        self.node_module: dict[str, dict[str, str]] = {}  # file -> node name -> module path
        self.input_names: dict[str, set[str]] = {}
        for name in names:
            model = onnx.load(str(Path(src) / name), load_external_data=False)
            weights = self.files[name] = file_weights(model, settings.static, settings.static_ops)
            if not settings.static and settings.small_tables_float:
                for node in small_tables(weights):
                    weights.nodes.pop(node)  # never quantized: not a candidate's cost
            self.node_module[name] = {node.name: node_tag(node, path).module_path or ""
                                      for node, path in iter_nodes(model.graph) if node.name}
            self.input_names[name] = {i.name for i in model.graph.input}

    def nodes_under(self, module: str) -> dict[str, list[str]]:
        return {name: [n for n, path in nodes.items() if _inside(path, module)]
                for name, nodes in self.node_module.items()}

    def weight_nodes_under(self, module: str) -> dict[str, set[str]]:
        return {name: {n for n in self.files[name].nodes if _inside(self.node_module[name].get(n, ""), module)}
                for name in self.files}

    def bytes_under(self, modules) -> int:
        """Float bytes of the weights (each once) of the quantizable nodes under any of ``modules``."""
        modules = [modules] if isinstance(modules, str) else list(modules)
        total = 0
        for name, weights in self.files.items():
            seen = {}
            for node in weights.nodes.values():
                path = self.node_module[name].get(node.name, "")
                if any(_inside(path, m) for m in modules):
                    seen[node.weight] = node.nbytes
            total += sum(seen.values())
        return total

    def total_bytes(self) -> int:
        return self.bytes_under([""])


def candidate_modules(modules: list[dict], depth: int | None, patterns: list[str],
                      weights: ModuleWeights | None = None) -> list[str]:
    """The modules to rank: those matching ``patterns``, or those at ``depth``, or (default) the
    items of every ModuleList of the model and the modules beside them (embeddings, heads); with
    ``weights``, only modules holding quantizable weights."""
    paths = modules_with_nodes(modules)
    has_weight = (lambda p: weights.bytes_under(p) > 0) if weights is not None else (lambda p: True)
    if patterns:
        chosen = [p for p in paths if any(fnmatch.fnmatchcase(p, g) for g in patterns)]
    elif depth is not None:
        chosen = [p for p in paths if p and p.count(".") + 1 == depth]
    else:
        chosen = _partition(modules, set(paths), has_weight)
    chosen = [p for p in chosen if has_weight(p)]
    if not chosen:
        raise ModelExportError("no module with quantizable weights to rank: pass --depth N or --modules GLOB "
                               "(see `modelexport analyze`)")
    # an ancestor and its descendant would both be excluded anyway: keep the outermost
    return [p for p in chosen if not any(q != p and p.startswith(q + ".") for q in chosen)]


def _partition(modules: list[dict], with_nodes: set[str], has_weight) -> list[str]:
    """Every ModuleList item, and every module that is a sibling of a ModuleList or of one of
    its ancestors; a model without a ModuleList is split at its first level of more than one
    module."""
    order = [row["module_path"] for row in modules]
    children: dict[str, list[str]] = {}
    for path in order:
        if path:
            children.setdefault(_parent(path), []).append(path)
    lists = [row["module_path"] for row in modules
             if row.get("class") in ("ModuleList", "ModuleDict") and row["module_path"] in with_nodes]
    # the outermost lists: T5's block.N.layer lists are inside the items of encoder.block
    lists = [p for p in lists if not any(q != p and p.startswith(q + ".") for q in lists)]
    expanded = set()
    for path in lists:
        while True:
            expanded.add(path)
            if not path:
                break
            path = _parent(path)
    found: list[str] = []

    def walk(path: str) -> None:
        for child in children.get(path, ()):
            if child not in with_nodes:
                continue
            if child in expanded:
                walk(child)
            elif has_weight(child):
                found.append(child)

    walk("")
    while len(found) == 1 and children.get(found[0]):  # one wrapper module: look inside it
        only = found.pop()
        found = [c for c in children[only] if c in with_nodes and has_weight(c)]
        if not found:
            found = [only]
            break
    return found


def weighted_children(module: str, modules: list[dict], weights: ModuleWeights) -> list[str]:
    """The direct submodules of ``module`` that hold quantizable weights."""
    return [row["module_path"] for row in modules
            if row["module_path"] and _parent(row["module_path"]) == module
            and weights.bytes_under(row["module_path"]) > 0]


# -- trial quantizations ---------------------------------------------------------------------
class Trials:
    """Quantize the float folder with some modules float (or only some quantized) into one work
    folder and measure the end outputs against float; every result is remembered."""

    def __init__(self, src: Path, work: Path, names: list[str], weights: ModuleWeights, settings,
                 feeds_by_file: dict[str, list[dict]], calibration: dict[str, list[dict]] | None = None,
                 progress=None):
        from modelexport.runtime.quantize_measure import folder_config
        from modelexport.runtime.quantize_ort import linked_source
        from modelexport.runtime.smoothing import folder_maxima

        self.src, self.work, self.names, self.weights, self.settings = Path(src), Path(work), names, weights, settings
        self.feeds = feeds_by_file
        self.calibration = calibration or feeds_by_file
        self.reference = run_outputs(self.src, feeds_by_file)
        self.readable = linked_source(self.src, names, self.work / "source")
        # measured once: every trial and the final folder smooth with the same statistics
        self.maxima = folder_maxima(self.readable, names, settings, self.calibration, folder_config(self.src))
        self.trial_dir = self.work / "trial"
        self.trial_dir.mkdir(exist_ok=True)
        self.count = 0
        self.progress = progress
        self._memo: dict[tuple, Accuracy] = {}

    def quantize_into(self, folder: Path, kept: frozenset[str] = frozenset(), only: frozenset[str] | None = None,
                      calibration: dict[str, list[dict]] | None = None) -> None:
        """``calibration``: other static calibration feeds than the trials' (not cached)."""
        from modelexport.runtime.quantize_ort import quantize_file

        folder.mkdir(parents=True, exist_ok=True)
        for name in self.names:
            exclude = sorted({n for m in kept for n in self.weights.nodes_under(m)[name]})
            only_nodes = None if only is None else sorted({n for m in only for n in self.weights.nodes_under(m)[name]})
            cache = self.work / f"{name}.calibration.json" if self.settings.static and calibration is None else None
            quantize_file(self.readable / name, folder / name, self.settings, self.weights.files[name], exclude,
                          only_nodes, calibration=(calibration or self.calibration).get(name),
                          input_names=self.weights.input_names[name], calibration_cache=cache,
                          maxima=self.maxima.get(name))

    def measure(self, kept=(), only=None) -> Accuracy:
        key = (frozenset(kept), None if only is None else frozenset(only))
        if key not in self._memo:
            for p in self.trial_dir.iterdir():
                p.unlink()
            self.quantize_into(self.trial_dir, *key)
            self.count += 1
            self._memo[key] = accuracy(self.reference, run_outputs(self.trial_dir, self.feeds))
        return self._memo[key]


@dataclass
class SensitivityRow:
    module_path: str
    cosine_only_this: float  # only this module quantized
    max_abs_only_this: float
    cosine_all_but_this: float  # everything but this module quantized
    max_abs_all_but_this: float
    float_bytes: int = 0  # weights of the module the quantizer makes integer (float bytes)

    def as_dict(self) -> dict:
        return {k: _finite(v) if isinstance(v, float) else v for k, v in asdict(self).items()}


def _names(src: Path) -> list[str]:
    names = sorted(p.name for p in Path(src).glob("*.onnx"))
    if not names:
        raise ModelExportError(f"{src} holds no .onnx file")
    return names


def _settings(settings):
    if settings is not None:
        return settings
    from modelexport.runtime.cpu_presets import this_machine
    from modelexport.runtime.quantize_ort import QuantSettings

    return QuantSettings(this_machine())


def _rows(trials: Trials, candidates: list[str], progress=None) -> list[SensitivityRow]:
    rows = []
    for i, module in enumerate(candidates):
        if progress:
            progress(i, len(candidates), module)
        only = trials.measure(only=[module])
        all_but = trials.measure(kept=[module])
        rows.append(SensitivityRow(module, only.cosine_min, only.max_abs, all_but.cosine_min, all_but.max_abs,
                                   trials.weights.bytes_under(module)))
    return rows


def sensitivity(src: Path, candidates: list[str], feeds_by_file: dict[str, list[dict]],
                progress=None, modules_with_nodes: list[str] | None = None, settings=None,
                calibration: dict[str, list[dict]] | None = None) -> list[SensitivityRow]:
    """Most sensitive first: the lowest cosine when only that module is quantized (every other
    node of every file float), and the cosine when everything but it is quantized.
    ``modules_with_nodes`` is accepted for older callers and not needed."""
    src = Path(src)
    settings = _settings(settings)
    names = _names(src)
    weights = ModuleWeights(src, names, settings)
    with tempfile.TemporaryDirectory(prefix="modelexport-sensitivity-") as tmp:
        trials = Trials(src, Path(tmp), names, weights, settings, feeds_by_file, calibration)
        rows = _rows(trials, candidates, progress)
    rows.sort(key=lambda r: (r.cosine_only_this, -r.max_abs_only_this))
    return rows


# -- the search ------------------------------------------------------------------------------
# The search meets the target on the calibration inputs, but what is reported (and what the user
# runs) are inputs it never saw, where the error is larger: on MiniLM, searched on 24 sentences and
# measured on 24 others, 0.995 (min) came out 0.99466 with no margin and 0.99486 with 0.1 (the worst
# unseen sentence 14% past the calibration's worst); 0.15 met it (0.99531, 0.398x the size), 0.2
# too at 0.408x. So the search may only use this share of the error the target allows on the
# calibration inputs (1 - 0.85 x (1 - C) for a cosine target); --margin changes it, 0 searches for
# the target itself. One model's figures: a default, not a guarantee (quantize says when missed).
MARGIN = 0.15


@dataclass
class TargetResult:
    kept_float: list[str]
    accuracy: Accuracy  # held-out inputs (the calibration inputs when none were held out)
    fully_quantized: Accuracy  # held-out inputs
    accuracy_calibration: Accuracy | None = None  # what the search met, on the calibration inputs
    held_out: bool = True
    met_on_held_out: bool = True  # the search meets the target on calibration inputs; unseen ones may differ
    objective: str = "bytes"
    float_bytes_kept: int = 0
    float_bytes_quantizable: int = 0
    candidates: list[str] = field(default_factory=list)
    steps: list[dict] = field(default_factory=list)
    trials: int = 0
    margin: float = MARGIN  # share of the allowed error held back on the calibration inputs
    sizes: dict[str, int] = field(default_factory=dict)  # float / fully quantized / result: bytes
    latency: dict = field(default_factory=dict)  # shape -> folder -> median/min/max ms

    def as_dict(self) -> dict:
        measured = ("accuracy", "fully_quantized", "accuracy_calibration")
        doc = {k: v for k, v in asdict(self).items() if k not in measured}
        doc["accuracy"] = self.accuracy.as_dict()
        doc["fully_quantized"] = self.fully_quantized.as_dict()
        doc["accuracy_calibration"] = self.accuracy_calibration.as_dict() if self.accuracy_calibration else None
        return doc


class _Search:
    def __init__(self, trials: Trials, modules: list[dict], target_cosine, max_abs_error, statistic: str,
                 cost, note, margin: float = 0.0):
        self.trials, self.modules = trials, modules
        self.target = (target_cosine, max_abs_error, statistic)
        # the share of the allowed error the search may use on calibration inputs (see MARGIN)
        self.limit = 1.0 - margin
        self.cost = cost
        self.note = note
        self.steps: list[dict] = []

    def violation(self, kept) -> float:
        return self.trials.measure(kept=kept).violation(*self.target)

    def step(self, what: str, kept) -> float:
        acc = self.trials.measure(kept=kept)
        r = acc.violation(*self.target)
        self.steps.append({"step": what, "kept_float": sorted(kept), "cosine_min": _finite(acc.cosine_min),
                           "cosine_mean": _finite(acc.cosine_mean), "max_abs": _finite(acc.max_abs),
                           "meets": r <= self.limit})
        return r

    def greedy(self, base: list[str], candidates: list[str], share: dict[str, float]) -> list[str] | None:
        """Add candidates to ``base`` (kept float), most share per cost first, until the target is
        met; None when even all of them do not meet it."""
        order = sorted(candidates, key=lambda m: (-share[m] / max(self.cost(m), 1e-12), self.cost(m)))
        kept = list(base)
        for module in order:
            kept.append(module)
            if self.step(f"keep {module} float", kept) <= self.limit:
                return kept
        return None

    def prune(self, kept: list[str]) -> list[str]:
        """Quantize again whatever the target does not need, most costly first."""
        for module in sorted(kept, key=self.cost, reverse=True):
            trial = [m for m in kept if m != module]
            if self.step(f"quantize {module} again", trial) <= self.limit:
                kept = trial
        return kept

    def refine(self, kept: list[str]) -> list[str]:
        """Replace each module kept float by the fewest of its submodules that still meet the
        target when they cost less, recursively."""
        queue = sorted(kept, key=self.cost, reverse=True)
        while queue:
            module = queue.pop(0)
            if module not in kept:
                continue
            children = weighted_children(module, self.modules, self.trials.weights)
            if not children or self.trials.weights.bytes_under(children) < self.trials.weights.bytes_under(module):
                continue  # a leaf, or weights of its own that no submodule holds
            base = [m for m in kept if m != module]
            if len(children) == 1:
                kept = base + children  # the same weights: nothing to measure
                queue.insert(0, children[0])
                continue
            self.note(f"refining {module}: which of {len(children)} submodules need float")
            # each child's damage with the rest of the module float
            share = {c: self.trials.measure(kept=base + [o for o in children if o != c]).violation(*self.target)
                     for c in children}
            subset = self.greedy(base, children, share)
            if subset is None:
                continue
            chosen = subset[len(base):]
            # all of them cost what the module does (no weights of its own): still worth
            # descending, a submodule of one of them may be enough
            if sum(self.cost(c) for c in chosen) <= self.cost(module) * (1 + 1e-9):
                kept = subset
                queue = sorted(chosen, key=self.cost, reverse=True) + queue
        return kept


def quantize_to_target(src: Path, out: Path, candidates: list[str] | None, feeds_by_file: dict[str, list[dict]],
                       target_cosine: float | None, max_abs_error: float | None, force: bool = False,
                       progress=None, modules_with_nodes: list[str] | None = None, *, settings=None,
                       eval_feeds: dict[str, list[dict]] | None = None, objective: str = "bytes",
                       statistic: str = "min", shapes=None, latency_rounds: int = 10, note=None,
                       hierarchical: bool = True, margin: float = MARGIN) -> TargetResult:
    """Quantize ``src`` into ``out`` keeping float the least (bytes or latency) that meets the
    target on ``feeds_by_file`` (the calibration inputs; also the static calibration set);
    accuracy reported on ``eval_feeds`` (held out). ``progress(i, n, module)`` during the
    sensitivity pass, ``note(text)`` for the other phases."""
    from modelexport.folder.metadata import read_metadata
    from modelexport.folder.staging import check_output_dir
    from modelexport.runtime import quantize_measure
    from modelexport.runtime.transform import quantize_folder

    src, out = Path(src), Path(out)
    note = note or (lambda text: None)
    check_output_dir(out.resolve(), force, [src])
    if objective not in ("bytes", "latency"):
        raise ModelExportError(f"--objective {objective!r}: choose bytes or latency")
    if not 0.0 <= margin < 1.0:
        raise ModelExportError(f"--margin {margin}: give a share of the allowed error in [0, 1)")
    settings = _settings(settings)
    meta, problem = read_metadata(src)
    if meta is None:
        raise ModelExportError(f"an accuracy target needs module tags and metadata: {problem}")
    names = _names(src)
    weights = ModuleWeights(src, names, settings)
    candidates = candidates or candidate_modules(meta.modules, None, [], weights)
    held_out = eval_feeds is not None
    eval_feeds = eval_feeds if held_out else feeds_by_file
    calibration = feeds_by_file if settings.static else None
    measured_on, ranges_from = feeds_by_file, calibration
    with tempfile.TemporaryDirectory(prefix="modelexport-quantize-") as tmp:
        work = Path(tmp)
        note(f"quantizing everything ({settings.mode}) to measure it on {sum(map(len, measured_on.values()))} "
             "calibration input(s)")
        trials = Trials(src, work, names, weights, settings, measured_on, ranges_from)
        cost = _cost_function(objective, trials, weights, meta, note)
        search = _Search(trials, meta.modules, target_cosine, max_abs_error, statistic, cost, note, margin)
        kept: list[str] = []
        if search.step("quantize everything", []) > search.limit:
            rows = {r.module_path: r for r in _rows(trials, candidates, progress)}
            full = search.violation([])
            share = {m: max(0.0, ((full - search.violation([m])) + trials.measure(only=[m]).violation(*search.target))
                            / 2) for m in candidates}
            note("keeping modules float, most accuracy per " + ("byte" if objective == "bytes" else "millisecond")
                 + " first")
            found = search.greedy([], candidates, share)
            if found is None:
                acc = trials.measure(kept=candidates)
                if margin and acc.violation(*search.target) <= 1.0:
                    raise ModelExportError(
                        f"the target ({_target_text(target_cosine, max_abs_error, statistic)}) is met with every "
                        f"candidate module in float only without the search's margin ({margin:g} of the allowed error "
                        "held back for unseen inputs): --margin 0 searches for the target itself")
                raise ModelExportError(
                    f"the target ({_target_text(target_cosine, max_abs_error, statistic)}) is not met even with every "
                    f"candidate module in float (cosine min {acc.cosine_min:.5f}, mean {acc.cosine_mean:.5f}, max abs "
                    f"{acc.max_abs:.3g}); widen the candidates (--depth, --modules) or relax the target")
            kept = search.prune(found)
            if hierarchical:
                kept = search.prune(search.refine(kept))
            del rows
        kept = [m for m in candidates_order(meta.modules, kept)]
        calibration_accuracy = trials.measure(kept=kept)
        full_dir = work / "full"
        trials.quantize_into(full_dir, calibration=calibration)
        note(f"writing {out} with {len(kept)} module(s) float")
        # the static ranges, and the smoothing statistics of both modes, from the calibration inputs
        result_folder = quantize_folder(src, out, kept, force=force, settings=settings,
                                        calibration=feeds_by_file)  # validated before it replaces anything
        del result_folder
        reference = run_outputs(src, eval_feeds)
        result = TargetResult(kept, accuracy(reference, run_outputs(out, eval_feeds)),
                              accuracy(reference, run_outputs(full_dir, eval_feeds)),
                              accuracy_calibration=calibration_accuracy, held_out=held_out, objective=objective,
                              float_bytes_kept=weights.bytes_under(kept) if kept else 0,
                              float_bytes_quantizable=weights.total_bytes(), candidates=candidates,
                              steps=search.steps, trials=trials.count, margin=margin)
        result.met_on_held_out = result.accuracy.meets(target_cosine, max_abs_error, statistic)
        result.sizes = {"float": quantize_measure.folder_bytes(src),
                        "fully_quantized": quantize_measure.folder_bytes(full_dir),
                        "result": quantize_measure.folder_bytes(out)}
        if latency_rounds:
            result.latency = quantize_measure.latency(
                {"float": src, "fully_quantized": full_dir, "result": out},
                shapes or quantize_measure.default_shapes(), latency_rounds, note)
    _record(out, result, target_cosine, max_abs_error, statistic)
    return result


def candidates_order(modules: list[dict], kept: list[str]) -> list[str]:
    """``kept`` in module order."""
    order = {row["module_path"]: i for i, row in enumerate(modules)}
    return sorted(set(kept), key=lambda m: order.get(m, len(order)))


def _cost_function(objective: str, trials: Trials, weights: ModuleWeights, meta, note):
    """Cost of keeping a module float: its float weight bytes, or the milliseconds quantizing it
    saves (ONNX Runtime's profiler on the float and the fully quantized model, per module; bytes
    break ties and price modules whose int8 is no faster)."""
    if objective == "bytes":
        return lambda m: float(weights.bytes_under(m))
    saved = _latency_saved_by_module(trials, meta, note)
    scale = 1e-3 / max(weights.total_bytes(), 1)  # bytes only as a tie-breaker below a microsecond

    def cost(module: str) -> float:
        ms = sum(v for path, v in saved.items() if _inside(path, module))
        return max(ms, 0.0) + scale * weights.bytes_under(module)

    return cost


def _latency_saved_by_module(trials: Trials, meta, note) -> dict[str, float]:
    """Module path -> ms its own nodes take in float minus in int8 (batch 1, typical sequence)."""
    import onnx

    from modelexport.hierarchy.restore import restore_tags
    from modelexport.runtime import quantize_measure
    from modelexport.runtime.dummy_inputs import make_inputs
    from modelexport.runtime.profile import profile_model
    from modelexport.runtime.sessions import new_session

    note("profiling the float and the fully quantized model per module (--objective latency)")
    full = trials.work / "profiled"
    trials.quantize_into(full)
    config = quantize_measure.folder_config(trials.src)
    sequence = quantize_measure.typical_sequence(config)
    saved: dict[str, float] = {}
    for name in trials.names:
        original = onnx.load(str(trials.src / name), load_external_data=False)
        quantized = onnx.load(str(full / name), load_external_data=False)
        restore_tags(original, quantized, meta.modules)
        onnx.save(quantized, str(full / f"tagged-{name}"))
        feed = make_inputs(new_session(trials.src / name), config, 1, sequence)
        for path, model, sign in ((trials.src / name, original, 1.0), (full / f"tagged-{name}", quantized, -1.0)):
            profile = profile_model(path, model, feed, runs=5, warmup=2, metadata_modules=meta.modules)
            for module, t in profile.modules.items():
                if module is not None:
                    saved[module] = saved.get(module, 0.0) + sign * t.self_us / profile.runs / 1000
    return saved


def _target_text(target_cosine, max_abs_error, statistic: str = "min") -> str:
    parts = []
    if target_cosine is not None:
        parts.append(f"{statistic} cosine >= {target_cosine}")
    if max_abs_error is not None:
        parts.append(f"max abs error <= {max_abs_error}")
    return " and ".join(parts)


def _record(out: Path, result: TargetResult, target_cosine, max_abs_error, statistic: str) -> None:
    """Add what the target search decided to the folder's metadata (last transform step)."""
    from modelexport.folder.metadata import update_last_transform

    update_last_transform(out, accuracy_target={"target_cosine": target_cosine, "max_abs_error": max_abs_error,
                                                "statistic": statistic, **result.as_dict()})
