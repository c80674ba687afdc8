"""The task scheduler behind concurrent reproductions: dependency order, the concurrency bound, slots,
a failed task stopping only what needs it, children ended with the schedule. Tiny Python children
(no torch), so each test takes a second or two."""

from __future__ import annotations

import os
import time

import pytest

from shallowdeep.core.schedule import DONE, FAILED, NOT_RUN, Slot, Task, run_tasks


def _task(name: str, needs: tuple[str, ...] = (), seconds: float = 0.3, code: str = "") -> Task:
    """A child that prints a line, sleeps, and runs ``code``."""
    body = (
        f"import os, sys, time; print('hello from {name}', os.environ.get('SLOT_VAR')); time.sleep({seconds}); {code}"
    )
    return Task(name, ["-c", body], needs)


def test_tasks_start_after_what_they_need_and_never_more_than_the_bound():
    tasks = [
        _task("a"),
        _task("b"),
        _task("c", ("a",)),
        _task("d", ("a", "b")),
        _task("e"),
        _task("f", ("c", "d")),
    ]
    said: list[str] = []
    ended: list[str] = []
    runs = run_tasks(tasks, [Slot("cpu")], 2, said.append, lambda r: ended.append(r.name))
    assert [r.name for r in runs] == list("abcdef") and all(r.status == DONE for r in runs)
    by = {r.name: r for r in runs}
    for r in runs:  # every task started once what it needs had ended
        assert all(by[n].ended <= r.started for n in r.needs), r
    # at most two at once: the number running peaks when one starts, so count at every start
    assert max(sum(o.started <= r.started < o.ended for o in runs) for r in runs) == 2
    assert max(sum(o.overlaps(r) for o in runs if o is not r) for r in runs) >= 1  # some ran together
    assert sorted(ended) == list("abcdef") and ended.index("a") < ended.index("c") < ended.index("f")
    assert sorted(said) == sorted(f"[{n}] hello from {n} None" for n in "abcdef")  # each line prefixed


def test_one_at_a_time_runs_them_in_order():
    runs = run_tasks([_task("x", seconds=0.1), _task("y", seconds=0.1), _task("z", ("x",), 0.1)], [Slot("cpu")], 1)
    assert [r.name for r in sorted(runs, key=lambda r: r.started)] == ["x", "y", "z"]
    assert not any(a.overlaps(b) for a in runs for b in runs if a is not b)


def test_a_failed_task_stops_only_what_needs_it():
    tasks = [
        _task("a", code="raise ValueError('the data is gone')"),
        _task("b", ("a",)),
        _task("c", ("b",)),
        _task("d"),
        _task("e", ("d",)),
    ]
    ended: list[str] = []
    runs = {r.name: r for r in run_tasks(tasks, [Slot("cpu")], 2, None, lambda r: ended.append(r.name))}
    assert runs["a"].status == FAILED and runs["a"].why == "ValueError: the data is gone"
    assert runs["b"].status == NOT_RUN and runs["b"].why == "needs a, which failed" and runs["b"].started is None
    assert runs["c"].status == NOT_RUN and runs["c"].why == "needs b, which did not run"
    assert runs["d"].status == DONE and runs["e"].status == DONE
    assert sorted(ended) == list("abcde")  # every task is reported once, run or not
    quiet = run_tasks([_task("q", code="sys.exit(3)")], [Slot("cpu")], 1)[0]
    assert quiet.status == FAILED and quiet.why == "exit status 3"  # nothing on stderr: the status


def test_tasks_spread_over_the_slots_with_their_environment():
    slots = [Slot("cuda:0", {"SLOT_VAR": "zero"}), Slot("cuda:1", {"SLOT_VAR": "one"})]
    said: list[str] = []
    runs = run_tasks([_task("a", seconds=0.5), _task("b", seconds=0.5)], slots, 2, said.append)
    assert {r.slot for r in runs} == {"cuda:0", "cuda:1"}
    for r in runs:  # the slot it ran on is the environment it saw
        assert f"[{r.name}] hello from {r.name} {'zero' if r.slot == 'cuda:0' else 'one'}" in said


def test_a_stopped_schedule_ends_its_children(tmp_path):
    pid_file = tmp_path / "pid"
    long = Task(
        "long", ["-c", f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(60)"]
    )

    def stop(run):
        raise KeyboardInterrupt  # the user pressed Ctrl-C as the short task ended

    t0 = time.perf_counter()
    with pytest.raises(KeyboardInterrupt):
        run_tasks([long, _task("short", seconds=0.5)], [Slot("cpu")], 2, None, stop)
    assert time.perf_counter() - t0 < 20
    pid = int(pid_file.read_text())
    with pytest.raises(ProcessLookupError):  # the long child is gone (and reaped)
        os.kill(pid, 0)


def test_a_task_needing_a_later_or_unknown_one_is_refused():
    with pytest.raises(ValueError, match="needs"):
        run_tasks([_task("a", ("b",)), _task("b")], [Slot("cpu")], 1)
