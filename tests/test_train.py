"""The three training modes, recipes, and resumable run folders."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

import shallowdeep
from shallowdeep import runs
from shallowdeep.core import io
from shallowdeep.core.errors import UserError
from shallowdeep.data import batches
from shallowdeep.models.sdn import SDN, build_sdn
from shallowdeep.runs import TrainConfig, train_run
from shallowdeep.runs.train import ReadyWhen
from shallowdeep.training import SDNMode, default_recipe, evaluate

QUIET = dict(progress=False, log=None)


def test_paper_recipes():
    r = default_recipe("cnn", "vgg16_bn")
    assert (r.optimizer, r.lr, r.momentum, r.weight_decay, r.batch_size, r.epochs, r.milestones) == (
        "sgd",
        0.1,
        0.9,
        5e-4,
        128,
        100,
        (35, 60, 85),
    )
    assert default_recipe("sdn", "resnet56").weight_decay == 1e-4
    assert default_recipe("cnn", "mobilenet").weight_decay == 1e-4
    assert default_recipe("cnn", "wrn32_4").weight_decay == 5e-4
    ic = default_recipe("ic-only", "resnet56")
    assert (ic.optimizer, ic.lr, ic.epochs, ic.milestones, ic.weight_decay) == ("adam", 1e-3, 25, (15,), 1e-4)
    assert r.lr_at(34) == 0.1 and r.lr_at(35) == pytest.approx(0.01) and r.lr_at(99) == pytest.approx(1e-4)
    assert default_recipe("cnn", "resnet56", epochs=20).milestones == (7, 12, 17)


def test_sdn_loss_weights_follow_reference_schedule():
    m = SDNMode()
    caps = (0.15, 0.30, 0.45, 0.60, 0.75, 0.90)
    for epoch in (0, 10, 99):
        w = m.weights(6, epoch, 100)
        assert w == [min(c, 0.01 + (epoch + 1) * c / 100) for c in caps]
    assert m.weights(6, 99, 100) == list(caps)
    outs = [torch.zeros(2, 3) for _ in range(7)]
    y = torch.tensor([0, 1])
    ln3 = torch.log(torch.tensor(3.0))
    assert m.loss(outs, y, 99, 100) == pytest.approx(float((sum(caps) + 1) * ln3), rel=1e-6)


@pytest.fixture
def cnn_run(tiny_runs) -> Path:
    return tiny_runs / "cnn"


def test_cnn_run_folder_describes_itself(cnn_run):
    meta = json.loads((cnn_run / "run.json").read_text())
    assert meta["status"] == "complete" and meta["model"]["kind"] == "cnn"
    assert meta["config"]["arch"] == "small" and meta["config"]["data"] == "digits" and meta["config"]["seed"] == 3
    assert meta["recipe"]["epochs"] == 3 and len(meta["epochs"]) == 3
    assert len(meta["epochs"][-1]["val_acc"]) == 1
    assert not (cnn_run / "checkpoint.safetensors").exists()
    model = shallowdeep.load(cnn_run)
    assert isinstance(model, shallowdeep.CNN) and not model.training


@pytest.mark.parametrize("compiled", [False, True])
def test_ic_only_keeps_the_cnn_bit_for_bit(cnn_run, tmp_path, digits, compiled):
    """Also compiled (the default on one GPU for a long run): the frozen backbone inside the compiled
    step, in eval mode, changes neither weights nor BN statistics, and the second epoch (after
    evaluate switched modes back and forth) does not recompile."""
    import torch._dynamo

    out = tmp_path / "ic"
    torch._dynamo.reset()
    old = torch._dynamo.config.error_on_recompile
    torch._dynamo.config.error_on_recompile = compiled
    try:
        train_run(TrainConfig(out=str(out), mode="ic-only", from_run=str(cnn_run), epochs=2, compile=compiled), **QUIET)
    finally:
        torch._dynamo.config.error_on_recompile = old
        torch._dynamo.reset()
    assert json.loads((out / "run.json").read_text())["runtime"]["compile"] == compiled
    cnn = shallowdeep.load(cnn_run)
    sdn = shallowdeep.load(out)
    assert isinstance(sdn, SDN) and sdn.num_outputs == 5
    before = cnn.state_dict()
    after = sdn.cnn.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before), "backbone or BN statistics changed"
    x = torch.cat([x for x, _ in shallowdeep.data.batches(digits, "test", 256)])
    with torch.no_grad():
        assert torch.equal(sdn(x)[-1], cnn(x))
    meta = json.loads((out / "run.json").read_text())
    assert meta["config"]["arch"] == "small" and meta["config"]["from_run"] == str(cnn_run.resolve())
    assert meta["from_run_weights_sha256"] == io.sha256_file(cnn_run / "model.safetensors")


def test_ic_only_refuses_a_run_that_is_not_a_cnn(cnn_run, tmp_path):
    sdn_out = tmp_path / "sdn"
    train_run(TrainConfig(out=str(sdn_out), mode="sdn", arch="small", data="digits", epochs=1), **QUIET)
    with pytest.raises(UserError, match="is not a CNN run"):
        train_run(TrainConfig(out=str(tmp_path / "x"), mode="ic-only", from_run=str(sdn_out), epochs=1), **QUIET)
    assert not (tmp_path / "x").exists()


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return runs.read_tensors(path / "model.safetensors")[0]


def test_resume_ends_with_the_same_weights(tmp_path):
    base = dict(mode="sdn", arch="small", data="digits", epochs=3, seed=7)
    train_run(TrainConfig(out=str(tmp_path / "whole"), **base), **QUIET)
    killed = tmp_path / "killed"
    train_run(TrainConfig(out=str(killed), **base), stop_after=1, **QUIET)
    assert (killed / "checkpoint.safetensors").is_file() and not (killed / "model.safetensors").exists()
    assert json.loads((killed / "run.json").read_text())["status"] == "running"
    with pytest.raises(UserError, match="did not finish"):
        shallowdeep.load(killed)
    train_run(TrainConfig(out=str(killed), resume=True), stop_after=1, **QUIET)  # a second kill
    said: list[str] = []
    train_run(TrainConfig(out=str(killed), resume=True), progress=False, log=said.append)
    assert said[0].startswith("resuming at epoch 3 of small (sdn) on digits") and ", 3 epochs, " in said[0], said
    a, b = _weights(tmp_path / "whole"), _weights(killed)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ma = json.loads((tmp_path / "whole" / "run.json").read_text())
    mb = json.loads((killed / "run.json").read_text())
    assert [e["val_acc"] for e in ma["epochs"]] == [e["val_acc"] for e in mb["epochs"]]


@pytest.mark.parametrize(
    "make",
    [lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9), lambda ps: torch.optim.Adam(ps, lr=1e-3)],
    ids=["sgd", "adam"],
)
def test_resumed_optimiser_state_has_its_parameters_strides(tmp_path, make):
    """Training on CUDA keeps weights channels-last; the checkpoint stores the optimiser state
    contiguous. PyTorch's fused CUDA step refuses state whose strides differ from the parameter's
    (a resumed compiled run on an H200 failed so), so the restore must give them back."""
    from shallowdeep.runs.weights import optimizer_from_tensors, optimizer_to_tensors

    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8)).to(memory_format=torch.channels_last)
    opt = make(net.parameters())
    net(torch.randn(4, 3, 8, 8)).square().mean().backward()
    opt.step()
    tensors, meta = optimizer_to_tensors(opt)
    (tmp_path / "ck.safetensors").write_bytes(runs.tensors_to_bytes(tensors))
    restored = make(net.parameters())
    optimizer_from_tensors(restored, runs.read_tensors(tmp_path / "ck.safetensors")[0], meta)
    conv = net[0].weight
    assert conv.stride() != conv.contiguous().stride()  # the case that matters: a channels-last weight
    for p in net.parameters():
        for name, v in opt.state[p].items():
            w = restored.state[p][name]
            assert torch.equal(w, v), name
            if v.shape == p.shape:
                assert w.stride() == p.stride(), name


def test_out_folder_rules(cnn_run, tmp_path):
    with pytest.raises(UserError, match="already holds a run"):
        train_run(TrainConfig(out=str(cnn_run), mode="cnn", arch="small", data="digits", epochs=1), **QUIET)
    with pytest.raises(UserError, match="finished run"):
        train_run(TrainConfig(out=str(cnn_run), resume=True), **QUIET)
    with pytest.raises(UserError, match="nothing to resume"):
        train_run(TrainConfig(out=str(tmp_path / "none"), resume=True), **QUIET)
    killed = tmp_path / "k"
    train_run(TrainConfig(out=str(killed), mode="cnn", arch="small", data="digits", epochs=2), stop_after=1, **QUIET)
    with pytest.raises(UserError, match="holds a different run"):
        train_run(TrainConfig(out=str(killed), mode="cnn", arch="resnet56", data="digits", resume=True), **QUIET)
    with pytest.raises(UserError, match="holds a different run"):
        train_run(TrainConfig(out=str(killed), epochs=5, resume=True), **QUIET)
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="not an empty folder"):
        train_run(TrainConfig(out=str(other), mode="cnn", arch="small", data="digits", epochs=1), **QUIET)


def test_hyperparameters_are_overridable(tmp_path):
    out = tmp_path / "r"
    train_run(
        TrainConfig(
            out=str(out), mode="cnn", arch="small", data="digits", epochs=1, batch_size=64, lr=0.05, weight_decay=1e-3
        ),
        **QUIET,
    )
    r = json.loads((out / "run.json").read_text())["recipe"]
    assert (r["batch_size"], r["lr"], r["weight_decay"]) == (64, 0.05, 1e-3)


def test_evaluate_reports_every_output(digits):
    torch.manual_seed(0)
    sdn = build_sdn("small", 10, 32)
    acc = evaluate(sdn, batches(digits, "val", 512))
    assert len(acc) == sdn.num_outputs and all(0 <= a <= 1 for a in acc)


def test_truncated_and_foreign_weights_refused(cnn_run, tmp_path):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(cnn_run, bad)
    data = (bad / "model.safetensors").read_bytes()
    (bad / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="not a valid safetensors file"):
        shallowdeep.load(bad)
    (bad / "model.safetensors").write_bytes(b"\x80\x04\x95 a pickle, not safetensors")
    with pytest.raises(UserError, match="not a valid safetensors file"):
        shallowdeep.load(bad)
    runs.save_weights(bad / "model.safetensors", build_sdn("small", 10, 32))
    with pytest.raises(UserError, match="does not fit"):
        shallowdeep.load(bad)


def test_atomic_write_never_leaves_a_torn_file(tmp_path):
    target = tmp_path / "f.json"
    io.write_json(target, {"a": 1})

    def explode(f):
        f.write(b'{"a": 2, "tor')
        raise KeyboardInterrupt  # killed mid-write

    with pytest.raises(KeyboardInterrupt):
        io.atomic_write(target, explode)
    assert json.loads(target.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["f.json"]


def test_nothing_is_unpickled():
    src = Path(shallowdeep.__file__).parent
    for py in src.rglob("*.py"):
        text = py.read_text()
        assert "import pickle" not in text and "allow_pickle=True" not in text, py
        # a user's PyTorch weights file is read with weights_only (tensors and plain containers only)
        calls = re.findall(r"torch\.load\(([^)]*)\)", text)
        assert all("weights_only=True" in c for c in calls), (py, calls)


@pytest.mark.parametrize("sig", ["SIGKILL", "SIGTERM"])
def test_a_killed_process_resumes_to_the_same_weights(tmp_path, sig):
    """Kill a real training process after its first checkpoint, resume it, compare weights. SIGKILL
    leaves it where it was; SIGTERM (what schedulers send) ends it with one line naming the epochs it
    keeps and the command that continues it."""
    import os
    import signal
    import subprocess
    import sys
    import time

    args = ["--arch", "small", "--data", "digits", "--mode", "cnn", "--epochs", "4", "--seed", "5", "--quiet"]
    train_run(
        TrainConfig(out=str(tmp_path / "whole"), mode="cnn", arch="small", data="digits", epochs=4, seed=5), **QUIET
    )
    killed = tmp_path / "killed"
    # the child computes with this process's thread count: bit-for-bit equality holds only at one count
    proc = subprocess.Popen(
        [sys.executable, "-m", "shallowdeep.cli", "train", *args, "--out", str(killed)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=os.environ | {"OMP_NUM_THREADS": str(torch.get_num_threads()), "PYTHONWARNINGS": "ignore"},
    )
    deadline = time.time() + 120
    while not (killed / "checkpoint.safetensors").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    os.kill(proc.pid, getattr(signal, sig))
    err = proc.communicate()[1]
    assert not (killed / "model.safetensors").exists(), "the process finished before it could be killed"
    if sig == "SIGTERM":
        from shallowdeep.core.words import counted

        meta = json.loads((killed / "run.json").read_text())
        kept = counted(len(meta["epochs"]), "finished epoch")
        assert proc.returncode == 143 and meta["status"] == "running" and meta["epochs"], (proc.returncode, meta)
        assert err == (
            f"shallowdeep train: terminated: {killed} keeps its {kept}; continue it with "
            f"`shallowdeep train --out {killed} --resume`\n"
        ), err
    # as if the kill had landed inside a checkpoint write
    (killed / ".checkpoint.safetensors.abc123.tmp").write_bytes(b"torn")
    train_run(TrainConfig(out=str(killed), resume=True), **QUIET)
    assert not [p for p in killed.iterdir() if p.suffix == ".tmp"], "resuming removes torn temporary files"
    a, b = _weights(tmp_path / "whole"), _weights(killed)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_checkpoint_snapshot_is_taken_when_submitted_and_written_behind(tmp_path, monkeypatch):
    """The loop hands the checkpoint over and goes on: the tensors are copied at once (the training
    mutates the originals in place), written by a background thread, run.json after the checkpoint."""
    from shallowdeep.runs.checkpoint import CheckpointWriter, snapshot
    from shallowdeep.runs.folder import RunFolder

    w = torch.arange(12.0).reshape(3, 4).t()  # not contiguous: the file needs it contiguous
    snap = snapshot({"w": w})
    w.add_(100)  # the next epoch's step
    assert torch.equal(snap["w"], torch.arange(12.0).reshape(3, 4).t()) and snap["w"].is_contiguous()

    run = RunFolder(tmp_path)
    order: list[str] = []
    real_bytes, real_json = RunFolder.write_bytes, RunFolder.write_json
    monkeypatch.setattr(RunFolder, "write_bytes", lambda self, p, d: order.append(p.name) or real_bytes(self, p, d))
    monkeypatch.setattr(RunFolder, "write_json", lambda self, p, o: order.append(p.name) or real_json(self, p, o))
    writer = CheckpointWriter(run)
    writer.submit({"w": w}, {"epoch": 1}, {"status": "running"})
    w.zero_()
    writer.wait()
    tensors, meta = runs.read_tensors(run.checkpoint)
    assert torch.equal(tensors["w"], torch.arange(12.0).reshape(3, 4).t() + 100) and meta == {"epoch": 1}
    assert order == [run.checkpoint.name, run.run_json.name]


def test_run_json_says_where_the_time_beside_the_epochs_went(tmp_path, monkeypatch):
    """``time_parts`` splits a run's wall time beside its epochs (data loading, model, device, loop
    start, between epochs, finish) and adds every call's: a slow data set and slow checkpoint
    submissions show up where they happened, and the parts with the setup and the epochs make the
    wall time."""
    import time

    from shallowdeep.runs import train as train_mod
    from shallowdeep.runs.checkpoint import CheckpointWriter

    real_load, real_submit = train_mod.load_dataset, CheckpointWriter.submit
    monkeypatch.setattr(train_mod, "load_dataset", lambda *a, **k: time.sleep(0.3) or real_load(*a, **k))
    monkeypatch.setattr(CheckpointWriter, "submit", lambda self, *a: time.sleep(0.2) or real_submit(self, *a))
    out = tmp_path / "r"
    cfg = dict(mode="cnn", arch="small", data="digits", epochs=3)
    train_run(TrainConfig(out=str(out), **cfg), stop_after=2, **QUIET)
    killed = json.loads((out / "run.json").read_text())["time_parts"]
    # at the kill, the last checkpoint's run.json holds the parts up to that checkpoint
    assert killed["setup_data"] >= 0.3 and killed["between_epochs"] >= 0.2 and "finish" not in killed
    train_run(TrainConfig(out=str(out), resume=True), **QUIET)
    meta = json.loads((out / "run.json").read_text())
    parts = meta["time_parts"]
    assert set(parts) == {"setup_data", "setup_model", "setup_device", "loop_start", "between_epochs", "finish"}
    # both calls' data loading; the submissions of epochs 1 and 3 (the killed call's last one ran after
    # its run.json was made, and is lost with the kill like the rest of that call's wall time)
    assert parts["setup_data"] >= 0.6 and 0.4 <= parts["between_epochs"] < 0.6
    assert parts["setup_data"] + parts["setup_model"] + parts["setup_device"] <= meta["setup_seconds"]
    epochs = sum(e["seconds"] for e in meta["epochs"])
    beside = meta["setup_seconds"] + parts["loop_start"] + parts["between_epochs"] + parts["finish"]
    assert meta["wall_seconds"] - 0.1 < epochs + beside <= meta["wall_seconds"] + 0.01


def test_a_failed_checkpoint_write_stops_the_run_with_its_error(tmp_path, monkeypatch):
    from shallowdeep.runs.folder import RunFolder

    real = RunFolder.write_bytes

    def full_disk(self, path, data):
        if path.name == RunFolder(tmp_path).checkpoint.name:
            raise OSError(28, "No space left on device")
        return real(self, path, data)

    monkeypatch.setattr(RunFolder, "write_bytes", full_disk)
    with pytest.raises(OSError, match="No space left"):
        train_run(
            TrainConfig(out=str(tmp_path / "r"), mode="cnn", arch="small", data="digits", epochs=2),
            progress=False,
            log=None,
        )
    meta = json.loads((tmp_path / "r" / "run.json").read_text())
    assert meta["status"] == "running" and not (tmp_path / "r" / "model.safetensors").exists()


def test_a_full_disk_mid_run_names_the_file_and_the_epochs_kept(tmp_path, monkeypatch, capsys):
    """The disk fills while the second epoch's checkpoint is written: the one line names that file
    (the operating system's error names none) and says the run keeps its first epoch, and how to go on."""
    from shallowdeep.cli import main
    from shallowdeep.runs.folder import RunFolder

    real, written = RunFolder.write_bytes, []

    def full_disk(self, path, data):
        if path.name == RunFolder(tmp_path).checkpoint.name:
            written.append(path)
            if len(written) == 2:  # as a write into a full disk fails: inside the file, no name given
                return atomic_write(self.inside(path), lambda f: (_ for _ in ()).throw(OSError(28, "No space left")))
        return real(self, path, data)

    from shallowdeep.core.io import atomic_write

    monkeypatch.setattr(RunFolder, "write_bytes", full_disk)
    out = tmp_path / "r"
    argv = ["train", "--mode", "cnn", "--arch", "small", "--data", "digits", "--epochs", "3", "--out", str(out)]
    assert main([*argv, "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{written[1]}: No space left" in err[0], err
    assert f"{out} keeps its 1 finished epoch:" in err[0] and "(--resume)" in err[0], err
    assert [p.name for p in out.iterdir() if p.name.endswith(".tmp")] == []  # nothing half-written
    monkeypatch.setattr(RunFolder, "write_bytes", real)
    assert main(["train", "--out", str(out), "--resume", "--quiet"]) == 0
    assert len(json.loads((out / "run.json").read_text())["epochs"]) == 3


def test_a_compiled_run_trains_eagerly_until_its_step_is_ready(tmp_path, fake_compile, digits):
    """While another process compiles the step (``compile_ready`` says no), the epochs step the
    uncompiled module; from the epoch it says yes, the compiled one; it is not asked again."""
    compiled_steps = fake_compile
    asked: list[int] = []

    def ready() -> bool:
        asked.append(1)
        return len(asked) >= 3

    lines: list[str] = []
    out = tmp_path / "r"
    train_run(
        TrainConfig(out=str(out), mode="sdn", arch="small", data="digits", epochs=4, compile=True),
        progress=False,
        log=lines.append,
        beside=ReadyWhen(ready),
    )
    meta = json.loads((out / "run.json").read_text())
    assert [e.get("eager", False) for e in meta["epochs"]] == [True, True, False, False]
    assert len(asked) == 3 and "the compiled step is ready: compiled from epoch 3" in lines
    assert len(compiled_steps) == 2 * (len(digits.train) // meta["recipe"]["batch_size"])  # drop_last: compiled
    assert meta["status"] == "complete" and "eager while the step compiles" in lines[1]


def test_off_a_terminal_training_says_how_it_goes(tmp_path, monkeypatch, capsys):
    """No bar in a log file: a line every so often with the batch, the rate and when the epoch ends;
    every epoch line has its images per second (run.json too) and when the run should end."""
    import re

    import shallowdeep.training.loop as loop

    monkeypatch.setattr(loop, "HEARTBEAT_SECONDS", 0.0)  # every batch, here
    said: list[str] = []
    out = tmp_path / "r"
    train_run(
        TrainConfig(out=str(out), mode="cnn", arch="small", data="digits", epochs=2), progress=True, log=said.append
    )
    beats = capsys.readouterr().err.splitlines()
    n = len(beats) // 2
    assert n > 2 and all(
        re.fullmatch(r"epoch [12]/2  batch \d+/\d+  [\d,]+ img/s  epoch ends in 0:\d\d", b) for b in beats
    )
    assert beats[n - 1].startswith(f"epoch 1/2  batch {n}/{n}  ")
    assert re.search(r"\(\d+\.\ds, [\d,]+ img/s; run ends in ~0:\d\d\)$", said[1]), said
    assert re.search(r"\(\d+\.\ds, [\d,]+ img/s\)$", said[2]), said  # the last: nothing left
    epochs = json.loads((out / "run.json").read_text())["epochs"]
    assert all(e["images_per_second"] > 0 for e in epochs)
    monkeypatch.setattr(loop, "HEARTBEAT_SECONDS", 3600.0)
    train_run(TrainConfig(out=str(tmp_path / "q"), mode="cnn", arch="small", data="digits", epochs=1), progress=True)
    assert capsys.readouterr().err == ""  # no line before its time
