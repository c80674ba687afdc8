"""Training speed of every layer of the runtime, side by side, in one run.

ResNet-56 SDN (mode sdn, the paper's loss) on CIFAR-10-shaped data: 45,000 training and 5,000
validation images (random uint8 by default, or a real data set with ``--data``). Each row changes
one thing against the baseline (fp32, eager, NCHW activations, data on the host and copied per
step, a per-tensor (foreach) optimiser step, batch 128), then all of them together, at batch 128 and
at batch 512 (rate scaled x4):

- model-step throughput: images/s over ``--steps`` steps after ``--warmup`` steps, repeated
  ``--reps`` times (median, min-max), synchronised before every clock reading;
- with ``--epoch``: one whole epoch's wall time including validation (what ``train`` reports);
- peak GPU memory of the row.

Compiled rows run the way `train --compile` does: on one CUDA device in reduce-overhead mode (CUDA
graphs of forward and backward), the last partial batch of an epoch left out (one shape, no recompiles).

The rows use the library's own loop (``training.train_one_epoch``, ``Runtime``), so what is
measured is what ``shallowdeep train`` runs. On the CPU it runs a short version (few steps).

    python benchmarks/bench_train.py [--device cuda] [--steps 60] [--epoch] [--compile-rows one] [--json F]
"""

from __future__ import annotations

import argparse
import itertools
import platform
import statistics
import time
import traceback

import torch

from shallowdeep.data import Dataset, ImageSet, batches, load_dataset
from shallowdeep.models.sdn import build_sdn
from shallowdeep.training import (
    Objective,
    Runtime,
    default_recipe,
    evaluate,
    make_mode,
    make_optimizer,
    train_one_epoch,
)


def synthetic(n_train: int = 45_000, n_val: int = 5_000, size: int = 32) -> Dataset:
    g = torch.Generator().manual_seed(0)

    def part(n: int) -> ImageSet:
        return ImageSet(
            torch.randint(0, 256, (n, size, size, 3), dtype=torch.uint8, generator=g),
            torch.randint(0, 10, (n,), generator=g),
            torch.arange(n),
        )

    return Dataset(
        "synthetic",
        [str(i) for i in range(10)],
        part(n_train),
        part(n_val),
        part(100),
        (0.49, 0.48, 0.45),
        (0.25, 0.24, 0.26),
    )


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def rows(compile_rows: str) -> list[tuple[str, dict]]:
    """(label, configuration) of every row; ``epoch`` marks the rows whose whole epoch is timed."""
    base = dict(precision="fp32", channels_last=False, compile=False, resident=False, batch=128, fused=False)
    # what train runs on CUDA by default (compiled when the run is long enough, below)
    default = {**base, "resident": True, "channels_last": True, "precision": "bf16", "fused": True}
    fp32 = {**default, "precision": "fp32"}  # the CUDA default until 2026-11-27
    out = [
        ("baseline: fp32, eager, NCHW, host data, batch 128", {**base, "epoch": True}),
        ("fused optimiser step", {**base, "fused": True}),
        ("data resident on the device (augmented there)", {**base, "resident": True}),
        ("channels-last", {**base, "channels_last": True}),
        ("bf16 autocast", {**base, "precision": "bf16"}),
    ]
    if compile_rows == "all":
        out.append(("torch.compile", {**base, "compile": True}))
    out.append(("resident + channels-last, fp32, eager", {**fp32, "epoch": True}))
    out.append(("all but compile, batch 128 (train's CUDA default)", {**default, "epoch": True}))
    if compile_rows in ("all", "one"):
        # what train runs on one GPU by default for a long run: the row the compile decision reads
        out.append(("train's CUDA default + compile", {**default, "compile": True, "epoch": True}))
        # CUDA graphs without inductor's code generation: most of the launch saving for seconds of compilation?
        out.append(
            (
                "train's CUDA default + CUDA graphs only (no inductor)",
                {**default, "compile": True, "backend": "cudagraphs", "epoch": True},
            )
        )
    if compile_rows == "all":
        # (labelled so that the fragment "train's CUDA default + compile" picks the bf16 rows only)
        out.append(("compiled as train's CUDA default but fp32", {**fp32, "compile": True, "epoch": True}))
        # cuDNN's own search for each convolution's fastest algorithm, as airbench runs: the shapes of a
        # compiled run are fixed, so it searches once per shape (not a default until measured)
        out.append(
            (
                "train's CUDA default + compile + cudnn.benchmark",
                {**default, "compile": True, "cudnn_benchmark": True, "epoch": True},
            )
        )
    out.append(("all but compile, batch 512 (lr x4)", {**default, "batch": 512, "epoch": True}))
    out.append(("resident + channels-last, fp32, batch 512 (lr x4)", {**fp32, "batch": 512, "epoch": True}))
    if compile_rows == "all":
        out.append(
            ("all together with compile, batch 512 (lr x4)", {**default, "compile": True, "batch": 512, "epoch": True})
        )
    out.append(("baseline again (drift check)", base))  # the first row also pays for cold caches
    return out


