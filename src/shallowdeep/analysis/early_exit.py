"""Confidence-based early exits (paper section 5.1, spec section 7): simulation, sweep, calibration."""
from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import UserError
from ..record import ExitRecord

REFERENCE_THRESHOLDS = (0.1, 0.15, 0.25, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 0.999)
FALLBACKS = ("most_confident", "final")


def default_thresholds() -> np.ndarray:
    """1,001 evenly spaced thresholds in [0, 1] plus 100 more crowding towards 1 (where softmax
    confidences of a trained network pile up); the reference's 11 are all among them."""
    return np.unique(np.concatenate([np.linspace(0, 1, 1001), 1 - np.logspace(-7, -3, 100)]))


def _fallback_preds(record: ExitRecord, fallback: str) -> np.ndarray:
    if fallback == "final":
        return record.preds[:, -1]
    if fallback == "most_confident":
        # the reference: the output (of all) with the highest maximum softmax; first one on ties
        best = record.confidence.argmax(1)
        return record.preds[np.arange(record.num_inputs), best]
    raise UserError(f"unknown fallback {fallback!r}: choose one of {', '.join(FALLBACKS)}")


def _exits(record: ExitRecord, thresholds: np.ndarray) -> np.ndarray:
    """Exit index of every input at every threshold, ``[T, N]``; ``outputs - 1`` means no IC exit.

    The first IC whose confidence reaches q is the first at which the running maximum of the ICs'
    confidences reaches q, and that running maximum is sorted along the outputs, so the exit is
    the number of ICs whose running maximum stays below q.
    """
    ic_conf = record.confidence[:, : record.num_outputs - 1]
    running = np.maximum.accumulate(ic_conf, axis=1) if ic_conf.shape[1] else ic_conf
    return (running[None, :, :] < thresholds[:, None, None]).sum(-1)


def _count_below(values: np.ndarray, weights: np.ndarray, q: np.ndarray) -> np.ndarray:
    """``sum(weights[values < t])`` for every t in ``q``, by sorting once: O((N + T) log N)."""
    order = np.argsort(values, kind="stable")
    cum = np.concatenate([[0.0], np.cumsum(weights[order], dtype=np.float64)])
    return cum[np.searchsorted(values[order], q, side="left")]


def sweep(record: ExitRecord, thresholds=None, fallback: str = "most_confident") -> dict[str, np.ndarray]:
    """Accuracy, relative cost and exit counts of early exits at every threshold.

    Returns arrays ``thresholds [T]``, ``accuracy [T]``, ``relative_cost [T]``,
    ``exit_counts [T, outputs]``. An input reaches output i (exits there or later) exactly when
    the running maximum ``m`` of the ICs' confidences before i stays below q, so every figure is a
    weighted count of ``m[:, i-1] < q``: one sort per output answers all thresholds at once.
    """
    q = default_thresholds() if thresholds is None else np.asarray(thresholds, dtype=np.float64).reshape(-1)
    k, n = record.num_outputs, record.num_inputs
    ic_conf = record.confidence[:, : k - 1].astype(np.float64)
    running = np.maximum.accumulate(ic_conf, axis=1) if k > 1 else ic_conf
    right = np.concatenate([record.correct[:, : k - 1], (_fallback_preds(record, fallback) == record.labels)[:, None]],
                           axis=1).astype(np.float64)  # [N, K]: column K-1 = no IC exit
    ones = np.ones(n)
    # reach[i][t] = inputs reaching output i; hits[i][t] = of those, right at output i
    reach = [np.full(len(q), float(n))] + [_count_below(running[:, i - 1], ones, q) for i in range(1, k)]
    reach.append(np.zeros(len(q)))
    counts = np.stack([reach[i] - reach[i + 1] for i in range(k)], axis=1).round().astype(np.int64)
    correct = np.zeros(len(q))
    for i in range(k):
        arrive = np.full(len(q), right[:, i].sum()) if i == 0 else _count_below(running[:, i - 1], right[:, i], q)
        leave = _count_below(running[:, i], right[:, i], q) if i < k - 1 else 0.0
        correct += arrive - leave
    cost = (counts * record.costs[None, :]).sum(1) / max(n, 1) / record.cnn_cost
    accuracy = correct / n if n else np.zeros(len(q))
    return {"thresholds": q, "accuracy": accuracy, "relative_cost": cost, "exit_counts": counts}


