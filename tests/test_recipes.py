"""Recipes a user can set, configuration files, replay, precision/compile layers, and reproduce."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from shallowdeep.cli import main
from shallowdeep.core.errors import UserError
from shallowdeep.runs import TrainConfig, train_run
from shallowdeep.training import Recipe, default_recipe

QUIET = dict(progress=False, log=None)


def _meta(path: Path) -> dict:
    return json.loads((path / "run.json").read_text())


def test_schedule_comes_from_lr_scheduler_with_warmup_and_milestones():
    r = Recipe(epochs=8, lr=0.1, milestones=(4, 6), gamma=0.5, warmup_epochs=2).check()
    lrs = [r.lr_at(e) for e in range(8)]
    assert lrs[0] == pytest.approx(0.1 / 3) and lrs[1] == pytest.approx(0.2 / 3)  # linear warm-up
    assert lrs[2:4] == pytest.approx([0.1, 0.1]) and lrs[4:6] == pytest.approx([0.05, 0.05])
    assert lrs[6:] == pytest.approx([0.025, 0.025])
    # the paper's default scales its milestones with the epochs; explicit milestones are kept
    assert default_recipe("cnn", "resnet56", 4).milestones == (1, 2, 3)
    assert Recipe(epochs=4, milestones=(3,)).check().lr_at(2) == pytest.approx(0.1)


@pytest.mark.parametrize(
    "field,value,pattern",
    [
        ("lr", float("nan"), "lr"),
        ("lr", float("inf"), "lr"),
        ("weight_decay", float("nan"), "weight_decay"),
        ("momentum", 1.5, "momentum"),
        ("milestones", (5, 3), "milestones"),
        ("warmup_epochs", 10, "warmup_epochs"),
        ("label_smoothing", -0.1, "label_smoothing"),
        ("optimizer", "lbfgs", "optimizer"),
        ("epochs", 0, "epochs"),
    ],
)
def test_bad_recipe_values_are_refused(field, value, pattern):
    from dataclasses import replace

    with pytest.raises(UserError, match=pattern):
        replace(Recipe(epochs=10), **{field: value}).check()


def test_recipe_flags_reach_run_json_and_the_history(tmp_path, capsys):
    out = tmp_path / "r"
    assert (
        main(
            [
                "train",
                "--arch",
                "small",
                "--data",
                "digits",
                "--mode",
                "cnn",
                "--epochs",
                "3",
                "--optimizer",
                "sgd",
                "--nesterov",
                "--momentum",
                "0.8",
                "--milestones",
                "2",
                "--gamma",
                "0.5",
                "--label-smoothing",
                "0.1",
                "--lr",
                "0.05",
                "--out",
                str(out),
                "--quiet",
            ]
        )
        == 0
    )
    m = _meta(out)
    assert m["recipe"]["milestones"] == [2] and m["recipe"]["nesterov"] is True
    assert (m["recipe"]["gamma"], m["recipe"]["label_smoothing"], m["recipe"]["momentum"]) == (0.5, 0.1, 0.8)
    assert [e["lr"] for e in m["epochs"]] == pytest.approx([0.05, 0.05, 0.025])


def test_config_file_flags_override_and_run_json_replays(tmp_path, tiny_runs):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("arch: small\ndata: digits\nmode: cnn\nepochs: 2\nbatch-size: 64\nlr: 0.07\n")
    out = tmp_path / "y"
    assert main(["train", "--config", str(cfg), "--lr", "0.03", "--out", str(out), "--quiet"]) == 0
    m = _meta(out)
    assert m["recipe"]["batch_size"] == 64 and m["recipe"]["lr"] == 0.03 and m["recipe"]["epochs"] == 2
    # a finished run's run.json replays it: same configuration and recipe, same weights on the CPU
    replay = tmp_path / "replay"
    assert main(["train", "--config", str(tiny_runs / "cnn" / "run.json"), "--out", str(replay), "--quiet"]) == 0
    a, b = _meta(tiny_runs / "cnn"), _meta(replay)
    assert a["config"] == b["config"] and a["recipe"] == b["recipe"]
    assert a["weights_sha256"] == b["weights_sha256"], "a replay on the CPU is bit-for-bit the original"


def test_bad_config_files(tmp_path, capsys):
    (tmp_path / "bad.json").write_text("{not json")
    (tmp_path / "odd.json").write_text('{"arch": "small", "colour": "red"}')
    for f, pattern in (
        ("bad.json", "is not valid JSON"),
        ("odd.json", "unknown settings: colour"),
        ("none.yaml", "does not exist"),
    ):
        assert main(["train", "--config", str(tmp_path / f), "--out", str(tmp_path / "o"), "--quiet"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and pattern in err[0], err
    assert not (tmp_path / "o").exists()


def test_bf16_autocast_trains_on_the_cpu(tmp_path):
    out = tmp_path / "bf16"
    train_run(TrainConfig(out=str(out), mode="sdn", arch="small", data="digits", epochs=1, precision="bf16"), **QUIET)
    m = _meta(out)
    assert m["runtime"]["precision"] == "bf16" and m["status"] == "complete"
    assert all(0 <= a <= 1 for a in m["epochs"][0]["val_acc"]) and math.isfinite(m["epochs"][0]["train_loss"])
    from shallowdeep.runs import read_tensors

    tensors, _ = read_tensors(out / "model.safetensors")
    assert {t.dtype for t in tensors.values() if t.is_floating_point()} == {torch.float32}  # fp32 master weights


def test_compiled_step_matches_eager_on_the_cpu():
    """torch.compile wraps the step only: a few compiled steps give the same loss as eager ones."""
    from shallowdeep.data import batches, load_dataset
    from shallowdeep.models.sdn import build_sdn
    from shallowdeep.training import Objective, Runtime, make_mode, make_optimizer, train_one_epoch

    data = load_dataset("digits")
    losses = []
    for compiled in (False, True):
        torch.manual_seed(0)
        sdn = build_sdn("small", 10, 32)
        runtime = Runtime(torch.device("cpu"), compile=compiled)
        mode = make_mode("sdn")
        recipe = default_recipe("sdn", "small", 2)
        opt = make_optimizer(mode.parameters(sdn), recipe)
        stepped = runtime.prepare(Objective(sdn, mode))
        import itertools

        steps = itertools.islice(
            iter(batches(data, "train", 100, train=True, generator=torch.Generator().manual_seed(1))), 3
        )
        losses.append(train_one_epoch(sdn, stepped, mode, steps, opt, runtime, 0, 2, progress=False))
    assert losses[1] == pytest.approx(losses[0], rel=1e-3)


def test_compiled_training_never_recompiles_and_resumes_compiled(tmp_path):
    """A compiled run steps at one batch shape (the last partial batch is left out), so nothing
    recompiles after the first step (dynamo is told to fail on a recompile); a resumed compiled run
    stays compiled and ends with the uninterrupted run's weights."""
    import torch._dynamo

    from shallowdeep.data import batches, load_dataset
    from shallowdeep.runs import read_tensors

    data = load_dataset("digits")
    n, b = len(data.train), 100
    assert n % b, "the test needs a partial last batch"
    assert len(batches(data, "train", b, train=True, drop_last=True)) == n // b
    got = sum(
        len(y)
        for _, y in batches(data, "train", b, train=True, generator=torch.Generator().manual_seed(0), drop_last=True)
    )
    assert got == n - n % b
    base = dict(mode="sdn", arch="small", data="digits", epochs=2, batch_size=b, device="cpu", compile=True)
    torch._dynamo.reset()
    old = torch._dynamo.config.error_on_recompile
    torch._dynamo.config.error_on_recompile = True
    try:
        train_run(TrainConfig(out=str(tmp_path / "whole"), **base), **QUIET)
        train_run(TrainConfig(out=str(tmp_path / "k"), **base), stop_after=1, **QUIET)
        torch._dynamo.reset()
        train_run(TrainConfig(out=str(tmp_path / "k"), resume=True), **QUIET)
    finally:
        torch._dynamo.config.error_on_recompile = old
        torch._dynamo.reset()
    meta = _meta(tmp_path / "k")
    assert meta["runtime"]["compile"] and meta["runtime"]["drop_last"] and not meta["runtime"]["cuda_graphs"]
    a, _ = read_tensors(tmp_path / "whole" / "model.safetensors")
    k, _ = read_tensors(tmp_path / "k" / "model.safetensors")
    assert all(torch.equal(a[key], k[key]) for key in a)


