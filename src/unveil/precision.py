"""Pick the device and the fastest safe precision for it, by detection rather than assumption."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import torch

from .errors import UserError


def pick_device(name: str) -> torch.device:
    if name == "cuda" or (name == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise UserError("train.device=cuda but no CUDA GPU is visible: use train.device=cpu or auto")
        return torch.device("cuda")
    return torch.device("cpu")


def cpu_has_fast_bf16() -> bool:
    """True when the CPU has native bf16 matrix units (AMX or AVX512-BF16)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def machine_description(device: torch.device | None = None) -> str:
    """The GPU's name, or the CPU's model, cores and bf16-relevant flags: said beside every measured figure,
    since the same run differs between an Intel with AMX and an AMD with or without native bf16."""
    if device is not None and device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (GPU)"
    model, flags = "", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and not model:
                model = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(value.split())
    except OSError:
        pass
    wanted = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")
    have = [f for f in wanted if f in flags]
    return (f"{model or 'CPU'}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads, "
            f"bf16 units: {' '.join(f for f in have if 'bf16' in f) or 'none'}")


def pick_precision(name: str, device: torch.device) -> str:
    if name != "auto":
        return name
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if cpu_has_fast_bf16() else "fp32"


def autocast(device: torch.device, precision: str):
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def configure_kernels(device: torch.device, deterministic: bool) -> None:
    """Speed by default, bit-reproducible kernels on request (``train.deterministic``).

    Default on CUDA: cuDNN autotuning (``benchmark``) and TF32 matmuls in fp32 code, both fast and
    both free to pick different kernels run to run, so a resumed CUDA run follows the same batches
    and random streams but may drift in the last bits. ``deterministic`` turns autotuning off,
    asks cuBLAS for a fixed workspace and makes PyTorch use deterministic kernels (warning, not
    failing, where an op has none). On CPU every kernel here is deterministic already.
    """
    if device.type != "cuda":
        if deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
        return
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # before the first cuBLAS call
        torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = not deterministic
    torch.backends.cudnn.deterministic = deterministic
    torch.backends.cuda.matmul.allow_tf32 = not deterministic
    torch.backends.cudnn.allow_tf32 = not deterministic
