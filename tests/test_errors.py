"""Bad input, row by row: one line on stderr naming the problem, exit status 2, no traceback, and
nothing left behind. The same rows make ``docs/errors.md``: ``python tests/test_errors.py`` runs them
and rewrites that table with the messages the tool really prints.

Placeholders in a row's arguments: ``{tmp}`` a fresh folder, ``{file}`` a regular file, ``{cnn}`` and
``{ic}`` the shared tiny runs (read-only rows), ``{cnn_copy}`` and ``{ic_copy}`` private copies that a
row's setup may damage, ``{imgs}`` a folder of four 32 px PNG images, ``{tree}`` an image-folder data
set made by the row's setup.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import sys
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import numpy as np
import pytest

# ---------------------------------------------------------------------------------------------- setups


def _png(path: Path, size: int = 32, mode: str = "RGB") -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    if mode == "I;16":
        Image.fromarray((np.arange(size * size).reshape(size, size) * 60).astype(np.uint16)).save(path)
    else:
        Image.fromarray(np.full((size, size, 3), 128, np.uint8)).save(path)


def _tree(tmp: Path, classes=("a", "b"), test_classes=None, n=3) -> Path:
    base = tmp / "tree"
    for part, cls in (("train", classes), ("test", test_classes or classes)):
        for c in cls:
            for i in range(n):
                _png(base / part / c / f"{i}.png")
    return base


def _bomb(path: Path) -> None:
    """A PNG whose header claims 40000x40000 px (PIL refuses it as a decompression bomb)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", 40000, 40000, 8, 2, 0, 0, 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 10)) + chunk(b"IEND", b"")
    )


def _r34(path: Path) -> None:
    import torchvision
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in torchvision.models.resnet34(num_classes=10).state_dict().items()}, path)


def _edit_json(path: Path, change) -> None:
    obj = json.loads(path.read_text())
    change(obj)
    path.write_text(json.dumps(obj))


def _latency(ctx, arch: str = "small", p50: float = 1.0) -> None:
    """A latency profile of five stages at ``{tmp}/l.json``."""
    stage = {"p50_ms": p50, "p95_ms": 2.0, "p99_ms": 3.0, "mean_ms": 1.5}
    profile = {
        "format": "shallowdeep-latency/1",
        "arch": arch,
        "device": "cpu",
        "runtime": "torch",
        "versions": {},
        "batch": 1,
        "repeats": 5,
        "stages": [stage] * 5,
        "plain": {"p50_ms": 4.0, "p95_ms": 5.0, "p99_ms": 6.0, "mean_ms": 4.5},
    }
    (ctx["tmp"] / "l.json").write_text(json.dumps(profile))


def _calibrate_goal(ctx) -> None:
    """The copy calibrated for a latency budget."""
    _calibrate(ctx, rule={"latency_budget_ms": 1.0, "latency_percentile": 0.0, "budget": 0.5})


def _set(path, *keys, value=None, delete=False):
    def change(obj):
        d = obj
        for k in keys[:-1]:
            d = d[k]
        if delete:
            del d[keys[-1]]
        else:
            d[keys[-1]] = value

    return lambda ctx: _edit_json(ctx[path] / "run.json", change)


def _calibrate(ctx, **fields):
    from shallowdeep.core.io import sha256_file

    d = {
        "rule": {"max_drop": 0.01},
        "fallback": "most_confident",
        "threshold": 0.5,
        "val": {"accuracy": 0.5, "relative_cost": 0.5, "final_accuracy": 0.5, "exit_counts": [1, 1, 1, 1, 1]},
        "weights_sha256": sha256_file(ctx["ic_copy"] / "model.safetensors"),
    }
    d.update(fields)
    d = {k: v for k, v in d.items() if v is not ...}
    (ctx["ic_copy"] / "calibration.json").write_text(json.dumps(d).replace('"NaN!"', "NaN"))


SETUPS = {
    "tree": lambda ctx: _tree(ctx["tmp"]),
    "tree_empty_class": lambda ctx: (_tree(ctx["tmp"]), (ctx["tmp"] / "tree" / "train" / "empty").mkdir()),
    "tree_extra_test_class": lambda ctx: _tree(ctx["tmp"], test_classes=("a", "b", "zzz")),
    "tree_no_classes": lambda ctx: (
        (ctx["tmp"] / "tree" / "train").mkdir(parents=True),
        (ctx["tmp"] / "tree" / "test").mkdir(),
    ),
    "tree_corrupt": lambda ctx: (_tree(ctx["tmp"]), (ctx["tmp"] / "tree" / "train" / "a" / "bad.png").write_text("no")),
    "tree_bomb": lambda ctx: (_tree(ctx["tmp"]), _bomb(ctx["tmp"] / "tree" / "train" / "a" / "0.png")),
    "tree_extra_val_class": lambda ctx: (
        _tree(ctx["tmp"]),
        (ctx["tmp"] / "tree" / "val" / "a").mkdir(parents=True),
        (ctx["tmp"] / "tree" / "val" / "zzz").mkdir(),
    ),
    "r34_weights": lambda ctx: _r34(ctx["tmp"] / "r34.safetensors"),
    "tiny_no_val": lambda ctx: (ctx["tmp"] / "tiny" / "train").mkdir(parents=True),
    "nonempty": lambda ctx: ((ctx["tmp"] / "out").mkdir(), (ctx["tmp"] / "out" / "x.txt").write_text("x")),
    "imgs": lambda ctx: [_png(ctx["tmp"] / "imgs" / f"{i}.png") for i in range(4)],
    "img_small": lambda ctx: _png(ctx["tmp"] / "imgs" / "small.png", 20),
    "img_text": lambda ctx: (ctx["tmp"] / "imgs").mkdir() or (ctx["tmp"] / "imgs" / "t.png").write_text("text"),
    "img_bomb": lambda ctx: _bomb(ctx["tmp"] / "imgs" / "bomb.png"),
    "empty_dir": lambda ctx: (ctx["tmp"] / "imgs").mkdir(),
    "weights_gone": lambda ctx: (ctx["ic_copy"] / "model.safetensors").unlink(),
    "weights_truncated": lambda ctx: (ctx["ic_copy"] / "model.safetensors").write_bytes(
        (ctx["ic_copy"] / "model.safetensors").read_bytes()[:1000]
    ),
    "weights_foreign": lambda ctx: shutil.copy(
        ctx["cnn_copy"] / "model.safetensors", ctx["ic_copy"] / "model.safetensors"
    ),
    "weights_huge": lambda ctx: os.truncate(ctx["ic_copy"] / "model.safetensors", 20 << 30),
    "weights_garbage": lambda ctx: (ctx["ic_copy"] / "model.safetensors").write_bytes(b"\xff" * 64),
    "runjson_text": lambda ctx: (ctx["ic_copy"] / "run.json").write_text("{not json"),
    "runjson_list": lambda ctx: (ctx["ic_copy"] / "run.json").write_text("[1, 2]"),
    "runjson_huge": lambda ctx: os.truncate(ctx["ic_copy"] / "run.json", 70 << 20),
    "runjson_format": _set("ic_copy", "format", value="something/9"),
    "no_recipe": _set("ic_copy", "recipe", delete=True),
    "no_config": _set("ic_copy", "config", delete=True),
    "no_data": _set("ic_copy", "data", delete=True),
    "no_model": _set("ic_copy", "model", delete=True),
    "mean_two": _set("ic_copy", "data", "mean", value=[0.5, 0.5]),
    "std_zero": _set("ic_copy", "data", "std", value=[0.2, 0.0, 0.2]),
    "few_classes": _set("ic_copy", "data", "classes", value=["0", "1"]),
    "classes_2e9": _set("ic_copy", "model", "num_classes", value=2_000_000_000),
    "size_100000": _set("ic_copy", "model", "image_size", value=100000),
    "size_inf": lambda ctx: (ctx["ic_copy"] / "run.json").write_text(
        (ctx["ic_copy"] / "run.json").read_text().replace('"image_size": 32', '"image_size": 1e400', 1)
    ),
    "kind_odd": _set("ic_copy", "model", "kind", value="transformer"),
    "positions_odd": _set("ic_copy", "model", "ic_positions", value="0,1"),
    "epochs_odd": _set("ic_copy", "epochs", value={"a": 1}),
    "cnn_running": lambda ctx: (
        _set("cnn_copy", "status", value="running")(ctx),
        (ctx["cnn_copy"] / "model.safetensors").unlink(),
    ),
    "data_root_elsewhere": lambda ctx: (
        _set("ic_copy", "config", "data", value="cifar10")(ctx),
        _set("ic_copy", "config", "data_root", value=str(ctx["tmp"] / "elsewhere"))(ctx),
    ),
    "records_link": lambda ctx: (
        (ctx["tmp"] / "outside").mkdir(),
        (ctx["ic_copy"] / "records").symlink_to(ctx["tmp"] / "outside"),
    ),
    "report_link": lambda ctx: (
        (ctx["tmp"] / "outside").mkdir(),
        (ctx["ic_copy"] / "report").symlink_to(ctx["tmp"] / "outside"),
    ),
    "explain_link": lambda ctx: (
        (ctx["tmp"] / "outside").mkdir(),
        (ctx["ic_copy"] / "explain").symlink_to(ctx["tmp"] / "outside"),
    ),
    "report_file": lambda ctx: (ctx["tmp"] / "rep").write_text("x"),
    "cal_other_weights": lambda ctx: _calibrate(ctx, weights_sha256="0" * 64),
    "cal_text": lambda ctx: _calibrate(ctx, threshold="abc"),
    "cal_missing": lambda ctx: _calibrate(ctx, threshold=...),
    "cal_nan": lambda ctx: _calibrate(ctx, threshold="NaN!"),
    "cal_two": lambda ctx: _calibrate(ctx, threshold=2.0),
    "cal_per_ic_range": lambda ctx: _calibrate(ctx, thresholds=[0.5, 0.5, 1.5, 0.5]),
    "cal_per_ic_count": lambda ctx: _calibrate(ctx, thresholds=[0.5, 0.5]),
    "cal_not_json": lambda ctx: (ctx["ic_copy"] / "calibration.json").write_text("{"),
    "cfg_bad_json": lambda ctx: (ctx["tmp"] / "c.json").write_text("{nope"),
    "cfg_unknown": lambda ctx: (ctx["tmp"] / "c.json").write_text('{"arch": "small", "colour": 1}'),
    "cfg_alias_bomb": lambda ctx: (ctx["tmp"] / "c.yaml").write_text(
        "a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\nc: [*b, *b, *b, *b, *b, *b]\n"
    ),
    "cfg_binary": lambda ctx: (ctx["tmp"] / "c.json").write_bytes(bytes(range(128, 256))),
    "foreign_run_json": lambda ctx: (
        (ctx["tmp"] / "theirs").mkdir(),
        (ctx["tmp"] / "theirs" / "run.json").write_text('{"format": "x"}'),
    ),
    "cfg_epochs_word": lambda ctx: (ctx["tmp"] / "c.yaml").write_text("arch: small\nepochs: ten\n"),
    "cfg_milestones_int": lambda ctx: (ctx["tmp"] / "c.yaml").write_text("arch: small\nmilestones: 5\n"),
    "cfg_backdoor_yes": lambda ctx: (ctx["tmp"] / "c.yaml").write_text("arch: small\nbackdoor: yes\n"),
    "cfg_fractions_words": lambda ctx: (ctx["tmp"] / "c.json").write_text('{"arch": "small", "ic_fractions": ["a"]}'),
    "cfg_list_yaml": lambda ctx: (ctx["tmp"] / "c.yaml").write_text("- a\n- b\n"),
    "cfg_bad_yaml": lambda ctx: (ctx["tmp"] / "c.yaml").write_text("a: [1, 2\n"),
    "latency_not_profile": lambda ctx: (ctx["tmp"] / "l.json").write_text('{"format": "x"}'),
    "latency_other_arch": lambda ctx: _latency(ctx, arch="resnet56"),
    "latency_negative": lambda ctx: _latency(ctx, p50=-1.0),
    "cal_latency_goal": lambda ctx: _calibrate_goal(ctx),
    "demo_nonempty": lambda ctx: ((ctx["tmp"] / "d").mkdir(), (ctx["tmp"] / "d" / "mine.txt").write_text("keep")),
}

