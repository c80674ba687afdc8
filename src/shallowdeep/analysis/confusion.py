"""The confusion metric (paper section 5.2, spec section 9)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from ..core.io import JSONObject
from .record import ExitRecord


def confusion_scores(record: ExitRecord) -> np.ndarray:
    """Raw confusion of each input: sum over outputs of the L1 distance of its softmax to the final's."""
    p = record.probs
    return np.abs(p - p[:, -1:, :]).sum(axis=(1, 2))


def average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks of ``values``, ties sharing their average rank (what AUROC's tie rule needs)."""
    order = np.argsort(values, kind="stable")
    sorted_v = values[order]
    # boundaries of runs of equal values
    starts = np.flatnonzero(np.concatenate([[True], sorted_v[1:] != sorted_v[:-1]]))
    ends = np.concatenate([starts[1:], [len(values)]])
    avg = (starts + ends + 1) / 2.0  # mean of ranks starts+1 .. ends
    ranks = np.empty(len(values))
    ranks[order] = np.repeat(avg, ends - starts)
    return ranks


def auroc(score: np.ndarray, positive: np.ndarray) -> float | None:
    """Area under the ROC curve of ``score`` for finding ``positive`` (ties count half)."""
    npos, nneg = int(positive.sum()), int((~positive).sum())
    if npos == 0 or nneg == 0:
        return None
    ranks = average_ranks(score)
    return float((ranks[positive].sum() - npos * (npos + 1) / 2) / (npos * nneg))


@dataclass(frozen=True)
class Histogram:
    """Counts of each group over shared bin ``edges``."""

    edges: list[float]
    correct: list[int]
    wrong: list[int]

    def to_json(self) -> JSONObject:
        return asdict(self)


def _histogram(values: np.ndarray, right: np.ndarray, bins: int) -> Histogram:
    lo, hi = (float(values.min()), float(values.max())) if values.size else (0.0, 1.0)
    if hi <= lo:
        hi = lo + 1.0
    edges = np.linspace(lo, hi, bins + 1)
    return Histogram(
        edges.tolist(), np.histogram(values[right], edges)[0].tolist(), np.histogram(values[~right], edges)[0].tolist()
    )


@dataclass(frozen=True)
class Separation:
    """How well one score tells the final output's errors from its correct answers."""

    auroc: float | None  # for finding errors; higher is better
    mean_correct: float | None
    mean_wrong: float | None
    wrong_beyond_correct_mean: int | None  # the reference's counts
    correct_beyond_wrong_mean: int | None
    histogram: Histogram

    def to_json(self) -> JSONObject:
        return asdict(self)


@dataclass(frozen=True)
class Confusion:
    """Normalised confusion scores per input and their separation of errors, beside the final
    output's max softmax (the CNN's confidence for an IC-only SDN)."""

    normalisation: JSONObject  # mean, std, from
    num_correct: int
    num_wrong: int
    confusion: Separation
    confidence: Separation
    scores: np.ndarray = field(repr=False)

    def to_json(self) -> JSONObject:
        """Every figure but the per-input scores."""
        return {
            "normalisation": dict(self.normalisation),
            "num_correct": self.num_correct,
            "num_wrong": self.num_wrong,
            "confusion": self.confusion.to_json(),
            "confidence": self.confidence.to_json(),
        }


def confusion(record: ExitRecord, stats: tuple[float, float] | ExitRecord | None = None, bins: int = 30) -> Confusion:
    """Confusion scores, normalised, and how they separate the final output's errors.

    ``stats`` is the (mean, std) of the raw score over the training split, or the training split's
    record to compute them from; without it the record's own statistics are used (and said so).
    Compared against the final output's maximum softmax: AUROC for telling errors apart, and the
    reference's counts: wrong inputs beyond the correct ones' mean, and correct inputs beyond the
    wrong ones' mean.
    """
    raw = confusion_scores(record)
    source = "training split"
    if isinstance(stats, ExitRecord):
        train_raw = confusion_scores(stats)
        stats = (float(train_raw.mean()), float(train_raw.std())) if train_raw.size else None
    if stats is None:
        stats = (float(raw.mean()), float(raw.std())) if raw.size else (0.0, 1.0)
        source = "this record (no training statistics given)"
    mean, std = stats
    score = (raw - mean) / (std if std > 0 else 1.0)
    conf = record.confidence[:, -1]
    wrong = ~record.correct[:, -1]
    right = ~wrong

    def separation(values: np.ndarray, higher_means_error: bool) -> Separation:
        mr = values[right].mean() if right.any() else np.nan
        mw = values[wrong].mean() if wrong.any() else np.nan
        beyond_w = (values[wrong] > mr) if higher_means_error else (values[wrong] < mr)
        beyond_r = (values[right] < mw) if higher_means_error else (values[right] > mw)
        return Separation(
            auroc=auroc(values if higher_means_error else -values, wrong),
            mean_correct=None if np.isnan(mr) else float(mr),
            mean_wrong=None if np.isnan(mw) else float(mw),
            wrong_beyond_correct_mean=int(beyond_w.sum()) if right.any() else None,
            correct_beyond_wrong_mean=int(beyond_r.sum()) if wrong.any() else None,
            histogram=_histogram(values, right, bins),
        )

    return Confusion(
        {"mean": mean, "std": std, "from": source},
        int(right.sum()),
        int(wrong.sum()),
        separation(score, True),
        separation(conf, False),
        score,
    )
