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


def _cascaded(seed: int = 0) -> SDN:
    """A small SDN with cascade links of random (non-zero) weights, as a trained one has."""
    from shallowdeep.models.sdn import build_sdn

    torch.manual_seed(seed)
    sdn = SDN(build_sdn("small", 10, 32).cnn, cascade=True).eval()
    with torch.no_grad():
        for link in sdn.cascades:
            link.weight.normal_(0, 0.3)
            link.bias.normal_(0, 0.3)
    return sdn


def test_a_cascade_link_never_sends_gradient_to_the_previous_ic():
    sdn = _cascaded().train()
    x = torch.randn(4, 3, 32, 32)
    outs = sdn(x)
    outs[1].sum().backward()  # IC 1 alone: it reads IC 0's logits through its link
    assert all(p.grad is None or torch.count_nonzero(p.grad) == 0 for p in sdn.heads[0].parameters())
    assert (
        torch.count_nonzero(sdn.cascades[0].weight.grad) > 0
        and torch.count_nonzero(sdn.heads[1].linear.weight.grad) > 0
    )
    plain = SDN(sdn.cnn, heads=list(sdn.heads), cascade=False)
    fresh = SDN(sdn.cnn, heads=list(sdn.heads), cascade=True)  # links start at zero: the plain ICs
    with torch.no_grad():
        assert all(torch.equal(a, b) for a, b in zip(plain(x), fresh(x)))
        assert not torch.equal(plain(x)[2], sdn(x)[2])


def test_a_cascaded_sdn_exits_alike_in_records_engine_and_deployment(tmp_path, tiny_runs):
    pytest.importorskip("onnxruntime")
    import numpy as np

    from shallowdeep import output_costs
    from shallowdeep.analysis.record import ExitRecord
    from shallowdeep.analysis.rules import rule_exits
    from shallowdeep.core.exit_rule import ExitRule
    from shallowdeep.data import normalize
    from shallowdeep.inference import deploy
    from shallowdeep.inference.engine import EarlyExitEngine
    from shallowdeep.inference.export import ExportInfo, export_engine
    from shallowdeep.runs import run_data

    trained = shallowdeep.load(tiny_runs / "ic")  # trained ICs: confidences that spread the exits
    sdn = SDN(trained.cnn, heads=list(trained.heads), cascade=True).eval()
    with torch.no_grad():
        for link in sdn.cascades:
            link.weight.normal_(0, 0.1, generator=torch.Generator().manual_seed(len(link.bias)))
            link.bias.normal_(0, 0.1)
    data = run_data(tiny_runs / "ic")
    raw, mean, std = data.test.images[:120], data.mean, data.std
    x = normalize(raw, mean, std).contiguous()
    with torch.no_grad():
        logits = torch.stack(sdn(x), 1)
    costs = output_costs(sdn)
    record = ExitRecord.from_arrays(logits, np.zeros(len(x), np.int64), costs.outputs, costs.cnn)
    temps = np.array([1.3, 0.8, 1.1, 2.0, 1.0])
    z = record.logits[:, :-1] / temps[None, :-1, None]
    p = np.exp(z - z.max(-1, keepdims=True))
    conf = np.sort((p / p.sum(-1, keepdims=True)).max(-1).ravel())
    gaps = [(conf[i + 1] - conf[i], i) for i in range(len(conf) - 1)]
    # thresholds midway in the widest gaps of each third of the ICs' confidences (rounding cannot flip them)
    thirds = [
        max(g for g in gaps if lo * len(conf) <= g[1] < hi * len(conf))
        for lo, hi in ((0.3, 0.5), (0.5, 0.7), (0.7, 0.9))
    ]
    qs = [float((conf[i] + conf[i + 1]) / 2) for _, i in thirds]
    rule = ExitRule.parse("max_softmax+T")
    export_engine(EarlyExitEngine(sdn, 0.5), tmp_path / "export", ExportInfo(mean, std))
    manifest_path = tmp_path / "export" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    assert len(manifest["cascade"]) == len(sdn.positions) - 1
    seen = set()
    for q in qs:
        calibrated = rule.calibrated(q, temps.tolist(), "most_confident")
        sim = rule_exits(record, rule, q, "most_confident", temps)
        engine = EarlyExitEngine(sdn, calibrated)
        for bs in (1, 32):
            res = engine.classify(x, batch_size=bs, normalized=True)
            assert res.exits.tolist() == sim.exits.tolist(), (q, bs)
            assert res.predictions.tolist() == sim.predictions.tolist(), (q, bs)
        manifest["exit"] = engine.rule.to_json()
        manifest_path.write_text(json.dumps(manifest))
        deployed = deploy.load(tmp_path / "export").classify(raw.numpy())
        assert (
            deployed.exits.tolist() == sim.exits.tolist() and deployed.predictions.tolist() == sim.predictions.tolist()
        )
        seen |= set(sim.exits.tolist())
    assert len(seen) > 2, seen
    manifest["cascade"][0]["weight"] = manifest["cascade"][0]["weight"][:-1]  # a link of the wrong shape
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(UserError, match=r"cascade\[0\]\.weight"):
        deploy.load(tmp_path / "export")


