"""Backdoor figures (spec section 11) from a clean and a triggered record: pure, no network."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from ..core.io import JSONObject
from .early_exit import early_exit
from .overthinking import overthinking
from .record import ExitRecord


@dataclass(frozen=True)
class BackdoorExits:
    """Early exits at a calibrated threshold on triggered and on clean inputs."""

    threshold: float
    fallback: str
    triggered_accuracy: float
    triggered_relative_cost: float
    triggered_exit_counts: list[int]
    attack_success: float
    clean_accuracy: float
    clean_relative_cost: float


@dataclass(frozen=True)
class BackdoorResult:
    """Clean accuracy, attack success and accuracy on triggered inputs (against true labels), for
    the final output, every output and early exits; destructive overthinking on triggered inputs."""

    trigger: JSONObject
    triggered_inputs: int
    clean_accuracy_final: float
    attack_success_final: float
    triggered_accuracy_final: float
    per_output: dict[str, list[float]]  # attack_success, triggered_accuracy, clean_accuracy
    early_exit: BackdoorExits | None = None
    destructive_on_triggered: JSONObject | None = None

    def to_json(self) -> JSONObject:
        d = asdict(self)
        return {k: v for k, v in d.items() if v is not None}


def backdoor_figures(
    clean: ExitRecord,
    triggered: ExitRecord,
    target: int,
    trigger: JSONObject,
    threshold: float | None,
    fallback: str,
) -> BackdoorResult:
    """Every backdoor figure; ``target`` is the class the trigger points to, ``trigger`` its
    description (for the report), ``threshold`` the calibrated one (``None`` for a plain CNN)."""
    k = triggered.num_outputs
    hit_target = (triggered.preds == target).mean(0) if triggered.num_inputs else np.zeros(k)
    exits = destructive = None
    if threshold is not None and k > 1:
        e = early_exit(triggered, threshold, fallback)
        ec = early_exit(clean, threshold, fallback)
        exits = BackdoorExits(
            threshold,
            fallback,
            e.accuracy,
            e.relative_cost,
            e.exit_counts,
            float((e.predictions == target).mean()) if triggered.num_inputs else 0.0,
            ec.accuracy,
            ec.relative_cost,
        )
        o = overthinking(triggered)
        destructive = {
            "union_count": o.destructive_union_count,
            "union_share_of_final_errors": o.destructive_union_share_of_final_errors,
            "per_ic": [d.count for d in o.destructive_per_ic],
            "early_share": o.early_share,
        }
    return BackdoorResult(
        trigger=dict(trigger),
        triggered_inputs=triggered.num_inputs,
        clean_accuracy_final=float(clean.accuracy()[-1]),
        attack_success_final=float(hit_target[-1]),
        triggered_accuracy_final=float(triggered.accuracy()[-1]),
        per_output={
            "attack_success": hit_target.tolist(),
            "triggered_accuracy": triggered.accuracy().tolist(),
            "clean_accuracy": clean.accuracy().tolist(),
        },
        early_exit=exits,
        destructive_on_triggered=destructive,
    )
