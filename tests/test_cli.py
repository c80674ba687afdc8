"""The command line: every subcommand, its JSON, and one-line errors with exit status 2."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli

from shallowdeep.cli import main


def test_every_subcommand_has_help(capsys):
    for cmd in ("train", "info", "list", "demo", "analyze"):
        with pytest.raises(SystemExit) as e:
            main([cmd, "--help"])
        assert e.value.code == 0
        assert "usage: shallowdeep" in capsys.readouterr().out


def test_every_flag_of_every_command_says_what_it_does(capsys):
    """Every flag and argument has help text, a usage error points to its own command's help, and
    `--arch` names the zoo prefixes as `list` does."""
    import argparse

    from shallowdeep.cli import build_parser

    commands = build_parser()._subparsers._group_actions[0].choices
    silent = [
        (name, a.option_strings or a.dest)
        for name, parser in commands.items()
        for a in parser._actions
        if not isinstance(a, argparse._HelpAction) and a.help in (None, "", argparse.SUPPRESS)
    ]
    assert silent == []
    for name in commands:
        with pytest.raises(SystemExit) as e:
            main([name, "--no-such-flag"])
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.endswith(f"(see shallowdeep {name} --help)\n"), err
    for name in ("train", "info"):
        arch = next(a for a in commands[name]._actions if "--arch" in a.option_strings)
        assert "torchvision:NAME" in arch.help and "timm:NAME" in arch.help
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "torchvision:NAME" in out and "timm:NAME" in out


def test_list(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for name in (
        "vgg16_bn",
        "resnet56",
        "wrn32_4",
        "mobilenet",
        "small",
        "cifar10",
        "cifar100",
        "tinyimagenet",
        "imagefolder",
        "digits",
    ):
        assert name in out


def test_info_json_for_an_architecture(capsys):
    assert main(["info", "--arch", "resnet56", "--data", "cifar100", "--json"]) == 0
    obj = json.loads(capsys.readouterr().out)
    assert obj["params_cnn"] == 861_620 and obj["params_sdn"] == 1_220_626
    assert len(obj["outputs"]) == 7 and obj["gflops_cnn"] == pytest.approx(0.2515, abs=1e-3)
    assert [round(100 * o["relative_cost"]) for o in obj["outputs"]] == [15, 30, 45, 60, 74, 89, 100]
    assert all("val_acc" not in o for o in obj["outputs"])


def test_info_table_and_reference_convention(capsys):
    assert main(["info", "--arch", "mobilenet", "--data", "cifar10", "--flops", "reference"]) == 0
    out = capsys.readouterr().out
    assert "3,217,226" in out and "3,483,520" in out and "IC 5" in out and "final" in out


@pytest.fixture
def cli_runs(tiny_runs) -> Path:
    return tiny_runs


def test_info_json_for_a_run(cli_runs, capsys):
    assert main(["info", str(cli_runs / "ic"), "--json"]) == 0
    obj = json.loads(capsys.readouterr().out)
    assert {"params_cnn", "params_sdn", "gflops_cnn", "outputs"} <= obj.keys()
    assert len(obj["outputs"]) == 5 and all({"gflops", "relative_cost", "val_acc"} <= o.keys() for o in obj["outputs"])
    assert obj["outputs"][-1]["relative_cost"] > 1.0  # the final output pays for every IC on the way
    assert obj["params_sdn"] > obj["params_cnn"]
    # a CNN run has no ICs: no SDN parameter count (it printed the CNN's under that name)
    assert main(["info", str(cli_runs / "cnn"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["params_sdn"] is None
    assert main(["info", str(cli_runs / "cnn")]) == 0
    assert "SDN" not in capsys.readouterr().out.splitlines()[1]


def _assert_one_line_error(proc, pattern: str):
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr and pattern in lines[0], lines[0]


def test_bad_input_subprocess(tmp_path):
    out = tmp_path / "never"
    _assert_one_line_error(
        run_cli("train", "--arch", "resnet57", "--data", "digits", "--mode", "cnn", "--out", str(out)),
        "unknown --arch 'resnet57'",
    )
    assert not out.exists()


@pytest.mark.parametrize(
    "args,pattern",
    [
        (["--arch", "nope", "--data", "digits", "--mode", "cnn"], "unknown --arch 'nope'"),
        (["--arch", "small", "--data", "mnist", "--mode", "cnn"], "unknown --data set 'mnist'"),
        (["--arch", "small", "--data", "imagefolder:/no/such/dir", "--mode", "cnn"], "is not a folder"),
        (
            ["--arch", "small", "--data", "tinyimagenet", "--data-root", "/no/such/dir", "--mode", "cnn"],
            "no Tiny ImageNet",
        ),
        (["--arch", "resnet56", "--data", "digits", "--image-size", "48", "--mode", "cnn"], "takes 32 or 64 px"),
        (["--mode", "ic-only"], "needs --from, a finished CNN run"),
        (["--mode", "ic-only", "--from", "/no/such/run"], "is not a run folder"),
    ],
)
def test_bad_train_input(tmp_path, capsys, args, pattern):
    out = tmp_path / "out"
    assert main(["train", *args, "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and pattern in err[0], err
    assert not out.exists(), "bad input must leave nothing behind"


def test_ic_only_from_an_sdn_and_a_reused_folder(cli_runs, tmp_path, capsys):
    assert (
        main(["train", "--mode", "ic-only", "--from", str(cli_runs / "ic"), "--out", str(tmp_path / "x"), "--quiet"])
        == 2
    )
    assert "is not a CNN run" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
    assert (
        main(
            ["train", "--arch", "small", "--data", "digits", "--mode", "sdn", "--out", str(cli_runs / "cnn"), "--quiet"]
        )
        == 2
    )
    assert "already holds a run" in capsys.readouterr().err


def test_info_on_damaged_weights(cli_runs, tmp_path, capsys):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(cli_runs / "cnn", bad)
    w = bad / "model.safetensors"
    w.write_bytes(w.read_bytes()[:100])
    assert main(["info", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "truncated or foreign" in err[0]
    assert main(["info", str(tmp_path / "missing")]) == 2
    assert "not a run folder" in capsys.readouterr().err


def test_demo_runs_the_three_modes_and_prints_tables(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--epochs", "1", "--ic-epochs", "1", "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "ic-only SDN" in text and "sdn SDN" in text and "rel. cost" in text
    assert sum(line.startswith("final ") for line in text.splitlines()) == 2  # one table row per SDN
    assert text.count("early exits at q=") == 2 and text.count("report: ") == 2
    for run in ("cnn", "ic-only", "sdn"):
        assert (out / run / "model.safetensors").is_file()
    # a second demo replaces its own folder, but never a folder it did not make
    assert main(["demo", "--out", str(out), "--epochs", "1", "--ic-epochs", "1", "--quiet"]) == 0
    other = tmp_path / "mine"
    other.mkdir()
    (other / "keep.txt").write_text("x")
    assert main(["demo", "--out", str(other), "--quiet"]) == 2
    assert (other / "keep.txt").exists()


def test_ci_runs_the_readme_test_command():
    repo = Path(__file__).resolve().parents[1]
    readme = (repo / "README.md").read_text()
    blocks = [b.split("```", 1)[0].strip() for b in readme.split("```bash")[1:]]
    assert len(blocks) >= 2
    assert blocks[1] in (repo / ".ci" / "run").read_text()


def test_info_on_an_image_folder_reads_its_shape(tmp_path, capsys):
    import numpy as np
    from PIL import Image

    for part in ("train", "test"):
        for c in ("a", "b", "c"):
            (tmp_path / part / c).mkdir(parents=True)
            Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(tmp_path / part / c / "0.png")
    assert main(["info", "--arch", "small", "--data", f"imagefolder:{tmp_path}", "--json"]) == 0
    obj = json.loads(capsys.readouterr().out)
    assert obj["num_classes"] == 3 and obj["image_size"] == 16


def test_inductors_tf32_hint_is_not_passed_on(capsys):
    """Every compiled fp32 CUDA run made inductor print a hint naming a PyTorch call the command line
    cannot make; other warnings still arrive, one line each."""
    import argparse
    import warnings

    from shallowdeep import cli

    def command(args):
        warnings.warn(
            "TensorFloat32 tensor cores for float32 matrix multiplication available but not enabled. "
            "Consider setting `torch.set_float32_matmul_precision('high')`",
            UserWarning,
            stacklevel=1,
        )
        warnings.warn("12 of 40 images are not square", UserWarning, stacklevel=1)
        return 0

    assert cli._run(argparse.Namespace(command="train", func=command)) == 0
    assert capsys.readouterr().err == "shallowdeep train: warning: 12 of 40 images are not square\n"


def _png_claiming(path: Path, side: int) -> None:
    """A PNG whose header claims ``side`` x ``side`` px and whose pixel data is cut short."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0")) + chunk(b"IEND", b"")
    )


