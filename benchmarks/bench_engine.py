"""Wall-clock savings of early exits against FLOP-predicted savings, batch 1 and batched.

ResNet-56 and VGG-16-BN (CIFAR-10 shape: 10 classes, 32 px) with seeded random weights. The exit
pattern is *set directly*: per-IC thresholds are chosen from the ICs' own confidences on the
benchmark inputs so that a chosen share of inputs leaves at each output (the engine takes one
threshold per IC). Timing follows the usual rules: warm-up discarded, plain CNN and engine
interleaved, medians reported.

Printed per model and pattern: predicted saving (1 - average FLOP cost / CNN cost) and realised
saving (1 - engine time / plain CNN time) at batch 1 and batched, and their ratio. Also the no-exit
overhead at batch 1 against the plain CNN as trained (eager, BN unfolded) and against the same CNN
with the engine's conv+BN folding. For the batched path also the *time-predicted* saving: what
an ideal engine would save given the measured time of each block at that batch size (on a CPU the
time per FLOP is far from even across depth at large batches). Last line: medians of
realised/predicted (FLOP-predicted) over the patterns.

    python benchmarks/bench_engine.py [--inputs 96] [--batch 256] [--reps 3] [--device cpu]
"""
from __future__ import annotations

import argparse
import platform
import statistics
import time

import numpy as np
import torch

from shallowdeep.engine import EarlyExitEngine, _fold_bn
from shallowdeep.sdn import build_sdn

PATTERNS = {  # share of inputs leaving at IC 1..6 and at the final output (no IC exit)
    "early": (0.40, 0.20, 0.15, 0.10, 0.05, 0.05, 0.05),
    "uniform": (1 / 7,) * 7,
    "late": (0.05, 0.05, 0.10, 0.15, 0.20, 0.20, 0.25),
}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def thresholds_for(conf: np.ndarray, shares: tuple[float, ...]) -> list[float]:
    """Per-IC thresholds that make round(share * N) inputs leave at each IC, in order."""
    n, k = conf.shape
    active = np.ones(n, bool)
    qs = []
    for i in range(k):
        want = int(round(shares[i] * n))
        c = np.sort(conf[active, i])[::-1]
        if want <= 0 or not len(c):
            q = float(c[0]) + 1e-9 if len(c) else 2.0  # nobody leaves here
        else:
            want = min(want, len(c))
            q = float(c[want - 1])  # the want-th most confident leaves (>= q)
        qs.append(min(q, 2.0))
        active &= ~(conf[:, i] >= qs[-1])
    return qs


def time_pair(f, g, device, reps: int) -> tuple[float, float]:
    """Median seconds of f and of g, run back to back ``reps`` times (paired, so slow drifts of a
    shared machine hit both alike)."""
    ta, tb = [], []
    for _ in range(reps):
        sync(device)
        t0 = time.perf_counter()
        f()
        sync(device)
        t1 = time.perf_counter()
        g()
        sync(device)
        t2 = time.perf_counter()
        ta.append(t1 - t0)
        tb.append(t2 - t1)
    return statistics.median(ta), statistics.median(tb)


@torch.inference_mode()
def batch1(plain, engine, x, device, reps):
    """Total plain and engine time over the inputs, one at a time (median of reps per input)."""
    for i in range(min(8, len(x))):  # warm-up
        plain(x[i : i + 1])
        engine.classify_one(x[i : i + 1])
    tp = te = 0.0
    for i in range(len(x)):
        xi = x[i : i + 1]
        a, b = time_pair(lambda: plain(xi), lambda: engine.classify_one(xi), device, reps)
        tp += a
        te += b
    return tp, te


@torch.inference_mode()
def block_times(engine: EarlyExitEngine, x: torch.Tensor, device, reps: int) -> np.ndarray:
    """Median seconds of the stem + each block (as the engine runs them) on the whole batch ``x``."""
    feats = [x]
    h = engine._stem(x)
    for b in engine._blocks:
        feats.append(h)
        h = b(h)
    times = []
    for i, mod in enumerate([engine._stem, *engine._blocks]):
        ts = []
        for _ in range(reps):
            sync(device)
            t0 = time.perf_counter()
            mod(feats[i])
            sync(device)
            ts.append(time.perf_counter() - t0)
        times.append(statistics.median(ts))
    return np.array(times)


