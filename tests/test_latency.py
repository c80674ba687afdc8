"""Latency profiles, thresholds for a latency budget, INT8 exports (issue 32)."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
from conftest import run_main

from shallowdeep.analysis import ExitRecord, ExitRule
from shallowdeep.analysis.early_exit import early_exit
from shallowdeep.analysis.latency import LatencyBudget, latency_calibration, percentile_sweep, timed
from shallowdeep.core.errors import UserError
from shallowdeep.core.latency import LatencyProfile, StageLatency, stage_latency


def _profile(stage_ms: list[float], plain_ms: float, arch: str = "small") -> LatencyProfile:
    stages = tuple(StageLatency(t, 1.5 * t, 2 * t, 1.1 * t) for t in stage_ms)
    plain = StageLatency(plain_ms, plain_ms, plain_ms, plain_ms)
    return LatencyProfile(arch, "cpu: test", "torch", {}, 1, 10, stages, plain)


def _record(n: int = 600, outputs: int = 4, seed: int = 0) -> ExitRecord:
    """Inputs whose ICs grow more confident and more often right with depth."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 5, n)
    logits = rng.normal(size=(n, outputs, 5))
    for k in range(outputs):
        logits[np.arange(n), k, labels] += rng.uniform(0, 1.5 + k, n)
    costs = np.cumsum(np.full(outputs, 1e6))
    return ExitRecord.from_arrays(logits, labels, costs, costs[-1] * 0.9)


def test_a_profile_round_trips_and_refuses_damage():
    p = _profile([1.0, 2.0, 3.0, 4.0], 8.0)
    assert LatencyProfile.from_json(json.loads(json.dumps(p.to_json()))) == p
    assert p.cumulative_ms(50).tolist() == [1.0, 3.0, 6.0, 10.0]
    assert p.cumulative_ms() == pytest.approx([1.1, 3.3, 6.6, 11.0])  # the means
    assert p.cumulative_ms(95).tolist() == [1.5, 4.5, 9.0, 15.0]
    for damage in (
        {"format": "other"},
        {"stages": [p.to_json()["stages"][0]]},  # one stage: not an SDN
        {"batch": 0},
        {"runtime": "tensorflow"},
        {"plain": {"p50_ms": 2.0, "p95_ms": 1.0, "p99_ms": 3.0, "mean_ms": 2.0}},  # percentiles out of order
        {"plain": {"p50_ms": 2.0, "p95_ms": 2.0, "p99_ms": 3.0}},  # no mean
        {"stages": [{"p50_ms": float("nan"), "p95_ms": 1.0, "p99_ms": 1.0, "mean_ms": 1.0}] * 4},
        {"versions": {"torch": 2}},
    ):
        with pytest.raises(UserError):
            LatencyProfile.from_json(p.to_json() | damage)
    s = stage_latency(np.linspace(0.001, 0.002, 101))  # seconds in, milliseconds out
    assert (s.p50, s.p95, s.p99, s.mean) == pytest.approx((1.5, 1.95, 1.99, 1.5))


def test_latency_thresholds_are_the_most_accurate_within_the_budget():
    """Against a brute force over the same thresholds: the expected mean (or p95) latency of every
    threshold from the timed record, the most accurate within the budget chosen."""
    val, test = _record(seed=1), _record(seed=2)
    prof = _profile([2.0, 0.5, 0.5, 3.0], 5.5)  # an early stage slow for its FLOPs: time and FLOPs disagree
    rule = ExitRule()
    qs = np.linspace(0, 1, 101)
    for budget in (LatencyBudget(3.5), LatencyBudget(4.5, 95)):
        pct = budget.percentile
        lat = latency_calibration(val, test, prof, budget, rule)
        tv = timed(val, prof, pct)
        best = None
        for q in qs:
            e = early_exit(tv, float(q))
            ms = tv.costs[e.exits]
            spent = ms.mean() if pct is None else np.percentile(ms, pct, method="inverted_cdf")
            if spent <= budget.ms + 1e-9 and (best is None or e.accuracy > best):
                best = e.accuracy
        spent = lat.val.mean_ms if budget.percentile is None else lat.val.percentile_ms
        assert spent <= budget.ms + 1e-9
        assert lat.val.accuracy >= best - 1e-12  # the finer default grid may find a better one, never worse
        assert lat.calibration.rule == {"budget": budget.ms / prof.plain_ms(pct)}
    with pytest.raises(UserError, match="cheapest"):
        latency_calibration(val, test, prof, LatencyBudget(0.1), rule)


