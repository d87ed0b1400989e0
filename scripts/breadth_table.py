"""Write docs/breadth.md: every model type transformers maps to a PyTorch model, tiny, exported.

    python scripts/breadth_table.py [--types bert,gpt2 | --sample] [--jobs 2] [--timeout 180]
                                    [--section auto|transformers4|transformers5] [--update]

One worker process per type (forked from a server that imported torch, transformers, onnx and
ONNX Runtime once), ``--jobs`` at a time, each killed after ``--timeout`` seconds (the stages it
finished are kept, and the row says where it was stopped). Each worker measures one row
(modelexport.testing.breadth.check_model_type): builds tiny, PyTorch forward on modelexport's
own example inputs, torch.onnx dynamo alone (the anchor), plain Optimum (where installed and it
has a config), modelexport (path, coverage, parameter oracle, validation, loader, generate).

Each environment writes its own section: transformers 4.57 with Optimum (``transformers4``) and
transformers 5 without it (``transformers5``); ``auto`` picks by the installed transformers. Raw
rows: benchmarks/results/breadth-<section>.json; docs/breadth.md is rebuilt from every section's
JSON present, so each environment's run keeps the other's.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import shutil
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor, as_completed
from importlib import metadata
from pathlib import Path

from modelexport.testing.breadth import is_clean, ok, problems

ROOT = Path(__file__).resolve().parent.parent
SECTIONS = {"transformers4": "transformers 4.57 with Optimum", "transformers5": "transformers 5 without Optimum"}
# ~40 diverse types to shake out the harness before a full run: decoders (plain, MoE, state-space,
# hybrid), encoders, seq2seq, speech, vision, detection, vision-language, audio, new-in-5 types.
SAMPLE = ("llama", "gpt2", "mixtral", "qwen2_moe", "deepseek_v3", "mamba", "mamba2", "jamba", "falcon_mamba",
          "rwkv", "bert", "fnet", "modernbert", "deberta-v2", "xlnet", "tapas", "t5", "bart", "led", "fsmt",
          "whisper", "wav2vec2-bert", "hubert", "seamless_m4t", "vit", "dinov2", "swin", "convnext", "detr",
          "rt_detr", "llava", "qwen2_vl", "paligemma", "idefics3", "siglip", "clip", "gemma3n", "mllama",
          "granitemoe", "olmoe", "qwen3_next", "gpt_oss", "smollm3", "timesfm", "patchtst")


def section_of_environment() -> str:
    major = int(metadata.version("transformers").split(".")[0])
    return "transformers5" if major >= 5 else "transformers4"


RESULTS = ROOT / "benchmarks" / "results"


def json_path(section: str) -> Path:
    return RESULTS / f"breadth-{section}.json"


# -- running -------------------------------------------------------------------------------------
def run_one(ctx, model_type: str, timeout: int, keep: Path | None, lock: threading.Lock) -> dict:
    from modelexport.testing.breadth import run_worker

    work = Path(tempfile.mkdtemp(prefix=f"breadth-{model_type}-"))
    out = work / "row.json"
    started = time.perf_counter()
    process = ctx.Process(target=run_worker, args=(model_type, str(work), str(out)), daemon=True)
    with lock:  # one fork at a time from the server
        # without __main__'s path the worker does not import this script again (it needs nothing
        # from it, and a script edited during a run would change the workers)
        main = sys.modules["__main__"]
        path = main.__dict__.pop("__file__", None)
        try:
            process.start()
        finally:
            if path is not None:
                main.__file__ = path
    process.join(timeout)
    timed_out = process.is_alive()
    if timed_out:
        process.kill()
        process.join()
    row = json.loads(out.read_text()) if out.is_file() else {"model_type": model_type, "stage": "start"}
    row["seconds"] = round(time.perf_counter() - started, 1)
    if timed_out:
        row["timed_out"] = f"timed out after {timeout} s in stage {row.get('stage')}"
        _mark_stage(row, row["timed_out"])
    elif row.get("stage") != "done":
        tail = _log_tail(work / "log.txt")
        row["died"] = f"worker died (exit code {process.exitcode}) in stage {row.get('stage')}: {tail}"
        _mark_stage(row, row["died"])
    if keep is not None:
        shutil.copytree(work, keep / model_type, dirs_exist_ok=True)
    shutil.rmtree(work, ignore_errors=True)
    return row


_STAGE_FIELD = {"start": "build", "build": "build", "forward": "forward", "anchor": "anchor", "optimum": "optimum",
                "modelexport": "modelexport", "check": "modelexport", "load": "load_run", "generate": "generate"}


def _mark_stage(row: dict, text: str) -> None:
    name = _STAGE_FIELD.get(row.get("stage") or "start", "build")
    if name == "modelexport" and row.get("modelexport") == "ok":
        row["modelexport"] = f"ok, but the check {text}"
    else:
        row[name] = text


def _log_tail(path: Path) -> str:
    try:
        lines = [line.strip() for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return "no log"
    return lines[-1][:200] if lines else "no output"


def run_all(types: list[str], jobs: int, timeout: int, keep: Path | None) -> list[dict]:
    import multiprocessing

    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["modelexport.testing.breadth_preload"])
    os.environ.update({"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1",
                       "TOKENIZERS_PARALLELISM": "false", "TRANSFORMERS_VERBOSITY": "error"})
    lock = threading.Lock()
    rows = []
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = {pool.submit(run_one, ctx, t, timeout, keep, lock): t for t in types}
        for i, future in enumerate(as_completed(futures), 1):
            row = future.result()
            rows.append(row)
            print(f"[{i}/{len(types)}] {row['model_type']}: {headline(row)} ({row['seconds']:.0f} s)", flush=True)
    return rows


# -- judging a row: modelexport.testing.breadth (ok, loader_runs, is_clean, problems) -------------
def headline(row: dict) -> str:
    if is_clean(row):
        return f"clean ({row.get('exporter')})"
    found = problems(row)
    return found[0][:160] if found else "ok"


# Reasons grouped: the torch.export limitations and our own gaps named as such; otherwise the
# message with names, numbers and quoted text taken out.
GROUPS = (
    (r"Could not guard on data-dependent|data-dependent", "torch.export: data-dependent control flow or shape"),
    (r"cannot build example input\(s\) ([\w, ]+)", "InputBuilder: cannot build required input(s) {0}"),
    (r"Image features and image tokens do not match|image tokens|Image features", "forward: image tokens do not match "
     "the image features (no processor: InputBuilder's text has no image tokens)"),
    (r"timed out after", "timed out"),
    (r"requires the (\w+) library", "needs the {0} library"),
)


def reason_group(reason: str) -> str:
    stage, _, message = reason.partition(": ")
    for pattern, label in GROUPS:
        m = re.search(pattern, reason)
        if m:
            return f"{stage}: {label.format(*m.groups())}" if "{0}" in label or not label.startswith(
                ("forward", "timed")) else label
    text = re.sub(r"<class '(?:[\w.]*\.)?(\w+)'>", r"\1", message)
    text = re.sub(r"'[^']*'|\"[^\"]*\"|`[^`]*`", "…", text)
    text = re.sub(r"\b[\w.]*(Config|Model|Attention|Layer|Block|Encoder|Decoder|For[A-Z]\w*)\w*\b", "X", text)
    text = re.sub(r"\d+(\.\d+)?(e[-+]?\d+)?", "N", text)
    text = re.sub(r"\(\s*N(,\s*N)*\s*\)|\[\s*N(,\s*N)*\s*\]", "(…)", text)
    return f"{stage}: {text[:140]}"


# -- the markdown ----------------------------------------------------------------------------------
def cell(text) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def mark(value, *, na="—") -> str:
    if value is None or (isinstance(value, str) and value.startswith("not run")):
        return na
    return "✓" if ok(value) else "✗"


def counts(rows: list[dict]) -> dict:
    c = Counter()
    for r in rows:
        c["types"] += 1
        c["built"] += ok(r.get("build"))
        c["forward"] += ok(r.get("forward"))
        c["anchor"] += ok(r.get("anchor"))
        c["anchor_ort"] += ok(r.get("anchor_ort"))
        c["optimum_config"] += bool(r.get("optimum_config"))
        c["optimum_built"] += bool(r.get("optimum_config")) and ok(r.get("build"))
        c["optimum"] += ok(r.get("optimum"))
        c["modelexport"] += ok(r.get("modelexport"))
        c["modelexport_forward"] += ok(r.get("modelexport")) and ok(r.get("forward"))
        c["clean"] += is_clean(r)
        c["clean_forward"] += is_clean(r) and ok(r.get("forward"))
        c["clean_optimum"] += is_clean(r) and ok(r.get("optimum"))
        c["modelexport_optimum"] += ok(r.get("modelexport")) and ok(r.get("optimum"))
        c["anchor_not_me"] += ok(r.get("anchor")) and not ok(r.get("modelexport"))
        c["me_not_anchor"] += ok(r.get("modelexport")) and ok(r.get("forward")) and not ok(r.get("anchor"))
        c[f"path_{r.get('exporter')}"] += ok(r.get("modelexport"))
        gen = r.get("generate", "not run")
        c["generative"] += gen not in ("not run", "not run: not a generative head")
        c["generate_equal"] += gen.startswith("equal")
        c["generate_optimum_equal"] += r.get("generate_optimum", "").startswith("equal")
        c["timed_out"] += bool(r.get("timed_out"))
        c["died"] += bool(r.get("died"))
        c["new"] += bool(r.get("new_in_5"))
    return c


def pct(a: int, b: int) -> str:
    return f"{a} of {b} ({100 * a / b:.0f} %)" if b else f"{a} of 0"


def summary_table(sections: dict[str, dict]) -> list[str]:
    names = list(sections)
    header = "| | " + " | ".join(SECTIONS[n] for n in names) + " |"
    lines = [header, "|---|" + "---|" * len(names)]
    cs = {n: counts(sections[n]["rows"]) for n in names}

    def line(label, fn):
        lines.append(f"| {label} | " + " | ".join(fn(cs[n], n) for n in names) + " |")

    line("model types: transformers' `MODEL_MAPPING_NAMES` (4.57: and Optimum's types outside it)",
         lambda c, n: str(c["types"]))
    line("… of which new in transformers 5", lambda c, n: str(c["new"]) if n == "transformers5" else "—")
    line("builds tiny (default config, shrunk generically)", lambda c, n: pct(c["built"], c["types"]))
    line("PyTorch forward runs on InputBuilder's inputs", lambda c, n: pct(c["forward"], c["built"]))
    line("anchor exports: `torch.onnx.export(dynamo=True)` alone, same inputs", lambda c, n: pct(c["anchor"], c["forward"]))
    line("… and its file agrees with PyTorch in ONNX Runtime", lambda c, n: pct(c["anchor_ort"], c["forward"]))
    line("plain Optimum exports (types it has a config for, built)",
         lambda c, n: pct(c["optimum"], c["optimum_built"]) if c["optimum_config"] else "— (no Optimum)")
    line("**modelexport exports** (`exporter=\"auto\"`), of built", lambda c, n: pct(c["modelexport"], c["built"]))
    line("… path taken: torchscript (Optimum's config) / generic",
         lambda c, n: f"{c['path_torchscript']} / {c['path_generic']}")
    line("modelexport exports, of the types whose forward runs", lambda c, n: pct(c["modelexport_forward"], c["forward"]))
    line("… where the anchor does not", lambda c, n: str(c["me_not_anchor"]))
    line("anchor exports where modelexport does not", lambda c, n: str(c["anchor_not_me"]))
    line("**clean**: every node tagged, 0 root fallback, 0 oracle violations, validation passed, a loader runs it",
         lambda c, n: pct(c["clean"], c["built"]))
    line("clean, of the types whose forward runs (the issue's 95 % target)",
         lambda c, n: pct(c["clean_forward"], c["forward"]))
    line("greedy generate equal to PyTorch: `modelexport.load` (of generative heads exported)",
         lambda c, n: pct(c["generate_equal"], c["generative"]))
    line("… Optimum's ORTModel class", lambda c, n: str(c["generate_optimum_equal"]) if c["optimum_config"] else "—")
    line("timed out / worker died", lambda c, n: f"{c['timed_out']} / {c['died']}")
    line("run time on 2 cores, 2 jobs (wall clock)",
         lambda c, n: f"{sections[n]['run'].get('seconds', 0) / 60:.0f} min (timeout {sections[n]['run'].get('timeout')} s)")
    return lines


def top_reasons(rows: list[dict], pick, n: int = 10) -> list[str]:
    groups: Counter = Counter()
    examples: dict[str, list[str]] = {}
    for r in rows:
        reason = pick(r)
        if not reason:
            continue
        key = reason_group(reason)
        groups[key] += 1
        examples.setdefault(key, []).append(r["model_type"])
    lines = ["| count | reason | types (first 6) |", "|---|---|---|"]
    for key, count in groups.most_common(n):
        lines.append(f"| {count} | {cell(key)} | {', '.join(examples[key][:6])} |")
    lines.append(f"\n{sum(groups.values())} rows in {len(groups)} groups; the ten largest above.")
    return lines


def first_problem(row: dict) -> str | None:
    found = problems(row)
    return found[0] if found else None


def modelexport_problem(row: dict) -> str | None:
    """Why modelexport is not clean, for types whose forward runs (the issue's target)."""
    if not ok(row.get("forward")) or is_clean(row):
        return None
    found = [p for p in problems(row) if not p.startswith(("forward", "anchor", "Optimum", "generate"))]
    return found[0] if found else None


def row_line(row: dict, section: str) -> str:
    me = row.get("modelexport", "")
    exported = ok(me)
    path = row.get("exporter") or "—"
    diff = row.get("max_abs_diff")
    validation = "—" if not exported or row.get("validation_passed") is None else \
        (f"{diff:.1e} " if isinstance(diff, float) else "") + ("✓" if row["validation_passed"] else "✗")
    if section == "transformers4":
        loader = (f"{(row.get('ort_model_class') or '').replace('ORTModelFor', '')} {mark(row.get('ort_load'))}"
                  if row.get("ort_model_class") else "") + f" / load {mark(row.get('load_run'))}"
        gen = f"{_gen(row.get('generate'))} / {_gen(row.get('generate_optimum'))}"
    else:
        loader = f"load {mark(row.get('load_run'))}"
        gen = _gen(row.get("generate"))
    anchor = mark(row.get("anchor"))
    if ok(row.get("anchor")) and not ok(row.get("anchor_ort")):
        anchor += " (ORT ✗)"
    optimum = mark(row.get("optimum")) if row.get("optimum_config") else "—"
    if ok(row.get("optimum")) and "validation" in row.get("optimum", ""):
        optimum += " (val ✗)"
    reasons = "; ".join(p[:200] for p in problems(row)) or ""
    name = row["model_type"] + (" (new)" if row.get("new_in_5") else "")
    values = [name, (row.get("head") or "—"), mark(row.get("build")), mark(row.get("forward")), anchor]
    if section == "transformers4":
        values.append(optimum)
    values += [f"{path} {mark(me)}" if row.get("exporter") else mark(me),
               row.get("nodes", "—") if exported else "—",
               f"{row.get('direct', 0) + row.get('inferred', 0)}" if exported else "—",
               row.get("partial", "—") if exported else "—", row.get("root_fallback", "—") if exported else "—",
               f"{row.get('oracle_checked', 0)} / {len(row.get('oracle_violations') or [])}" if exported else "—",
               validation, loader if exported else "—", gen if exported else "—",
               "✓" if is_clean(row) else "", reasons]
    return "| " + " | ".join(cell(v) for v in values) + " |"


def _gen(value) -> str:
    if not value or value.startswith("not run"):
        return "—"
    return "=" if value.startswith("equal") else "≠" if value.startswith("differs") else "✗"


def section_markdown(section: str, data: dict) -> list[str]:
    rows = sorted(data["rows"], key=lambda r: r["model_type"])
    run = data["run"]
    versions = ", ".join(f"{k} {v}" for k, v in run.get("versions", {}).items())
    lines = [f"## {SECTIONS[section]}", "",
             f"Run on {run.get('date')} ({run.get('cpus')} cores shared with other work, {run.get('jobs')} jobs, "
             f"timeout {run.get('timeout')} s per type; {versions}); wall clock {run.get('seconds', 0) / 60:.0f} min "
             f"for {len(rows)} types. Raw rows: `benchmarks/results/breadth-{section}.json`."
             + (f" Then {len(run['updated'])} types re-run with later code (`--update`, "
                f"{run.get('update_seconds', 0) / 60:.0f} min"
                + (f", timeout up to {run['update_timeout']} s" if run.get("update_timeout", 0) > run["timeout"] else "")
                + f"): {', '.join(run['updated'])}."
                if run.get("updated") else ""), ""]
    lines += ["### The ten most common reasons (first failure of each row)", ""]
    lines += top_reasons(rows, first_problem)
    lines += ["", "### Why modelexport is not clean, where PyTorch's forward runs", ""]
    lines += top_reasons(rows, modelexport_problem)
    lines += ["", "### What torch.export alone (the anchor) fails on", ""]
    lines += top_reasons(rows, lambda r: f"anchor: {r['anchor']}" if not ok(r.get("anchor"))
                         and not str(r.get("anchor", "")).startswith("not run") else None)
    if section == "transformers4":
        c = counts(rows)
        lines += ["", "### Against plain Optimum, on the types optimum-onnx 0.1 has a config for", "",
                  f"{c['optimum_config']} types have an Optimum ONNX config; {c['optimum_built']} build tiny; plain "
                  f"Optimum exports {c['optimum']}; **modelexport exports {c['modelexport_optimum']} of those "
                  f"{c['optimum']}**, {c['clean_optimum']} of them clean. For these types the head is Optimum's "
                  "preferred task's class (as in the previous table), and modelexport's `auto` takes Optimum's "
                  "TorchScript path (`torchscript` in the path column)."]
    head = ["type", "head built", "builds", "forward", "anchor"]
    if section == "transformers4":
        head.append("Optimum")
    head += ["modelexport path", "nodes", "tagged", "partial", "root", "oracle (checked / wrong)", "validation",
             "loader runs it" + (" (ORTModel class / modelexport.load)" if section == "transformers4" else ""),
             "generate = PyTorch" + (" (load / Optimum)" if section == "transformers4" else ""), "clean",
             "failures (one line each)"]
    lines += ["", "### Every type", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += [row_line(r, section) for r in rows]
    wrong = [(r["model_type"], v) for r in rows for v in (r.get("oracle_violations") or [])[:3]]
    if wrong:
        lines += ["", "### Parameter-oracle violations (first three per type)", ""]
        lines += [f"- `{cell(t)}`: {cell(v)}" for t, v in wrong]
    return lines


def write_markdown(path: Path) -> None:
    sections = {}
    for section in SECTIONS:
        p = json_path(section)
        if p.is_file():
            sections[section] = json.loads(p.read_text())
    if "transformers5" in sections and "transformers4" in sections:
        old = {r["model_type"] for r in sections["transformers4"]["rows"]}
        for r in sections["transformers5"]["rows"]:
            r["new_in_5"] = r["model_type"] not in old
    lines = [
        "# Breadth: every model type transformers maps to a PyTorch model",
        "",
        "Generated by `python scripts/breadth_table.py` (once per environment: transformers 4.57 with optimum-onnx "
        "0.1, and transformers 5 without Optimum). For each type in transformers' `MODEL_MAPPING_NAMES` a tiny "
        "random model is built from the type's default config (sizes shrunk generically by "
        "`modelexport.testing.breadth.shrink_config`, no Hub, no tokenizer or processor), every parameter nudged so "
        "the value-based parameter oracle can follow it. The head: a causal LM first (exported with its KV cache), "
        "then seq2seq, speech seq2seq, image-text-to-text, classification heads, ..., the base model last, among the "
        "Auto mappings that hold the type (a type with a seq2seq or masked-LM head skips its causal-LM class); in "
        "4.57, types Optimum has a config for take Optimum's preferred task, so plain Optimum and modelexport "
        "export the same model.",
        "",
        "Columns, left to right, each a stage of one worker process per type:",
        "",
        "- **forward**: the tiny model's forward on the example inputs modelexport's own `InputBuilder` makes "
        "(`InputBuilder(model, task, Preprocessors(None)).build(batch=2, sequence=7)`, `use_cache=False` where "
        "forward takes it);",
        "- **anchor**: `torch.onnx.export(model, (), kwargs=those inputs, dynamo=True)` alone: no wrapper, no "
        "patches, no tags, static shapes; then its file in ONNX Runtime against PyTorch (`ORT ✗`: runs but differs, "
        "or fails);",
        "- **Optimum** (4.57): plain `onnx_export_from_model` with its validation (`val ✗`: its own validation "
        "warned);",
        "- **modelexport**: `modelexport.export(folder, out)` (`exporter=\"auto\"`): the path it took (metadata "
        "`exporter`), nodes, tagged (direct + inferred), partial (tagged with the common ancestor of several "
        "candidate modules), root fallback, the parameter oracle (nodes reading a parameter with a unique value / "
        "those tagged outside the parameter's module), validation (max |ONNX Runtime − PyTorch| of the export's "
        "own check, ✓ within its tolerance), the loader (4.57: the ORTModel class the metadata names, "
        "`from_pretrained` then run on the inputs; everywhere: `modelexport.load(folder)` run on the inputs), and "
        "for generative heads whether greedy `generate` (8 new tokens) through `modelexport.load` (and, in 4.57, "
        "the ORTModel class) equals PyTorch's `generate` (`=`, `≠`, `✗` failed);",
        "- **clean**: every node tagged, 0 root fallback, 0 oracle violations, validation passed, a loader runs it;",
        "- **failures**: every failing stage's one-line reason.",
        "",
        "## Counts",
        "",
    ]
    lines += summary_table(sections)
    for section, data in sections.items():
        lines += [""] + section_markdown(section, data)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


# -- main ---------------------------------------------------------------------------------------------
def main() -> int:
    global RESULTS
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--types", default=None, help="comma-separated model types (default: every type)")
    parser.add_argument("--sample", action="store_true", help=f"the {len(SAMPLE)} diverse types of SAMPLE")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--timeout", type=int, default=180, help="seconds per model type")
    parser.add_argument("--section", default="auto", choices=("auto", *SECTIONS),
                        help="which environment's section to write (auto: by the installed transformers)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "breadth.md")
    parser.add_argument("--update", action="store_true",
                        help="re-run only the types given and keep the other rows of the section's JSON")
    parser.add_argument("--keep-work", type=Path, default=None, help="copy each type's work folder here")
    parser.add_argument("--markdown-only", action="store_true", help="rebuild docs/breadth.md from the JSON files")
    parser.add_argument("--results", type=Path, default=None, help="folder of the sections' JSON files")
    args = parser.parse_args()
    if args.results is not None:
        RESULTS = args.results
    section = section_of_environment() if args.section == "auto" else args.section
    if args.markdown_only:
        write_markdown(args.out)
        print(f"wrote {args.out}")
        return 0
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from modelexport.testing.breadth import all_model_types, supported_model_types

    # every type transformers maps to a PyTorch model, and (4.57) the types Optimum has a config for
    # that are not in that mapping (composite types: encoder-decoder, vision-encoder-decoder, ...)
    everything = sorted(set(all_model_types()) | set(supported_model_types()))
    if args.sample:
        types = [t for t in SAMPLE if t in everything]
    elif args.types:
        types = args.types.split(",")
        unknown = [t for t in types if t not in everything]
        if unknown:  # a row for them would count in no table's denominator
            print(f"not mapped to a PyTorch model by this transformers: {', '.join(unknown)}", file=sys.stderr)
            return 1
    else:
        types = everything
    if args.keep_work:
        args.keep_work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    rows = run_all(types, args.jobs, args.timeout, args.keep_work)
    seconds = time.perf_counter() - started
    path = json_path(section)
    run = {"date": datetime.date.today().isoformat(), "seconds": round(seconds, 1), "jobs": args.jobs,
           "timeout": args.timeout, "cpus": os.cpu_count(), "python": platform.python_version(),
           "types_run": len(types), "load_average_after": os.getloadavg()[0],
           "versions": {p: _version(p) for p in ("torch", "transformers", "optimum-onnx", "onnx", "onnxruntime",
                                                 "onnxscript")}}
    if args.update and path.is_file():
        previous = json.loads(path.read_text())
        fresh = {r["model_type"] for r in rows}
        rows += [r for r in previous["rows"] if r["model_type"] not in fresh]
        # the header describes the full run; what the re-runs used is said apart
        for key in ("date", "seconds", "jobs", "timeout", "types_run", "load_average_after"):
            if key in previous["run"]:
                run[key] = previous["run"][key]
        # the note lists every row re-run since the full run, not only this call's
        run["updated"] = sorted(fresh | set(previous["run"].get("updated") or ()))
        run["update_seconds"] = round(seconds + previous["run"].get("update_seconds", 0), 1)
        run["update_timeout"] = max(args.timeout, previous["run"].get("update_timeout", 0))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"run": run, "rows": sorted(rows, key=lambda r: r["model_type"])}, indent=1) + "\n",
                    encoding="utf-8")
    write_markdown(args.out)
    print(f"{len(types)} types in {seconds / 60:.1f} min; wrote {args.out} and {path}")
    return 0


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


if __name__ == "__main__":
    sys.exit(main())