T = ["train", "--arch", "small", "--data", "digits", "--mode", "cnn", "--out", "{tmp}/out"]  # a valid start
TA = ["train", "--mode", "ic-only", "--out", "{tmp}/out"]

# (input, arguments, part of the message, setup or None, path that must not exist afterwards or None)
ZOO = ["train", "--arch", "torchvision:resnet18", "--data", "digits", "--mode", "sdn", "--out", "{tmp}/out"]
ROWS: list[tuple[str, list[str], str, str | None, str | None]] = [
    # ---- train: names and modes
    (
        "unknown architecture",
        ["train", "--arch", "resnet57", "--data", "digits", "--mode", "cnn", "--out", "{tmp}/out"],
        "unknown --arch 'resnet57'",
        None,
        "{tmp}/out",
    ),
    (
        "unknown data set",
        ["train", "--arch", "small", "--data", "mnist", "--mode", "cnn", "--out", "{tmp}/out"],
        "unknown --data set 'mnist'",
        None,
        "{tmp}/out",
    ),
    (
        "no --mode",
        ["train", "--arch", "small", "--data", "digits", "--out", "{tmp}/out"],
        "--mode is required",
        None,
        "{tmp}/out",
    ),
    ("unknown --mode", ["train", "--mode", "nope", "--out", "{tmp}/out"], "invalid choice: 'nope'", None, "{tmp}/out"),
    (
        "no --arch",
        ["train", "--data", "digits", "--mode", "cnn", "--out", "{tmp}/out"],
        "--arch is required",
        None,
        "{tmp}/out",
    ),
    (
        "no --data",
        ["train", "--arch", "small", "--mode", "cnn", "--out", "{tmp}/out"],
        "--data is required",
        None,
        "{tmp}/out",
    ),
    (
        "no --out",
        ["train", "--arch", "small", "--data", "digits", "--mode", "cnn"],
        "the following arguments are required: --out",
        None,
        None,
    ),
    ("ic-only without --from", TA, "needs --from", None, "{tmp}/out"),
    ("--from that does not exist", TA + ["--from", "{tmp}/none"], "is not a run folder", None, "{tmp}/out"),
    ("--from a file", TA + ["--from", "{file}"], "is a file, not a run folder", None, "{tmp}/out"),
    ("--from a folder without run.json", TA + ["--from", "{tmp}"], "has no run.json", None, "{tmp}/out"),
    ("--from an SDN run", TA + ["--from", "{ic}"], "is not a CNN run", None, "{tmp}/out"),
    (
        "--from an unfinished CNN run",
        TA + ["--from", "{cnn_copy}"],
        "has not finished training",
        "cnn_running",
        "{tmp}/out",
    ),
    (
        "--teacher without --distill",
        TA + ["--from", "{cnn}", "--teacher", "{cnn}"],
        "--teacher is what the ICs distil from: give --distill above 0 too",
        None,
        "{tmp}/out",
    ),
    (
        "--teacher that is not a run",
        TA + ["--from", "{cnn}", "--distill", "0.5", "--teacher", "{tmp}/none"],
        "is not a run folder",
        None,
        "{tmp}/out",
    ),
    (
        "--teacher for a CNN",
        T[:-4] + ["--mode", "cnn", "--teacher", "{cnn}", "--out", "{tmp}/out"],
        "--teacher is what the ICs distil from: for the ic-only, sdn or mixed --mode",
        None,
        "{tmp}/out",
    ),
    (
        "--teacher of an unfinished run",
        TA + ["--from", "{cnn}", "--distill", "0.5", "--teacher", "{cnn_copy}"],
        "has not finished training",
        "cnn_running",
        "{tmp}/out",
    ),
    (
        "--from with --mode sdn",
        T[:-4] + ["--mode", "sdn", "--from", "{cnn}", "--out", "{tmp}/out"],
        "--from is only for the --mode ic-only or mixed",
        None,
        "{tmp}/out",
    ),
    (
        "ic-only --arch contradicting the CNN",
        TA + ["--from", "{cnn}", "--arch", "resnet56"],
        "contradicts the CNN run's small",
        None,
        "{tmp}/out",
    ),
    (
        "ic-only --data contradicting the CNN",
        TA + ["--from", "{cnn}", "--data", "cifar10"],
        "contradicts the CNN run's digits",
        None,
        "{tmp}/out",
    ),
    (
        "ic-only with --backdoor",
        TA + ["--from", "{cnn}", "--backdoor"],
        "--backdoor poisons the training of a CNN or SDN",
        None,
        "{tmp}/out",
    ),
    # ---- train: recipe numbers
    ("--epochs 0", T + ["--epochs", "0"], "--epochs must be at least 1", None, "{tmp}/out"),
    ("--epochs -3", T + ["--epochs", "-3"], "--epochs must be at least 1", None, "{tmp}/out"),
    ("--epochs abc", T + ["--epochs", "abc"], "invalid int value: 'abc'", None, "{tmp}/out"),
    ("--batch-size 0", T + ["--batch-size", "0"], "--batch-size must be at least 1", None, "{tmp}/out"),
    ("--batch-size -5", T + ["--batch-size", "-5"], "--batch-size must be at least 1", None, "{tmp}/out"),
    ("--lr nan", T + ["--lr", "nan"], "--lr must be a finite number > 0", None, "{tmp}/out"),
    ("--lr inf", T + ["--lr", "inf"], "--lr must be a finite number > 0", None, "{tmp}/out"),
    ("--lr 1e400", T + ["--lr", "1e400"], "--lr must be a finite number > 0", None, "{tmp}/out"),
    ("--lr -1", T + ["--lr", "-1"], "--lr must be a finite number > 0", None, "{tmp}/out"),
    ("--lr 0", T + ["--lr", "0"], "--lr must be a finite number > 0", None, "{tmp}/out"),
    (
        "--weight-decay nan",
        T + ["--weight-decay", "nan"],
        "--weight-decay must be a finite number >= 0",
        None,
        "{tmp}/out",
    ),
    (
        "--weight-decay -1",
        T + ["--weight-decay", "-1"],
        "--weight-decay must be a finite number >= 0",
        None,
        "{tmp}/out",
    ),
    ("--momentum 2", T + ["--momentum", "2"], "--momentum must be a finite number >= 0 and <= 1", None, "{tmp}/out"),
    ("--momentum -0.1", T + ["--momentum", "-0.1"], "--momentum must be a finite number >= 0", None, "{tmp}/out"),
    ("--gamma 0", T + ["--gamma", "0"], "--gamma must be a finite number > 0", None, "{tmp}/out"),
    ("--gamma -0.1", T + ["--gamma", "-0.1"], "--gamma must be a finite number > 0", None, "{tmp}/out"),
    (
        "--milestones 5,3",
        T + ["--epochs", "10", "--milestones", "5,3"],
        "--milestones must be increasing epochs in 1..9",
        None,
        "{tmp}/out",
    ),
    ("--milestones abc", T + ["--milestones", "abc"], "--milestones takes comma-separated epochs", None, "{tmp}/out"),
    (
        "--milestones beyond the epochs",
        T + ["--epochs", "10", "--milestones", "200"],
        "--milestones must be increasing epochs",
        None,
        "{tmp}/out",
    ),
    (
        "--warmup-epochs 100 of 10",
        T + ["--epochs", "10", "--warmup-epochs", "100"],
        "--warmup-epochs must lie in 0..9",
        None,
        "{tmp}/out",
    ),
    ("--warmup-epochs -1", T + ["--warmup-epochs", "-1"], "--warmup-epochs must lie in", None, "{tmp}/out"),
    (
        "--label-smoothing 1.5",
        T + ["--label-smoothing", "1.5"],
        "--label-smoothing must be a finite number >= 0 and <= 1",
        None,
        "{tmp}/out",
    ),
    (
        "--label-smoothing nan",
        T + ["--label-smoothing", "nan"],
        "--label-smoothing must be a finite number",
        None,
        "{tmp}/out",
    ),
    (
        "--nesterov with adam",
        T + ["--optimizer", "adam", "--nesterov"],
        "--nesterov needs the sgd --optimizer",
        None,
        "{tmp}/out",
    ),
    ("--optimizer lbfgs", T + ["--optimizer", "lbfgs"], "invalid choice: 'lbfgs'", None, "{tmp}/out"),
    ("--precision fp8", T + ["--precision", "fp8"], "invalid choice: 'fp8'", None, "{tmp}/out"),
    (
        "--seed 99999999999999999999",
        T + ["--seed", "99999999999999999999"],
        "--seed must be an integer in 0..",
        None,
        "{tmp}/out",
    ),
    ("--seed -1", T + ["--seed", "-1"], "--seed must be an integer in 0..", None, "{tmp}/out"),
    ("--seed 1.5", T + ["--seed", "1.5"], "invalid int value: '1.5'", None, "{tmp}/out"),
    # ---- train: sizes and devices
    ("--image-size -8", T + ["--image-size", "-8"], "--image-size must lie in 8..1024 px", None, "{tmp}/out"),
    ("--image-size 0", T + ["--image-size", "0"], "--image-size must lie in 8..1024 px", None, "{tmp}/out"),
    ("--image-size 7", T + ["--image-size", "7"], "--image-size must lie in 8..1024 px", None, "{tmp}/out"),
    ("--image-size 5000", T + ["--image-size", "5000"], "--image-size must lie in 8..1024 px", None, "{tmp}/out"),
    (
        "--image-size 48 for resnet56",
        [
            "train",
            "--arch",
            "resnet56",
            "--data",
            "digits",
            "--mode",
            "cnn",
            "--image-size",
            "48",
            "--out",
            "{tmp}/out",
        ],
        "takes 32 or 64 px images",
        None,
        "{tmp}/out",
    ),
    ("--device meta", T + ["--device", "meta"], "--device 'meta' is not supported", None, "{tmp}/out"),
    ("--device tpu", T + ["--device", "tpu"], "unknown --device 'tpu'", None, "{tmp}/out"),
    ("--device cuda without CUDA", T + ["--device", "cuda"], "no CUDA device is available", None, "{tmp}/out"),
    ("--device cuda:7 without CUDA", T + ["--device", "cuda:7"], "no CUDA device is available", None, "{tmp}/out"),
    ("--device nonsense:x", T + ["--device", "nonsense:x"], "unknown --device", None, "{tmp}/out"),
    (
        "--sync-bn without torchrun",
        T + ["--sync-bn"],
        "--sync-bn synchronises batch norm across CUDA processes",
        None,
        "{tmp}/out",
    ),
    # ---- train: the output folder
    ("--out below a file", T[:-1] + ["{file}/sub"], "is a file, so --out", None, None),
    ("--out a file", T[:-1] + ["{file}"], "exists and is not a folder", None, None),
    ("--out a non-empty folder", T, "exists and is not an empty folder", "nonempty", None),
    ("--out holding a run", T[:-1] + ["{cnn}"], "already holds a run: continue it (--resume)", None, None),
    (
        "--resume on a missing folder",
        ["train", "--resume", "--out", "{tmp}/none"],
        "nothing to resume",
        None,
        "{tmp}/none",
    ),
    (
        "--resume a finished run",
        ["train", "--resume", "--out", "{cnn}"],
        "holds a finished run: nothing to resume",
        None,
        None,
    ),
    (
        "--resume with another --arch",
        ["train", "--resume", "--arch", "resnet56", "--out", "{cnn_copy}"],
        "holds a different run (--arch 'small', not 'resnet56')",
        "cnn_running",
        None,
    ),
    (
        "--resume with another --lr",
        ["train", "--resume", "--lr", "0.5", "--out", "{cnn_copy}"],
        "holds a different run (--lr 0.1, not 0.5)",
        "cnn_running",
        None,
    ),
    (
        "--resume with another --seed",
        ["train", "--resume", "--seed", "7", "--out", "{cnn_copy}"],
        "holds a different run (--seed 3, not 7)",
        "cnn_running",
        None,
    ),
    # ---- train: data
    (
        "imagefolder without a path",
        T[:4] + ["imagefolder:"] + T[5:],
        "imagefolder needs a path: --data imagefolder:PATH",
        None,
        "{tmp}/out",
    ),
    (
        "imagefolder path missing",
        T[:4] + ["imagefolder:{tmp}/none"] + T[5:],
        "is not a folder: imagefolder:PATH needs",
        None,
        "{tmp}/out",
    ),
    ("imagefolder path a file", T[:4] + ["imagefolder:{file}"] + T[5:], "is not a folder", None, "{tmp}/out"),
    (
        "imagefolder with an empty class folder",
        T[:4] + ["imagefolder:{tmp}/tree"] + T[5:],
        "holds no images",
        "tree_empty_class",
        "{tmp}/out",
    ),
    (
        "imagefolder test class unknown to train",
        T[:4] + ["imagefolder:{tmp}/tree"] + T[5:],
        "test/ has classes that train/ lacks (zzz)",
        "tree_extra_test_class",
        "{tmp}/out",
    ),
    (
        "imagefolder without class folders",
        T[:4] + ["imagefolder:{tmp}/tree"] + T[5:],
        "has no class folders",
        "tree_no_classes",
        "{tmp}/out",
    ),
    (
        "imagefolder with a corrupt image",
        T[:4] + ["imagefolder:{tmp}/tree"] + T[5:],
        "cannot read image",
        "tree_corrupt",
        "{tmp}/out",
    ),
    (
        "imagefolder with a 40000x40000 px header",
        T[:4] + ["imagefolder:{tmp}/tree"] + T[5:],
        "claims to be too large",
        "tree_bomb",
        "{tmp}/out",
    ),
    (
        "digits with a ':' argument",
        T[:4] + ["digits:x"] + T[5:],
        "takes no ':' argument (give its location as --data-root)",
        None,
        "{tmp}/out",
    ),
    (
        "--data-root a file",
        [
            "train",
            "--arch",
            "small",
            "--data",
            "tinyimagenet",
            "--data-root",
            "{file}",
            "--mode",
            "cnn",
            "--out",
            "{tmp}/out",
        ],
        "--data-root",
        None,
        "{tmp}/out",
    ),
    (
        "tinyimagenet missing",
        [
            "train",
            "--arch",
            "small",
            "--data",
            "tinyimagenet",
            "--data-root",
            "{tmp}/none",
            "--mode",
            "cnn",
            "--out",
            "{tmp}/out",
        ],
        "no Tiny ImageNet in",
        None,
        "{tmp}/out",
    ),
    (
        "tinyimagenet without val annotations",
        [
            "train",
            "--arch",
            "small",
            "--data",
            "tinyimagenet",
            "--data-root",
            "{tmp}/tiny",
            "--mode",
            "cnn",
            "--out",
            "{tmp}/out",
        ],
        "no Tiny ImageNet in",
        "tiny_no_val",
        "{tmp}/out",
    ),
    # ---- train: backdoor
    ("--poison-rate without --backdoor", T + ["--poison-rate", "0.2"], "need --backdoor", None, "{tmp}/out"),
    (
        "--poison-rate 0",
        T + ["--backdoor", "--poison-rate", "0"],
        "--poison-rate must lie in (0, 1]",
        None,
        "{tmp}/out",
    ),
    (
        "--poison-rate 1.5",
        T + ["--backdoor", "--poison-rate", "1.5"],
        "--poison-rate must lie in (0, 1]",
        None,
        "{tmp}/out",
    ),
    (
        "--target-class 10 of 10",
        T + ["--backdoor", "--target-class", "10"],
        "--target-class must lie in 0..9",
        None,
        "{tmp}/out",
    ),
    (
        "--trigger-size 40",
        T + ["--backdoor", "--trigger-size", "40"],
        "does not fit a 32 px image: change --trigger-size or --trigger-pos",
        None,
        "{tmp}/out",
    ),
    ("--trigger-size 0", T + ["--backdoor", "--trigger-size", "0"], "does not fit", None, "{tmp}/out"),
    ("--trigger-pos 30,30", T + ["--backdoor", "--trigger-pos", "30,30"], "does not fit", None, "{tmp}/out"),
    ("--trigger-pos abc", T + ["--backdoor", "--trigger-pos", "abc"], "--trigger-pos takes ROW,COL", None, "{tmp}/out"),
    (
        "--trigger-pos 1,2,3",
        T + ["--backdoor", "--trigger-pos", "1,2,3"],
        "--trigger-pos takes ROW,COL",
        None,
        "{tmp}/out",
    ),
    # ---- train: configuration files
    (
        "--config missing",
        ["train", "--config", "{tmp}/none.json", "--out", "{tmp}/out"],
        "does not exist: give a JSON or YAML file",
        None,
        "{tmp}/out",
    ),
    (
        "--config not JSON",
        ["train", "--config", "{tmp}/c.json", "--out", "{tmp}/out"],
        "is not valid JSON",
        "cfg_bad_json",
        "{tmp}/out",
    ),
    (
        "--config with an unknown key",
        ["train", "--config", "{tmp}/c.json", "--out", "{tmp}/out"],
        "unknown settings: colour",
        "cfg_unknown",
        "{tmp}/out",
    ),
    (
        "--config YAML list",
        ["train", "--config", "{tmp}/c.yaml", "--out", "{tmp}/out"],
        "must hold one mapping",
        "cfg_list_yaml",
        "{tmp}/out",
    ),
    (
        "--config bad YAML",
        ["train", "--config", "{tmp}/c.yaml", "--out", "{tmp}/out"],
        "is not valid YAML",
        "cfg_bad_yaml",
        "{tmp}/out",
    ),
    (
        "train --out a folder with someone else's run.json",
        ["train", "--mode", "cnn", "--arch", "small", "--data", "digits", "--out", "{tmp}/theirs"],
        "holds a run.json that is not a readable shallowdeep run: choose another --out",
        "foreign_run_json",
        "{tmp}/theirs/model.safetensors",
    ),
    (
        "--config a YAML alias bomb",
        ["train", "--config", "{tmp}/c.yaml", "--out", "{tmp}/out"],
        "uses YAML aliases",
        "cfg_alias_bomb",
        "{tmp}/out",
    ),
    (
        "--config /dev/zero",
        ["train", "--config", "/dev/zero", "--out", "{tmp}/out"],
        "is not a regular file",
        None,
        "{tmp}/out",
    ),
    (
        "--config not text",
        ["train", "--config", "{tmp}/c.json", "--out", "{tmp}/out"],
        "is not valid JSON",
        "cfg_binary",
        "{tmp}/out",
    ),
    (
        "--config epochs: ten",
        ["train", "--config", "{tmp}/c.yaml", "--data", "digits", "--out", "{tmp}/out"],
        "--epochs must be an integer, got 'ten'",
        "cfg_epochs_word",
        "{tmp}/out",
    ),
    (
        "--config milestones: 5",
        ["train", "--config", "{tmp}/c.yaml", "--data", "digits", "--out", "{tmp}/out"],
        "--milestones must be a list of integers, got 5",
        "cfg_milestones_int",
        "{tmp}/out",
    ),
    (
        "--config backdoor: yes",
        ["train", "--config", "{tmp}/c.yaml", "--data", "digits", "--out", "{tmp}/out"],
        "backdoor must be a mapping",
        "cfg_backdoor_yes",
        "{tmp}/out",
    ),
    (
        "--config ic_fractions of words",
        ["train", "--config", "{tmp}/c.json", "--data", "digits", "--out", "{tmp}/out"],
        "--ic-fractions must be a list of numbers",
        "cfg_fractions_words",
        "{tmp}/out",
    ),
    # ---- command line
    ("unknown command", ["fly"], "invalid choice: 'fly'", None, None),
    ("no command", [], "the following arguments are required: COMMAND", None, None),
    ("unknown flag", ["list", "--colour"], "unrecognized arguments: --colour", None, None),
    # ---- info
    ("info with nothing", ["info"], "give a RUN folder, or both --arch and --data", None, None),
    ("info with a run and --arch", ["info", "{cnn}", "--arch", "small"], "not both", None, None),
    ("info unknown architecture", ["info", "--arch", "nope", "--data", "cifar10"], "unknown --arch 'nope'", None, None),
    ("info unknown data set", ["info", "--arch", "small", "--data", "mnist"], "unknown --data set 'mnist'", None, None),
    ("info missing run", ["info", "{tmp}/none"], "is not a run folder", None, None),
    (
        "info --flops odd",
        ["info", "--arch", "small", "--data", "digits", "--flops", "odd"],
        "invalid choice: 'odd'",
        None,
        None,
    ),
    (
        "info --image-size 48 for resnet56",
        ["info", "--arch", "resnet56", "--data", "cifar10", "--image-size", "48"],
        "takes 32 or 64 px",
        None,
        None,
    ),
    (
        "info --image-size 0",
        ["info", "--arch", "small", "--data", "digits", "--image-size", "0"],
        "--image-size must be an integer in 8..1024 px",
        None,
        None,
    ),
    (
        "info imagefolder missing",
        ["info", "--arch", "small", "--data", "imagefolder:{tmp}/none"],
        "is not a folder",
        None,
        None,
    ),
    # ---- analyze: arguments (checked before anything is collected)
    (
        "analyze --rule patience:9 on 4 ICs",
        ["analyze", "{ic_copy}", "--rule", "patience:9"],
        "needs more agreeing ICs than the network's 4",
        None,
        "{tmp}/ic-copy/calibration.json",
    ),
    ("analyze a missing folder", ["analyze", "{tmp}/none"], "is not a run folder (no such directory)", None, None),
    ("analyze a file", ["analyze", "{file}"], "is a file, not a run folder", None, None),
    ("analyze a folder without run.json", ["analyze", "{tmp}"], "has no run.json", None, None),
    (
        "analyze --max-drop -1",
        ["analyze", "{ic}", "--max-drop", "-1"],
        "--max-drop is an accuracy drop in [0, 1]",
        None,
        None,
    ),
    (
        "analyze --max-drop nan",
        ["analyze", "{ic}", "--max-drop", "nan"],
        "--max-drop is an accuracy drop in [0, 1]",
        None,
        None,
    ),
    ("analyze --max-drop 1.5", ["analyze", "{ic}", "--max-drop", "1.5"], "--max-drop is an accuracy drop", None, None),
    (
        "analyze --budget 0",
        ["analyze", "{ic}", "--budget", "0"],
        "--budget is a cost relative to the CNN's",
        None,
        None,
    ),
    ("analyze --budget -1", ["analyze", "{ic}", "--budget", "-1"], "--budget is a cost", None, None),
    ("analyze --budget nan", ["analyze", "{ic}", "--budget", "nan"], "--budget is a cost", None, None),
    ("analyze --budget inf", ["analyze", "{ic}", "--budget", "inf"], "--budget is a cost", None, None),
    ("analyze --fallback odd", ["analyze", "{ic}", "--fallback", "odd"], "invalid choice: 'odd'", None, None),
    (
        "analyze --out a file",
        ["analyze", "{ic}", "--out", "{tmp}/rep"],
        "exists and is not a folder",
        "report_file",
        None,
    ),
    # ---- analyze: shifted inputs (checked before anything is collected)
    ("analyze --corruptions fog", ["analyze", "{ic}", "--corruptions", "fog"], "unknown corruption 'fog'", None, None),
    (
        "analyze --corruptions jpeg:9",
        ["analyze", "{ic}", "--corruptions", "jpeg:9"],
        "is 1..5, not 9",
        None,
        None,
    ),
    (
        "analyze --corruptions on a CNN run",
        ["analyze", "{cnn}", "--corruptions"],
        "measure an SDN's exits: this run is a CNN",
        None,
        None,
    ),
    (
        "analyze --ood that is neither a folder nor a data set",
        ["analyze", "{ic}", "--ood", "{tmp}/none"],
        "is neither a folder of images nor a data set name",
        None,
        None,
    ),
    ("analyze --ood a folder without images", ["analyze", "{ic}", "--ood", "{tmp}"], "no images", None, None),
    # ---- profile and latency budgets
    ("profile a CNN run", ["profile", "{cnn}"], "is a plain CNN run", None, None),
    ("profile --batch 0", ["profile", "{ic}", "--batch", "0"], "--batch must lie in 1..4096", None, None),
    ("profile --repeats 0", ["profile", "{ic}", "--repeats", "0"], "--repeats must lie in 1..", None, None),
    ("profile --runtime tf", ["profile", "{ic}", "--runtime", "tf"], "invalid choice: 'tf'", None, None),
    ("profile --out not json", ["profile", "{ic}", "--out", "{tmp}/p.txt"], "should be a .json file", None, None),
    (
        "profile --out in a missing folder",
        ["profile", "{ic}", "--out", "{tmp}/none/p.json"],
        "lies in a folder that does not exist",
        None,
        "{tmp}/none",
    ),
    ("profile a missing folder", ["profile", "{tmp}/none"], "is not a run folder", None, None),
    (
        "analyze --latency-budget without a profile",
        ["analyze", "{ic}", "--latency-budget", "5"],
        "latency.json does not exist (profile",
        None,
        None,
    ),
    (
        "analyze --latency-budget 0",
        ["analyze", "{ic}", "--latency-budget", "0"],
        "positive number of milliseconds",
        None,
        None,
    ),
    (
        "analyze --latency-percentile alone",
        ["analyze", "{ic}", "--latency-percentile", "95"],
        "serves a --latency-budget",
        None,
        None,
    ),
    (
        "analyze --latency-percentile 90",
        ["analyze", "{ic}", "--latency-budget", "5", "--latency-percentile", "90"],
        "invalid choice: 90",
        None,
        None,
    ),
    (
        "analyze --latency not a profile",
        ["analyze", "{ic}", "--latency-budget", "5", "--latency", "{tmp}/l.json"],
        "is not a usable latency profile",
        "latency_not_profile",
        None,
    ),
    (
        "analyze --latency of another network",
        ["analyze", "{ic}", "--latency-budget", "5", "--latency", "{tmp}/l.json"],
        "profiles a resnet56, not this run's small",
        "latency_other_arch",
        None,
    ),
    (
        "analyze --latency with negative times",
        ["analyze", "{ic}", "--latency-budget", "5", "--latency", "{tmp}/l.json"],
        "times are finite milliseconds >= 0",
        "latency_negative",
        None,
    ),
    (
        "analyze --latency-budget on a CNN run",
        ["analyze", "{cnn}", "--latency-budget", "5"],
        "chooses an SDN's exit thresholds: this run is a CNN",
        None,
        None,
    ),
    (
        "export --quantize int4",
        ["export", "{ic}", "--out", "{tmp}/e", "--quantize", "int4"],
        "invalid choice",
        None,
        None,
    ),
    (
        "export --quantize of a latency-calibrated run",
        ["export", "{ic_copy}", "--out", "{tmp}/e", "--quantize", "int8"],
        "chosen for a latency budget",
        "cal_latency_goal",
        "{tmp}/e",
    ),
    # ---- attack
    ("attack a CNN run", ["attack", "{cnn}"], "is a CNN run: a slowdown attack needs an SDN", None, None),
    ("attack a missing folder", ["attack", "{tmp}/none"], "is not a run folder", None, None),
    ("attack --epsilon 0", ["attack", "{ic}", "--epsilon", "0"], "--epsilon is a linf distance", None, None),
    ("attack --epsilon nan", ["attack", "{ic}", "--epsilon", "nan"], "--epsilon is a linf distance", None, None),
    ("attack --epsilon 2 (linf)", ["attack", "{ic}", "--epsilon", "2"], "in (0, 1]", None, None),
    ("attack --steps 0", ["attack", "{ic}", "--steps", "0"], "--steps is a whole number in 1..", None, None),
    ("attack --step-size -1", ["attack", "{ic}", "--step-size", "-1"], "--step-size is a linf distance", None, None),
    ("attack --inputs 0", ["attack", "{ic}", "--inputs", "0"], "--inputs is how many", None, None),
    ("attack --craft-inputs 0", ["attack", "{ic}", "--universal", "--craft-inputs", "0"], "--craft-inputs", None, None),
    ("attack --norm l3", ["attack", "{ic}", "--norm", "l3"], "invalid choice: 'l3'", None, None),
    ("attack --split train", ["attack", "{ic}", "--split", "train"], "invalid choice: 'train'", None, None),
    (
        "analyze --rules softmin",
        ["analyze", "{ic}", "--rules", "softmin"],
        "unknown exit rule 'softmin' in --rules",
        None,
        None,
    ),
    (
        "analyze --rule patience without K",
        ["analyze", "{ic}", "--rule", "patience"],
        "patience needs a count of agreeing ICs",
        None,
        None,
    ),
    ("analyze --rules patience:0", ["analyze", "{ic}", "--rules", "patience:0"], "patience:K needs K >= 1", None, None),
    ("analyze --device meta", ["analyze", "{ic}", "--device", "meta"], "--device 'meta' is not supported", None, None),
    # ---- analyze: damaged run folders
    (
        "weights deleted from a finished run",
        ["analyze", "{ic_copy}"],
        "finished training but its model.safetensors is gone",
        "weights_gone",
        None,
    ),
    ("truncated weights", ["analyze", "{ic_copy}"], "is not a valid safetensors file", "weights_truncated", None),
    ("weights of another architecture", ["analyze", "{ic_copy}"], "does not fit this", "weights_foreign", None),
    ("a 20 GB sparse weights file", ["analyze", "{ic_copy}"], "more than the", "weights_huge", None),
    ("garbage weights", ["analyze", "{ic_copy}"], "is not a valid safetensors file", "weights_garbage", None),
    ("run.json not JSON", ["analyze", "{ic_copy}"], "is not readable JSON", "runjson_text", None),
    ("run.json a list", ["analyze", "{ic_copy}"], "does not hold a JSON object", "runjson_list", None),
    ("run.json of 70 MB", ["analyze", "{ic_copy}"], "far more than a run's description", "runjson_huge", None),
    (
        "run.json of another format",
        ["analyze", "{ic_copy}"],
        "is not a shallowdeep run (format 'something/9')",
        "runjson_format",
        None,
    ),
    ("run.json without recipe", ["analyze", "{ic_copy}"], "the recipe is missing", "no_recipe", None),
    (
        "run.json without config",
        ["analyze", "{ic_copy}"],
        "the configuration (mode, arch, data) is missing",
        "no_config",
        None,
    ),
    ("run.json without data", ["analyze", "{ic_copy}"], "the data description is missing", "no_data", None),
    ("run.json without model", ["analyze", "{ic_copy}"], "no model description", "no_model", None),
    ("run.json with a 2-value mean", ["analyze", "{ic_copy}"], "data mean is not three numbers", "mean_two", None),
    ("run.json with a zero std", ["analyze", "{ic_copy}"], "data std has a value <= 0", "std_zero", None),
    (
        "run.json with too few class names",
        ["analyze", "{ic_copy}"],
        "names 2 classes for a model of 10",
        "few_classes",
        None,
    ),
    (
        "run.json num_classes 2e9",
        ["analyze", "{ic_copy}"],
        "num_classes 2000000000 is not an integer in 1..100000",
        "classes_2e9",
        None,
    ),
    (
        "run.json image_size 100000",
        ["analyze", "{ic_copy}"],
        "image_size 100000 is not an integer in 8..1024",
        "size_100000",
        None,
    ),
    ("run.json image_size 1e400", ["analyze", "{ic_copy}"], "image_size inf is not an integer", "size_inf", None),
    ("run.json model kind odd", ["analyze", "{ic_copy}"], "model kind or architecture missing", "kind_odd", None),
    ("run.json IC positions odd", ["analyze", "{ic_copy}"], "ic_positions is not a list", "positions_odd", None),
    ("run.json epochs not a list", ["analyze", "{ic_copy}"], "the epoch history is not a list", "epochs_odd", None),
    (
        "run.json data_root elsewhere (no download, nothing made)",
        ["analyze", "{ic_copy}"],
        "cifar10 is not in",
        "data_root_elsewhere",
        "{tmp}/elsewhere",
    ),
    ("records/ a link out of the run", ["analyze", "{ic_copy}"], "leads outside the run folder", "records_link", None),
    ("report/ a link out of the run", ["analyze", "{ic_copy}"], "leads outside the run folder", "report_link", None),
    (
        "an unfinished run",
        ["analyze", "{cnn_copy}"],
        "has no model.safetensors: training did not finish; continue it (--resume)",
        "cnn_running",
        None,
    ),
    # ---- predict
    (
        "predict without calibration",
        ["predict", "{ic}", "{tmp}/imgs"],
        "has no calibrated threshold: analyze the run first (`shallowdeep analyze",
        "imgs",
        None,
    ),
    (
        "predict with a calibration for other weights",
        ["predict", "{ic_copy}", "{file}"],
        "was calibrated for other weights",
        "cal_other_weights",
        None,
    ),
    (
        "calibration.json threshold 'abc'",
        ["predict", "{ic_copy}", "{file}"],
        "calibration.json is damaged",
        "cal_text",
        None,
    ),
    (
        "calibration.json without threshold",
        ["predict", "{ic_copy}", "{file}"],
        "calibration.json is damaged",
        "cal_missing",
        None,
    ),
    (
        "calibration.json NaN threshold",
        ["predict", "{ic_copy}", "{file}"],
        "calibration.json is damaged",
        "cal_nan",
        None,
    ),
    (
        "calibration.json threshold 2",
        ["predict", "{ic_copy}", "{file}"],
        "calibration.json is damaged",
        "cal_two",
        None,
    ),
    (
        "calibration.json per-IC threshold 1.5",
        ["predict", "{ic_copy}", "{file}"],
        "calibration.json is damaged",
        "cal_per_ic_range",
        None,
    ),
    (
        "calibration.json 2 per-IC thresholds for 4 ICs",
        ["predict", "{ic_copy}", "{file}"],
        "does not fit this model",
        "cal_per_ic_count",
        None,
    ),
    (
        "calibration.json not JSON",
        ["predict", "{ic_copy}", "{file}"],
        "calibration.json is not readable JSON",
        "cal_not_json",
        None,
    ),
    (
        "predict --threshold -1",
        ["predict", "{ic}", "{tmp}/imgs", "--threshold", "-1"],
        "--threshold is a softmax confidence in [0, 1]",
        "imgs",
        None,
    ),
    (
        "predict --threshold 2",
        ["predict", "{ic}", "{tmp}/imgs", "--threshold", "2"],
        "--threshold is a softmax confidence in [0, 1]",
        "imgs",
        None,
    ),
    (
        "predict --threshold nan",
        ["predict", "{ic}", "{tmp}/imgs", "--threshold", "nan"],
        "--threshold is a softmax confidence",
        "imgs",
        None,
    ),
    (
        "predict --threshold 1.0000001",
        ["predict", "{ic}", "{tmp}/imgs", "--threshold", "1.0000001"],
        "--threshold is a softmax confidence",
        "imgs",
        None,
    ),
    (
        "predict --batch-size 0",
        ["predict", "{ic}", "{tmp}/imgs", "--threshold", "0.5", "--batch-size", "0"],
        "--batch-size must be at least 1",
        "imgs",
        None,
    ),
    (
        "predict --fallback odd",
        ["predict", "{ic}", "{tmp}/imgs", "--fallback", "odd"],
        "invalid choice: 'odd'",
        "imgs",
        None,
    ),
    (
        "predict on a plain CNN run",
        ["predict", "{cnn}", "{tmp}/imgs", "--threshold", "0.5"],
        "is a plain CNN run: early exits need an SDN",
        "imgs",
        None,
    ),
    (
        "predict a missing image",
        ["predict", "{ic}", "{tmp}/none.png", "--threshold", "0.5"],
        "does not exist: give image files or folders",
        None,
        None,
    ),
    (
        "predict a folder without images",
        ["predict", "{ic}", "{tmp}/imgs", "--threshold", "0.5"],
        "no images (",
        "empty_dir",
        None,
    ),
    (
        "predict a text file named .png",
        ["predict", "{ic}", "{tmp}/imgs/t.png", "--threshold", "0.5"],
        "cannot read image",
        "img_text",
        None,
    ),
    (
        "predict a 20 px image without --resize",
        ["predict", "{ic}", "{tmp}/imgs/small.png", "--threshold", "0.5"],
        "the model takes 32x32: resize it (--resize)",
        "img_small",
        None,
    ),
    (
        "predict a 40000x40000 px header",
        ["predict", "{ic}", "{tmp}/imgs/bomb.png", "--threshold", "0.5"],
        "claims to be too large",
        "img_bomb",
        None,
    ),
    ("predict a missing run", ["predict", "{tmp}/none", "{file}"], "is not a run folder", None, None),
    # ---- serve
    (
        "serve a folder that is neither a run nor an export",
        ["serve", "{tmp}"],
        "is neither a run folder (run.json) nor an export (manifest.json)",
        None,
        None,
    ),
    (
        "serve --replicas without --ray",
        ["serve", "{ic}", "--replicas", "3"],
        "--replicas, --replica-cpus and --ray-address serve on Ray",
        None,
        None,
    ),
    (
        "serve --ray with no replica",
        ["serve", "{tmp}", "--ray", "--replicas", "0"],
        "--replicas must be an integer",
        None,
        None,
    ),
    (
        "serve on a port that does not exist",
        ["serve", "{tmp}", "--port", "70000"],
        "--port must lie in 0..65535",
        None,
        None,
    ),
    # ---- explain
    ("explain a plain CNN run", ["explain", "{cnn}"], "is a plain CNN run", None, None),
    ("explain --max 0", ["explain", "{ic}", "--max", "0"], "--max must be at least 1", None, None),
    ("explain --split odd", ["explain", "{ic}", "--split", "odd"], "invalid choice: 'odd'", None, None),
    ("explain/ a link out of the run", ["explain", "{ic_copy}"], "leads outside the run folder", "explain_link", None),
    ("explain a missing run", ["explain", "{tmp}/none"], "is not a run folder", None, None),
    # ---- demo and reproduce
    ("demo --epochs 0", ["demo", "--epochs", "0", "--out", "{tmp}/d"], "--epochs must be at least 1", None, "{tmp}/d"),
    (
        "demo --ic-epochs -1",
        ["demo", "--ic-epochs", "-1", "--out", "{tmp}/d"],
        "--ic-epochs must be at least 1",
        None,
        "{tmp}/d",
    ),
    ("demo --out a file", ["demo", "--out", "{file}"], "is not an empty folder or an earlier demo", None, None),
    (
        "demo --out a folder of the user's",
        ["demo", "--out", "{tmp}/d"],
        "is not an empty folder or an earlier demo",
        "demo_nonempty",
        None,
    ),
    (
        "reproduce unknown architecture",
        ["reproduce", "--data", "digits", "--archs", "nope", "--out", "{tmp}/r"],
        "unknown architecture 'nope' in --archs",
        None,
        "{tmp}/r",
    ),
    (
        "reproduce no architecture",
        ["reproduce", "--data", "digits", "--archs", ",", "--out", "{tmp}/r"],
        "--archs names no architecture",
        None,
        "{tmp}/r",
    ),
    (
        "reproduce unknown data set",
        ["reproduce", "--data", "mnist", "--out", "{tmp}/r"],
        "unknown --data set 'mnist'",
        None,
        "{tmp}/r",
    ),
    (
        "reproduce --out a file",
        ["reproduce", "--data", "digits", "--archs", "small", "--out", "{file}"],
        "exists and is not a folder",
        None,
        None,
    ),
    (
        "reproduce unknown stage",
        ["reproduce", "--data", "digits", "--stages", "sdn,finetune", "--out", "{tmp}/r"],
        "unknown or no stage in --stages (finetune)",
        None,
        "{tmp}/r",
    ),
    (
        "reproduce ic-only without a CNN",
        ["reproduce", "--data", "digits", "--stages", "ic-only", "--out", "{tmp}/r"],
        "the ic-only stage needs a finished CNN",
        None,
        "{tmp}/r",
    ),
    (
        "reproduce unknown method",
        ["reproduce", "--data", "digits", "--methods", "sdn,finetune", "--out", "{tmp}/r"],
        "--methods must name distinct methods of ic-only, mixed, ztw, distill, sdn, got sdn, finetune",
        None,
        "{tmp}/r",
    ),
    (
        "reproduce a method twice",
        ["reproduce", "--data", "digits", "--methods", "ztw,ztw", "--out", "{tmp}/r"],
        "--methods must name distinct methods",
        None,
        "{tmp}/r",
    ),
    (
        "reproduce a stage of no asked method",
        ["reproduce", "--data", "digits", "--methods", "sdn", "--stages", "cnn,sdn", "--out", "{tmp}/r"],
        "unknown or no stage in --stages (cnn): choose from sdn",
        None,
        "{tmp}/r",
    ),
    (
        "reproduce mixed without a CNN",
        ["reproduce", "--data", "digits", "--methods", "mixed,sdn", "--stages", "mixed", "--out", "{tmp}/r"],
        "the mixed stage needs a finished CNN",
        None,
        "{tmp}/r",
    ),
    (
        "reproduce --mixed-epochs 0",
        ["reproduce", "--data", "digits", "--methods", "mixed", "--mixed-epochs", "0", "--out", "{tmp}/r"],
        "--mixed-epochs must be at least 1",
        None,
        "{tmp}/r",
    ),
    (
        "reproduce --cnn-epochs 0",
        ["reproduce", "--data", "digits", "--cnn-epochs", "0", "--out", "{tmp}/r"],
        "--cnn-epochs must be at least 1",
        None,
        "{tmp}/r",
    ),
    (
        "reproduce --max-concurrent 0",
        ["reproduce", "--data", "digits", "--max-concurrent", "0", "--out", "{tmp}/r"],
        "--max-concurrent must be a whole number in 1..64, got 0",
        None,
        "{tmp}/r",
    ),
    (
        "reproduce --gpus on the CPU",
        ["reproduce", "--data", "digits", "--device", "cpu", "--gpus", "0", "--out", "{tmp}/r"],
        "--gpus needs a CUDA device, but the reproduction runs on cpu",
        None,
        "{tmp}/r",
    ),
    (
        "reproduce --gpus not numbers",
        ["reproduce", "--data", "digits", "--gpus", "a,b", "--out", "{tmp}/r"],
        "--gpus takes GPU numbers separated by commas",
        None,
        "{tmp}/r",
    ),
    (
        "reproduce --device meta",
        ["reproduce", "--data", "digits", "--device", "meta", "--out", "{tmp}/r"],
        "--device 'meta' is not supported",
        None,
        "{tmp}/r",
    ),
    # ---- zoo models, IC placement, image folders (issue 11)
    (
        "unknown torchvision model",
        ["train", "--arch", "torchvision:resnet7", "--data", "digits", "--mode", "cnn", "--out", "{tmp}/out"],
        "unknown torchvision classifier 'resnet7'",
        None,
        "{tmp}/out",
    ),
    (
        "unknown timm model",
        ["train", "--arch", "timm:nope_net", "--data", "digits", "--mode", "cnn", "--out", "{tmp}/out"],
        "unknown timm model 'nope_net'",
        None,
        "{tmp}/out",
    ),
    (
        "unknown zoo",
        ["info", "--arch", "keras:resnet50", "--data", "digits"],
        "unknown --arch 'keras:resnet50'",
        None,
        None,
    ),
    (
        "--ic-cuts that is no cut point",
        ZOO + ["--ic-cuts", "nope"],
        "'nope', which is not a single-tensor cut point",
        None,
        "{tmp}/out",
    ),
    (
        "--ic-cuts inside a residual block",
        ZOO + ["--ic-cuts", "layer1_0_conv1"],
        "not a single-tensor cut point",
        None,
        "{tmp}/out",
    ),
    (
        "--ic-cuts out of order",
        ZOO + ["--ic-cuts", "layer2_0_relu_1,layer1_0_relu_1"],
        "distinct cut points in network order",
        None,
        "{tmp}/out",
    ),
    (
        "--ic-cuts at the classifier head",
        ZOO + ["--ic-cuts", "flatten"],
        "is where the classifier head starts, or after it",
        None,
        "{tmp}/out",
    ),
    (
        "--ic-fractions not increasing",
        ZOO + ["--ic-fractions", "0.5,0.2"],
        "--ic-fractions must be increasing",
        None,
        "{tmp}/out",
    ),
    (
        "--ic-fractions not numbers",
        ZOO + ["--ic-fractions", "a,b"],
        "--ic-fractions takes comma-separated numbers",
        None,
        "{tmp}/out",
    ),
    (
        "--ic-cuts and --ic-fractions",
        ZOO + ["--ic-cuts", "layer1_0_relu_1", "--ic-fractions", "0.5"],
        "give IC --ic-cuts or --ic-fractions, not both",
        None,
        "{tmp}/out",
    ),
    (
        "--pretrained on a paper backbone",
        ["train", "--arch", "small", "--data", "digits", "--mode", "cnn", "--pretrained", "--out", "{tmp}/out"],
        "are for zoo models",
        None,
        "{tmp}/out",
    ),
    (
        "--weights that do not exist",
        ZOO + ["--weights", "{tmp}/none.safetensors"],
        "none.safetensors is not a file",
        None,
        "{tmp}/out",
    ),
    (
        "--weights of another model",
        ZOO + ["--weights", "{tmp}/r34.safetensors"],
        "do not fit: layer1.2.bn1.bias is not in the model",
        "r34_weights",
        "{tmp}/out",
    ),
    ("--weights that are not weights", ZOO + ["--weights", "{file}"], "cannot read --weights", None, "{tmp}/out"),
    (
        "--pretrained and --weights",
        ZOO + ["--pretrained", "--weights", "{file}"],
        "give --pretrained or --weights, not both",
        None,
        "{tmp}/out",
    ),
    (
        "image size a zoo model cannot take",
        ["info", "--arch", "torchvision:inception_v3", "--data", "digits", "--image-size", "32"],
        "cannot take 32 px images",
        None,
        None,
    ),
    (
        "--data-mode stream for CIFAR",
        [
            "train",
            "--arch",
            "small",
            "--data",
            "digits",
            "--mode",
            "cnn",
            "--data-mode",
            "stream",
            "--out",
            "{tmp}/out",
        ],
        "streaming (--data-mode stream) is for imagefolder",
        None,
        "{tmp}/out",
    ),
    (
        "val/ with a class train/ lacks",
        ["train", "--arch", "small", "--data", "imagefolder:{tmp}/tree", "--mode", "cnn", "--out", "{tmp}/out"],
        "val/ has classes that train/ lacks (zzz)",
        "tree_extra_val_class",
        "{tmp}/out",
    ),
    (
        "ic-only of a zoo model without weights",
        ["train", "--arch", "torchvision:resnet18", "--data", "digits", "--mode", "ic-only", "--out", "{tmp}/out"],
        "ic-only training needs --from",
        None,
        "{tmp}/out",
    ),
    (
        "info --cuts on a paper backbone",
        ["info", "--arch", "small", "--data", "digits", "--cuts"],
        "--cuts is for zoo models",
        None,
        None,
    ),
]


