"""ONNX Runtime, batch 1: the staged early-exit runtime against the whole CNN exported to ONNX.

Like with like: both graphs come from the engine's inference copies (conv+BN folded), fp32, ONNX
Runtime CPU execution provider with the same session options. Seeded random weights; the ICs'
thresholds are set per pattern so that a known share of inputs leaves at each IC (from the
runtime's own confidences), as in bench_engine.py. Prints per pattern: median latency per image of
the CNN and of the runtime, realised saving, FLOP-predicted saving; the last line has the medians.

    python benchmarks/bench_deploy.py [--models resnet56,torchvision:resnet18] [--n 300]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from shallowdeep.inference import deploy
from shallowdeep.inference.engine import EarlyExitEngine
from shallowdeep.inference.export import ExportInfo, export_engine
from shallowdeep.models.convert import build_model
from shallowdeep.models.sdn import SDN

PATTERNS = {"early": 0.6, "mixed": 0.3, "late": 0.1}  # share of inputs leaving at each IC (roughly)


def whole_cnn_onnx(engine: EarlyExitEngine, path: Path) -> None:
    class CNN(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.stem, self.blocks, self.head = engine._stem, torch.nn.ModuleList(engine._blocks), engine.sdn.cnn.head

        def forward(self, x):
            x = self.stem(x)
            for b in self.blocks:
                x = b(x)
            return self.head(x)

    s = engine.sdn.image_size
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            CNN().eval(),
            (torch.zeros(1, 3, s, s),),
            str(path),
            input_names=["x"],
            output_names=["logits"],
            dynamic_axes={"x": {0: "n"}, "logits": {0: "n"}},
            opset_version=17,
            dynamo=False,
        )


def per_image(fn, images: np.ndarray, reps: int) -> list[float]:
    fn(images[:1])  # warm-up
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        for i in range(len(images)):
            fn(images[i : i + 1])
        times.append((time.perf_counter() - t) / len(images))
    return times


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="resnet56,torchvision:resnet18")
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--n", type=int, default=200)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--threads", type=int, help="intra-op threads per session, CNN and runtime alike (default: ORT's)")
    a = p.parse_args()
    import onnxruntime as ort

    rng = np.random.default_rng(0)
    ratios = []
    for arch in a.models.split(","):
        torch.manual_seed(0)
        cnn, _ = build_model(arch, 10, a.size)
        sdn = SDN(cnn).eval()
        images = rng.integers(0, 256, (a.n, a.size, a.size, 3), dtype=np.uint8)
        with tempfile.TemporaryDirectory() as d:
            d = Path(d)
            probe = EarlyExitEngine(sdn, 2.0)  # nobody exits: every IC's confidence
            info = ExportInfo((0.5,) * 3, (0.25,) * 3)
            export_engine(probe, d / "probe", info)
            dep_probe = deploy.load(d / "probe")
            conf = probe.ic_confidences(torch.from_numpy(dep_probe.preprocess(images))).numpy()
            whole_cnn_onnx(probe, d / "cnn.onnx")
            opts = ort.SessionOptions()
            opts.log_severity_level = 3
            if a.threads:
                opts.intra_op_num_threads = a.threads
            cnn_sess = ort.InferenceSession(str(d / "cnn.onnx"), opts, providers=["CPUExecutionProvider"])
            t_cnn = per_image(lambda im: cnn_sess.run(None, {"x": dep_probe.preprocess(im)}), images, a.reps)
            print(
                f"\n{arch} at {a.size} px, {a.n} images, batch 1, ONNX Runtime CPU ({ort.__version__}), "
                f"{ort.get_device()}, threads {a.threads or 'default'}; "
                f"CNN {1e3 * statistics.median(t_cnn):.3f} ms/img "
                f"(spread {1e3 * min(t_cnn):.3f}-{1e3 * max(t_cnn):.3f})"
            )
            for name, share in PATTERNS.items():
                # per IC the threshold that lets about `share` of the inputs still running leave
                qs, alive = [], np.ones(len(conf), bool)
                for k in range(conf.shape[1]):
                    q = float(np.quantile(conf[alive, k], 1 - share)) if alive.any() else 2.0
                    qs.append(q)
                    alive &= conf[:, k] < q
                eng = EarlyExitEngine(sdn, qs)
                export_engine(eng, d / name, info)
                dep = deploy.load(d / name, threads=a.threads)
                res = dep.classify(images)
                predicted = 1 - float(dep.relative_costs[res.exits].mean())
                t_dep = per_image(dep.classify, images, a.reps)
                realised = 1 - statistics.median(t_dep) / statistics.median(t_cnn)
                ratios.append(realised / predicted if predicted > 0 else float("nan"))
                counts = np.bincount(res.exits, minlength=dep.num_outputs).tolist()
                print(
                    f"  {name:<6} exits {counts}: runtime {1e3 * statistics.median(t_dep):.3f} ms/img "
                    f"(spread {1e3 * min(t_dep):.3f}-{1e3 * max(t_dep):.3f}); saving realised {100 * realised:.1f}% "
                    f"vs FLOP-predicted {100 * predicted:.1f}% (ratio {ratios[-1]:.2f})"
                )
    print(f"\nonnx_b1_realised_over_predicted={statistics.median(ratios):.2f}")


if __name__ == "__main__":
    main()