def early_exit(record: ExitRecord, threshold: float, fallback: str = "most_confident") -> dict[str, Any]:
    """Early exits at one threshold: ``accuracy``, ``relative_cost`` (average cost / CNN cost),
    ``exit_counts`` per output, and per input ``exits``, ``predictions`` and ``costs``.

    An input exits at the first IC whose maximum softmax is >= ``threshold``; one that exits at no
    IC pays for the whole SDN and gets the fallback's prediction: the most confident output
    (``"most_confident"``, the reference's) or the final output (``"final"``).
    """
    k, n = record.num_outputs, record.num_inputs
    exits = _exits(record, np.array([float(threshold)]))[0]
    fb = _fallback_preds(record, fallback)
    ic_preds = record.preds[np.arange(n), np.minimum(exits, k - 1)]
    preds = np.where(exits < k - 1, ic_preds, fb)
    costs = record.costs[exits]
    return {
        "threshold": float(threshold),
        "fallback": fallback,
        "accuracy": float((preds == record.labels).mean()) if n else 0.0,
        "relative_cost": float(costs.mean() / record.cnn_cost) if n else 0.0,
        "exit_counts": np.bincount(exits, minlength=k).tolist(),
        "exits": exits,
        "predictions": preds,
        "costs": costs,
    }


def calibrate(val: ExitRecord, test: ExitRecord | None = None, *, max_drop: float | None = 0.01,
              budget: float | None = None, fallback: str = "most_confident", thresholds=None,
              swept: dict[str, np.ndarray] | None = None) -> dict[str, Any]:
    """Choose a threshold on the validation record and report it on the test record.

    With ``budget`` (a relative cost): the most accurate threshold whose cost is within it.
    Otherwise: the cheapest threshold whose accuracy is at least the final output's minus
    ``max_drop``. Ties go to the higher accuracy, then the higher threshold. ``swept`` is
    ``sweep(val, thresholds, fallback)`` when the caller already has it.
    """
    s = sweep(val, thresholds, fallback) if swept is None else swept
    q, acc, cost = s["thresholds"], s["accuracy"], s["relative_cost"]
    final_acc = float(val.accuracy()[-1]) if val.num_inputs else 0.0
    if budget is not None:
        ok = cost <= budget + 1e-12
        if not ok.any():
            raise UserError(f"no threshold keeps the cost within {budget:.3f} of the CNN's (cheapest: {cost.min():.3f})")
        order = np.lexsort((-q, -acc))  # best accuracy first, then higher threshold
        rule = {"budget": budget}
    else:
        drop = 0.01 if max_drop is None else max_drop
        ok = acc >= final_acc - drop - 1e-12
        if not ok.any():  # cannot happen with a threshold above every confidence, but stay total
            ok = acc >= acc.max()
        order = np.lexsort((-q, -acc, cost))  # cheapest first, then more accurate, then higher threshold
        rule = {"max_drop": drop}
    best = next(i for i in order if ok[i])
    chosen = float(q[best])
    out: dict[str, Any] = {
        "rule": rule, "fallback": fallback, "threshold": chosen,
        "val": {"accuracy": float(acc[best]), "relative_cost": float(cost[best]), "final_accuracy": final_acc,
                "exit_counts": s["exit_counts"][best].tolist()},
    }
    if test is not None:
        t = early_exit(test, chosen, fallback)
        out["test"] = {"accuracy": t["accuracy"], "relative_cost": t["relative_cost"], "exit_counts": t["exit_counts"],
                       "final_accuracy": float(test.accuracy()[-1]) if test.num_inputs else 0.0}
    return out


def reference_protocol(test: ExitRecord, max_drop: float = 0.01, fallback: str = "most_confident") -> dict[str, Any]:
    """The reference's protocol, for comparison only: 11 thresholds evaluated *on the test set*,
    and the cheapest within ``max_drop`` of the final output chosen there (an optimistic figure)."""
    s = sweep(test, REFERENCE_THRESHOLDS, fallback)
    chosen = calibrate(test, None, max_drop=max_drop, fallback=fallback, swept=s)
    return {
        "label": "reference protocol: thresholds chosen on the test set (optimistic, not a fair estimate)",
        "rows": [{"threshold": float(q), "accuracy": float(a), "relative_cost": float(c)}
                 for q, a, c in zip(s["thresholds"], s["accuracy"], s["relative_cost"])],
        "chosen_threshold": chosen["threshold"],
        "chosen": chosen["val"],
    }
