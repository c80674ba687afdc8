"""Records and analyses against hand-worked records and brute-force loops."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from shallowdeep.analysis import (
    Calibration,
    ExitRecord,
    calibrate,
    confusion,
    default_thresholds,
    early_exit,
    overthinking,
    sweep,
)
from shallowdeep.analysis.early_exit import REFERENCE_THRESHOLDS, reference_protocol
from shallowdeep.core.errors import UserError
from shallowdeep.inference.collect import collect
from shallowdeep.models.sdn import build_sdn


def onehotish(preds, confs, classes=3):
    """Logits whose softmax has maximum ``conf`` at ``pred`` (rest spread evenly)."""
    preds, confs = np.asarray(preds), np.asarray(confs, dtype=np.float64)
    rest = (1 - confs) / (classes - 1)
    p = np.repeat(rest[..., None], classes, axis=-1)
    np.put_along_axis(p, preds[..., None], confs[..., None], axis=-1)
    return np.log(p)


# three inputs, three outputs (2 ICs + final), true labels 0 1 2
PREDS = [[0, 0, 0], [0, 1, 1], [2, 2, 0]]
CONFS = [[0.9, 0.8, 0.95], [0.5, 0.7, 0.9], [0.6, 0.6, 0.99]]
COSTS = [2.0, 5.0, 11.0]  # cumulative; the CNN costs 10 (the final output pays 1 for the ICs)


@pytest.fixture
def hand():
    return ExitRecord.from_arrays(onehotish(PREDS, CONFS), [0, 1, 2], COSTS, 10.0)


def test_hand_worked_overthinking(hand):
    o = overthinking(hand)
    assert o.correct == [2, 3, 2] and o.cumulative_correct == [2, 3, 3] and o.newly_correct == [2, 1, 0]
    assert o.early_count == 3 and o.early_share == 1.0
    # input 0 first right at IC 1 (0.2), input 1 at IC 2 (0.5), input 2 at IC 1 (0.2)
    assert o.oracle_relative_cost == pytest.approx((0.2 + 0.5 + 0.2) / 3)
    d = o
    assert o.final_errors == 1 and d.destructive_union_count == 1 and d.destructive_union_share_of_final_errors == 1.0
    assert [x.count for x in d.destructive_per_ic] == [1, 1]
    assert d.destructive_per_ic[0].mean_confidence_destructive == pytest.approx(0.6)
    assert d.destructive_per_ic[0].mean_confidence_correct == pytest.approx(0.75)
    assert o.examples_first_correct == [[0, 2], [1], []] and o.examples_only_first == []


def test_hand_worked_early_exit_with_ties_at_the_threshold(hand):
    # q = 0.6: input 0 exits at IC 1 (0.9), input 1 at IC 2 (0.7), input 2 at IC 1 (0.6 >= 0.6: a tie exits).
    # The tie is taken at input 2's stored confidence itself (0.6 after float32 rounding).
    q = float(hand.confidence[2, 0])
    assert q == pytest.approx(0.6)
    e = early_exit(hand, q)
    assert e.exits.tolist() == [0, 1, 0] and e.exit_counts == [2, 1, 0]
    assert e.predictions.tolist() == [0, 1, 2] and e.accuracy == 1.0
    assert e.relative_cost == pytest.approx((2 + 5 + 2) / 3 / 10)
    assert early_exit(hand, np.nextafter(q, 1)).exits.tolist() == [0, 1, 2]  # just above: no exit for input 2
    # q = 0.95: nobody exits; most confident output: input0 final(0.95)->0, input1 final(0.9)->1, input2 final->0
    e = early_exit(hand, 0.95)
    assert e.exit_counts == [0, 0, 3] and e.relative_cost == pytest.approx(1.1)
    assert e.accuracy == pytest.approx(2 / 3)
    # fallback "final" differs from "most_confident" when an IC is the most confident
    e = early_exit(hand, 0.91, "final")
    assert e.predictions.tolist() == [0, 1, 0]


def test_fallback_most_confident_picks_an_ic():
    r = ExitRecord.from_arrays(onehotish([[1, 0]], [[0.8, 0.6]]), [1], [1.0, 2.0], 2.0)
    assert early_exit(r, 0.9).predictions.tolist() == [1]
    assert early_exit(r, 0.9, "final").predictions.tolist() == [0]
    with pytest.raises(UserError, match="unknown fallback"):
        early_exit(r, 0.9, "best")


def test_thresholds_zero_and_above_one(hand):
    assert early_exit(hand, 0.0).exit_counts == [3, 0, 0]
    assert early_exit(hand, 1.01).exit_counts == [0, 0, 3]


def test_all_correct_none_correct_single_output_one_class():
    k = 4
    all_right = ExitRecord.from_arrays(
        onehotish(np.zeros((5, k), int), np.full((5, k), 0.9)), np.zeros(5), [1, 2, 3, 4], 4
    )
    o = overthinking(all_right)
    assert o.final_errors == 0 and o.destructive_union_share_of_final_errors is None
    assert o.newly_correct == [5, 0, 0, 0] and o.oracle_relative_cost == pytest.approx(0.25)
    none_right = ExitRecord.from_arrays(
        onehotish(np.ones((5, k), int), np.full((5, k), 0.9)), np.zeros(5), [1, 2, 3, 4], 4
    )
    o = overthinking(none_right)
    assert o.early_count == 0 and o.never_correct == 5 and o.oracle_relative_cost == 1.0
    assert early_exit(none_right, 0.5).accuracy == 0.0
    single = ExitRecord.from_arrays(onehotish([[0], [1]], [[0.9], [0.4]]), [0, 0], [3.0], 3.0)
    e = early_exit(single, 0.5)
    assert e.exit_counts == [2] and e.accuracy == 0.5 and e.relative_cost == 1.0
    assert overthinking(single).early_count == 0
    one_class = ExitRecord.from_arrays(np.zeros((4, 3, 1)), np.zeros(4), [1, 2, 3], 3)
    assert early_exit(one_class, 0.99).exit_counts == [4, 0, 0]
    c = confusion(one_class)
    assert c.confusion.auroc is None and c.num_wrong == 0


def test_empty_record():
    r = ExitRecord.from_arrays(np.zeros((0, 3, 5)), np.zeros(0), [1, 2, 3], 3)
    assert early_exit(r, 0.5).exit_counts == [0, 0, 0]
    assert overthinking(r).num_inputs == 0


def random_record(seed, n=300, k=5, c=7, scale=2.0):
    rng = np.random.default_rng(seed)
    return ExitRecord.from_arrays(
        rng.normal(size=(n, k, c)) * scale, rng.integers(0, c, n), np.cumsum(rng.uniform(1, 3, k)), 10.0
    )


def brute_early_exit(r: ExitRecord, q: float, fallback: str):
    correct, cost, counts = 0, 0.0, [0] * r.num_outputs
    for n in range(r.num_inputs):
        p = r.probs[n]  # the decision logic is under test here; the softmax has its own test
        exit_at = None
        for i in range(r.num_outputs - 1):
            if p[i].max() >= q:
                exit_at = i
                break
        if exit_at is None:
            exit_at = r.num_outputs - 1
            src = int(np.argmax(p.max(-1))) if fallback == "most_confident" else r.num_outputs - 1
            pred = int(np.argmax(p[src]))
        else:
            pred = int(np.argmax(p[exit_at]))
        counts[exit_at] += 1
        cost += r.costs[exit_at]
        correct += pred == r.labels[n]
    return correct / r.num_inputs, cost / r.num_inputs / r.cnn_cost, counts


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("fallback", ["most_confident", "final"])
def test_early_exit_and_sweep_match_brute_force(seed, fallback):
    r = random_record(seed)
    conf = r.confidence
    qs = np.concatenate([[0.0, 0.3, 0.5, 0.9, 1.0], conf[:5, 0], conf[5:8, 2]])  # exact ties included
    s = sweep(r, qs, fallback)
    for t, q in enumerate(qs):
        acc, cost, counts = brute_early_exit(r, q, fallback)
        e = early_exit(r, q, fallback)
        assert e.accuracy == pytest.approx(acc) and e.relative_cost == pytest.approx(cost)
        assert e.exit_counts == counts
        assert s.accuracy[t] == pytest.approx(acc) and s.relative_cost[t] == pytest.approx(cost)
        assert s.exit_counts[t].tolist() == counts


@pytest.mark.parametrize("seed", range(3))
def test_overthinking_matches_brute_force(seed):
    r = random_record(seed, k=4, c=3, scale=1.0)
    o = overthinking(r)
    n, k = r.num_inputs, r.num_outputs
    right = r.logits.argmax(-1) == r.labels[:, None]
    cum = [sum(any(right[i, : j + 1]) for i in range(n)) for j in range(k)]
    assert o.cumulative_correct == cum
    destructive = [sum(right[i, j] and not right[i, -1] for i in range(n)) for j in range(k - 1)]
    assert [d.count for d in o.destructive_per_ic] == destructive
    union = sum(any(right[i, :-1]) and not right[i, -1] for i in range(n))
    assert o.destructive_union_count == union
    oracle = []
    for i in range(n):
        first = next((j for j in range(k) if right[i, j]), None)
        oracle.append(r.relative_costs[first] if first is not None and first < k - 1 else 1.0)
    assert o.oracle_relative_cost == pytest.approx(np.mean(oracle))


def test_record_softmax_and_derived_arrays():
    r = random_record(0, n=50)
    expect = torch.softmax(torch.from_numpy(r.logits).double(), dim=-1).numpy()
    assert r.probs.dtype == np.float64 and np.allclose(r.probs, expect, rtol=1e-12, atol=1e-15)
    assert np.array_equal(r.preds, r.logits.argmax(-1)) and np.allclose(r.confidence, expect.max(-1))
    assert np.array_equal(r.correct, r.logits.argmax(-1) == r.labels[:, None])


def test_sweep_has_a_thousand_thresholds_including_the_reference_ones():
    s = sweep(random_record(0))
    assert len(s.thresholds) >= 1000
    assert all(np.isclose(s.thresholds, q).any() for q in REFERENCE_THRESHOLDS)


def test_calibration_picks_on_validation_only():
    val, test = random_record(1, n=400), random_record(2, n=400)
    c = calibrate(val, test, max_drop=0.02)
    s = sweep(val)
    ok = s.accuracy >= val.accuracy()[-1] - 0.02 - 1e-12
    assert c.val.relative_cost == pytest.approx(s.relative_cost[ok].min())
    t = early_exit(test, c.threshold)
    assert c.test.accuracy == t.accuracy and c.test.relative_cost == t.relative_cost
    # the choice does not depend on the test record at all
    assert calibrate(val, random_record(3, n=400), max_drop=0.02).threshold == c.threshold
    b = calibrate(val, test, budget=0.6)
    assert b.val.relative_cost <= 0.6 + 1e-12
    assert b.val.accuracy == pytest.approx(s.accuracy[s.relative_cost <= 0.6 + 1e-12].max())
    with pytest.raises(UserError, match="no threshold keeps the cost"):
        calibrate(val, test, budget=0.01)


def learned_record(seed, n=600, k=5, c=10):
    """A record shaped like a trained SDN's: later outputs more accurate, confidence tracks correctness."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, c, n)
    logits = rng.normal(size=(n, k, c)) * 1.5
    ease = rng.uniform(0.3, 1.5, n)
    for j in range(k):
        logits[np.arange(n), j, y] += (0.8 + 0.5 * j) * ease * rng.uniform(0.5, 1.5, n)
    costs = np.cumsum(np.linspace(1, 2, k))
    return ExitRecord.from_arrays(logits, y, costs, costs[-1] * 0.95)


