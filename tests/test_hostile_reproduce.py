"""Hostile destinations for `reproduce` (issue 27): links out, foreign folders, stages of another run."""

from __future__ import annotations

import os

import pytest

from shallowdeep.core.errors import UserError
from shallowdeep.reproduction import reproduce
from shallowdeep.runs import TrainConfig, train_run

QUIET = dict(progress=False, log=None)
EPOCHS = {"cnn": 1, "ic-only": 1, "sdn": 1}


def _tree(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")) if root.exists() else []


def test_a_stage_folder_linked_out_of_out_is_refused_before_any_write(tmp_path):
    """`R/small` a link to a folder outside `R`: the stage would train and analyze there."""
    out, elsewhere = tmp_path / "R", tmp_path / "elsewhere"
    out.mkdir()
    elsewhere.mkdir()
    os.symlink(elsewhere, out / "small")
    with pytest.raises(UserError, match="leads outside"):
        reproduce("digits", out, ["small"], epochs=EPOCHS, stages=("sdn",), **QUIET)
    assert _tree(elsewhere) == [] and _tree(out) == ["small"]
    os.unlink(out / "small")
    (out / "small").mkdir()
    os.symlink(elsewhere, out / "small" / "sdn")  # one level down
    with pytest.raises(UserError, match="leads outside"):
        reproduce("digits", out, ["small"], epochs=EPOCHS, stages=("sdn",), **QUIET)
    os.unlink(out / "small" / "sdn")
    os.symlink(elsewhere / "r.json", out / "reproduction.json")  # a result file linked out
    with pytest.raises(UserError, match="is a link or a folder"):
        reproduce("digits", out, ["small"], epochs=EPOCHS, stages=("sdn",), **QUIET)
    assert _tree(elsewhere) == []


def test_a_training_run_or_foreign_files_are_not_a_reproduction(tmp_path):
    run = tmp_path / "run"
    train_run(TrainConfig(out=str(run), mode="cnn", arch="small", data="digits", epochs=1), **QUIET)
    before = _tree(run)
    with pytest.raises(UserError, match="holds a training run"):
        reproduce("digits", run, ["small"], epochs=EPOCHS, stages=("sdn",), **QUIET)
    assert _tree(run) == before
    other = tmp_path / "other"
    (other / "small" / "sdn").mkdir(parents=True)
    (other / "small" / "sdn" / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="holds files but no run"):
        reproduce("digits", other, ["small"], epochs=EPOCHS, stages=("sdn",), **QUIET)
    assert _tree(other) == ["small", "small/sdn", "small/sdn/notes.txt"]


def test_a_finished_stage_of_another_data_set_or_recipe_is_not_kept(tmp_path):
    out = tmp_path / "R"
    stage = out / "small" / "cnn"
    train_run(TrainConfig(out=str(stage), mode="cnn", arch="small", data="digits", epochs=1), **QUIET)
    before = _tree(out)
    with pytest.raises(UserError, match=r"epochs 1 \(asked: 2\)"):
        reproduce("digits", out, ["small"], epochs={**EPOCHS, "cnn": 2}, stages=("cnn",), **QUIET)
    folder = tmp_path / "images"
    for part in ("train", "test"):
        for c in ("a", "b"):
            (folder / part / c).mkdir(parents=True)
    with pytest.raises(UserError, match="data 'digits'"):
        reproduce(f"imagefolder:{folder}", out, ["small"], epochs=EPOCHS, stages=("cnn",), **QUIET)
    assert _tree(out) == before


@pytest.mark.parametrize("epochs", [{"cnn": True}, {"cnn": 0}, {"cnn": "2"}, {"fine-tune": 1}])
def test_bad_epochs_are_refused(tmp_path, epochs):
    with pytest.raises(UserError, match="epochs"):
        reproduce("digits", tmp_path / "R", ["small"], epochs=epochs, **QUIET)
    assert not (tmp_path / "R").exists()
