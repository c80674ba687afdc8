"""The field's multi-exit training methods beside the paper's: the mixed regime (Kubaty et al. 2024)
and distillation of the final output into the ICs."""

from __future__ import annotations

import json

import pytest
import torch

import shallowdeep
from shallowdeep.core.errors import UserError
from shallowdeep.models.sdn import SDN
from shallowdeep.runs import TrainConfig, train_run
from shallowdeep.training import MixedMode, default_recipe, make_mode

QUIET = dict(progress=False, log=None)


def test_mixed_trains_the_whole_sdn_from_the_cnn_run(tiny_runs, tmp_path):
    cnn_run = tiny_runs / "cnn"
    out = tmp_path / "mixed"
    train_run(TrainConfig(out=str(out), mode="mixed", from_run=str(cnn_run), epochs=1), **QUIET)
    meta = json.loads((out / "run.json").read_text())
    assert meta["config"]["mode"] == "mixed" and meta["config"]["arch"] == "small"
    assert (meta["recipe"]["optimizer"], meta["recipe"]["lr"]) == ("adam", 1e-3)  # the paper's recipe on a trained CNN
    cnn, sdn = shallowdeep.load(cnn_run), shallowdeep.load(out)
    assert isinstance(sdn, SDN)
    before, after = cnn.state_dict(), sdn.cnn.state_dict()
    changed = [k for k in before if before[k].is_floating_point() and not torch.equal(before[k], after[k])]
    assert len(changed) > len(before) // 2, "the backbone must learn in the mixed regime"
    # where it starts: the trained CNN's weights (the first step moves them only a little)
    k = next(k for k in before if k.endswith("weight") and before[k].dim() == 4)
    assert (after[k] - before[k]).norm() < 0.5 * before[k].norm()


def test_mixed_needs_a_finished_cnn_run(tmp_path, tiny_runs):
    with pytest.raises(UserError, match="mixed training needs from_run"):
        train_run(TrainConfig(out=str(tmp_path / "a"), mode="mixed", arch="small", data="digits"), **QUIET)
    with pytest.raises(UserError, match=r"is not a CNN run \(kind .sdn.\): mixed needs"):
        train_run(TrainConfig(out=str(tmp_path / "b"), mode="mixed", from_run=str(tiny_runs / "ic")), **QUIET)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    mixed = default_recipe("mixed", "resnet56")
    assert (mixed.optimizer, mixed.lr, mixed.epochs, mixed.milestones) == ("adam", 1e-3, 25, (15,))
    m = make_mode("mixed")
    assert isinstance(m, MixedMode) and m.output_weights(7, 0, 25)[-1] == 1.0


def test_the_teacher_never_gets_gradient_and_the_term_is_the_kl():
    torch.manual_seed(0)
    outs = [torch.randn(8, 5, requires_grad=True) for _ in range(3)]
    y = torch.randint(0, 5, (8,))
    mode = make_mode("ic-only", distill=0.7, distill_temperature=2.0)
    loss = mode.weighted_loss(outs, y, torch.tensor([1.0, 1.0, 0.0]))  # ic-only: the final output weighs 0
    loss.backward()
    assert outs[-1].grad is not None and torch.count_nonzero(outs[-1].grad) == 0, "gradient leaked to the teacher"
    assert all(torch.count_nonzero(o.grad) > 0 for o in outs[:-1])
    t = 2.0
    p_t = torch.softmax(outs[-1].detach() / t, 1)
    kl = (p_t * (p_t.log() - torch.log_softmax(outs[0].detach() / t, 1))).sum(1).mean() * t * t
    ce = torch.nn.functional.cross_entropy(outs[0].detach(), y)
    with torch.no_grad():
        one = mode.weighted_loss(outs, y, torch.tensor([1.0, 0.0, 0.0]))
    assert float(one) == pytest.approx(float(0.3 * ce + 0.7 * kl), rel=1e-5)


def test_distillation_with_weight_zero_is_plain_training_bit_for_bit(tiny_runs, tmp_path):
    cnn_run = str(tiny_runs / "cnn")
    for name, extra in (("plain", {}), ("zero", {"distill": 0.0}), ("some", {"distill": 0.5})):
        train_run(
            TrainConfig(out=str(tmp_path / name), mode="sdn", arch="small", data="digits", epochs=1, **extra), **QUIET
        )
    w = {n: shallowdeep.runs.read_tensors(tmp_path / n / "model.safetensors")[0] for n in ("plain", "zero", "some")}
    assert all(torch.equal(w["plain"][k], w["zero"][k]) for k in w["plain"])
    assert any(not torch.equal(w["plain"][k], w["some"][k]) for k in w["plain"]), "distillation changed nothing"
    assert json.loads((tmp_path / "some" / "run.json").read_text())["recipe"]["distill"] == 0.5
    with pytest.raises(UserError, match="a CNN has none"):
        train_run(TrainConfig(out=str(tmp_path / "c"), mode="cnn", arch="small", data="digits", distill=0.5), **QUIET)
    with pytest.raises(UserError, match="distill must be a finite number >= 0 and <= 1"):
        train_run(TrainConfig(out=str(tmp_path / "d"), mode="ic-only", from_run=cnn_run, distill=1.5), **QUIET)
    assert not (tmp_path / "c").exists() and not (tmp_path / "d").exists()


def test_compare_puts_runs_and_rules_side_by_side(copy_run, tiny_runs, tmp_path, capsys):
    from shallowdeep.cli import main
    from shallowdeep.workflows import analyze_run, compare_runs

    ic = copy_run("ic")
    mixed = tmp_path / "mixed"
    train_run(TrainConfig(out=str(mixed), mode="mixed", from_run=str(tiny_runs / "cnn"), epochs=1), **QUIET)
    chart = tmp_path / "methods.svg"
    done = compare_runs([ic, mixed], ["max_softmax", "ztw", "patience:9"], chart)
    assert [(r.run, r.mode, r.rule) for r in done.rows] == [
        (ic.name, "ic-only", "max_softmax"),
        (ic.name, "ic-only", "max_softmax+E"),
        ("mixed", "mixed", "max_softmax"),
        ("mixed", "mixed", "max_softmax+E"),
    ]  # patience:9 needs more ICs than the network has: left out
    assert chart.read_bytes().lstrip().startswith(b"<?xml") and b"<svg" in chart.read_bytes()
    # the same figures as the run's own analysis, which chooses on the same validation record
    report = analyze_run(ic, rules=["max_softmax", "ztw"]).analysis
    own = {r.rule.label: r.tradeoff for r in report.rules.results}
    assert done.rows[0].tradeoff == own["max_softmax"] and done.rows[1].tradeoff == own["max_softmax+E"]
    assert main(["compare", str(ic), str(mixed)]) == 0
    out = capsys.readouterr().out
    assert "| run | mode | rule | final | 25% | 50% | 75% | 100% | area |" in out and "max_softmax+E" in out
    for args, pattern in (
        ([str(tiny_runs / "cnn")], "is a plain CNN run"),
        ([str(ic), "--chart", str(tmp_path / "x.png")], "is an SVG file"),
        ([str(ic), "--chart", str(tmp_path / "no" / "x.svg")], "does not exist"),
        ([str(ic), "--rules", "softmin"], "unknown exit rule"),
    ):
        assert main(["compare", *args]) == 2
        assert pattern in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()