def test_early_exit_with_per_ic_thresholds_matches_a_plain_loop():
    r = random_record(0)
    qs = [0.5, 0.9, 0.3, 0.7]
    e = early_exit(r, qs)
    for n in range(r.num_inputs):
        first = next((i for i in range(4) if r.confidence[n, i] >= qs[i]), 4)
        assert e.exits[n] == first
        if first < 4:
            assert e.predictions[n] == r.preds[n, first]
    assert early_exit(r, [0.6] * 4).exit_counts == early_exit(r, 0.6).exit_counts
    with pytest.raises(UserError, match="3 per-IC thresholds for 4 ICs"):
        early_exit(r, [0.5] * 3)


@pytest.mark.parametrize("seed", range(3))
def test_per_ic_thresholds_feasible_never_worse_and_locally_optimal(seed):
    val, test = learned_record(seed), learned_record(seed + 10)
    single = calibrate(val, test, max_drop=0.01)
    per = calibrate(val, test, max_drop=0.01, per_ic=True)
    assert per.threshold == single.threshold and len(per.thresholds) == 4
    # what the calibration reports is what early exits at those thresholds give, on both splits
    for p, r in ((per.val, val), (per.test, test)):
        e = early_exit(r, per.thresholds)
        assert (p.accuracy, p.relative_cost, p.exit_counts) == (e.accuracy, e.relative_cost, e.exit_counts)
    floor = val.accuracy()[-1] - 0.01 - 1e-12
    assert per.val.accuracy >= floor and per.val.relative_cost <= single.val.relative_cost + 1e-12
    # no single IC's threshold can move to a feasible point that is cheaper (a local optimum)
    grid = default_thresholds()
    for k in range(4):
        for t in grid[::7]:
            q = list(per.thresholds)
            q[k] = float(t)
            e = early_exit(val, q)
            if e.accuracy >= floor:
                assert e.relative_cost >= per.val.relative_cost - 1e-12, (k, t)
    # the choice does not look at the test record
    assert calibrate(val, learned_record(99), max_drop=0.01, per_ic=True).thresholds == per.thresholds


