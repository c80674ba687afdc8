"""Confidence-based early exits (paper section 5.1, spec section 7): simulation, sweep, calibration."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from ..core.errors import ArgumentError
from ..core.exit_rule import FALLBACKS, check_fallback
from ..core.io import JSONObject
from .record import ExitRecord

REFERENCE_THRESHOLDS = (0.1, 0.15, 0.25, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 0.999)

__all__ = [
    "FALLBACKS",
    "REFERENCE_THRESHOLDS",
    "Calibration",
    "EarlyExit",
    "OperatingPoint",
    "ReferenceProtocol",
    "Sweep",
    "calibrate",
    "default_thresholds",
    "early_exit",
    "reference_protocol",
    "sweep",
]


@dataclass(frozen=True)
class EarlyExit:
    """Early exits at one threshold. ``exits``, ``predictions`` and ``costs`` are per input;
    ``exit_counts`` per output (the last: no IC exit)."""

    threshold: float | list[float]  # one for every IC, or one per IC
    fallback: str
    accuracy: float
    relative_cost: float
    exit_counts: list[int]
    exits: np.ndarray
    predictions: np.ndarray
    costs: np.ndarray

    def to_json(self) -> JSONObject:
        return {
            "threshold": self.threshold,
            "fallback": self.fallback,
            "accuracy": self.accuracy,
            "relative_cost": self.relative_cost,
            "exit_counts": self.exit_counts,
        }


@dataclass(frozen=True)
class Sweep:
    """Early exits at many thresholds: ``thresholds``, ``accuracy``, ``relative_cost`` ``[T]`` and
    ``exit_counts`` ``[T, outputs]``."""

    thresholds: np.ndarray
    accuracy: np.ndarray
    relative_cost: np.ndarray
    exit_counts: np.ndarray

    def to_json(self) -> JSONObject:
        return {k: v.tolist() for k, v in asdict(self).items()}


@dataclass(frozen=True)
class OperatingPoint:
    """Early exits at the chosen threshold on one split, beside that split's final output."""

    accuracy: float
    relative_cost: float
    final_accuracy: float
    exit_counts: list[int]

    def to_json(self) -> JSONObject:
        return asdict(self)


@dataclass(frozen=True)
class Calibration:
    """A threshold chosen on the validation record (``val``) and reported on the test record (``test``).

    ``rule`` is ``{"max_drop": d}`` (cheapest within d of the final output) or ``{"budget": b}``
    (most accurate at a relative cost within b). ``thresholds``, when set, are per-IC thresholds
    (:func:`calibrate` with ``per_ic=True``): they are what ``val`` and ``test`` measure, and
    ``threshold`` is the single threshold their search started from.
    """

    rule: dict[str, float]
    fallback: str
    threshold: float
    val: OperatingPoint
    test: OperatingPoint | None = None
    thresholds: list[float] | None = None
    cross_validation: JSONObject | None = None  # per_ic="auto": held-out figures of both choices

    @property
    def exit_thresholds(self) -> float | list[float]:
        """What the engine compares each IC's score with: the per-IC thresholds, else the single one."""
        return list(self.thresholds) if self.thresholds is not None else self.threshold

    def to_json(self) -> JSONObject:
        d: JSONObject = {
            "rule": dict(self.rule),
            "fallback": self.fallback,
            "threshold": self.threshold,
            "val": self.val.to_json(),
        }
        if self.test is not None:
            d["test"] = self.test.to_json()
        if self.thresholds is not None:
            d["thresholds"] = list(self.thresholds)
        if self.cross_validation is not None:
            d["cross_validation"] = dict(self.cross_validation)
        return d

    @classmethod
    def from_json(cls, d: JSONObject) -> Calibration:
        """Rebuild a calibration from :meth:`to_json`; a malformed one is an :class:`ArgumentError`."""
        try:
            threshold = float(d["threshold"])
            if not 0.0 <= threshold <= 1.0:  # NaN fails too
                raise ValueError(f"threshold {threshold} outside [0, 1]")
            test = d.get("test")
            per_ic = d.get("thresholds")
            if per_ic is not None:
                per_ic = [float(q) for q in per_ic]
                if not all(0.0 <= q <= 1.0 for q in per_ic):
                    raise ValueError(f"per-IC thresholds {per_ic} outside [0, 1]")
            return cls(
                dict(d.get("rule") or {}),
                check_fallback(str(d.get("fallback", "most_confident"))),
                threshold,
                OperatingPoint(**d["val"]),
                OperatingPoint(**test) if test else None,
                per_ic,
                dict(d["cross_validation"]) if d.get("cross_validation") else None,
            )
        except (KeyError, TypeError, ValueError) as e:
            raise ArgumentError(f"not a calibration ({e})") from None


