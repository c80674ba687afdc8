"""Wall-clock savings of early exits, like with like, at batch 1 and through the throughput engine.

ResNet-56 and VGG-16-BN (10 classes, 32 px), seeded random weights, or a trained SDN from ``--run``;
``--archs`` takes zoo models too (``timm:vit_tiny_patch16_224`` at its 224 px, or ``--size``).
The exit pattern is *set directly*: per-IC thresholds are chosen from the ICs' own confidences on the
benchmark inputs so that a chosen share of inputs leaves at each output.

Every comparison is like with like: the engine against the plain CNN built from the *same* inference
copies (conv+BN folded, same precision, no compilation on either side); the CNN as trained (eager,
BN unfolded) is shown beside it. Per pattern and path three savings are printed: FLOP-predicted
(1 - mean FLOP cost / CNN cost), time-predicted (what an ideal engine would save given the measured
time of each stage at the batch size used) and realised (1 - engine time / CNN time). Batched means
the throughput engine (``EarlyExitEngine.stream``): ``--inputs-batched`` inputs in batches of
``--batch``, against the CNN on the same batches. Timing: warm-up dropped, engine and CNN
interleaved, synchronised before each clock read, medians of ``--reps`` (batched: the median of the
per-pair engine/CNN ratios, with their spread).

Last line: medians over models and patterns of realised / FLOP-predicted,
``b1_realised_over_predicted=… batched_realised_over_predicted=…``, then realised / time-predicted.

    python benchmarks/bench_engine.py [--inputs 96] [--batch 256] [--reps 5] [--device cpu] [--run RUN]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import numpy as np
import torch

from shallowdeep.inference.engine import EarlyExitEngine
from shallowdeep.models.convert import build_model
from shallowdeep.models.sdn import SDN, build_sdn
from shallowdeep.models.zoo import is_zoo_name

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


def time_pair(f, g, device, reps: int, ratios: list[float] | None = None) -> tuple[float, float]:
    """Median seconds of f and of g, run back to back ``reps`` times (paired, so slow drifts of a
    shared machine hit both alike); ``ratios`` collects each pair's g / f."""
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
        if ratios is not None:
            ratios.append((t2 - t1) / (t1 - t0))
    return statistics.median(ta), statistics.median(tb)


@torch.inference_mode()
def batch1(plain, engine, x, device, reps):
    """Total plain and engine time over the inputs, one at a time (median of reps per input)."""
    for i in range(min(8, len(x))):  # warm-up
        plain(x[i : i + 1])
        engine.classify_one(x[i : i + 1], normalized=True)
    tp = te = 0.0
    for i in range(len(x)):
        xi = x[i : i + 1]
        a, b = time_pair(lambda: plain(xi), lambda: engine.classify_one(xi, normalized=True), device, reps)
        tp += a
        te += b
    return tp, te


@torch.inference_mode()
def stage_times(engine: EarlyExitEngine, x: torch.Tensor, device, reps: int) -> tuple[list[float], list[float]]:
    """Median seconds, on the batch ``x``, of each stage's blocks and of its head (the IC's, or the
    final classifier for the last stage), measured apart so the CNN's time is their blocks' sum
    plus the classifier."""

    def median_time(fn) -> float:
        fn()
        ts = []
        for _ in range(reps):
            sync(device)
            t0 = time.perf_counter()
            fn()
            sync(device)
            ts.append(time.perf_counter() - t0)
        return statistics.median(ts)

    blocks_t, heads_t, h = [], [], x
    for blocks, at in engine._stages:

        def run_blocks(h=h, blocks=blocks):
            for b in blocks:
                h = b(h)
            return h

        blocks_t.append(median_time(run_blocks))
        h = run_blocks()
        # the head each path runs: batch 1 the folded head, batches the module's pooling ops
        head = engine._final if at is None else (engine._one_heads if len(x) == 1 else engine._batch_heads)[at]
        heads_t.append(median_time(lambda h=h, head=head: head(h)))
    return blocks_t, heads_t


