"""The confusion metric (paper section 5.2, spec section 9)."""
from __future__ import annotations

from typing import Any

import numpy as np
from scipy.stats import rankdata

from ..record import ExitRecord


def confusion_scores(record: ExitRecord) -> np.ndarray:
    """Raw confusion of each input: sum over outputs of the L1 distance of its softmax to the final's."""
    p = record.probs
    return np.abs(p - p[:, -1:, :]).sum(axis=(1, 2))


def _auroc(score: np.ndarray, positive: np.ndarray) -> float | None:
    """Area under the ROC curve of ``score`` for finding ``positive`` (ties count half)."""
    npos, nneg = int(positive.sum()), int((~positive).sum())
    if npos == 0 or nneg == 0:
        return None
    ranks = rankdata(score)
    return float((ranks[positive].sum() - npos * (npos + 1) / 2) / (npos * nneg))


def _histogram(values: np.ndarray, groups: dict[str, np.ndarray], bins: int) -> dict[str, Any]:
    lo, hi = (float(values.min()), float(values.max())) if values.size else (0.0, 1.0)
    if hi <= lo:
        hi = lo + 1.0
    edges = np.linspace(lo, hi, bins + 1)
    return {"edges": edges.tolist(), **{g: np.histogram(values[m], edges)[0].tolist() for g, m in groups.items()}}


def confusion(record: ExitRecord, stats: tuple[float, float] | ExitRecord | None = None, bins: int = 30) -> dict[str, Any]:
    """Confusion scores, normalised, and how they separate the final output's errors.

    ``stats`` is the (mean, std) of the raw score over the training split, or the training split's
    record to compute them from; without it the record's own statistics are used (and said so).
    Compared against the final output's maximum softmax (the CNN's confidence for an IC-only SDN):
    AUROC for telling errors apart (higher = better), and the reference's counts: wrong inputs
    beyond the correct ones' mean, and correct inputs beyond the wrong ones' mean.
    """
    raw = confusion_scores(record)
    source = "training split"
    if isinstance(stats, ExitRecord):
        train_raw = confusion_scores(stats)
        stats = (float(train_raw.mean()), float(train_raw.std()))
    if stats is None:
        stats = (float(raw.mean()), float(raw.std())) if raw.size else (0.0, 1.0)
        source = "this record (no training statistics given)"
    mean, std = stats
    score = (raw - mean) / (std if std > 0 else 1.0)
    conf = record.confidence[:, -1]
    wrong = ~record.correct[:, -1]
    right = ~wrong

    def separation(values: np.ndarray, higher_means_error: bool) -> dict[str, Any]:
        mr = values[right].mean() if right.any() else np.nan
        mw = values[wrong].mean() if wrong.any() else np.nan
        beyond_w = (values[wrong] > mr) if higher_means_error else (values[wrong] < mr)
        beyond_r = (values[right] < mw) if higher_means_error else (values[right] > mw)
        return {
            "auroc": _auroc(values if higher_means_error else -values, wrong),
            "mean_correct": None if np.isnan(mr) else float(mr),
            "mean_wrong": None if np.isnan(mw) else float(mw),
            "wrong_beyond_correct_mean": int(beyond_w.sum()) if right.any() else None,
            "correct_beyond_wrong_mean": int(beyond_r.sum()) if wrong.any() else None,
        }

    groups = {"correct": right, "wrong": wrong}
    return {
        "normalisation": {"mean": mean, "std": std, "from": source},
        "scores": score,
        "num_correct": int(right.sum()),
        "num_wrong": int(wrong.sum()),
        "confusion": separation(score, True) | {"histogram": _histogram(score, groups, bins)},
        "confidence": separation(conf, False) | {"histogram": _histogram(conf, groups, bins)},
    }