@dataclass(frozen=True)
class ReferenceProtocol:
    """The reference's protocol, for comparison only: its 11 thresholds chosen on the test set."""

    label: str
    rows: list[dict[str, float]]
    chosen_threshold: float
    chosen: OperatingPoint

    def to_json(self) -> JSONObject:
        return {
            "label": self.label,
            "rows": self.rows,
            "chosen_threshold": self.chosen_threshold,
            "chosen": self.chosen.to_json(),
        }


def default_thresholds() -> np.ndarray:
    """1,001 evenly spaced thresholds in [0, 1] plus 100 more crowding towards 1 (where softmax
    confidences of a trained network pile up); the reference's 11 are all among them."""
    return np.unique(np.concatenate([np.linspace(0, 1, 1001), 1 - np.logspace(-7, -3, 100)]))


def _fallback_preds(record: ExitRecord, fallback: str) -> np.ndarray:
    check_fallback(fallback)
    if fallback == "final":
        return record.preds[:, -1]
    # the reference: the output (of all) with the highest maximum softmax; first one on ties
    best = record.confidence.argmax(1)
    return record.preds[np.arange(record.num_inputs), best]


def _ic_scores(record: ExitRecord, scores: np.ndarray | None) -> np.ndarray:
    """What the exit decision compares with q: the ICs' max softmax, or a rule's scores ``[N, ICs]``."""
    if scores is None:
        return record.confidence[:, : record.num_outputs - 1]
    scores = np.asarray(scores, dtype=np.float64)
    if scores.shape != (record.num_inputs, record.num_outputs - 1):
        raise ArgumentError(
            f"scores must be shaped [inputs, ICs] = {[record.num_inputs, record.num_outputs - 1]}, "
            f"got {list(scores.shape)}"
        )
    return scores


def _count_below(values: np.ndarray, weights: np.ndarray, q: np.ndarray) -> np.ndarray:
    """``sum(weights[values < t])`` for every t in ``q``, by sorting once: O((N + T) log N)."""
    order = np.argsort(values, kind="stable")
    cum = np.concatenate([[0.0], np.cumsum(weights[order], dtype=np.float64)])
    return cum[np.searchsorted(values[order], q, side="left")]


def sweep(
    record: ExitRecord, thresholds=None, fallback: str = "most_confident", scores: np.ndarray | None = None
) -> Sweep:
    """Accuracy, relative cost and exit counts of early exits at every threshold.

    An input reaches output i (exits there or later) exactly when the running maximum ``m`` of the
    ICs' confidences before i stays below q, so every figure is a weighted count of ``m[:, i-1] < q``:
    one sort per output answers all thresholds at once. ``scores`` replaces the ICs' max softmax
    with another exit rule's scores (:mod:`.rules`); the fallback stays on max softmax.
    """
    q = default_thresholds() if thresholds is None else np.asarray(thresholds, dtype=np.float64).reshape(-1)
    k, n = record.num_outputs, record.num_inputs
    ic_conf = _ic_scores(record, scores).astype(np.float64)
    running = np.maximum.accumulate(ic_conf, axis=1) if k > 1 else ic_conf
    right = np.concatenate(
        [record.correct[:, : k - 1], (_fallback_preds(record, fallback) == record.labels)[:, None]], axis=1
    ).astype(np.float64)  # [N, K]: column K-1 = no IC exit
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
    return Sweep(q, accuracy, cost, counts)