def test_cascade_trains_records_itself_and_loads(tiny_runs, tmp_path):
    out = tmp_path / "cascade"
    train_run(
        TrainConfig(out=str(out), mode="ic-only", from_run=str(tiny_runs / "cnn"), epochs=1, cascade=True), **QUIET
    )
    meta = json.loads((out / "run.json").read_text())
    assert meta["model"]["cascade"] is True and meta["config"]["cascade"] is True
    sdn = shallowdeep.load(out)
    assert sdn.cascade and len(sdn.cascades) == len(sdn.positions) - 1
    assert any(torch.count_nonzero(link.weight) > 0 for link in sdn.cascades), "the links learned nothing"
    with pytest.raises(UserError, match="links the ICs of an SDN"):
        train_run(TrainConfig(out=str(tmp_path / "c"), mode="cnn", arch="small", data="digits", cascade=True), **QUIET)


def test_reproduce_methods_trains_each_on_the_cnn_and_tables_them_side_by_side(tiny_runs, tmp_path):
    """mixed, ztw (cascaded ICs on the frozen CNN) and distill as stages of one reproduction: each
    trained from the reproduction's CNN with its own settings, analyzed, a row each, and the methods
    table's figures are each run's own report (thresholds chosen on validation); a second call with
    one more method keeps the three and trains only the new one."""
    import shutil

    from shallowdeep.reproduction import _check_same_stage, reproduce

    out = tmp_path / "rep"
    shutil.copytree(tiny_runs / "cnn", out / "small" / "cnn")  # the CNN stage, finished (3 epochs)
    epochs = {"cnn": 3, "mixed": 1, "ztw": 1, "distill": 1, "ic-only": 1}
    said: list[str] = []
    got = reproduce("digits", out, ["small"], epochs=epochs, methods=("mixed", "ztw", "distill"), log=said.append)
    assert [r.kind for r in got.rows] == ["mixed", "ztw", "distill"] and got.methods == ["mixed", "ztw", "distill"]
    metas = {k: json.loads((out / "small" / k / "run.json").read_text()) for k in ("mixed", "ztw", "distill")}
    assert [metas[k]["config"]["mode"] for k in metas] == ["mixed", "ic-only", "ic-only"]
    assert [bool(metas[k]["config"].get("cascade")) for k in metas] == [False, True, False]
    assert [metas[k]["recipe"]["distill"] for k in metas] == [0.0, 0.0, 0.5]
    assert metas["distill"]["recipe"]["distill_temperature"] == 3.0
    assert all(metas[k]["config"]["from_run"] == str(out / "small" / "cnn") for k in metas)
    md = (out / "reproduction.md").read_text()
    table = [line for line in md.splitlines() if line.startswith("| small | ") and "max_softmax" in line.split("|")[3]]
    assert len(table) == 6, md  # three methods under two rules
    for row in got.rows:
        report = json.loads((out / "small" / row.kind / "report" / "report.json").read_text())
        want = {x["label"]: x["tradeoff"] for x in report["rules"]["results"]}
        assert {t.rule for t in row.tradeoffs} == set(want)
        for t in row.tradeoffs:
            assert t.budgets == [0.25, 0.5, 0.75, 1.0] and t.auc == want[t.rule]["auc"]
            assert t.test_accuracy == [p["test_accuracy"] for p in want[t.rule]["points"]]
        ensemble = next(t for t in row.tradeoffs if t.rule == "max_softmax+E")
        cells = f"| small | {row.kind} | max_softmax+E | {100 * row.final_test_accuracy:.2f}% | "
        assert cells in md and f"{ensemble.auc:.4f} |" in md
    assert json.loads((out / "reproduction.json").read_text())["methods"] == ["mixed", "ztw", "distill"]
    said.clear()
    again = reproduce(
        "digits", out, ["small"], epochs=epochs, methods=("ic-only", "mixed", "ztw", "distill"), log=said.append
    )
    assert [r.kind for r in again.rows] == ["ic-only", "mixed", "ztw", "distill"]
    for k in ("mixed", "ztw", "distill"):
        assert (
            f"{out / 'small' / k} is finished: kept" in said
            and json.loads((out / "small" / k / "run.json").read_text()) == metas[k]
        )
    # a stage folder holding another method's run is refused, naming what differs
    with pytest.raises(UserError, match=r"cascade True \(asked: False\), distill 0.0 \(asked: 0.5\)"):
        _check_same_stage(out / "small" / "ztw", "digits", "small", "distill", 1)


