"""Safe by default: interrupted exports, full or read-only disks, untrusted weights and code,
bad models, and hostile ONNX files. Every test runs the real command."""
from __future__ import annotations

import contextlib
import io
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper

from modelexport.cli.main import main as cli

ENV = {**os.environ, "HF_HUB_OFFLINE": "1"}


def run_cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "modelexport", *map(str, args)], capture_output=True, text=True,
                          env=ENV, timeout=600)


def one_error_line(proc) -> str:
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("modelexport: error:")]
    assert len(errors) == 1, proc.stderr
    return errors[0]


# -- interrupted exports ----------------------------------------------------------------------
def _start_and_signal(model_dir: Path, out: Path, sig: int, extra=()) -> subprocess.CompletedProcess:
    """Start a real export, wait until its staging folder exists (weights loaded, export under
    way), then send the signal."""
    proc = subprocess.Popen([sys.executable, "-m", "modelexport", "export", str(model_dir), str(out), *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if any(p.name.startswith(f".{out.name}.modelexport-") for p in out.parent.iterdir()):
            break
        time.sleep(0.02)
    time.sleep(0.2)
    assert proc.poll() is None, "the export finished before it could be interrupted"
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=120)
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


@pytest.mark.parametrize("sig, code, word", [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")])
def test_signal_during_export_leaves_nothing(minilm_dir, tmp_path, sig, code, word):
    out = tmp_path / "out"
    proc = _start_and_signal(minilm_dir, out, sig)
    assert proc.returncode == code, proc.stderr
    assert word in proc.stderr and "Traceback" not in proc.stderr
    assert list(tmp_path.iterdir()) == []  # no OUTPUT_DIR, no staging folder


def test_signal_during_force_keeps_previous_folder(minilm_dir, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "model.onnx").write_bytes(b"previous export")
    (out / "modelexport_metadata.json").write_text('{"schema": "modelexport.metadata"}')
    proc = _start_and_signal(minilm_dir, out, signal.SIGTERM, extra=("--force",))
    assert proc.returncode == 143
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
    assert sorted(p.name for p in out.iterdir()) == ["model.onnx", "modelexport_metadata.json"]
    assert (out / "model.onnx").read_bytes() == b"previous export"


def test_signal_after_the_folder_is_in_place_is_told_as_it_is(minilm_dir, tmp_path):
    """Ctrl-C right after the output folder is swapped in (the summary is being printed, or the
    interpreter shutting down): the export is complete and stays; the process ends 0, or 130 saying
    the folder was written; never killed by the signal (-2), never "nothing was written"."""
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "modelexport", "export", str(minilm_dir), str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None and not out.exists():
        time.sleep(0.005)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode in (0, 130), (proc.returncode, stderr)
    assert "nothing was written" not in stderr and "Traceback" not in stderr, stderr
    if proc.returncode == 130:
        assert f"interrupted; already written, complete: {out}" in stderr, stderr
    assert {"model.onnx", "modelexport_metadata.json", "config.json"} <= {p.name for p in out.iterdir()}
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


# -- disks -------------------------------------------------------------------------------------
@contextlib.contextmanager
def tmpfs(path: Path, options: str):
    path.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.decode().strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=True)


def test_full_disk_gives_clear_error_and_leaves_nothing(minilm_dir, tmp_path):
    with tmpfs(tmp_path / "small", "size=2m") as small:
        proc = run_cli("export", minilm_dir, small / "out")
        assert "no space left" in one_error_line(proc)
        assert list(small.iterdir()) == []


def test_read_only_output_refused_before_loading(tiny_bert_dir, tmp_path):
    with tmpfs(tmp_path / "ro", "size=2m,ro") as ro:
        proc = run_cli("export", tiny_bert_dir, ro / "out")
        assert "read-only" in one_error_line(proc)
        assert "Loading model" not in proc.stderr  # refused before any expensive work


# -- untrusted weights and code ------------------------------------------------------------------
class _Evil:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickle_checkpoint_that_runs_code_is_refused(tiny_bert_dir, tmp_path):
    import torch
    from safetensors.torch import load_file

    folder = tmp_path / "evil"
    shutil.copytree(tiny_bert_dir, folder)
    state = load_file(folder / "model.safetensors")
    marker = tmp_path / "PWNED"
    state["payload"] = _Evil(str(marker))
    torch.save(state, folder / "pytorch_model.bin")
    (folder / "model.safetensors").unlink()
    proc = run_cli("export", folder, tmp_path / "out")
    assert "refused to load the pickle checkpoint" in one_error_line(proc)
    assert not marker.exists()  # the payload never ran
    assert not (tmp_path / "out").exists()


def test_remote_code_needs_the_flag(tmp_path):
    folder = tmp_path / "custom"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "my-custom-arch", "auto_map": '
                                        '{"AutoConfig": "configuration_custom.CustomConfig"}}')
    (folder / "configuration_custom.py").write_text("raise SystemExit('custom code ran')\n")
    proc = run_cli("export", folder, tmp_path / "out")
    assert "--trust-remote-code" in one_error_line(proc)
    assert "custom code ran" not in proc.stderr + proc.stdout


@pytest.mark.parametrize("damage, words", [
    ("truncate", "truncated or corrupt"),
    ("remove", "no weights"),
])
def test_damaged_or_missing_weights(tiny_bert_dir, tmp_path, damage, words):
    folder = tmp_path / "m"
    shutil.copytree(tiny_bert_dir, folder)
    weights = folder / "model.safetensors"
    if damage == "truncate":
        weights.write_bytes(weights.read_bytes()[:1000])
    else:
        weights.unlink()
    proc = run_cli("export", folder, tmp_path / "out")
    assert words in one_error_line(proc)
    assert not (tmp_path / "out").exists()


def _below_default() -> str:
    from modelexport.exporter.optimum import available

    # Optimum's TorchScript path names its default; the generic path (torch.export) its lowest opset
    return "below Optimum's default" if available() else "writes opsets 18 to"


@pytest.mark.parametrize("opset, words", [("99", "not supported"), ("7", _below_default())])
def test_bad_opset(tiny_bert_dir, tmp_path, opset, words):
    proc = run_cli("export", tiny_bert_dir, tmp_path / "out", "--opset", opset)
    assert words in one_error_line(proc)
    assert sorted(tmp_path.iterdir()) == []


def test_debug_shows_the_traceback(tmp_path):
    proc = run_cli("--debug", "export", tmp_path / "missing", tmp_path / "out")
    assert proc.returncode == 1 and "Traceback" in proc.stderr


# -- hostile ONNX files ----------------------------------------------------------------------------
def _model(nodes, inputs=("x",), outputs=("y",)):
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info(i, TensorProto.FLOAT, [2]) for i in inputs],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, [2]) for o in outputs])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _tag(node, module_path, hierarchy_tag):
    node.metadata_props.add(key="module_path", value=module_path)
    node.metadata_props.add(key="hierarchy_tag", value=hierarchy_tag)
    return node


