"""Hostile run folders (issue 27): every key of run.json and calibration.json damaged in turn."""

from __future__ import annotations

import json

import torch
from hostile_json import damaged, parent_of

import shallowdeep
from shallowdeep.core.errors import UserError
from shallowdeep.inference.engine import EarlyExitEngine
from shallowdeep.runs import engine_from_run
from shallowdeep.runs.calibration import read_exit_rule


def test_every_run_json_key_damaged_gives_a_typed_error_or_a_working_model(copy_run):
    """Loading a run whose run.json has one key deleted or one value of a wrong type, NaN, an
    infinity, a negative, a huge number or a list of the wrong length: a UserError, or a model that
    gives finite logits for every class. Never another exception."""
    run = copy_run("ic")
    good = json.loads((run / "run.json").read_text())
    refused = loaded = 0
    for path, done, doc in damaged(good):
        (run / "run.json").write_text(json.dumps(doc))
        try:
            model = shallowdeep.load(run)
        except UserError:
            refused += 1
            continue
        loaded += 1
        size, classes = good["model"]["image_size"], good["model"]["num_classes"]
        with torch.no_grad():
            out = model(torch.zeros(2, 3, size, size))
        last = out[-1] if isinstance(out, (list, tuple)) else out
        assert last.shape == (2, classes) and torch.isfinite(last).all(), (path, done)
    assert refused and loaded
    print(f"{refused + loaded} damaged run.json files: {refused} refused with a UserError, {loaded} load")


def test_every_calibration_key_damaged_gives_a_typed_error_or_a_working_engine(copy_run):
    """The same for calibration.json: its rule refused with a UserError, or an engine that exits."""
    from shallowdeep.workflows import analyze_run

    run = copy_run("ic")
    analyze_run(run, html=False)  # the calibration only
    good = json.loads((run / "calibration.json").read_text())
    x = torch.zeros(3, 3, 32, 32)
    model = shallowdeep.load(run)  # what engine_from_run loads, once: the calibration is what changes
    assert engine_from_run(run).rule == EarlyExitEngine(model, read_exit_rule(run)).rule
    refused = loaded = 0
    for path, done, doc in damaged(good):
        (run / "calibration.json").write_text(json.dumps(doc))
        try:
            engine = EarlyExitEngine(model, read_exit_rule(run))
        except UserError:
            refused += 1
            continue
        loaded += 1
        got = engine.classify(x, normalized=True)
        assert ((got.exits >= 0) & (got.exits < engine.num_outputs)).all(), (path, done)
        assert torch.isfinite(got.confidence).all(), (path, done)
    assert refused and loaded
    print(f"{refused + loaded} damaged calibration.json files: {refused} refused, {loaded} load")


class _SplicedDumps:
    """``json.dumps`` of a damaged report, with its large subtrees that the damage did not touch
    encoded once, not once per case: encoding half a megabyte of floats 779 times was a third of
    the test's time on the 2-core VM (31 s of 93 s, under cProfile)."""

    def __init__(self, doc: dict, big: list[tuple]) -> None:
        self.big = {p: json.dumps(parent_of(doc, p)[p[-1]]) for p in big}

    def __call__(self, doc: dict, damaged_path: tuple) -> str:
        untouched = [p for p in self.big if p[: len(damaged_path)] != damaged_path[: len(p)]]
        held = []
        for i, p in enumerate(untouched):  # each replaced by a marker string while encoding
            node = parent_of(doc, p)
            held.append((node, p[-1], node[p[-1]]))
            node[p[-1]] = f"\x00spliced{i}"
        try:
            text = json.dumps(doc)
        finally:
            for node, key, value in held:
                node[key] = value
        for i, p in enumerate(untouched):
            text = text.replace(json.dumps(f"\x00spliced{i}"), self.big[p], 1)
        return text


def test_every_report_json_key_damaged_is_analyzed_again_or_read(copy_run):
    """A kept report.json (what `reproduce` reuses instead of analyzing again) with one key damaged:
    either it is not kept (the run is analyzed again) or the reproduction's table reads it."""
    from shallowdeep.reproduction_table import TableRow
    from shallowdeep.workflows import analyze_run, kept_analysis

    run = copy_run("ic")
    path = analyze_run(run).json
    good = json.loads(path.read_text())
    assert kept_analysis(run) == path
    kept = 0
    # every top-level key, and inside what the table reads (the curves and rules it does not read
    # are half a megabyte: damaged as a whole); each value a wrong type, a NaN, a negative
    read = ("early_exit", "overthinking", "confusion", "outputs")

    def only(p: tuple) -> bool:
        return len(p) == 1 or (p[0] in read and p[:2] != ("early_exit", "curves"))

    dumps = _SplicedDumps(good, [("early_exit", "curves"), ("rules", "results")])
    for case, (key_path, done, doc) in enumerate(
        damaged(good, depth=4, values=[None, "x", -1, float("nan")], only=only)
    ):
        text = dumps(doc, key_path)
        if case % 40 == 0:  # the splice is json.dumps, byte for byte (checked on every 40th case)
            assert text == json.dumps(doc), key_path
        path.write_text(text)
        if kept_analysis(run) is not None:
            kept += 1
            row = TableRow.from_report("small", "ic-only", doc, [1.0], {}, path.parent / "report.html", run)
            assert row.arch == "small" and row.kind == "ic-only", (key_path, done)
    assert kept  # keys the table does not read leave the report kept
    print(f"damaged report.json files: {kept} kept and read by the table, the rest analyzed again")
