"""Dynamic batching across requests, re-formed between exits: the serving side of the throughput engine.

Requests arrive one at a time; their images join the first stage's queue. One worker thread runs the
stages: a stage runs when its queue holds ``max_batch`` inputs (the deepest such stage first, as the
throughput engine does), or when the oldest input waiting before it arrived ``max_wait`` ago, or at
once when no input arrived while the last stage ran (then nobody else is sending, and a wait could
only delay the inputs queued: a quiet service answers at once, a busy one fills its batches); the
inputs that exit there are answered at once (their future resolves), the rest join the next stage's
queue. So an easy request leaves after the first stage while the hard ones go on, and every stage
still runs on batches. The stage and the exit decision are the runtime's own (:mod:`.stages`: the
torch engine's ``_run_stage`` or the deploy runtime's ``step``): one implementation of each rule per
runtime.

The number of inputs in flight is bounded (``max_queued``): beyond it :meth:`submit` raises
:class:`Overloaded` (the service answers 503). :meth:`close` stops taking inputs and answers those
already queued before the thread ends.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ..core.errors import ArgumentError, UserError
from ..core.queues import take
from .stages import Answer, Rows, Stages, stages_of

if TYPE_CHECKING:
    from ..inference.deploy import Deployment
    from ..inference.engine import EarlyExitEngine

__all__ = ["Answer", "Overloaded", "StageBatcher"]


class Overloaded(UserError):
    """More inputs than the queues may hold: try again later."""


@dataclass
class _Slot:
    future: Future
    arrived: float


class StageBatcher:
    """Dynamic batching of single requests into the stages of a torch engine or a loaded export (see
    the module docstring)."""

    def __init__(
        self,
        model: EarlyExitEngine | Deployment | Stages,
        max_batch: int = 32,
        max_wait: float = 0.005,
        max_queued: int = 1024,
    ) -> None:
        if not 1 <= max_batch <= 4096:
            raise ArgumentError(f"`max_batch` must lie in 1..4096, got {max_batch}")
        if not 0 <= max_wait <= 10:
            raise ArgumentError(f"`max_wait` is in seconds, 0..10, got {max_wait}")
        if not 1 <= max_queued <= 1 << 20:  # below max_batch: the stages run when their inputs are due
            raise ArgumentError(f"`max_queued` must lie in 1..{1 << 20}, got {max_queued}")
        self.stages = stages_of(model)
        self.max_batch, self.max_wait, self.max_queued = max_batch, max_wait, max_queued
        n = self.stages.num_stages
        self.queues: list[list[Rows]] = [[] for _ in range(n)]
        self.exits = [0] * n  # inputs answered per output
        self.batches = [0] * n  # stage batches run per stage
        self._slots: dict[int, _Slot] = {}
        self._next = 0
        # inputs that arrived while the last stage ran: none means nobody else is sending now, so a
        # stage waiting to fill its batch would only delay the inputs it holds (see _next_stage)
        self._busy, self._arrived_busy, self._last_arrived_busy = False, 0, 0
        self._cond = threading.Condition()
        self._closing = False
        self._failed: BaseException | None = None
        self._thread = threading.Thread(target=self._work, name="shallowdeep-stages", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------------------ the client side
    def submit(self, images: np.ndarray) -> list[Future]:
        """Queue uint8 RGB images ``[N, H, W, 3]``; one future per image, resolving to an :class:`Answer`."""
        with self._cond:
            self._refuse(len(images))
            start, now = self._next, time.monotonic()
            self._next += len(images)
        # preprocessed outside the lock (their ids reserved), so other requests and the worker go on
        rows = self.stages.new_rows(images, start)
        with self._cond:
            self._refuse(len(rows))  # again: others may have queued meanwhile
            futures = [Future() for _ in range(len(rows))]
            for i, f in enumerate(futures):
                self._slots[start + i] = _Slot(f, now)
            self.queues[0].append(rows)
            self._arrived_busy += len(rows) if self._busy else 0
            self._cond.notify()
        return futures

    def _refuse(self, n: int) -> None:
        """Raise :class:`Overloaded` when ``n`` more inputs may not be queued now (under the lock)."""
        if self._closing or self._failed is not None:
            raise Overloaded("the service is shutting down: try another replica or later")
        if len(self._slots) + n > self.max_queued:
            raise Overloaded(f"{len(self._slots)} inputs are queued (at most {self.max_queued}): try again shortly")

    def depths(self) -> list[int]:
        """Inputs waiting before each stage."""
        with self._cond:
            return [sum(map(len, q)) for q in self.queues]

    @property
    def in_flight(self) -> int:
        return len(self._slots)

    def close(self, timeout: float = 30.0) -> None:
        """Take no more inputs, answer the queued ones, stop the worker."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        self._thread.join(timeout)

    # ------------------------------------------------------------------------------ the worker side
    def _next_stage(self) -> int | None:
        """The stage to run now (deepest full queue, else the deepest whose oldest input is due, and
        every queue is due when no input arrived while the last stage ran: waiting could only gather
        inputs nobody is sending; closing: any non-empty queue, deepest first), or ``None`` after
        waiting a while."""
        while True:
            sizes = [sum(map(len, q)) for q in self.queues]
            full = [k for k, n in enumerate(sizes) if n >= self.max_batch]
            if full:
                return full[-1]
            waiting = [k for k, n in enumerate(sizes) if n]
            if not waiting:
                if self._closing:
                    return None
                self._cond.wait(0.1)
                continue
            if self._closing or not self._last_arrived_busy:
                return waiting[-1]
            now = time.monotonic()
            first = self.stages.first_id
            oldest = {k: min(self._slots[first(r)].arrived for r in self.queues[k]) for k in waiting}
            due = [k for k in waiting if now - oldest[k] >= self.max_wait]
            if due:
                return due[-1]
            self._cond.wait(max(1e-4, min(oldest.values()) + self.max_wait - now))

    def _work(self) -> None:
        try:
            while True:
                with self._cond:
                    k = self._next_stage()
                    if k is None:
                        return
                    rows = take(self.queues[k], self.max_batch, self.stages.concat)
                    self._busy, self._arrived_busy = True, 0
                # outside the lock, so requests keep arriving; only this thread touches taken rows
                answers, rest = self.stages.run(k, rows)
                with self._cond:
                    for i, answer in answers:
                        self._slots.pop(i).future.set_result(answer)
                        self.exits[answer.exit] += 1
                    self._busy, self._last_arrived_busy = False, self._arrived_busy
                    self.batches[k] += 1
                    if rest is not None:
                        self.queues[k + 1].append(rest)
        except BaseException as e:  # a stage that fails fails every input in flight, not the thread silently
            self._fail(e)

    def _fail(self, error: BaseException) -> None:
        with self._cond:
            self._failed = error
            for slot in self._slots.values():
                slot.future.set_exception(error)
            self._slots.clear()
            self.queues = [[] for _ in self.queues]