def test_reproduce_end_to_end_and_resume(tmp_path, monkeypatch):
    from shallowdeep.reproduction import reproduce

    out = tmp_path / "rep"
    # a reproduction killed during its CNN stage: the stage holds a checkpoint after one epoch
    train_run(
        TrainConfig(out=str(out / "small" / "cnn"), mode="cnn", arch="small", data="digits", epochs=2),
        stop_after=1,
        **QUIET,
    )
    assert _meta(out / "small" / "cnn")["status"] == "running"
    killed_wall = _meta(out / "small" / "cnn")["wall_seconds"]
    from shallowdeep.data import registry as data_mod

    reads = []
    real_digits = data_mod._DATASETS["digits"]
    monkeypatch.setitem(data_mod._DATASETS, "digits", lambda *a: reads.append(a) or real_digits(*a))
    result = reproduce(
        "digits", out, ["small"], epochs={"cnn": 2, "ic-only": 1, "sdn": 1}, log=None, progress=False
    ).to_json()
    assert len(reads) == 1  # three stages and two analyses of one data set: read once (data.reuse_loaded)
    data_mod.load_dataset("digits")
    assert len(reads) == 2  # after the call nothing is kept
    assert _meta(out / "small" / "cnn")["status"] == "complete" and len(_meta(out / "small" / "cnn")["epochs"]) == 2
    assert [(r["arch"], r["kind"]) for r in result["rows"]] == [("small", "ic-only"), ("small", "sdn")]
    for f in ("reproduction.md", "reproduction.json", "index.html"):
        assert (out / f).is_file()
    page = (out / "index.html").read_text()
    assert (
        'href="small/ic-only/report/report.html"' in page
        and (out / "small" / "sdn" / "report" / "report.html").is_file()
    )
    md = (out / "reproduction.md").read_text()
    assert "| small | ic-only |" in md and "The paper's claims" in md
    stages = result["rows"][0]["stage_seconds"]
    assert set(stages) == {"cnn", "ic-only", "analyze ic-only", "sdn", "analyze sdn"}
    assert f"total {sum(stages.values()):.1f} s" in md
    in_epochs = result["rows"][0]["stage_epoch_seconds"]
    for k in ("cnn", "ic-only", "sdn"):  # a stage's wall time holds its epochs and what surrounds them
        meta = _meta(out / "small" / k)
        assert stages[k] == meta["wall_seconds"] > in_epochs[k] + meta["setup_seconds"] and meta["setup_seconds"] > 0
        assert f"{k} {stages[k]:.1f} s ({in_epochs[k]:.1f} s)" in md
    cnn = _meta(out / "small" / "cnn")  # the killed call's time counts too
    assert stages["cnn"] > killed_wall + cnn["epochs"][1]["seconds"] and killed_wall > cnn["epochs"][0]["seconds"]
    assert result["call_seconds"] >= sum(v for k, v in stages.items() if k != "cnn")  # the CNN resumed here: 1 epoch
    assert f"took {result['call_seconds']:.1f} s" in md
    assert "How each stage trained" in md and "small: cnn (cpu, fp32), ic-only (cpu, fp32), sdn (cpu, fp32)" in md
    assert result["rows"][1]["stage_runtime"]["sdn"] == _meta(out / "small" / "sdn")["runtime"]
    page = (out / "index.html").read_text()  # the page says what the markdown says below its table
    assert f"total {sum(stages.values()):.1f} s" in page and "The paper&#x27;s claims" in page
    assert all(f"{k} {stages[k]:.1f} s ({in_epochs[k]:.1f} s)" in page for k in ("cnn", "ic-only", "sdn"))
    assert "<li>small ic-only: IC 1 " in page and "Median epoch time: small ic-only" in page
    for row in result["rows"]:  # what predict uses: the run's calibration.json, as analyze chose it
        cal = json.loads((out / "small" / row["kind"] / "calibration.json").read_text())
        assert row["engine"]["per_ic"] == ("thresholds" in cal)
        assert row["engine"]["thresholds"] == cal.get("thresholds", [cal["threshold"]])
    with pytest.raises(UserError, match="unknown architecture"):
        reproduce("digits", out, ["nope"], log=None)

    # run again: every stage and both analyses are kept (the analyses' times as measured then)
    from shallowdeep import reproduction

    real = reproduction.analyze_run
    calls = []
    monkeypatch.setattr(
        reproduction, "analyze_run", lambda run, *a, **k: calls.append(Path(run).name) or real(run, *a, **k)
    )
    again = reproduce(
        "digits", out, ["small"], epochs={"cnn": 2, "ic-only": 1, "sdn": 1}, log=None, progress=False
    ).to_json()
    assert calls == []
    strip = lambda rows: [{k: v for k, v in r.items() if k != "stage_seconds"} for r in rows]  # noqa: E731
    assert strip(again["rows"]) == strip(result["rows"])
    for kind in ("ic-only", "sdn"):
        report_json = json.loads((out / "small" / kind / "report" / "report.json").read_text())
        assert again["rows"][0]["stage_seconds"][f"analyze {kind}"] == report_json["wall_seconds"]
    # an analysis made with other options is not the reproduction's: analyzed again
    real(out / "small" / "sdn", max_drop=0.05)
    reproduce("digits", out, ["small"], epochs={"cnn": 2, "ic-only": 1, "sdn": 1}, log=None, progress=False)
    assert calls == ["sdn"]


