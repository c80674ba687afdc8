"""Reproductions with stages at once (issue 35): the same weights as one after another, a failed
stage stopping only what needs it, a killed reproduction resumed, its children gone with it."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from shallowdeep.core.errors import StageError, UserError
from shallowdeep.reproduction import reproduce
from shallowdeep.runs import TrainConfig, train_run

EPOCHS = {"cnn": 2, "ic-only": 1, "sdn": 1}
KINDS = ("cnn", "ic-only", "sdn")


def _weights(out: Path, kind: str) -> bytes:
    return (out / "small" / kind / "model.safetensors").read_bytes()


def test_stages_at_once_equal_the_sequential_ones_and_a_failed_stage_stops_only_its_own(tmp_path):
    seq = reproduce("digits", tmp_path / "seq", ["small"], epochs=EPOCHS, log=None, progress=False)
    assert seq.schedule is None and seq.max_concurrent == 1  # the CPU's default: one after another
    out = tmp_path / "par"
    # a CNN stage killed after one epoch whose checkpoint was damaged since: its resume fails
    cnn = out / "small" / "cnn"
    train_run(TrainConfig(out=str(cnn), mode="cnn", arch="small", data="digits", epochs=2), stop_after=1, log=None)
    (cnn / "checkpoint.safetensors").write_bytes(b"not a checkpoint")
    said: list[str] = []
    with pytest.raises(StageError) as caught:
        reproduce("digits", out, ["small"], epochs=EPOCHS, max_concurrent=2, log=said.append, progress=False)
    message = str(caught.value)
    assert message.startswith("small/cnn failed (") and "checkpoint" in message, message
    assert "not run for it: small/ic-only, small/analyze ic-only;" in message and "\n" not in message
    table = json.loads((out / "reproduction.json").read_text())  # the rest finished and is in the table
    assert [r["kind"] for r in table["rows"]] == ["sdn"] and _weights(out, "sdn") == _weights(tmp_path / "seq", "sdn")
    status = {t["name"]: t["status"] for t in table["schedule"]}
    assert status == {
        "small/cnn": "failed",
        "small/ic-only": "not run",
        "small/analyze ic-only": "not run",
        "small/sdn": "done",
        "small/analyze sdn": "done",
    }
    by = {t["name"]: t for t in table["schedule"]}
    assert (
        by["small/cnn"]["started"] < by["small/sdn"]["ended"] and by["small/sdn"]["started"] < by["small/cnn"]["ended"]
    )
    assert any(line.startswith("[small/sdn] epoch 1/1") for line in said)  # one prefixed line per epoch
    assert any(line.startswith("[small/analyze sdn] analyzed in") for line in said)

    shutil.rmtree(cnn)  # the cause removed: the same call again runs what is missing, keeps the rest
    said.clear()
    again = reproduce("digits", out, ["small"], epochs=EPOCHS, max_concurrent=2, log=said.append, progress=False)
    assert [t.name for t in again.schedule] == ["small/cnn", "small/ic-only", "small/analyze ic-only"]
    assert any("sdn is finished: kept" in line for line in said)
    for kind in KINDS:  # bit for bit what one after another trained
        assert _weights(out, kind) == _weights(tmp_path / "seq", kind), kind
    assert [r.kind for r in again.rows] == ["ic-only", "sdn"]
    assert [r.outputs for r in again.rows] == [r.outputs for r in seq.rows]
    md = (out / "reproduction.md").read_text()
    assert "Stages run at once, at most 2, each in its own process" in md
    ic = next(t for t in again.schedule if t.name == "small/ic-only")
    assert f"- small/ic-only on cpu: {ic.started:.1f}-{ic.ended:.1f} s ({ic.seconds:.1f} s)" in md
    kept = reproduce("digits", out, ["small"], epochs=EPOCHS, max_concurrent=2, log=None, progress=False)
    assert (
        kept.schedule == []
        and "nothing to run: every stage and analysis was kept" in (out / "reproduction.md").read_text()
    )
    assert [r.outputs for r in kept.rows] == [r.outputs for r in seq.rows]


def _children_of(out: Path) -> list[int]:
    """Processes whose command line names ``out`` (the stage children of a reproduction into it)."""
    found = []
    for pid in os.listdir("/proc"):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (OSError, ValueError):
            continue
        if pid.isdigit() and b"_task_child" in cmd and str(out).encode() in cmd:
            found.append(int(pid))
    return found


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads /proc to find the children")
def test_a_killed_concurrent_reproduction_takes_its_children_and_resumes(tmp_path):
    out = tmp_path / "rep"
    argv = [sys.executable, "-m", "shallowdeep", "reproduce", "--data", "digits", "--archs", "small"]
    # the two stages that need nothing else, two epochs each: killed once the CNN has an epoch
    argv += [
        "--out",
        str(out),
        "--stages",
        "cnn,sdn",
        "--cnn-epochs",
        "2",
        "--sdn-epochs",
        "2",
        "--max-concurrent",
        "2",
    ]
    parent = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline and parent.poll() is None:
            meta = out / "small" / "cnn" / "run.json"
            if meta.is_file() and json.loads(meta.read_text()).get("epochs"):
                break
            time.sleep(0.2)
        assert parent.poll() is None, "the reproduction ended before its CNN had an epoch"
        assert len(_children_of(out)) == 2  # the CNN and the SDN at once
    finally:
        parent.send_signal(signal.SIGKILL)
        parent.wait()
    gone = time.monotonic() + 15
    while _children_of(out) and time.monotonic() < gone:
        time.sleep(0.2)
    assert _children_of(out) == []  # no orphan goes on writing into the stages
    said: list[str] = []
    # the killed CNN stage continues where it stopped (the SDN's stage would too; left as it is here)
    reproduce("digits", out, ["small"], epochs={"cnn": 2}, stages=("cnn",), max_concurrent=2, log=said.append)
    assert any(line.startswith("[small/cnn] resuming at epoch 2 of") for line in said), said
    meta = json.loads((out / "small" / "cnn" / "run.json").read_text())
    assert meta["status"] == "complete" and len(meta["epochs"]) == 2


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"max_concurrent": 0}, "max_concurrent must be a whole number in 1..64"),
        ({"max_concurrent": True}, "max_concurrent must be a whole number"),
        ({"gpus": [0]}, "gpus needs a CUDA device"),
    ],
)
def test_bad_concurrency_is_refused_before_any_write(tmp_path, kwargs, pattern):
    with pytest.raises(UserError, match=pattern):
        reproduce("digits", tmp_path / "r", ["small"], device="cpu", log=None, **kwargs)
    assert not (tmp_path / "r").exists()


def test_on_cuda_each_stage_sees_one_gpu_numbered_as_the_parent_sees_it(monkeypatch):
    """No GPU here: the device count faked, the slots a CUDA reproduction would use."""
    import torch

    from shallowdeep import reproduction

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 3)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    k, slots = reproduction._concurrency("cuda", None, None, False)
    assert k == 6 and [(s.name, dict(s.env)) for s in slots] == [
        (f"cuda:{i}", {"CUDA_VISIBLE_DEVICES": str(i)}) for i in range(3)
    ]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,6,7")  # the parent's 0..2 are the machine's 4, 6, 7
    k, slots = reproduction._concurrency("cuda", 3, [2, 0], False)
    assert k == 3 and [dict(s.env)["CUDA_VISIBLE_DEVICES"] for s in slots] == ["7", "4"]
    k, slots = reproduction._concurrency("cuda:1", None, None, False)
    assert k == 2 and [s.name for s in slots] == ["cuda:1"]
    for bad in ([3], [0, 0], []):
        with pytest.raises(UserError, match="gpus must name distinct visible GPUs in 0..2"):
            reproduction._concurrency("cuda", None, bad, False)
    with pytest.raises(UserError, match="do not apply under torchrun"):
        reproduction._concurrency("cuda", 2, None, True)
    assert reproduction._concurrency("cuda", None, None, True) == (1, [])