def test_per_ic_thresholds_gain_where_ics_differ():
    # ICs that differ in how much their confidence is worth: one threshold cannot suit them all
    val = learned_record(5, n=2000)
    single = calibrate(val, None, max_drop=0.01)
    per = calibrate(val, None, max_drop=0.01, per_ic=True)
    assert per.val.relative_cost < single.val.relative_cost - 0.01
    assert len(set(per.thresholds)) > 1


def test_per_ic_with_one_ic_is_the_single_threshold_and_budget_holds():
    r = learned_record(1, k=2)
    single, per = calibrate(r, None, max_drop=0.02), calibrate(r, None, max_drop=0.02, per_ic=True)
    assert (per.val.accuracy, per.val.relative_cost) == (single.val.accuracy, single.val.relative_cost)
    val = learned_record(2)
    sb, pb = calibrate(val, None, budget=0.55), calibrate(val, None, budget=0.55, per_ic=True)
    assert pb.val.relative_cost <= 0.55 + 1e-12 and pb.val.accuracy >= sb.val.accuracy


def test_calibration_json_keeps_per_ic_thresholds():
    val = learned_record(3)
    per = calibrate(val, val, per_ic=True)
    back = Calibration.from_json(json.loads(json.dumps(per.to_json())))
    assert back == per and back.exit_thresholds == per.thresholds
    single = calibrate(val, val)
    assert Calibration.from_json(single.to_json()).exit_thresholds == single.threshold
    bad = per.to_json() | {"thresholds": [0.5, 2.0, 0.1, 0.1]}
    with pytest.raises(UserError, match="outside"):
        Calibration.from_json(bad)


