"""Measured stage latency (``LatencyProfile``, ``latency.json``): the deploy runtime's
(``shallowdeep_deploy.latency``), written by the torch engine's profiler and the torch-free runtime's
alike and read by a latency budget's calibration."""

from shallowdeep_deploy.latency import (
    FILE,
    PERCENTILES,
    LatencyProfile,
    StageLatency,
    processor_name,
    stage_latency,
)

__all__ = ["FILE", "PERCENTILES", "LatencyProfile", "StageLatency", "processor_name", "stage_latency"]
