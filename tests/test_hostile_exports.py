"""Hostile exports (issue 27): every key of manifest.json damaged, graphs replaced, external data."""

from __future__ import annotations

import copy
import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

from hostile_json import damaged  # noqa: E402

from shallowdeep import deploy  # noqa: E402
from shallowdeep.core.errors import UserError  # noqa: E402
from shallowdeep.workflows import analyze_run, export_run  # noqa: E402


@pytest.fixture(scope="module")
def export(tmp_path_factory, tiny_runs):
    """One export of the tiny IC-only run (analysed in a copy), shared read-only by this module."""
    import shutil

    base = tmp_path_factory.mktemp("hostile-export")
    run = Path(shutil.copytree(tiny_runs / "ic", base / "run"))
    analyze_run(run, html=False)  # the calibration only: the export reads it
    return export_run(run, base / "export")


def _copy(export: Path, tmp_path: Path) -> Path:
    import shutil

    return Path(shutil.copytree(export, tmp_path / "export"))


def _rehash(out: Path, manifest: dict) -> None:
    """Re-hash every stage into ``manifest`` and write it, as anyone who edits an export can."""
    for st in manifest["stages"]:
        if isinstance(st, dict) and isinstance(st.get("file"), str) and (out / st["file"]).is_file():
            st["sha256"] = hashlib.sha256((out / st["file"]).read_bytes()).hexdigest()
    (out / "manifest.json").write_text(json.dumps(manifest))


def test_a_graph_reading_external_data_is_refused(export, tmp_path, monkeypatch):
    """A stage replaced by a graph whose initializer lives in a file named relative to the working
    directory: loaded from bytes, onnxruntime would read that file (outside the export) as weights."""
    out = _copy(export, tmp_path)
    manifest = json.loads((out / "manifest.json").read_text())
    last = out / manifest["stages"][-1]["file"]
    model = onnx.load(str(last))
    init = max(model.graph.initializer, key=lambda t: len(t.dims) == 1)  # a bias: [classes]
    n = int(np.prod(init.dims)) * 4
    init.ClearField("raw_data")
    init.data_location = onnx.TensorProto.EXTERNAL
    for key, value in (("location", "cwd_secret.txt"), ("offset", "0"), ("length", str(n))):
        entry = init.external_data.add()
        entry.key, entry.value = key, value
    last.write_bytes(model.SerializeToString())
    _rehash(out, manifest)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    (cwd / "cwd_secret.txt").write_bytes(b"S" * n)
    monkeypatch.chdir(cwd)
    with pytest.raises(UserError, match="keeps tensors in external files"):
        deploy.load(out)


def test_swapped_or_foreign_graphs_are_refused_at_load(export, tmp_path):
    out = _copy(export, tmp_path)
    manifest = json.loads((out / "manifest.json").read_text())
    swapped = copy.deepcopy(manifest)
    swapped["stages"][1], swapped["stages"][2] = swapped["stages"][2], swapped["stages"][1]
    _rehash(out, swapped)
    with pytest.raises(UserError, match="does not fit stage 1"):
        deploy.load(out)
    (out / manifest["stages"][0]["file"]).write_bytes(os.urandom(4096))
    _rehash(out, manifest)
    with pytest.raises(UserError, match="is not an ONNX graph|not a graph onnxruntime can run"):
        deploy.load(out)


def test_every_manifest_key_damaged_gives_a_typed_error_or_a_working_model(export, tmp_path):
    """Each key deleted and each value replaced by a wrong type, NaN, infinities, negatives, huge
    numbers, empty and over-long lists: deploy.load raises a UserError, or the model it loads
    classifies with finite confidences and valid exits. Never another exception."""
    out = _copy(export, tmp_path)
    manifest = json.loads((out / "manifest.json").read_text())
    images = np.zeros((4, manifest["input"]["size"], manifest["input"]["size"], 3), np.uint8)
    refused = cases = 0
    for path, done, doc in damaged(manifest):
        cases += 1
        (out / "manifest.json").write_text(json.dumps(doc))
        try:
            model = deploy.load(out)
        except UserError:
            refused += 1
            continue
        got = model.classify(images)
        assert np.isfinite(got.confidence).all() and ((0 <= got.exits) & (got.exits < model.num_outputs)).all(), path
        assert all(0 <= p < len(model.classes) for p in got.predictions), (path, done)
    assert refused > cases // 2, (refused, cases)
    print(f"{cases} damaged manifests: {refused} refused with a UserError, the rest load and classify")


@pytest.mark.parametrize("threads", ["two", 0, -1, True, 2.5])
def test_bad_thread_counts_are_refused(export, threads):
    with pytest.raises(UserError, match="threads must be an integer"):
        deploy.load(export, threads=threads)