def test_reference_protocol_is_labelled_and_uses_eleven_thresholds():
    ref = reference_protocol(random_record(4))
    assert "test set" in ref.label and [r["threshold"] for r in ref.rows] == list(REFERENCE_THRESHOLDS)


def test_confusion_hand_worked_and_normalised():
    # two outputs; input 0: IC and final agree; input 1: they disagree completely
    logits = np.log(np.array([[[0.9, 0.1], [0.9, 0.1]], [[0.1, 0.9], [0.9, 0.1]]]))
    r = ExitRecord.from_arrays(logits, [0, 1], [1.0, 2.0], 2.0)
    c = confusion(r, stats=(0.0, 1.0))
    assert c.scores.tolist() == pytest.approx([0.0, 1.6])
    assert c.num_wrong == 1 and c.confusion.auroc == 1.0
    c2 = confusion(r, stats=(0.8, 0.4))
    assert c2.scores.tolist() == pytest.approx([-2.0, 2.0])
    c3 = confusion(r, stats=r)  # statistics from a "training" record
    assert c3.normalisation["mean"] == pytest.approx(0.8)
    assert sum(c.confusion.histogram.correct) == 1 and sum(c.confusion.histogram.wrong) == 1


def test_confusion_auroc_and_counts_match_brute_force():
    r = random_record(5, n=200, k=4, c=3, scale=1.5)
    c = confusion(r, stats=(0.0, 1.0))
    s, wrong = c.scores, ~r.correct[:, -1]
    pairs = [(a > b) + 0.5 * (a == b) for a in s[wrong] for b in s[~wrong]]
    assert c.confusion.auroc == pytest.approx(np.mean(pairs))
    conf = r.confidence[:, -1]
    pairs = [(a < b) + 0.5 * (a == b) for a in conf[wrong] for b in conf[~wrong]]
    assert c.confidence.auroc == pytest.approx(np.mean(pairs))
    assert c.confusion.wrong_beyond_correct_mean == int((s[wrong] > s[~wrong].mean()).sum())
    assert c.confidence.correct_beyond_wrong_mean == int((conf[~wrong] > conf[wrong].mean()).sum())


