"""How well each output's confidence matches its accuracy: reliability curves and expected
calibration error (ECE), per output, from a record (pure, numpy only)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from ..core.io import JSONObject
from .record import ExitRecord


@dataclass(frozen=True)
class Reliability:
    """One output's reliability curve over ``bins`` equal-width confidence bins and its ECE: the
    count-weighted mean of |accuracy - mean confidence| over the bins (Guo et al. 2017)."""

    output: int
    edges: list[float]
    counts: list[int]
    mean_confidence: list[float | None]
    accuracy: list[float | None]
    ece: float

    def to_json(self) -> JSONObject:
        return asdict(self)


def reliability(record: ExitRecord, bins: int = 15) -> list[Reliability]:
    """The reliability curve and ECE of every output of ``record`` (confidence = max softmax)."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    out = []
    n = record.num_inputs
    for k in range(record.num_outputs):
        conf = record.confidence[:, k]
        right = record.correct[:, k].astype(np.float64)
        # bin i holds confidences in (edges[i], edges[i+1]]; a confidence of exactly 0 goes to bin 0
        idx = np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, bins - 1)
        counts = np.bincount(idx, minlength=bins)
        conf_sum = np.bincount(idx, weights=conf, minlength=bins)
        acc_sum = np.bincount(idx, weights=right, minlength=bins)
        with np.errstate(invalid="ignore", divide="ignore"):
            mc = conf_sum / counts
            acc = acc_sum / counts
        ece = float(np.nansum(counts * np.abs(acc - mc)) / n) if n else 0.0
        out.append(
            Reliability(
                k,
                edges.tolist(),
                counts.tolist(),
                [None if c == 0 else float(v) for c, v in zip(counts, mc)],
                [None if c == 0 else float(v) for c, v in zip(counts, acc)],
                ece,
            )
        )
    return out


@dataclass(frozen=True)
class ClassAccuracy:
    """Per class: test inputs, the final output's accuracy and early exits' accuracy."""

    counts: list[int]
    final: list[float | None]
    early_exit: list[float | None]

    def to_json(self) -> JSONObject:
        return asdict(self)


def per_class(record: ExitRecord, predictions: np.ndarray) -> ClassAccuracy:
    """Accuracy per true class of the final output and of ``predictions`` (early exits' answers)."""
    c = record.num_classes
    counts = np.bincount(record.labels, minlength=c)
    final = np.bincount(record.labels, weights=record.correct[:, -1].astype(float), minlength=c)
    early = np.bincount(record.labels, weights=(predictions == record.labels).astype(float), minlength=c)

    def share(x: np.ndarray) -> list[float | None]:
        return [None if n == 0 else float(v / n) for v, n in zip(x, counts)]

    return ClassAccuracy(counts.tolist(), share(final), share(early))
