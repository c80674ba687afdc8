"""Grad-CAM of disagreements (grad-cam package) and the backdoor experiment, on the embedded default."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from shallowdeep.cli import main
from shallowdeep.core.errors import UserError
from shallowdeep.data.poison import Backdoor, apply_trigger, poison, poisoned_dataset, triggered_split
from shallowdeep.inference.explain import OutputSelector, explain_output, target_block
from shallowdeep.models.sdn import build_sdn
from shallowdeep.runs import TrainConfig, train_run

QUIET = dict(progress=False, log=None)


# ------------------------------------------------------------------------------------------ backdoor


@pytest.mark.parametrize("size,expect", [(32, (5, 26, 26)), (64, (10, 52, 52)), (16, (2, 13, 13)), (8, (1, 6, 6))])
def test_trigger_lands_where_specified_on_every_size(size, expect):
    b = Backdoor.default(size)
    assert (b.size, b.row, b.col) == expect
    b.check(size, 10)
    imgs = torch.zeros(3, size, size, 3, dtype=torch.uint8)
    out = apply_trigger(imgs, b)
    mask = torch.zeros(size, size, dtype=torch.bool)
    mask[b.row : b.row + b.size, b.col : b.col + b.size] = True
    assert (out[:, mask] == 255).all() and (out[:, ~mask] == 0).all()
    assert (imgs == 0).all(), "the input images must not be modified"


def test_trigger_options_and_bad_values():
    b = Backdoor.default(32, rate=0.2, target=3, size=4, pos=(0, 1))
    assert (b.size, b.row, b.col, b.rate, b.target) == (4, 0, 1, 0.2, 3)
    with pytest.raises(UserError, match="does not fit"):
        Backdoor.default(32, pos=(30, 30)).check(32, 10)
    with pytest.raises(UserError, match="poison_rate"):
        Backdoor.default(32, rate=0.0).check(32, 10)
    with pytest.raises(UserError, match="target_class"):
        Backdoor.default(32, target=10).check(32, 10)


def test_poisoning_touches_exactly_the_requested_share(digits):
    b = Backdoor.default(32, rate=0.15, target=2)
    poisoned, idx = poison(digits.train, b)
    n = len(digits.train)
    assert len(idx) == round(0.15 * n) and len(set(idx.tolist())) == len(idx)
    changed = (poisoned.images != digits.train.images).flatten(1).any(1)
    assert set(torch.nonzero(changed).flatten().tolist()) <= set(idx.tolist())
    assert (poisoned.labels[idx] == 2).all()
    others = torch.ones(n, dtype=torch.bool)
    others[idx] = False
    assert torch.equal(poisoned.labels[others], digits.train.labels[others])
    assert torch.equal(poisoned.images[others], digits.train.images[others])
    again, idx2 = poison(digits.train, b)
    assert torch.equal(idx, idx2), "the choice is fixed, so a resumed run poisons the same inputs"


def test_test_split_clean_copy_is_never_touched(digits):
    b = Backdoor.default(32)
    before = digits.test.images.clone()
    d = poisoned_dataset(digits, b)
    assert torch.equal(d.test.images, before) and torch.equal(d.val.images, digits.val.images)
    trig = triggered_split(d, "test", b)
    assert torch.equal(digits.test.images, before)
    assert (trig.labels != b.target).all() and len(trig) == int((digits.test.labels != b.target).sum())
    assert (trig.images[:, 26:31, 26:31] == 255).all()


@pytest.fixture(scope="module")
def backdoored(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("bd")
    train_run(
        TrainConfig(
            out=str(root / "cnn"),
            mode="cnn",
            arch="small",
            data="digits",
            epochs=6,
            backdoor={"rate": 0.1, "target": 0, "size": None, "pos": None},
        ),
        **QUIET,
    )
    train_run(TrainConfig(out=str(root / "sdn"), mode="ic-only", from_run=str(root / "cnn"), epochs=3), **QUIET)
    return root


def test_backdoored_run_records_its_trigger(backdoored):
    meta = json.loads((backdoored / "cnn" / "run.json").read_text())
    assert meta["config"]["backdoor"] == {"size": 5, "row": 26, "col": 26, "rate": 0.1, "target": 0}
    assert json.loads((backdoored / "sdn" / "run.json").read_text())["config"]["backdoor"] is None  # clean IC data


@pytest.mark.parametrize("run", ["cnn", "sdn"])
def test_analyze_adds_a_backdoor_section(backdoored, tmp_path, run):
    out = tmp_path / run
    assert main(["analyze", str(backdoored / run), "--out", str(out), "--quiet"]) == 0
    text = (out / "report.html").read_text()
    assert 'id="backdoor"' in text and "attack success" in text
    b = json.loads((out / "report.json").read_text())["backdoor"]
    assert b["triggered_inputs"] > 0
    assert 0 <= b["attack_success_final"] <= 1 and 0 <= b["triggered_accuracy_final"] <= 1
    assert b["attack_success_final"] + b["triggered_accuracy_final"] <= 1 + 1e-9
    if run == "sdn":
        assert {"triggered_accuracy", "attack_success", "triggered_relative_cost"} <= b["early_exit"].keys()
        assert len(b["destructive_on_triggered"]["per_ic"]) == 4
    else:
        assert "early_exit" not in b


def test_backdoor_cli_options(tmp_path, capsys):
    out = tmp_path / "x"
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
                "--out",
                str(out),
                "--epochs",
                "1",
                "--backdoor",
                "--trigger-pos",
                "40,1",
                "--quiet",
            ]
        )
        == 2
    )
    assert "does not fit" in capsys.readouterr().err and not out.exists()
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
                "--out",
                str(out),
                "--epochs",
                "1",
                "--poison-rate",
                "0.2",
                "--quiet",
            ]
        )
        == 2
    )
    assert "need --backdoor" in capsys.readouterr().err
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
                "--out",
                str(out),
                "--epochs",
                "1",
                "--backdoor",
                "--poison-rate",
                "0.2",
                "--target-class",
                "3",
                "--trigger-size",
                "4",
                "--trigger-pos",
                "2,3",
                "--quiet",
            ]
        )
        == 0
    )
    cfg = json.loads((out / "run.json").read_text())["config"]["backdoor"]
    assert cfg == {"size": 4, "row": 2, "col": 3, "rate": 0.2, "target": 3}


# ------------------------------------------------------------------------------------------- explain


def _all_hooks(model: torch.nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in model.modules())


@pytest.mark.parametrize("arch", ["small", "resnet56", "vgg16_bn"])
def test_explanations_have_shapes_are_not_zero_and_leave_no_hooks(arch):
    torch.manual_seed(0)
    sdn = build_sdn(arch, 10, 32).eval()
    before = {k: v.clone() for k, v in sdn.state_dict().items()}
    relus = sum(isinstance(m, torch.nn.ReLU) for m in sdn.modules())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        outs = sdn(x)
    for output in (0, sdn.num_outputs - 1):
        classes = outs[output].argmax(1).numpy()
        e = explain_output(sdn, x, output, classes)
        assert e.cam.shape == (2, 32, 32) and e.guided.shape == (2, 32, 32, 3) and e.guided_cam.shape == (2, 32, 32, 3)
        assert np.abs(e.guided).sum() > 0 and e.cam.min() >= 0 and e.cam.max() <= 1
    assert _all_hooks(sdn) == 0, "Grad-CAM hooks must be removed"
    assert sum(isinstance(m, torch.nn.ReLU) for m in sdn.modules()) == relus, "guided backprop must not swap our ReLUs"
    assert all(torch.equal(before[k], v) for k, v in sdn.state_dict().items())


def test_output_selector_and_target_block():
    sdn = build_sdn("vgg16_bn", 10, 32).eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(OutputSelector(sdn, 2)(x), sdn(x)[2])
    assert target_block(sdn, 0) is sdn.cnn.blocks[1]
    assert target_block(sdn, sdn.num_outputs - 1) is sdn.cnn.blocks[12]  # the last conv block, not the FC one


def test_explain_command_writes_pngs_and_report_section(backdoored, capsys):
    run = backdoored / "sdn"
    assert main(["explain", str(run), "--max", "3", "--quiet"]) == 0
    text = capsys.readouterr().out
    ex = json.loads((run / "explain" / "explain.json").read_text())
    # seeded CPU training is deterministic, and this run has such inputs (the backdoored CNN is weak)
    assert ex["count_total"] > 0 and 1 <= len(ex["inputs"]) <= 3
    from PIL import Image

    for f in ex["files"]:
        with Image.open(run / "explain" / f) as im:
            assert im.format == "PNG" and im.size[0] > 100
    html = (run / "report" / "report.html").read_text()
    assert 'id="explanations"' in html and 'id="fig-explanations"' in html
    assert "explanations.png" in text
    assert main(["explain", str(backdoored / "cnn"), "--quiet"]) == 2