def test_record_roundtrip_and_validation(tmp_path):
    r = random_record(0, n=20)
    r.meta["split"] = "val"
    r.save(tmp_path / "r.safetensors")
    back = ExitRecord.load(tmp_path / "r.safetensors")
    assert np.array_equal(back.logits, r.logits) and np.array_equal(back.labels, r.labels)
    assert np.array_equal(back.costs, r.costs) and back.cnn_cost == r.cnn_cost and back.meta == {"split": "val"}
    t = ExitRecord.from_arrays(torch.from_numpy(r.logits), torch.from_numpy(r.labels), r.costs, 10.0)
    assert np.array_equal(t.logits, r.logits)
    with pytest.raises(UserError, match="inputs, outputs, classes"):
        ExitRecord.from_arrays(np.zeros((3, 4)), np.zeros(3), [1.0], 1.0)
    with pytest.raises(UserError, match="labels"):
        ExitRecord.from_arrays(np.zeros((3, 1, 2)), np.zeros(2), [1.0], 1.0)


def test_collect_records_every_output(digits):
    torch.manual_seed(0)
    sdn = build_sdn("small", 10, 32)
    r = collect(sdn, digits, "val")
    assert r.logits.shape == (len(digits.val), sdn.num_outputs, 10)
    assert np.array_equal(r.ids, digits.val.ids.numpy()) and np.array_equal(r.labels, digits.val.labels.numpy())
    assert r.costs[-1] > r.cnn_cost and list(r.costs) == sorted(r.costs)
    sdn.eval()
    x = torch.cat([x for x, _ in __import__("shallowdeep").data.batches(digits, "val", 512)])
    with torch.no_grad():
        assert np.allclose(r.logits[:, 2], sdn(x)[2].numpy(), atol=1e-5)


def test_reliability_and_ece_match_a_plain_loop():
    from shallowdeep.analysis import reliability

    r = random_record(5, n=300, k=4)
    bins = 10
    for rel in reliability(r, bins=bins):
        k = rel.output
        groups = [[] for _ in range(bins)]
        for i in range(r.num_inputs):
            c = float(r.confidence[i, k])
            b = min(max(int(np.ceil(c * bins)) - 1, 0), bins - 1)  # (edge_b, edge_b+1]
            groups[b].append((c, bool(r.correct[i, k])))
        ece = (
            sum(len(g) * abs(np.mean([x[1] for x in g]) - np.mean([x[0] for x in g])) for g in groups if g)
            / r.num_inputs
        )
        assert rel.counts == [len(g) for g in groups]
        assert rel.ece == pytest.approx(ece, abs=1e-9)


def test_per_class_accuracy_matches_a_plain_loop():
    from shallowdeep.analysis import per_class

    r = random_record(2, n=200, k=3)
    e = early_exit(r, 0.3)
    pc = per_class(r, e.predictions)
    for c in range(r.num_classes):
        idx = [i for i in range(r.num_inputs) if r.labels[i] == c]
        assert pc.counts[c] == len(idx)
        if idx:
            assert pc.final[c] == pytest.approx(np.mean([r.preds[i, -1] == c for i in idx]))
            assert pc.early_exit[c] == pytest.approx(np.mean([e.predictions[i] == c for i in idx]))


def test_rule_scores_match_plain_loops():
    from shallowdeep.analysis.rules import rule_scores
    from shallowdeep.core.exit_rule import ExitRule

    r = random_record(7, n=80, k=5, c=6)
    ent = rule_scores(r, ExitRule.parse("entropy"))
    pat = rule_scores(r, ExitRule.parse("patience:2"))
    for i in range(r.num_inputs):
        run, prev = 0, None
        for j in range(r.num_outputs - 1):
            p = r.probs[i, j]
            h = -sum(x * np.log(x) for x in p if x > 0)
            assert ent[i, j] == pytest.approx(1 - h / np.log(r.num_classes))
            run = run + 1 if r.preds[i, j] == prev else 1
            prev = r.preds[i, j]
            assert pat[i, j] == pytest.approx(run / (r.num_outputs - 1))


