"""Compiling runs' training steps in a background process while the pipeline trains.

A compiled run spends its first step compiling (on an H200: 34 s for the ResNet-56 CNN, 21 s for its
IC-only SDN, 50 s for the SDN from scratch), and the GPU idles meanwhile. The compiler keeps what it
made in an on-disk cache keyed by the code of the step and the shapes, strides and types of its
inputs, not by the weights' values; from a warm cache the same SDN compiled in 3.5 s on that H200.
``reproduce`` knows its stages from the start and hands them to :func:`start` once its first stage
is set up (its data decoded into the cache): a child process builds each stage's network with
random weights, runs one compiled step on one batch of the real data, and leaves the compiled code
in the cache for the stage itself, in training order. The child runs at a lower CPU priority. A
stage whose step the child has not compiled yet trains eagerly meanwhile (``fit``'s
``compile_ready``), and loads the compiled step once :meth:`Ahead.done` says it is there; if the
child failed, the stage compiles for itself, as without it.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from dataclasses import fields
from typing import Any

from ..core.children import python_child
from ..data import reuse_loaded
from .train import TrainConfig, warm_compile

# what a child may be told: the JSON-able fields of TrainConfig (not a user's module)
_FIELDS = tuple(f.name for f in fields(TrainConfig) if f.name != "module")


class Ahead:
    """A running background compilation (see :func:`start`): one result per configuration, in order."""

    def __init__(self, process: subprocess.Popen, count: int) -> None:
        self.process, self.count = process, count
        self.rows: list[dict[str, Any]] = []
        self.ended = False  # the child exited and every line it wrote is read
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            if line.startswith(b"{"):
                with self._changed:
                    self.rows.append(json.loads(line))
                    self._changed.notify_all()
        self.process.wait()
        with self._changed:
            self.ended = True
            self._changed.notify_all()

    def done(self, i: int) -> bool:
        """Whether the child is past configuration ``i`` (0-based): compiled it, failed at it, or ended."""
        return len(self.rows) > i or self.ended

    def wait_for(self, n: int, timeout: float) -> bool:
        """Wait until the first ``n`` configurations are done (or the child ended, or ``timeout``
        seconds passed); whether they are done."""
        with self._changed:
            self._changed.wait_for(lambda: len(self.rows) >= n or self.ended, timeout)
            return len(self.rows) >= n

    def finish(self) -> list[dict[str, Any]]:
        """Stop the child if it still runs; what it did per configuration (``compiled``,
        ``seconds``, or ``error``), as far as it got."""
        if self.process.poll() is None:
            # its compiler's worker processes notice their parent is gone and end themselves; the
            # child stays in this process group, so a signal to the group (Ctrl-C) reaches it too
            self.process.kill()
        self.process.wait()
        self._reader.join()
        return self.rows + [{"compiled": False, "error": "stopped before it got there"}] * (self.count - len(self.rows))


def start(cfgs: list[TrainConfig]) -> Ahead | None:
    """Start one background process that runs :func:`~shallowdeep.runs.train.warm_compile` on each of ``cfgs`` in order
    (``None`` when there is nothing to compile ahead)."""
    if not cfgs:
        return None
    spec = json.dumps([{k: getattr(c, k) for k in _FIELDS} for c in cfgs])
    # stdout carries one JSON line per configuration; the child's warnings are not the user's business
    process = python_child(["-m", "shallowdeep.runs.precompile", spec], stdout=subprocess.PIPE,
                           stderr=subprocess.DEVNULL)
    return Ahead(process, len(cfgs))


def _main() -> None:
    try:
        os.nice(10)  # the stage training meanwhile comes first
    except (AttributeError, OSError):  # no os.nice (Windows), or not allowed
        pass
    with reuse_loaded():  # the stages of a reproduction share one data set: read it once here too
        for raw in json.loads(sys.argv[1]):
            t0 = time.perf_counter()
            cfg = TrainConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in raw.items() if k in _FIELDS})
            try:
                row: dict[str, Any] = {"compiled": warm_compile(cfg)}
            except Exception as e:  # noqa: BLE001  (the stage compiles for itself; say why this did not)
                row = {"compiled": False, "error": f"{type(e).__name__}: {e}".splitlines()[0][:300]}
            row["seconds"] = round(time.perf_counter() - t0, 2)
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    _main()
