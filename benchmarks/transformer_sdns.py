"""Vision transformers and hybrids as SDNs: what the adapter makes of them, checked end to end.

For each model (random weights, 10 classes, seeded): the cut points and the ICs placed on them
(layout of each head, cost of each output against the paper's 15/30/.../90 %), whether the SDN's
final output equals the model's bit for bit, whether the engine's exits (batch 1 and the throughput
engine) equal the record simulation at three thresholds spread over the ICs' confidences, and whether
the staged ONNX export classifies uint8 images exactly as the engine does (exits and predictions;
inputs within 1e-4 of a threshold are counted apart). One line per model, then a summary.

    python benchmarks/transformer_sdns.py [--models timm:vit_tiny_patch16_224,...] [--inputs 12] [--no-onnx]
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings

import numpy as np
import torch

from shallowdeep.analysis import early_exit
from shallowdeep.analysis.record import ExitRecord
from shallowdeep.data import normalize
from shallowdeep.inference.engine import EarlyExitEngine
from shallowdeep.models.adapter import PAPER_FRACTIONS
from shallowdeep.models.convert import build_model, candidates, chain_of
from shallowdeep.models.costs import output_costs
from shallowdeep.models.sdn import SDN
from shallowdeep.models.zoo import zoo_model

MODELS = (
    "timm:vit_tiny_patch16_224,timm:deit_tiny_distilled_patch16_224,timm:swin_tiny_patch4_window7_224,"
    "timm:cait_xxs24_224,timm:beit_base_patch16_224,timm:maxvit_tiny_tf_224,timm:eva02_tiny_patch14_224,"
    "timm:levit_128s,torchvision:vit_b_16,torchvision:swin_t"
)
MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def spread_thresholds(conf: np.ndarray, n: int = 3, margin: float = 1e-4) -> list[float]:
    """Thresholds spread over the ICs' confidences, none within ``margin`` of one."""
    c = np.sort(conf.ravel())
    qs = []
    for p in np.linspace(0.1, 0.9, n):
        i = int(p * (len(c) - 1))
        while i + 1 < len(c) and c[i + 1] - c[i] < 2 * margin:
            i += 1
        if i + 1 < len(c):
            qs.append(float((c[i] + c[i + 1]) / 2))
    return qs


def onnx_parity(engine: EarlyExitEngine, images: np.ndarray, threshold: float) -> str:
    """Exits and predictions of the torch-free runtime against the engine on uint8 images."""
    from shallowdeep import deploy
    from shallowdeep.inference.export import ExportInfo, export_engine

    with tempfile.TemporaryDirectory() as tmp:
        out = export_engine(engine, f"{tmp}/export", ExportInfo(MEAN, STD))
        got = deploy.load(out).classify(images)
    want = engine.classify(torch.from_numpy(images), batch_size=len(images))
    conf = engine.ic_confidences(torch.from_numpy(images)).numpy()
    near = (np.abs(conf - threshold) < 1e-4).any(1)
    same = (got.exits == want.exits.numpy()) & (got.predictions == want.predictions.numpy())
    return f"{int(same.sum())}/{len(same)}" + (f" ({int((~same & near).sum())} near a threshold)" if near.any() else "")


def check(arch: str, inputs: int, onnx: bool) -> str:
    t0 = time.perf_counter()
    torch.manual_seed(0)
    zm = zoo_model(arch, 10)
    size = zm.input_size
    cands = candidates(chain_of(zm.module, size))
    torch.manual_seed(0)
    cnn, _ = build_model(arch, 10, size)
    sdn = SDN(cnn).eval()
    for h in sdn.heads:  # random ICs of real spread: the fresh heads' logits are all near 0
        torch.nn.init.normal_(h.linear.weight, 0.0, 3.0 / h.linear.in_features**0.5)
    g = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (inputs, size, size, 3), dtype=torch.uint8, generator=g)
    x = normalize(images, MEAN, STD).contiguous()
    with torch.no_grad():
        outs = sdn(x)
        exact = torch.equal(outs[-1], cnn(x))
    costs = output_costs(sdn)
    rec = ExitRecord.from_arrays(torch.stack(outs, 1), np.zeros(inputs, dtype=np.int64), costs.outputs, costs.cnn)
    agree = True
    qs = spread_thresholds(rec.confidence[:, :-1])
    for q in qs:
        sim = early_exit(rec, q)
        eng = EarlyExitEngine(sdn, q, mean=MEAN, std=STD)
        for bs in (1, inputs):
            res = eng.classify(images, batch_size=bs)
            agree &= res.exits.tolist() == sim.exits.tolist() and res.predictions.tolist() == sim.predictions.tolist()
    q = qs[len(qs) // 2] if qs else 0.5
    parity = onnx_parity(EarlyExitEngine(sdn, q, mean=MEAN, std=STD), images.numpy(), q) if onnx else "-"
    heads = ",".join(getattr(h, "layout", "chw") for h in sdn.heads)
    exits = np.bincount(early_exit(rec, q).exits, minlength=sdn.num_outputs).tolist()
    rel = [round(100 * r, 1) for r in costs.relative[:-1]]
    off = max(abs(r / 100 - f) for r, f in zip(rel, PAPER_FRACTIONS)) if len(rel) == 6 else float("nan")
    increasing = all(a < b for a, b in zip(costs.relative, costs.relative[1:]))
    return (
        f"{arch} {size}px candidates={len(cands)} ics={len(sdn.heads)} heads={heads} ic_cost%={rel} "
        f"max_off_paper={off:.3f} increasing={increasing} final_exact={exact} engine_equals_records={agree} "
        f"exits_at_q={exits} onnx_same={parity} ({time.perf_counter() - t0:.0f} s)"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default=MODELS)
    p.add_argument("--inputs", type=int, default=12)
    p.add_argument("--no-onnx", action="store_true")
    a = p.parse_args()
    warnings.simplefilter("ignore")  # the ONNX exporter's tracer warnings, one per shape read
    print(f"# torch {torch.__version__}, {torch.get_num_threads()} threads, random weights, {a.inputs} inputs")
    ok = 0
    models = a.models.split(",")
    for arch in models:
        try:
            line = check(arch, a.inputs, not a.no_onnx)
        except Exception as e:  # a model that does not convert: say so and go on
            line = f"{arch}: {type(e).__name__}: {str(e)[:300]}"
        ok += "final_exact=True engine_equals_records=True" in line and "ics=6" in line
        print(line, flush=True)
    print(f"summary: {ok} of {len(models)} models are SDNs with 6 ICs, exact final outputs and engine = records")


if __name__ == "__main__":
    main()