def test_reproduce_some_stages_then_the_rest(tmp_path):
    """`stages` runs part of a reproduction (the SDN from scratch first, when time is short); the
    full reproduction afterwards keeps that finished stage and runs the others."""
    from shallowdeep.reproduction import reproduce

    out = tmp_path / "rep"
    epochs = {"cnn": 1, "ic-only": 1, "sdn": 1}
    with pytest.raises(UserError, match="ic-only stage needs a finished CNN"):
        reproduce("digits", out, ["small"], epochs=epochs, stages=("ic-only",), log=None, progress=False)
    with pytest.raises(UserError, match="unknown or no stage"):
        reproduce("digits", out, ["small"], epochs=epochs, stages=("sdn", "fine-tune"), log=None, progress=False)
    assert not (out / "small").exists()
    result = reproduce("digits", out, ["small"], epochs=epochs, stages=("sdn",), log=None, progress=False).to_json()
    assert [r["kind"] for r in result["rows"]] == ["sdn"] and not (out / "small" / "cnn").exists()
    weights = (out / "small" / "sdn" / "model.safetensors").read_bytes()
    said: list[str] = []
    result = reproduce("digits", out, ["small"], epochs=epochs, log=said.append, progress=False).to_json()
    assert [r["kind"] for r in result["rows"]] == ["ic-only", "sdn"]
    assert any("sdn is finished: kept" in line for line in said)
    assert (out / "small" / "sdn" / "model.safetensors").read_bytes() == weights


