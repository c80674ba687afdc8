"""Compiling a reproduction's later stages ahead, in a background process (runs/precompile.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

from shallowdeep.runs import TrainConfig, train_run
from shallowdeep.runs.precompile import start
from shallowdeep.runs.train import ReadyWhen, may_compile

SRC = str(Path(__file__).resolve().parents[1] / "src")

# one process, fresh: nothing compiled in memory, the compiler's disk cache where the test says. The
# child compiles the IC-only SDN (built from its arch: the CNN run it will come from is trained here
# meanwhile, eagerly) and the SDN; then both runs start with their compiled step ready.
_CACHED = """
import json, sys
from pathlib import Path
import torch._dynamo.utils as du
from dataclasses import replace
from shallowdeep.runs import TrainConfig, train_run
from shallowdeep.runs.precompile import start
from shallowdeep.runs.train import ReadyWhen
out = Path(sys.argv[1])
common = dict(arch="small", data="digits", epochs=1, device="cpu", compile=True)
ic_only = TrainConfig(out=str(out / "ic-only"), mode="ic-only", from_run=str(out / "cnn"), **common)
sdn = TrainConfig(out=str(out / "sdn"), mode="sdn", **(common | {"epochs": 2}))
ahead = start([replace(ic_only, from_run=None), sdn])
train_run(TrainConfig(out=str(out / "cnn"), mode="cnn", **(common | {"compile": False})), progress=False, log=None)
assert ahead.wait_for(2, timeout=900), ahead.finish()
train_run(ic_only, progress=False, log=None, beside=ReadyWhen(lambda: True))
answers = iter([False, True])  # the SDN's first epoch eager, its second compiled: a switch mid-run
train_run(sdn, progress=False, log=None, beside=ReadyWhen(lambda: next(answers)))
print(json.dumps({"ahead": ahead.finish(), "inductor": dict(du.counters["inductor"]),
                  "aot": dict(du.counters["aot_autograd"])}))
"""


def test_runs_compiled_in_the_background_find_their_step_in_the_cache(tmp_path):
    """The child's compilation, on random weights and one batch, is the runs' own: the IC-only SDN
    (whose CNN run did not exist when the child built it) and the SDN from scratch (after an eager
    epoch) load all four of their graphs (forward and backward each) from the cache and compile none."""
    env = os.environ | {"TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "cache"), "PYTHONPATH": SRC}
    done = subprocess.run(
        [sys.executable, "-c", _CACHED, str(tmp_path / "runs")], env=env, capture_output=True, text=True, timeout=1200
    )
    assert done.returncode == 0, done.stderr[-3000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert [r["compiled"] for r in got["ahead"]] == [True, True] and all("error" not in r for r in got["ahead"])
    assert got["inductor"].get("fxgraph_cache_miss", 0) == 0 and got["inductor"].get("fxgraph_cache_hit") == 4, got
    assert got["aot"].get("autograd_cache_miss", 0) == 0 and got["aot"].get("autograd_cache_hit") == 2, got
    for kind, eager in (("ic-only", [False]), ("sdn", [True, False])):
        meta = json.loads((tmp_path / "runs" / kind / "run.json").read_text())
        assert meta["status"] == "complete" and [e.get("eager", False) for e in meta["epochs"]] == eager


# a reproduction's stages are short here (one epoch on a small set), far shorter than the child's
# compilations: each trains eagerly while its step is not ready, and nothing compiles twice
_REPRODUCE = """
import json, sys
import torch._dynamo.utils as du
import shallowdeep.runs.precompile as precompile
from shallowdeep.reproduction import reproduce
precompile.COMPILE_BESIDE_ON = ("cuda", "cpu")  # as on a GPU (the CPU compiles in-process by default)
result = reproduce("digits", sys.argv[1], ["small"], epochs={"cnn": 1, "ic-only": 1, "sdn": 1}, device="cpu",
                   compile=True, log=None, progress=False)