def test_a_concurrent_reproduction_of_methods_runs_each_after_the_cnn_and_its_analysis_after_it(tmp_path):
    from shallowdeep.reproduction import _arch_tasks, _ArchStages, _checked_stages
    from shallowdeep.runs.precompile import CompiledBeside

    stages = _checked_stages(("sdn", "ztw", "mixed"), None)
    assert stages == ("cnn", "mixed", "ztw", "sdn")  # training order, the CNN added for the methods on it
    one = _ArchStages(tmp_path, "small", "cpu", True, CompiledBeside([], None), [], lambda: None, None, False)
    common = {"arch": "small", "data": "digits", "data_root": None, "image_size": None, "device": "cpu"}
    common |= {"precision": None, "compile": None, "seed": None}
    epochs = {"cnn": 2, "mixed": 1, "ztw": 1, "sdn": 1}
    tasks = {t.name: t for t in _arch_tasks(one, stages, epochs, common, 1, False)}
    assert list(tasks) == ["small/cnn"] + [f"small/{w}{k}" for k in ("mixed", "ztw", "sdn") for w in ("", "analyze ")]
    assert tasks["small/mixed"].needs == ("small/cnn",) and tasks["small/ztw"].needs == ("small/cnn",)
    assert tasks["small/sdn"].needs == () and tasks["small/analyze ztw"].needs == ("small/ztw",)
    ztw = json.loads(tasks["small/ztw"].args[-1])["cfg"]
    assert ztw == {"mode": "ic-only", "epochs": 1, "cascade": True, "from_run": str(tmp_path / "small" / "cnn"),
                   "seed": None, "device": "cpu", "precision": None, "compile": None}  # fmt: skip
    for bad in (("sdn", "sdn"), ("sdn", "finetune"), ()):
        with pytest.raises(UserError, match=".?methods.? must name distinct methods"):
            _checked_stages(bad, None)
    with pytest.raises(UserError, match=r"unknown or no stage in .?stages.? \(cnn\): choose from sdn"):
        _checked_stages(("sdn",), ("cnn",))


