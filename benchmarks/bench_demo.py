"""How long `shallowdeep demo` takes, as a user runs it: a fresh process each time, a new output
folder, the decoded-image cache empty on the first run (as after the install) and warm after it.
Prints every run's wall time, then the median and spread of the warm ones; the README's figure is
this script's output on an idle machine.

    python benchmarks/bench_demo.py [--reps 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=3, help="runs after the first (default 3)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-demo-") as tmp:
        env = os.environ | {"SHALLOWDEEP_CACHE": str(Path(tmp) / "cache")}
        walls = []
        for i in range(args.reps + 1):
            t = time.perf_counter()
            cmd = [sys.executable, "-m", "shallowdeep.cli", "demo", "--out", str(Path(tmp) / f"demo{i}")]
            subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
            walls.append(time.perf_counter() - t)
            print(f"run {i + 1}{' (cache empty)' if i == 0 else ''}: {walls[-1]:.1f} s", flush=True)
    warm = walls[1:]
    if warm:
        spread = f"{min(warm):.1f}-{max(warm):.1f}"
        print(
            f"demo: first {walls[0]:.1f} s; then median {statistics.median(warm):.1f} s ({spread} s, {len(warm)} runs)"
        )
    print(f"cores: {os.cpu_count()}; python {sys.version.split()[0]}")


if __name__ == "__main__":
    main()
