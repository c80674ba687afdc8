"""Thresholds for a latency budget against thresholds for FLOPs; INT8 ONNX against fp32 ONNX and the torch engine.

Two parts, each printing its figures:

1. ``speed`` (``--archs``, seeded random weights: time does not depend on them): every stage's time
   per input (``profile``'s measurement: warm-up dropped, synchronised, medians of ``--reps``) for the
   torch engine, the fp32 ONNX export and its INT8 export (ONNX Runtime static quantization,
   calibrated on seeded random images), at batch 1 and at ``--batch``; the no-exit time (every stage)
   and each stage's INT8 speed-up. Like with like: the same folded stages in every runtime.
2. ``calibration`` (``--run``, a trained and analysed SDN): the run's stage times profiled on its
   validation images (torch, batch 1); per-IC thresholds chosen for latency budgets between the first
   IC's time and the whole network's, and per-IC thresholds chosen for FLOP budgets on a grid; for
   each, the expected test latency (profile), test accuracy, and the *realised* mean latency of the
   engine classifying ``--inputs`` test images one at a time, and that time paired with the engine's
   no-exit time on each input (ratio times the profile's no-exit time: this VM's speed drifts by up
   to 1.8x within a minute, and the pair cancels it). The FLOP-calibrated point compared with a
   latency-calibrated one is the FLOP grid's point of the nearest paired latency. Then the run's
   INT8 export: early-exit accuracy of the re-calibrated INT8 thresholds against fp32's, the INT8
   stages' time against fp32 ONNX's at batch 1, and the runtime's exits against its record.

    python benchmarks/bench_latency.py speed [--archs resnet56,torchvision:resnet18] [--reps 30]
    python benchmarks/bench_latency.py calibration --run RUN [--inputs 1000]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from shallowdeep.analysis import ExitRule
from shallowdeep.analysis.early_exit import calibrate, early_exit
from shallowdeep.analysis.latency import LatencyBudget, latency_calibration, timed
from shallowdeep.core.latency import processor_name
from shallowdeep.inference import deploy
from shallowdeep.inference.engine import EarlyExitEngine
from shallowdeep.inference.export import ExportInfo, export_engine
from shallowdeep.inference.latency import profile_engine
from shallowdeep.inference.quantize import quantize_stages
from shallowdeep.models.convert import build_model
from shallowdeep.models.sdn import SDN, build_sdn
from shallowdeep.models.zoo import is_zoo_name

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
ROUNDS = 5


def random_sdn(arch: str, size: int | None) -> SDN:
    torch.manual_seed(0)
    if is_zoo_name(arch):
        return SDN(build_model(arch, 10, size or 64)[0]).eval()
    return build_sdn(arch, 10, size or 32).eval()


def speed(args: argparse.Namespace) -> None:
    """Part 1: stage times of the torch engine, fp32 ONNX and INT8 ONNX, batch 1 and batched."""
    for arch in args.archs.split(","):
        sdn = random_sdn(arch, args.size)
        engine = EarlyExitEngine(sdn, 2.0, mean=MEAN, std=STD, device=args.device)  # thresholds above 1: nobody leaves
        s = sdn.image_size
        images = np.random.default_rng(0).integers(0, 256, (max(64, 4 * args.batch), s, s, 3), dtype=np.uint8)
        with tempfile.TemporaryDirectory() as tmp:
            fp32 = export_engine(engine, Path(tmp) / "fp32", ExportInfo(MEAN, STD))
            int8 = Path(tmp) / "int8"
            int8.mkdir()
            t0 = time.perf_counter()
            quantize_stages(fp32, int8, images[:256])
            print(
                f"{arch} at {s} px: INT8 quantization of {sdn.num_outputs} stages in {time.perf_counter() - t0:.1f} s"
            )
            for batch in (1, args.batch):
                profiles = {"torch": profile_engine(engine, torch.from_numpy(images), batch, args.reps)}
                ratios = {}
                for threads in (None, 1):  # onnxruntime's default pool (a thread per core), and one thread
                    t = "" if threads is None else " 1 thread"
                    models = (deploy.load(fp32, threads=threads), deploy.load(int8, threads=threads))  # CPU
                    ratios[t] = []
                    for _ in range(ROUNDS):  # fp32 and int8 alternate: this VM's speed drifts within a minute
                        a, q = (m.profile(images, batch, max(args.reps // ROUNDS, 3)) for m in models)
                        ratios[t].append(float(a.cumulative_ms(50)[-1] / q.cumulative_ms(50)[-1]))
                    profiles[f"onnx fp32{t}"], profiles[f"onnx int8{t}"] = a, q
                _print_speed(arch, batch, profiles, ratios)


def _print_speed(arch: str, batch: int, profiles: dict, ratios: dict[str, list[float]]) -> None:
    for name, p in profiles.items():
        med, p95 = float(p.cumulative_ms(50)[-1]), float(p.cumulative_ms(95)[-1])
        per = " ".join(f"{st.p50:.3f}" for st in p.stages)
        print(f"  {arch} batch {batch:>3} {name:<18}: no-exit median {med:8.3f} ms/input (p95 {p95:.3f}); stages {per}")
    for t, r in ratios.items():
        print(
            f"  {arch} batch {batch:>3} int8 speed-up over fp32 onnx{t} (median of {len(r)} alternating rounds): "
            f"{statistics.median(r):.2f}x (spread {min(r):.2f}-{max(r):.2f})"
        )


def realised_ms(engine: EarlyExitEngine, images: torch.Tensor) -> float:
    """Mean milliseconds per input of the batch-1 engine over ``images`` (after a warm-up)."""
    for i in range(min(20, len(images))):
        engine.classify(images[i : i + 1], batch_size=1)
    times = [engine.classify(images[i : i + 1], batch_size=1).seconds for i in range(len(images))]
    return 1e3 * float(np.mean(times))


def paired_ratio(engine: EarlyExitEngine, thresholds: list[float], images: torch.Tensor) -> float:
    """Engine time at ``thresholds`` over engine time with no exit, each input run both ways back to
    back: this VM's speed drifts by up to 1.8x within a minute, and the pair cancels the drift."""
    with_exits, without = 0.0, 0.0
    for i in range(len(images)):
        x = images[i : i + 1]
        engine.thresholds = thresholds
        with_exits += engine.classify(x, batch_size=1).seconds
        engine.thresholds = [2.0] * len(thresholds)
        without += engine.classify(x, batch_size=1).seconds
    engine.thresholds = thresholds
    return with_exits / without


