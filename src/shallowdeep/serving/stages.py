"""What the batcher runs, for each runtime: a run's torch engine or an export's onnxruntime stages.

The batcher (:mod:`.batcher`) queues inputs before each stage, re-forms batches and answers inputs
as they exit; it does not know which runtime computes a stage. :class:`TorchStages` runs a stage
with the engine's own stage and exit decision (:meth:`EarlyExitEngine._run_stage`), and
:class:`ExportStages` with the deploy runtime's (:meth:`Deployment.step`): each rule is implemented
once per runtime, and a service answers what that runtime's ``classify`` answers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from ..core.queues import Batch as Rows  # inputs in flight before one stage (the runtime's own type)

if TYPE_CHECKING:
    from ..inference.deploy import Deployment, DriftMonitor
    from ..inference.engine import EarlyExitEngine


@dataclass(frozen=True)
class Answer:
    """One input's answer: class index, the output it exited at (the last: no IC exit), the output
    whose prediction was returned, its confidence and the relative cost it paid."""

    prediction: int
    exit: int
    answered: int
    confidence: float
    relative_cost: float


class Stages(Protocol):
    """One runtime's stages, as the batcher drives them."""

    num_stages: int
    image_size: int

    def new_rows(self, images: np.ndarray, start: int) -> Rows:
        """uint8 RGB images ``[N, S, S, 3]`` before the first stage, with ids ``start..start+N-1``."""

    def run(self, k: int, rows: Rows) -> tuple[list[tuple[int, Answer]], Rows | None]:
        """Stage ``k`` on ``rows``: (id, answer) for each input that exits, and the rest (or None)."""

    def concat(self, parts: list[Rows]) -> Rows:
        """Several batches before one stage as one."""

    def first_id(self, rows: Rows) -> int:
        """The smallest id in ``rows`` (the input that arrived first)."""

    def monitor(self) -> DriftMonitor | None:
        """A drift monitor against the validation split's exits, or None when there is no profile."""


def stages_of(model: EarlyExitEngine | Deployment | Stages) -> Stages:
    """The batcher's view of a torch engine or of a loaded export (a :class:`Stages` as it is)."""
    if isinstance(model, (TorchStages, ExportStages)):
        return model
    from ..inference.engine import EarlyExitEngine

    return TorchStages(model) if isinstance(model, EarlyExitEngine) else ExportStages(model)


class TorchStages:
    """A run's :class:`EarlyExitEngine`, stage by stage."""

    def __init__(self, engine: EarlyExitEngine) -> None:
        self.engine = engine
        self.num_stages, self.image_size = len(engine._stages), engine.sdn.image_size
        self.costs = [float(c) for c in engine.relative_costs]

    def new_rows(self, images: np.ndarray, start: int) -> Any:
        import torch

        x = self.engine.images(images).contiguous(memory_format=torch.channels_last)
        return self.engine._new_rows(x, start)

    def run(self, k: int, rows: Any) -> tuple[list[tuple[int, Answer]], Any]:
        import torch

        got: list[tuple[int, Answer]] = []
        moved: list[list[Any]] = [[] for _ in range(self.num_stages)]
        with torch.inference_mode():
            self.engine._run_stage(k, rows, moved, _Collect(got, self.costs), None)
        rest = moved[k + 1] if k + 1 < self.num_stages else []  # _run_stage moves at most one batch on
        return got, rest[0] if rest else None

    def concat(self, parts: list[Any]) -> Any:
        from ..inference.engine import _Rows

        return _Rows.concat(parts)

    def first_id(self, rows: Any) -> int:
        return int(rows.idx.min())

    def monitor(self) -> DriftMonitor | None:
        return self.engine.monitor() if self.engine.profile is not None else None


class _Collect:
    """What :meth:`EarlyExitEngine._run_stage` puts its exits into: (id, answer) pairs."""

    def __init__(self, into: list[tuple[int, Answer]], costs: list[float]) -> None:
        self.into, self.costs = into, costs

    def put(self, idx: Any, pred: Any, exit_: int, conf: Any, ans: Any) -> None:
        cost = self.costs[exit_]
        for i, p, c, a in zip(idx.tolist(), pred.tolist(), conf.tolist(), ans.tolist()):
            self.into.append((int(i), Answer(int(p), exit_, int(a), float(c), cost)))


class ExportStages:
    """An export's onnxruntime stages (the torch-free deploy runtime), stage by stage."""

    def __init__(self, deployment: Deployment) -> None:
        self.deployment = deployment
        self.num_stages, self.image_size = deployment.num_outputs, deployment.size
        self.costs = [float(c) for c in deployment.relative_costs]

    def new_rows(self, images: np.ndarray, start: int) -> Any:
        return self.deployment.start(images, np.arange(start, start + len(images)))

    def run(self, k: int, rows: Any) -> tuple[list[tuple[int, Answer]], Any]:
        out, rest = self.deployment.step(k, rows)
        cost = self.costs[k]
        got = [
            (int(i), Answer(int(p), k, int(a), float(c), cost))
            for i, p, c, a in zip(out.ids.tolist(), out.predictions.tolist(), out.confidence.tolist(), out.answered)
        ]
        return got, rest

    def concat(self, parts: list[Any]) -> Any:
        from ..inference.deploy import Pending

        return Pending.concat(parts)

    def first_id(self, rows: Any) -> int:
        return int(rows.ids.min())

    def monitor(self) -> DriftMonitor | None:
        return self.deployment.monitor() if self.deployment.manifest.profile is not None else None
