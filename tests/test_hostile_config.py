"""A `--config` file damaged key by key (issue 27): each setting deleted or replaced by a wrong
type, a NaN, an infinity, a negative, a huge number, an empty or over-long list: `train --config`
gives a typed UserError (one line on the command line) or a run set up as asked, never another
exception. Everything up to the first step runs for real (the file read, the flags merged, the run
resolved, the recipe and runtime made, the data read, the model built); the digits data is read once."""

from __future__ import annotations

import json

import pytest
import torch
from hostile_json import damaged

from shallowdeep.cli import _train_config, build_parser
from shallowdeep.compute import distributed
from shallowdeep.core.errors import UserError
from shallowdeep.core.stopwatch import Stopwatch
from shallowdeep.data import reuse_loaded
from shallowdeep.runs.folder import RunFolder
from shallowdeep.runs.train import _set_up

GOOD = {
    "mode": "sdn",
    "arch": "small",
    "data": "digits",
    "image_size": 32,
    "seed": 3,
    "epochs": 2,
    "batch_size": 64,
    "optimizer": "sgd",
    "lr": 0.05,
    "momentum": 0.9,
    "nesterov": False,
    "weight_decay": 0.0005,
    "milestones": [1],
    "gamma": 0.1,
    "warmup_epochs": 0,
    "label_smoothing": 0.0,
    "precision": "fp32",
    "compile": False,
    "data_mode": "memory",
    "backdoor": {"rate": 0.1, "target": 0, "size": 4, "row": 2, "col": 2},
}


def test_every_config_setting_damaged_gives_a_typed_error_or_a_run_set_up(tmp_path):
    parser, place = build_parser(), distributed.join("cpu")[0]
    path = tmp_path / "c.json"
    refused = set_up = 0
    with reuse_loaded():
        for key_path, done, doc in damaged(GOOD):
            path.write_text(json.dumps(doc))
            args = parser.parse_args(["train", "--config", str(path), "--out", str(tmp_path / "r"), "--device", "cpu"])
            try:
                cfg = _train_config(args)
                setup = _set_up(cfg, None, RunFolder(tmp_path / "r"), torch.device("cpu"), place, Stopwatch())
            except UserError as e:
                assert "\n" not in str(e), (key_path, done, str(e))
                refused += 1
                continue
            set_up += 1
            assert setup.recipe.epochs >= 1 and setup.recipe.batch_size >= 1, (key_path, done)
    assert not (tmp_path / "r").exists()  # nothing written before the first step
    assert refused and set_up
    print(f"{refused + set_up} damaged --config files: {refused} refused with a UserError, {set_up} set up")


@pytest.mark.parametrize("text", ["[1, 2]", '"sdn"', "null", '{"mode": "sdn", "epochs": 1e999}'])
def test_a_config_that_is_not_a_mapping_of_settings_is_refused(tmp_path, text):
    path = tmp_path / "c.json"
    path.write_text(text)
    args = build_parser().parse_args(["train", "--config", str(path), "--out", str(tmp_path / "r")])
    with pytest.raises(UserError):
        cfg = _train_config(args)
        _set_up(cfg, None, RunFolder(tmp_path / "r"), torch.device("cpu"), distributed.join("cpu")[0], Stopwatch())