def run_row(cfg: dict, data: Dataset, device: torch.device, args) -> dict:
    torch.manual_seed(0)
    torch.backends.cudnn.benchmark = bool(cfg.get("cudnn_benchmark", False))  # every row sets it: it is global
    sdn = build_sdn(args.arch, 10, 32)
    recipe = default_recipe("sdn", args.arch)
    if cfg["batch"] != recipe.batch_size:
        from dataclasses import replace

        recipe = replace(recipe, batch_size=cfg["batch"], lr=recipe.lr * cfg["batch"] / recipe.batch_size)
    runtime = Runtime(
        device, cfg["precision"], cfg["channels_last"], cfg["compile"], compile_backend=cfg.get("backend", "inductor")
    )
    mode = make_mode("sdn")
    params = mode.parameters(sdn)
    stepped = runtime.prepare(Objective(sdn, mode))
    opt = make_optimizer(params, recipe, fused=cfg["fused"] and device.type == "cuda")
    src = data.to(device) if cfg["resident"] else data
    gen_device = src.train.images.device
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    def some(n: int, seed: int):
        gen = torch.Generator(device=gen_device).manual_seed(seed)
        return itertools.islice(
            iter(batches(src, "train", recipe.batch_size, train=True, generator=gen, device=device)), n
        )

    t0 = time.perf_counter()
    train_one_epoch(sdn, stepped, mode, some(args.warmup, 1), opt, runtime, 0, 100, progress=False)
    sync(device)
    warm_s = time.perf_counter() - t0
    rates = []
    for r in range(args.reps):
        sync(device)
        t0 = time.perf_counter()
        train_one_epoch(sdn, stepped, mode, some(args.steps, 2 + r), opt, runtime, 0, 100, progress=False)
        sync(device)
        rates.append(args.steps * recipe.batch_size / (time.perf_counter() - t0))
    res = {"images_per_s": statistics.median(rates), "min": min(rates), "max": max(rates), "warmup_s": warm_s}
    if args.epoch and cfg.get("epoch"):
        gen = torch.Generator(device=gen_device).manual_seed(99)
        sync(device)
        t0 = time.perf_counter()
        train_one_epoch(
            sdn,
            stepped,
            mode,
            batches(
                src,
                "train",
                recipe.batch_size,
                train=True,
                generator=gen,
                device=device,
                drop_last=runtime.fixed_shapes,
            ),
            opt,
            runtime,
            0,
            100,
            progress=False,
        )
        evaluate(sdn, batches(src, "val", 1024 if device.type == "cuda" else 512, device=device), runtime)
        sync(device)
        res["epoch_s"] = time.perf_counter() - t0
    if device.type == "cuda":
        res["peak_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--arch", default="resnet56")
    ap.add_argument("--data", help="a data set name (e.g. imagefolder:PATH) instead of random images")
    ap.add_argument("--steps", type=int, default=None, help="timed steps per repetition (default 60 GPU, 4 CPU)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 15 GPU, 2 CPU)")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--epoch", action="store_true", help="also time one whole epoch with validation (main rows)")
    ap.add_argument(
        "--compile-rows",
        choices=("all", "one", "none"),
        default="one",
        help="torch.compile rows: all, one (train's CUDA default compiled, batch 128; default) or none",
    )
    ap.add_argument("--json", help="also write the figures to this JSON file")
    ap.add_argument(
        "--rows",
        help="label fragments separated by |: run only the rows whose label holds one "
        "(not --only: inductor reads a --only in sys.argv as a benchmark name and writes it into "
        "generated code, where a quote breaks it)",
    )
    args = ap.parse_args()
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    args.steps = args.steps or (60 if cuda else 4)
    args.warmup = args.warmup or (15 if cuda else 2)
    data = load_dataset(args.data) if args.data else synthetic()
    name = torch.cuda.get_device_name(device) if cuda else platform.processor() or platform.machine()
    print(
        f"# bench_train: {args.arch} SDN, {len(data.train)} train / {len(data.val)} val images; device {device} "
        f"({name}); torch {torch.__version__}; {args.steps} steps x {args.reps} reps after {args.warmup} warm-up"
    )
    print("speed-ups are against the later baseline row (same process, caches warm)")
    print(
        f"{'configuration':<52} {'img/s (median)':>14} {'min-max':>17} {'warm-up s':>9} {'epoch s':>8} {'peak MiB':>9}"
    )
    results = {}
    for label, cfg in rows(args.compile_rows):
        if args.rows and not any(o in label for o in args.rows.split("|")):
            continue
        try:
            r = run_row(cfg, data, device, args)
        except Exception as e:  # a layer that fails here (e.g. no compiler for inductor) is reported, not hidden
            print(f"{label:<52} failed: {type(e).__name__}: {str(e).splitlines()[0][:80]}")
            traceback.print_exc()  # the whole story to stderr: a failure on a lent GPU must be fixable from the log
            continue
        results[label] = r
        print(
            f"{label:<52} {r['images_per_s']:>14.0f} {r['min']:>8.0f}-{r['max']:<8.0f} {r['warmup_s']:>9.1f} "
            f"{r.get('epoch_s', float('nan')):>8.2f} {r.get('peak_mib', float('nan')):>9.0f}",
            flush=True,
        )
    if args.json:
        import json

        with open(args.json, "w") as f:
            json.dump({"device": str(device), "name": name, "torch": torch.__version__, "rows": results}, f, indent=2)
    base = results.get("baseline again (drift check)") or results.get(
        "baseline: fp32, eager, NCHW, host data, batch 128"
    )
    if base:
        print(
            "speed-up over the baseline (model steps): "
            + ", ".join(
                f"{k}: {v['images_per_s'] / base['images_per_s']:.2f}x"
                for k, v in results.items()
                if not k.startswith("baseline")
            )
        )


if __name__ == "__main__":
    main()
