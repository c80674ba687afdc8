"""Issue 31: the slowdown attack, corruptions, unfamiliar inputs and the drift monitor."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
import torch
from shallowdeep_deploy.drift import DriftMonitor, ExitProfile, chi2_sf, exit_profile, homogeneity

from shallowdeep.analysis.early_exit import early_exit
from shallowdeep.core.errors import ArgumentError, UserError
from shallowdeep.data.corruption import FAMILIES, Corruption, corrupt, parse_corruptions
from shallowdeep.inference.attack import SlowdownAttack, as_images, slowdown

QUICK = {"steps": 4, "step_size": 0.01}  # a few strong steps: the tiny run's test stays fast


@pytest.fixture(scope="module")
def attacked(tiny_runs, tmp_path_factory):
    """A copy of the tiny SDN run, analyzed (calibrated), with its first 48 test inputs attacked
    (L-infinity, per input). Each test that needs more makes it itself (tests may run apart)."""
    from shallowdeep.runs.attacks import attack_run
    from shallowdeep.workflows import analyze_run

    run = shutil.copytree(tiny_runs / "ic", tmp_path_factory.mktemp("shift") / "ic")
    analyze_run(run, html=False)  # the calibration only: the attack measures its exits
    done = attack_run(run, SlowdownAttack(**QUICK), inputs=48)
    return run, done


def test_attack_raises_the_cost_of_early_exits(attacked):
    from shallowdeep.runs import run_records

    run, done = attacked
    assert done.path.name == "test+slowdown-linf-0.03125.safetensors" and done.path.is_file()
    assert done.record.meta["attack"]["steps"] == 4 and done.record.num_inputs == 48
    clean = run_records(run, ("test",))["test"].subset(np.arange(48))
    assert np.array_equal(clean.ids, done.record.ids)
    # a threshold at which half of the clean inputs leave at the first IC
    q = float(np.median(clean.confidence[:, 0]))
    before, after = early_exit(clean, q), early_exit(done.record, q)
    assert after.relative_cost > before.relative_cost + 0.05, (before.relative_cost, after.relative_cost)
    ic_conf = lambda r: r.confidence[:, :-1].mean()  # noqa: E731
    assert ic_conf(done.record) < ic_conf(clean)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_attack_never_moves_pixels_beyond_epsilon(tiny_runs, norm):
    from shallowdeep.runs import load, run_data

    data, model = run_data(tiny_runs / "ic"), load(tiny_runs / "ic")
    clean = data.test.images[:24]
    attack = SlowdownAttack(norm, epsilon=0.03125 if norm == "linf" else 0.5, **QUICK)
    got = slowdown(model, clean, data.mean, data.std, attack).images
    assert got.dtype == torch.uint8 and got.shape == clean.shape
    change = (got.float() - clean.float()) / 255
    assert (got != clean).any(), "the attack changed nothing"
    if norm == "linf":
        assert change.abs().max() <= attack.epsilon + 1e-9
    else:
        assert change.flatten(1).norm(dim=1).max() <= attack.epsilon + 1e-9
    assert all(p.requires_grad for p in model.parameters())  # the model is left as it was


def test_rounding_to_8_bits_keeps_the_ball():
    g = torch.Generator().manual_seed(0)
    clean = torch.randint(0, 256, (16, 8, 8, 3), generator=g, dtype=torch.uint8)
    for norm, eps in (("linf", 0.03125), ("l2", 0.3)):
        a = SlowdownAttack(norm, epsilon=eps)
        delta = (torch.rand(16, 8, 8, 3, generator=g) * 2 - 1) * eps * 1.5  # over the bound, as a float step may be
        if norm == "l2":
            delta = delta * (eps / delta.flatten(1).norm(dim=1)).view(-1, 1, 1, 1)  # on the sphere
        out = (as_images(clean, delta, a).float() - clean.float()) / 255
        size = out.abs().amax(dim=(1, 2, 3)) if norm == "linf" else out.flatten(1).norm(dim=1)
        assert size.max() <= eps + 1e-9


def test_universal_attack_saves_its_perturbation(attacked):
    from shallowdeep.runs.attacks import attack_run, attacked_records
    from shallowdeep.runs.weights import read_tensors

    run, _ = attacked
    done = attack_run(run, SlowdownAttack(universal=True, craft_inputs=32, **QUICK), inputs=32)
    delta = read_tensors(done.perturbation)[0]["perturbation"]
    assert delta.shape == (32, 32, 3) and delta.abs().max() <= 0.03125 + 1e-6
    names = {r.meta["split_name"] for r in attacked_records(run)}
    assert names == {"test+slowdown-linf-0.03125", "test+slowdown-linf-0.03125-universal"}


def test_attack_refuses_bad_settings(tiny_runs):
    from shallowdeep.runs.attacks import attack_run

    for bad in ({"norm": "l3"}, {"epsilon": 0}, {"epsilon": float("nan")}, {"steps": 0}, {"step_size": -1}):
        with pytest.raises(ArgumentError):
            SlowdownAttack(**bad)
    with pytest.raises(ArgumentError, match="CNN run"):
        attack_run(tiny_runs / "cnn", SlowdownAttack())
    with pytest.raises(ArgumentError, match="inputs is how many"):
        attack_run(tiny_runs / "ic", SlowdownAttack(), inputs=0)
    assert SlowdownAttack.from_json(SlowdownAttack(norm="l2").to_json()) == SlowdownAttack(norm="l2")


def test_corruptions_are_seeded_and_change_the_images():
    g = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (10, 32, 32, 3), generator=g, dtype=torch.uint8)
    assert len(parse_corruptions("all")) == 5 * len(FAMILIES) == 30
    assert [c.label for c in parse_corruptions("jpeg,contrast:3")] == [f"jpeg-{s}" for s in range(1, 6)] + [
        "contrast-3"
    ]
    for c in parse_corruptions("all"):
        a, b = corrupt(images, c, seed=0), corrupt(images, c, seed=0)
        assert a.dtype == torch.uint8 and a.shape == images.shape and torch.equal(a, b), c.label
        assert not torch.equal(a, images), c.label
    noise = Corruption("gaussian_noise", 5)
    assert not torch.equal(corrupt(images, noise, 0), corrupt(images, noise, 1))
    # a higher severity moves the pixels further
    far = [(corrupt(images, Corruption("contrast", s), 0).float() - images.float()).abs().mean() for s in (1, 5)]
    assert far[1] > far[0]
    for bad in ("fog", "jpeg:9", "jpeg:0", "contrast:x"):
        with pytest.raises(ArgumentError):
            parse_corruptions(bad)


def test_analyze_reports_attacked_corrupted_and_unfamiliar_inputs(attacked, tmp_path):
    from PIL import Image

    from shallowdeep.runs import read_exit_profile, run_data
    from shallowdeep.workflows import analyze_run

    run, _ = attacked
    ood = tmp_path / "ood"
    ood.mkdir()
    rng = np.random.default_rng(0)
    for i in range(40):  # noise images: nothing like a digit
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(ood / f"{i}.png")
    done = analyze_run(run, corruptions="jpeg:5,contrast:5", ood=str(ood))
    a = done.analysis
    kinds = sorted((x.kind, x.name) for x in a.shifts if "universal" not in x.name)  # made by another test
    assert kinds == [
        ("attack", "test+slowdown-linf-0.03125"),
        ("corruption", "test+contrast-5"),
        ("corruption", "test+jpeg-5"),
    ]
    corrupted = next(x for x in a.shifts if x.name == "test+contrast-5")
    assert corrupted.inputs == len(run_data(run).test) > 300
    assert corrupted.setting == {"family": "contrast", "severity": 5}
    assert math.isclose(sum(corrupted.shifted.exit_shares), 1.0)
    [u] = a.unfamiliar
    assert u.inputs == 40 and len(u.confidence_auroc) == a.num_outputs and u.unfamiliar.accuracy is None
    rep = json.loads(done.json.read_text())
    assert len(rep["shifts"]) == len(a.shifts) >= 3 and rep["unfamiliar"][0]["source"] == str(ood)
    assert 'id="shifts"' in done.html.read_text()
    profile = read_exit_profile(run)
    assert profile is not None and profile.inputs == len(run_data(run).val)


def test_monitor_is_quiet_on_clean_inputs_and_fires_on_corrupted_ones(attacked):
    from shallowdeep.runs import engine_from_run, run_data

    run, _ = attacked
    engine, data = engine_from_run(run), run_data(run)
    clean = engine.classify(data.test.images)
    quiet = engine.monitor(window=100)
    checks = quiet.observe(clean.exits.numpy(), clean.confidence.numpy())
    assert len(checks) == 3 and not any(c.drifted for c in checks) and quiet.pending == len(clean) - 300
    shifted = engine.classify(corrupt(data.test.images, Corruption("contrast", 5), 0))
    loud = engine.monitor(window=100)
    fired = loud.observe(shifted.exits.numpy(), shifted.confidence.numpy())
    assert all(c.drifted for c in fired) and "exit differently from validation" in fired[0].line()


def test_chi_square_tail_and_homogeneity_are_right():
    for x in (0.1, 1.0, 4.0, 30.0):  # closed forms: 2 degrees of freedom exp(-x/2), 1 erfc(sqrt(x/2))
        assert math.isclose(chi2_sf(x, 2), math.exp(-x / 2), rel_tol=1e-10)
        assert math.isclose(chi2_sf(x, 1), math.erfc(math.sqrt(x / 2)), rel_tol=1e-9)
    assert math.isclose(chi2_sf(9.0, 4), math.exp(-4.5) * (1 + 4.5), rel_tol=1e-10)  # even dof: a finite sum
    stat, dof, p = homogeneity(np.array([30, 50, 20, 400]), np.array([400, 600, 500, 3500]))
    assert dof == 3 and math.isclose(stat, 27.58199165175909, rel_tol=1e-9) and p < 1e-4
    # a bin too sparse for the test is merged with its neighbour
    assert homogeneity(np.array([100, 30, 1]), np.array([1000, 300, 2]))[1] == 1


def test_monitor_false_alarm_rate_and_profile_checks():
    rng = np.random.default_rng(0)
    costs = [0.2, 0.5, 0.8, 1.0]
    profile = exit_profile(rng.integers(0, 4, 5000), rng.random(5000), costs)
    assert ExitProfile.from_json(json.loads(json.dumps(profile.to_json()))) == profile
    monitor = DriftMonitor(profile, window=200)
    for _ in range(50):
        monitor.observe(rng.integers(0, 4, 1000), rng.random(1000))
    alarms = sum(c.drifted for c in monitor.checks)
    assert len(monitor.checks) == 250 and alarms <= 3  # alpha 1e-3 per window: expected 0.25
    slow = monitor.observe(np.full(200, 3), rng.random(200))[0]
    assert slow.drifted and slow.direction == "slower"
    for bad in ({"exit_counts": [-1, 2]}, {"confidence_edges": [0.5, 0.2]}, {"relative_costs": [1.0]}):
        with pytest.raises(ArgumentError):
            ExitProfile.from_json(profile.to_json() | bad)
    for bad in ({"window": 5}, {"alpha": 0}, {"window": True}):
        with pytest.raises(ArgumentError):
            DriftMonitor(profile, **bad)
    with pytest.raises(ArgumentError):
        monitor.observe([4], [0.5])


def test_the_deployed_runtime_monitors_as_the_engine_does(attacked, tmp_path):
    pytest.importorskip("onnxruntime")
    from shallowdeep import deploy
    from shallowdeep.runs import engine_from_run, run_data
    from shallowdeep.workflows import export_run

    run, _ = attacked
    out = export_run(run, tmp_path / "export")
    manifest = json.loads((out / "manifest.json").read_text())
    engine = engine_from_run(run)
    assert manifest["drift"] == engine.profile.to_json()
    images = corrupt(run_data(run).test.images, Corruption("contrast", 5), 0)
    got, want = deploy.load(out).classify(images.numpy()), engine.classify(images)
    a = deploy.load(out).monitor(window=100).observe(got.exits, got.confidence)
    b = engine.monitor(window=100).observe(want.exits.numpy(), want.confidence.numpy())
    assert [c.drifted for c in a] == [c.drifted for c in b] == [True] * 3
    manifest["drift"]["exit_counts"] = [1, 2]  # not one count per output
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(UserError, match="drift"):
        deploy.load(out)
