"""Staged ONNX export and the torch-free runtime (issue 13): parity with the PyTorch engine, errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime")

from conftest import run_cli  # noqa: E402

from shallowdeep import deploy  # noqa: E402
from shallowdeep.core.errors import UserError  # noqa: E402
from shallowdeep.runs import engine_from_run, run_data  # noqa: E402
from shallowdeep.workflows import analyze_run, export_run  # noqa: E402


@pytest.fixture
def calibrated(copy_run):
    """A copy of the tiny SDN run, analysed; its threshold then moved to the 60th percentile of the
    ICs' test confidences so that inputs leave at several outputs (the tiny run's own calibrated
    threshold lets every input out at IC 1)."""
    run = copy_run("ic")
    analyze_run(run, html=False)  # the calibration only: the export reads it
    data = run_data(run)
    from shallowdeep.data import normalize

    x = normalize(data.test.images, data.mean, data.std).contiguous()
    conf = engine_from_run(run).ic_confidences(x, normalized=True).numpy()
    path = run / "calibration.json"
    cal = json.loads(path.read_text())
    cal["exit_rule"]["thresholds"] = [float(np.quantile(conf, 0.6))]  # what the engine carries out
    path.write_text(json.dumps(cal))
    return run


def test_onnx_runtime_exits_equal_the_engine_on_every_test_input(calibrated, tmp_path):
    import os
    import stat

    mask = os.umask(0o022)
    try:
        out = export_run(calibrated, tmp_path / "export")
    finally:
        os.umask(mask)
    # as a plain mkdir makes it (it was drwx------, a private temporary folder renamed into place)
    assert stat.S_IMODE(out.stat().st_mode) == 0o755
    assert {stat.S_IMODE(f.stat().st_mode) for f in out.iterdir()} == {0o644}
    manifest = json.loads((out / "manifest.json").read_text())
    engine = engine_from_run(calibrated)
    assert len(manifest["stages"]) == engine.num_outputs and manifest["exit"]["thresholds"] == engine.thresholds
    data = run_data(calibrated)
    images = data.test.images.numpy()  # uint8 [N, H, W, 3], what a deployment receives
    model = deploy.load(out)
    got = model.classify(images)

    want = engine.classify(images)  # the same uint8 images: one convention for both runtimes
    assert len(got.exits) == len(images) > 100
    differ = got.exits != want.exits.numpy()
    # only an input whose deciding confidence lies within float rounding of the threshold may differ
    q = engine.thresholds[0]
    near = np.abs(want.confidence.numpy() - q) < 1e-4
    assert not (differ & ~near).any(), f"{int(differ.sum())} exits differ away from the threshold"
    same = ~differ
    assert np.array_equal(got.predictions[same], want.predictions.numpy()[same])
    assert np.allclose(got.confidence[same], want.confidence.numpy()[same], atol=1e-4)
    assert len(set(got.exits.tolist())) > 1, "the test needs inputs leaving at different outputs"
    print(
        f"parity: {int(differ.sum())} of {len(images)} exits differ (all within 1e-4 of the threshold); exits "
        f"{np.bincount(got.exits, minlength=engine.num_outputs).tolist()}"
    )


def test_deploy_imports_no_torch(calibrated, tmp_path):
    out = export_run(calibrated, tmp_path / "export")
    code = (
        "import sys, numpy as np; from shallowdeep import deploy; m = deploy.load(sys.argv[1]); "
        "r = m.classify(np.zeros((3, m.size, m.size, 3), np.uint8)); "
        "assert 'torch' not in sys.modules, 'torch was imported'; print(r.exits.tolist())"
    )
    r = subprocess.run([sys.executable, "-c", code, str(out)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert len(json.loads(r.stdout)) == 3


def test_export_errors_leave_nothing(tiny_runs, calibrated, tmp_path):
    r = run_cli("export", str(tiny_runs / "ic"), "--out", str(tmp_path / "e"))  # not analysed
    assert r.returncode == 2 and "analyze the run first" in r.stderr and not (tmp_path / "e").exists()
    r = run_cli("export", str(tiny_runs / "cnn"), "--out", str(tmp_path / "e"))
    assert r.returncode == 2 and "plain CNN run" in r.stderr and not (tmp_path / "e").exists()
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    r = run_cli("export", str(calibrated), "--out", str(tmp_path / "full"))
    assert r.returncode == 2 and "not an empty folder" in r.stderr
    r = run_cli("export", str(calibrated), "--out", str(tmp_path / "e"), "--opset", "3")
    assert r.returncode == 2 and "--opset must lie in 7..21" in r.stderr and not (tmp_path / "e").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".e.")], "a temporary export was left behind"


def test_deploy_refuses_what_is_not_an_export(calibrated, tmp_path):
    with pytest.raises(UserError, match="is not an export"):
        deploy.load(tmp_path)
    out = export_run(calibrated, tmp_path / "export")
    model = deploy.load(out)
    with pytest.raises(UserError, match=r"uint8 RGB shaped \[N, 32, 32, 3\]"):
        model.classify(np.zeros((2, 28, 28, 3), np.uint8))
    stage = out / "stage1.onnx"
    stage.write_bytes(stage.read_bytes() + b"\0")
    with pytest.raises(UserError, match="does not match the manifest's hash"):
        deploy.load(out)
    (out / "manifest.json").write_text("{nope")
    with pytest.raises(UserError, match="is damaged"):
        deploy.load(out)


def test_the_deploy_distribution_installs_and_classifies_without_torch(calibrated, tmp_path):
    """`pip install ./deploy` into a fresh environment installs no torch (numpy, onnxruntime, onnx,
    Pillow), and its command classifies image files as the engine does; bad input is one line."""
    import os

    from PIL import Image

    repo = Path(__file__).resolve().parents[1]
    out = export_run(calibrated, tmp_path / "export")
    folder = tmp_path / "imgs"
    folder.mkdir()
    images = run_data(calibrated).test.images[:12].numpy()
    for i, a in enumerate(images):
        Image.fromarray(a).save(folder / f"{i:02d}.png")
    venv = tmp_path / "venv"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, env=env)
    pip = [str(venv / "bin" / "pip"), "install", "-q", "-c", str(repo / "constraints-dev.txt"), str(repo / "deploy")]
    done = subprocess.run(pip, capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    python = str(venv / "bin" / "python")
    assert subprocess.run([python, "-c", "import torch"], capture_output=True, env=env).returncode != 0
    cmd = [str(venv / "bin" / "shallowdeep-deploy"), "classify", str(out), str(folder), "--json"]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)
    engine = engine_from_run(calibrated)
    want, last = engine.classify(images), engine.num_outputs - 1
    assert [row["class_index"] for row in rows] == want.predictions.tolist()
    assert [row["exit"] for row in rows] == ["final" if e == last else f"IC {e + 1}" for e in want.exits.tolist()]
    lines = subprocess.run(cmd[:-1], capture_output=True, text=True, env=env).stdout.splitlines()
    assert len(lines) == len(images) + 1 and lines[-1].startswith("realised latency: "), lines[-2:]
    bad = subprocess.run(cmd[:2] + [str(tmp_path / "nothing"), str(folder)], capture_output=True, text=True, env=env)
    assert bad.returncode == 2 and len(bad.stderr.splitlines()) == 1 and "is not" in bad.stderr, bad.stderr
