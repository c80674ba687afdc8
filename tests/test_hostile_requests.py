"""Hostile requests (issue 27): torchrun variables, TrainConfig values of the wrong type."""

from __future__ import annotations

import pytest

from shallowdeep.cli import main
from shallowdeep.core.errors import UserError
from shallowdeep.runs import TrainConfig


@pytest.mark.parametrize(
    "env, said",
    [
        ({"WORLD_SIZE": "abc"}, "WORLD_SIZE='abc' is not a whole number"),
        ({"WORLD_SIZE": "0"}, "WORLD_SIZE='0' is not a whole number"),
        ({"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "x"}, "LOCAL_RANK='x' is not a whole number"),
        ({"WORLD_SIZE": "2", "RANK": "5"}, "RANK=5 with WORLD_SIZE=2"),  # would wait forever for rank 5's peers
        ({"RANK": "-1"}, "RANK='-1' is not a whole number"),
    ],
)
def test_wrong_torchrun_variables_get_one_line(env, said, tmp_path, monkeypatch, capsys):
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    out = tmp_path / "out"
    assert main(["train", "--arch", "small", "--data", "digits", "--epochs", "1", "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and said in err[0], err
    assert not out.exists()


@pytest.mark.parametrize(
    "kw, said",
    [
        ({"epochs": "ten"}, "epochs must be an integer"),
        ({"epochs": True}, "epochs must be an integer"),
        ({"milestones": 5}, "milestones must be a list of integers"),
        ({"milestones": [1, "2"]}, "milestones must be a list of integers"),
        ({"backdoor": "yes"}, "backdoor must be a mapping"),
        ({"lr": "0.1"}, "lr must be a number"),
        ({"compile": "yes"}, "compile must be true or false"),
        ({"ic_cuts": "layer1"}, "ic_cuts must be a list of strings"),
        ({"out": 3}, "out must be a string"),
    ],
)
def test_train_config_values_of_the_wrong_type_are_refused(kw, said):
    with pytest.raises(UserError, match=said):
        TrainConfig(**({"out": "x"} | kw))


def test_train_config_keeps_lists_as_tuples():
    cfg = TrainConfig(out="x", milestones=[1, 2], ic_fractions=[0.5, 1], ic_cuts=["a"])
    assert cfg.milestones == (1, 2) and cfg.ic_fractions == (0.5, 1.0) and cfg.ic_cuts == ("a",)
