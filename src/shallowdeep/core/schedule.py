"""Tasks with dependencies run as Python child processes, several at once: a task starts once every
task it needs has finished, at most ``max_concurrent`` run together, each on the slot (a device)
running fewest tasks, and a failed task stops only the tasks that need it, directly or not.

Every line a task prints reaches the log prefixed with its name, so the logs of tasks running
together stay readable; what it writes to stderr is kept in a temporary file, and its last line says
why a task failed. Stopping the schedule (an exception, Ctrl-C) ends the children it started.
"""

from __future__ import annotations

import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import IO

from .children import last_words, python_child
from .io import JSONObject

Log = Callable[[str], None] | None

WAITING, RUNNING, DONE, FAILED, NOT_RUN = "waiting", "running", "done", "failed", "not run"


@dataclass(frozen=True)
class Task:
    """One task: its name, the arguments of ``python`` that run it, the names of the tasks it needs."""

    name: str
    args: list[str]
    needs: tuple[str, ...] = ()


@dataclass(frozen=True)
class Slot:
    """Where a task runs: a name (``cpu``, ``cuda:1``) and what its child's environment adds."""

    name: str
    env: Mapping[str, str] = field(default_factory=dict)


@dataclass
class TaskRun:
    """What became of one task: where it ran, when (seconds from the schedule's start), its status
    (``waiting``, ``running``, then ``done``, ``failed`` or ``not run``) and, failed or not run, why."""

    name: str
    needs: tuple[str, ...]
    status: str = WAITING
    slot: str | None = None
    started: float | None = None
    ended: float | None = None
    why: str | None = None

    @property
    def seconds(self) -> float | None:
        """Its wall time, if it ran."""
        return None if self.started is None or self.ended is None else self.ended - self.started

    def overlaps(self, other: TaskRun) -> bool:
        """Whether it ran while ``other`` ran."""
        if None in (self.started, self.ended, other.started, other.ended):
            return False
        return self.started < other.ended and other.started < self.ended  # type: ignore[operator]

    def to_json(self) -> JSONObject:
        d: JSONObject = {"name": self.name, "needs": list(self.needs), "status": self.status, "slot": self.slot}
        d |= {"started": self.started, "ended": self.ended, "seconds": self.seconds, "why": self.why}
        return d


class _Running:
    """A task's child process, its stdout relayed line by line with the task's name in front."""

    def __init__(self, task: Task, slot: Slot, log: Log) -> None:
        self.said: IO[bytes] = tempfile.TemporaryFile()  # a file: nobody reads stderr while it runs
        self.process = python_child(task.args, stdout=subprocess.PIPE, stderr=self.said, env_extra=dict(slot.env))
        self.relay = threading.Thread(target=self._relay, args=(task.name, log), daemon=True)
        self.relay.start()

    def _relay(self, name: str, log: Log) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            text = line.decode(errors="replace").rstrip()
            if log is not None and text:
                log(f"[{name}] {text}")

    def last_words(self, status: int) -> str:
        """The last line the child wrote to stderr, or its exit status."""
        self.relay.join(timeout=5)
        return last_words(self.said, status)

    def stop(self) -> None:
        """End the child (and wait for it)."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def run_tasks(
    tasks: list[Task],
    slots: list[Slot],
    max_concurrent: int,
    log: Log = None,
    on_end: Callable[[TaskRun], None] | None = None,
) -> list[TaskRun]:
    """Run ``tasks`` (each needing only tasks listed before it) in child processes, at most
    ``max_concurrent`` at once, ready tasks in list order; ``on_end`` sees each task as it ends (a
    task it needs failed: ``not run``). Returns every task's :class:`TaskRun`, in list order."""
    names = [t.name for t in tasks]
    for i, t in enumerate(tasks):
        unknown = [n for n in t.needs if n not in names[:i]]
        if unknown:
            raise ValueError(f"task {t.name} needs {unknown}, which no earlier task is")
    runs = {t.name: TaskRun(t.name, t.needs) for t in tasks}
    waiting, running = list(tasks), {}
    started = time.perf_counter()
    try:
        while waiting or running:
            _start_ready(waiting, running, runs, slots, max_concurrent, started, log, on_end)
            time.sleep(0.05)
            for name, (child, _) in list(running.items()):
                status = child.process.poll()
                if status is None:
                    continue
                run = runs[name]
                run.ended = time.perf_counter() - started
                run.status, run.why = (DONE, None) if status == 0 else (FAILED, child.last_words(status))
                del running[name]
                if on_end is not None:
                    on_end(run)
    finally:
        for child, _ in running.values():
            child.stop()
    return [runs[n] for n in names]


def _start_ready(
    waiting: list[Task],
    running: dict[str, tuple[_Running, Slot]],
    runs: dict[str, TaskRun],
    slots: list[Slot],
    max_concurrent: int,
    started: float,
    log: Log,
    on_end: Callable[[TaskRun], None] | None,
) -> None:
    """Start the waiting tasks whose needs are done while fewer than ``max_concurrent`` run; settle
    those a failed (or not run) task blocks as ``not run``."""
    for task in list(waiting):
        blocked = [n for n in task.needs if runs[n].status in (FAILED, NOT_RUN)]
        if blocked:
            waiting.remove(task)
            runs[task.name].status = NOT_RUN
            runs[
                task.name
            ].why = f"needs {blocked[0]}, which {'failed' if runs[blocked[0]].status == FAILED else 'did not run'}"
            if on_end is not None:
                on_end(runs[task.name])
            continue
        if len(running) >= max_concurrent or any(runs[n].status != DONE for n in task.needs):
            continue
        load = {s.name: 0 for s in slots}
        for _, s in running.values():
            load[s.name] += 1
        slot = min(slots, key=lambda s: load[s.name])
        waiting.remove(task)
        run = runs[task.name]
        run.slot, run.started, run.status = slot.name, time.perf_counter() - started, RUNNING
        running[task.name] = (_Running(task, slot, log), slot)