def test_a_percentile_sweep_reads_the_inputs_latency_at_the_percentile():
    val = _record()
    prof = _profile([1.0, 1.0, 1.0, 1.0], 4.0)
    tv = timed(val, prof, 95)
    from shallowdeep.analysis.early_exit import sweep

    s = percentile_sweep(sweep(tv, [0.0, 0.5, 0.9, 1.01]), tv, 95)
    for q, rel in zip(s.thresholds, s.relative_cost):
        ms = tv.costs[early_exit(tv, float(q)).exits]
        assert rel * tv.cnn_cost == pytest.approx(np.percentile(ms, 95, method="inverted_cdf"))


def test_a_profile_of_another_network_is_refused():
    with pytest.raises(UserError, match="stages"):
        timed(_record(outputs=4), _profile([1.0, 1.0, 1.0], 3.0))


def test_profile_analyze_with_a_budget_and_predict_report_latency(copy_run, tmp_path):
    run = copy_run("ic")
    assert run_main("analyze", str(run), "--quiet").returncode == 0
    for batch in ("1", "16"):
        r = run_main("profile", str(run), "--repeats", "5", "--batch", batch)
        assert r.returncode == 0, r.stderr
    prof = LatencyProfile.from_json(json.loads((run / "latency.json").read_text()))
    assert prof.batch == 16 and prof.num_outputs == 5 and prof.arch == "small"
    r = run_main("profile", str(run), "--repeats", "5")
    assert r.returncode == 0 and "stage 5 (final)" in r.stdout
    prof = LatencyProfile.from_json(json.loads((run / "latency.json").read_text()))
    budget = float(prof.cumulative_ms()[1])  # reachable: every input out by IC 2
    r = run_main("analyze", str(run), "--latency-budget", f"{budget:.6f}")
    assert r.returncode == 0, r.stderr
    assert "the --latency-budget point" in r.stdout and "expected test" in r.stdout
    cal = json.loads((run / "calibration.json").read_text())
    assert cal["rule"]["latency_budget_ms"] == pytest.approx(budget, rel=1e-5)
    report = json.loads((run / "report" / "report.json").read_text())
    lat = report["early_exit"]["engine"]["latency"]
    assert lat["val"]["mean_ms"] <= budget + 1e-9
    chosen = lat["calibration"].get("thresholds") or [lat["calibration"]["threshold"]]
    assert ExitRule.from_json(cal["exit_rule"]).per_ic(4) == ExitRule(thresholds=tuple(chosen)).per_ic(4)
    assert 'id="latency"' in (run / "report" / "report.html").read_text()
    images = tmp_path / "imgs"
    _pngs(run, images)
    r = run_main("predict", str(run), str(images), "--batch-size", "1")
    assert r.returncode == 0 and "realised latency" in r.stdout and "expected from" in r.stdout, r.stdout


def _pngs(run, folder, n: int = 6) -> None:
    from PIL import Image

    from shallowdeep.runs import run_data

    folder.mkdir()
    for i, img in enumerate(run_data(run).test.images[:n].numpy()):
        Image.fromarray(img).save(folder / f"{i}.png")


def test_int8_export_recalibrates_and_its_runtime_matches_its_record(copy_run, tmp_path):
    pytest.importorskip("onnxruntime")
    from shallowdeep import deploy
    from shallowdeep.analysis.shift import calibrated_exits
    from shallowdeep.runs import run_data
    from shallowdeep.workflows import analyze_run, export_run

    run = copy_run("ic")
    analyze_run(run, html=False)  # the calibration only: the export reads it
    out = export_run(run, tmp_path / "int8", quantize="int8")
    manifest = json.loads((out / "manifest.json").read_text())
    assert {"exit_fp32", "quantization", "drift"} <= set(manifest)
    q = manifest["quantization"]
    assert q["calibration_split"] == "val" and q["int8"]["val"] and q["fp32"]["val"]
    model = deploy.load(out)  # the stage hashes were rewritten for the INT8 graphs
    with pytest.raises(UserError, match="not in this onnxruntime"):
        deploy.load(out, providers=["NoSuchExecutionProvider"])
    graph = (out / "stage0.onnx").read_bytes()
    assert b"QuantizeLinear" in graph and b"DequantizeLinear" in graph
    record = ExitRecord.load(out / "records" / "test.safetensors")
    images = run_data(run).test.images.numpy()
    assert record.num_inputs == len(images)
    # parity under thresholds that spread the exits (the tiny run's own let everyone out at IC 1)
    conf = record.confidence[:, :-1]
    qs = [float(np.quantile(conf[:, k], 0.7)) for k in range(conf.shape[1])]
    rule = replace(ExitRule.from_json(manifest["exit"]), thresholds=tuple(qs))
    model.rule, model.thresholds = rule, qs
    got = model.classify(images)
    want = calibrated_exits(record, rule)
    differ = got.exits != want.exits
    near = np.abs(conf - np.asarray(qs)[None]).min(1) < 1e-5
    assert not (differ & ~near).any(), f"{int(differ.sum())} INT8 exits differ from the record"
    assert len(set(got.exits.tolist())) > 2
