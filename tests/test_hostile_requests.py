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


def test_a_shrunk_vit_once_refused_now_gets_ics():
    """A token model (timm's ViT, shrunk) had 0 IC candidates and gave `min() arg is an empty sequence`,
    then a one-line refusal; since issue 29 its block ends are candidates (a model with none is
    refused in one line: tests/test_transformers.py)."""
    timm = pytest.importorskip("timm")
    import torch

    import shallowdeep as sd

    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, depth=2).eval()
    sdn = sd.to_sdn(model, image_size=32).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert len(sdn.heads) >= 1 and torch.equal(sdn(x)[-1], model(x))


def test_streamed_files_that_are_empty_or_unreadable_give_one_line(tmp_path):
    """An empty file in a streamed folder is refused when the folder is listed (it trained, then
    broke the analysis); a damaged one met by a DataLoader worker is the tool's line, not the
    worker's traceback."""
    from test_zoo import write_folder

    from shallowdeep.data import batches, load_dataset

    root = write_folder(tmp_path / "f")
    bad = root / "test" / "cat" / "0.jpg"
    bad.write_bytes(b"")
    with pytest.raises(UserError, match=r"0\.jpg is empty \(0 bytes\)"):
        load_dataset(f"imagefolder:{root}", mode="stream")
    bad.write_bytes(b"not an image")
    data = load_dataset(f"imagefolder:{root}", mode="stream", image_size=32)
    with pytest.raises(UserError) as caught:
        for _ in batches(data, "test", 4):
            pass
    assert len(str(caught.value).splitlines()) == 1 and "0.jpg" in str(caught.value)
    assert "Traceback" not in str(caught.value)


def test_pretrained_weights_offline_fail_at_once(monkeypatch):
    """Offline, --pretrained printed the hub client's retries for 54 s before its line: now, weights
    not in the hub's cache and a hub that does not answer give the tool's line at once."""
    timm = pytest.importorskip("timm")
    from shallowdeep.models import zoo

    monkeypatch.setattr(zoo, "_hub_cached", lambda hub_id: False)
    monkeypatch.setattr(zoo, "_hub_reachable", lambda timeout=3.0: False)
    real = timm.create_model

    def create(*a, pretrained=False, **k):
        assert not pretrained, "the hub was asked"
        return real(*a, pretrained=False, **k)

    monkeypatch.setattr(timm, "create_model", create)
    with pytest.raises(UserError, match="cannot download the pretrained weights of timm:resnet18"):
        zoo.zoo_model("timm:resnet18", 10, pretrained=True)


def test_a_model_too_large_for_the_machine_is_refused_before_it_is_built(monkeypatch):
    """A crafted run.json (or --arch) naming a giant zoo model ended in the allocator's traceback:
    its parameters are counted on the meta device first."""
    from shallowdeep.models import zoo

    monkeypatch.setattr(zoo, "_memory_bytes", lambda: 64 << 20)  # a machine of 64 MiB
    with pytest.raises(UserError, match=r"torchvision:resnet18 has 0\.0 billion parameters .* choose a smaller"):
        zoo.zoo_model("torchvision:resnet18", 10)


def test_a_data_error_mid_run_says_the_run_can_be_continued(tmp_path, monkeypatch):
    """A file that fails in the second epoch (a streamed folder's worker meets it): the error says
    the run keeps its finished epoch and how to continue; resuming then finishes it."""
    from shallowdeep.core.errors import DataError
    from shallowdeep.data import batching
    from shallowdeep.runs import RunFolder, train_run

    real, calls = batching.augment, []

    def failing(*a, **k):
        calls.append(1)
        if len(calls) == 12:  # the digits' training split is 11 batches of 128: the second epoch's first
            raise DataError("cannot read image x.jpg: truncated; remove or replace the file")
        return real(*a, **k)

    monkeypatch.setattr(batching, "augment", failing)
    out = tmp_path / "r"
    cfg = TrainConfig(out=str(out), mode="cnn", arch="small", data="digits", epochs=2)
    with pytest.raises(UserError, match=r"keeps its 1 finished epoch: fix that and continue it \(resume\)"):
        train_run(cfg, progress=False, log=None)
    assert RunFolder(out).meta().status == "running"
    monkeypatch.setattr(batching, "augment", real)
    train_run(TrainConfig(out=str(out), resume=True), progress=False, log=None)
    assert RunFolder(out).finished()