def test_reproduce_analyzes_the_ic_only_sdn_beside_the_next_stage(tmp_path, monkeypatch):
    """On a GPU the IC-only SDN is analyzed, its records collected on that device included, by a child
    process while the SDN trains (here on the CPU, told to); the table counts the part the pipeline
    waited for and shows the child's own time beside it. A child that fails leaves the analysis to the
    pipeline, where its error would reach the user."""
    from shallowdeep import reproduction, workflows
    from shallowdeep.reproduction import reproduce
    from shallowdeep.workflows import kept_analysis

    monkeypatch.setattr(reproduction, "ANALYSIS_BESIDE_ON", ("cpu",))
    collected_here: list[str] = []
    real_records = workflows.run_records
    monkeypatch.setattr(
        workflows,
        "run_records",
        lambda run, *a, **k: collected_here.append(Path(run).name) or real_records(run, *a, **k),
    )
    epochs = {"cnn": 1, "ic-only": 1, "sdn": 1}
    said: list[str] = []
    result = reproduce("digits", tmp_path / "a", ["small"], epochs=epochs, log=said.append, progress=False).to_json()
    assert [r["kind"] for r in result["rows"]] == ["ic-only", "sdn"]
    assert any("in a background process while the next stage trains" in line for line in said)
    beside = result["rows"][0]["stage_background_seconds"]
    assert set(beside) == {"analyze ic-only"}  # the SDN's analysis has no next stage: made in the pipeline
    ic_only = tmp_path / "a" / "small" / "ic-only"
    report = json.loads((ic_only / "report" / "report.json").read_text())
    assert beside["analyze ic-only"] == report["wall_seconds"] and kept_analysis(ic_only) is not None
    assert (ic_only / "calibration.json").is_file()
    stages = result["rows"][0]["stage_seconds"]
    md = (tmp_path / "a" / "reproduction.md").read_text()
    assert (
        f"analyze ic-only {stages['analyze ic-only']:.1f} s (+{beside['analyze ic-only']:.1f} s in the background)"
        in md
    )
    assert f"total {sum(stages.values()):.1f} s" in md  # the waited-for part only: the wall time it took
    assert 0 < report["pipeline_seconds"] <= stages["analyze ic-only"]  # starting the child, waiting for it
    assert collected_here == ["sdn"] and (ic_only / "records" / "test.safetensors").is_file()  # by the child
    # a later call keeps the analysis and still counts only the pipeline's part in the total
    again = reproduce("digits", tmp_path / "a", ["small"], epochs=epochs, log=None, progress=False).to_json()
    assert again["rows"][0]["stage_seconds"]["analyze ic-only"] == report["pipeline_seconds"]
    assert again["rows"][0]["stage_background_seconds"] == {"analyze ic-only": report["wall_seconds"]}

    real_process = reproduction._analysis_process
    # a child that fails (here told to analyze a folder holding no run)
    monkeypatch.setattr(
        reproduction,
        "_analysis_process",
        lambda run, seconds, device: real_process(tmp_path / "nowhere", seconds, device),
    )
    said.clear()
    failed = reproduce("digits", tmp_path / "b", ["small"], epochs=epochs, log=said.append, progress=False).to_json()
    # why it failed reaches the user: the last line of its error
    why = [line.split(" failed (")[1] for line in said if "background analysis" in line]
    assert len(why) == 1 and "nowhere" in why[0] and why[0].endswith("): analyzing it here"), said
    assert [r["kind"] for r in failed["rows"]] == ["ic-only", "sdn"] and failed["rows"][0][
        "stage_background_seconds"
    ] == {}
    assert kept_analysis(tmp_path / "b" / "small" / "ic-only") is not None
    assert failed["rows"][0]["outputs"] == result["rows"][0]["outputs"]  # same seed, same figures either way

    # the SDN stage fails while the analysis beside it runs: its error goes on, the analysis finishes
    monkeypatch.undo()
    monkeypatch.setattr(reproduction, "ANALYSIS_BESIDE_ON", ("cpu",))
    real_stage = reproduction._stage

    def sdn_fails(out, cfg, log, progress, *hooks):
        if out.name == "sdn":
            raise RuntimeError("the SDN stage broke")
        return real_stage(out, cfg, log, progress, *hooks)

    monkeypatch.setattr(reproduction, "_stage", sdn_fails)
    with pytest.raises(RuntimeError, match="the SDN stage broke"):
        reproduce("digits", tmp_path / "c", ["small"], epochs=epochs, log=None, progress=False)
    assert kept_analysis(tmp_path / "c" / "small" / "ic-only") is not None