def test_another_packages_warning_shows_only_when_the_command_ends_well(tiny_runs, tmp_path, capsys):
    """PIL warns about an image (100 M px: "could be a decompression bomb") and then fails to read it:
    the user sees the error's one line. A warning on a command that works still arrives, once."""
    import warnings

    from PIL import Image

    _png_claiming(tmp_path / "big.png", 10_000)
    with warnings.catch_warnings():
        warnings.simplefilter("always")  # not once per place in this process: every time
        assert main(["predict", str(tiny_runs / "ic"), str(tmp_path / "big.png"), "--threshold", "0.5"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("shallowdeep predict: error: cannot read image") and err.count("\n") == 1, err
        palette = Image.fromarray(np.zeros((32, 32), np.uint8), mode="L").convert("P")
        for i in range(2):
            palette.save(tmp_path / f"p{i}.png", transparency=b"\0" * 8)  # PIL: "should be converted to RGBA"
        assert (
            main(
                [
                    "predict",
                    str(tiny_runs / "ic"),
                    *(str(tmp_path / f"p{i}.png") for i in range(2)),
                    "--threshold",
                    "0.5",
                ]
            )
            == 0
        )
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "warning: Palette images with Transparency" in err[0] and err[0].endswith("(2 times)"), err


@pytest.mark.parametrize(
    "arch,data,flags",
    [
        ("small", "digits", []),
        ("small", "digits", ["--image-size", "40"]),
        ("resnet56", "cifar100", []),
        ("small", "tinyimagenet", []),
        ("small", "folder", ["--image-size", "32"]),  # (it takes multiples of 4: not the folder's 30 px)
        ("torchvision:resnet18", "folder", []),
        ("torchvision:resnet18", "folder", ["--data-mode", "stream"]),
        ("torchvision:resnet18", "folder", ["--data-mode", "stream", "--image-size", "40"]),
        ("timm:resnet18", "folder", ["--data-mode", "stream"]),
    ],
)
def test_info_and_train_agree_on_classes_and_size(arch, data, flags, request, fake_cifar, tmp_path, capsys):
    """`info` builds what `train` with the same flags trains: the same classes and image size, with
    where each came from (it said 224 px for a zoo model that trained on a folder at 32 px, and 200
    classes for a Tiny ImageNet slice of 10)."""
    import torch
    from test_zoo import write_folder

    from shallowdeep.compute import distributed
    from shallowdeep.core.stopwatch import Stopwatch
    from shallowdeep.runs.folder import RunFolder
    from shallowdeep.runs.train import TrainConfig, _set_up

    where = []
    if data == "tinyimagenet":
        where = ["--data-root", str(request.getfixturevalue("tiny_root"))]  # the real slice: 10 of 200 classes
    elif data == "cifar100":
        where = ["--data-root", str(fake_cifar("cifar100")[0])]
    elif data == "folder":
        data = f"imagefolder:{write_folder(tmp_path / 'f')}"  # images of 36 px and 30 x 44 px
    assert main(["info", "--arch", arch, "--data", data, *where, *flags, "--json"]) == 0
    said = json.loads(capsys.readouterr().out)
    options = dict(zip([f[2:].replace("-", "_") for f in (where + flags)[::2]], (where + flags)[1::2]))
    options = {k: int(v) if k == "image_size" else v for k, v in options.items()}
    cfg = TrainConfig(out=str(tmp_path / "r"), mode="sdn", arch=arch, data=data, device="cpu", **options)
    place, _ = distributed.join("cpu")
    setup = _set_up(cfg, None, RunFolder(tmp_path / "r"), torch.device("cpu"), place, Stopwatch())
    assert (said["num_classes"], said["image_size"]) == (setup.data.num_classes, setup.model.image_size), said
    assert said["classes_from"].startswith("the files of") and said["image_size_from"], said
