"""The early-exit engine: exactness against the record simulation, order, edge cases, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from shallowdeep.analysis import ExitRecord, early_exit
from shallowdeep.core import io
from shallowdeep.core.errors import UserError
from shallowdeep.core.exit_rule import ExitRule
from shallowdeep.data import batches
from shallowdeep.inference.collect import collect
from shallowdeep.inference.engine import EarlyExitEngine, _inference_head
from shallowdeep.models import list_archs
from shallowdeep.models.costs import output_costs
from shallowdeep.models.sdn import build_sdn
from shallowdeep.runs import engine_from_run


def safe_thresholds(record: ExitRecord, n: int, margin: float = 1e-4) -> list[float]:
    """Thresholds spread over the ICs' confidences, none within ``margin`` of any of them, so the
    float rounding of different kernels (conv algorithms, folded BN) cannot flip a decision."""
    conf = np.sort(record.confidence[:, :-1].ravel())
    qs = []
    for p in np.linspace(0.05, 0.95, n):
        i = int(p * (len(conf) - 1))
        while i + 1 < len(conf) and conf[i + 1] - conf[i] < 2 * margin:
            i += 1
        if i + 1 < len(conf):
            qs.append(float((conf[i] + conf[i + 1]) / 2))
    return qs


def assert_engine_equals_records(sdn, x: torch.Tensor, batch_sizes, margin: float) -> None:
    """The engine's exits and predictions equal the record simulation of ``sdn``'s outputs on ``x``,
    at thresholds spread over the ICs' confidences (none within ``margin`` of one), per batch size."""
    with torch.no_grad():
        outs = sdn(x)
    costs = output_costs(sdn)
    n = len(x)
    rec = ExitRecord.from_arrays(torch.stack(outs, 1), np.zeros(n, dtype=np.int64), costs.outputs, costs.cnn)
    for q in safe_thresholds(rec, 3, margin=margin):
        sim = early_exit(rec, q)
        eng = EarlyExitEngine(sdn, q)
        for bs in batch_sizes:
            res = eng.classify(x, batch_size=bs, normalized=True)
            assert res.exits.tolist() == sim.exits.tolist()
            assert res.predictions.tolist() == sim.predictions.tolist()


def images(data, split="test", limit=None):
    x = torch.cat([x for x, _ in batches(data, split, 512)])
    return x[:limit] if limit else x


@pytest.fixture(scope="module")
def random_sdn():
    torch.manual_seed(0)
    return build_sdn("small", 10, 32).eval()


@pytest.fixture(scope="module")
def trained_sdn(tiny_runs):
    import shallowdeep

    return shallowdeep.load(tiny_runs / "ic"), tiny_runs / "ic"


@pytest.mark.parametrize("which", ["random", "trained"])
@pytest.mark.parametrize("fallback", ["most_confident", "final"])
@pytest.mark.parametrize("fold_bn", [True, False])
def test_engine_matches_record_simulation(which, fallback, fold_bn, random_sdn, trained_sdn, digits):
    sdn = random_sdn if which == "random" else trained_sdn[0]
    record = collect(sdn, digits, "test")
    x = images(digits)
    for q in safe_thresholds(record, 5):
        sim = early_exit(record, q, fallback)
        eng = EarlyExitEngine(sdn, q, fallback, fold_bn=fold_bn)
        batched = eng.classify(x, batch_size=64, normalized=True)
        assert torch.equal(batched.exits, torch.from_numpy(sim.exits))
        assert torch.equal(batched.predictions, torch.from_numpy(sim.predictions))
        assert np.allclose(batched.relative_cost.numpy(), sim.costs / record.cnn_cost)
        one = eng.classify(x[:80], batch_size=1, normalized=True)
        assert torch.equal(one.exits, batched.exits[:80]) and torch.equal(one.predictions, batched.predictions[:80])
        assert torch.allclose(one.confidence, batched.confidence[:80], atol=1e-5)


def test_exit_counts_cover_every_output(trained_sdn, digits):
    sdn, _ = trained_sdn
    record = collect(sdn, digits, "test")
    q = safe_thresholds(record, 3)[1]
    res = EarlyExitEngine(sdn, q).classify(images(digits), normalized=True)
    assert np.bincount(res.exits.numpy(), minlength=sdn.num_outputs).tolist() == early_exit(record, q).exit_counts