def time_predicted(times: tuple[list[float], list[float]], exits: np.ndarray) -> float:
    """The saving of an ideal engine on this hardware at this batch size: an input leaving at output
    e pays the measured blocks and heads of stages 0..e, the CNN every stage's blocks and the final
    classifier; queues, decisions and compaction are free."""
    blocks_t, heads_t = times
    per_stage = np.cumsum(np.add(blocks_t, heads_t))
    cnn = sum(blocks_t) + heads_t[-1]
    return 1 - float(np.mean(per_stage[exits]) / cnn)


def like_with_like(cnn: torch.nn.Module, device: torch.device, args: argparse.Namespace):
    """The plain CNN given what the engine is given: the same precision and compilation."""
    fn = (
        torch.compile(cnn, mode="reduce-overhead" if device.type == "cuda" else None, dynamic=False)
        if args.compile
        else cnn
    )
    if args.precision == "bf16":

        def run(x):
            with torch.autocast(device.type, dtype=torch.bfloat16):
                return fn(x)

        return run
    return fn


def load_sdn(arch: str, run: str | None, device, size: int | None = None) -> SDN:
    if run:
        import shallowdeep

        return shallowdeep.load(run).eval().to(device)
    torch.manual_seed(0)
    if is_zoo_name(arch):  # a zoo model (a ViT: timm:vit_tiny_patch16_224) at its own size or --size
        return SDN(build_model(arch, 10, size)[0]).eval().to(device)
    return build_sdn(arch, 10, size or 32).eval().to(device)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--inputs", type=int, default=96, help="inputs timed one at a time per pattern")
    ap.add_argument("--batch", type=int, default=256, help="batch size of the throughput engine and the CNN")
    ap.add_argument("--inputs-batched", type=int, default=1024, help="inputs through the throughput engine")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--archs", default="resnet56,vgg16_bn", help="paper backbones or zoo models (timm:NAME)")
    ap.add_argument("--size", type=int, help="image size (default: 32 for the paper's, a zoo model's own)")
    ap.add_argument("--run", help="a trained SDN run folder instead of random weights (--archs is ignored)")
    ap.add_argument("--precision", choices=("fp32", "bf16"), default="fp32", help="engine and CNN alike")
    ap.add_argument(
        "--pipelined",
        choices=("auto", "on", "off"),
        default="auto",
        help="batch 1 one stage ahead, decisions on the device (auto: on CUDA)",
    )
    ap.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile engine stages and the CNN alike (reduce-overhead: CUDA graphs on CUDA); "
        "the time-predicted column still comes from eager stage times",
    )
    args = ap.parse_args()
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or platform.machine())
    print(
        f"# device: {name}; torch {torch.__version__}; {torch.get_num_threads()} threads; weights: "
        f"{args.run or 'seeded random'}; {args.precision}, conv+BN folded on both sides, "
        f"{'compiled' if args.compile else 'no compilation'} on both sides; batch 1 pipelined: {args.pipelined}"
    )
    opts = {
        "precision": args.precision,
        "compile": args.compile,
        "pipelined": {"auto": None, "on": True, "off": False}[args.pipelined],
    }
    b1, bb, b1_t, bb_t = [], [], [], []
    for arch in [None] if args.run else args.archs.split(","):
        sdn = load_sdn(arch, args.run, device, args.size)
        arch = sdn.arch
        size = sdn.image_size
        never = EarlyExitEngine(sdn, 2.0)
        cnn = sdn.cnn
        folded = like_with_like(torch.nn.Sequential(never._stem, *never._blocks, cnn.head), device, args)
        gen = torch.Generator().manual_seed(1)
        # channels-last memory, as the data pipeline and predict make images (the engine's stream keeps it)
        xs = (
            torch.randn(args.inputs_batched, 3, size, size, generator=gen)
            .to(device)
            .contiguous(memory_format=torch.channels_last)
        )
        x1 = xs[: args.inputs].contiguous()  # batch 1 runs NCHW (the engine's batch-1 path makes it so)
        chunks = [xs[i : i + args.batch] for i in range(0, len(xs), args.batch)]
        rel = never.relative_costs.numpy()

        def cnn_batched():
            for c in chunks:
                folded(c)

        t_stage = stage_times(never, chunks[0], device, 2 * args.reps + 1)

        never_like = EarlyExitEngine(sdn, 2.0, **opts)
        tp, te = batch1(lambda v: cnn(v), never_like, x1, device, args.reps)
        tf, te2 = batch1(lambda v: folded(v), never_like, x1, device, args.reps)
        print(
            f"{arch} no exit, batch 1: CNN as trained {1e3 * tp / len(x1):.3f} ms/input, folded CNN "
            f"{1e3 * tf / len(x1):.3f}, engine {1e3 * te2 / len(x1):.3f}: overhead {100 * (te2 / tf - 1):+.2f}% like "
            f"with like ({100 * (te / tp - 1):+.2f}% vs the CNN as trained; ICs' FLOPs {100 * (rel[-1] - 1):+.2f}%)"
        )
        t_stage1 = stage_times(never, x1[:1], device, 4 * args.reps + 1)  # thresholds do not change stage costs
        conf1, confb = (
            never.ic_confidences(x1, normalized=True).numpy(),
            never.ic_confidences(xs, normalized=True).numpy(),
        )
        for pname, shares in PATTERNS.items():
            eng1 = EarlyExitEngine(sdn, thresholds_for(conf1, shares), **opts)
            t_plain1, t_eng1 = batch1(lambda v: folded(v), eng1, x1, device, args.reps)
            exits1 = eng1.classify(x1, batch_size=1, normalized=True).exits.numpy()
            pred1, real1 = 1 - rel[exits1].mean(), 1 - t_eng1 / t_plain1
            time1 = time_predicted(t_stage1, exits1)

            engb = EarlyExitEngine(sdn, thresholds_for(confb, shares), **opts)
            run_engine = lambda: list(engb.stream(chunks, args.batch, normalized=True))  # noqa: E731
            with torch.inference_mode():
                run_engine(), cnn_batched()  # warm-up
                pairs: list[float] = []
                time_pair(cnn_batched, run_engine, device, args.reps, pairs)
            exitsb = engb.classify(xs, batch_size=args.batch, normalized=True).exits.numpy()
            # the median of the per-pair ratios: each pair ran back to back, so a slow spell of the
            # machine hits both sides of a pair and cancels, where it would skew a ratio of medians
            predb, realb = 1 - rel[exitsb].mean(), 1 - statistics.median(pairs)
            spread = f"{100 * (1 - max(pairs)):.1f} to {100 * (1 - min(pairs)):.1f}%"
            timeb = time_predicted(t_stage, exitsb)
            b1.append(real1 / pred1), bb.append(realb / predb), b1_t.append(real1 / time1), bb_t.append(realb / timeb)
            counts = np.bincount(exitsb, minlength=len(rel)).tolist()
            print(
                f"{arch} {pname:<8} exits {counts}: batch 1 saving FLOP-predicted {100 * pred1:.1f}% time-predicted "
                f"{100 * time1:.1f}% realised {100 * real1:.1f}% (ratio {real1 / pred1:.3f}); throughput engine at "
                f"batch {args.batch} over {len(xs)} inputs: FLOP-predicted {100 * predb:.1f}% time-predicted "
                f"{100 * timeb:.1f}% realised {100 * realb:.1f}% [pairs {spread}] "
                f"(ratio {realb / predb:.3f}, of time-predicted "
                f"{realb / timeb:.3f})"
            )
    print(
        f"b1_realised_over_predicted={statistics.median(b1):.3f} "
        f"batched_realised_over_predicted={statistics.median(bb):.3f} "
        f"b1_realised_over_time_predicted={statistics.median(b1_t):.3f} "
        f"batched_realised_over_time_predicted={statistics.median(bb_t):.3f}"
    )


if __name__ == "__main__":
    main()