def _context(tmp: Path, tiny_runs: Path) -> dict:
    (tmp / "a-file.txt").write_text("a file")
    ctx = {"tmp": tmp, "file": tmp / "a-file.txt", "cnn": tiny_runs / "cnn", "ic": tiny_runs / "ic"}
    return ctx


def run_row(row, tmp: Path, tiny_runs: Path) -> tuple[int, str]:
    """Run one row in-process; returns (exit status, stderr)."""
    from shallowdeep.cli import main

    _, argv, _, setup, _ = row
    ctx = _context(tmp, tiny_runs)
    text = " ".join(argv) + " " + (setup or "")
    if "cnn_copy" in text or setup in ("cnn_running", "weights_foreign"):
        ctx["cnn_copy"] = Path(shutil.copytree(tiny_runs / "cnn", tmp / "cnn-copy"))
    if "ic_copy" in text:
        ctx["ic_copy"] = Path(shutil.copytree(tiny_runs / "ic", tmp / "ic-copy"))
    if setup:
        SETUPS[setup](ctx)
    args = [a.format(**{k: str(v) for k, v in ctx.items()}) for a in argv]
    err, out = io.StringIO(), io.StringIO()
    with redirect_stderr(err), redirect_stdout(out):
        try:
            status = main(args)
        except SystemExit as e:  # argparse
            status = e.code
    return status, err.getvalue()