def test_compile_by_default_only_where_it_pays_back():
    """Compilation is on by default only on one CUDA device for runs with the steps to pay it back
    (the measured rule); asked for or refused explicitly, it is what was asked; a resumed run keeps
    what it had (run.json's runtime is passed back explicitly)."""
    from shallowdeep.training import COMPILE_PAYBACK_STEPS, Runtime

    cuda, cpu = torch.device("cuda"), torch.device("cpu")  # device objects only: nothing runs on them
    long, short = COMPILE_PAYBACK_STEPS, COMPILE_PAYBACK_STEPS - 1
    auto = Runtime.default(cuda, steps=long)
    assert auto.compile and auto.compile_auto and auto.cuda_graphs and auto.describe()["compile_auto"]
    assert not Runtime.default(cuda, steps=short).compile
    assert not Runtime.default(cuda).compile  # steps unknown: no guess
    assert not Runtime.default(cpu, steps=10 * long).compile
    assert not Runtime.default(cuda, ddp=True, steps=10 * long).compile
    assert not Runtime.default(cuda, compile=False, steps=10 * long).compile
    asked = Runtime.default(cpu, compile=True, steps=1)
    assert asked.compile and not asked.compile_auto
    with pytest.raises(UserError, match="unknown compile_backend 'tensorrt'"):
        Runtime(cpu, compile=True, compile_backend="tensorrt")
    assert Runtime(cpu, compile=True, compile_backend="cudagraphs").describe()["compile_backend"] == "cudagraphs"


def test_precision_default_is_bf16_on_gpus_that_have_it(monkeypatch):
    """bf16 autocast by default on a GPU that computes in bf16 natively (issue 10; measured within
    0.07 points of fp32), fp32 on an older GPU and on the CPU; an explicit precision, or a resumed
    run's recorded one, wins either way."""
    from shallowdeep.compute import devices
    from shallowdeep.training import Runtime, runtime

    cuda, cpu = torch.device("cuda"), torch.device("cpu")  # device objects only: nothing runs on them
    assert not devices.native_bf16(cpu)
    if not torch.cuda.is_available():
        assert not devices.native_bf16(cuda)  # no GPU to ask: never assumed
    monkeypatch.setattr(runtime, "native_bf16", lambda d: d.type == "cuda")  # an Ampere or later GPU
    assert Runtime.default(cuda).precision == "bf16" and Runtime.default(cuda, steps=10**6).precision == "bf16"
    assert Runtime.default(cpu).precision == "fp32"
    assert Runtime.default(cuda, "fp32").precision == "fp32" and Runtime.default(cpu, "bf16").precision == "bf16"
    monkeypatch.setattr(runtime, "native_bf16", lambda d: False)  # a T4 or a V100
    assert Runtime.default(cuda).precision == "fp32" and Runtime.default(cuda, "bf16").precision == "bf16"
