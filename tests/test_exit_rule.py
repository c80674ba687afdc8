"""One exit rule, three runtimes: the record simulation (numpy), the engine (torch, batch 1 and
batched) and the deployment runtime (numpy + onnxruntime) make the same decisions for every rule;
``ExitRule`` round-trips through JSON and refuses what is not a rule."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from shallowdeep.analysis import ExitRecord
from shallowdeep.analysis.ensemble import ensembled, fit_ensemble
from shallowdeep.analysis.rules import fit_temperatures, rule_exits, rule_scores, scaled
from shallowdeep.core.errors import UserError
from shallowdeep.core.exit_rule import ExitRule, GeometricEnsemble
from shallowdeep.data import normalize
from shallowdeep.inference.engine import EarlyExitEngine

# every rule the tool knows, raw, temperature-scaled and ensembled, under both fallbacks
TABLE = [
    (text, fallback)
    for text in (
        "max_softmax",
        "max_softmax+T",
        "entropy",
        "entropy+T",
        "patience:2",
        "patience:3+T",
        "patience:4",
        "ztw",
        "entropy+E",
        "patience:2+E",
    )
    for fallback in ("most_confident", "final")
]


@pytest.fixture(scope="module")
def three_runtimes(tiny_runs, tmp_path_factory):
    """The tiny SDN run's model, its test images (uint8 and normalised), its test record, the
    validation record's temperatures and one ONNX export of it."""
    import shallowdeep as sd
    from shallowdeep.inference.collect import collect
    from shallowdeep.inference.export import ExportInfo, export_engine
    from shallowdeep.models.costs import output_costs
    from shallowdeep.runs import run_data

    pytest.importorskip("onnxruntime")
    run = tiny_runs / "ic"
    sdn, data = sd.load(run).eval(), run_data(run)
    raw = data.test.images[:150]
    x = normalize(raw, data.mean, data.std).contiguous()
    with torch.no_grad():
        logits = torch.stack(sdn(x), dim=1)
    costs = output_costs(sdn)
    record = ExitRecord.from_arrays(logits, data.test.labels[:150], costs.outputs, costs.cnn)
    val = collect(sdn, data, "val")
    temps, ensemble = fit_temperatures(val), fit_ensemble(val)
    out = tmp_path_factory.mktemp("rule-export") / "export"
    export_engine(EarlyExitEngine(sdn, 0.5), out, ExportInfo(data.mean, data.std))
    return sdn, x, raw.numpy(), record, (temps, ensemble), out  # images are uint8 [N, H, W, 3], as deployed


def _thresholds(record: ExitRecord, rule: ExitRule) -> list[float]:
    """Thresholds that spread the exits, each midway in a gap between scores (so float32 rounding in
    onnxruntime cannot flip a decision); patience's only threshold is k / ICs."""
    if rule.name == "patience":
        return [rule.k / (record.num_outputs - 1)]
    s = np.unique(rule_scores(record, rule).ravel())
    gaps = [(s[i + 1] - s[i], i) for i in range(len(s) - 1) if 0.2 * len(s) < i < 0.8 * len(s)]
    picked = sorted(i for _, i in sorted(gaps)[-2:])
    return [float((s[i] + s[i + 1]) / 2) for i in picked]


@pytest.mark.parametrize("text, fallback", TABLE)
def test_every_rule_decides_alike_in_records_engine_and_deployment(three_runtimes, text, fallback):
    from shallowdeep.inference import deploy

    sdn, x, nhwc, record, (temps, ensemble), export = three_runtimes
    rule = ExitRule.parse(text)
    t = temps.tolist() if rule.temperature else None
    ens = ensemble if rule.ensembled else None
    scored = scaled(record, temps) if rule.temperature else ensembled(record, ens) if ens else record
    manifest_path = export / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    seen_exits: set[int] = set()
    for q in _thresholds(scored, rule):
        calibrated = rule.calibrated(q, t, fallback, ens)
        sim = rule_exits(record, rule, q, fallback, temps if rule.temperature else None, ens)
        engine = EarlyExitEngine(sdn, calibrated)
        manifest["exit"] = engine.rule.to_json()
        manifest_path.write_text(json.dumps(manifest))
        deployed = deploy.load(export).classify(nhwc)
        for batch_size in (1, 32):
            res = engine.classify(x, batch_size=batch_size, normalized=True)
            assert res.exits.tolist() == sim.exits.tolist(), (text, fallback, q, batch_size)
            assert res.predictions.tolist() == sim.predictions.tolist(), (text, fallback, q, batch_size)
        assert deployed.exits.tolist() == sim.exits.tolist(), (text, fallback, q, "deploy")
        assert deployed.predictions.tolist() == sim.predictions.tolist(), (text, fallback, q, "deploy")
        seen_exits |= set(sim.exits.tolist())
    assert len(seen_exits) > 1, "the thresholds should let inputs out at several outputs"


