"""One inference pass -> every output's logits for every input of a split (an :class:`ExitRecord`).

Every analysis in :mod:`shallowdeep.analysis` is a pure function of records, so the network runs
once per split however many questions are asked.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .costs import output_costs
from .data import Dataset, batches
from .errors import UserError


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
    meta: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_arrays(cls, logits, labels, costs, cnn_cost: float, ids=None, meta: dict | None = None) -> "ExitRecord":
        """Build a record from any model's outputs (numpy arrays or torch tensors)."""
        def arr(x, dtype):
            if isinstance(x, torch.Tensor):
                x = x.detach().cpu().numpy()
            return np.ascontiguousarray(np.asarray(x, dtype=dtype))

        logits = arr(logits, np.float32)
        if logits.ndim != 3:
            raise UserError(f"logits must be shaped [inputs, outputs, classes], got {list(logits.shape)}")
        n, k, c = logits.shape
        labels = arr(labels, np.int64).reshape(-1)
        costs = arr(costs, np.float64).reshape(-1)
        if len(labels) != n:
            raise UserError(f"{len(labels)} labels for {n} inputs")
        if len(costs) != k:
            raise UserError(f"{len(costs)} costs for {k} outputs")
        if n and (labels.min() < 0 or labels.max() >= c):
            raise UserError(f"labels must lie in 0..{c - 1}")
        if not cnn_cost > 0:
            raise UserError("the CNN's cost must be positive")
        ids = np.arange(n, dtype=np.int64) if ids is None else arr(ids, np.int64).reshape(-1)
        return cls(logits, labels, costs, float(cnn_cost), ids, dict(meta or {}))

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
        from .runs import tensors_to_bytes, write_bytes

        tensors = {"logits": torch.from_numpy(self.logits), "labels": torch.from_numpy(self.labels),
                   "ids": torch.from_numpy(self.ids), "costs": torch.from_numpy(self.costs)}
        write_bytes(path, tensors_to_bytes(tensors, {"cnn_cost": self.cnn_cost, "meta": self.meta}))

    @classmethod
    def load(cls, path: str | Path) -> "ExitRecord":
        """Read a record written by :meth:`save` (no pickle involved)."""
        from .runs import read_tensors

        t, m = read_tensors(path)
        try:
            return cls.from_arrays(t["logits"], t["labels"], t["costs"], m["cnn_cost"], t["ids"], m.get("meta"))
        except KeyError as e:
            raise UserError(f"{path} is not an exit record (missing {e})") from None


@torch.no_grad()
def collect(model: torch.nn.Module, data: Dataset, split: str = "test", *, batch_size: int = 256,
            device: torch.device | str = "cpu", meta: dict | None = None) -> ExitRecord:
    """Run ``model`` once over ``data``'s ``split`` (no augmentation) and record every output."""
    from .train import outputs_of

    was_training = model.training
    model.eval().to(device)
    chunks, labels = [], []
    try:
        for x, y in batches(data, split, batch_size, device=device):
            chunks.append(torch.stack(outputs_of(model, x), dim=1).float().cpu())
            labels.append(y.cpu())
    finally:
        model.train(was_training)
    s = data.split(split)
    costs = output_costs(model)
    logits = torch.cat(chunks) if chunks else torch.zeros(0, len(costs.outputs), data.num_classes)
    return ExitRecord.from_arrays(logits, torch.cat(labels) if labels else torch.zeros(0, dtype=torch.int64),
                                  costs.outputs, costs.cnn, s.ids, {"split": split, **(meta or {})})


RECORDS_DIR = "records"


def load_run_data(run: str | Path) -> Dataset:
    """The data set a run was trained on, from its ``run.json`` alone."""
    from .data import load_dataset
    from .runs import RUN_JSON, read_json

    cfg = read_json(Path(run) / RUN_JSON).get("config", {})
    return load_dataset(cfg["data"], cfg.get("data_root"), cfg.get("image_size"))


def _same_inputs(rec: ExitRecord, data: Dataset | None, split: str) -> bool:
    """Whether a cached record still describes ``data``'s split (same ids and labels); without the
    data at hand, trust the cache (it is keyed by the weights)."""
    if data is None or "+" in split:
        return True
    s = data.split(split)
    return len(s) == rec.num_inputs and np.array_equal(s.ids.numpy(), rec.ids) and np.array_equal(s.labels.numpy(), rec.labels)


def run_records(run: str | Path, splits: tuple[str, ...] = ("train", "val", "test"), *,
                model: torch.nn.Module | None = None, data: Dataset | None = None,
                device: torch.device | str = "cpu", log=None) -> dict[str, ExitRecord]:
    """The records of a run's splits, cached in ``RUN/records/`` and reused while the weights are
    the same (the cache stores the weights' SHA-256) and, when ``data`` is given, the split's ids and
    labels still match. ``"test+trigger"`` is the test split's
    non-target inputs with the run's backdoor trigger pasted on (true labels kept)."""
    from .runs import RUN_JSON, WEIGHTS, load, read_json, sha256_file

    run = Path(run)
    meta = read_json(run / RUN_JSON)
    if not (run / WEIGHTS).is_file():
        raise UserError(f"{run} has no {WEIGHTS}: training did not finish; continue it with --resume")
    sha = sha256_file(run / WEIGHTS)
    folder = run / RECORDS_DIR
    out: dict[str, ExitRecord] = {}
    for split in splits:
        path = folder / f"{split}.safetensors"
        if path.is_file():
            try:
                rec = ExitRecord.load(path)
                if rec.meta.get("weights_sha256") == sha and _same_inputs(rec, data, split):
                    out[split] = rec
                    continue
            except UserError:
                pass  # a damaged cache entry is collected again
        if model is None:
            model = load(run, device)
        if data is None:
            data = load_run_data(run)
        source, base = data, split
        if split.endswith("+trigger"):
            from dataclasses import replace

            from .backdoor import backdoor_of, triggered_split

            b = backdoor_of(run)
            if b is None:
                raise UserError(f"{run} has no backdoor: there is no triggered split")
            base = split.split("+")[0]
            source = replace(data, **{base: triggered_split(data, base, b)})
        if log is not None:
            log(f"collecting the {split} record ({len(source.split(base))} inputs)")
        rec = collect(model, source, base, device=device,
                      meta={"weights_sha256": sha, "run": meta.get("config", {}).get("arch"), "split_name": split})
        folder.mkdir(exist_ok=True)
        rec.save(path)
        out[split] = rec
    return out
