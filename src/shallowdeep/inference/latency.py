"""Measure an early-exit engine's stage latency on this machine: the torch side of ``shallowdeep profile``.

Each stage is timed as the engine runs it on the path asked for (batch 1: the folded batch-1 heads,
NCHW memory, the decision read back to the host; batch B: the throughput engine's batched heads on
channels-last memory and its one host synchronisation per stage batch), the first stage with the
images' normalisation (every entry point does it), after warm-up, with the device synchronised
before every clock read. The plain network is timed the same way: the normalisation, every block
and the final classifier, no IC. What comes out is :class:`~shallowdeep.core.latency.LatencyProfile`.
"""

from __future__ import annotations

import platform
import time

import numpy as np
import torch

from ..compute.devices import device_name
from ..core.errors import ArgumentError
from ..core.latency import LatencyProfile, stage_latency
from .engine import EarlyExitEngine

MAX_REPEATS = 100_000


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.inference_mode()
def profile_engine(engine: EarlyExitEngine, images: torch.Tensor, batch: int = 1, repeats: int = 50) -> LatencyProfile:
    """Every stage's time per input (its blocks, its head, the exit decision; the first stage also
    normalises the uint8 images, as every entry point does) and the plain network's, on ``images``
    (uint8 ``[N, H, W, 3]``, N >= ``batch``; repeats cycle through them) at ``batch``, over
    ``repeats`` after ``max(10, repeats // 5)`` warm-up passes."""
    if not 1 <= batch <= len(images):
        raise ArgumentError(f"profiling at `batch` {batch} needs 1..{len(images)} (the images given)")
    if not 1 <= repeats <= MAX_REPEATS:
        raise ArgumentError(f"`repeats` must lie in 1..{MAX_REPEATS}, got {repeats}")
    warm = max(10, repeats // 5)  # oneDNN builds its kernels on the first calls of each shape
    stages: list[list[float]] = [[] for _ in engine._stages]
    plain: list[float] = []
    for r in range(warm + repeats):
        start = (r * batch) % (len(images) - batch + 1)
        xb = images[start : start + batch]
        times = _stage_pass(engine, xb)
        t_plain = _plain_pass(engine, xb)
        if r >= warm:
            for k, t in enumerate(times):
                stages[k].append(t / batch)
            plain.append(t_plain / batch)
    return LatencyProfile(
        engine.sdn.arch,
        device_name(engine.device),
        "torch",
        _versions(engine.device),
        batch,
        repeats,
        tuple(stage_latency(t) for t in stages),
        stage_latency(plain),
    )


def _prepared(engine: EarlyExitEngine, images: torch.Tensor) -> torch.Tensor:
    """The images as the path of their batch size takes them: normalised on the device, NCHW memory
    at batch 1, channels-last in batches."""
    x = engine.images(images)
    return x.contiguous() if len(x) == 1 else x.contiguous(memory_format=torch.channels_last)


def _stage_pass(engine: EarlyExitEngine, images: torch.Tensor) -> list[float]:
    """Seconds of every stage on ``images`` (blocks, head, decision, the decision read by the host;
    the first with the images' preparation); nobody leaves, so every stage sees the whole batch."""
    one = len(images) == 1
    times = []
    _sync(engine.device)
    t0 = time.perf_counter()
    h, z = _prepared(engine, images), None
    rows = engine._new_rows(h, 0)
    for k, (_, ic) in enumerate(engine._stages):
        h, z = engine._call_stage(k, h, one=one, prev=z)
        _, _, answer = engine._decide(z, rows, ic)
        answer.cpu()  # the host reads the decision: batch 1 branches on it, batches count the leavers
        _sync(engine.device)
        t1 = time.perf_counter()
        times.append(t1 - t0)
        t0 = t1
    return times


def _plain_pass(engine: EarlyExitEngine, images: torch.Tensor) -> float:
    """Seconds of the network without ICs on ``images``: their preparation, the engine's folded
    blocks and the final classifier."""
    _sync(engine.device)
    t0 = time.perf_counter()
    h = _prepared(engine, images)
    for blocks, _ in engine._stages:
        for block in blocks:
            h = block(h)
    engine._final(h).cpu()
    _sync(engine.device)
    return time.perf_counter() - t0


def _versions(device: torch.device) -> dict[str, str]:
    v = {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__}
    if device.type == "cuda":
        v["cuda"] = str(torch.version.cuda)
    return v
