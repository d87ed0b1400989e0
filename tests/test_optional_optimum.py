"""Optimum is optional: only ``modelexport/exporter/optimum/`` imports it, and without it every
module imports and every verb that does not need it starts."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import modelexport

PACKAGE = Path(modelexport.__file__).parent
OPTIMUM_HOME = PACKAGE / "exporter" / "optimum"


def _optimum_imports(path: Path) -> list[int]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import) and any(a.name == "optimum" or a.name.startswith("optimum.")
                                                for a in node.names):
            lines.append(node.lineno)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0 and \
                (node.module == "optimum" or node.module.startswith("optimum.")):
            lines.append(node.lineno)
    return lines


def test_only_the_optimum_subpackage_imports_optimum():
    offenders = {str(p.relative_to(PACKAGE)): lines for p in PACKAGE.rglob("*.py")
                 if OPTIMUM_HOME not in p.parents and (lines := _optimum_imports(p))}
    assert offenders == {}
    assert _optimum_imports(OPTIMUM_HOME / "bridge.py")  # the check sees imports where they are


def test_every_module_imports_with_optimum_blocked():
    """In a fresh interpreter where ``import optimum`` fails as where it is not installed, every
    module of the package imports, and the CLI's parser (every verb) builds."""
    code = f"""
import importlib, pkgutil, sys
# None in sys.modules: `import optimum` raises ModuleNotFoundError and importlib.util.find_spec
# answers None, as where it is not installed (transformers probes it that way)
sys.modules["optimum"] = None
import modelexport
failed = []
for info in pkgutil.walk_packages(modelexport.__path__, "modelexport."):
    if info.name.endswith("__main__"):
        continue
    try:
        importlib.import_module(info.name)
    except ImportError as e:
        failed.append(f"{{info.name}}: {{e}}")
from modelexport.cli.main import build_parser
build_parser()
assert not any(m.startswith("optimum.") or (m == "optimum" and sys.modules[m] is not None)
               for m in sys.modules), "optimum was imported"
print("\\n".join(failed))
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == ""


def test_a_verb_that_needs_optimum_says_so_in_one_line(tmp_path):
    """Where Optimum is absent, asking for its exporter is one line with the install command."""
    from modelexport.errors import ModelExportError
    from modelexport.exporter.exporters import check_exporter
    from modelexport.exporter.optimum import available

    if available():
        check_exporter("torchscript")  # nothing to refuse here
        return
    try:
        check_exporter("torchscript")
    except ModelExportError as e:
        assert "pip install 'modelexport[optimum]'" in str(e) and "\n" not in str(e)
    else:
        raise AssertionError("the torchscript exporter was accepted without Optimum")