def test_a_separate_teacher_run_is_distilled_from_frozen_and_checked(tiny_runs, tmp_path):
    """ic-only heads distilled from the CNN run given as a separate teacher equal those distilled from
    the network's own final output (the frozen CNN's) bit for bit on the CPU; the teacher's path and
    weights digest are recorded; a teacher without distillation, of other data, for a CNN, or not a
    finished run is refused before anything is written."""
    from shallowdeep.core.io import sha256_file
    from shallowdeep.runs import RunFolder

    cnn = tiny_runs / "cnn"
    base = dict(mode="ic-only", from_run=str(cnn), epochs=1, distill=0.5)
    train_run(TrainConfig(out=str(tmp_path / "own"), **base), **QUIET)
    train_run(TrainConfig(out=str(tmp_path / "sep"), teacher=str(cnn), **base), **QUIET)
    own, sep = shallowdeep.load(tmp_path / "own").state_dict(), shallowdeep.load(tmp_path / "sep").state_dict()
    assert own.keys() == sep.keys() and all(torch.equal(own[k], sep[k]) for k in own)
    meta = json.loads((tmp_path / "sep" / "run.json").read_text())
    assert meta["config"]["teacher"] == str(cnn.resolve())
    assert meta["teacher_weights_sha256"] == sha256_file(RunFolder(cnn).require_weights())
    assert "teacher_weights_sha256" not in json.loads((tmp_path / "own" / "run.json").read_text())
    # where the two differ (mixed: the own final output moves as the backbone trains; the teacher stays)
    mixed = dict(base, mode="mixed")
    train_run(TrainConfig(out=str(tmp_path / "m-own"), **mixed), **QUIET)
    train_run(TrainConfig(out=str(tmp_path / "m-sep"), teacher=str(cnn), **mixed), **QUIET)
    own, sep = shallowdeep.load(tmp_path / "m-own").state_dict(), shallowdeep.load(tmp_path / "m-sep").state_dict()
    assert not all(torch.equal(own[k], sep[k]) for k in own)
    small = tmp_path / "cnn16"
    train_run(TrainConfig(out=str(small), mode="cnn", arch="small", data="digits", image_size=16, epochs=1), **QUIET)
    (tmp_path / "empty").mkdir()
    for name, cfg, said in (
        ("no-distill", {**base, "distill": None, "teacher": str(cnn)}, "give distill above 0 too"),
        ("other-size", {**base, "teacher": str(small)}, "give a teacher trained on the same data"),
        ("cnn", {"mode": "cnn", "arch": "small", "data": "digits", "teacher": str(cnn)}, "for the ic-only, sdn or"),
        ("not-a-run", {**base, "teacher": str(tmp_path / "empty")}, "run.json"),
    ):
        with pytest.raises(UserError, match=said):
            train_run(TrainConfig(out=str(tmp_path / name), **cfg), **QUIET)
        assert not (tmp_path / name).exists()


def test_the_objective_distils_from_its_teacher_and_no_gradient_reaches_it(tiny_runs):
    from shallowdeep.models import build_cnn
    from shallowdeep.training.modes import Objective, outputs_of

    student = shallowdeep.load(tiny_runs / "ic")
    torch.manual_seed(0)
    teacher = build_cnn("small", 10, 32)
    teacher.eval().requires_grad_(False)
    mode = make_mode("sdn", distill=0.5, distill_temperature=3.0)
    student.train()
    x, y, w = torch.randn(8, 3, 32, 32), torch.arange(8) % 10, torch.ones(5)
    objective = Objective(student, mode, teacher).train()
    assert not teacher.training  # a teacher stays in eval mode
    loss = objective(x, y, w)
    loss.backward()
    with torch.no_grad():
        outs, target = outputs_of(student, x), teacher(x)
        assert torch.equal(loss.detach(), mode.weighted_loss(outs, y, w, target))
        assert not torch.equal(loss.detach(), mode.weighted_loss(outs, y, w))  # not the own final output
    assert all(p.grad is None for p in teacher.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.heads.parameters())