def test_order_is_preserved_under_compaction(trained_sdn, digits):
    sdn, _ = trained_sdn
    x = images(digits, limit=200)
    q = safe_thresholds(collect(sdn, digits, "test"), 3)[1]
    eng = EarlyExitEngine(sdn, q)
    res = eng.classify(x, batch_size=200, normalized=True)
    perm = torch.randperm(200, generator=torch.Generator().manual_seed(0))
    res_p = eng.classify(x[perm], batch_size=200, normalized=True)
    assert torch.equal(res_p.predictions, res.predictions[perm]) and torch.equal(res_p.exits, res.exits[perm])
    assert len(set(res.exits.tolist())) > 1, "the test needs inputs leaving at different outputs"


def test_threshold_zero_everyone_exits_first_and_above_one_nobody(random_sdn, digits):
    x = images(digits, limit=50)
    first = EarlyExitEngine(random_sdn, 0.0).classify(x, normalized=True)
    assert first.exits.eq(0).all() and torch.allclose(first.relative_cost, first.relative_cost[0])
    none = EarlyExitEngine(random_sdn, 1.0).classify(x, normalized=True)
    assert none.exits.eq(random_sdn.num_outputs - 1).all()
    assert none.relative_cost[0] > 1.0  # every IC was paid for
    with torch.no_grad():
        final = random_sdn(x)[-1].argmax(1)
    assert torch.equal(EarlyExitEngine(random_sdn, 1.0, "final").classify(x, normalized=True).predictions, final)
    one = EarlyExitEngine(random_sdn, 1.0).classify(x[:5], batch_size=1, normalized=True)
    assert one.exits.eq(random_sdn.num_outputs - 1).all()


def test_empty_input(random_sdn):
    res = EarlyExitEngine(random_sdn, 0.5).classify(torch.zeros(0, 3, 32, 32), normalized=True)
    assert len(res) == 0 and res.exits.dtype == torch.int64


def test_wrong_size_or_channels_is_clear(random_sdn):
    eng = EarlyExitEngine(random_sdn, 0.5)
    with pytest.raises(UserError, match=r"expects images shaped \[N, 3, 32, 32\]"):
        eng.classify(torch.zeros(2, 3, 28, 28), normalized=True)
    with pytest.raises(UserError, match="expects images"):
        eng.classify(torch.zeros(2, 1, 32, 32), normalized=True)
    with pytest.raises(UserError, match="SDN"):
        EarlyExitEngine(random_sdn.cnn, 0.5)
    with pytest.raises(UserError, match="fallback"):
        EarlyExitEngine(random_sdn, 0.5, "best")


@pytest.mark.parametrize("arch", list_archs())
def test_engine_agrees_with_records_for_every_registered_architecture(arch):
    """Random weights, random inputs: the engine's exits and predictions (both paths) equal the
    record simulation at thresholds spread over the ICs' confidences."""
    torch.manual_seed(0)
    sdn = build_sdn(arch, 10, 32).eval()
    x = torch.randn(24, 3, 32, 32)
    with torch.no_grad():
        logits = torch.stack(sdn(x), dim=1)
    from shallowdeep import output_costs

    costs = output_costs(sdn)
    record = ExitRecord.from_arrays(logits, torch.zeros(len(x), dtype=torch.int64), costs.outputs, costs.cnn)
    for q in safe_thresholds(record, 3, margin=1e-5):
        sim = early_exit(record, q)
        engine = EarlyExitEngine(sdn, q)
        for batch_size in (1, 8):
            res = engine.classify(x, batch_size=batch_size, normalized=True)
            assert res.exits.tolist() == sim.exits.tolist(), (arch, q, batch_size)
            assert res.predictions.tolist() == sim.predictions.tolist(), (arch, q, batch_size)


@pytest.mark.parametrize("arch", list_archs())
def test_inference_heads_equal_training_heads(arch):
    torch.manual_seed(0)
    sdn = build_sdn(arch, 10, 32).eval()
    feats = sdn.cnn.features(torch.randn(3, 3, 32, 32))
    with torch.no_grad():
        for p, head in zip(sdn.positions, sdn.heads):
            ref = head(feats[p])
            assert torch.allclose(_inference_head(head)(feats[p]), ref, rtol=1e-4, atol=1e-5 * ref.abs().max().item())


