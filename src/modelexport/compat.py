"""Every private name of torch, ONNX Runtime and Model Explorer that modelexport uses, behind one
adapter (Optimum's own are in ``exporter/optimum/compat.py``).

These names have no public equivalent (pytree flattening as the exporters flatten inputs, the
opsets each torch exporter writes, Model Explorer's update check, the names ONNX Runtime's
quantizer gives the nodes it makes from a Gemm) and may change in any release. The installed
version of each library is checked once, before the first use of its private names: a version
modelexport was not tested with fails in one line instead of deep inside a private function.
"""
from __future__ import annotations

import re
from functools import lru_cache
from importlib import metadata

from modelexport.errors import ModelExportError

# package -> (lowest, below) version tested: the ranges pyproject.toml declares.
TESTED = {
    "torch": ((2, 13), (2, 14)),
    "onnxruntime": ((1, 32), (1, 33)),
    "ai-edge-model-explorer": ((0, 1), (0, 2)),
}


def version_tuple(text: str) -> tuple[int, ...]:
    parts = []
    for piece in text.split("+")[0].split("."):
        digits = re.match(r"\d+", piece)
        if digits is None:
            break
        parts.append(int(digits.group()))
        if digits.end() < len(piece):  # "0rc1": a pre-release tag ends the numeric part
            break
    return tuple(parts)


def check_tested(package: str, tested: dict) -> None:
    """Refuse, in one line, a version of ``package`` outside ``tested[package]``."""
    low, high = tested[package]
    try:
        installed = metadata.version(package)
    except metadata.PackageNotFoundError:
        raise ModelExportError(f"{package} is not installed; install modelexport's dependencies") from None
    if not low <= version_tuple(installed)[:2] < high:
        low_s, high_s = ".".join(map(str, low)), ".".join(map(str, high))
        raise ModelExportError(
            f"{package} {installed} is not a version modelexport was tested with ({low_s} <= version < {high_s}): "
            f"it relies on that release's internals; install {package}>={low_s},<{high_s}")


@lru_cache(maxsize=None)
def check_version(package: str) -> None:
    check_tested(package, TESTED)


# -- torch ------------------------------------------------------------------------------------
def tree_flatten(value):
    """(leaves, spec) of nested inputs, flattened as both torch exporters flatten them."""
    check_version("torch")
    from torch.utils import _pytree as pytree

    return pytree.tree_flatten(value)


def tree_unflatten(leaves, spec):
    check_version("torch")
    from torch.utils import _pytree as pytree

    return pytree.tree_unflatten(leaves, spec)


def torchscript_opset_range() -> tuple[int, int]:
    """Opsets the TorchScript exporter (the one Optimum 0.1 calls) can write."""
    check_version("torch")
    from torch.onnx._constants import ONNX_MIN_OPSET, ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET

    return ONNX_MIN_OPSET, ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET


def dynamo_opset_range() -> tuple[int, int]:
    """Opsets the dynamo exporter writes without a version conversion afterwards (torchlib's
    functions start at 18; lower opsets are converted down, which fails on many graphs)."""
    check_version("torch")
    from torch.onnx._constants import ONNX_MAX_OPSET
    from torch.onnx._internal.exporter._constants import TORCHLIB_OPSET

    return TORCHLIB_OPSET, ONNX_MAX_OPSET


# -- ONNX Runtime -----------------------------------------------------------------------------
def gemm_rewrite_suffixes() -> tuple[str, ...]:
    """ONNX Runtime's quantizer first rewrites each Gemm as MatMul (+ Add, + Transpose) named after
    the Gemm with these suffixes (``onnxruntime/quantization/onnx_model.py``, ``replace_gemm_with_matmul``):
    excluding a Gemm from quantization means excluding those names too."""
    check_version("onnxruntime")
    return ("_MatMul", "_Add", "_Transpose")


# -- Model Explorer ---------------------------------------------------------------------------
def disable_model_explorer_update_check() -> None:
    """Model Explorer asks its package index for a newer version in the background on every
    start; a viewer of local files has no business on the network."""
    check_version("ai-edge-model-explorer")
    import model_explorer.server as me_server

    me_server._check_new_version = lambda print_msg=True: None
