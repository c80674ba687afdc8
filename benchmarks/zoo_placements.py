"""IC placements found by the adapter for zoo models: cut points, their backbone cost, each output's cost.

Random weights (placement depends only on the graph and its FLOPs). Prints one block per model and a
summary line per model: ``model size candidates ics backbone%=[...] sdn_cost%=[...]``.

    python benchmarks/zoo_placements.py [--size 224] [--models torchvision:resnet50,timm:convnext_atto]
"""

from __future__ import annotations

import argparse
import time

import torch

from shallowdeep.models.convert import build_model, candidates, chain_of
from shallowdeep.models.costs import output_costs
from shallowdeep.models.sdn import SDN
from shallowdeep.models.zoo import zoo_model

MODELS = (
    "torchvision:resnet18,torchvision:resnet50,torchvision:vgg16_bn,torchvision:mobilenet_v3_large,"
    "torchvision:efficientnet_b0,torchvision:convnext_tiny,torchvision:densenet121,torchvision:regnet_y_400mf,"
    "timm:resnet50,timm:convnext_atto,timm:efficientnet_b0,timm:mobilenetv3_large_100"
)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--classes", type=int, default=1000)
    p.add_argument("--models", default=MODELS)
    a = p.parse_args()
    torch.manual_seed(0)
    for arch in a.models.split(","):
        t0 = time.perf_counter()
        try:
            cands = candidates(chain_of(zoo_model(arch, a.classes).module, a.size))
            cnn, _ = build_model(arch, a.classes, a.size)
        except Exception as e:  # a model that does not trace: say so and go on
            print(f"{arch}: {type(e).__name__}: {str(e)[:200]}")
            continue
        sdn = SDN(cnn)
        rel = {c.cut.name: c for c in cands}
        costs = output_costs(sdn)
        p_cnn = sum(q.numel() for q in cnn.parameters())
        p_sdn = sum(q.numel() for q in sdn.parameters())
        cuts = cnn.source["cuts"]
        print(
            f"\n{arch} at {a.size} px: {len(cands)} candidate cut points, CNN {costs.cnn / 1e9:.2f} GFLOPs, "
            f"params CNN {p_cnn / 1e6:.2f} M, SDN {p_sdn / 1e6:.2f} M ({time.perf_counter() - t0:.1f} s)"
        )
        for k, name in enumerate(cuts):
            c = rel[name]
            shape = "x".join(map(str, c.cut.shape))
            print(
                f"  IC {k + 1}: {name:<28} backbone {100 * c.relative:5.1f}%  "
                f"SDN output {100 * costs.relative[k]:5.1f}%"
                f"  feature {shape:<12} {c.cut.where}"
            )
        print(
            f"summary {arch} size={a.size} candidates={len(cands)} ics={len(cuts)} "
            f"backbone%={[round(100 * rel[n].relative, 1) for n in cuts]} "
            f"sdn_cost%={[round(100 * r, 1) for r in costs.relative]}"
        )


if __name__ == "__main__":
    main()
