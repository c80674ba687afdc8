"""Python child processes of this package (background work): the interpreter running now, this
package imported from where this process imported it, whatever its ``sys.path`` was made of."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any


def python_child(args: list[str], **popen: Any) -> subprocess.Popen:
    """Start ``python ARGS`` (e.g. ``["-m", "shallowdeep.runs.precompile", ...]``) with stdin closed."""
    here = str(Path(__file__).resolve().parents[2])
    env = os.environ | {"PYTHONPATH": os.pathsep.join(p for p in (here, os.environ.get("PYTHONPATH")) if p)}
    return subprocess.Popen([sys.executable, *args], stdin=subprocess.DEVNULL, env=env, **popen)