def calibration(args: argparse.Namespace) -> None:
    """Part 2: latency-calibrated against FLOP-calibrated per-IC thresholds; the run's INT8 export."""
    from shallowdeep.runs import engine_from_run, run_data, run_records
    from shallowdeep.runs.latency import profile_run

    records = run_records(args.run, ("val", "test"))
    val, test = records["val"], records["test"]
    images = run_data(args.run).test.images[: args.inputs]  # the data set decoded before anything is timed
    prof = profile_run(args.run, "torch", args.device, 1, args.reps)
    print(f"profile: {prof.describe()}; stages {' '.join(f'{s.p50:.3f}' for s in prof.stages)} ms")
    sub = test.subset(np.arange(len(images)))
    engine = engine_from_run(args.run, device=args.device)
    rule = ExitRule()
    flops = []
    for b in np.linspace(0.2, 1.0, 17):
        c = calibrate(val, None, budget=float(b), per_ic=True)
        flops.append(_realise(engine, c.exit_thresholds, sub, prof, images))
    full = float(prof.cumulative_ms()[-1])
    for share in args.budgets:
        budget = float(prof.cumulative_ms()[0] + share * (full - prof.cumulative_ms()[0]))
        lat = latency_calibration(val, test, prof, LatencyBudget(budget), rule, per_ic=True)
        acc, exp_ms, real, paired = _realise(engine, lat.calibration.exit_thresholds, sub, prof, images)
        near = min(flops, key=lambda f: abs(f[3] - paired))
        print(
            f"budget {budget:.3f} ms: latency-calibrated test acc {100 * acc:.2f}%, expected {exp_ms:.3f} ms, realised "
            f"{real:.3f} ms, paired {paired:.3f} ms ({100 * (paired / budget - 1):+.1f}% of the budget); "
            f"FLOP-calibrated at paired {near[3]:.3f} ms: acc {100 * near[0]:.2f}% (expected {near[1]:.3f})"
        )
    again = profile_run(args.run, "torch", args.device, 1, args.reps)
    print(f"profiled again after: stages {' '.join(f'{s.p50:.3f}' for s in again.stages)} ms")
    if not args.skip_int8:
        _int8(args)