def test_folding_leaves_the_model_untouched(random_sdn):
    before = {k: v.clone() for k, v in random_sdn.state_dict().items()}
    EarlyExitEngine(random_sdn, 0.5)
    assert all(torch.equal(before[k], v) for k, v in random_sdn.state_dict().items())


def test_from_run_uses_the_calibrated_threshold(copy_run, tmp_path, digits):
    from shallowdeep.workflows import analyze_run

    run = copy_run("ic")  # analyze writes records and calibration.json into the run
    with pytest.raises(UserError, match="no calibrated threshold"):
        engine_from_run(run)
    analyze_run(run, tmp_path / "rep", thresholds="per_ic")
    cal = io.read_json(run / "calibration.json")
    eng = engine_from_run(run)
    # per-IC thresholds: what the report says the engine uses, and what the test point measured
    assert len(cal["thresholds"]) == 4 and eng.thresholds == cal["thresholds"] and eng.fallback == cal["fallback"]
    report = io.read_json(tmp_path / "rep" / "report.json")
    assert report["early_exit"]["engine"]["calibration"]["thresholds"] == cal["thresholds"]
    assert report["early_exit"]["per_ic"]["thresholds"] == cal["thresholds"]
    # the engine, run on the test split, exits where the calibration's test point says
    res = eng.classify(images(digits), batch_size=64, normalized=True)
    assert np.bincount(res.exits.numpy(), minlength=5).tolist() == cal["test"]["exit_counts"]
    assert engine_from_run(run, threshold=0.3).thresholds == [0.3] * 4
    analyze_run(run, tmp_path / "rep", thresholds="single")  # the paper's: one threshold for every IC
    cal = io.read_json(run / "calibration.json")
    assert "thresholds" not in cal and engine_from_run(run).thresholds == [cal["threshold"]] * 4
    analyze_run(run, tmp_path / "rep")  # auto: the validation split's cross-validation decides, and says so
    cal = io.read_json(run / "calibration.json")
    cv = cal["cross_validation"]
    assert cv["folds"] == 5 and ("thresholds" in cal) == cv["per_ic_wins"]


