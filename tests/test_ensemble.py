"""Zero Time Waste's geometric ensemble: the maximum-likelihood fit against a brute-force search of
its objective, and what it does to a record."""

from __future__ import annotations

import itertools

import numpy as np

from shallowdeep.analysis.ensemble import RIDGE, ensembled, fit_ensemble, penalised_nll
from shallowdeep.analysis.record import ExitRecord
from shallowdeep.core.exit_rule import log_softmax


def _record(n: int, outputs: int, classes: int, seed: int) -> ExitRecord:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    signal = np.linspace(0.3, 1.5, outputs)[None, :, None] * np.eye(classes)[y][:, None, :]
    logits = rng.normal(size=(n, outputs, classes)) + 2 * signal
    return ExitRecord.from_arrays(logits, y, np.arange(1, outputs + 1) * 1e6, outputs * 1e6)


def test_the_fit_is_the_minimum_a_brute_force_search_finds():
    rec = _record(60, 2, 3, seed=3)
    ens = fit_ensemble(rec)
    logps = log_softmax(rec.logits)
    m = 1
    fitted = np.r_[ens.weights[m], ens.biases[m][1:]]
    best = penalised_nll(logps, rec.labels, m, fitted)
    grid_a, grid_b = np.linspace(0, 3, 16), np.linspace(-1.5, 1.5, 13)
    searched = min(
        penalised_nll(logps, rec.labels, m, np.array(t)) for t in itertools.product(grid_a, grid_a, grid_b, grid_b)
    )
    assert best <= searched + 1e-9
    # and nothing near it is better: a local search around the fit finds no lower value
    rng = np.random.default_rng(0)
    for _ in range(300):
        t = fitted + rng.normal(scale=0.05, size=fitted.shape)
        t[:2] = np.maximum(t[:2], 0)
        assert penalised_nll(logps, rec.labels, m, t) >= best - 1e-12
    assert ens.biases[m][0] == 0.0 and min(ens.weights[m]) >= 0.0


def test_each_output_is_never_worse_than_alone_on_validation_and_starts_from_itself():
    rec = _record(400, 4, 5, seed=1)
    ens = fit_ensemble(rec)
    logps = log_softmax(rec.logits)
    c = rec.num_classes
    for m in range(rec.num_outputs):
        alone = np.r_[np.eye(m + 1)[m], np.zeros(c - 1)]
        fitted = np.r_[ens.weights[m], ens.biases[m][1:]]
        assert penalised_nll(logps, rec.labels, m, fitted) <= penalised_nll(logps, rec.labels, m, alone)
    assert RIDGE > 0  # the ridge keeps a separable validation set's weights finite


def test_a_useless_output_gets_little_weight_and_the_ensemble_helps_the_early_outputs():
    rng = np.random.default_rng(2)
    rec = _record(2000, 3, 4, seed=2)
    logits = rec.logits.copy()
    logits[:, 0] = rng.normal(size=logits[:, 0].shape)  # output 0 knows nothing
    rec = ExitRecord.from_arrays(logits, rec.labels, rec.costs, rec.cnn_cost)
    ens = fit_ensemble(rec.subset(np.arange(1000)))
    assert ens.weights[2][0] < 0.1 * ens.weights[2][2]
    test = rec.subset(np.arange(1000, 2000))
    assert ensembled(test, ens).accuracy()[1] >= test.accuracy()[1] - 0.01


def test_an_ensembled_record_keeps_everything_but_the_logits():
    rec = _record(50, 3, 4, seed=5)
    ens = fit_ensemble(rec)
    e = ensembled(rec, ens)
    assert e.logits.dtype == np.float64 and e.logits.shape == rec.logits.shape
    assert (e.labels == rec.labels).all() and (e.ids == rec.ids).all() and (e.costs == rec.costs).all()
    # output 2's logits: the weighted log-softmaxes of outputs 0..2 plus the class biases
    lp = log_softmax(rec.logits)
    want = sum(w * lp[:, j] for j, w in enumerate(ens.weights[2])) + np.asarray(ens.biases[2])
    assert np.allclose(e.logits[:, 2], want, rtol=0, atol=1e-12)
    empty = fit_ensemble(rec.subset(np.zeros(50, bool)))
    assert empty.weights[2] == (0.0, 0.0, 1.0)


def test_accuracy_at_fixed_costs_is_chosen_on_validation_and_read_on_test():
    from shallowdeep.analysis.early_exit import Sweep
    from shallowdeep.analysis.tradeoff import curve_area, tradeoff

    q = np.array([0.9, 0.7, 0.5, 0.3])
    counts = np.zeros((4, 2), np.int64)
    val = Sweep(q, np.array([0.90, 0.85, 0.80, 0.60]), np.array([0.95, 0.7, 0.45, 0.2]), counts)
    test = Sweep(q, np.array([0.88, 0.86, 0.70, 0.65]), np.array([0.9, 0.72, 0.5, 0.22]), counts)
    t = tradeoff(val, test, (0.1, 0.25, 0.5, 0.75, 1.0))
    assert [p.threshold for p in t.points] == [None, 0.3, 0.5, 0.7, 0.9]
    # test figures of the validation's choice, even where another threshold did better on test
    assert [p.test_accuracy for p in t.points] == [None, 0.65, 0.70, 0.86, 0.88]
    assert t.points[2].test_cost == 0.5
    # the area: 0 below cost 0.22, then the running best test accuracy up to cost 1
    want = 0.65 * (0.5 - 0.22) + 0.70 * (0.72 - 0.5) + 0.86 * (0.9 - 0.72) + 0.88 * (1 - 0.9)
    assert abs(t.auc - want) < 1e-12 and abs(curve_area(test) - want) < 1e-12