@pytest.mark.parametrize("row", ROWS, ids=[r[0] for r in ROWS])
def test_bad_input_gets_one_line(row, tmp_path, tiny_runs):
    name, argv, fragment, setup, must_not_exist = row
    status, err = run_row(row, tmp_path, tiny_runs)
    lines = err.strip().splitlines()
    assert status == 2, (status, err)
    assert len(lines) == 1 and "Traceback" not in err, err
    assert fragment in lines[0], lines[0]
    if must_not_exist:
        assert not Path(must_not_exist.format(tmp=tmp_path)).exists(), "bad input left something behind"


def test_the_table_has_well_past_150_rows_and_docs_list_them():
    assert len(ROWS) >= 150 and len({r[0] for r in ROWS}) == len(ROWS)
    doc = (Path(__file__).resolve().parents[1] / "docs" / "errors.md").read_text()
    missing = [r[0] for r in ROWS if f"| {r[0]} |" not in doc]
    assert not missing, f"docs/errors.md lacks rows (run python tests/test_errors.py): {missing[:5]}"


def test_runs_written_by_hand_stay_shareable(tmp_path):
    """Files the tool writes follow the umask (not 0600), so a report can be served."""
    from shallowdeep.core.io import write_json

    old = os.umask(0o022)
    try:
        write_json(tmp_path / "x.json", {"a": 1})
    finally:
        os.umask(old)
    assert (tmp_path / "x.json").stat().st_mode & 0o777 == 0o644


