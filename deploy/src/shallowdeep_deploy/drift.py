"""Drift in deployment: do today's inputs exit as the validation split's did?

A calibration stores an :class:`ExitProfile` of the validation split: how many inputs left at each
output under the calibrated rule and how the answers' confidence (the max softmax of the output that
answered) was spread over its deciles. A :class:`DriftMonitor` counts the same for the inputs it is
shown, in tumbling windows (500 inputs by default), and tests each full window against the profile:

- the exits: Pearson's chi-square test of homogeneity between the window's counts per output and the
  validation split's (a 2 x K table; adjacent outputs are merged until every expected count is at
  least 5, the test's usual condition);
- the confidence: the same test on the counts per validation decile of the answers' confidence.

A window drifts when either p-value is below ``alpha / 2`` (Bonferroni over the two tests, so that
the chance of a false alarm on a window of inputs like the validation ones is at most ``alpha``,
1e-3 by default). The direction says whether the window's mean cost is above the validation split's
(slower) or below (faster). numpy and the standard library only: it runs beside the torch engine and
the torch-free runtime alike.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import ArgumentError
from .names import JSONObject

WINDOW = 500
ALPHA = 1e-3
DECILES = 10
MIN_EXPECTED = 5.0


def chi2_sf(x: float, dof: int) -> float:
    """P(X >= x) for X chi-square with ``dof`` degrees of freedom: the regularised upper incomplete
    gamma function Q(dof/2, x/2), by its series below a + 1 and its continued fraction above."""
    if dof < 1:
        raise ArgumentError(f"a chi-square distribution has at least 1 degree of freedom, got {dof}")
    if x <= 0:
        return 1.0
    a, z = dof / 2.0, x / 2.0
    log_front = a * math.log(z) - z - math.lgamma(a)
    if z < a + 1:  # series of the lower function P, then Q = 1 - P
        term = total = 1.0 / a
        n = a
        while abs(term) > abs(total) * 1e-15:
            n += 1
            term *= z / n
            total += term
        return max(0.0, 1.0 - total * math.exp(log_front))
    tiny = 1e-300  # Lentz's continued fraction of Q
    b = z + 1 - a
    c, d = 1 / tiny, 1 / b
    h = d
    for i in range(1, 10_000):
        an = -i * (i - a)
        b += 2
        d = an * d + b
        d = tiny if abs(d) < tiny else d
        c = b + an / c
        c = tiny if abs(c) < tiny else c
        d = 1 / d
        h *= d * c
        if abs(d * c - 1) < 1e-15:
            break
    return min(1.0, h * math.exp(log_front))


def homogeneity(seen: np.ndarray, expected_from: np.ndarray) -> tuple[float, int, float]:
    """Pearson's chi-square test that the counts ``seen`` and ``expected_from`` (one per bin, in an
    order where neighbours are alike) come from one distribution: (statistic, degrees of freedom,
    p-value). Adjacent bins are merged until every expected count is at least 5."""
    table = np.stack([np.asarray(seen, float), np.asarray(expected_from, float)])
    rows = table.sum(1)
    if rows.min() <= 0:
        return 0.0, 0, 1.0
    need = MIN_EXPECTED * rows.sum() / rows.min()  # a bin's total that gives the smaller row 5 expected
    merged, run = [], np.zeros(2)
    for col in table.T:
        run = run + col
        if run.sum() >= need:
            merged.append(run)
            run = np.zeros(2)
    if run.sum() > 0:
        if merged:
            merged[-1] = merged[-1] + run
        else:
            merged.append(run)
    if len(merged) < 2:
        return 0.0, 0, 1.0
    m = np.stack(merged, 1)
    expected = np.outer(rows, m.sum(0)) / rows.sum()
    stat = float(((m - expected) ** 2 / expected).sum())
    dof = m.shape[1] - 1
    return stat, dof, chi2_sf(stat, dof)


def _counts(v: Any, what: str, least: int) -> tuple[int, ...]:
    if not isinstance(v, (list, tuple)) or len(v) < least:
        raise ArgumentError(f"the exit profile's `{what}` is a list of at least {least} counts, got {v!r}")
    if not all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in v):
        raise ArgumentError(f"the exit profile's `{what}` are whole numbers >= 0, got {list(v)}")
    return tuple(v)


def _numbers(v: Any, what: str) -> tuple[float, ...]:
    if not isinstance(v, (list, tuple)) or not all(
        isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in v
    ):
        raise ArgumentError(f"the exit profile's `{what}` is a list of finite numbers, got {v!r}")
    return tuple(float(x) for x in v)


@dataclass(frozen=True)
class ExitProfile:
    """The validation split's exits under the calibrated rule: inputs per output (the last: no IC
    exit), the inner edges of the answers' confidence deciles and the validation inputs per decile
    bin, and each output's cost relative to the CNN's."""

    exit_counts: tuple[int, ...]
    confidence_edges: tuple[float, ...]
    confidence_counts: tuple[int, ...]
    relative_costs: tuple[float, ...]

    def __post_init__(self) -> None:
        _counts(list(self.exit_counts), "exit_counts", 2)
        _counts(list(self.confidence_counts), "confidence_counts", 1)
        if len(self.confidence_counts) != len(self.confidence_edges) + 1:
            raise ArgumentError("the exit profile has one confidence count more than it has decile edges")
        if list(self.confidence_edges) != sorted(self.confidence_edges):
            raise ArgumentError("the exit profile's confidence edges are not in increasing order")
        if len(self.relative_costs) != len(self.exit_counts):
            raise ArgumentError("the exit profile has one relative cost per output, as many as its exit counts")
        if sum(self.exit_counts) < 1 or sum(self.confidence_counts) != sum(self.exit_counts):
            raise ArgumentError("the exit profile's exit and confidence counts are of the same inputs, at least one")

    @property
    def inputs(self) -> int:
        return sum(self.exit_counts)

    @property
    def mean_cost(self) -> float:
        """The validation split's mean cost relative to the CNN's."""
        return float(np.dot(self.exit_counts, self.relative_costs) / self.inputs)

    def confidence_bins(self, confidence: np.ndarray) -> np.ndarray:
        """Counts of ``confidence`` per validation decile bin."""
        idx = np.searchsorted(np.asarray(self.confidence_edges), np.asarray(confidence, float), side="right")
        return np.bincount(idx, minlength=len(self.confidence_counts))

    def to_json(self) -> JSONObject:
        return {
            "exit_counts": list(self.exit_counts),
            "confidence_edges": list(self.confidence_edges),
            "confidence_counts": list(self.confidence_counts),
            "relative_costs": list(self.relative_costs),
        }

    @classmethod
    def from_json(cls, d: Any) -> ExitProfile:
        """A profile as :meth:`to_json` wrote it, checked (an :class:`ArgumentError` names the key)."""
        if not isinstance(d, dict):
            raise ArgumentError(f"an exit profile is a JSON object, got {type(d).__name__}")
        return cls(
            _counts(d.get("exit_counts"), "exit_counts", 2),
            _numbers(d.get("confidence_edges"), "confidence_edges"),
            _counts(d.get("confidence_counts"), "confidence_counts", 1),
            _numbers(d.get("relative_costs"), "relative_costs"),
        )


def exit_profile(exits: np.ndarray, confidence: np.ndarray, relative_costs: Any) -> ExitProfile:
    """The profile of validation inputs that left at ``exits`` (output indices) answering with
    ``confidence``; ``relative_costs`` per output."""
    exits, confidence = np.asarray(exits, np.int64), np.asarray(confidence, float)
    costs = tuple(float(c) for c in relative_costs)
    if not len(exits) or len(exits) != len(confidence) or exits.min() < 0 or exits.max() >= len(costs):
        raise ArgumentError("an exit profile needs one exit (an output index) and one confidence per input")
    edges = np.unique(np.quantile(confidence, np.arange(1, DECILES) / DECILES))  # ties (p = 1.0) collapse
    bins = np.bincount(np.searchsorted(edges, confidence, side="right"), minlength=len(edges) + 1)
    return ExitProfile(
        tuple(int(c) for c in np.bincount(exits, minlength=len(costs))),
        tuple(float(e) for e in edges),
        tuple(int(c) for c in bins),
        costs,
    )


@dataclass(frozen=True)
class DriftCheck:
    """One full window tested against the profile: its number (from 1), its inputs, the p-values of
    the exits' and the confidences' tests, whether it drifted, its mean cost beside validation's,
    and its share of inputs per output."""

    window: int
    inputs: int
    exit_p: float
    confidence_p: float
    drifted: bool
    mean_cost: float
    expected_cost: float
    exit_shares: tuple[float, ...]

    @property
    def direction(self) -> str:
        """``slower`` (more cost than validation), ``faster`` or ``as fast`` (within 1 % of it)."""
        if self.mean_cost > self.expected_cost + 0.01:
            return "slower"
        return "faster" if self.mean_cost < self.expected_cost - 0.01 else "as fast"

    def line(self) -> str:
        """The one line ``predict`` prints when a window drifts."""
        shares = " ".join(f"{100 * s:.0f}%" for s in self.exit_shares)
        return (
            f"drift: the last {self.inputs} inputs (window {self.window}) exit differently from validation "
            f"(chi-square p = {self.exit_p:.2g} for exits, {self.confidence_p:.2g} for confidence): "
            f"{self.direction}, mean cost {100 * self.mean_cost:.1f}% of the CNN's against "
            f"{100 * self.expected_cost:.1f}%; exits per output {shares}"
        )

    def to_json(self) -> JSONObject:
        return {
            "window": self.window,
            "inputs": self.inputs,
            "exit_p": self.exit_p,
            "confidence_p": self.confidence_p,
            "drifted": self.drifted,
            "direction": self.direction,
            "mean_cost": self.mean_cost,
            "expected_cost": self.expected_cost,
            "exit_shares": list(self.exit_shares),
        }


@dataclass
class DriftMonitor:
    """Counts exits and answer confidences in tumbling windows of ``window`` inputs and tests every
    full window against ``profile`` (see the module's description); ``checks`` keeps every test."""

    profile: ExitProfile
    window: int = WINDOW
    alpha: float = ALPHA
    checks: list[DriftCheck] = field(default_factory=list)
    _exits: list[np.ndarray] = field(default_factory=list, repr=False)
    _confidence: list[np.ndarray] = field(default_factory=list, repr=False)
    _held: int = field(default=0, repr=False)

    def __post_init__(self) -> None:
        w, a = self.window, self.alpha
        if isinstance(w, bool) or not isinstance(w, int) or not 20 <= w <= 10_000_000:
            raise ArgumentError(f"a drift monitor's `window` is a whole number of inputs in 20..10000000, got {w!r}")
        if isinstance(a, bool) or not isinstance(a, (int, float)) or not 0 < a < 1:
            raise ArgumentError(f"a drift monitor's `alpha` is a false-alarm rate in (0, 1), got {a!r}")

    @property
    def pending(self) -> int:
        """Inputs counted towards the window not yet full."""
        return self._held

    @property
    def last(self) -> DriftCheck | None:
        return self.checks[-1] if self.checks else None

    def observe(self, exits: Any, confidence: Any) -> list[DriftCheck]:
        """Count these inputs (output each left at, its answer's confidence); return the checks of
        the windows they filled, in order (empty while the window is filling)."""
        e, c = np.asarray(exits, np.int64).ravel(), np.asarray(confidence, float).ravel()
        outputs = len(self.profile.exit_counts)
        if len(e) != len(c) or (len(e) and (e.min() < 0 or e.max() >= outputs)):
            raise ArgumentError(f"the monitor takes one exit in 0..{outputs - 1} and one confidence per input")
        done = []
        while len(e):
            take = min(self.window - self._held, len(e))
            self._exits.append(e[:take])
            self._confidence.append(c[:take])
            self._held += take
            e, c = e[take:], c[take:]
            if self._held == self.window:
                done.append(self._test(np.concatenate(self._exits), np.concatenate(self._confidence)))
                self._exits, self._confidence, self._held = [], [], 0
        return done

    def _test(self, exits: np.ndarray, confidence: np.ndarray) -> DriftCheck:
        p = self.profile
        counts = np.bincount(exits, minlength=len(p.exit_counts))
        _, _, exit_p = homogeneity(counts, np.asarray(p.exit_counts))
        _, _, conf_p = homogeneity(p.confidence_bins(confidence), np.asarray(p.confidence_counts))
        check = DriftCheck(
            window=len(self.checks) + 1,
            inputs=len(exits),
            exit_p=exit_p,
            confidence_p=conf_p,
            drifted=min(exit_p, conf_p) < self.alpha / 2,
            mean_cost=float(np.dot(counts, p.relative_costs) / len(exits)),
            expected_cost=p.mean_cost,
            exit_shares=tuple(float(x) for x in counts / len(exits)),
        )
        self.checks.append(check)
        return check