def test_an_exit_rule_round_trips_and_refuses_what_is_not_one():
    rule = ExitRule.parse("patience:2+T").calibrated([0.5, 0.5, 0.75], [1.0, 2.0, 0.5, 1.5], "final")
    assert ExitRule.from_json(json.loads(json.dumps(rule.to_json()))) == rule
    assert rule.label == "patience:2+T" and rule.per_ic(3) == [0.5, 0.5, 0.75]
    assert ExitRule(thresholds=(0.3,)).per_ic(4) == [0.3] * 4
    ens = GeometricEnsemble(((1.0,), (0.5, 2.0)), ((0.0, 0.1, -0.1), (0.0, 0.2, 0.3)))
    ztw = ExitRule.parse("ztw").calibrated([0.7], None, "final", ens)
    assert ExitRule.from_json(json.loads(json.dumps(ztw.to_json()))) == ztw
    assert ztw.label == "max_softmax+E" and ztw.fitted_ensemble(2) == ens
    ens_json = ens.to_json()
    for bad, pattern in (
        ({"name": "max_softmax", "temperature": True, "ensembled": True}, "leave out \\+T"),
        ({"name": "max_softmax", "ensemble": ens_json}, "belongs to a \\+E rule"),
        ({"name": "max_softmax", "ensembled": 1}, "true or false"),
        ({"name": "max_softmax", "ensembled": True, "temperatures": [1.0, 2.0]}, "all 1"),
        ({"name": "max_softmax", "ensembled": True, "ensemble": {"weights": [[1.0]]}}, "weights and biases"),
        ({"name": "max_softmax", "ensembled": True, "ensemble": ens_json | {"weights": [[1.0], [1.0]]}}, "m \\+ 1"),
        ({"name": "max_softmax", "ensembled": True, "ensemble": ens_json | {"weights": [[-1.0], [0.5, 2.0]]}}, ">= 0"),
        ({"name": "max_softmax", "ensembled": True, "ensemble": ens_json | {"biases": [[0.0], [1.0]]}}, "per class"),
    ):
        with pytest.raises(UserError, match=pattern):
            ExitRule.from_json(bad)
    with pytest.raises(UserError, match="no fitted ensemble"):
        ExitRule.parse("entropy+E").calibrated([0.5], None, "final").fitted_ensemble(2)
    with pytest.raises(UserError, match="leave out \\+T"):
        ExitRule.parse("entropy+T+E")
    for bad, pattern in (
        ({"name": "softmin"}, "unknown exit rule"),
        ({"name": "patience", "k": 0}, "K >= 1"),
        ({"name": "entropy", "k": 2}, "takes no"),
        ({"name": "max_softmax", "thresholds": [0.5, float("nan")]}, "numbers >= 0"),
        ({"name": "max_softmax", "temperatures": [0.0]}, "positive"),
        ({"name": "max_softmax", "temperatures": "hot"}, "list of numbers"),
        ({"name": "max_softmax", "fallback": "best"}, "unknown fallback"),
        ({"name": "max_softmax", "temperature": "yes"}, "true or false"),
        ({"name": "max_softmax", "color": 1}, "unknown exit-rule keys"),
        ([1, 2], "JSON object"),
    ):
        with pytest.raises(UserError, match=pattern):
            ExitRule.from_json(bad)
    with pytest.raises(UserError, match="2 thresholds for 4 ICs"):
        ExitRule(thresholds=(0.1, 0.2)).per_ic(4)
    with pytest.raises(UserError, match="has no threshold"):
        from shallowdeep.models.sdn import build_sdn

        EarlyExitEngine(build_sdn("small", 10, 32), ExitRule("entropy"))


def test_a_calibration_written_by_0_2_0_still_loads(copy_run):
    """calibration.json of 0.2.0 kept the rule's name, its temperatures and thresholds apart."""
    from shallowdeep.runs import engine_from_run
    from shallowdeep.workflows import analyze_run

    run = copy_run("ic")
    analyze_run(run, rule="entropy+T", thresholds="single")
    path = run / "calibration.json"
    cal = json.loads(path.read_text())
    rule = cal["exit_rule"]
    cal["exit_rule"] = {"name": "entropy", "k": 0, "temperature": True}
    cal["temperatures"] = rule["temperatures"]
    path.write_text(json.dumps(cal))
    engine = engine_from_run(run)
    assert engine.rule.name == "entropy" and engine.temperatures == rule["temperatures"]
    assert engine.thresholds == [cal["threshold"]] * 4 and engine.fallback == cal["fallback"]