if __name__ == "__main__":  # rewrite docs/errors.md from the rows, with the messages really printed
    import tempfile

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from shallowdeep.runs import TrainConfig, train_run

    with tempfile.TemporaryDirectory() as d:
        base = Path(d)
        train_run(
            TrainConfig(out=str(base / "runs" / "cnn"), mode="cnn", arch="small", data="digits", epochs=3, seed=3),
            progress=False,
            log=None,
        )
        train_run(
            TrainConfig(out=str(base / "runs" / "ic"), mode="ic-only", from_run=str(base / "runs" / "cnn"), epochs=2),
            progress=False,
            log=None,
        )
        lines = [
            "# Bad input and what the tool says",
            "",
            "Every row is a test (`tests/test_errors.py`): exit status 2, one line on stderr holding the "
            "quoted part, no traceback, and, where a path is named, nothing created there. Regenerate with "
            "`python tests/test_errors.py` (paths below are from a temporary folder).",
            "",
            "| input | command | message |",
            "|---|---|---|",
        ]
        for i, row in enumerate(ROWS):
            tmp = base / f"row{i}"
            tmp.mkdir()
            status, err = run_row(row, tmp, base / "runs")
            msg = err.strip().splitlines()[0] if err.strip() else f"(exit {status}, no message)"
            msg = msg.replace(str(base), "…").replace("|", "\\|")
            cmd = " ".join(row[1]).replace("|", "\\|")
            lines.append(f"| {row[0]} | `shallowdeep {cmd}` | {msg} |")
        # bad input only a torchrun worker can meet: a worker ends with os._exit, so these rows run in
        # subprocesses, in tests/test_distributed.py (same checks: status 2, one line, nothing written)
        lines += [
            "",
            "Under torchrun (`WORLD_SIZE` > 1; tested in `tests/test_distributed.py`, each in its own process):",
            "",
            "| input | command | message |",
            "|---|---|---|",
            "| a command that does not share its work between ranks | `torchrun ... -m shallowdeep list` | "
            "shallowdeep list: error: list runs in one process, not under torchrun (each rank would repeat it): "
            "start it without torchrun; train, analyze, reproduce share their work between ranks |",
            "| WORLD_SIZE set by hand, no MASTER_ADDR/MASTER_PORT | `WORLD_SIZE=2 shallowdeep train ...` | "
            "shallowdeep train: error: WORLD_SIZE is 2 but MASTER_ADDR and MASTER_PORT are not set: start the "
            "processes with torchrun (it sets them), or unset WORLD_SIZE for one process |",
        ]
        (Path(__file__).resolve().parents[1] / "docs" / "errors.md").write_text("\n".join(lines) + "\n")
        print(f"docs/errors.md: {len(ROWS)} rows")
