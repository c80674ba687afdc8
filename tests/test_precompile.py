"""Compiling a reproduction's later stages ahead, in a background process (runs/precompile.py)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from shallowdeep.runs import TrainConfig, train_run
from shallowdeep.runs.precompile import start
from shallowdeep.runs.train import may_compile

SRC = str(Path(__file__).resolve().parents[1] / "src")

# one process, fresh: nothing compiled in memory, the compiler's disk cache where the test says
_REPRODUCE = """
import json, sys
import torch._dynamo.utils as du
from shallowdeep.workflows import reproduce
result = reproduce("digits", sys.argv[1], ["small"], epochs={"cnn": 1, "ic-only": 1, "sdn": 1}, device="cpu",
                   compile=True, log=None, progress=False)
print(json.dumps({"compiled_ahead": result["compiled_ahead"], "inductor": dict(du.counters["inductor"]),
                  "aot": dict(du.counters["aot_autograd"])}))
"""


def test_reproduce_compiles_its_later_stages_ahead_and_they_hit_the_cache(tmp_path):
    """The CNN stage compiles its own step; the IC-only SDN (built from a CNN run that does not exist
    when the child starts) and the SDN from scratch are compiled by the child meanwhile, so their
    runs find every compiled graph in the cache: the parent compiles two graphs (the CNN's forward
    and backward) and loads four. Without the child, a fresh cache would miss six times."""
    env = os.environ | {"TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "cache"), "PYTHONPATH": SRC}
    done = subprocess.run([sys.executable, "-c", _REPRODUCE, str(tmp_path / "rep")], env=env, capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert [(r["stage"], r["compiled"]) for r in got["compiled_ahead"]] == [("small/ic-only", True),
                                                                             ("small/sdn", True)]
    assert all("error" not in r and r["seconds"] > 0 for r in got["compiled_ahead"])
    # the CNN's forward and backward compiled here; the two SDNs' four graphs came from the cache
    assert got["inductor"].get("fxgraph_cache_miss") == 2 and got["inductor"].get("fxgraph_cache_hit") == 4, got
    assert got["aot"].get("autograd_cache_miss") == 1 and got["aot"].get("autograd_cache_hit") == 2, got
    md = (tmp_path / "rep" / "reproduction.md").read_text()
    ahead = got["compiled_ahead"]
    said = f"small/ic-only in {ahead[0]['seconds']:.1f} s, small/sdn in {ahead[1]['seconds']:.1f} s."
    assert said in md and said in (tmp_path / "rep" / "index.html").read_text()
    assert json.loads((tmp_path / "rep" / "reproduction.json").read_text())["compiled_ahead"] == ahead
    for kind in ("cnn", "ic-only", "sdn"):
        assert json.loads((tmp_path / "rep" / "small" / kind / "run.json").read_text())["status"] == "complete"


def test_compiling_ahead_is_planned_only_where_a_run_would_compile(tmp_path):
    from shallowdeep.workflows import _compile_ahead_plan as plan_of

    common = {"data": "digits", "data_root": None, "image_size": None, "device": "cpu", "precision": None,
              "seed": None}
    epochs = {"cnn": 1, "ic-only": 1, "sdn": 1}
    every = ("cnn", "ic-only", "sdn")
    # the CPU compiles only when asked
    assert plan_of(tmp_path, ["small"], every, epochs, common | {"compile": None}) == []
    asked = common | {"compile": True}
    # the first stage trained compiles at once; the others are compiled ahead, in training order
    plan = plan_of(tmp_path, ["small", "resnet56"], ("cnn", "sdn"), epochs, asked)
    assert [name for name, _ in plan] == ["small/sdn", "resnet56/cnn", "resnet56/sdn"]
    assert plan[0][1].mode == "sdn" and plan[0][1].arch == "small" and plan[0][1].compile is True
    # a finished stage is not trained: the next one is the first
    cnn = tmp_path / "small" / "cnn"
    train_run(TrainConfig(out=str(cnn), mode="cnn", arch="small", data="digits", epochs=2), stop_after=1,
              progress=False, log=None)
    # resumed first (with its own recorded settings, not planned), so both later stages are planned
    assert [n for n, _ in plan_of(tmp_path, ["small"], every, epochs, asked)] == ["small/ic-only", "small/sdn"]
    train_run(TrainConfig(out=str(cnn), resume=True), progress=False, log=None)
    assert [n for n, _ in plan_of(tmp_path, ["small"], every, epochs, asked)] == ["small/sdn"]
    assert not may_compile(TrainConfig(out="x", mode="cnn", arch="torchvision:resnet18", data="digits", compile=True))
    assert not may_compile(TrainConfig(out="x", mode="cnn", arch="small", data="digits", compile=False))


def test_a_background_compilation_stopped_early_says_how_far_it_got(tmp_path):
    cfg = TrainConfig(out=str(tmp_path / "r"), mode="sdn", arch="small", data="digits", epochs=1, device="cpu",
                      compile=True)
    nothing = TrainConfig(out=str(tmp_path / "s"), mode="sdn", arch="small", data="digits", epochs=1, device="cpu")
    ahead = start([nothing, cfg])
    assert ahead is not None and start([]) is None
    assert ahead.wait_for(1, timeout=120)  # the first is done; the second is still compiling
    rows = ahead.finish()
    assert ahead.process.returncode is not None
    assert rows[0] == {"compiled": False, "seconds": rows[0]["seconds"]}
    assert rows[1] == {"compiled": False, "error": "stopped before it got there"}
    assert not (tmp_path / "r").exists() and not (tmp_path / "s").exists()  # it writes no run folder
