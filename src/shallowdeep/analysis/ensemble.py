"""Zero Time Waste's geometric ensemble fitted on a validation record (Wołczyk et al., NeurIPS 2021).

Output ``m`` answers with ``softmax(sum_{j<=m} a_mj * log p_j + b_m)``: the outputs so far multiplied,
each raised to a weight ``a_mj >= 0``, with class biases ``b_m``. The weights and biases of each output
are fitted by maximum likelihood on the validation record (never the test record), with a small ridge
``RIDGE / 2 * |theta|^2`` that keeps them finite where the validation inputs are separable. The
objective is convex in ``(a, b)`` (the logits are linear in them), so projected Newton steps with a
line search find its minimum; the fit starts at the plain output (``a_mm = 1``, the rest 0), so it
is never worse on validation than the output alone. The runtimes carry the fitted
:class:`~shallowdeep.core.exit_rule.GeometricEnsemble` out; :func:`ensembled` is the record the
rules then run on.
"""

from __future__ import annotations

import numpy as np

from ..core.exit_rule import GeometricEnsemble, log_softmax
from .record import ExitRecord

RIDGE = 1e-4


def _design(logps: np.ndarray, m: int) -> np.ndarray:
    """``[N, C, P]``: the logits of output m are ``X @ theta`` for ``theta = (a_0..a_m, b_1..b_{C-1})``
    (``b_0`` is fixed at 0: a shift of every class's bias changes no softmax)."""
    n, _, c = logps.shape
    x = np.zeros((n, c, m + c))
    x[:, :, : m + 1] = logps[:, : m + 1].transpose(0, 2, 1)
    x[:, np.arange(1, c), m + np.arange(1, c)] = 1.0
    return x


def penalised_nll(logps: np.ndarray, labels: np.ndarray, m: int, theta: np.ndarray) -> float:
    """The objective the fit minimises for output ``m``: mean negative log-likelihood of ``labels``
    plus the ridge (tests compare the fit with a brute-force search of it)."""
    z = _design(logps, m) @ theta
    lp = log_softmax(z)
    return float(-lp[np.arange(len(labels)), labels].mean() + RIDGE / 2 * theta @ theta)


def _fit_one(x: np.ndarray, labels: np.ndarray, k: int, iters: int = 100) -> np.ndarray:
    """Projected Newton for one output: ``x`` its design, the first ``k`` parameters kept >= 0."""
    n, c, p_count = x.shape
    onehot = np.eye(c)[labels]
    theta = np.zeros(p_count)
    theta[k - 1] = 1.0

    def value(t: np.ndarray) -> float:
        lp = log_softmax(x @ t)
        return float(-(lp * onehot).sum() / n + RIDGE / 2 * t @ t)

    f = value(theta)
    for _ in range(iters):
        z = x @ theta
        pr = np.exp(log_softmax(z))
        grad = np.einsum("ncp,nc->p", x, pr - onehot) / n + RIDGE * theta
        free = np.ones(p_count, bool)
        free[:k] = ~((theta[:k] <= 0) & (grad[:k] > 0))  # at the bound and pushing out of it: held
        if np.abs(grad[free]).max(initial=0.0) < 1e-10:
            break
        px = pr[:, :, None] * x
        hx = px - pr[:, :, None] * px.sum(1, keepdims=True)  # (diag p - p p^T) X per input
        hess = np.einsum("ncp,ncq->pq", x, hx) / n + RIDGE * np.eye(p_count)
        step = np.zeros(p_count)
        step[free] = np.linalg.solve(hess[np.ix_(free, free)], grad[free])
        t = 1.0
        while t > 1e-10:  # Armijo on the projected path
            cand = theta - t * step
            cand[:k] = np.maximum(cand[:k], 0.0)
            fc = value(cand)
            if fc <= f - 1e-4 * grad @ (theta - cand):
                break
            t /= 2
        else:
            break
        if f - fc < 1e-14:
            theta, f = cand, fc
            break
        theta, f = cand, fc
    return theta


def fit_ensemble(val: ExitRecord) -> GeometricEnsemble:
    """Every output's ensemble weights and class biases, fitted on the validation record ``val``."""
    logps = log_softmax(val.logits)
    c = val.num_classes
    weights, biases = [], []
    for m in range(val.num_outputs):
        if not val.num_inputs:  # nothing to fit: the plain outputs
            theta = np.r_[np.eye(m + 1)[m], np.zeros(c - 1)]
        else:
            theta = _fit_one(_design(logps, m), val.labels, m + 1)
        weights.append(tuple(theta[: m + 1].tolist()))
        biases.append(tuple([0.0, *theta[m + 1 :].tolist()]))
    return GeometricEnsemble(tuple(weights), tuple(biases))


def ensembled(record: ExitRecord, ensemble: GeometricEnsemble) -> ExitRecord:
    """The record with every output's logits replaced by its ensemble's (double precision, as the
    runtimes compute them), so every rule, sweep and calibration runs on the ensemble unchanged."""
    logps = log_softmax(record.logits)
    z = np.stack([ensemble.logits(logps, m) for m in range(record.num_outputs)], 1)
    return ExitRecord(z, record.labels, record.costs, record.cnn_cost, record.ids, dict(record.meta))