def _realise(engine, thresholds, test, prof, images) -> tuple[float, float, float, float]:
    """Test accuracy and expected latency of per-IC ``thresholds`` on the record; the engine's realised
    ms, and its paired ratio to no exit times the profile's no-exit time (the drift cancelled)."""
    e = early_exit(timed(test, prof), thresholds)
    q = list(thresholds) if isinstance(thresholds, list) else [float(thresholds)] * (test.num_outputs - 1)
    ratio = paired_ratio(engine, q, images)
    paired = ratio * float(prof.cumulative_ms()[-1])
    return e.accuracy, float(timed(test, prof).costs[e.exits].mean()), realised_ms(engine, images), paired


def _int8(args: argparse.Namespace) -> None:
    import json

    from shallowdeep.analysis import ExitRecord
    from shallowdeep.analysis.shift import calibrated_exits
    from shallowdeep.runs import run_data
    from shallowdeep.workflows import export_run

    with tempfile.TemporaryDirectory() as tmp:
        fp32 = export_run(args.run, Path(tmp) / "fp32")
        int8 = export_run(args.run, Path(tmp) / "int8", quantize="int8")
        q = json.loads((int8 / "manifest.json").read_text())["quantization"]
        for name in ("fp32", "int8"):
            t = q[name]["test"]
            acc, cost = 100 * t["accuracy"], 100 * t["relative_cost"]
            print(f"{name} early exits (test): accuracy {acc:.2f}% at {cost:.1f}% FLOPs")
        images = run_data(args.run).test.images.numpy()
        model = deploy.load(int8)
        got = model.classify(images)
        want = calibrated_exits(ExitRecord.load(int8 / "records" / "test.safetensors"), model.rule)
        print(f"int8 runtime against its record: {int(np.sum(got.exits != want.exits))} of {len(images)} exits differ")
        for b in (1, args.batch):
            a = deploy.load(fp32).profile(images[:256], b, args.reps)
            c = model.profile(images[:256], b, args.reps)
            ratio = float(a.cumulative_ms()[-1] / c.cumulative_ms()[-1])
            print(
                f"batch {b}: no-exit fp32 onnx {a.cumulative_ms()[-1]:.3f} ms, int8 {c.cumulative_ms()[-1]:.3f} ms "
                f"({ratio:.2f}x); realised early-exit classify: fp32 {_classify_ms(deploy.load(fp32), images, b):.3f} "
                f"int8 {_classify_ms(model, images, b):.3f} ms/input"
            )


def _classify_ms(model, images: np.ndarray, batch: int) -> float:
    times = []
    for i in range(0, min(len(images), 512), batch):
        times.append(model.classify(images[i : i + batch]).seconds / len(images[i : i + batch]))
    return 1e3 * statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("part", choices=("speed", "calibration"))
    ap.add_argument("--archs", default="resnet56,torchvision:resnet18")
    ap.add_argument("--size", type=int, help="image size (default: 32 for the paper's networks, 64 for zoo models)")
    ap.add_argument("--run", help="a trained, analysed SDN run (calibration)")
    ap.add_argument("--inputs", type=int, default=1000, help="test images classified one at a time (calibration)")
    ap.add_argument("--budgets", type=float, nargs="+", default=[0.2, 0.35, 0.5], help="shares of the time span")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--device", default="cpu", help="the torch engine's device (ONNX Runtime runs on the CPU)")
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--skip-int8", action="store_true", help="calibration without the INT8 export")
    ap.add_argument("--threads", type=int, help="torch intra-op threads (default torch's)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"machine: {processor_name()}; torch {torch.__version__}, python {platform.python_version()}")
    if args.part == "speed":
        speed(args)
    else:
        if not args.run:
            ap.error("calibration needs --run")
        calibration(args)


if __name__ == "__main__":
    main()