def time_predicted_saving(times: np.ndarray, positions: tuple[int, ...], exits: np.ndarray) -> float:
    """The saving if each input cost exactly the measured per-sample time of the blocks it runs
    (heads and compaction free): what an ideal engine would realise on this hardware."""
    cum = np.cumsum(times)  # cum[j]: stem + blocks 0..j-1
    stops = [p + 1 for p in positions] + [len(times) - 1]
    return 1 - float(np.mean([cum[stops[e]] for e in exits]) / cum[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--inputs", type=int, default=96, help="inputs timed one at a time per pattern")
    ap.add_argument("--batch", type=int, default=256, help="batch size of the batched path")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--archs", default="resnet56,vgg16_bn")
    args = ap.parse_args()
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or platform.machine())
    print(f"# device: {name}; torch {torch.__version__}; {torch.get_num_threads()} threads; "
          f"weights: seeded random; exit pattern set by per-IC thresholds")
    b1_ratios, bb_ratios = [], []
    for arch in args.archs.split(","):
        torch.manual_seed(0)
        sdn = build_sdn(arch, 10, 32).eval().to(device)
        cnn = sdn.cnn
        folded = torch.nn.Sequential(_fold_bn(cnn.stem), *[_fold_bn(b) for b in cnn.blocks], cnn.head)
        gen = torch.Generator().manual_seed(1)
        xb = torch.randn(args.batch, 3, 32, 32, generator=gen).to(device)
        x1 = xb[: args.inputs]
        rel = EarlyExitEngine(sdn, 2.0).relative_costs.numpy()
        with torch.inference_mode():
            never_b = EarlyExitEngine(sdn, 2.0)
            never_b.classify_batched(xb)  # warm-up
            times_b = block_times(never_b, xb, device, 2 * args.reps + 1)

        # no exit at all: the overhead of the exit machinery at batch 1
        never = EarlyExitEngine(sdn, 2.0)
        tp, te = batch1(lambda v: cnn(v), never, x1, device, args.reps)
        tf, te2 = batch1(lambda v: folded(v), never, x1, device, args.reps)
        print(f"{arch} no exit, batch 1: plain CNN {1e3 * tp / len(x1):.3f} ms/input, engine {1e3 * te / len(x1):.3f} "
              f"ms/input: {100 * (te / tp - 1):+.2f}% vs the CNN as trained; {100 * (te2 / tf - 1):+.2f}% vs the CNN "
              f"with the same conv+BN folding (FLOPs {100 * (rel[-1] - 1):+.2f}%)")

        for pname, shares in PATTERNS.items():
            conf1 = never.ic_confidences(x1).numpy()
            eng1 = EarlyExitEngine(sdn, thresholds_for(conf1, shares))
            tp, te = batch1(lambda v: cnn(v), eng1, x1, device, args.reps)
            exits1 = eng1.classify(x1, batch_size=1).exits.numpy()
            pred1 = 1 - rel[exits1].mean()
            real1 = 1 - te / tp

            confb = never.ic_confidences(xb).numpy()
            engb = EarlyExitEngine(sdn, thresholds_for(confb, shares))
            with torch.inference_mode():
                cnn(xb), engb.classify_batched(xb)  # warm-up
                tpb, teb = time_pair(lambda: cnn(xb), lambda: engb.classify_batched(xb), device, 2 * args.reps + 1)
            exitsb = engb.classify_batched(xb).exits.numpy()
            predb = 1 - rel[exitsb].mean()
            realb = 1 - teb / tpb
            b1_ratios.append(real1 / pred1)
            bb_ratios.append(realb / predb)
            timeb = time_predicted_saving(times_b, sdn.positions, exitsb)
            counts = np.bincount(exitsb, minlength=len(rel)).tolist()
            print(f"{arch} {pname:<8} exits {counts}: batch 1 predicted saving {100 * pred1:.1f}% realised "
                  f"{100 * real1:.1f}% (speedup {tp / te:.2f}x vs {1 / (1 - pred1):.2f}x predicted, ratio {real1 / pred1:.3f}); "
                  f"batch {len(xb)} predicted {100 * predb:.1f}% realised {100 * realb:.1f}% "
                  f"(speedup {tpb / teb:.2f}x vs {1 / (1 - predb):.2f}x, ratio {realb / predb:.3f}); "
                  f"time-predicted at batch {len(xb)} {100 * timeb:.1f}% (ratio to FLOP-predicted {timeb / predb:.3f})")
    print(f"b1_realised_over_predicted={statistics.median(b1_ratios):.3f} "
          f"batched_realised_over_predicted={statistics.median(bb_ratios):.3f}")


if __name__ == "__main__":
    main()
