"""Per-module error between two exports of one model (float vs quantized, optimized, another opset).

Both files run in ONNX Runtime on the same inputs with every module's boundary values exposed:
the tensors a module's nodes produce that are used outside it (or are graph outputs). Per module:
max |A - B|, relative L2 error and cosine similarity over its boundary values, and the error it
adds itself: its relative error minus the largest of the tensors entering it and of its
children's outputs (as self time is to total time in a profile), so the module where the error
appears stands out and those that only pass it on do not.

Tensors are matched by name. A module none of whose boundary tensors exists in B (an optimizer
fused them away) is reported as ``fused`` and compared at the nearest enclosing module that still
has one. Values inside If/Loop bodies cannot be exposed as outputs: those modules are ``none``.

Numbers are only given for what was compared: a value that is finite in A and NaN/Inf in B (or
the other way round) makes the module's state ``nonfinite``; a boundary where nothing could be
compared (bool tensors, shapes that differ) is ``uncompared``; a reference that is all zeros where
B is not is ``zero_reference`` (no relative error exists). Those states carry no rel L2 or cosine
(null in JSON), are never shown as agreement, and rank before every measured error.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from modelexport.hierarchy import paths
from modelexport.inspect.analysis import tree_order
from modelexport.inspect.cut import GraphCut

OK, NONFINITE, UNCOMPARED, ZERO_REFERENCE, UNEXPOSED = "ok", "nonfinite", "uncompared", "zero_reference", "unexposed"
# --top and the tables rank these first: a number that could not be measured is news, not a match.
STATE_RANK = {NONFINITE: 0, ZERO_REFERENCE: 1, UNCOMPARED: 2, OK: 3, UNEXPOSED: 4}


@dataclass
class Boundaries:
    outputs: dict[str, list[str]]  # module -> tensors leaving its subtree
    inputs: dict[str, list[str]]  # module -> tensors entering its subtree
    tags: dict[str, str]  # module -> hierarchy tag
    children: dict[str, list[str]]  # module -> modules one level below it that have nodes


def module_boundaries(model, cut: GraphCut | None = None) -> Boundaries:
    """Boundary tensors of every module that has nodes in the main graph (and of its ancestors),
    from the one cut of ``inspect/cut.py`` (outer-scope reads of If/Loop bodies included)."""
    cut = cut or GraphCut(model)
    found = cut.all_boundaries()
    outputs = {m: b.outputs for m, b in found.items() if b.outputs}
    inputs = {m: b.inputs for m, b in found.items() if b.inputs}
    modules = set(found)
    children: dict[str, list[str]] = {m: [] for m in modules}
    for m in modules:
        if m:
            parent = paths.parent(m)
            while parent and parent not in modules:
                parent = paths.parent(parent)
            children.setdefault(parent or "", []).append(m)
    tags = {m: cut.tags.get(m, "") for m in modules}
    return Boundaries(outputs, inputs, tags, children)


@dataclass
class TensorError:
    """Sums over every input run, so several inputs aggregate exactly."""

    max_abs: float = 0.0
    diff_sq: float = 0.0
    ref_sq: float = 0.0
    other_sq: float = 0.0
    dot: float = 0.0
    nonfinite: int = 0  # values non-finite on one side only (or a different NaN/Inf on each)
    compared: int = 0  # value pairs finite on both sides
    uncompared: int = 0  # tensors that could not be compared (bool, shapes that differ, missing)

    def add(self, a: np.ndarray, b: np.ndarray) -> None:
        if not _comparable(a, b):
            self.uncompared += 1
            return
        a64, b64 = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
        fa, fb = np.isfinite(a64), np.isfinite(b64)
        finite = fa & fb
        same_nonfinite = ~fa & ~fb & ((np.isnan(a64) & np.isnan(b64)) | (a64 == b64))
        self.nonfinite += int(np.count_nonzero(~finite & ~same_nonfinite))
        a64, b64 = a64[finite], b64[finite]
        self.compared += int(a64.size)
        if a64.size:
            d = a64 - b64
            self.max_abs = max(self.max_abs, float(np.max(np.abs(d))))
            self.diff_sq += float(d @ d)
            self.ref_sq += float(a64 @ a64)
            self.other_sq += float(b64 @ b64)
            self.dot += float(a64 @ b64)

    def merged(self, others: list["TensorError"]) -> "TensorError":
        out = TensorError()
        for e in [self, *others]:
            out.max_abs = max(out.max_abs, e.max_abs)
            out.diff_sq += e.diff_sq
            out.ref_sq += e.ref_sq
            out.other_sq += e.other_sq
            out.dot += e.dot
            out.nonfinite += e.nonfinite
            out.compared += e.compared
            out.uncompared += e.uncompared
        return out

    @property
    def state(self) -> str:
        if self.nonfinite:
            return NONFINITE
        if not self.compared:
            return UNCOMPARED
        if self.ref_sq == 0.0 and self.diff_sq > 0.0:
            return ZERO_REFERENCE
        return OK

    @property
    def rel_l2(self) -> float | None:
        """||B - A|| / ||A|| over the values compared; None unless the state is ok."""
        if self.state != OK:
            return None
        return 0.0 if self.ref_sq == 0.0 else math.sqrt(self.diff_sq / self.ref_sq)

    @property
    def cosine(self) -> float | None:
        if self.state != OK:
            return None
        if self.ref_sq == 0.0 or self.other_sq == 0.0:
            return 1.0 if self.ref_sq == self.other_sq else 0.0
        return max(-1.0, min(1.0, self.dot / math.sqrt(self.ref_sq * self.other_sq)))

    @property
    def max_abs_or_none(self) -> float | None:
        """max |A - B| over the finite pairs; None when nothing was compared or values broke."""
        return self.max_abs if self.state in (OK, ZERO_REFERENCE) else None


@dataclass
class ModuleDiff:
    module_path: str
    hierarchy_tag: str
    max_abs: float | None
    rel_l2: float | None
    cosine: float | None
    added_rel_l2: float | None
    boundary: str  # own | fused | none
    compared_at: str | None = None  # for fused: the enclosing module whose boundary was compared
    tensors: int = 0  # boundary tensors of the module
    # B's nodes of this module alone, run on A's values entering it, against A's values leaving it:
    # the error the module makes by itself, whatever it was handed.
    isolated_rel_l2: float | None = None
    isolated_max_abs: float | None = None
    added_from: str = ""  # "isolated" (B's module alone on A's inputs) or "propagated" (boundary errors)
    state: str = OK  # ok | nonfinite | uncompared | zero_reference | unexposed (see the module docstring)
    nonfinite: int = 0  # values NaN/Inf on one side only, at this module's boundary
    isolated_state: str | None = None  # the state of the "alone" run, when there was one

    def as_dict(self) -> dict:
        return {k: _json_number(v) for k, v in asdict(self).items()}


def _json_number(value):
    """JSON has no NaN or Infinity: a number that is not finite is never written (the state says why)."""
    return None if isinstance(value, float) and not math.isfinite(value) else value


@dataclass
class FileDiff:
    file: str
    inputs_run: int
    modules: list[ModuleDiff] = field(default_factory=list)
    nonfinite: int = 0  # values finite in A and NaN/Inf in B (or the other way round), over every tensor

    def as_dict(self) -> dict:
        return {"inputs_run": self.inputs_run, "nonfinite_in_b": self.nonfinite,
                "modules": [m.as_dict() for m in self.modules]}


def _value_names(model) -> set[str]:
    graph = model.graph
    names = {i.name for i in graph.input}
    for node in graph.node:
        names.update(o for o in node.output if o)
    return names


def _comparable(a, b) -> bool:
    return a is not None and b is not None and np.shape(a) == np.shape(b) and \
        np.issubdtype(np.asarray(a).dtype, np.number) and np.issubdtype(np.asarray(b).dtype, np.number)


def rank_key(m: ModuleDiff):
    """Unmeasurable states first, then the largest added error."""
    return (STATE_RANK.get(m.state, 9), -(m.added_rel_l2 or 0.0))


def diff_files(path_a: Path, path_b: Path, feeds: list[dict], isolate: bool = True, progress=None) -> FileDiff:
    """Per-module error of B against A (A is the reference) over every feed. ``progress(text)``
    hears about each phase (the runs take seconds)."""
    import onnx

    from modelexport.runtime.intermediates import session_exposing

    model_a = onnx.load(str(path_a), load_external_data=False)
    model_b = onnx.load(str(path_b), load_external_data=False)
    bounds = module_boundaries(model_a)
    bounds_b = module_boundaries(model_b)
    in_a, in_b = _value_names(model_a), _value_names(model_b)
    wanted = sorted({t for side in (bounds.outputs, bounds.inputs) for ts in side.values() for t in ts})
    shared = [t for t in wanted if t in in_b]
    # A's values at B's module boundaries too: what B's modules are fed when run alone.
    a_side = sorted(set(shared) | {t for side in (bounds_b.outputs, bounds_b.inputs) for ts in side.values()
                                   for t in ts if t in in_a})
    errors = {t: TensorError() for t in shared}
    a_runs: list[dict] = []
    if progress:
        progress(f"running A and B on {len(feeds)} input(s), {len(shared)} boundary values exposed")
    with session_exposing(path_a, a_side) as sa, session_exposing(path_b, shared) as sb:
        names_a = {i.name for i in sa.get_inputs()}
        names_b = {i.name for i in sb.get_inputs()}
        for feed in feeds:
            values_a = dict(zip(a_side, sa.run(a_side, {k: v for k, v in feed.items() if k in names_a})))
            values_a.update({k: v for k, v in feed.items() if k in names_a})
            a_runs.append(values_a)
            vb = sb.run(shared, {k: v for k, v in feed.items() if k in names_b})
            for name, b in zip(shared, vb):
                errors[name].add(values_a[name], b)
    isolated = _isolated_errors(path_b, model_b, bounds_b, a_runs, progress) if isolate else {}
    result = FileDiff(Path(path_a).name, len(feeds))
    result.nonfinite = sum(e.nonfinite for e in errors.values())
    graph_inputs = {i.name for i in model_a.graph.input}
    own: dict[str, TensorError] = {}
    for module, tensors in bounds.outputs.items():
        present = [errors[t] for t in tensors if t in errors]
        if present:
            own[module] = present[0].merged(present[1:])

    def measured(e: TensorError | None) -> float | None:
        return e.rel_l2 if e is not None else None

    for module in sorted(bounds.tags, key=tree_order):
        err = own.get(module)
        if err is not None:
            alone = isolated.get(module)
            added, source = None, ""
            if err.state == OK:
                if alone is not None and alone.state == OK:
                    # what the module does by itself, less what its own children already do
                    below = [isolated[c].rel_l2 for c in bounds.children.get(module, [])
                             if measured(isolated.get(c)) is not None]
                    added, source = max(0.0, alone.rel_l2 - max(below, default=0.0)), "isolated"
                elif alone is None:
                    entering = [errors[t].rel_l2 for t in bounds.inputs.get(module, [])
                                if t in errors and errors[t].rel_l2 is not None]
                    entering += [0.0 for t in bounds.inputs.get(module, []) if t in graph_inputs]
                    below = [own[c].rel_l2 for c in bounds.children.get(module, [])
                             if c in own and own[c].rel_l2 is not None]
                    added, source = max(0.0, err.rel_l2 - max(entering + below, default=0.0)), "propagated"
            result.modules.append(ModuleDiff(
                module, bounds.tags.get(module, ""), err.max_abs_or_none, err.rel_l2, err.cosine, added, "own",
                tensors=len(bounds.outputs[module]),
                isolated_rel_l2=alone.rel_l2 if alone else None,
                isolated_max_abs=alone.max_abs_or_none if alone else None, added_from=source, state=err.state,
                nonfinite=err.nonfinite, isolated_state=alone.state if alone else None))
        elif module in bounds.outputs:
            holder = next((m for m in reversed(paths.chain(module)[:-1]) if m in own), None)
            base = own.get(holder) if holder is not None else None
            result.modules.append(ModuleDiff(
                module, bounds.tags.get(module, ""), base.max_abs_or_none if base else None,
                base.rel_l2 if base else None, base.cosine if base else None, None, "fused", compared_at=holder,
                state=base.state if base else UNCOMPARED, nonfinite=base.nonfinite if base else 0))
        else:
            result.modules.append(ModuleDiff(module, bounds.tags.get(module, ""), None, None, None, None, "none",
                                             state=UNEXPOSED))
    return result


def _isolated_errors(path_b: Path, model_b, bounds_b: Boundaries, a_runs: list[dict],
                     progress=None) -> dict[str, TensorError]:
    """For each module of B: its nodes alone (the cut of ``inspect/cut.py``), fed A's values of
    the tensors entering it, against A's values of the tensors leaving it. Modules whose boundary
    A does not have (fused, renamed) are left out."""
    import onnx

    from modelexport.runtime.sessions import new_session

    if any(t.data_location == onnx.TensorProto.EXTERNAL for t in model_b.graph.initializer):
        model_b = onnx.load(str(path_b))  # with its weights: the pieces run
    cut = GraphCut(model_b)
    found: dict[str, TensorError] = {}
    first = a_runs[0] if a_runs else {}
    candidates = [(m, o) for m, o in bounds_b.outputs.items()
                  if o and all(t in first for t in bounds_b.inputs.get(m, []) + o)]
    if progress and candidates:
        progress(f"running {len(candidates)} module{'s' if len(candidates) != 1 else ''} of B alone on A's values")
    for module, outputs in candidates:
        inputs = bounds_b.inputs.get(module, [])
        input_types = [onnx.helper.make_tensor_value_info(
            t, onnx.helper.np_dtype_to_tensor_dtype(np.asarray(first[t]).dtype),
            [f"{t}_{i}" for i in range(np.ndim(first[t]))]) for t in inputs]
        sub = cut.piece(module, input_types, [onnx.ValueInfoProto(name=t) for t in outputs], f"isolated:{module}")
        try:
            session = new_session(sub.SerializeToString(), optimization="disabled")
            err = TensorError()
            for values in a_runs:
                got = session.run(outputs, {t: values[t] for t in inputs})
                for name, b in zip(outputs, got):
                    err.add(values[name], b)
        except Exception:  # noqa: BLE001 - a piece ONNX Runtime cannot run alone (e.g. >2 GB): no isolated number
            continue
        found[module] = err
    return found
