"""Shared fixtures: small generated data, the real data slices in ../shared/data, isolated caches."""

from __future__ import annotations

import hashlib
import os
import pickle
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("SHALLOWDEEP_SHARED_DATA", REPO.parent / "shared" / "data"))

# under pytest-xdist the workers share the cores: one intra-op pool each, not one per core each
# (the processes a test starts keep torch's default; a test that compares a child's weights with
# this process's bit for bit gives the child this process's count)
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
torch.set_num_threads(max(1, min(2, (os.cpu_count() or 1) // _WORKERS)))

# the compiler's disk cache starts empty in every session, as on a fresh CI machine (a warm
# /tmp/torchinductor_$USER would hide what compiled tests cost), and is shared by the session's
# workers (set here in the controller, inherited by the xdist workers it starts): every graph the
# suite compiles is compiled once, then loaded. Tests of the cache itself give their children their
# own folder.
if "TORCHINDUCTOR_CACHE_DIR" not in os.environ:
    import atexit
    import shutil
    import tempfile

    _INDUCTOR_CACHE = tempfile.mkdtemp(prefix="shallowdeep-test-inductor-")
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = _INDUCTOR_CACHE
    atexit.register(shutil.rmtree, _INDUCTOR_CACHE, ignore_errors=True)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Decoded-image caches and default data roots go to a temporary folder, never the home."""
    base = tmp_path_factory.getbasetemp()
    monkeypatch.setenv("SHALLOWDEEP_CACHE", str(base / "cache"))
    monkeypatch.setenv("SHALLOWDEEP_DATA", str(base / "default-data"))


def _digest(root: Path) -> dict[str, str]:
    return {
        str(f.relative_to(root)): hashlib.sha256(f.read_bytes()).hexdigest()
        for f in sorted(root.rglob("*"))
        if f.is_file()
    }


@pytest.fixture(scope="session")
def tiny_runs(tmp_path_factory):
    """Trained once per test session: ``cnn`` (small on digits, 3 epochs, seed 3) and ``ic`` (IC-only
    from it, 2 epochs). Tests must not change them (checked at the end of the session): a test that
    writes into a run, analyze included, works on ``copy_run(name)``."""
    from shallowdeep.runs import TrainConfig, train_run

    root = tmp_path_factory.mktemp("tiny-runs")
    q = dict(progress=False, log=None)
    train_run(TrainConfig(out=str(root / "cnn"), mode="cnn", arch="small", data="digits", epochs=3, seed=3), **q)
    train_run(TrainConfig(out=str(root / "ic"), mode="ic-only", from_run=str(root / "cnn"), epochs=2), **q)
    before = _digest(root)
    yield root
    assert _digest(root) == before, "a test changed the shared tiny runs: copy them first (copy_run)"


@pytest.fixture
def copy_run(tiny_runs, tmp_path):
    """``copy_run(name)``: a private copy of a shared tiny run, free to change."""
    import shutil

    def copy(name: str) -> Path:
        return Path(shutil.copytree(tiny_runs / name, tmp_path / f"copy-{name}"))

    return copy


@pytest.fixture(scope="session")
def digits():
    from shallowdeep.data import load_dataset

    return load_dataset("digits")


def _extract(archive: Path, dest: Path, members: list[str] | None = None) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    cmd = ["tar", "-xJf", str(archive), "-C", str(dest)]
    if members:
        cmd += ["--wildcards", *members]
    subprocess.run(cmd, check=True)
    return dest


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory) -> Path:
    archive = SHARED_DATA / "tiny-imagenet-200-subset.tar.xz"
    if not archive.is_file():
        pytest.skip(f"real Tiny ImageNet slice absent ({archive})")
    return _extract(archive, tmp_path_factory.mktemp("tiny")) / "tiny-imagenet-200"


@pytest.fixture(scope="session")
def cifar10_jpeg(tmp_path_factory) -> Path:
    """A slice of the real CIFAR-10 JPEGs: the first 100 training and 20 test images per class."""
    archive = SHARED_DATA / "cifar10-jpeg.tar.xz"
    if not archive.is_file():
        pytest.skip(f"real CIFAR-10 JPEGs absent ({archive})")
    return _extract(
        archive, tmp_path_factory.mktemp("cifar10jpeg"), ["train/*/00[0-9][0-9].jpg", "test/*/00[01][0-9].jpg"]
    )


def write_fake_cifar(root: Path, kind: str, n_train: int = 50, n_test: int = 20, seed: int = 0) -> dict:
    """Files in the official python-pickle CIFAR format, with their MD5s for torchvision's check."""
    rng = np.random.default_rng(seed)
    classes = 10 if kind == "cifar10" else 100
    folder = root / ("cifar-10-batches-py" if kind == "cifar10" else "cifar-100-python")
    folder.mkdir(parents=True)
    label_key = "labels" if kind == "cifar10" else "fine_labels"

    def dump(name, obj):
        with open(folder / name, "wb") as f:
            pickle.dump(obj, f)
        return [name, hashlib.md5((folder / name).read_bytes()).hexdigest()]

    truth = {}
    if kind == "cifar10":
        names = [f"data_batch_{i}" for i in range(1, 6)]
        per = n_train // 5
        parts = [(n, per) for n in names]
    else:
        parts = [("train", n_train)]
    train_list = []
    all_data, all_labels = [], []
    for name, n in parts:
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        labels = rng.integers(0, classes, n).tolist()
        all_data.append(data)
        all_labels += labels
        train_list.append(dump(name, {"data": data, label_key: labels}))
    tdata = rng.integers(0, 256, (n_test, 3072), dtype=np.uint8)
    tlabels = rng.integers(0, classes, n_test).tolist()
    test_list = [dump("test_batch" if kind == "cifar10" else "test", {"data": tdata, label_key: tlabels})]
    meta_name, meta_key = ("batches.meta", "label_names") if kind == "cifar10" else ("meta", "fine_label_names")
    meta_entry = dump(meta_name, {meta_key: [f"class{i}" for i in range(classes)]})
    truth.update(train=np.concatenate(all_data), train_labels=all_labels, test=tdata, test_labels=tlabels)
    return {
        "train_list": train_list,
        "test_list": test_list,
        "meta": {"filename": meta_name, "key": meta_key, "md5": meta_entry[1]},
        "truth": truth,
    }


@pytest.fixture
def fake_cifar(tmp_path, monkeypatch):
    """Make generated CIFAR files pass torchvision's MD5 check; returns a writer(kind) -> (root, truth)."""
    import torchvision

    def make(kind: str):
        root = tmp_path / kind
        info = write_fake_cifar(root, kind)
        cls = torchvision.datasets.CIFAR10 if kind == "cifar10" else torchvision.datasets.CIFAR100
        for attr in ("train_list", "test_list", "meta"):
            monkeypatch.setattr(cls, attr, info[attr])
        return root, info["truth"]

    return make


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run the installed command in a fresh process (exit status and stderr as a user sees them)."""
    import sys

    return subprocess.run(
        [sys.executable, "-m", "shallowdeep.cli", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )


def run_main(*args: str) -> subprocess.CompletedProcess:
    """The command run in this process (``shallowdeep.cli.main``), its stdout and stderr captured, as
    :func:`run_cli` returns them. For long happy paths made of several commands, where a fresh
    interpreter per command would cost its imports (3-4 s each on the 2-core VM); what a user sees of
    a command in its own process (one line on stderr, exit status 2, no traceback, the entry point)
    is tested with :func:`run_cli`."""
    import contextlib
    import io

    from shallowdeep.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(list(args))
        except SystemExit as e:  # argparse's own exits (bad flags, --help)
            code = e.code if isinstance(e.code, int) else 2
    return subprocess.CompletedProcess(["shallowdeep", *args], code, out.getvalue(), err.getvalue())


@pytest.fixture
def fake_compile(monkeypatch) -> list[int]:
    """``torch.compile`` replaced by a wrapper that compiles nothing (the real one costs a minute on
    this CPU) but, like torch's, keeps the module it wraps as ``_orig_mod``; the list it returns
    gets one entry per call of a wrapped module (a compiled step)."""
    calls: list[int] = []

    class Compiled(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self._orig_mod = inner

        def forward(self, *args, **kwargs):
            calls.append(1)
            return self._orig_mod(*args, **kwargs)

    monkeypatch.setattr(torch, "compile", lambda module, **kw: Compiled(module))
    return calls
