"""Data-parallel training under torchrun: two CPU processes with the gloo backend."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from shallowdeep.runs import TrainConfig, train_run


def _torchrun(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            "-m",
            "shallowdeep",
            *args,
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )


@pytest.fixture(scope="module")
def ddp_cnn(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    proc = _torchrun(
        "train",
        "--arch",
        "small",
        "--data",
        "digits",
        "--mode",
        "cnn",
        "--epochs",
        "2",
        "--device",
        "cpu",
        "--out",
        str(root / "cnn"),
        "--quiet",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root


def test_two_processes_train_one_run_with_identical_replicas(ddp_cnn, tmp_path):
    meta = json.loads((ddp_cnn / "cnn" / "run.json").read_text())
    assert meta["status"] == "complete" and meta["runtime"]["world_size"] == 2 and meta["runtime"]["ddp"]
    assert meta["runtime"]["ranks_agree"], meta["runtime"]["weights_sha256_per_rank"]
    assert len(set(meta["runtime"]["weights_sha256_per_rank"])) == 1
    # one process, the same global batch (128), seed and recipe: the shards see the same inputs per
    # step, only their augmentation draws and per-shard BN batch statistics differ. Stated tolerance:
    # each epoch's mean training loss within 2 % (measured here: 0.1-0.2 %).
    train_run(
        TrainConfig(out=str(tmp_path / "one"), mode="cnn", arch="small", data="digits", epochs=2, device="cpu"),
        progress=False,
        log=None,
    )
    one = json.loads((tmp_path / "one" / "run.json").read_text())
    for a, b in zip(meta["epochs"], one["epochs"]):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=0.02)


def test_ic_only_under_torchrun_keeps_the_cnn(ddp_cnn):
    proc = _torchrun(
        "train",
        "--mode",
        "ic-only",
        "--from",
        str(ddp_cnn / "cnn"),
        "--epochs",
        "1",
        "--device",
        "cpu",
        "--out",
        str(ddp_cnn / "ic"),
        "--quiet",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    meta = json.loads((ddp_cnn / "ic" / "run.json").read_text())
    cnn = json.loads((ddp_cnn / "cnn" / "run.json").read_text())
    assert meta["runtime"]["ranks_agree"]
    assert meta["epochs"][-1]["val_acc"][-1] == cnn["epochs"][-1]["val_acc"][-1]  # the frozen CNN's own accuracy


def test_a_global_batch_that_does_not_split_is_refused(tmp_path):
    proc = _torchrun(
        "train",
        "--arch",
        "small",
        "--data",
        "digits",
        "--mode",
        "cnn",
        "--epochs",
        "1",
        "--device",
        "cpu",
        "--batch-size",
        "65",
        "--out",
        str(tmp_path / "x"),
        "--quiet",
    )
    # each process ends with our one line; torchrun's own agent then reports the failed children
    assert proc.returncode != 0 and "shallowdeep train: error: the --batch-size 65" in proc.stderr
    assert "shallowdeep/" not in proc.stderr, "no traceback through our code"
    assert not (tmp_path / "x").exists()


def test_analyze_under_torchrun_collects_in_shards(tiny_runs, tmp_path):
    """Two processes collect the records in shards; rank 0 analyzes: the same records (to float
    rounding) and the same report figures as one process."""
    import shutil

    import numpy as np

    from shallowdeep.analysis import ExitRecord
    from shallowdeep.workflows import analyze_run

    one, two = (Path(shutil.copytree(tiny_runs / "ic", tmp_path / name)) for name in ("one", "two"))
    analyze_run(one, html=False)  # report.json and the records are compared
    proc = _torchrun("analyze", str(two), "--device", "cpu", "--quiet")
    assert proc.returncode == 0, proc.stderr[-3000:]
    for split in ("train", "val", "test"):
        a, b = (ExitRecord.load(r / "records" / f"{split}.safetensors") for r in (one, two))
        assert np.array_equal(a.ids, b.ids) and np.array_equal(a.labels, b.labels)
        assert np.allclose(a.logits, b.logits, atol=1e-4)  # batch composition moves CPU kernels by ~1e-5
    ra, rb = (json.loads((r / "report" / "report.json").read_text()) for r in (one, two))
    assert ra["early_exit"]["calibrated"]["threshold"] == rb["early_exit"]["calibrated"]["threshold"]
    assert ra["overthinking"]["correct"] == rb["overthinking"]["correct"]


def _parent(proc_dir: Path) -> int | None:
    try:  # /proc/PID/stat: "pid (name) state ppid ..."; the name may hold spaces, so split after ')'
        return int((proc_dir / "stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def test_a_killed_torchrun_training_resumes_under_torchrun_to_the_same_weights(ddp_cnn, tmp_path):
    """SIGKILL every process of a two-process run after its first checkpoint, resume it under
    torchrun: the weights equal the uninterrupted two-process run's, bit for bit."""
    import signal
    import time

    import torch
    from safetensors.torch import load_file

    killed = tmp_path / "killed"
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            "-m",
            "shallowdeep",
            "train",
            "--arch",
            "small",
            "--data",
            "digits",
            "--mode",
            "cnn",
            "--epochs",
            "2",
            "--device",
            "cpu",
            "--out",
            str(killed),
            "--quiet",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
        start_new_session=True,
    )
    deadline = time.time() + 300
    while not (killed / "checkpoint.safetensors").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    # torchrun starts each rank in a session of its own: kill the ranks (the agent's children), then the agent
    children = [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit() and _parent(p) == proc.pid]
    for pid in children:
        os.kill(pid, signal.SIGKILL)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert len(children) == 2
    assert (killed / "checkpoint.safetensors").exists() and not (killed / "model.safetensors").exists(), (
        "the run finished (or never checkpointed) before it could be killed"
    )
    assert json.loads((killed / "run.json").read_text())["status"] == "running"
    resumed = _torchrun("train", "--out", str(killed), "--resume", "--device", "cpu", "--quiet")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    meta = json.loads((killed / "run.json").read_text())
    assert meta["status"] == "complete" and meta["runtime"]["ranks_agree"] and len(meta["epochs"]) == 2
    a, b = load_file(ddp_cnn / "cnn" / "model.safetensors"), load_file(killed / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_reproduce_under_torchrun_trains_every_stage_in_shards_and_writes_once(tmp_path):
    out = tmp_path / "repro"
    proc = _torchrun(
        "reproduce",
        "--data",
        "digits",
        "--archs",
        "small",
        "--cnn-epochs",
        "1",
        "--ic-epochs",
        "1",
        "--sdn-epochs",
        "1",
        "--device",
        "cpu",
        "--out",
        str(out),
        "--quiet",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "shallowdeep/" not in proc.stderr, "no traceback through our code"
    assert proc.stdout.count("reproduction written to") == 1, proc.stdout  # rank 0 speaks, once
    result = json.loads((out / "reproduction.json").read_text())
    assert [r["kind"] for r in result["rows"]] == ["ic-only", "sdn"]
    for stage in ("cnn", "ic-only", "sdn"):
        meta = json.loads((out / "small" / stage / "run.json").read_text())
        assert meta["status"] == "complete" and meta["runtime"]["world_size"] == 2 and meta["runtime"]["ranks_agree"]
    for stage in ("ic-only", "sdn"):
        assert (out / "small" / stage / "report" / "report.json").is_file()
    assert not list(out.rglob("*.tmp*")), "nothing half-written"


@pytest.mark.parametrize(
    "argv, said",
    [
        (["list"], "list runs in one process, not under torchrun"),
        (["train", "--epochs", "1", "--out", "x"], "WORLD_SIZE is 2 but MASTER_ADDR and MASTER_PORT are not set"),
    ],
)
def test_a_torchrun_worker_ends_without_teardown_saying_one_line(argv, said, tmp_path):
    # a worker ends with os._exit (gloo's threads outlive the group and can abort the interpreter's
    # teardown): no teardown runs, yet its line and status arrive (the success path's output: the
    # reproduce test above)
    code = (
        "import sys, atexit; atexit.register(lambda: print('teardown ran', file=sys.stderr)); "
        "from shallowdeep.cli import main; sys.exit(main(sys.argv[1:]))"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("MASTER_ADDR", "MASTER_PORT")}
    env |= {"WORLD_SIZE": "2", "RANK": "1", "PYTHONWARNINGS": "ignore"}  # no group to join
    proc = subprocess.run(
        [sys.executable, "-c", code, *argv], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300
    )
    assert proc.returncode == 2 and proc.stdout == "" and "teardown ran" not in proc.stderr
    assert proc.stderr.startswith(f"shallowdeep {argv[0]}: error: {said}") and proc.stderr.count("\n") == 1, proc.stderr
    assert not (tmp_path / "x").exists()
    doc = (Path(__file__).resolve().parents[1] / "docs" / "errors.md").read_text()
    assert f"| {proc.stderr.strip()} |" in doc, "docs/errors.md's torchrun rows differ from what is printed"
