"""The exit record: every output's logits for every input of a split.

Every analysis in :mod:`shallowdeep.analysis` is a pure function of records, so the network runs
once per split however many questions are asked. This module needs numpy only (no torch): a record
is built from any model's outputs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np

from ..core.errors import ArgumentError, RunFolderError
from ..core.io import JSONObject, arrays_to_bytes, read_arrays, write_bytes


@dataclass(eq=False)
class ExitRecord:
    """Logits ``[inputs, outputs, classes]`` (ICs first, final last), labels, input ids and costs.

    ``costs[k]`` is the cumulative cost (FLOPs) of computing output k, every IC before it
    included; ``cnn_cost`` is the plain CNN's. Derived arrays (softmax, predictions, confidences,
    correctness) are computed once and cached.
    """

    logits: np.ndarray
    labels: np.ndarray
    costs: np.ndarray
    cnn_cost: float
    ids: np.ndarray
    meta: JSONObject = field(default_factory=dict)

    @classmethod
    def from_arrays(cls, logits, labels, costs, cnn_cost: float, ids=None, meta: dict | None = None) -> ExitRecord:
        """Build a record from any model's outputs (numpy arrays or torch tensors)."""

        def arr(x, dtype):
            if hasattr(x, "detach"):  # a torch tensor, without importing torch here
                x = x.detach().cpu().numpy()
            return np.ascontiguousarray(np.asarray(x, dtype=dtype))

        logits = arr(logits, np.float32)
        if logits.ndim != 3:
            raise ArgumentError(f"logits must be shaped [inputs, outputs, classes], got {list(logits.shape)}")
        n, k, c = logits.shape
        labels = arr(labels, np.int64).reshape(-1)
        costs = arr(costs, np.float64).reshape(-1)
        if len(labels) != n:
            raise ArgumentError(f"{len(labels)} labels for {n} inputs")
        if len(costs) != k:
            raise ArgumentError(f"{len(costs)} costs for {k} outputs")
        if n and (labels.min() < 0 or labels.max() >= c):
            raise ArgumentError(f"labels must lie in 0..{c - 1}")
        if not cnn_cost > 0:
            raise ArgumentError("the CNN's cost must be positive")
        ids = np.arange(n, dtype=np.int64) if ids is None else arr(ids, np.int64).reshape(-1)
        return cls(logits, labels, costs, float(cnn_cost), ids, dict(meta or {}))

    def subset(self, index: np.ndarray) -> ExitRecord:
        """The record of some inputs (an index array or a boolean mask)."""
        return ExitRecord(
            self.logits[index], self.labels[index], self.costs, self.cnn_cost, self.ids[index], dict(self.meta)
        )

    @property
    def num_inputs(self) -> int:
        return self.logits.shape[0]

    @property
    def num_outputs(self) -> int:
        return self.logits.shape[1]

    @property
    def num_classes(self) -> int:
        return self.logits.shape[2]

    @property
    def relative_costs(self) -> np.ndarray:
        """Each output's cumulative cost divided by the CNN's, ``[outputs]``."""
        return self.costs / self.cnn_cost

    @cached_property
    def probs(self) -> np.ndarray:
        """Softmax of every output in double precision, ``[inputs, outputs, classes]`` (the early-exit
        engine compares confidences with thresholds in double precision too)."""
        z = self.logits.astype(np.float64)
        z -= z.max(-1, keepdims=True)
        np.exp(z, out=z)
        z /= z.sum(-1, keepdims=True)
        return z

    @cached_property
    def preds(self) -> np.ndarray:
        """Predicted class of every output, ``[inputs, outputs]``."""
        return self.logits.argmax(-1)

    @cached_property
    def confidence(self) -> np.ndarray:
        """Maximum softmax probability of every output, ``[inputs, outputs]``."""
        return self.probs.max(-1)

    @cached_property
    def correct(self) -> np.ndarray:
        """Whether each output is right on each input, ``[inputs, outputs]`` bool."""
        return self.preds == self.labels[:, None]

    def accuracy(self) -> np.ndarray:
        """Accuracy of every output."""
        return self.correct.mean(0) if self.num_inputs else np.zeros(self.num_outputs)

    # ---------------------------------------------------------------------------------- storage

    def save(self, path: str | Path) -> None:
        """Atomically write the record as safetensors (metadata in its JSON header)."""
        arrays = {"logits": self.logits, "labels": self.labels, "ids": self.ids, "costs": self.costs}
        write_bytes(path, arrays_to_bytes(arrays, {"cnn_cost": self.cnn_cost, "meta": self.meta}))

    @classmethod
    def load(cls, path: str | Path) -> ExitRecord:
        """Read a record written by :meth:`save` (no pickle involved)."""
        t, m = read_arrays(path)
        try:
            return cls.from_arrays(t["logits"], t["labels"], t["costs"], m["cnn_cost"], t["ids"], m.get("meta"))
        except (KeyError, ArgumentError) as e:
            raise RunFolderError(f"{path} is not an exit record ({e}): delete it and it is collected again") from None
