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
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path

from ..core.children import python_child
from ..core.errors import UserError
from ..core.io import JSONObject
from ..data import reuse_loaded
from .folder import RunFolder
from .train import TrainConfig, warm_compile

Log = Callable[[str], None] | None

# what a child may be told: the JSON-able fields of TrainConfig (not a user's module)
_FIELDS = tuple(f.name for f in fields(TrainConfig) if f.name != "module")


class Ahead:
    """A running background compilation (see :func:`start`): one result per configuration, in order."""

    def __init__(self, process: subprocess.Popen, count: int) -> None:
        self.process, self.count = process, count
        self.rows: list[JSONObject] = []
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

    def finish(self) -> list[JSONObject]:
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
    process = python_child(
        ["-m", "shallowdeep.runs.precompile", spec], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
    )
    return Ahead(process, len(cfgs))


# device types on which a run's step compiles in a background process while the run trains: there
# the training loop needs one core (the GPU does the work) and the compiler gets the others; on a CPU
# the training takes every core, and a compiled run compiles in its own process before its first step
COMPILE_BESIDE_ON = ("cuda",)


def compiles_beside(dev: str) -> bool:
    """Whether a run on ``dev`` has its step compiled in a background process (:data:`COMPILE_BESIDE_ON`)."""
    return dev.split(":")[0] in COMPILE_BESIDE_ON


class CompiledBeside:
    """Runs' training steps compiled by one background process (:func:`start`) while this process
    trains them: ``plan`` is ``(name, TrainConfig)`` per run, in training order. It is the
    :class:`~shallowdeep.runs.train.CompileAhead` that :func:`~shallowdeep.runs.train_run` takes."""

    def __init__(self, plan: list[tuple[str, TrainConfig]], log: Log) -> None:
        self.plan, self.log = plan, log
        self.ahead: Ahead | None = None  # the running child, once started

    def start(self) -> None:
        """Start the child, once: when the first run is set up, so its data is in the decode cache
        (which the child reads instead of decoding beside it) and, on CUDA, this process holds its
        context (a GPU in exclusive-process mode then refuses the child, whose runs compile for
        themselves)."""
        if self.ahead is not None or not self.plan:
            return
        self.ahead = start([cfg for _, cfg in self.plan])
        if self.ahead is not None and self.log is not None:
            self.log(f"compiling the training steps in a background process: {', '.join(n for n, _ in self.plan)}")

    def ready_for(self, out: str | Path) -> Callable[[], bool] | None:
        """The ``compile_ready`` of the run in ``out`` (``None`` for a run not planned: it compiles for
        itself, if at all): yes once the child compiled its step, failed at it, or is not running."""
        outs = [Path(cfg.out).resolve() for _, cfg in self.plan]
        if Path(out).resolve() not in outs:
            return None
        i = outs.index(Path(out).resolve())
        return lambda: self.ahead is None or self.ahead.done(i)

    def finish(self) -> list[JSONObject] | None:
        """Stop the child; per planned run what it did and how many epochs the run trained eagerly
        meanwhile (``None`` if it never started)."""
        if self.ahead is None:
            return None
        rows = [
            {"stage": name} | row | {"eager_epochs": _eager_epochs(Path(cfg.out))}
            for (name, cfg), row in zip(self.plan, self.ahead.finish())
        ]
        if self.log is not None:
            self.log(
                "compiled in the background: "
                + "; ".join(
                    f"{r['stage']} {'yes' if r['compiled'] else 'no'}" + (f" ({r['error']})" if r.get("error") else "")
                    for r in rows
                )
            )
        return rows


def _eager_epochs(run: Path) -> int:
    """How many epochs a compiled run trained eagerly while its step compiled elsewhere."""
    folder = RunFolder(run)
    try:
        return sum(1 for e in folder.meta().epochs if e.get("eager")) if folder.exists() else 0
    except UserError:  # a damaged run.json: said by whatever reads it next, not by this count
        return 0


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
                row: JSONObject = {"compiled": warm_compile(cfg)}
            except Exception as e:  # noqa: BLE001  (the stage compiles for itself; say why this did not)
                row = {"compiled": False, "error": f"{type(e).__name__}: {e}".splitlines()[0][:300]}
            row["seconds"] = round(time.perf_counter() - t0, 2)
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    _main()
