"""Wasteful and destructive overthinking (paper section 4, spec section 8)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from ..core.io import JSONObject
from .examples import spread_over_classes
from .record import ExitRecord


@dataclass(frozen=True)
class DestructiveIC:
    """Inputs one IC gets right and the final output gets wrong, and the IC's mean confidence on
    them against its mean confidence on all the inputs it gets right (``None`` where there are none)."""

    count: int
    share_of_final_errors: float | None
    mean_confidence_destructive: float | None
    mean_confidence_correct: float | None


@dataclass(frozen=True)
class Overthinking:
    """Every overthinking figure of a record. Lists are per output (ICs, then final) unless named."""

    num_inputs: int
    num_outputs: int
    relative_costs: list[float]
    correct: list[int]
    cumulative_correct: list[int]  # right at this or an earlier output
    newly_correct: list[int]  # right here for the first time
    accuracy: list[float]
    early_count: int  # inputs some IC gets right (wasteful overthinking)
    early_share: float
    never_correct: int
    oracle_relative_cost: float  # stop each input at the first output that gets it right
    final_errors: int
    destructive_per_ic: list[DestructiveIC]
    destructive_union_count: int
    destructive_union_share_of_final_errors: float | None
    destructive_union_share_of_inputs: float
    examples_first_correct: list[list[int]]  # per output: input positions first right there
    examples_only_first: list[int]  # input positions only IC 1 gets right

    def to_json(self) -> JSONObject:
        d = asdict(self)
        d["destructive"] = {
            "per_ic": d.pop("destructive_per_ic"),
            "union_count": d.pop("destructive_union_count"),
            "union_share_of_final_errors": d.pop("destructive_union_share_of_final_errors"),
            "union_share_of_inputs": d.pop("destructive_union_share_of_inputs"),
        }
        return d


def _mean(x: np.ndarray) -> float | None:
    return float(x.mean()) if x.size else None


def overthinking(record: ExitRecord, examples: int = 8) -> Overthinking:
    """Every overthinking figure of a record.

    Per output: ``correct``, ``cumulative_correct`` (right at this or an earlier output) and
    ``newly_correct`` (right here for the first time). ``early_share``: inputs some IC gets right.
    ``oracle_relative_cost``: inputs first right at IC i cost IC i's relative cost, all others 1.
    ``destructive``: inputs an IC gets right and the final output gets wrong, per IC and their union,
    also as a share of the final output's errors, with each IC's mean confidence on them vs on all
    its correct inputs. ``examples_first_correct[k]`` and ``examples_only_first`` hold up to
    ``examples`` input positions for the image grids.
    """
    n, k = record.num_inputs, record.num_outputs
    correct = record.correct
    cumulative = np.logical_or.accumulate(correct, axis=1) if n else correct
    newly = correct.copy()
    newly[:, 1:] &= ~cumulative[:, :-1]
    ics = correct[:, : k - 1]
    final_wrong = ~correct[:, -1]
    any_ic = ics.any(1)
    # first output that gets the input right (k if none)
    first = np.where(cumulative.any(1), cumulative.argmax(1), k)
    rel = record.relative_costs
    oracle = np.ones(n)
    first_at_ic = first < k - 1
    oracle[first_at_ic] = rel[first[first_at_ic]]
    destructive = ics & final_wrong[:, None]
    union = destructive.any(1)
    n_wrong = int(final_wrong.sum())
    conf = record.confidence
    per_ic = []
    for i in range(k - 1):
        per_ic.append(
            DestructiveIC(
                count=int(destructive[:, i].sum()),
                share_of_final_errors=float(destructive[:, i].sum() / n_wrong) if n_wrong else None,
                mean_confidence_destructive=_mean(conf[destructive[:, i], i]),
                mean_confidence_correct=_mean(conf[correct[:, i], i]),
            )
        )
    only_first = correct[:, 0] & ~correct[:, 1:].any(1) if k > 1 else np.zeros(n, bool)
    return Overthinking(
        num_inputs=n,
        num_outputs=k,
        relative_costs=rel.tolist(),
        correct=correct.sum(0).tolist(),
        cumulative_correct=cumulative.sum(0).tolist(),
        newly_correct=newly.sum(0).tolist(),
        accuracy=(correct.mean(0) if n else np.zeros(k)).tolist(),
        early_count=int(any_ic.sum()),
        early_share=float(any_ic.mean()) if n else 0.0,
        never_correct=int((first == k).sum()),
        oracle_relative_cost=float(oracle.mean()) if n else 0.0,
        final_errors=n_wrong,
        destructive_per_ic=per_ic,
        destructive_union_count=int(union.sum()),
        destructive_union_share_of_final_errors=float(union.sum() / n_wrong) if n_wrong else None,
        destructive_union_share_of_inputs=float(union.mean()) if n else 0.0,
        examples_first_correct=[spread_over_classes(first == i, record.labels, examples) for i in range(k)],
        examples_only_first=spread_over_classes(only_first, record.labels, examples),
    )
