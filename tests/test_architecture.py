"""The structure of the package: import contracts, no flags below the command line, a fast CLI."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "shallowdeep"
FLAG = re.compile(r"(?<![\w-])--[a-z][a-z-]+")


def test_import_contracts_hold():
    """import-linter's layers, acyclic and forbidden contracts (pyproject.toml) all pass."""
    exe = Path(sys.executable).with_name("lint-imports")
    proc = subprocess.run([str(exe)], capture_output=True, text=True, cwd=SRC.parents[1])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 broken" in proc.stdout


def _strings_outside_docstrings(tree: ast.AST) -> list[tuple[int, str]]:
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                docstrings.add(id(first.value))
    return [
        (n.lineno, n.value)
        for n in ast.walk(tree)
        if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docstrings
    ]


def test_no_flag_names_outside_the_cli():
    offenders = []
    for path in sorted(SRC.rglob("*.py")):
        if path.name in ("cli.py", "__main__.py"):
            continue
        for line, text in _strings_outside_docstrings(ast.parse(path.read_text())):
            if FLAG.search(text):
                offenders.append(f"{path.relative_to(SRC)}:{line}: {text!r}")
    assert not offenders, "flag names belong to cli.py:\n" + "\n".join(offenders)


def test_the_check_finds_a_flag(tmp_path):
    """The scan above is not vacuous: it sees a flag in a message."""
    tree = ast.parse('def f():\n    """Doc --not-this."""\n    raise ValueError("pass --epochs")\n')
    assert [t for _, t in _strings_outside_docstrings(tree) if FLAG.search(t)] == ["pass --epochs"]


def test_help_and_list_import_no_torch():
    """--help and list answer without importing torch (what makes them take well under 0.5 s)."""
    code = (
        "import sys\nfrom shallowdeep.cli import main\n"
        "for argv in (['list'], ['train', '--help'], ['--help']):\n"
        "    try:\n        main(argv)\n    except SystemExit:\n        pass\n"
        "print('torch' in sys.modules, 'scipy' in sys.modules, 'numpy' in sys.modules)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "False False False"


def test_catalogue_matches_the_registries():
    from shallowdeep.core.catalog import ARCHITECTURES, DATASETS
    from shallowdeep.data import list_datasets
    from shallowdeep.models import list_archs

    assert sorted(ARCHITECTURES) == list_archs()
    assert list_datasets() == dict(sorted(DATASETS.items()))


def test_cli_defaults_follow_the_library():
    """One source for each fact: the seed and modes (core.catalog), the version (package metadata),
    the flag table (the parser)."""
    from importlib.metadata import version

    import shallowdeep
    from shallowdeep import cli
    from shallowdeep.runs import DEFAULT_SEED
    from shallowdeep.training import MODES

    assert cli.DEFAULT_SEED is DEFAULT_SEED and cli.MODES is MODES
    assert shallowdeep.__version__ == version("shallowdeep")
    proc = subprocess.run([sys.executable, "-m", "shallowdeep", "--version"], capture_output=True, text=True)
    assert proc.stdout.strip() == f"shallowdeep {version('shallowdeep')}"
    table = cli.flags()
    assert (table["from_run"], table["limit"], table["cuts"], table["convention"]) == (
        "--from",
        "--max",
        "--ic-cuts",
        "--flops",
    )
    assert table["batch_size"] == "--batch-size" and table["thresholds"] == "--thresholds"
    commands = cli.build_parser()._subparsers._group_actions[0].choices.values()
    options = {o for command in commands for a in command._actions for o in a.option_strings}
    assert set(table.values()) <= options and len(table) >= 50  # real flags only, every one of them


def test_python_m_version_and_one_line_usage_errors():
    proc = subprocess.run([sys.executable, "-m", "shallowdeep", "--version"], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.startswith("shallowdeep ")
    proc = subprocess.run(
        [sys.executable, "-m", "shallowdeep", "train", "--mode", "nope", "--out", "x"], capture_output=True, text=True
    )
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1 and "--mode" in proc.stderr


def test_broken_pipe_ends_quietly():
    """`shallowdeep info --json | head -c 0`: the reader has left; no traceback, status 0."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "shallowdeep", "info", "--arch", "resnet56", "--data", "cifar10", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    proc.stdout.close()  # before the command writes (it imports torch first): its writes meet a closed pipe
    err = proc.stderr.read().decode()
    assert proc.wait() == 0 and "Traceback" not in err, err


@pytest.mark.parametrize("module", ["shallowdeep.analysis", "shallowdeep.core.io"])
def test_lower_layers_load_without_torch(module):
    code = f"import sys, {module}\nprint('torch' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.strip() == "False", proc.stderr


def test_counts_read_as_words():
    from shallowdeep.core.words import counted

    assert [counted(1, "epoch"), counted(2, "epoch"), counted(0, "input")] == ["1 epoch", "2 epochs", "0 inputs"]
    assert [counted(100 * 0.01, "point"), counted(0.5, "point"), counted(10**6, "input")] == [
        "1 point",
        "0.5 points",
        "1000000 inputs",
    ]
    assert counted(3, "class", "classes") == "3 classes"