def test_predict_command(trained_sdn, tmp_path, digits, capsys):
    import json

    from PIL import Image

    from shallowdeep.cli import main

    _, run = trained_sdn
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(4):
        Image.fromarray(digits.test.images[i].numpy()).save(folder / f"{i}.png")
    Image.fromarray(digits.test.images[0].numpy()).resize((20, 20)).save(tmp_path / "small.png")
    assert main(["predict", str(run), str(folder), "--threshold", "0.5", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 4 and {"class_index", "class", "exit", "confidence", "relative_cost"} <= rows[0].keys()
    # the same answers as the engine on the same (normalised) images
    eng = EarlyExitEngine(shallowdeep_load(run), 0.5)
    res = eng.classify(images(digits, limit=4), batch_size=1, normalized=True)
    assert [r["class_index"] for r in rows] == res.predictions.tolist() and [
        r["exit"] for r in rows
    ] == res.exits.tolist()
    assert main(["predict", str(run), str(folder / "0.png"), "--threshold", "0.5"]) == 0
    assert "rel. cost" in capsys.readouterr().out
    assert main(["predict", str(run), str(tmp_path / "small.png"), "--threshold", "0.5"]) == 2
    assert "is 20x20 px" in capsys.readouterr().err
    assert main(["predict", str(run), str(tmp_path / "small.png"), "--threshold", "0.5", "--resize"]) == 0
    capsys.readouterr()
    assert main(["predict", str(run), str(tmp_path / "nothing-here")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_predict_reports_who_answered_and_the_true_class(trained_sdn, tmp_path, digits, capsys):
    import json

    from PIL import Image

    from shallowdeep.cli import main

    _, run = trained_sdn
    classes = json.loads((run / "run.json").read_text())["data"]["classes"]
    for i in range(30):  # class folders named as the run's classes: the true label is known
        d = tmp_path / "imgs" / classes[int(digits.test.labels[i])]
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(digits.test.images[i].numpy()).save(d / f"{i}.png")
    (tmp_path / "imgs" / "unsorted").mkdir()
    Image.fromarray(digits.test.images[0].numpy()).save(tmp_path / "imgs" / "unsorted" / "x.png")
    out = {}
    for bs in ("1", "7"):
        assert (
            main(["predict", str(run), str(tmp_path / "imgs"), "--threshold", "0.9", "--batch-size", bs, "--json"]) == 0
        )
        out[bs] = json.loads(capsys.readouterr().out)
    strip = lambda rows: [{k: v for k, v in r.items() if k != "confidence"} for r in rows]  # noqa: E731
    assert strip(out["1"]) == strip(out["7"]), "batch 1 and the throughput engine give the same answers"
    assert np.allclose([r["confidence"] for r in out["1"]], [r["confidence"] for r in out["7"]], atol=1e-5)
    rows = out["7"]
    labelled = [r for r in rows if "true_class" in r]
    assert len(labelled) == 30 and not any("true_class" in r for r in rows if "unsorted" in r["file"])
    for r in labelled:
        assert r["correct"] == (r["class"] == r["true_class"])
    last = len(json.loads((run / "run.json").read_text())["model"]["ic_positions"])
    for r in rows:
        if r["exit"] < last:
            assert r["answered_by"] == f"IC {r['exit'] + 1}"
        else:
            assert r["answered_by"] in ("final", f"IC {r['answered_output'] + 1} (fallback)")
    assert main(["predict", str(run), str(tmp_path / "imgs"), "--threshold", "0.9"]) == 0
    assert "accuracy" in capsys.readouterr().out


def shallowdeep_load(run):
    import shallowdeep

    return shallowdeep.load(run)


@pytest.mark.parametrize(
    "rule_text,temperature",
    [
        ("max_softmax", False),
        ("max_softmax", True),
        ("entropy", False),
        ("entropy", True),
        ("patience:1", False),
        ("patience:2", False),
        ("patience:2", True),
        ("patience:3", False),
        ("ztw", False),
        ("entropy+E", False),
        ("patience:2+E", False),
    ],
)
@pytest.mark.parametrize("which", ["random", "trained"])
def test_every_exit_rule_runs_as_simulated(rule_text, temperature, which, random_sdn, trained_sdn, digits):
    """The engine carries out each rule for real (temperatures folded into the heads, ZTW's ensemble
    carried between stages); its exits and answers equal the record simulation of analysis.rules,
    batch 1 and batched."""
    from shallowdeep import output_costs
    from shallowdeep.analysis.ensemble import ensembled, fit_ensemble
    from shallowdeep.analysis.rules import (
        fit_temperatures,
        rule_exits,
        rule_scores,
        rule_thresholds,
        scaled,
    )

    sdn = random_sdn if which == "random" else trained_sdn[0]
    x = images(digits, limit=120)
    with torch.no_grad():
        logits = torch.stack(sdn(x), dim=1)
    costs = output_costs(sdn)
    record = ExitRecord.from_arrays(logits, digits.test.labels[:120], costs.outputs, costs.cnn)
    from shallowdeep.core.exit_rule import ExitRule

    rule = ExitRule.parse(rule_text, temperature)
    temps = fit_temperatures(collect(sdn, digits, "val")) if temperature else None
    ens = fit_ensemble(collect(sdn, digits, "val")) if rule.ensembled else None
    r = scaled(record, temps) if temps is not None else record
    r = ensembled(r, ens) if ens is not None else r
    fixed = rule_thresholds(r, rule)
    if fixed is not None:
        qs = [float(fixed[0])]
    else:  # thresholds spread over the rule's scores, away from every score (rounding cannot flip them)
        sc = np.sort(rule_scores(r, rule).ravel())
        qs = []
        for frac in (0.3, 0.5, 0.7, 0.85, 0.95):
            i = int(frac * (len(sc) - 1))
            while i + 1 < len(sc) and sc[i + 1] - sc[i] < 2e-5 * sc[i] + 2e-7:  # relative + absolute margin
                i += 1
            if i + 1 < len(sc) and len(qs) < 2:
                qs.append(float((sc[i] + sc[i + 1]) / 2))
    assert qs
    for q in qs:
        sim = rule_exits(record, rule, q, "most_confident", temps, ens)
        temperatures = None if temps is None else temps.tolist()
        eng = EarlyExitEngine(sdn, rule.calibrated(q, temperatures, "most_confident", ens))
        for batch_size in (1, 64):
            res = eng.classify(x, batch_size=batch_size, normalized=True)
            assert res.exits.tolist() == sim.exits.tolist(), (rule_text, q, batch_size)
            assert res.predictions.tolist() == sim.predictions.tolist(), (rule_text, q, batch_size)


def test_analyze_rule_choice_reaches_the_engine(copy_run):
    from shallowdeep.workflows import analyze_run

    run = copy_run("ic")
    analyze_run(run, rules=["max_softmax", "patience:2"], rule="entropy+T", thresholds="per_ic")
    cal = io.read_json(run / "calibration.json")
    rule = cal["exit_rule"]
    assert (rule["name"], rule["k"], rule["temperature"], len(rule["temperatures"])) == ("entropy", 0, True, 5)
    assert rule["thresholds"] == cal["thresholds"] and rule["fallback"] == cal["fallback"]
    report = io.read_json(run / "report" / "report.json")
    assert [r["label"] for r in report["rules"]["results"]] == ["max_softmax", "patience:2", "entropy+T"]
    chosen = report["rules"]["results"][-1]["calibration"]
    eng = engine_from_run(run)
    assert (eng.rule.name, eng.temperatures) == ("entropy", rule["temperatures"])
    assert cal["threshold"] == chosen["threshold"]
    assert eng.thresholds == cal["thresholds"]  # per IC, refined from the rule's own single threshold


# --------------------------------------------------------------------------------------------------
# the throughput engine (re-batching queues)


def _odd_batches(x, sizes=(7, 30, 1, 50, 13, 3)):
    out, i = [], 0
    while i < len(x):
        for s in sizes:
            if i < len(x):
                out.append(x[i : i + s])
                i += s
    return out


@pytest.mark.parametrize("rule,patience", [("max_softmax", 0), ("entropy", 0), ("patience", 2)])
@pytest.mark.parametrize("buckets", [False, True])
def test_stream_equals_batch_one_in_order_whatever_the_batches(trained_sdn, digits, rule, patience, buckets):
    sdn, _ = trained_sdn
    x = images(digits, limit=240)
    record = collect(sdn, digits, "test")
    q = safe_thresholds(record, 3)[1] if rule != "patience" else patience / len(sdn.positions)
    eng = EarlyExitEngine(sdn, ExitRule(rule, patience, thresholds=(q,)))
    parts = list(eng.stream(_odd_batches(x), batch_size=16, buckets=buckets, normalized=True))
    got = torch.cat([p.exits for p in parts]), torch.cat([p.predictions for p in parts])
    one = eng.classify(x, batch_size=1, normalized=True)
    assert torch.equal(got[0], one.exits) and torch.equal(got[1], one.predictions)
    assert torch.equal(torch.cat([p.answered for p in parts]), one.answered)
    assert len(set(one.exits.tolist())) > 1


def test_every_stage_runs_full_batches_and_queues_stay_bounded(trained_sdn, digits, monkeypatch):
    sdn, _ = trained_sdn
    x = images(digits, limit=300)
    q = safe_thresholds(collect(sdn, digits, "test"), 3)[1]
    eng = EarlyExitEngine(sdn, q)
    seen: list[tuple[int, int, int]] = []
    real = EarlyExitEngine._run_stage

    def spy(self, k, rows, queues, out, pad):
        seen.append((k, len(rows), max(sum(map(len, qq)) for qq in queues)))
        return real(self, k, rows, queues, out, pad)

    monkeypatch.setattr(EarlyExitEngine, "_run_stage", spy)
    res = eng.classify(x, batch_size=32, normalized=True)
    exits = res.exits.numpy()
    for k in range(eng.num_outputs):
        runs = [n for kk, n, _ in seen if kk == k]
        reached = int((exits >= k).sum())
        assert sum(runs) == reached, "each stage computes exactly the inputs that reach it"
        assert all(n == 32 for n in runs[:-1]) and all(n <= 32 for n in runs), "full batches but the last"
    assert max(qmax for _, _, qmax in seen) < 2 * 32, "no queue holds two batches"


def test_stream_hands_results_back_before_the_stream_ends(random_sdn):
    eng = EarlyExitEngine(random_sdn, 0.0)  # everyone leaves at IC 1
    consumed = []

    def source():
        for i in range(10):
            consumed.append(i)
            yield torch.randn(8, 3, 32, 32)

    first = next(iter(eng.stream(source(), batch_size=8, normalized=True)))
    assert len(first) == 8 and len(consumed) < 10


def test_buckets_pad_partial_batches_to_few_shapes(random_sdn, monkeypatch):
    from shallowdeep.inference import engine as engine_mod

    assert engine_mod._buckets(256) == [8, 16, 32, 64, 128, 256] and engine_mod._buckets(5) == [5]
    shapes = set()
    eng = EarlyExitEngine(random_sdn, 0.3)
    real = eng._stage_fns[0]

    def first_stage(h):
        shapes.add(len(h))
        return real(h)

    eng._stage_fns[0] = first_stage
    x = torch.randn(45, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    padded = eng.classify(x, batch_size=32, normalized=True)  # a full 32, then 13 left: padded to 16
    assert shapes <= {32, 16} or not eng.device.type == "cuda"
    on = torch.cat([r.exits for r in eng.stream([x], 32, buckets=True, normalized=True)])
    assert torch.equal(on, padded.exits)
    assert 16 in shapes, "the partial batch ran at a bucket size"


def test_answered_names_the_ic_the_fallback_picked(trained_sdn, digits):
    sdn, _ = trained_sdn
    x = images(digits, limit=200)
    eng = EarlyExitEngine(sdn, 2.0)  # nobody exits: the fallback answers
    res = eng.classify(x, batch_size=16, normalized=True)
    with torch.no_grad():
        outs = torch.stack(sdn(x), 1)
    picked = outs[torch.arange(len(x)), res.answered].argmax(1)
    assert torch.equal(picked, res.predictions)
    assert res.exits.eq(sdn.num_outputs - 1).all()
    assert (res.answered < sdn.num_outputs - 1).any() and res.answered.eq(sdn.num_outputs - 1).any()
    assert torch.equal(eng.classify(x, batch_size=1, normalized=True).answered, res.answered)


def test_stream_takes_a_splits_batches(trained_sdn, digits):
    sdn, _ = trained_sdn
    q = safe_thresholds(collect(sdn, digits, "test"), 3)[1]
    eng = EarlyExitEngine(sdn, q)
    from_split = torch.cat([r.exits for r in eng.stream(batches(digits, "test", 50), batch_size=64, normalized=True)])
    assert torch.equal(from_split, eng.classify(images(digits), batch_size=64, normalized=True).exits)


def test_compiled_stages_give_the_same_exits(trained_sdn, digits):
    """torch.compile per stage at fixed (bucketed) shapes: on CUDA that is one CUDA graph per stage and
    bucket (reduce-overhead); here, on the CPU, inductor: the answers must not change."""
    sdn, _ = trained_sdn
    x = images(digits, limit=100)
    q = safe_thresholds(collect(sdn, digits, "test"), 3, margin=1e-3)[1]
    eager = EarlyExitEngine(sdn, q).classify(x, batch_size=32, normalized=True)
    compiled = EarlyExitEngine(sdn, q, compile=True)
    res = compiled.classify(x, batch_size=32, normalized=True)  # buckets on by default when compiled: 32, then 4 -> 8
    assert torch.equal(res.exits, eager.exits) and torch.equal(res.predictions, eager.predictions)
    assert torch.equal(compiled.classify(x[:4], batch_size=1, normalized=True).exits, eager.exits[:4])
    assert len(set(eager.exits.tolist())) > 1


def test_bf16_inference_keeps_most_answers(trained_sdn, digits):
    sdn, _ = trained_sdn
    x = images(digits, limit=200)
    q = safe_thresholds(collect(sdn, digits, "test"), 3)[1]
    fp32 = EarlyExitEngine(sdn, q).classify(x, batch_size=64, normalized=True)
    bf16 = EarlyExitEngine(sdn, q, precision="bf16").classify(x, batch_size=64, normalized=True)
    assert bf16.confidence.dtype == torch.float64  # decisions stay in full precision on the CPU
    assert (bf16.predictions == fp32.predictions).float().mean() > 0.9
    assert (bf16.exits == fp32.exits).float().mean() > 0.8
    with pytest.raises(UserError, match="precision"):
        EarlyExitEngine(sdn, q, precision="fp8")


@pytest.mark.parametrize("rule,patience", [("max_softmax", 0), ("entropy", 0), ("patience", 2)])
@pytest.mark.parametrize("fallback", ["most_confident", "final"])
def test_pipelined_batch_one_decides_like_the_sequential_path(trained_sdn, digits, rule, patience, fallback):
    """Batch 1 run one stage ahead (the default on CUDA; forced here on the CPU): the next stage is
    queued before the decision of this one, computed on the device, is read. Same answers."""
    sdn, _ = trained_sdn
    x = images(digits, limit=60)
    seq = EarlyExitEngine(sdn, ExitRule(rule, patience, thresholds=(0.0,), fallback=fallback), pipelined=False)
    assert not seq.pipelined and EarlyExitEngine(sdn, 0.5).pipelined is False  # off on the CPU by default
    if rule == "patience":
        qs = [2 / 4]
    else:
        scores = seq.ic_confidences(x, normalized=True).numpy() if rule == "max_softmax" else None
        qs = [float(np.quantile(scores, 0.6))] if scores is not None else [0.05, 0.15, 0.3]
    for q in qs:
        calibrated = ExitRule(rule, patience, thresholds=(q,), fallback=fallback)
        a = EarlyExitEngine(sdn, calibrated, pipelined=False).classify(x, batch_size=1, normalized=True)
        b = EarlyExitEngine(sdn, calibrated, pipelined=True).classify(x, batch_size=1, normalized=True)
        assert torch.equal(a.exits, b.exits) and torch.equal(a.predictions, b.predictions)
        assert torch.equal(a.answered, b.answered) and torch.allclose(a.confidence, b.confidence, atol=1e-12)
        assert len(set(a.exits.tolist())) > 1, "the thresholds should spread the exits"


def test_one_image_convention_at_every_entry_point(trained_sdn, digits, tmp_path):
    """uint8 RGB images (a tensor, a numpy array, files) are normalised with the run's statistics,
    as predict and the deploy runtime take them; a float tensor only when the caller says it is
    normalised (unnormalised [0, 1] floats went through silently: 15.5 % where predict gave 37.5 %)."""
    from PIL import Image

    from shallowdeep.runs import RunFolder

    sdn, run = trained_sdn
    stats = RunFolder(run).meta().data  # what engine_from_run gives it (test_deploy runs that path)
    engine = EarlyExitEngine(sdn, 0.5, mean=stats.mean, std=stats.std)
    raw = digits.test.images[:40]  # uint8 [N, H, W, 3]
    want = engine.classify(images(digits, limit=40), normalized=True)
    for given in (raw, raw.numpy()):
        got = engine.classify(given)
        assert torch.equal(got.exits, want.exits) and torch.equal(got.predictions, want.predictions)
    for i in range(3):
        Image.fromarray(raw[i].numpy()).save(tmp_path / f"{i}.png")
    from_files = engine.classify(sorted(tmp_path.glob("*.png")))
    assert torch.equal(from_files.predictions, want.predictions[:3])
    assert torch.equal(engine.classify(str(tmp_path), batch_size=1).exits, want.exits[:3])  # a folder
    assert engine.classify_one(raw[0])[:2] == (int(want.predictions[0]), int(want.exits[0]))
    streamed = torch.cat([r.exits for r in engine.stream([raw[:25], raw[25:].numpy()], batch_size=16)])
    assert torch.equal(streamed, want.exits)
    # (the same numbers up to rounding: the split's batches keep NHWC memory, the engine's normalised copy NCHW)
    same = engine.ic_confidences(images(digits, limit=40), normalized=True)
    assert torch.allclose(engine.ic_confidences(raw), same, atol=1e-6)
    refused = [
        (lambda: engine.classify(raw.float() / 255), "normalized=True"),  # [0, 1] floats, unnormalised
        (lambda: engine.classify(raw, normalized=True), "uint8 images are not normalised"),
        (lambda: engine.classify(raw.permute(0, 3, 1, 2).contiguous()), r"RGB \[N, H, W, 3\]"),
        (lambda: engine.classify(raw.int()), "normalized=True"),
        (lambda: engine.classify([1, 2]), "image paths"),
        (lambda: EarlyExitEngine(engine.sdn, 0.5).classify(raw), "give mean and std"),
        (lambda: EarlyExitEngine(engine.sdn, 0.5, mean=(0.5, 0.5), std=(1, 1, 1)), "three finite numbers"),
        (lambda: EarlyExitEngine(engine.sdn, 0.5, mean=(0.5,) * 3, std=(0, 1, 1)), "std > 0"),
    ]
    for call, message in refused:
        with pytest.raises(UserError, match=message) as e:
            call()
        assert "\n" not in str(e.value)