def test_patience_exits_where_k_ics_first_agree():
    from shallowdeep.analysis.rules import rule_exits
    from shallowdeep.core.exit_rule import ExitRule

    # input 0: ICs predict 1, 1, ... -> two agree at IC 2 (index 1); input 1: 0, 1, 2 -> never
    logits = np.full((2, 4, 3), -5.0, np.float32)
    for i, preds in enumerate([[1, 1, 2, 0], [0, 1, 2, 2]]):
        for j, c in enumerate(preds):
            logits[i, j, c] = 5.0
    r = ExitRecord.from_arrays(logits, [1, 2], [1.0, 2.0, 3.0, 4.0], 4.0)
    e = rule_exits(r, ExitRule.parse("patience:2"), 2 / 3, "final")
    assert e.exits.tolist() == [1, 3] and e.predictions.tolist() == [1, 2]


def test_temperatures_minimise_the_validation_nll():
    from shallowdeep.analysis.rules import _nll, fit_temperatures

    r = random_record(3, n=400, k=3, c=5, scale=4.0)
    temps = fit_temperatures(r)
    for k in range(r.num_outputs):
        grid = np.exp(np.linspace(np.log(0.05), np.log(20), 400))
        best = min(grid, key=lambda t: _nll(r.logits[:, k, :], r.labels, t))
        assert _nll(r.logits[:, k, :], r.labels, temps[k]) <= _nll(r.logits[:, k, :], r.labels, best) + 1e-6
        assert _nll(r.logits[:, k, :], r.labels, temps[k]) <= _nll(r.logits[:, k, :], r.labels, 1.0) + 1e-9


def test_bad_rules_are_refused():
    from shallowdeep.core.exit_rule import ExitRule

    for text, pattern in (
        ("softmin", "unknown exit rule"),
        ("patience", "count of agreeing ICs"),
        ("patience:0", "K >= 1"),
        ("entropy:3", "takes no ':' argument"),
    ):
        with pytest.raises(UserError, match=pattern):
            ExitRule.parse(text)
    assert ExitRule.parse("entropy+T").temperature and ExitRule.parse("patience:3").k == 3


def test_auto_per_ic_is_decided_by_cross_validation_on_validation_only():
    big = learned_record(5, n=2000)
    auto = calibrate(big, None, max_drop=0.01, per_ic="auto")
    cv = auto.cross_validation
    assert cv["per_ic_wins"] and auto.thresholds == calibrate(big, None, max_drop=0.01, per_ic=True).thresholds
    # the held-out per-IC point lies above every single threshold's point of the same (pooled) inputs
    curve = sweep(big)
    assert cv["per_ic"]["accuracy"] > curve.accuracy[curve.relative_cost <= cv["per_ic"]["relative_cost"]].max()
    # the pooled held-out figures: each fold's thresholds fitted on the other four folds
    fold = np.random.default_rng(0).permutation(2000) % 5
    right = cost = 0.0
    for f in range(5):
        c = calibrate(big.subset(fold != f), None, max_drop=0.01, per_ic=True)
        e = early_exit(big.subset(fold == f), c.thresholds)
        right, cost = right + e.accuracy * (fold == f).sum(), cost + e.relative_cost * (fold == f).sum()
    assert cv["per_ic"]["accuracy"] == pytest.approx(right / 2000) and cv["per_ic"]["relative_cost"] == pytest.approx(
        cost / 2000
    )
    small = learned_record(6, n=90)
    s = calibrate(small, None, per_ic="auto")
    assert (
        s.thresholds is None and not s.cross_validation["per_ic_wins"] and "fewer than" in s.cross_validation["reason"]
    )


def test_examples_are_spread_over_the_classes_and_reproducible():
    """The image grids and explain took the first inputs of a selection: on a split stored by class
    (CIFAR's test split), one or two classes only."""
    from shallowdeep.analysis.examples import spread_over_classes

    labels = np.repeat(np.arange(5), 20)  # stored class by class
    mask = np.ones(100, bool)
    mask[::7] = False
    got = spread_over_classes(mask, labels, 10)
    assert got == sorted(got) and len(got) == 10 and all(mask[got])
    assert np.bincount(labels[got], minlength=5).tolist() == [2] * 5
    assert got == spread_over_classes(mask, labels, 10) and got != spread_over_classes(mask, labels, 10, seed=1)
    assert spread_over_classes(labels == 3, labels, 50) == list(range(60, 80))  # fewer than asked: all of them
    assert spread_over_classes(~mask & False, labels, 5) == [] and spread_over_classes(mask, labels, 0) == []
