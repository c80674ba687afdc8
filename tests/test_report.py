"""``shallowdeep analyze``: cached records, a self-contained HTML report and a JSON of every figure."""

from __future__ import annotations

import json
from html.parser import HTMLParser
from pathlib import Path

import pytest
import torch

from shallowdeep.cli import main
from shallowdeep.runs import records as record_mod


@pytest.fixture(scope="module")
def sdn_run(tiny_runs, tmp_path_factory) -> Path:
    """This module's own copy of the shared IC-only run (analyze writes its records into it)."""
    import shutil

    root = tmp_path_factory.mktemp("report")
    shutil.copytree(tiny_runs / "cnn", root / "cnn")
    return Path(shutil.copytree(tiny_runs / "ic", root / "sdn"))


class Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.ids, self.imgs, self.links, self.scripts = set(), [], [], []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if "id" in a:
            self.ids.add(a["id"])
        if tag == "img":
            self.imgs.append(a.get("src", ""))
        if tag in ("a", "link") and "href" in a:
            self.links.append(a["href"])
        if tag in ("script", "iframe", "source", "video", "audio"):
            self.scripts.append(a)


def test_analyze_writes_self_contained_report(sdn_run, tmp_path, capsys):
    out = tmp_path / "rep"
    assert main(["analyze", str(sdn_run), "--out", str(out), "--quiet"]) == 0
    assert "report.html" in capsys.readouterr().out
    text = (out / "report.html").read_text()
    page = Page()
    page.feed(text)
    for section in ("run", "training", "outputs", "early-exit", "overthinking", "confusion", "calibration", "classes"):
        assert section in page.ids
    # the headline numbers first: what predict's exits keep (calibration.json's own figures) and at what cost
    summary = text[text.index('<section id="summary">') :].split("</section>")[0]
    assert text.index('<section id="summary">') < text.index('<section id="run">')
    used = json.loads((sdn_run / "calibration.json").read_text())["test"]
    assert f"{100 * used['accuracy']:.2f}% test accuracy at {100 * used['relative_cost']:.1f}% of the CNN" in summary
    for fig in (
        "training",
        "exits",
        "accuracy_cost",
        "threshold",
        "overthinking",
        "destructive",
        "confusion",
        "reliability",
        "first_correct",
    ):
        assert f"fig-{fig}" in page.ids
    assert page.imgs and all(
        src.startswith(("data:image/png;base64,", "data:image/svg+xml;base64,")) and len(src) > 1000
        for src in page.imgs
    )
    import base64

    svgs = [base64.b64decode(src.split(",", 1)[1]).decode() for src in page.imgs if src.startswith("data:image/svg")]
    assert len(svgs) >= 6 and all("<svg" in v and 'href="http' not in v for v in svgs)  # vector charts, nothing fetched
    # the exits drawn are predict's, and the chart says which thresholds they are
    assert sum("as predict exits: max_softmax, " in v for v in svgs) == 1
    assert not page.links and not page.scripts
    assert "http://" not in text and "https://" not in text and "url(" not in text
    assert "chosen on the test set" in text.lower()  # the reference protocol is labelled as such

    data = json.loads((out / "report.json").read_text())
    assert len(data["outputs"]) == 5 and {"relative_cost", "val_accuracy", "test_accuracy"} <= data["outputs"][0].keys()
    ee = data["early_exit"]
    assert len(ee["curves"]["test"]["thresholds"]) >= 1000 and len(ee["curves"]["val"]["accuracy"]) >= 1000
    assert {"threshold", "val", "test"} <= ee["calibrated"].keys()
    assert len(ee["reference_protocol"]["rows"]) == 11
    assert {"newly_correct", "destructive", "oracle_relative_cost", "examples_first_correct"} <= data[
        "overthinking"
    ].keys()
    assert data["confusion"]["normalisation"]["from"] == "training split"
    assert {"edges", "correct", "wrong"} <= data["confusion"]["confusion"]["histogram"].keys()
    assert set(data["images"]["first_correct"]) == {"IC 1", "IC 2", "IC 3", "IC 4", "final"}