ODD = 'a<b&c"d\'e\nf|g*_`ñ\u202e\x01'
HOSTILE = {
    "empty-graph": lambda: _model([], inputs=(), outputs=()),
    "cycle": lambda: _model([_tag(helper.make_node("Add", ["x", "b"], ["a"], name="n1"), "m1", "/M/A"),
                             _tag(helper.make_node("Relu", ["a"], ["b"], name="n2"), "m2", "/M/B"),
                             _tag(helper.make_node("Identity", ["a"], ["y"], name="n3"), "m1", "/M/A")]),
    "dangling-input": lambda: _model([_tag(helper.make_node("Add", ["x", "nowhere"], ["y"], name="n1"), "m", "/M")]),
    "odd-tags": lambda: _model([_tag(helper.make_node("Relu", ["x"], ["y"], name=ODD), ODD + ".sub", "/" + ODD)]),
    "long-tags": lambda: _model([_tag(helper.make_node("Relu", ["x"], ["y"], name="n" * 10_000),
                                      "m" * 100_000 + ".end", "/M" * 100_000)]),
    "deep-tags": lambda: _model([_tag(helper.make_node("Relu", ["x"], ["y"], name="n"),
                                      "m." * 50_000 + "end", "/M" * 50_000)]),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_models_in_every_reading_command(case, tmp_path):
    import networkx as nx

    path = tmp_path / f"{case}.onnx"
    onnx.save(HOSTILE[case](), path)
    for argv in (["analyze", path], ["analyze", path, "--format", "json"], ["analyze", path, "--format", "csv"],
                 ["compare", path, path], ["report", path, "-o", tmp_path / "r.md"],
                 ["graphml", path, "-o", tmp_path / "g.graphml"], ["validate", path]):
        code, _, err = _in_process(argv)
        assert code in (0, 1) and "Traceback" not in err, (argv, err)
        if argv[0] == "validate" and case in ("cycle", "dangling-input", "empty-graph"):
            assert code == 1  # broken graphs never validate
    if case == "deep-tags":
        code, _, err = _in_process(["analyze", path])
        assert code == 1 and "nested 50001 levels deep" in err  # a clean refusal, not a RecursionError
        return
    nx.read_graphml(tmp_path / "g.graphml")  # valid XML whatever the names held
    report = (tmp_path / "r.md").read_text(encoding="utf-8")
    if case == "odd-tags":
        assert "a\\<b&amp;c" in report and "\x01" not in report and "|g" not in report.replace("\\|g", "")


def _in_process(argv) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli([str(a) for a in argv])
    return code, out.getvalue(), err.getvalue()


@contextlib.contextmanager
def hang_guard(seconds: int):
    """Fail (not time) a call that never returns: catches hangs, is no speed assertion."""
    def on_alarm(signum, frame):
        raise AssertionError(f"command did not return within {seconds} s")
    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@pytest.fixture(scope="module")
def seed_onnx(tmp_path_factory) -> bytes:
    import torch

    import modelexport

    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(4, 4)

        def forward(self, x):
            return torch.relu(self.lin(x))

    module = torch.nn.Sequential(Block(), Block())
    path = tmp_path_factory.mktemp("seed") / "seed.onnx"
    modelexport.export_module(module, (torch.randn(1, 4),), path, input_names=["x"])
    return path.read_bytes()


def _mutate(seed_bytes: bytes, rng) -> bytes:
    blob = bytearray(seed_bytes)
    kind = rng.choice(["flip", "truncate", "insert", "splice"])
    if kind == "flip":
        for _ in range(rng.randint(1, 20)):
            blob[rng.randrange(len(blob))] = rng.randrange(256)
    elif kind == "truncate":
        blob = blob[: rng.randint(0, len(blob))]
    elif kind == "insert":
        i = rng.randint(0, len(blob))
        blob[i:i] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 64)))
    else:
        a, b = sorted(rng.randint(0, len(blob)) for _ in range(2))
        blob = blob[:a] + blob[b:] + blob[a:b]
    return bytes(blob)


