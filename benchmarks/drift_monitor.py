"""How often the drift monitor cries wolf on clean inputs, and how soon it notices shifted ones.

For an analyzed SDN run (``shallowdeep analyze RUN --corruptions`` and, for attacks, ``shallowdeep
attack RUN`` first), this replays the engine's decisions on the run's records (the calibrated rule on
each record: the exits and answer confidences the engine and the deployed runtime report, as
tests/test_shift.py checks on the engine itself) through :class:`DriftMonitor`:

- false alarms: the share of windows of clean test inputs that the monitor flags: ``--windows``
  random windows (each a draw of ``--window`` inputs without replacement) and the disjoint windows
  of one shuffled stream of the test split; the windows of the split in its stored order are
  counted too, because an image-folder split is stored class by class, and a window of one class
  is a real shift (of labels) the monitor is meant to see;
- detection: for every attacked or corrupted record, the share of random windows flagged and the
  inputs a stream of that record (in the same shuffled order) needs before the first alarm.

    python benchmarks/drift_monitor.py RUN [--window 500] [--windows 2000] [--alpha 0.001]
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from shallowdeep.analysis.record import ExitRecord
from shallowdeep.analysis.rules import answer_confidence, calibrated_exits
from shallowdeep.core.drift import DriftMonitor
from shallowdeep.runs import RunFolder, read_exit_profile, read_exit_rule


def decisions(record: ExitRecord, rule) -> tuple[np.ndarray, np.ndarray]:
    """The exits and answer confidences the engine gives ``record``'s inputs under ``rule``."""
    exits = calibrated_exits(record, rule)
    return exits.exits, answer_confidence(record, rule, exits)


def flagged_share(profile, exits, conf, window: int, alpha: float, draws: int, rng) -> float:
    """The share of ``draws`` random windows (inputs drawn without replacement) that drift."""
    hits = 0
    for _ in range(draws):
        idx = rng.choice(len(exits), window, replace=False)
        monitor = DriftMonitor(profile, window, alpha)
        hits += monitor.observe(exits[idx], conf[idx])[0].drifted
    return hits / draws


def first_alarm(profile, exits, conf, window: int, alpha: float) -> int | None:
    """Inputs a stream of these decisions (in the order given) needs before the monitor first fires."""
    monitor = DriftMonitor(profile, window, alpha)
    for check in monitor.observe(exits, conf):
        if check.drifted:
            return check.window * window
    return None


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run")
    p.add_argument("--window", type=int, default=500)
    p.add_argument("--windows", type=int, default=2000, help="random clean windows drawn")
    p.add_argument("--alpha", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    folder = RunFolder(a.run)
    profile, rule = read_exit_profile(a.run), read_exit_rule(a.run)
    if profile is None:
        sys.exit(f"{a.run} has no exit profile: analyze it with this version first")
    rng = np.random.default_rng(a.seed)
    test = ExitRecord.load(folder.record("test"))
    exits, conf = decisions(test, rule)
    started = time.perf_counter()
    far = flagged_share(profile, exits, conf, a.window, a.alpha, a.windows, rng)
    order = rng.permutation(len(exits))  # one shuffled stream, the same for every record
    shuffled = DriftMonitor(profile, a.window, a.alpha).observe(exits[order], conf[order])
    ordered = DriftMonitor(profile, a.window, a.alpha).observe(exits, conf)
    seconds = time.perf_counter() - started
    print(f"profile: {profile.inputs} validation inputs, exits {list(profile.exit_counts)}")
    print(
        f"clean test: {far:.4f} of {a.windows} random windows of {a.window} flagged (alpha {a.alpha:g}); "
        f"{sum(c.drifted for c in shuffled)} of {len(shuffled)} windows of a shuffled stream; "
        f"{sum(c.drifted for c in ordered)} of {len(ordered)} in stored order (class by class: label shift); "
        f"{seconds / (a.windows + 2 * len(ordered)) * 1e3:.2f} ms per window"
    )
    print("record | kind | windows flagged | inputs to first alarm | window mean cost (validation)")
    for path in sorted(folder.records.glob("test+*.safetensors")):
        rec = ExitRecord.load(path)
        kind = "attack" if "attack" in rec.meta else "corruption" if "corruption" in rec.meta else None
        if kind is None or rec.num_inputs < a.window:
            continue
        e, c = decisions(rec, rule)
        share = flagged_share(profile, e, c, a.window, a.alpha, min(a.windows, 500), rng)
        same = order if rec.num_inputs == len(order) else rng.permutation(rec.num_inputs)
        first = first_alarm(profile, e[same], c[same], a.window, a.alpha)
        cost = float(np.asarray(profile.relative_costs)[e].mean())
        print(
            f"{path.stem.removeprefix('test+')} | {kind} | {share:.3f} | {first if first else 'none'} | "
            f"{100 * cost:.1f}% ({100 * profile.mean_cost:.1f}%)"
        )
    print(f"false_alarm_rate={far:.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