def _exits_per_ic(scores: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Exit index of every input when IC k lets out scores >= ``thresholds[k]``; ``ICs``: no exit."""
    if not scores.shape[1]:
        return np.zeros(len(scores), int)
    hit = scores >= thresholds[None, :]
    first = hit.argmax(1)  # the first IC that lets it out, or 0 when none does: told apart below
    # one look at that position instead of a pass over every IC with any(): half the time, and this
    # runs thousands of times in a per-IC calibration
    return np.where(hit[np.arange(len(scores)), first], first, scores.shape[1])


def early_exit(
    record: ExitRecord,
    threshold: float | Sequence[float],
    fallback: str = "most_confident",
    scores: np.ndarray | None = None,
) -> EarlyExit:
    """Early exits at one threshold for every IC, or one threshold per IC.

    An input exits at the first IC whose maximum softmax is >= its threshold; one that exits at no
    IC pays for the whole SDN and gets the fallback's prediction: the most confident output
    (``"most_confident"``, the reference's) or the final output (``"final"``).
    """
    k, n = record.num_outputs, record.num_inputs
    if isinstance(threshold, (int, float, np.floating)):
        threshold = float(threshold)
        per_ic = np.full(k - 1, threshold)
    else:
        threshold = [float(q) for q in threshold]
        if len(threshold) != k - 1:
            raise ArgumentError(f"{len(threshold)} per-IC thresholds for {k - 1} ICs")
        per_ic = np.asarray(threshold)
    exits = _exits_per_ic(_ic_scores(record, scores), per_ic)
    fb = _fallback_preds(record, fallback)
    ic_preds = record.preds[np.arange(n), np.minimum(exits, k - 1)]
    preds = np.where(exits < k - 1, ic_preds, fb)
    costs = record.costs[exits]
    return EarlyExit(
        threshold=threshold,
        fallback=fallback,
        accuracy=float((preds == record.labels).mean()) if n else 0.0,
        relative_cost=float(costs.mean() / record.cnn_cost) if n else 0.0,
        exit_counts=np.bincount(exits, minlength=k).tolist(),
        exits=exits,
        predictions=preds,
        costs=costs,
    )


def _point(
    record: ExitRecord, threshold: float | list[float], fallback: str, scores: np.ndarray | None = None
) -> OperatingPoint:
    e = early_exit(record, threshold, fallback, scores)
    return OperatingPoint(
        e.accuracy, e.relative_cost, float(record.accuracy()[-1]) if record.num_inputs else 0.0, e.exit_counts
    )


def most_accurate_within(s: Sweep, budget: float) -> int | None:
    """The index of the swept threshold most accurate within a cost ``budget`` (ties to the higher
    threshold); ``None`` when none fits."""
    ok = s.relative_cost <= budget + 1e-12
    if not ok.any():
        return None
    order = np.lexsort((-s.thresholds, -s.accuracy))  # best accuracy first, then higher threshold
    return int(next(i for i in order if ok[i]))


def _choose_single(
    s: Sweep, final_acc: float, max_drop: float | None, budget: float | None
) -> tuple[int, dict[str, float]]:
    """The swept threshold the rule picks (its index) and the rule as recorded. With ``budget``: the
    most accurate within it; else the cheapest within ``max_drop`` of the final output. Ties go to
    the higher accuracy, then the higher threshold."""
    q, acc, cost = s.thresholds, s.accuracy, s.relative_cost
    if budget is not None:
        best = most_accurate_within(s, budget)
        if best is None:
            raise ArgumentError(
                f"no threshold keeps the cost within a `budget` of {budget:.3f} of the CNN's "
                f"(cheapest: {cost.min():.3f}): raise it"
            )
        return best, {"budget": float(budget)}
    else:
        drop = 0.01 if max_drop is None else max_drop
        ok = acc >= final_acc - drop - 1e-12
        if not ok.any():  # cannot happen with a threshold above every confidence, but stay total
            ok = acc >= acc.max()
        order = np.lexsort((-q, -acc, cost))  # cheapest first, then more accurate, then higher threshold
        rule = {"max_drop": float(drop)}
    return int(next(i for i in order if ok[i])), rule


def calibrate(
    val: ExitRecord,
    test: ExitRecord | None = None,
    *,
    max_drop: float | None = 0.01,
    budget: float | None = None,
    fallback: str = "most_confident",
    thresholds=None,
    swept: Sweep | None = None,
    val_scores: np.ndarray | None = None,
    test_scores: np.ndarray | None = None,
    per_ic: bool | str = False,
) -> Calibration:
    """Choose a threshold on the validation record and report it on the test record.

    With ``budget`` (a relative cost): the most accurate threshold whose cost is within it.
    Otherwise: the cheapest threshold whose accuracy is at least the final output's minus
    ``max_drop``. Ties go to the higher accuracy, then the higher threshold. ``swept`` is
    ``sweep(val, thresholds, fallback)`` when the caller already has it. ``val_scores`` and
    ``test_scores`` are another exit rule's scores of the two records. With ``per_ic``, the single
    threshold is then refined into one threshold per IC (:func:`_refine_per_ic`), chosen on the
    validation record by the same rule. With ``per_ic="auto"`` the validation record also decides
    whether to: per-IC thresholds are kept only if, cross-validated on it (:func:`_cross_validate`),
    they beat the single threshold on held-out inputs; they can fit a small validation set too well.
    """
    if budget is not None and not budget > 0:
        raise ArgumentError(f"`budget` is a cost relative to the CNN's and must be positive, got {budget}")
    if max_drop is not None and not 0 <= max_drop <= 1:
        raise ArgumentError(f"`max_drop` is an accuracy drop and must lie in [0, 1], got {max_drop}")
    s = sweep(val, thresholds, fallback, val_scores) if swept is None else swept
    q, acc, cost = s.thresholds, s.accuracy, s.relative_cost
    final_acc = float(val.accuracy()[-1]) if val.num_inputs else 0.0
    best, rule = _choose_single(s, final_acc, max_drop, budget)
    chosen = float(q[best])
    cv = None
    if per_ic == "auto" and val.num_outputs > 1:
        cv = _cross_validate(val, dict(max_drop=max_drop, budget=budget), fallback, thresholds, val_scores)
        per_ic = cv["per_ic_wins"]
    if per_ic and val.num_outputs > 1 and val.num_inputs:
        grid = np.union1d(default_thresholds() if thresholds is None else q, [chosen])
        per = _refine_per_ic(val, chosen, grid, rule, final_acc, fallback, val_scores)
        return Calibration(
            rule,
            fallback,
            chosen,
            _point(val, per, fallback, val_scores),
            _point(test, per, fallback, test_scores) if test is not None else None,
            per,
            cv,
        )
    val_point = OperatingPoint(float(acc[best]), float(cost[best]), final_acc, s.exit_counts[best].tolist())
    return Calibration(
        rule,
        fallback,
        chosen,
        val_point,
        _point(test, chosen, fallback, test_scores) if test is not None else None,
        None,
        cv,
    )


def _cross_validate(
    val: ExitRecord, goal: dict[str, float | None], fallback: str, thresholds, scores: np.ndarray | None, folds: int = 5
) -> JSONObject:
    """Per-IC thresholds on held-out validation inputs against every single threshold.

    Each fold's per-IC thresholds are chosen on the other folds, and the held-out exits of all folds
    are pooled into one point (accuracy, cost). Per-IC wins when that point lies above the single
    threshold's accuracy-cost curve of the same inputs: no single threshold costing as little is
    as accurate (under a budget: none within the budget is as accurate). That curve is drawn with
    hindsight, so a per-IC win is a conservative verdict. Fewer than ``20 * folds`` inputs: no
    verdict, the single threshold. The held-out figures of the single threshold chosen the usual
    way are reported beside.
    """
    n = val.num_inputs
    out: JSONObject = {"folds": folds, "inputs": n}
    if n < 20 * folds:
        return out | {"per_ic_wins": False, "reason": f"fewer than {20 * folds} validation inputs"}
    fold = np.random.default_rng(0).permutation(n) % folds
    pooled = {"single": [0.0, 0.0], "per_ic": [0.0, 0.0]}  # right inputs, summed relative cost
    for f in range(folds):
        fit, held = fold != f, fold == f
        fit_s, held_s = (None, None) if scores is None else (scores[fit], scores[held])
        c = calibrate(
            val.subset(fit), None, **goal, fallback=fallback, thresholds=thresholds, val_scores=fit_s, per_ic=True
        )
        held_rec = val.subset(held)  # one record (its softmax cached) for both choices
        for kind, q in (("single", c.threshold), ("per_ic", c.thresholds)):
            e = early_exit(held_rec, q, fallback, held_s)
            pooled[kind][0] += e.accuracy * int(held.sum())
            pooled[kind][1] += e.relative_cost * int(held.sum())
    (sa, sc), (pa, pc) = ((a / n, c / n) for a, c in (pooled["single"], pooled["per_ic"]))
    curve = sweep(val, thresholds, fallback, scores)
    limit = pc if goal.get("budget") is None else min(pc, float(goal["budget"]))
    within = curve.relative_cost <= limit + 1e-12
    best_single = float(curve.accuracy[within].max()) if within.any() else -1.0
    wins = pa > best_single + 1e-12 and (goal.get("budget") is None or pc <= float(goal["budget"]) + 1e-12)
    out["single_curve_accuracy_at_that_cost"] = best_single
    return out | {
        "per_ic_wins": bool(wins),
        "single": {"accuracy": sa, "relative_cost": sc},
        "per_ic": {"accuracy": pa, "relative_cost": pc},
    }


def _refine_per_ic(
    val: ExitRecord,
    start: float,
    grid: np.ndarray,
    rule: dict[str, float],
    final_acc: float,
    fallback: str,
    scores: np.ndarray | None,
    max_rounds: int = 30,
) -> list[float]:
    """Per-IC thresholds chosen on the validation record, starting from ``start`` at every IC.

    Coordinate descent: one IC at a time, with the others fixed, its threshold moves to the grid
    value that serves an objective best (:class:`_PerICSearch`). Under the rule itself (max-drop:
    cheapest with accuracy within the drop, then more accurate, then higher; budget: most accurate
    within the budget, then cheaper, then higher) no step can trade accuracy between ICs, so descent
    also runs on ``cost - lam * accuracy`` for a range of ``lam``, and each feasible result is
    polished under the rule; the best under the rule wins. The start is feasible and among the
    candidates, so the result is never worse than the single threshold on validation. A local
    optimum: the exact search is combinatorial in the ICs.
    """
    search = _PerICSearch(val, grid, rule, final_acc, fallback, scores, max_rounds)
    q0 = np.full(search.m, float(start))
    best = search.descend(q0, search.rule_key)
    best_key = search.evaluate(best)
    for lam in np.geomspace(0.05, 20.0, 24):  # cost given up per unit of accuracy, both as shares
        q = search.descend(q0, search.lagrange_key(lam))
        if search.evaluate(q)[0] == 0:  # feasible under the rule: polish it there
            q = search.descend(q, search.rule_key)
            q_key = search.evaluate(q)
            if q_key < best_key:
                best, best_key = q, q_key
    return best.tolist()


class _PerICSearch:
    """The coordinate descent of :func:`_refine_per_ic`. With the other ICs fixed, an input that
    reaches IC k either exits there or goes on to a fixed outcome, so all grid values of IC k are
    answered by one cumulative sum over the reaching inputs in score order (each IC's scores are
    sorted once)."""

    def __init__(
        self,
        val: ExitRecord,
        grid: np.ndarray,
        rule: dict[str, float],
        final_acc: float,
        fallback: str,
        scores: np.ndarray | None,
        max_rounds: int,
    ) -> None:
        self.s = _ic_scores(val, scores).astype(np.float64)
        self.n, self.m = self.s.shape
        # right[:, j]: right if the input answers at exit j (the ICs, then the fallback); cost[j] / CNN
        self.right = np.concatenate(
            [val.correct[:, : self.m], (_fallback_preds(val, fallback) == val.labels)[:, None]], axis=1
        ).astype(np.float64)
        self.cost = np.asarray(val.costs, dtype=np.float64) / val.cnn_cost
        self.rows = np.arange(self.n)
        self.orders = [np.argsort(self.s[:, k], kind="stable") for k in range(self.m)]
        self.grid, self.rule, self.final_acc, self.max_rounds = grid, rule, final_acc, max_rounds

    def rule_key(self, acc_count: np.ndarray, cost_sum: np.ndarray, t: np.ndarray) -> list[np.ndarray]:
        # counts of right inputs are exact; costs are rounded so summation order cannot flip a choice
        c = np.round(cost_sum / self.n, 12)
        if "budget" in self.rule:
            return [(c > self.rule["budget"] + 1e-12).astype(float), -acc_count, c, -t]
        short = acc_count < (self.final_acc - self.rule["max_drop"]) * self.n - 1e-9
        return [short.astype(float), c, -acc_count, -t]

    def lagrange_key(self, lam: float) -> Callable[..., list[np.ndarray]]:
        return lambda acc_count, cost_sum, t: [np.round((cost_sum - lam * acc_count) / self.n, 12), -t]

    def descend(self, q: np.ndarray, key: Callable[..., list[np.ndarray]]) -> np.ndarray:
        q = q.copy()
        for _ in range(self.max_rounds):
            moved = False
            for k in range(self.m):
                moved = self._move(q, k, key) or moved
            if not moved:
                break
        return q

    def _move(self, q: np.ndarray, k: int, key: Callable[..., list[np.ndarray]]) -> bool:
        """IC ``k``'s threshold to the best grid value under ``key`` (in place); whether it moved."""
        s, right, cost, n = self.s, self.right, self.cost, self.n
        before = _exits_per_ic(s[:, :k], q[:k]) if k else np.zeros(n, int)
        reach = before == k  # no IC before k let it out
        later = _exits_per_ic(s[:, k + 1 :], q[k + 1 :]) + k + 1  # where it goes if IC k lets it pass
        fixed_right, fixed_cost = right[self.rows[~reach], before[~reach]].sum(), cost[before[~reach]].sum()
        idx = self.orders[k][reach[self.orders[k]]]  # the inputs reaching IC k, by its score (sorted once)
        cand = np.union1d(self.grid, [q[k]])
        pos = np.searchsorted(s[idx, k], cand, side="left")

        def below(w: np.ndarray) -> np.ndarray:  # the sum of w over the reaching inputs scoring below t
            return np.concatenate([[0.0], np.cumsum(w)])[pos]

        # exit at IC k iff score >= t: totals if all exit at k, plus (pass - stay) of those below t
        stay_right, pass_right = right[idx, k], right[idx, later[idx]]
        acc_count = fixed_right + stay_right.sum() + below(pass_right - stay_right)
        cost_sum = fixed_cost + cost[k] * len(idx) + below(cost[later[idx]] - cost[k])
        keys = key(acc_count, cost_sum, cand)
        best, cur = np.lexsort(keys[::-1])[0], int(np.searchsorted(cand, q[k]))
        if best != cur and tuple(x[best] for x in keys) < tuple(x[cur] for x in keys):
            q[k] = float(cand[best])
            return True
        return False

    def evaluate(self, q: np.ndarray) -> tuple:
        e = _exits_per_ic(self.s, q)
        keys = self.rule_key(np.array([self.right[self.rows, e].sum()]), np.array([self.cost[e].sum()]), np.zeros(1))
        return tuple(x[0] for x in keys)[:3]


def reference_protocol(test: ExitRecord, max_drop: float = 0.01, fallback: str = "most_confident") -> ReferenceProtocol:
    """The reference's protocol, for comparison only: 11 thresholds evaluated *on the test set*,
    and the cheapest within ``max_drop`` of the final output chosen there (an optimistic figure)."""
    s = sweep(test, REFERENCE_THRESHOLDS, fallback)
    chosen = calibrate(test, None, max_drop=max_drop, fallback=fallback, swept=s)
    return ReferenceProtocol(
        label="reference protocol: thresholds chosen on the test set (optimistic, not a fair estimate)",
        rows=[
            {"threshold": float(q), "accuracy": float(a), "relative_cost": float(c)}
            for q, a, c in zip(s.thresholds, s.accuracy, s.relative_cost)
        ],
        chosen_threshold=chosen.threshold,
        chosen=chosen.val,
    )