FUZZ_FILES, FUZZ_BUDGET_S, FUZZ_MIN_FILES = 2000, 150, 300


def test_fuzz_mutated_real_onnx(seed_onnx, tmp_path):
    """Thousands of seeded mutations of a real tagged file through every reader. A refusal is
    exit 1 with one 'modelexport: error:' line; an internal error (exit 2) fails the test with the
    file kept for replay. Bounded in time: stops after FUZZ_BUDGET_S, but must get through
    FUZZ_MIN_FILES files (a fuzz that ran nothing proves nothing)."""
    import random
    import time

    rng = random.Random(20261127)
    path = tmp_path / "fuzz.onnx"
    started, done = time.monotonic(), 0
    for done in range(1, FUZZ_FILES + 1):
        path.write_bytes(_mutate(seed_onnx, rng))
        for argv in (["analyze", path, "--format", "json"], ["graphml", path, "-o", tmp_path / "f.graphml"],
                     ["report", path, "-o", tmp_path / "f.md"], ["compare", path, path],
                     ["validate", path, "--no-run"]):
            with hang_guard(60):
                code, _, err = _in_process(argv)
            if code not in (0, 1):
                kept = tmp_path.parent / f"fuzz-failure-{done}.onnx"
                kept.write_bytes(path.read_bytes())
                raise AssertionError(f"{argv[0]} on mutant {done} (kept as {kept}): exit {code}: {err}")
            assert "Traceback" not in err
            if code == 1 and argv[0] != "validate":  # validate's exit 1 is a failed check, not an error
                assert err.startswith("modelexport: error:") and err.count("\n") == 1, err
        if time.monotonic() - started > FUZZ_BUDGET_S:
            break
    assert done >= FUZZ_MIN_FILES, f"only {done} mutants in {FUZZ_BUDGET_S} s"
