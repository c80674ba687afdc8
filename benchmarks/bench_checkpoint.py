"""The per-epoch checkpoint's cost inside the training loop: written there (the old way: state to
safetensors bytes, atomic write with fsync, run.json) against handed to ``runs.CheckpointWriter``
(a snapshot copied to the CPU, written behind by a thread). ResNet-56 SDN with its SGD momentum,
100 epochs of history in the metadata; alternated rows, a pause between checkpoints standing in for
the epoch; prints medians and spread of the time the loop spends.

    python benchmarks/bench_checkpoint.py [--device cuda] [--reps 12] [--dir runs]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

from shallowdeep.models.convert import build_model
from shallowdeep.models.sdn import SDN
from shallowdeep.runs.checkpoint import CheckpointWriter
from shallowdeep.runs.folder import RunFolder
from shallowdeep.runs.weights import optimizer_to_tensors, tensors_to_bytes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--reps", type=int, default=12)
    ap.add_argument("--dir", default=None, help="where the run folder goes (default: the system's temp folder)")
    args = ap.parse_args()
    device = torch.device(args.device)
    cnn, _ = build_model("resnet56", 10, 32)
    model = SDN(cnn).to(device)
    if device.type == "cuda":  # as train runs it there
        model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(8, 3, 32, 32, device=device))[-1].sum().backward()
    opt.step()
    folder = Path(tempfile.mkdtemp(dir=args.dir))
    run = RunFolder(folder)
    writer = CheckpointWriter(run)
    history = [{"epoch": i, "val_acc": [0.5] * 7, "seconds": 3.0} for i in range(100)]
    rows: dict[str, list[float]] = {"written in the loop": [], "written behind": []}
    try:
        for i in range(args.reps + 1):
            for label in rows:
                time.sleep(0.2)  # the next epoch: a checkpoint written behind has its time
                if device.type == "cuda":
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
                opt_tensors, opt_meta = optimizer_to_tensors(opt)
                tensors = {f"model.{k}": v for k, v in model.state_dict().items()} | opt_tensors
                ck = {"epoch": i, "history": history, "optimizer": opt_meta}
                if label == "written in the loop":
                    run.write_bytes(run.checkpoint, tensors_to_bytes(tensors, ck))
                    run.write_json(run.run_json, {"epochs": history})
                else:
                    writer.submit(tensors, ck, {"epochs": history})
                if i:  # the first of each is warm-up
                    rows[label].append(time.perf_counter() - t0)
        writer.wait()
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    print(f"device {device}; {len(tensors)} tensors; {args.reps} checkpoints per row, alternated")
    for label, xs in rows.items():
        print(
            f"{label:>20}: median {statistics.median(xs) * 1e3:.1f} ms in the loop "
            f"(min {min(xs) * 1e3:.1f}, max {max(xs) * 1e3:.1f})"
        )


if __name__ == "__main__":
    main()