print(json.dumps({"compiled_ahead": result.compiled_ahead, "inductor": dict(du.counters["inductor"])}))
"""


def test_a_reproduction_trains_eagerly_while_its_steps_compile_in_the_background(tmp_path):
    env = os.environ | {"TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "cache"), "PYTHONPATH": SRC}
    done = subprocess.run(
        [sys.executable, "-c", _REPRODUCE, str(tmp_path / "rep")], env=env, capture_output=True, text=True, timeout=900
    )
    assert done.returncode == 0, done.stderr[-3000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])
    ahead = got["compiled_ahead"]
    assert [r["stage"] for r in ahead] == ["small/cnn", "small/ic-only", "small/sdn"], ahead
    # the pipeline compiled nothing itself: every stage loaded its step from the cache or trained eagerly
    assert got["inductor"].get("fxgraph_cache_miss", 0) == 0, got
    for kind, row in zip(("cnn", "ic-only", "sdn"), ahead):
        meta = json.loads((tmp_path / "rep" / "small" / kind / "run.json").read_text())
        assert meta["status"] == "complete" and meta["runtime"]["compile"] is True
        eager = sum(1 for e in meta["epochs"] if e.get("eager"))
        assert row["eager_epochs"] == eager and (row["compiled"] or eager == 1), (kind, row, meta["epochs"])
    md = (tmp_path / "rep" / "reproduction.md").read_text()
    said = "Training steps compiled in a background process"
    assert said in md and said in (tmp_path / "rep" / "index.html").read_text()
    assert "small/cnn" in md.split(said)[1]


def test_compiling_ahead_is_planned_only_where_a_run_would_compile(tmp_path):
    from shallowdeep.reproduction import _compile_ahead_plan as plan_of

    common = {"data": "digits", "data_root": None, "image_size": None, "device": "cpu", "precision": None, "seed": None}
    epochs = {"cnn": 1, "ic-only": 1, "sdn": 1}
    every = ("cnn", "ic-only", "sdn")
    # the CPU compiles only when asked
    assert plan_of(tmp_path, ["small"], every, epochs, common | {"compile": None}) == []
    asked = common | {"compile": True}
    # every stage trained anew, in training order
    plan = plan_of(tmp_path, ["small", "resnet56"], ("cnn", "sdn"), epochs, asked)
    assert [name for name, _ in plan] == ["small/cnn", "small/sdn", "resnet56/cnn", "resnet56/sdn"]
    assert plan[1][1].mode == "sdn" and plan[1][1].arch == "small" and plan[1][1].compile is True
    # a finished stage is not trained: the next one is the first
    cnn = tmp_path / "small" / "cnn"
    train_run(
        TrainConfig(out=str(cnn), mode="cnn", arch="small", data="digits", epochs=2),
        stop_after=1,
        progress=False,
        log=None,
    )
    # resumed (with its own recorded settings) or finished: not planned
    assert [n for n, _ in plan_of(tmp_path, ["small"], every, epochs, asked)] == ["small/ic-only", "small/sdn"]
    train_run(TrainConfig(out=str(cnn), resume=True), progress=False, log=None)
    assert [n for n, _ in plan_of(tmp_path, ["small"], every, epochs, asked)] == ["small/ic-only", "small/sdn"]
    assert not may_compile(TrainConfig(out="x", mode="cnn", arch="torchvision:resnet18", data="digits", compile=True))
    assert not may_compile(TrainConfig(out="x", mode="cnn", arch="small", data="digits", compile=False))


def test_a_background_compilation_stopped_early_says_how_far_it_got(tmp_path):
    cfg = TrainConfig(
        out=str(tmp_path / "r"), mode="sdn", arch="small", data="digits", epochs=1, device="cpu", compile=True
    )
    nothing = TrainConfig(out=str(tmp_path / "s"), mode="sdn", arch="small", data="digits", epochs=1, device="cpu")
    ahead = start([nothing, cfg])
    assert ahead is not None and start([]) is None
    assert ahead.wait_for(1, timeout=120)  # the first is done; the second is still compiling
    rows = ahead.finish()
    assert ahead.process.returncode is not None
    assert rows[0] == {"compiled": False, "seconds": rows[0]["seconds"]}
    assert rows[1] == {"compiled": False, "error": "stopped before it got there"}
    assert not (tmp_path / "r").exists() and not (tmp_path / "s").exists()  # it writes no run folder


def test_the_child_starts_once_the_first_stage_is_set_up(tmp_path, monkeypatch):
    """Started with the call, the child would decode the data beside the first stage's own decoding,
    on the same cores; once the stage is set up it reads the decoded data from the cache."""
    import shallowdeep.reproduction as reproduction
    import shallowdeep.runs.precompile as precompile

    lines: list[str] = []

    def fake_start(cfgs):
        lines.append("start: " + ",".join(c.mode for c in cfgs))
        return None  # as if it could not start: the planned stages compile for themselves

    planned = TrainConfig(
        out=str(tmp_path / "rep" / "small" / "cnn"), mode="cnn", arch="small", data="digits", epochs=1, device="cpu"
    )
    monkeypatch.setattr(precompile, "start", fake_start)
    monkeypatch.setattr(reproduction, "_compile_ahead_plan", lambda *a: [("small/cnn", planned)])
    monkeypatch.setattr(precompile, "COMPILE_BESIDE_ON", ("cuda", "cpu"))
    reproduction.reproduce(
        "digits",
        tmp_path / "rep",
        ["small"],
        epochs={"cnn": 2, "ic-only": 1, "sdn": 1},
        stages=("cnn",),
        device="cpu",
        log=lines.append,
        progress=False,
    )
    epochs = [i for i, s in enumerate(lines) if s.startswith("epoch ")]
    assert len(epochs) == 2 and lines.count("start: cnn") == 1, lines
    # once, between the stage's setup (its first line) and its first epoch
    assert (
        lines[lines.index("start: cnn") - 1].startswith("training small (cnn)")
        and lines.index("start: cnn") == epochs[0] - 1
    ), lines


def test_train_compiles_a_new_runs_step_beside_it(tmp_path, monkeypatch, fake_compile):
    """`shallowdeep train` (workflows.train): a new run that compiles trains eagerly while a background
    process compiles its step, which is stopped when the run ends; a run that does not compile, or a
    resumed one, starts no process."""
    import shallowdeep.runs.precompile as precompile
    from shallowdeep.workflows import train

    class NeverReady:  # a child still compiling when the run ends
        finished = False

        def done(self, i):
            return False

        def finish(self):
            NeverReady.finished = True
            return [{"compiled": False, "error": "stopped before it got there"}]

    started: list[list[str]] = []
    monkeypatch.setattr(precompile, "start", lambda cfgs: started.append([c.out for c in cfgs]) or NeverReady())
    out = tmp_path / "r"
    lines: list[str] = []
    cfg = TrainConfig(out=str(out), mode="cnn", arch="small", data="digits", epochs=2, device="cpu", compile=True)
    # on a CPU the training takes every core: a compiled run compiles in its own process there
    train(replace(cfg, out=str(tmp_path / "cpu")), progress=False, log=None)
    assert started == [] and fake_compile
    monkeypatch.setattr(precompile, "COMPILE_BESIDE_ON", ("cuda", "cpu"))  # as on a GPU
    fake_compile.clear()
    assert train(cfg, progress=False, log=lines.append) == out
    meta = json.loads((out / "run.json").read_text())
    assert started == [[str(out)]] and NeverReady.finished
    assert meta["runtime"]["compile"] and [e.get("eager") for e in meta["epochs"]] == [True, True]
    assert not fake_compile  # never stepped the compiled module
    assert any(line.startswith("compiled in the background: ") for line in lines)
    started.clear()
    train(
        TrainConfig(out=str(tmp_path / "s"), mode="cnn", arch="small", data="digits", epochs=1, device="cpu"),
        progress=False,
        log=None,
    )
    half = TrainConfig(
        out=str(tmp_path / "u"), mode="cnn", arch="small", data="digits", epochs=2, device="cpu", compile=True
    )
    train_run(half, stop_after=1, progress=False, log=None, beside=ReadyWhen(lambda: False))
    train(replace(half, resume=True), progress=False, log=None)  # resumed: compiles for itself
    assert started == [] and fake_compile  # the resumed epoch stepped its compiled module
