"""IC-only epoch on a streamed 224 px image folder: seconds per epoch, images per second, peak memory.

Generates a folder of random JPEGs (default 3 classes x 100 training images at 256x256, 10 val and 10
test each) and random backbone weights (torchvision ResNet-18 unless --arch), then trains the ICs
on the frozen backbone for --epochs epochs with the data streamed (decoded by DataLoader workers).
Prints each epoch's time (the first includes worker start-up) and the median of the others.

    python benchmarks/bench_folder.py [--arch torchvision:resnet18] [--per-class 100] [--device cpu]
"""

from __future__ import annotations

import argparse
import resource
import statistics
import tempfile
from pathlib import Path

import numpy as np
import torch


def make_folder(root: Path, per_class: int, size: int = 256, classes: int = 3) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    for part, n in (("train", per_class), ("val", 10), ("test", 10)):
        for c in range(classes):
            d = root / part / f"class{c}"
            d.mkdir(parents=True)
            for i in range(n):
                a = (rng.random((size, size, 3)) * 255).astype(np.uint8)
                a[..., c] = 200
                Image.fromarray(a).save(d / f"{i}.jpg", quality=90)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="torchvision:resnet18")
    p.add_argument("--per-class", type=int, default=100)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--device", default="cpu")
    a = p.parse_args()
    import json

    from safetensors.torch import save_file

    from shallowdeep.models.zoo import zoo_model
    from shallowdeep.runs import TrainConfig, train_run

    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        make_folder(root / "folder", a.per_class)
        torch.manual_seed(0)
        m = zoo_model(a.arch, 3).module
        save_file({k: v.contiguous() for k, v in m.state_dict().items()}, root / "w.safetensors")
        out = train_run(
            TrainConfig(
                out=str(root / "run"),
                mode="ic-only",
                arch=a.arch,
                weights=str(root / "w.safetensors"),
                data=f"imagefolder:{root / 'folder'}",
                data_mode="stream",
                image_size=224,
                epochs=a.epochs,
                batch_size=a.batch_size,
                device=a.device,
            ),
            progress=False,
            log=None,
        )
        meta = json.loads((out / "run.json").read_text())
        secs = [e["seconds"] for e in meta["epochs"]]
        n = meta["data"]["sizes"]["train"]
        rest = secs[1:] or secs
        print(
            f"{a.arch} ic-only, {n} training images streamed at 224 px, batch {a.batch_size}, {a.device}, "
            f"{torch.get_num_threads()} threads"
        )
        print(
            "epoch seconds (incl. validation of", meta["data"]["sizes"]["val"], "images):", [round(s, 2) for s in secs]
        )
        med = statistics.median(rest)
        print(
            f"median (after the first) {med:.2f} s/epoch, {n / med:.1f} training img/s; spread "
            f"{min(rest):.2f}-{max(rest):.2f} s"
        )
        self_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        kids_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        print(f"peak RSS: main process {self_mb:.0f} MiB, largest worker {kids_mb:.0f} MiB")


if __name__ == "__main__":
    main()
