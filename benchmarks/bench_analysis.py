"""Time every record analysis (overthinking, early-exit sweep + calibration, confusion) on a record of
10,000 inputs x 7 outputs x 100 classes. Prints the median of repeated runs; the last line is
``analysis_seconds=<median>``. Drawing is not included."""

from __future__ import annotations

import os
import platform
import statistics
import time

import numpy as np
import torch

from shallowdeep.analysis import ExitRecord, calibrate, confusion, overthinking
from shallowdeep.analysis.early_exit import reference_protocol


def make(seed: int, n: int = 10_000, k: int = 7, c: int = 100) -> ExitRecord:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, c, n)
    logits = rng.normal(size=(n, k, c)).astype(np.float32) * 2
    # later outputs are more often right and more confident, as in a trained SDN
    boost = np.linspace(1, 6, k, dtype=np.float32)
    logits[np.arange(n)[:, None], np.arange(k)[None, :], labels[:, None]] += boost * rng.uniform(0, 1.5, (n, 1)).astype(
        np.float32
    )
    return ExitRecord.from_arrays(logits, labels, np.linspace(0.15, 1.01, k), 1.0)


def once(val: ExitRecord, test: ExitRecord, train: ExitRecord) -> float:
    # fresh records, so that cached softmax/argmax are recomputed inside the timing
    val, test, train = (ExitRecord.from_arrays(r.logits, r.labels, r.costs, r.cnn_cost) for r in (val, test, train))
    t0 = time.perf_counter()
    overthinking(test)
    calibrate(val, test, max_drop=0.01)
    calibrate(val, test, budget=0.5)
    reference_protocol(test)
    confusion(test, stats=train)
    return time.perf_counter() - t0


def per_ic_once(val: ExitRecord, test: ExitRecord, mode) -> float:
    val, test = (ExitRecord.from_arrays(r.logits, r.labels, r.costs, r.cnn_cost) for r in (val, test))
    t0 = time.perf_counter()
    calibrate(val, test, max_drop=0.01, per_ic=mode)
    return time.perf_counter() - t0


def main() -> None:
    val, test, train = make(1), make(2), make(3)
    for mode, label in ((True, "per-IC thresholds (coordinate descent)"), ("auto", "per-IC decided by 5-fold CV")):
        per = [per_ic_once(val, test, mode) for _ in range(3)]
        print(
            f"# {label}, one calibration (not in the figure below): median {statistics.median(per):.3f} s "
            f"({min(per):.3f}-{max(per):.3f})"
        )
    once(val, test, train)  # warm-up
    times = [once(val, test, train) for _ in range(7)]
    print(
        f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"numpy {np.__version__}"
    )
    print("# record: 10000 inputs x 7 outputs x 100 classes; val, test and train records of that size")
    print(f"# runs (s): {' '.join(f'{t:.3f}' for t in times)}; spread {min(times):.3f}-{max(times):.3f}")
    print(f"analysis_seconds={statistics.median(times):.4f}")


if __name__ == "__main__":
    main()
