"""Python child processes of this package (background work): the interpreter running now, this
package imported from where this process imported it, whatever its ``sys.path`` was made of."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import IO, Any


def python_child(args: list[str], env_extra: dict[str, str] | None = None, **popen: Any) -> subprocess.Popen:
    """Start ``python ARGS`` (e.g. ``["-m", "shallowdeep.runs.precompile", ...]``) with stdin closed,
    ``env_extra`` added to this process's environment."""
    here = str(Path(__file__).resolve().parents[2])
    env = os.environ | {"PYTHONPATH": os.pathsep.join(p for p in (here, os.environ.get("PYTHONPATH")) if p)}
    env |= env_extra or {}
    return subprocess.Popen([sys.executable, *args], stdin=subprocess.DEVNULL, env=env, **popen)


def last_words(said: IO[bytes], status: int) -> str:
    """The last line a finished child wrote to ``said`` (the temporary file that took its stderr;
    closed here), or its exit status when it wrote nothing."""
    with said:
        said.seek(0)
        lines = [x.strip() for x in said.read().decode(errors="replace").splitlines() if x.strip()]
    return lines[-1][:300] if lines else f"exit status {status}"


def end_with_parent(every: float = 0.5) -> None:
    """In a child: exit as soon as the parent process is gone (killed, even by SIGKILL), so that no
    orphan keeps writing into a run folder that a later call resumes."""
    import threading
    import time

    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(every)
        os._exit(3)

    threading.Thread(target=watch, daemon=True).start()