def test_records_are_cached_until_the_weights_change(sdn_run, tmp_path, monkeypatch):
    import shutil

    sdn_run = Path(shutil.copytree(sdn_run, tmp_path / "copy"))  # this test changes the weights: work on a copy
    main(["analyze", str(sdn_run), "--out", str(tmp_path / "a"), "--quiet"])
    for split in ("train", "val", "test"):
        assert (sdn_run / "records" / f"{split}.safetensors").is_file()

    def boom(*a, **k):
        raise AssertionError("the network ran again although the weights did not change")

    monkeypatch.setattr(record_mod, "collect", boom)
    assert main(["analyze", str(sdn_run), "--out", str(tmp_path / "b"), "--quiet"]) == 0
    # new weights (same architecture): the cache is stale and the records are collected again
    monkeypatch.undo()
    import shallowdeep
    from shallowdeep import runs

    model = shallowdeep.load(sdn_run)
    import torch

    with torch.no_grad():
        model.heads[0].linear.bias.add_(1.0)
    runs.save_weights(sdn_run / "model.safetensors", model)
    calls = []
    real = record_mod.collect
    monkeypatch.setattr(record_mod, "collect", lambda *a, **k: calls.append(a[2]) or real(*a, **k))
    assert main(["analyze", str(sdn_run), "--out", str(tmp_path / "c"), "--quiet"]) == 0
    assert sorted(calls) == ["test", "train", "val"]


def test_analyze_a_cnn_run(sdn_run, tmp_path, capsys):
    assert main(["analyze", str(sdn_run.parent / "cnn"), "--out", str(tmp_path / "c"), "--quiet"]) == 0
    data = json.loads((tmp_path / "c" / "report.json").read_text())
    assert data["num_outputs"] == 1 and data["overthinking"]["early_count"] == 0
    assert not (sdn_run.parent / "cnn" / "calibration.json").exists()  # nothing to calibrate without ICs


def test_cached_records_are_refreshed_when_the_data_changed(sdn_run, tmp_path):
    from dataclasses import replace

    from shallowdeep.runs import run_data as load_run_data
    from shallowdeep.runs import run_records

    data = load_run_data(sdn_run)
    first = run_records(sdn_run, ("val",), data=data)["val"]
    shuffled = replace(data, val=data.val.subset(torch.arange(len(data.val)).flip(0)))
    again = run_records(sdn_run, ("val",), data=shuffled)["val"]
    assert list(again.ids) == list(reversed(first.ids.tolist()))


def test_analyze_refuses_a_device_that_does_not_exist_before_anything(sdn_run, tmp_path):
    """From Python too, a bad device is a one-line error before records are collected or written."""
    from shallowdeep.core.errors import UserError
    from shallowdeep.workflows import analyze_run

    for device, said in (("tpu", "unknown device 'tpu'"), ("cuda:99", "CUDA")):
        with pytest.raises(UserError, match=said):
            analyze_run(sdn_run, tmp_path / "rep", device=device)
    assert not (tmp_path / "rep").exists()


