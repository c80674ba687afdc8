"""Measured stage latency: ``latency.json``, what ``shallowdeep profile`` writes and a latency budget reads.

An early-exit input's time is the time of the stages it ran: stage k is the blocks up to IC k, the
IC's head and the exit decision (the last stage: the rest of the network and the final classifier).
A :class:`LatencyProfile` holds each stage's time per input, measured on one device with one
runtime (torch or onnxruntime) for one path (batch 1, or the throughput engine at batch B, where a
stage's time per input is its batch's time over B), as the median, the 95th and 99th
percentiles and the mean over repeats, and the plain network's time beside it (every block and the final
classifier, no IC). numpy and the standard library only: the torch engine and the torch-free
runtime write the same file.
"""

from __future__ import annotations

import math
import os
import platform
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import ArgumentError
from .names import JSONObject

FORMAT = "shallowdeep-latency/1"
FILE = "latency.json"
PERCENTILES = (50, 95, 99)  # what a profile keeps per stage; a latency budget bounds the mean or one of these
RUNTIMES = ("torch", "onnx")
MAX_STAGES = 1024


@dataclass(frozen=True)
class StageLatency:
    """One stage's milliseconds per input: median, 95th and 99th percentile and mean over the repeats."""

    p50: float
    p95: float
    p99: float
    mean: float

    def at(self, percentile: int | None) -> float:
        """The time at one of :data:`PERCENTILES`, or (``None``) the mean."""
        return self.mean if percentile is None else {50: self.p50, 95: self.p95, 99: self.p99}[percentile]

    def to_json(self) -> JSONObject:
        return {"p50_ms": self.p50, "p95_ms": self.p95, "p99_ms": self.p99, "mean_ms": self.mean}


@dataclass(frozen=True)
class LatencyProfile:
    """Per-stage latency of one model on one device (see the module docstring). ``arch`` and the
    number of stages tie it to a model: a profile of another network is refused where it is used."""

    arch: str
    device: str
    runtime: str
    versions: dict[str, str]
    batch: int
    repeats: int
    stages: tuple[StageLatency, ...]
    plain: StageLatency  # the network without ICs, end to end

    def __post_init__(self) -> None:
        if self.runtime not in RUNTIMES:
            raise ArgumentError(f"a latency profile's runtime is torch or onnx, not {self.runtime!r}")
        if not 2 <= len(self.stages) <= MAX_STAGES:
            raise ArgumentError(f"a latency profile has 2..{MAX_STAGES} stages, got {len(self.stages)}")
        if not (isinstance(self.batch, int) and 1 <= self.batch <= 1 << 20 and self.repeats >= 1):
            raise ArgumentError("a latency profile's batch and repeats are whole numbers >= 1")

    @property
    def num_outputs(self) -> int:
        return len(self.stages)

    def cumulative_ms(self, percentile: int | None = None) -> np.ndarray:
        """Per output, the milliseconds an input that leaves there spends: its stages' times summed
        (each stage's mean, or its time at ``percentile``: a sum of means is the mean of the sum)."""
        return np.cumsum([s.at(_percentile(percentile)) for s in self.stages])

    def plain_ms(self, percentile: int | None = None) -> float:
        return self.plain.at(_percentile(percentile))

    def describe(self) -> str:
        """One line: runtime, path, device."""
        if self.batch == 1:
            path = "batch 1"
        elif self.runtime == "torch":
            path = f"the throughput engine at batch {self.batch}"
        else:
            path = f"batches of {self.batch}"
        return f"{self.runtime} on {self.device}, {path}"

    def to_json(self) -> JSONObject:
        return {
            "format": FORMAT,
            "arch": self.arch,
            "device": self.device,
            "runtime": self.runtime,
            "versions": dict(self.versions),
            "batch": self.batch,
            "repeats": self.repeats,
            "stages": [s.to_json() for s in self.stages],
            "plain": self.plain.to_json(),
        }

    @classmethod
    def from_json(cls, d: Any) -> LatencyProfile:
        """A profile as :meth:`to_json` wrote it, checked (an :class:`ArgumentError` names the key)."""
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            got = d.get("format") if isinstance(d, dict) else type(d).__name__
            raise ArgumentError(f"a latency profile is a JSON object of format {FORMAT}, got {got!r}")
        stages = d.get("stages")
        if not isinstance(stages, list) or not 2 <= len(stages) <= MAX_STAGES:
            raise ArgumentError(f"a latency profile's stages is a list of 2..{MAX_STAGES} stage times")
        versions = d.get("versions")
        if not isinstance(versions, dict) or not all(isinstance(v, str) for v in versions.values()):
            raise ArgumentError("a latency profile's versions maps names to version strings")
        for key in ("arch", "device", "runtime"):
            if not isinstance(d.get(key), str) or not d[key] or len(d[key]) > 1000:
                raise ArgumentError(f"a latency profile's {key} is a non-empty string, got {d.get(key)!r}")
        return cls(
            d["arch"],
            d["device"],
            d["runtime"],
            {str(k): v for k, v in versions.items()},
            _whole(d.get("batch"), "batch"),
            _whole(d.get("repeats"), "repeats"),
            tuple(_stage(s, f"stages[{k}]") for k, s in enumerate(stages)),
            _stage(d.get("plain"), "plain"),
        )


def _percentile(p: int | None) -> int | None:
    if p is not None and p not in PERCENTILES:
        raise ArgumentError(f"a latency percentile is one of {', '.join(map(str, PERCENTILES))}, got {p!r}")
    return p


def _whole(v: Any, what: str) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or v < 1:
        raise ArgumentError(f"a latency profile's {what} is a whole number >= 1, got {v!r}")
    return v


def _stage(v: Any, what: str) -> StageLatency:
    if not isinstance(v, dict):
        raise ArgumentError(f"a latency profile's {what} is an object of p50_ms, p95_ms, p99_ms, mean_ms")
    ms = [v.get(f"p{p}_ms") for p in PERCENTILES] + [v.get("mean_ms")]
    if not all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x >= 0 for x in ms):
        raise ArgumentError(f"a latency profile's {what} times are finite milliseconds >= 0, got {ms!r}")
    if not ms[0] <= ms[1] <= ms[2]:
        raise ArgumentError(f"a latency profile's {what} percentiles are not in increasing order: {ms!r}")
    return StageLatency(*(float(x) for x in ms))


def stage_latency(seconds: Any) -> StageLatency:
    """A stage's :class:`StageLatency` from its measured times in seconds (one per repeat)."""
    t = np.asarray(seconds, np.float64) * 1e3
    if not len(t):
        raise ArgumentError("a stage's latency needs at least one measured time")
    p50, p95, p99 = (float(v) for v in np.percentile(t, PERCENTILES))
    return StageLatency(p50, max(p95, p50), max(p99, p95, p50), float(t.mean()))


def processor_name() -> str:
    """This machine's processor as a latency profile names it (with its core count)."""
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            name = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), name)
    except OSError:
        pass
    return f"cpu: {name} ({os.cpu_count()} cores)"
