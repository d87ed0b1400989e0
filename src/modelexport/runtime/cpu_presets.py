"""Quantization settings for the CPU the model will run on.

ONNX Runtime's int8 kernels differ by instruction set: with VNNI (AVX-512 VNNI, AVX-VNNI, AMX) a
``u8 x s8`` dot product is one instruction over the full 8-bit range; on AVX2 or AVX-512 without
VNNI the same product goes through ``vpmaddubsw``, whose 16-bit intermediate sums saturate unless
the weights use 7 bits (``reduce_range``); ARM64 has its own ``s8`` dot products. The presets are
Optimum's ``AutoQuantizationConfig`` ones (weights symmetric, activations asymmetric ``uint8``),
written out here so that no Optimum is needed; per-channel weight scales are the default on every
preset (measured: ``benchmarks/quantize_presets.py``).
"""
from __future__ import annotations

import platform
from dataclasses import asdict, dataclass
from pathlib import Path

from modelexport.errors import ModelExportError


@dataclass(frozen=True)
class Preset:
    name: str
    weight_type: str  # "QInt8" or "QUInt8" (onnxruntime.quantization.QuantType member names)
    reduce_range: bool  # 7-bit weights: no saturation in vpmaddubsw on CPUs without VNNI
    description: str


PRESETS = {
    "avx512_vnni": Preset("avx512_vnni", "QInt8", False,
                          "int8 weights, full range (VNNI/AMX: u8 x s8 dot products without saturation)"),
    "avx512": Preset("avx512", "QInt8", True, "int8 weights in 7 bits (AVX-512 without VNNI saturates 8-bit sums)"),
    "avx2": Preset("avx2", "QUInt8", True, "uint8 weights in 7 bits (AVX2 without VNNI saturates 8-bit sums)"),
    "arm64": Preset("arm64", "QInt8", False, "int8 weights, full range (ARM64 dot products)"),
}

_VNNI = ("avx512_vnni", "avx512vnni", "avx_vnni", "avxvnni", "amx_int8", "amx-int8")
_AVX512 = ("avx512bw",)


@dataclass(frozen=True)
class CpuChoice:
    preset: Preset
    reason: str  # why this preset: the instruction set found, or "asked for"
    machine: str
    flags: tuple[str, ...] = ()  # the instruction sets that decided it

    def as_dict(self) -> dict:
        return {"preset": self.preset.name, **{k: v for k, v in asdict(self.preset).items() if k != "name"},
                "reason": self.reason, "machine": self.machine, "deciding_flags": list(self.flags)}


def choose_preset(machine: str, flags: set[str] | frozenset[str]) -> CpuChoice:
    """The preset for a CPU given its architecture (``platform.machine()``) and its instruction
    set flags (``/proc/cpuinfo`` spelling, lower case)."""
    flags = {f.lower() for f in flags}
    arch = machine.lower()
    if arch in ("aarch64", "arm64", "armv8l", "armv8b") or arch.startswith("arm"):
        return CpuChoice(PRESETS["arm64"], f"{machine} CPU", machine)
    vnni = sorted(flags.intersection(_VNNI))
    if vnni:
        return CpuChoice(PRESETS["avx512_vnni"], f"the CPU has {', '.join(vnni)}", machine, tuple(vnni))
    avx512 = sorted(flags.intersection(_AVX512))
    if avx512:
        return CpuChoice(PRESETS["avx512"], "the CPU has AVX-512 without VNNI", machine, tuple(avx512))
    if "avx2" in flags:
        return CpuChoice(PRESETS["avx2"], "the CPU has AVX2 without VNNI", machine, ("avx2",))
    return CpuChoice(PRESETS["avx2"], "no AVX2 or VNNI found: the most portable x86 settings", machine)


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> set[str]:
    """The instruction set flags of this machine's first CPU (Linux: ``flags``/``Features``);
    empty where ``/proc/cpuinfo`` does not exist (macOS, Windows: the architecture decides)."""
    try:
        text = cpuinfo.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in ("flags", "features"):
            return set(value.split())
    return set()


def this_machine() -> CpuChoice:
    return choose_preset(platform.machine(), cpu_flags())


def resolve_preset(name: str | None) -> CpuChoice:
    """``auto`` (or None): this machine's preset; else the named one."""
    if name in (None, "auto"):
        return this_machine()
    if name not in PRESETS:
        raise ModelExportError(f"unknown --preset {name!r}; choose auto or one of {', '.join(PRESETS)}")
    return CpuChoice(PRESETS[name], "asked for (--preset)", platform.machine())