def test_report_says_where_the_analysis_time_went(sdn_run, tmp_path, monkeypatch):
    """report.json's ``time_parts``: a slow collection lands in ``records``, slow figures in
    ``figures``; the parts make the analysis's wall time; the log says both, and each record's time."""
    import shutil
    import time

    from shallowdeep import report as report_mod
    from shallowdeep.workflows import analyze_run

    run = Path(shutil.copytree(sdn_run, tmp_path / "copy"))
    shutil.rmtree(run / "records", ignore_errors=True)  # collected anew, so the slowed collection runs
    real_collect, real_figures = record_mod.collect, report_mod.figures
    monkeypatch.setattr(record_mod, "collect", lambda *a, **k: time.sleep(0.4) or real_collect(*a, **k))
    monkeypatch.setattr(report_mod, "figures", lambda *a, **k: time.sleep(0.7) or real_figures(*a, **k))
    lines: list[str] = []
    json_path = analyze_run(run, out=tmp_path / "rep", log=lines.append).json
    rep = json.loads(json_path.read_text())
    parts = rep["time_parts"]
    assert list(parts) == ["data", "records", "analyses", "calibration", "figures", "page"]
    assert parts["records"] >= 1.2 and parts["figures"] >= 0.7  # three records slowed by 0.4 s each
    assert parts["analyses"] < 0.7 and parts["calibration"] < 0.7  # the slowed parts did not leak into them
    assert sum(parts.values()) <= rep["wall_seconds"] <= sum(parts.values()) + 0.5
    assert sum(line.startswith("collected the ") and " record in " in line for line in lines) == 3
    assert lines[-1].startswith(f"analyzed in {rep['wall_seconds']:.1f} s (data ")


def test_a_cnn_runs_analysis_says_it_has_no_ics(copy_run, capsys):
    """A plain CNN: no '0.0 % of test inputs right at some IC', no IC sections; the summary says why."""
    run = copy_run("cnn")
    assert main(["analyze", str(run)]) == 0
    out = capsys.readouterr().out
    assert "a CNN run has no ICs" in out and "right at some IC" not in out, out
    text = (run / "report" / "report.html").read_text()
    page = Page()
    page.feed(text)
    assert "summary" in page.ids and not {"overthinking", "confusion", "rules"} & page.ids
    assert "a plain CNN: no ICs" in text


def test_a_short_trainings_chart_marks_its_points():
    """One epoch drawn as a line alone shows nothing: one or two epochs are drawn as points."""
    import base64
    import importlib
    import sys

    importlib.import_module("shallowdeep.report.figures")
    figures = sys.modules["shallowdeep.report.figures"]  # (the package re-exports a function of that name)
    epoch = {"val_acc": [0.2, 0.5], "train_loss": 2.0}

    def svg(n: int) -> str:
        return base64.b64decode(figures.fig_training([epoch | {"epoch": i + 1} for i in range(n)])[4:]).decode()

    import re

    circle = re.compile(r'<path id="[^"]+" d="M [^"]*C ')  # a round marker's defined path (ticks are lines)
    assert circle.search(svg(1)) and circle.search(svg(2)) and not circle.search(svg(5))


def test_analyze_without_html_writes_the_same_analysis_and_calibration_and_no_page(
    sdn_run, tmp_path, capsys, monkeypatch
):
    """``analyze --no-html``: report.json and calibration.json as a full analysis writes them, no
    figure drawn, the older report.html removed; a reproduction does not keep such an analysis (its
    table links each report's page)."""
    import shutil

    from shallowdeep import report as report_mod
    from shallowdeep.workflows import analyze_run, kept_analysis

    run = Path(shutil.copytree(sdn_run, tmp_path / "copy"))
    full = analyze_run(run)
    assert full.html is not None and full.html.is_file() and kept_analysis(run) is not None
    with_page, calibration = json.loads(full.json.read_text()), json.loads((run / "calibration.json").read_text())
    (run / "calibration.json").unlink()
    monkeypatch.setattr(report_mod, "figures", lambda *a, **k: pytest.fail("a figure was drawn"))
    assert main(["analyze", str(run), "--no-html", "--quiet"]) == 0
    assert "(no report.html)" in capsys.readouterr().out
    assert not (run / "report" / "report.html").exists()
    bare = json.loads((run / "report" / "report.json").read_text())
    timed = ("time_parts", "wall_seconds", "meta_line")
    assert {k: v for k, v in bare.items() if k not in timed} == {k: v for k, v in with_page.items() if k not in timed}
    assert list(bare["time_parts"]) == ["data", "records", "analyses", "calibration", "page"]
    assert json.loads((run / "calibration.json").read_text()) == calibration
    assert kept_analysis(run) is None
