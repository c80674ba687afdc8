"""Choosing the device to run on (the models layer: every layer that runs a network uses it)."""

from __future__ import annotations

import torch

from ..core.errors import ArgumentError


def pick_device(name: str | None) -> torch.device:
    """``name`` as a device (``None``: CUDA when available, else CPU), or a one-line error."""
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError):
        raise ArgumentError(f"unknown `device` {name!r}: use cpu, cuda or cuda:N") from None
    if dev.type not in ("cpu", "cuda"):
        raise ArgumentError(f"`device` {name!r} is not supported: use cpu, cuda or cuda:N")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ArgumentError("a CUDA `device` was asked for, but no CUDA device is available: use cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ArgumentError(
                f"`device` {name!r} does not exist: this machine has {torch.cuda.device_count()} CUDA devices"
            )
    return dev


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes in bfloat16 natively: a CUDA GPU of compute capability 8.0 or
    later (Ampere, Hopper, ...). Older GPUs (a T4, a V100) emulate it, slower than float32; the CPU
    is never chosen for it (autocast there changes the numerics of a bit-exact resume)."""
    if device.type != "cuda" or not torch.cuda.is_available():
        return False
    return torch.cuda.get_device_capability(device) >= (8, 0)


def device_name(device: torch.device) -> str:
    """The device as a latency profile names it: the GPU's name, or the processor's."""
    if device.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(device)}"
    from ..core.latency import processor_name

    return processor_name()
